package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/agent"
	agentclient "github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
)

// testSecret is the tests' cluster secret: token is n1's agent credential,
// daemonToken what the daemon presents to n1's agent.
const testSecret = "chime-agent-test-cluster-secret-0123456789"

var (
	token       = identity.AgentCredential(testSecret, "n1")
	daemonToken = identity.DaemonCredential(testSecret, "n1")
)

// lockedBuf collects stderr written by the agent's goroutines.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var o, e lockedBuf
	code := run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func tokenFile(t *testing.T, mode os.FileMode) string {
	t.Helper()
	return secretFile(t, token, mode)
}

func daemonCredFile(t *testing.T) string {
	t.Helper()
	return secretFile(t, daemonToken, 0o600)
}

func secretFile(t *testing.T, v string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(p, []byte(v+"\n"), mode))
	require.NoError(t, os.Chmod(p, mode))
	return p
}

func bootIDFile(t *testing.T, id string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boot_id")
	require.NoError(t, os.WriteFile(p, []byte(id), 0o644))
	return p
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "--version")
	assert.Equal(t, exitOK, code)
	assert.Regexp(t, `^chime-agent (devel|v?\d)`, out)
}

func TestUsageErrors(t *testing.T) {
	good := tokenFile(t, 0o600)
	goodDaemon := daemonCredFile(t)
	boot := bootIDFile(t, "b1\n")
	for _, tc := range []struct {
		name string
		args []string
		msgs []string
	}{
		{"nothing", nil, []string{"--daemon is required", "--token-file is required", "--daemon-credential-file is required"}},
		{"bad duration", []string{"--heartbeat-interval", "soon"}, []string{`invalid argument "soon" for "--heartbeat-interval"`}},
		{"unknown flag", []string{"--daemon-url", "x"}, []string{"unknown flag: --daemon-url"}},
		{"token missing", []string{"--daemon", "http://127.0.0.1:1", "--token-file", "/nonexistent/token", "--daemon-credential-file", goodDaemon}, []string{"agent credential: stat /nonexistent/token: no such file"}},
		{"token world-readable", []string{"--daemon", "http://127.0.0.1:1", "--token-file", tokenFile(t, 0o644), "--daemon-credential-file", goodDaemon}, []string{"is readable by group or others", "chmod go-r"}},
		{"daemon credential world-readable", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", secretFile(t, daemonToken, 0o640)}, []string{"daemon credential: file", "is readable by group or others"}},
		{"boot id missing", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--boot-id-file", "/nonexistent/boot_id"}, []string{"boot id: open /nonexistent/boot_id"}},
		{"boot id empty", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--boot-id-file", bootIDFile(t, "\n")}, []string{"is empty"}},
		{"bad daemon URL", []string{"--daemon", "10.0.0.2:7480", "--token-file", good, "--daemon-credential-file", goodDaemon, "--boot-id-file", boot}, []string{`--daemon: daemon address "10.0.0.2:7480" is not an http(s) URL`}},
		{"bad libvirt address", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--boot-id-file", boot, "--libvirt", "unix:"}, []string{"--libvirt", "empty socket path"}},
		{"bad storage", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--boot-id-file", boot, "--storage", "relative/dir"}, []string{`storage path "relative/dir" is not absolute`}},
		{"bad log level", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--log-level", "loud"}, []string{`--log-level "loud"`}},
		{"relative state dir", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--state-dir", "var/lib"}, []string{`--state-dir "var/lib": want an absolute path`}},
		{"bad transport", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--heartbeat-transport", "tcp"}, []string{`--heartbeat-transport "tcp": want auto, udp or http`}},
		{"udp address without port", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--heartbeat-udp", "10.0.0.2"}, []string{`--heartbeat-udp: UDP address "10.0.0.2" is not HOST:PORT like 10.0.0.2:7480`}},
		{"udp address bad port", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--heartbeat-udp", "10.0.0.2:99999"}, []string{`--heartbeat-udp: UDP address "10.0.0.2:99999": port "99999" is not a number in 1..65535`}},
		{"udp address without host", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--heartbeat-udp", ":7480"}, []string{`--heartbeat-udp: UDP address ":7480" names no host`}},
		{"udp address with http", []string{"--daemon", "http://127.0.0.1:1", "--token-file", good, "--daemon-credential-file", goodDaemon, "--heartbeat-transport", "http", "--heartbeat-udp", "10.0.0.2:7480"}, []string{"--heartbeat-udp is of no use with --heartbeat-transport http"}},
		{"every flag problem at once", []string{"--heartbeat-transport", "", "--heartbeat-udp", "x"}, []string{"--daemon is required", `--heartbeat-transport "": want`, `--heartbeat-udp: UDP address "x" is not HOST:PORT`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			assert.Equal(t, exitUsage, code)
			assert.Empty(t, out)
			for _, m := range tc.msgs {
				assert.Contains(t, errOut, m)
			}
			assert.NotContains(t, errOut, token)
		})
	}
}

func TestListenTakenIsAFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	code, _, errOut := runCLI(t, "--daemon", "http://127.0.0.1:1", "--token-file", tokenFile(t, 0o600), "--daemon-credential-file", daemonCredFile(t),
		"--boot-id-file", bootIDFile(t, "b1"), "--listen", ln.Addr().String())
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, errOut, "--listen")
	assert.Contains(t, errOut, "address already in use")
}

// TestRunsAndStopsCleanly: the real binary's wiring against a fake daemon,
// with no libvirtd at the configured socket: heartbeats arrive with the
// boot id and report libvirtd down (domains unknown); the status API
// refuses to claim "no domains"; cancel (SIGTERM in main) exits 0; the
// token is never logged.
func TestRunsAndStopsCleanly(t *testing.T) {
	var mu sync.Mutex
	var hbs []heartbeat.Heartbeat
	daemon := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case heartbeat.PathHeartbeat:
			hb, err := heartbeat.Decode(r.Body)
			if !assert.NoError(t, err) {
				w.WriteHeader(400)
				return
			}
			mu.Lock()
			hbs = append(hbs, hb)
			mu.Unlock()
			_ = json.NewEncoder(w).Encode(heartbeat.Ack{AdminState: node.Disabled, AssignmentRevision: 1})
		case heartbeat.PathAssignment:
			_ = json.NewEncoder(w).Encode(heartbeat.Assignment{Host: r.URL.Query().Get("host"), AdminState: node.Disabled, Revision: 1})
		}
	}))
	defer daemon.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := ln.Addr().String()
	require.NoError(t, ln.Close())

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr lockedBuf
	stateDir := t.TempDir()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--host", "n1", "--daemon", daemon.URL, "--token-file", tokenFile(t, 0o600), "--daemon-credential-file", daemonCredFile(t),
			"--boot-id-file", bootIDFile(t, "boot-abc\n"), "--listen", listen,
			"--libvirt", "unix:" + filepath.Join(t.TempDir(), "no-libvirt-sock"),
			"--heartbeat-interval", "50ms", "--storage", t.TempDir(), "--state-dir", stateDir}, &lockedBuf{}, &stderr)
	}()

	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(hbs) >= 3 }, 10*time.Second, 10*time.Millisecond)
	mu.Lock()
	hb := hbs[len(hbs)-1]
	mu.Unlock()
	assert.Equal(t, "n1", hb.Host)
	assert.Equal(t, "boot-abc", hb.BootID)
	assert.False(t, hb.Health.Libvirt.OK)
	assert.Nil(t, hb.Domains, "libvirtd down: domains unknown")
	require.Len(t, hb.Health.Storage, 1)
	assert.True(t, hb.Health.Storage[0].OK)

	c, err := agentclient.New(agentclient.Config{Host: "n1", URL: "http://" + listen, Credentials: []agentclient.Credential{{Daemon: daemonToken, Agent: token}}})
	require.NoError(t, err)
	_, err = c.Status(context.Background())
	assert.ErrorIs(t, err, power.ErrProtocol, "libvirtd down: 503, not an empty list")

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, exitOK, code, stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatal("chime-agent did not stop after cancel")
	}
	logs := stderr.String()
	assert.Contains(t, logs, `"component":"heartbeat"`)
	assert.Contains(t, logs, `"message":"agent stopped"`)
	// Auto mode, and nothing listens for UDP on the daemon's port: every
	// beat went over HTTP; after 3, HTTP is sticky, logged once.
	assert.Contains(t, logs, `"transport":"auto"`)
	assert.Equal(t, 1, strings.Count(logs, `"message":"heartbeats over HTTP: UDP did not answer`), logs)
	seen, err := os.ReadFile(filepath.Join(stateDir, agent.AdminFile))
	require.NoError(t, err, "the admin state fetched is kept in --state-dir")
	assert.Contains(t, string(seen), `"state": "disabled"`)
	assert.NotContains(t, logs, token)
}

// TestSystemdUnit: the example unit restarts the agent forever and its
// ExecStart uses only flags chime-agent has.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../examples/chime-agent.service")
	require.NoError(t, err)
	unit := strings.ReplaceAll(string(b), "\\\n", " ")
	var exec []string
	keys := map[string]string{}
	for _, line := range strings.Split(unit, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		keys[k] = strings.TrimSpace(v)
		if k == "ExecStart" {
			exec = strings.Fields(v)
		}
	}
	assert.Equal(t, "always", keys["Restart"])
	assert.Equal(t, "1", keys["RestartSec"])
	assert.Equal(t, "0", keys["StartLimitIntervalSec"], "a crash loop must not make systemd give up")
	require.NotEmpty(t, exec)
	assert.Equal(t, "/usr/local/bin/chime-agent", exec[0])
	cmd := newRoot(&lockedBuf{}, &lockedBuf{})
	require.NoError(t, cmd.ParseFlags(exec[1:]), "every flag in ExecStart exists")
	assert.Equal(t, "http://10.0.0.2:7480", cmd.Flag("daemon").Value.String())
}

// TestHeartbeatsOverUDP: by default heartbeats are datagrams to the host
// and port of --daemon (a UDP socket on the fake daemon's port); HTTP
// carries only the assignment. With --heartbeat-transport http, no
// datagram is sent.
func TestHeartbeatsOverUDP(t *testing.T) {
	var mu sync.Mutex
	var httpBeats int
	var udpBeats []heartbeat.Heartbeat
	var daemon *httptest.Server
	var pc net.PacketConn
	for range 5 { // the UDP port of the same number may be taken
		daemon = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case heartbeat.PathHeartbeat:
				mu.Lock()
				httpBeats++
				mu.Unlock()
				_ = json.NewEncoder(w).Encode(heartbeat.Ack{AdminState: node.Disabled, AssignmentRevision: 1})
			case heartbeat.PathAssignment:
				_ = json.NewEncoder(w).Encode(heartbeat.Assignment{Host: r.URL.Query().Get("host"), AdminState: node.Disabled, Revision: 1})
			}
		}))
		var err error
		if pc, err = net.ListenPacket("udp", daemon.Listener.Addr().String()); err == nil {
			break
		}
		daemon.Close()
	}
	require.NotNil(t, pc, "a UDP socket on the daemon's port")
	defer daemon.Close()
	sealer, err := heartbeat.NewSealer(token)
	require.NoError(t, err)
	served := make(chan struct{})
	defer func() { _ = pc.Close(); <-served }()
	go func() {
		defer close(served)
		buf := make([]byte, heartbeat.MaxDatagram)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, payload, err := sealer.Open(buf[:n])
			if !assert.NoError(t, err) {
				continue
			}
			hb, err := heartbeat.DecodeHeartbeatPayload(payload)
			if !assert.NoError(t, err) {
				continue
			}
			mu.Lock()
			udpBeats = append(udpBeats, hb)
			mu.Unlock()
			r := heartbeat.ReplyTo(hb)
			r.Ack = &heartbeat.Ack{AdminState: node.Disabled, AssignmentRevision: 1}
			b, _ := sealer.SealReply(r)
			_, _ = pc.WriteTo(b, from)
		}
	}()
	count := func() (int, int) { mu.Lock(); defer mu.Unlock(); return len(udpBeats), httpBeats }

	for _, tc := range []struct {
		transport string
		overUDP   bool
	}{{"auto", true}, {"udp", true}, {"http", false}} {
		t.Run(tc.transport, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			udp0, http0 := count()
			var stderr lockedBuf
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"--host", "n1", "--daemon", daemon.URL, "--token-file", tokenFile(t, 0o600), "--daemon-credential-file", daemonCredFile(t),
					"--boot-id-file", bootIDFile(t, "boot-abc\n"), "--listen", "127.0.0.1:0",
					"--libvirt", "unix:" + filepath.Join(t.TempDir(), "no-libvirt-sock"),
					"--heartbeat-interval", "50ms", "--state-dir", t.TempDir(), "--heartbeat-transport", tc.transport}, &lockedBuf{}, &stderr)
			}()
			require.Eventually(t, func() bool { u, h := count(); return u+h >= udp0+http0+3 }, 10*time.Second, 10*time.Millisecond)
			cancel()
			select {
			case code := <-done:
				assert.Equal(t, exitOK, code, stderr.String())
			case <-time.After(15 * time.Second):
				t.Fatal("chime-agent did not stop after cancel")
			}
			u, h := count()
			if tc.overUDP {
				assert.Equal(t, http0, h, "no heartbeat over HTTP")
				mu.Lock()
				hb := udpBeats[len(udpBeats)-1]
				mu.Unlock()
				assert.Equal(t, "n1", hb.Host)
				assert.Equal(t, "boot-abc", hb.BootID)
				assert.Contains(t, stderr.String(), `"udp":"`+pc.LocalAddr().String()+`"`, "the default address: --daemon's")
			} else {
				assert.Equal(t, udp0, u, "no datagram")
				assert.Contains(t, stderr.String(), `"message":"heartbeats over HTTP"`)
			}
			assert.NotContains(t, stderr.String(), token)
		})
	}
}

// TestPrepareBootUnit: the example unit runs prepare-boot once per boot
// before libvirtd and virtqemud, which require it, and its ExecStart uses
// only flags prepare-boot has.
func TestPrepareBootUnit(t *testing.T) {
	b, err := os.ReadFile("../../examples/chime-agent-prepare-boot.service")
	require.NoError(t, err)
	unit := strings.ReplaceAll(string(b), "\\\n", " ")
	var exec []string
	keys := map[string][]string{}
	for _, line := range strings.Split(unit, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		keys[k] = append(keys[k], strings.Fields(v)...)
		if k == "ExecStart" {
			exec = strings.Fields(v)
		}
	}
	assert.Equal(t, []string{"oneshot"}, keys["Type"])
	assert.Subset(t, keys["Before"], []string{"libvirtd.service", "virtqemud.service"}, "ordered before either libvirt daemon")
	assert.Subset(t, keys["RequiredBy"], []string{"libvirtd.service", "virtqemud.service"}, "they do not start when it fails")
	require.GreaterOrEqual(t, len(exec), 2)
	assert.Equal(t, []string{"/usr/local/bin/chime-agent", "prepare-boot"}, exec[:2])
	cmd := newPrepareBoot(&lockedBuf{})
	require.NoError(t, cmd.ParseFlags(exec[2:]), "every flag in ExecStart exists")
	assert.Equal(t, "/var/lib/chime-agent", cmd.Flag("state-dir").Value.String())
	assert.Equal(t, "[/etc/libvirt/qemu/autostart]", cmd.Flag("autostart-dir").Value.String())
}

// TestPrepareBootCommand: the real command removes every link of the
// directory (a broken one too), keeps the configs, logs each removal, and
// exits 0; bad flags exit 2.
func TestPrepareBootCommand(t *testing.T) {
	etc := t.TempDir()
	auto := filepath.Join(etc, "autostart")
	require.NoError(t, os.Mkdir(auto, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(etc, "web.xml"),
		[]byte("<domain type='kvm'><name>web</name><uuid>6F1C2A9E-0000-4000-8000-000000000001</uuid></domain>"), 0o600))
	require.NoError(t, os.Symlink("../web.xml", filepath.Join(auto, "web.xml")))
	require.NoError(t, os.Symlink(filepath.Join(etc, "gone.xml"), filepath.Join(auto, "gone.xml")))
	code, _, stderr := runCLI(t, "prepare-boot", "--state-dir", t.TempDir(), "--autostart-dir", auto)
	require.Equal(t, 0, code, stderr)
	left, err := os.ReadDir(auto)
	require.NoError(t, err)
	assert.Empty(t, left)
	assert.FileExists(t, filepath.Join(etc, "web.xml"), "the domain stays defined")
	assert.Contains(t, stderr, `"uuid":"6f1c2a9e-0000-4000-8000-000000000001"`)
	assert.Contains(t, stderr, `"domain":"web"`)
	assert.Equal(t, 2, strings.Count(stderr, "autostart link removed before libvirtd starts"))
	assert.Contains(t, stderr, "no persisted admin state")

	code, _, stderr = runCLI(t, "prepare-boot", "--autostart-dir", "relative/dir")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, `--autostart-dir "relative/dir": want an absolute path`)
}
