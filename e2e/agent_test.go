package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	agentclient "github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
)

// agtToken is the agent's credential (what it presents to the fake
// daemon), agtDaemonCred what the daemon presents to the agent.
const agtToken, agtDaemonCred = "e2e-agent-token-7f3a9c", "e2e-daemon-credential-5d21e0"

// agtStateDir is the agent's --state-dir inside a lab host: under
// /var/lib/libvirt, which the lab keeps per host and across power cycles
// (the machine's own /var/lib is shared by every lab host).
const agtStateDir = "/var/lib/libvirt/chime-agent"

// agtDaemon is a stand-in for the daemon's agent-facing API, served in the
// lab's controller namespace: it records heartbeats and serves an
// assignment the test changes.
type agtDaemon struct {
	mu      sync.Mutex
	asg     heartbeat.Assignment
	hbs     []heartbeat.Heartbeat
	fetched []uint64 // revision of every assignment served
	refused int
}

func (d *agtDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+agtToken {
		d.refused++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case heartbeat.PathHeartbeat:
		hb, err := heartbeat.Decode(r.Body)
		if err != nil {
			d.refused++
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.hbs = append(d.hbs, hb)
		_ = json.NewEncoder(w).Encode(heartbeat.Ack{AdminState: d.asg.AdminState, AssignmentRevision: d.asg.Revision})
	case heartbeat.PathAssignment:
		if r.URL.Query().Get("host") != d.asg.Host {
			http.Error(w, "unknown host", http.StatusNotFound)
			return
		}
		d.fetched = append(d.fetched, d.asg.Revision)
		_ = json.NewEncoder(w).Encode(d.asg)
	default:
		http.NotFound(w, r)
	}
}

func (d *agtDaemon) assign(s node.AdminState, rev uint64, doms ...heartbeat.AssignedDomain) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asg.AdminState, d.asg.Revision, d.asg.Domains = s, rev, doms
}

// set replaces the whole assignment but its host.
func (d *agtDaemon) set(a heartbeat.Assignment) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a.Host = d.asg.Host
	d.asg = a
}

func (d *agtDaemon) heartbeats() []heartbeat.Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]heartbeat.Heartbeat(nil), d.hbs...)
}

// hasFetched reports whether the agent fetched revision rev at least n
// times.
func (d *agtDaemon) hasFetched(rev uint64, n int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := 0
	for _, r := range d.fetched {
		if r == rev {
			c++
		}
	}
	return c >= n
}

func (d *agtDaemon) last() heartbeat.Heartbeat {
	hbs := d.heartbeats()
	if len(hbs) == 0 {
		return heartbeat.Heartbeat{}
	}
	return hbs[len(hbs)-1]
}

func agtDomain(hb heartbeat.Heartbeat, uuid string) (heartbeat.Domain, bool) {
	for _, d := range hb.Domains {
		if d.UUID == uuid {
			return d, true
		}
	}
	return heartbeat.Domain{}, false
}

func buildChimeAgent(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "chime-agent")
	b, err := exec.Command("go", "build", "-o", out, "github.com/chimestack/chime-fence/cmd/chime-agent").CombinedOutput()
	require.NoError(t, err, "go build: %s", b)
	return out
}

// agtClient is an HTTP client whose connections start in netns, so the
// test (in the root namespace) reaches the agent on the lab network.
func agtClient(netns string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := nsenter.Do(netns, func() (err error) { c, err = d.DialContext(ctx, network, addr); return err })
			return c, err
		},
	}}
}

// TestAgentOnLab runs the real chime-agent inside a lab host, started by
// the host's boot like systemd would, against a fake daemon in the
// controller namespace: real heartbeats with the real boot id and the real
// VM; kill -9 of QEMU restarts it when the host is enabled and the VM
// assigned, and does not when drained; a drained host's agent restarted
// by a power cycle starts nothing; re-enabled, it brings the VM back.
func TestAgentOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := buildChimeAgent(t)
	secrets := t.TempDir()
	tokFile := filepath.Join(secrets, "token")
	require.NoError(t, os.WriteFile(tokFile, []byte(agtToken+"\n"), 0o600))
	daemonCredFile := filepath.Join(secrets, "daemon-credential")
	require.NoError(t, os.WriteFile(daemonCredFile, []byte(agtDaemonCred+"\n"), 0o600))

	const hbInterval, reconcileInterval = 200 * time.Millisecond, time.Second
	labDir := t.TempDir()
	shared := filepath.Join(labDir, "shared") // lab.SharedDir, the same path in every host
	l := startLab(t, ctx, lab.Config{Name: "chagt", Dir: labDir, Hosts: 1, AgentCommand: func(h lab.Host) []string {
		// The controller's address comes from the lab, as on a real host
		// it comes from the unit file.
		return []string{"env", "DCRED=" + daemonCredFile, "sh", "-c", `exec "$0" --host "$1" --daemon "http://$CHIME_LAB_CONTROLLER_ADDR:7480" --token-file "$2" --daemon-credential-file "$DCRED" ` +
			`--interface eth0 --storage "$3" --heartbeat-interval "$4" --reconcile-interval "$5" --log-level debug ` +
			`--state-dir ` + agtStateDir,
			bin, h.Name, tokFile, shared, hbInterval.String(), reconcileInterval.String()}
	}})
	h := l.Hosts()[0]
	ctl := l.Controller()
	require.Equal(t, shared, l.SharedDir())

	d := &agtDaemon{asg: heartbeat.Assignment{Host: h.Name, AdminState: node.Enabled, Revision: 1}}
	var ln net.Listener
	require.NoError(t, nsenter.Do(ctl.Netns, func() (err error) { ln, err = net.Listen("tcp", ctl.MgmtAddr+":7480"); return err }))
	srv := &http.Server{Handler: d, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			agtDiagnose(t, l, h, d)
		}
	})

	within := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		require.Eventually(t, cond, timeout, 50*time.Millisecond, what)
	}

	// 1. Real heartbeats with the real boot id.
	boot1, err := l.BootID(h)
	require.NoError(t, err)
	// libvirtd starts with the agent at boot: the first beats may say it
	// is not up yet.
	within("heartbeats with the host's boot id and libvirtd up", 30*time.Second, func() bool {
		hb := d.last()
		return hb.BootID == boot1 && hb.Health.Libvirt.OK
	})
	hb := d.last()
	assert.Equal(t, h.Name, hb.Host)
	assert.True(t, hb.Health.Libvirt.OK, hb.Health.Libvirt.Detail)
	assert.Equal(t, []heartbeat.Check{{Name: "eth0", OK: true}}, hb.Health.Interfaces)
	assert.Equal(t, []heartbeat.Check{{Name: shared, OK: true}}, hb.Health.Storage)
	assert.Empty(t, hb.Health.Fault())

	// 2. A real VM, assigned to the host; the agent lists it running.
	_, err = l.CreateVM(ctx, h, lab.VMSpec{Name: "agt1", Shared: true})
	require.NoError(t, err)
	out, err := l.Virsh(ctx, h, "domuuid", "agt1")
	require.NoError(t, err)
	uuid := strings.TrimSpace(out)
	vm := heartbeat.AssignedDomain{UUID: uuid, Name: "agt1"}
	d.assign(node.Enabled, 2, vm)
	within("the agent fetches revision 2", 10*time.Second, func() bool { return d.hasFetched(2, 1) })
	within("heartbeats list agt1 running", 10*time.Second, func() bool {
		dom, ok := agtDomain(d.last(), uuid)
		return ok && dom.Name == "agt1" && dom.State == hypervisor.StateRunning
	})

	// The status API, from the controller, as the daemon's client asks.
	st := agtStatus(t, ctx, ctl.Netns, h.MgmtAddr, agtDaemonCred)
	assert.Equal(t, h.Name, st.Host)
	assert.Equal(t, boot1, st.BootID)
	assert.Equal(t, "enabled", st.AdminState)
	assert.Equal(t, 1, st.Running())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+h.MgmtAddr+":7481/v1/status", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := agtClient(ctl.Netns).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// 3. Enabled: kill -9 of QEMU → libvirt says crashed → restarted.
	// A start can race the dying QEMU's image lock and fail ("failed", also
	// restartable); the next round then starts it.
	runningAgain := func(what string, old int) {
		t.Helper()
		within(what, 30*time.Second, func() bool {
			st, err := l.DomainState(ctx, h, "agt1")
			pids := l.QEMUPIDs(h)
			return err == nil && st == "running" && len(pids) == 1 && pids[0] != old
		})
		from := len(d.heartbeats())
		within("heartbeats show it running", 10*time.Second, func() bool {
			hbs := d.heartbeats()
			if len(hbs) <= from {
				return false
			}
			dom, ok := agtDomain(hbs[len(hbs)-1], uuid)
			return ok && dom.State == hypervisor.StateRunning
		})
	}
	runningAgain("agt1 restarted after kill -9", agtKillQEMU(t, l, h))
	logText, err := os.ReadFile(h.AgentLog)
	require.NoError(t, err)
	assert.Contains(t, string(logText), `"component":"reconcile","action":"start","uuid":"`+uuid+`","domain":"agt1","reason":"shut off (crashed)`,
		"libvirt reported the kill -9 as shut off (crashed), and reconcile acted on it")
	assert.NotContains(t, string(logText), agtToken, "the token never reaches the log")
	assert.NotContains(t, string(logText), agtDaemonCred, "nor the daemon's credential")

	// 4. Drained: kill -9 → stays down.
	d.assign(node.Drained, 3, vm)
	within("the agent fetches revision 3", 10*time.Second, func() bool { return d.hasFetched(3, 1) })
	agtKillQEMU(t, l, h)
	stayedDown := func(reason string) {
		t.Helper()
		within("heartbeats show agt1 shut off ("+reason+")", 10*time.Second, func() bool {
			dom, ok := agtDomain(d.last(), uuid)
			return ok && dom.State == hypervisor.StateShutoff && dom.Reason == reason
		})
		from := len(d.heartbeats())
		// Three reconcile rounds.
		time.Sleep(3*reconcileInterval + hbInterval)
		hbs := d.heartbeats()[from:]
		require.NotEmpty(t, hbs)
		for _, hb := range hbs {
			dom, ok := agtDomain(hb, uuid)
			require.True(t, ok, "seq %d lists agt1", hb.Seq)
			assert.Equal(t, hypervisor.StateShutoff, dom.State, "seq %d: drained host started agt1", hb.Seq)
		}
		assert.Empty(t, l.QEMUPIDs(h), "no QEMU on the drained host")
	}
	stayedDown("crashed")

	// 5. Power cycle while drained: a new boot, a new agent (seq from 1),
	// the admin state fetched again, and still nothing starts. libvirt
	// reports the VM as shut off (unknown) after the power cycle.
	require.NoError(t, l.PowerLoss(ctx, h))
	require.NoError(t, l.PowerOn(ctx, h))
	boot2, err := l.BootID(h)
	require.NoError(t, err)
	require.NotEqual(t, boot1, boot2)
	within("heartbeats from the new boot", 30*time.Second, func() bool { return d.last().BootID == boot2 })
	first, prev := firstOfBoot(d.heartbeats(), boot2), firstOfBoot(d.heartbeats(), boot1)
	assert.LessOrEqual(t, first.Seq, uint64(3), "a new agent process counts from 1 (the first beats may be lost while the NIC comes up)")
	assert.True(t, first.AgentStart.After(prev.AgentStart), "a new agent process")
	within("the new agent fetched its assignment", 10*time.Second, func() bool { return d.hasFetched(3, 2) })
	stayedDown("unknown")
	st = agtStatus(t, ctx, ctl.Netns, h.MgmtAddr, agtDaemonCred)
	assert.Equal(t, "drained", st.AdminState)
	assert.Equal(t, boot2, st.BootID)

	// 6. Enabled again: the agent starts the VM the power cycle stopped.
	d.assign(node.Enabled, 4, vm)
	runningAgain("agt1 started after the power cycle", 0)
	d.mu.Lock()
	assert.Zero(t, d.refused, "every heartbeat was well-formed and authenticated")
	d.mu.Unlock()
}

// agtKillQEMU kills h's only QEMU with SIGKILL and returns its PID.
func agtKillQEMU(t *testing.T, l *lab.Lab, h lab.Host) int {
	t.Helper()
	pids := l.QEMUPIDs(h)
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		t.Logf("QEMU %d: %.200s", p, strings.ReplaceAll(string(b), "\x00", " "))
	}
	require.Len(t, pids, 1)
	require.NoError(t, syscall.Kill(pids[0], syscall.SIGKILL))
	require.Eventually(t, func() bool { now := l.QEMUPIDs(h); return len(now) == 0 || now[0] != pids[0] },
		10*time.Second, 20*time.Millisecond, "QEMU %d gone", pids[0])
	return pids[0]
}

func firstOfBoot(hbs []heartbeat.Heartbeat, boot string) heartbeat.Heartbeat {
	for _, hb := range hbs {
		if hb.BootID == boot {
			return hb
		}
	}
	return heartbeat.Heartbeat{}
}

func agtStatus(t *testing.T, ctx context.Context, netns, addr, token string) agentclient.Status {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:7481/v1/status", addr), nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(identity.HeaderNonce, "e2e-nonce")
	resp, err := agtClient(netns).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	// The answer is the agent's: signed with its own credential.
	require.NoError(t, identity.VerifyReply(agtToken, http.MethodGet, "/v1/status", "e2e-nonce", body, resp.Header.Get(identity.HeaderReplyMAC)))
	var st agentclient.Status
	require.NoError(t, json.Unmarshal(body, &st))
	return st
}

func tail8k(b []byte) string {
	if len(b) > 8192 {
		b = b[len(b)-8192:]
	}
	return string(b)
}

// agtDiagnose logs what explains a failure: the last heartbeats, QEMU
// processes left, QEMU's and libvirtd's messages, the agent's log.
func agtDiagnose(t *testing.T, l *lab.Lab, h lab.Host, d *agtDaemon) {
	hbs := d.heartbeats()
	if len(hbs) > 40 {
		hbs = hbs[len(hbs)-40:]
	}
	for _, hb := range hbs {
		var doms []string
		for _, dom := range hb.Domains {
			doms = append(doms, fmt.Sprintf("%s %s(%s)", dom.Name, dom.State, dom.Reason))
		}
		t.Logf("heartbeat boot %.8s seq %d libvirt ok %v: %v", hb.BootID, hb.Seq, hb.Health.Libvirt.OK, doms)
	}
	for _, p := range l.QEMUPIDs(h) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		t.Logf("QEMU left: %.120s", st)
	}
	b, _ := os.ReadFile(filepath.Join(h.Dir, "log", "qemu", "agt1.log"))
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "20") { // QEMU's own messages, not its command lines
			t.Logf("qemu: %s", line)
		}
	}
	b, _ = os.ReadFile(filepath.Join(h.Dir, "log", "libvirtd.log"))
	t.Logf("libvirtd.log (last 8 KiB):\n%s", tail8k(b))
	b, _ = os.ReadFile(h.AgentLog)
	t.Logf("agent log (last 8 KiB):\n%s", tail8k(b))
}

// TestAgentEvictionAndDrainOnLab: the real chime-agent in a lab host with
// real VMs, against a fake daemon.
//
//  1. A domain relocated away while the host runs (the assignment evicts
//     it): its QEMU is destroyed and it is undefined; the other stays.
//  2. The host is power-cycled with a stale copy defined; the daemon's
//     assignment evicts it: the new agent undefines it, no heartbeat of
//     the new boot ever lists it, and the drained host starts nothing.
//  3. chime-agent drain with the management network cut: the dry run
//     stops nothing; --confirm destroys the running VM and writes the
//     marker; after a power cycle with the network back the agent starts
//     nothing although the daemon still says enabled (set before the
//     drain); the daemon enabling the host after the drain lifts it.
func TestAgentEvictionAndDrainOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin := buildChimeAgent(t)
	secrets := t.TempDir()
	tokFile := filepath.Join(secrets, "token")
	require.NoError(t, os.WriteFile(tokFile, []byte(agtToken+"\n"), 0o600))
	daemonCredFile := filepath.Join(secrets, "daemon-credential")
	require.NoError(t, os.WriteFile(daemonCredFile, []byte(agtDaemonCred+"\n"), 0o600))
	const hbInterval, reconcileInterval = 200 * time.Millisecond, time.Second
	l := startLab(t, ctx, lab.Config{Name: "chevd", Hosts: 1, AgentCommand: func(h lab.Host) []string {
		return []string{"env", "DCRED=" + daemonCredFile, "sh", "-c", `exec "$0" --host "$1" --daemon "http://$CHIME_LAB_CONTROLLER_ADDR:7480" --token-file "$2" --daemon-credential-file "$DCRED" ` +
			`--heartbeat-interval "$3" --reconcile-interval "$4" --state-dir "$5" --log-level debug`,
			bin, h.Name, tokFile, hbInterval.String(), reconcileInterval.String(), agtStateDir}
	}})
	h := l.Hosts()[0]
	ctl := l.Controller()
	marker := filepath.Join(h.Dir, "lib", "chime-agent", "drained.json") // agtStateDir seen from outside

	d := &agtDaemon{asg: heartbeat.Assignment{Host: h.Name, AdminState: node.Enabled, Revision: 1}}
	var ln net.Listener
	require.NoError(t, nsenter.Do(ctl.Netns, func() (err error) { ln, err = net.Listen("tcp", ctl.MgmtAddr+":7480"); return err }))
	srv := &http.Server{Handler: d, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	t.Cleanup(func() {
		if t.Failed() {
			agtDiagnose(t, l, h, d)
		}
	})
	within := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		require.Eventually(t, cond, timeout, 50*time.Millisecond, what)
	}
	// defined and state may run inside Eventually: no require there.
	defined := func(name string) bool {
		out, err := l.Virsh(ctx, h, "list", "--all", "--name")
		return err == nil && slices.Contains(strings.Fields(out), name)
	}
	state := func(name string) string {
		st, err := l.DomainState(ctx, h, name)
		if err != nil {
			return "error: " + err.Error()
		}
		return st
	}

	evVM, err := l.CreateVM(ctx, h, lab.VMSpec{Name: "ev1", Shared: true})
	require.NoError(t, err)
	_, err = l.CreateVM(ctx, h, lab.VMSpec{Name: "stay1", Shared: true})
	require.NoError(t, err)
	uuidOf := func(name string) string {
		out, err := l.Virsh(ctx, h, "domuuid", name)
		require.NoError(t, err)
		return strings.TrimSpace(out)
	}
	ev := heartbeat.AssignedDomain{UUID: uuidOf("ev1"), Name: "ev1"}
	stay := heartbeat.AssignedDomain{UUID: uuidOf("stay1"), Name: "stay1"}
	d.set(heartbeat.Assignment{AdminState: node.Enabled, Revision: 2, Domains: []heartbeat.AssignedDomain{ev, stay}})
	within("heartbeats list both VMs running", 30*time.Second, func() bool {
		a, okA := agtDomain(d.last(), ev.UUID)
		b, okB := agtDomain(d.last(), stay.UUID)
		return okA && okB && a.State == hypervisor.StateRunning && b.State == hypervisor.StateRunning
	})
	require.Len(t, l.QEMUPIDs(h), 2)

	// 1. ev1 relocated away while the host runs.
	d.set(heartbeat.Assignment{AdminState: node.Enabled, Revision: 3, Domains: []heartbeat.AssignedDomain{stay}, Evicted: []heartbeat.AssignedDomain{ev}})
	within("ev1 destroyed and undefined", 20*time.Second, func() bool {
		return !defined("ev1") && len(l.QEMUPIDs(h)) == 1
	})
	within("heartbeats no longer list ev1", 10*time.Second, func() bool {
		_, listed := agtDomain(d.last(), ev.UUID)
		return !listed && d.last().Health.Libvirt.OK
	})
	assert.Equal(t, "running", state("stay1"))
	assert.Empty(t, d.last().Health.Fault())
	logText, err := os.ReadFile(h.AgentLog)
	require.NoError(t, err)
	assert.Contains(t, string(logText), `"message":"evicted domain destroyed: it runs on another host now"`)
	assert.Contains(t, string(logText), `"message":"evicted domain undefined"`)

	// 2. A stale copy defined again; the host is fenced (power loss) and
	// comes back drained with ev1 evicted.
	d.set(heartbeat.Assignment{AdminState: node.Drained, Revision: 4, Domains: []heartbeat.AssignedDomain{stay}})
	within("the agent fetches revision 4", 10*time.Second, func() bool { return d.hasFetched(4, 1) })
	// The same domain (same UUID) as the copy rebuilt elsewhere.
	evVM.XMLFile = filepath.Join(t.TempDir(), "ev1.xml")
	require.NoError(t, os.WriteFile(evVM.XMLFile, []byte(strings.Replace(evVM.XML, "</name>", "</name>\n  <uuid>"+ev.UUID+"</uuid>", 1)), 0o644))
	require.NoError(t, l.DefineVM(ctx, h, evVM))
	require.Equal(t, ev.UUID, uuidOf("ev1"))
	require.NoError(t, l.StartVM(ctx, h, "ev1"))
	require.NoError(t, l.PowerLoss(ctx, h))
	d.set(heartbeat.Assignment{AdminState: node.Drained, Revision: 5, Domains: []heartbeat.AssignedDomain{stay}, Evicted: []heartbeat.AssignedDomain{ev}})
	boot1 := d.last().BootID
	require.NoError(t, l.PowerOn(ctx, h))
	boot2, err := l.BootID(h)
	require.NoError(t, err)
	require.NotEqual(t, boot1, boot2)
	within("heartbeats of the new boot with libvirtd up", 30*time.Second, func() bool {
		hb := d.last()
		return hb.BootID == boot2 && hb.Health.Libvirt.OK && hb.Domains != nil
	})
	within("ev1 undefined on the returning host", 10*time.Second, func() bool { return !defined("ev1") })
	for _, hb := range d.heartbeats() {
		if hb.BootID != boot2 {
			continue
		}
		// libvirtd starts with the agent at boot: the agent's first cleanup
		// may find it not up yet, and the health check's connection may
		// list ev1 before the next cleanup. Such a heartbeat is never
		// fault-free, so the daemon never sees the host ready with it.
		if _, listed := agtDomain(hb, ev.UUID); listed {
			assert.Contains(t, hb.Health.Fault(), "evicted domain ev1 "+ev.UUID+" not cleaned up", "heartbeat seq %d lists ev1", hb.Seq)
		}
	}
	first := firstOfBoot(d.heartbeats(), boot2)
	t.Logf("first heartbeat of the new boot: seq %d, libvirt ok %v, evictions %v", first.Seq, first.Health.Libvirt.OK, first.Health.Evictions)
	within("a fault-free heartbeat without ev1", 10*time.Second, func() bool {
		hb := d.last()
		_, listed := agtDomain(hb, ev.UUID)
		return hb.Health.Libvirt.OK && hb.Domains != nil && !listed && hb.Health.Fault() == ""
	})
	assert.Equal(t, "shut off", state("stay1"), "drained: the non-evicted domain stays defined and stopped")
	assert.Empty(t, l.QEMUPIDs(h))
	logText, err = os.ReadFile(h.AgentLog)
	require.NoError(t, err)
	boot := string(logText)[strings.LastIndex(string(logText), `"message":"agent starting`):]
	undefined, delivered := strings.Index(boot, `"uuid":"`+ev.UUID+`"`), strings.Index(boot, `"message":"first heartbeat delivered"`)
	require.GreaterOrEqual(t, undefined, 0, "the new agent logged the cleanup of ev1")
	if first.Health.Libvirt.OK {
		assert.Less(t, undefined, delivered, "libvirtd was up at the agent's start: ev1 was undefined before the first heartbeat")
	}

	// 3. Enabled again (and ev1 no longer evicted: the daemon saw it gone).
	beforeDrain := time.Now()
	d.set(heartbeat.Assignment{AdminState: node.Enabled, AdminSince: beforeDrain, Revision: 6, Domains: []heartbeat.AssignedDomain{stay}})
	within("stay1 started (shut off unknown after the power cycle)", 30*time.Second, func() bool {
		return state("stay1") == "running" && len(l.QEMUPIDs(h)) == 1
	})
	require.NoError(t, l.CutNetwork(ctx, h))
	drainCLI := func(args ...string) (string, error) {
		cmd, err := l.HostCommand(ctx, h, bin, append([]string{"drain", "--state-dir", agtStateDir, "--host", h.Name}, args...)...)
		require.NoError(t, err)
		out, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Logf("chime-agent drain %v stderr: %s", args, ee.Stderr)
		}
		return string(out), err
	}
	out, err := drainCLI()
	require.NoError(t, err, out)
	t.Logf("dry run:\n%s", out)
	assert.Regexp(t, `would destroy\s+stay1\s+`+stay.UUID, out)
	assert.Equal(t, "running", state("stay1"), "a dry run stops nothing")
	_, err = os.Stat(marker)
	assert.ErrorIs(t, err, os.ErrNotExist)

	out, err = drainCLI("--confirm")
	require.NoError(t, err, out)
	t.Logf("drain:\n%s", out)
	assert.Regexp(t, `destroyed\s+stay1\s+`+stay.UUID, out)
	assert.Contains(t, out, "0 domains active after the drain")
	assert.Empty(t, l.QEMUPIDs(h), "no QEMU left on the drained host")
	_, err = os.Stat(marker)
	require.NoError(t, err, "the marker is on the host's disk")

	// Network back, power cycle: stay1 reads shut off (unknown), which the
	// agent would restart, and the daemon still says enabled.
	require.NoError(t, l.RestoreNetwork(ctx, h))
	require.NoError(t, l.PowerLoss(ctx, h))
	require.NoError(t, l.PowerOn(ctx, h))
	boot3, err := l.BootID(h)
	require.NoError(t, err)
	within("heartbeats of the third boot report the local drain", 30*time.Second, func() bool {
		hb := d.last()
		return hb.BootID == boot3 && hb.Health.Libvirt.OK && hb.LocalDrain != nil
	})
	assert.Equal(t, "cli", d.last().LocalDrain.By)
	within("the new agent fetched revision 6", 10*time.Second, func() bool { return d.hasFetched(6, 2) })
	from := len(d.heartbeats())
	time.Sleep(3*reconcileInterval + hbInterval) // three reconcile rounds
	for _, hb := range d.heartbeats()[from:] {
		dom, ok := agtDomain(hb, stay.UUID)
		require.True(t, ok, "seq %d lists stay1", hb.Seq)
		assert.Equal(t, hypervisor.StateShutoff, dom.State, "seq %d: a locally drained host started stay1", hb.Seq)
	}
	assert.Empty(t, l.QEMUPIDs(h))
	st := agtStatus(t, ctx, ctl.Netns, h.MgmtAddr, agtDaemonCred)
	assert.True(t, st.LocalDrain)
	assert.Equal(t, "drained", st.AdminState)

	// The operator enables the host after the drain: the marker goes, the
	// VM comes back.
	d.set(heartbeat.Assignment{AdminState: node.Enabled, AdminSince: time.Now(), Revision: 7, Domains: []heartbeat.AssignedDomain{stay}})
	within("stay1 started once the daemon enabled the host after the drain", 30*time.Second, func() bool {
		return state("stay1") == "running" && len(l.QEMUPIDs(h)) == 1
	})
	_, err = os.Stat(marker)
	assert.ErrorIs(t, err, os.ErrNotExist, "marker lifted")
	d.mu.Lock()
	assert.Zero(t, d.refused, "every heartbeat was well-formed and authenticated")
	d.mu.Unlock()
}
