package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// Lab detection timing: 200 ms heartbeats, 3 misses (600 ms window), and a
// 200 ms probe round, so a dead host is judged within ~0.8 s of its death.
const (
	detInterval = 200 * time.Millisecond
	detMisses   = 3
	detProbe    = 200 * time.Millisecond
)

var detectionBlock = fmt.Sprintf("  heartbeat_interval: %s\n  missed_heartbeats: %d\n  probe_timeout: %s\n  recovery_heartbeats: 3\n",
	detInterval, detMisses, detProbe)

// buildGo builds a main package of this module into dir.
func buildGo(t *testing.T, dir, pkg string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg))
	b, err := exec.Command("go", "build", "-o", out, "github.com/chimestack/chime-fence/"+pkg).CombinedOutput()
	require.NoError(t, err, "go build %s: %s", pkg, b)
	return out
}

// agentArgv is how the lab starts chime-agent inside host h, with h's own
// credentials derived from the cluster secret in tokenDir.
func agentArgv(bin, tokenDir, ctlAddr string, h lab.Host) []string {
	tokenFile, daemonCred, err := labconfig.HostCredentials(tokenDir, h.Name)
	if err != nil {
		// The agent then refuses to start, naming the missing file.
		tokenFile, daemonCred = filepath.Join(tokenDir, "missing"), filepath.Join(tokenDir, "missing")
	}
	return []string{bin, "--host", h.Name, "--daemon", "http://" + ctlAddr + ":7480", "--token-file", tokenFile,
		"--daemon-credential-file", daemonCred,
		"--listen", h.MgmtAddr + ":7481", "--libvirt", h.MgmtAddr + ":16509",
		"--heartbeat-interval", detInterval.String(), "--reconcile-interval", "300ms",
		"--state-dir", filepath.Join(h.Dir, "agent-state")} // per host: the lab's hosts share /var/lib
}

// detectionLab is a lab with chime-agents on every host and the daemon in
// the controller namespace.
type detectionLab struct {
	t      *testing.T
	l      *lab.Lab
	cfg    string
	client *api.Client
	bin    string
	agent  string
	daemon *exec.Cmd
	dlog   string
	tokens string   // directory of the agent and API tokens
	env    []string // extra daemon environment
}

func startDetectionLab(t *testing.T, ctx context.Context, name string, hosts int) *detectionLab {
	return startDetectionLabWith(t, ctx, lab.Config{Name: name, Hosts: hosts}, nil, nil)
}

// startDetectionLabWith is startDetectionLab with lab and daemon config
// adjustments (agents, tokens and the detection block are always set).
// options, if set, gives the daemon config options once the lab runs; env
// is added to the daemon's environment.
func startDetectionLabWith(t *testing.T, ctx context.Context, lc lab.Config, options func(*lab.Lab) labconfig.Options, env []string) *detectionLab {
	needLab(t)
	bins := t.TempDir()
	fence := buildGo(t, bins, "cmd/chime-fence")
	agentBin := buildGo(t, bins, "cmd/chime-agent")
	d := &detectionLab{t: t, bin: fence, agent: agentBin, env: env}
	d.tokens = t.TempDir()
	require.NoError(t, labconfig.WriteTokens(d.tokens))
	lc.AgentCommand = func(h lab.Host) []string {
		argv := agentArgv(agentBin, d.tokens, "$CHIME_LAB_CONTROLLER_ADDR", h)
		return []string{"sh", "-c", "exec " + strings.Join(argv, " ")}
	}
	if lc.PrepareBootCommand == nil { // before libvirtd, as examples/chime-agent-prepare-boot.service
		lc.PrepareBootCommand = func(h lab.Host) []string {
			return []string{agentBin, "prepare-boot", "--state-dir", filepath.Join(h.Dir, "agent-state")}
		}
	}
	d.l = startLab(t, ctx, lc)
	var opts labconfig.Options
	if options != nil {
		opts = options(d.l)
	}
	opts.Tokens, opts.TokenDir, opts.Detection = true, d.tokens, detectionBlock
	cfg, err := labconfig.Write(d.l, filepath.Join(d.l.Dir(), "chime-fence.yaml"), opts)
	require.NoError(t, err)
	d.cfg = cfg
	_, apiTok := labconfig.TokenFiles(d.tokens)
	tok, err := os.ReadFile(apiTok)
	require.NoError(t, err)
	d.client = &api.Client{Base: "http://" + d.l.Controller().MgmtAddr + ":7480", Token: strings.TrimSpace(string(tok)),
		HTTP: nsHTTP(d.l.Controller().Netns)}
	d.startDaemon(ctx)
	for _, h := range d.l.Hosts() {
		d.waitHost(h.Name, "normal and healthy", 20*time.Second, func(s daemon.HostStatus) bool {
			return s.Monitor == node.Normal && s.Verdict == detector.Healthy
		})
	}
	return d
}

func (d *detectionLab) startDaemon(ctx context.Context) {
	t := d.t
	d.dlog = filepath.Join(d.l.Dir(), "daemon.log")
	f, err := os.OpenFile(d.dlog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(t, err)
	cmd := d.l.Controller().Command(ctx, d.bin, "daemon", "-c", d.cfg, "--log-level", "debug")
	cmd.Env = append(cmd.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	f.Close()
	d.daemon = cmd
	t.Cleanup(func() {
		d.stopDaemon()
		// For timing work: CHIME_E2E_DAEMON_LOG=FILE keeps the daemon's log.
		if keep := os.Getenv("CHIME_E2E_DAEMON_LOG"); keep != "" {
			_ = os.WriteFile(keep, []byte(d.log()), 0o600)
		}
	})
	require.Eventually(t, func() bool { _, err := d.client.Status(context.Background()); return err == nil },
		10*time.Second, 50*time.Millisecond, "daemon API did not come up; log:\n%s", d.log())
}

// stopDaemon stops the daemon with SIGTERM. One that has not exited
// within 20 s is a bug (a shutdown must not hang on a fence, a webhook or
// a libvirt call): it gets SIGQUIT, whose goroutine dump lands in its log,
// and the test fails with the dump.
func (d *detectionLab) stopDaemon() {
	if d.daemon == nil || d.daemon.Process == nil {
		return
	}
	cmd := d.daemon
	d.daemon = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(20 * time.Second):
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	d.t.Errorf("the daemon did not exit within 20 s of SIGTERM; its log with the goroutine dump:\n%s", tail(d.log(), 60000))
}

func (d *detectionLab) log() string {
	b, _ := os.ReadFile(d.dlog)
	return string(b)
}

// nsHTTP is an HTTP client whose connections are opened inside netns.
// (http.Transport dials on goroutines of its own, so switching the calling
// thread's namespace is not enough.)
func nsHTTP(netns string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := nsenter.Do(netns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

func (d *detectionLab) status(name string) daemon.HostStatus {
	s, err := d.client.Host(context.Background(), name)
	require.NoError(d.t, err)
	return s
}

func (d *detectionLab) waitHost(name, what string, within time.Duration, ok func(daemon.HostStatus) bool) daemon.HostStatus {
	d.t.Helper()
	var last daemon.HostStatus
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		last = d.status(name)
		if ok(last) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.t.Fatalf("%s: not %s within %s: monitor %s, verdict %s (%s)\ndaemon log tail:\n%s", name, what, within,
		last.Monitor, last.Verdict, last.VerdictReason, tail(d.log(), 30))
	return last
}

func (d *detectionLab) history(q store.Query) []store.Record {
	recs, err := d.client.History(context.Background(), q)
	require.NoError(d.t, err)
	return recs
}

// restartAgent starts a fresh chime-agent inside h, as systemd's
// Restart=always would after a crash.
func (d *detectionLab) restartAgent(ctx context.Context, h lab.Host) {
	if d.l.AgentPID(h) != 0 {
		require.NoError(d.t, d.l.KillAgent(ctx, h))
	}
	argv := agentArgv(d.agent, d.tokens, d.l.Controller().MgmtAddr, h)
	cmd, err := d.l.HostCommand(ctx, h, argv[0], argv[1:]...)
	require.NoError(d.t, err)
	cmd.Env = append(cmd.Env, "CHIME_LAB_AGENT=1")
	f, err := os.OpenFile(h.AgentLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	require.NoError(d.t, err)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(d.t, cmd.Start())
	f.Close()
	// The lab kills everything in the host's PID namespace at Close; reap
	// the nsenter wrapper here.
	go func() { _ = cmd.Wait() }()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func kindsOf(recs []store.Record) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.Kind+":"+r.From+">"+r.To)
	}
	return out
}

// TestDetection runs the "done when" list 1–4 and 7 on one lab of
// three hosts, one fault at a time; each step heals before the next.
func TestDetection(t *testing.T) {
	ctx := context.Background()
	d := startDetectionLab(t, ctx, "chdet", 3)
	hs := d.l.Hosts()
	h0, h1, h2 := hs[0], hs[1], hs[2]
	healthy := func(s daemon.HostStatus) bool { return s.Monitor == node.Normal && s.Verdict == detector.Healthy }

	t.Run("0 heartbeats arrive over UDP, none over HTTP", func(t *testing.T) {
		// Agents run --heartbeat-transport auto: a UDP path that silently
		// failed would fall back to HTTP and every other test would pass.
		const udp, http = `chime_fence_heartbeats_total{result="accepted",transport="udp"}`,
			`chime_fence_heartbeats_total{result="accepted",transport="http"}`
		m0 := d.scrapeMetrics(t, ctx)
		time.Sleep(2 * time.Second)
		m1 := d.scrapeMetrics(t, ctx)
		assert.GreaterOrEqual(t, metric(t, m1, udp)-metric(t, m0, udp), float64(len(hs)), "every agent beat over UDP in 2 s")
		assert.Equal(t, 0.0, metric(t, m1, http)-metric(t, m0, http), "no agent is on HTTP")
	})

	t.Run("1 agent killed: agent down, host alive, nothing else", func(t *testing.T) {
		require.NoError(t, d.l.KillAgent(ctx, h0))
		s := d.waitHost(h0.Name, "agent-down", 5*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.AgentDown })
		assert.Equal(t, node.Suspect, s.Monitor)
		assert.Contains(t, s.VerdictReason, "answered")
		on, err := d.l.BMCPower(ctx, h0)
		require.NoError(t, err)
		assert.True(t, on, "the host was not touched")
		for _, r := range d.history(store.Query{Host: h0.Name}) {
			assert.NotEqual(t, "would-fence", r.Kind)
			assert.NotEqual(t, "host-down", r.To)
		}
		d.restartAgent(ctx, h0)
		d.waitHost(h0.Name, "normal again", 10*time.Second, healthy)
	})

	t.Run("3 network cut, BMC on: isolated or hung", func(t *testing.T) {
		require.NoError(t, d.l.CutNetwork(ctx, h1))
		s := d.waitHost(h1.Name, "isolated-or-hung", 5*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.IsolatedOrHung })
		assert.Equal(t, node.Unreachable, s.Monitor)
		assert.Contains(t, s.VerdictReason, "BMC reported power on")
		require.NoError(t, d.l.RestoreNetwork(ctx, h1))
		d.waitHost(h1.Name, "normal again", 10*time.Second, healthy)
	})

	t.Run("4 network cut and BMC unreachable: unprovable", func(t *testing.T) {
		require.NoError(t, d.l.CutNetwork(ctx, h1))
		require.NoError(t, d.l.BlockBMC(ctx, h1))
		s := d.waitHost(h1.Name, "unprovable", 5*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.Unprovable })
		assert.Equal(t, node.Unreachable, s.Monitor)
		require.NoError(t, d.l.UnblockBMC(ctx, h1))
		require.NoError(t, d.l.RestoreNetwork(ctx, h1))
		d.waitHost(h1.Name, "normal again", 10*time.Second, healthy)
		recs := d.history(store.Query{Host: h1.Name, Kind: "verdict"})
		for _, r := range recs {
			assert.NotEqual(t, "host-down", r.To, "a network cut is never host-down")
		}
	})

	t.Run("2 power loss: host down within window + one probe round; 7 power on: reboot seen, normal after hysteresis", func(t *testing.T) {
		boot0, err := d.l.BootID(h2)
		require.NoError(t, err)
		cut := time.Now()
		require.NoError(t, d.l.PowerLoss(ctx, h2))
		s := d.waitHost(h2.Name, "host-down", 5*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.HostDown })
		took := s.VerdictAt.Sub(cut)
		bound := detInterval*detMisses + detProbe
		t.Logf("power loss → host-down in %v (bound %v: window + one probe round)", took.Round(time.Millisecond), bound)
		assert.LessOrEqual(t, took, bound+100*time.Millisecond, "the 100 ms is the daemon's tick and the API poll")
		assert.Equal(t, node.Unreachable, s.Monitor)
		// History is written behind the status by a few milliseconds.
		var recs []store.Record
		require.Eventually(t, func() bool {
			recs = d.history(store.Query{Host: h2.Name, CorrelationID: s.Incident})
			return len(recs) > 0 && recs[len(recs)-1].Kind == "would-fence"
		}, 5*time.Second, 20*time.Millisecond)
		assert.Subset(t, kindsOf(recs), []string{"monitor:normal>suspect", "monitor:suspect>unreachable", "verdict:suspect>host-down", "would-fence:suspect>host-down"})
		var ev detector.Evidence
		require.NoError(t, json.Unmarshal(recs[len(recs)-1].Evidence, &ev))
		require.NotNil(t, ev.BMC)
		assert.Equal(t, "off", ev.BMC.Power.String())
		assert.Contains(t, d.log(), "would fence "+h2.Name+" because")

		up := time.Now()
		require.NoError(t, d.l.PowerOn(ctx, h2))
		s = d.waitHost(h2.Name, "normal after reboot", 30*time.Second, healthy)
		boot1, err := d.l.BootID(h2)
		require.NoError(t, err)
		assert.NotEqual(t, boot0, boot1)
		assert.Equal(t, boot1, s.BootID)
		t.Logf("power on → normal in %v", time.Since(up).Round(time.Millisecond))
		require.Eventually(t, func() bool {
			recs = d.history(store.Query{Host: h2.Name, Kind: "monitor"})
			return len(recs) > 0 && recs[len(recs)-1].To == "normal"
		}, 5*time.Second, 20*time.Millisecond, "the return to normal reaches the history")
		recs = d.history(store.Query{Host: h2.Name})
		ks := kindsOf(recs)
		assert.Contains(t, ks, "reboot:"+boot0+">"+boot1)
		assert.Contains(t, ks, "verdict:host-down>rebooted")
		// Back to normal only through the hysteresis (from unreachable, or
		// from error when the agent came up before libvirtd did).
		var back *store.Record
		for i := range recs {
			if recs[i].Kind == "monitor" && recs[i].To == "normal" {
				back = &recs[i]
			}
		}
		require.NotNil(t, back)
		assert.Contains(t, []string{"unreachable", "error"}, back.From)
		assert.Equal(t, "3 consecutive good heartbeats", back.Reason)
	})
}

// TestDetectionStormGuard is "done when" 5: two of three hosts cut at once.
func TestDetectionStormGuard(t *testing.T) {
	ctx := context.Background()
	d := startDetectionLab(t, ctx, "chstorm", 3)
	hs := d.l.Hosts()
	var wg sync.WaitGroup
	for _, h := range hs[:2] {
		wg.Add(1)
		go func() { defer wg.Done(); assert.NoError(t, d.l.CutNetwork(ctx, h)) }()
	}
	wg.Wait()
	var st daemon.Status
	require.Eventually(t, func() bool {
		st, _ = d.client.Status(ctx)
		return st.Storm.Paused
	}, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, st.Storm.Reason, "2 of 3 hosts silent")
	// Hold the partition for a few windows: still paused, nobody judged.
	time.Sleep(5 * detInterval * detMisses)
	st, _ = d.client.Status(ctx)
	assert.True(t, st.Storm.Paused)
	for _, h := range st.Hosts[:2] {
		assert.Contains(t, []detector.Verdict{detector.Paused, detector.Suspect}, h.Verdict, "%s: %s", h.Name, h.VerdictReason)
	}
	for _, h := range hs {
		for _, r := range d.history(store.Query{Host: h.Name, Kind: "verdict"}) {
			assert.NotEqual(t, "host-down", r.To)
			assert.NotEqual(t, "isolated-or-hung", r.To, "nothing is judged while the guard holds")
		}
	}
	for _, h := range hs[:2] {
		require.NoError(t, d.l.RestoreNetwork(ctx, h))
	}
	require.Eventually(t, func() bool {
		st, _ = d.client.Status(ctx)
		return !st.Storm.Paused
	}, 10*time.Second, 20*time.Millisecond)
	recs := d.history(store.Query{Kind: "storm"})
	require.Len(t, recs, 2)
	assert.Equal(t, []string{"storm:running>paused", "storm:paused>running"}, kindsOf(recs))
	assert.Equal(t, recs[0].CorrelationID, recs[1].CorrelationID)
}

// TestDrainedAgentStartsNothing is "done when" 6.
func TestDrainedAgentStartsNothing(t *testing.T) {
	ctx := context.Background()
	d := startDetectionLab(t, ctx, "chdrain", 1)
	h := d.l.Hosts()[0]
	vm, err := d.l.CreateVM(ctx, h, lab.VMSpec{Name: "guest1", Shared: true})
	require.NoError(t, err)
	d.waitHost(h.Name, "reporting the VM", 10*time.Second, func(s daemon.HostStatus) bool { return s.Domains == 1 })

	// Positive control: enabled, QEMU killed → the agent starts it again.
	killed := killQEMU(t, d.l, h)
	// libvirtd may still say "running" for a moment after QEMU died, so
	// wait for a new QEMU process, not for the state.
	require.Eventually(t, func() bool {
		st, _ := d.l.DomainState(ctx, h, vm.Name)
		pids := d.l.QEMUPIDs(h)
		return st == "running" && len(pids) == 1 && !slices.Contains(killed, pids[0])
	}, 15*time.Second, 100*time.Millisecond, "an enabled host's agent restarts a domain whose QEMU died")

	_, err = d.client.SetAdminState(ctx, h.Name, api.AdminRequest{State: node.Drained, Reason: "e2e: drained host must start nothing"})
	require.NoError(t, err)
	d.waitHost(h.Name, "drained", 5*time.Second, func(s daemon.HostStatus) bool { return s.Admin == node.Drained })
	killQEMU(t, d.l, h)
	d.restartAgent(ctx, h)
	// The agent reconciles every 300 ms; give it ten rounds.
	time.Sleep(3 * time.Second)
	st, err := d.l.DomainState(ctx, h, vm.Name)
	require.NoError(t, err)
	assert.Equal(t, "shut off", st, "a drained host's agent never starts a domain")
	assert.Empty(t, d.l.QEMUPIDs(h))
	b, _ := os.ReadFile(h.AgentLog)
	assert.Contains(t, string(b), "drained", "the agent says why it does not start the domain")
}

func killQEMU(t *testing.T, l *lab.Lab, h lab.Host) []int {
	t.Helper()
	pids := l.QEMUPIDs(h)
	require.NotEmpty(t, pids)
	for _, p := range pids {
		require.NoError(t, syscall.Kill(p, syscall.SIGKILL))
	}
	require.Eventually(t, func() bool { return len(l.QEMUPIDs(h)) == 0 }, 5*time.Second, 20*time.Millisecond)
	return pids
}
