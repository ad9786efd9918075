package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"golang.org/x/sys/unix"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// daemonConfig writes a config for two hosts on loopback whose agents and
// libvirtds do not listen: a probe is refused, so a silent host is "agent
// down, host alive".
//
// Its cluster secret is testClusterSecret.
func daemonConfig(t *testing.T, dir string, port int) string {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "api.token"), []byte("api.token-secret-0123456789abcdef\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.secret"), []byte(testClusterSecret+"\n"), 0o600))
	dead := freePort(t)
	cfg := fmt.Sprintf(`cluster: {name: t}
controller:
  listen: 127.0.0.1:%d
  state_dir: %s/state
  api_token_file: %s/api.token
  agent_secret_file: %s/agent.secret
mode: observe
detection:
  heartbeat_interval: 100ms
  missed_heartbeats: 3
  probe_timeout: 100ms
  recovery_heartbeats: 2
policies:
  - name: agent
    levels: [agent-drain]
racks:
  - {name: r1, policy: agent}
hosts:
  - {name: h1, rack: r1, address: 127.0.0.11, agent: {url: "http://127.0.0.11:%d"}, libvirt: {address: "127.0.0.11:%d"}}
  - {name: h2, rack: r1, address: 127.0.0.12, agent: {url: "http://127.0.0.12:%d"}, libvirt: {address: "127.0.0.12:%d"}}
  - {name: h3, rack: r1, address: 127.0.0.13, agent: {url: "http://127.0.0.13:%d"}, libvirt: {address: "127.0.0.13:%d"}}
`, port, dir, dir, dir, dead, dead, dead, dead, dead, dead)
	path := filepath.Join(dir, "chime-fence.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o644))
	return path
}

type runningDaemon struct {
	cancel context.CancelFunc
	done   chan error
	hup    chan os.Signal
	log    *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func startDaemon(t *testing.T, file string, c *api.Client) *runningDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &runningDaemon{cancel: cancel, done: make(chan error, 1), hup: make(chan os.Signal, 1), log: &syncBuffer{}}
	go func() { d.done <- runDaemon(ctx, file, d.hup, zerolog.New(d.log)) }()
	t.Cleanup(func() { d.stop(t) })
	require.Eventually(t, func() bool { _, err := c.Status(context.Background()); return err == nil }, 10*time.Second, 20*time.Millisecond,
		"daemon did not serve its API")
	return d
}

func (d *runningDaemon) stop(t *testing.T) {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	select {
	case err := <-d.done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Error("daemon did not stop")
	}
}

// beater heartbeats for the given hosts until stopped.
func beater(t *testing.T, base string, hosts ...string) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			for seq := uint64(1); ctx.Err() == nil; seq++ {
				b, _ := json.Marshal(heartbeat.Heartbeat{Host: h, BootID: "boot-" + h, Seq: seq, AgentStart: start, SentAt: time.Now(),
					Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}})
				req, _ := http.NewRequestWithContext(ctx, "POST", base+heartbeat.PathHeartbeat, bytes.NewReader(b))
				req.Header.Set("Authorization", "Bearer "+identity.AgentCredential(testClusterSecret, h))
				req.Header.Set(identity.HeaderHost, h)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	return func() { cancel(); wg.Wait() }
}

func hostStatus(t *testing.T, c *api.Client, name string) (detector.Verdict, node.MonitorState) {
	h, err := c.Host(context.Background(), name)
	require.NoError(t, err)
	return h.Verdict, h.Monitor
}

func TestDaemonStatusHistoryAndRestart(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	d := startDaemon(t, file, c)

	stop1 := beater(t, c.Base, "h1", "h3")
	defer stop1()
	stop2 := beater(t, c.Base, "h2")
	require.Eventually(t, func() bool {
		v, m := hostStatus(t, c, "h2")
		return v == detector.Healthy && m == node.Normal
	}, 5*time.Second, 20*time.Millisecond)
	stop2()
	require.Eventually(t, func() bool { v, _ := hostStatus(t, c, "h2"); return v == detector.AgentDown },
		5*time.Second, 20*time.Millisecond, "h2's agent stopped, its address refuses connections: agent down")
	v, m := hostStatus(t, c, "h1")
	assert.Equal(t, detector.Healthy, v)
	assert.Equal(t, node.Normal, m)

	code, out, errOut := runCLI("status", "-c", file)
	require.Equal(t, exitOK, code, errOut)
	assert.Regexp(t, `h2\s+r1\s+enabled\s+suspect\s+\S+ ago\s+agent-down`, out)
	assert.Contains(t, out, "h2: last heartbeat")
	assert.Contains(t, out, "answered")

	// The detector's recorder writes history just after the state changes.
	var recs []store.Record
	var changes []string
	require.Eventually(t, func() bool {
		code, out, errOut = runCLI("history", "h2", "-c", file, "-o", "json")
		require.Equal(t, exitOK, code, errOut)
		recs, changes = nil, nil
		require.NoError(t, json.Unmarshal([]byte(out), &recs))
		for _, r := range recs {
			changes = append(changes, r.Kind+":"+r.From+">"+r.To)
		}
		return slices.Contains(changes, "verdict:suspect>agent-down")
	}, 5*time.Second, 20*time.Millisecond)
	for _, r := range recs {
		assert.Equal(t, "h2", r.Host)
	}
	assert.Subset(t, changes, []string{"monitor:unknown>normal", "monitor:normal>suspect", "verdict:suspect>agent-down"})
	last := recs[len(recs)-1]
	assert.NotEmpty(t, last.CorrelationID)
	assert.Regexp(t, `"probe_answered":\s*true`, string(last.Evidence))

	code, out, _ = runCLI("history", "-c", file, "--kind", "verdict")
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "suspect → agent-down")

	code, out, _ = runCLI("test-node", "h2", "-c", file, "-o", "json", "--timeout", "500ms")
	assert.Equal(t, exitFailure, code, "the agent-drain level cannot work: the agent is down")
	var tn struct {
		Detector struct {
			Available bool
			Host      struct{ Verdict string }
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &tn), out)
	assert.True(t, tn.Detector.Available)
	assert.Equal(t, "agent-down", tn.Detector.Host.Verdict)

	// A broken config on SIGHUP is refused, the daemon keeps running.
	good, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, append(good, []byte("bogus_key: 1\n")...), 0o644))
	d.hup <- os.Interrupt
	require.Eventually(t, func() bool { return strings.Contains(d.log.String(), "config reload refused") }, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, d.log.String(), "bogus_key")
	v, _ = hostStatus(t, c, "h1")
	assert.Equal(t, detector.Healthy, v)
	require.NoError(t, os.WriteFile(file, good, 0o644))

	for _, secret := range []string{"api.token-secret-0123456789abcdef", testClusterSecret, identity.AgentCredential(testClusterSecret, "h1")} {
		assert.NotContains(t, d.log.String(), secret, "tokens never reach the log")
	}

	// Restart: the history survives.
	stop1()
	d.stop(t)
	startDaemon(t, file, c)
	code, out, _ = runCLI("history", "h2", "-c", file)
	require.Equal(t, exitOK, code)
	assert.Contains(t, out, "suspect → agent-down")
}

func TestDaemonRefusesWithoutTokens(t *testing.T) {
	dir := t.TempDir()
	file := daemonConfig(t, dir, freePort(t))
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, []byte(strings.Replace(string(b), "  api_token_file: "+dir+"/api.token\n", "", 1)), 0o644))
	code, _, errOut := runCLI("daemon", "-c", file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "neither controller.api_token_file nor controller.api_tokens is set")

	require.NoError(t, os.WriteFile(file, b, 0o644))
	require.NoError(t, os.Chmod(filepath.Join(dir, "agent.secret"), 0o644))
	code, _, errOut = runCLI("daemon", "-c", file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "cluster secret")
	assert.NotContains(t, errOut, testClusterSecret)
}

func TestStatusWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	file := daemonConfig(t, dir, freePort(t))
	code, _, errOut := runCLI("status", "-c", file)
	assert.Equal(t, exitUnreachable, code, "the same code as the host and task commands")
	assert.Contains(t, errOut, "not reachable")
}

// TestReadinessFailsWhileTheJournalCannotBeWritten puts the state directory
// on a small tmpfs and fills it: once the daemon's writes fail (history of
// a host going silent), /v1/readyz says the journal is not writable; with
// space back and a write through, it is ready again.
func TestReadinessFailsWhileTheJournalCannotBeWritten(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	require.NoError(t, os.Mkdir(state, 0o700))
	require.NoError(t, unix.Mount("tmpfs", state, "tmpfs", 0, "size=4m,mode=0700"))
	t.Cleanup(func() { _ = unix.Unmount(state, unix.MNT_DETACH) })
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	startDaemon(t, file, c)
	require.Eventually(t, func() bool { r, err := c.Ready(context.Background()); return err == nil && r.Ready },
		10*time.Second, 20*time.Millisecond)

	stop := beater(t, c.Base, "h1", "h2", "h3")
	defer func() { stop() }()
	require.Eventually(t, func() bool { v, _ := hostStatus(t, c, "h2"); return v == detector.Healthy },
		5*time.Second, 20*time.Millisecond)

	fill, err := os.Create(filepath.Join(state, "fill"))
	require.NoError(t, err)
	buf := make([]byte, 64<<10)
	for {
		if _, err := fill.Write(buf); err != nil {
			require.ErrorIs(t, err, unix.ENOSPC)
			break
		}
	}
	require.NoError(t, fill.Close())
	// Every silence and return is history; flap the hosts until a write fails.
	var readyErr error
	require.Eventually(t, func() bool {
		stop()
		time.Sleep(400 * time.Millisecond)
		stop = beater(t, c.Base, "h1", "h2", "h3")
		time.Sleep(300 * time.Millisecond)
		_, readyErr = c.Ready(context.Background())
		return readyErr != nil
	}, 60*time.Second, 10*time.Millisecond, "the daemon stayed ready on a full disk")
	require.ErrorIs(t, readyErr, api.ErrUnavailable)
	assert.Contains(t, readyErr.Error(), "journal not writable")
	assert.Contains(t, readyErr.Error(), "no space left on device")

	require.NoError(t, os.Remove(filepath.Join(state, "fill")))
	require.Eventually(t, func() bool {
		stop()
		time.Sleep(400 * time.Millisecond)
		stop = beater(t, c.Base, "h1", "h2", "h3")
		time.Sleep(300 * time.Millisecond)
		r, err := c.Ready(context.Background())
		return err == nil && r.Ready
	}, 30*time.Second, 10*time.Millisecond, "ready again once a write succeeds")
}

// testClusterSecret is daemonConfig's cluster secret.
const testClusterSecret = "cmd-test-cluster-secret-0123456789abcdef"
