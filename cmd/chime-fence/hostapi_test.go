package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

// realAPI is the daemon's own API server (api.New) over a real store,
// detector engine, daemon and operations.Manager, at the address a CLI
// config names. Its drain executor steps one VM state at a time, each when
// the test sends on next.
type realAPI struct {
	file string
	next chan struct{}
	mgr  *operations.Manager
	st   *store.Store
}

// quietPeers: every probe answers, every BMC says on, nothing alerts.
type quietPeers struct{}

func (quietPeers) ProbeHost(context.Context, string) (bool, bool, string) { return false, true, "" }
func (quietPeers) ReadPower(context.Context, string) (power.State, error) { return power.On, nil }
func (quietPeers) CheckReadiness(context.Context, string) detector.Readiness {
	return detector.Readiness{Ready: true}
}
func (quietPeers) Alert(context.Context, detector.Alert) {}

func newRealAPI(t *testing.T) *realAPI {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dir := t.TempDir()
	file := daemonConfig(t, dir, l.Addr().(*net.TCPAddr).Port)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ro.token"), []byte("grafana-secret-0123456789abcdef-ro\n"), 0o600))
	cfg, err := configs.Load(file)
	require.NoError(t, err)

	st, err := store.Open(filepath.Join(dir, "s.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	var hosts []detector.HostConfig
	for _, n := range cfg.HostNames() {
		hosts = append(hosts, detector.HostConfig{Name: n, Rack: "r1"})
	}
	eng, err := detector.NewEngine(detector.EngineConfig{
		Hosts: hosts,
		Monitor: detector.MonitorConfig{Thresholds: detector.Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second},
			RecoveryHeartbeats: 3, Settle: time.Second},
		Storm: detector.StormGuard{MaxFraction: 0.5, Window: time.Minute},
	}, detector.Deps{Prober: quietPeers{}, Power: quietPeers{}, Readiness: quietPeers{}, History: st, Memos: st, Alerter: quietPeers{}, Log: zerolog.Nop()}, nil)
	require.NoError(t, err)
	d, err := daemon.New(st, eng, func() time.Duration { return time.Second }, nil, zerolog.Nop())
	require.NoError(t, err)
	r := &realAPI{file: file, next: make(chan struct{}), st: st}
	drain := func(ctx context.Context, tk operations.Task, report operations.Report) (string, error) {
		steps := [][]operations.VMProgress{
			{{Name: "web", State: operations.VMPending}, {Name: "db", State: operations.VMPending}},
			{{Name: "web", State: operations.VMRunning, Detail: "stopping through the agent"}},
			{{Name: "web", State: operations.VMDone, Detail: "destroyed"}},
			{{Name: "db", State: operations.VMRunning, Detail: "stopping through the agent"}},
			{{Name: "db", State: operations.VMDone, Detail: "destroyed"}},
		}
		for _, s := range steps {
			report(s...)
			select {
			case <-r.next:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		if _, err := d.SetAdminState(tk.Host, node.Drained, "drained by "+tk.Actor); err != nil {
			return "", err
		}
		return "2 domains stopped", nil
	}
	r.mgr, err = operations.New(operations.Config{}, operations.Deps{Store: st, View: operations.ClusterView(d, st, nil), Now: time.Now, Log: zerolog.Nop(),
		Executors: operations.Executors{
			Enable:  operations.AdminExecutor(d.SetAdminState, node.Enabled),
			Disable: operations.AdminExecutor(d.SetAdminState, node.Disabled),
			Drain:   drain,
			ConfirmDown: func(context.Context, operations.Task, operations.Report) (string, error) {
				return "", errors.New("not in this test")
			},
		}})
	require.NoError(t, err)
	t.Cleanup(r.mgr.Close)
	s, err := api.New(d, api.Tokens{Agents: testRing(t), API: "api.token-secret-0123456789abcdef",
		Named: []api.Token{{Name: "grafana", Role: configs.RoleReadOnly, Secret: "grafana-secret-0123456789abcdef-ro"}}},
		prometheus.NewRegistry(), zerolog.Nop(), api.WithFences(st), api.WithOperations(taskBackend{Manager: r.mgr,
			evac:  &recovery.Evacuation{D: recovery.EvacuationDeps{Tasks: evacuator.StoreJournal{S: st}, Now: time.Now, Log: zerolog.Nop()}},
			tasks: evacuator.StoreJournal{S: st}}))
	require.NoError(t, err)
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: s}}
	srv.Start()
	t.Cleanup(srv.Close)
	return r
}

// TestCLIAgainstTheDaemonsAPI: the commands against api.New and a real
// operations.Manager: live progress of a drain, a conflicting operation
// refused naming the running task, the state machine's refusals, a
// read-only token refused on an operation, the drained host's state after.
func TestCLIAgainstTheDaemonsAPI(t *testing.T) {
	r := newRealAPI(t)
	out := &syncBuffer{}
	done := make(chan int, 1)
	var errOut string
	go func() {
		var code int
		code, errOut = runCLIIO(strings.NewReader(""), out, "host", "drain", "h2", "-c", r.file, "--yes", "--wait", "--poll-interval", "5ms", "--reason", "disk errors")
		done <- code
	}()
	// The Manager stamps each VM line with its time: "  15:04:05 web  done".
	for _, want := range []string{
		" db   pending\n",
		" web  running  stopping through the agent\n",
		" web  done     destroyed\n",
		" db   running  stopping through the agent\n",
		" db   done     destroyed\n",
	} {
		require.Eventually(t, func() bool { return strings.Contains(out.String(), want) }, 10*time.Second, 5*time.Millisecond,
			"waiting for %q in:\n%s", want, out.String())
		if want == " web  done     destroyed\n" {
			// While the drain holds h2, another operation on it is refused.
			code, _, e := runOp("", "host", "disable", "h2", "-c", r.file)
			assert.Equal(t, exitUsage, code, e)
			assert.Regexp(t, `HTTP 409: .*host is locked by task \S+ \(drain by api\)`, e)
			code, o, e := runOp("", "host", "show", "h2", "-c", r.file)
			require.Equal(t, exitOK, code, e)
			assert.Regexp(t, `Locked by: +task \S+ \(drain by api\) since`, o)
		}
		select {
		case r.next <- struct{}{}:
		case <-time.After(10 * time.Second):
			t.Fatalf("the drain executor is not waiting for its next step; CLI output so far:\n%s", out.String())
		}
	}
	select {
	case code := <-done:
		require.Equal(t, exitOK, code, errOut)
	case <-time.After(30 * time.Second):
		t.Fatal("host drain --wait did not return")
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 8, out.String())
	assert.Regexp(t, `^  \d\d:\d\d:\d\d web  pending$`, lines[1])
	assert.Regexp(t, `^task (\S+): drain h2 by api: disk errors$`, lines[0])
	assert.Regexp(t, `^task \S+ succeeded after \S+: 2 domains stopped \[2 done\]$`, lines[7])
	id := strings.Fields(lines[0])[1]
	id = strings.TrimSuffix(id, ":")

	code, o, e := runOp("", "task", "show", id, "-c", r.file, "-o", "json")
	require.Equal(t, exitOK, code, e)
	assert.Contains(t, o, `"state": "succeeded"`)
	assert.Contains(t, o, `"actor": "api"`)

	code, o, e = runOp("", "host", "list", "-c", r.file)
	require.Equal(t, exitOK, code, e)
	assert.Regexp(t, `(?m)^h2 +r1 +drained `, o)

	// The state machine: a drained host cannot be disabled; confirm-down
	// is only for an unreachable host.
	code, _, e = runOp("", "host", "disable", "h2", "-c", r.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, e, "HTTP 409: conflict: disable h2 refused: host is drained; only an enabled host can be disabled")
	code, _, e = runOp("", "host", "confirm-down", "h1", "-c", r.file, "--yes", "--reason", "sure")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, e, "confirm-down is only for an unreachable host")
	code, _, e = runOp("", "host", "migrate", "h1", "-c", r.file, "--yes")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, e, "HTTP 501")

	// A read-only token may look, never act.
	t.Setenv(envTokenFile, filepath.Join(filepath.Dir(r.file), "ro.token"))
	code, _, e = runOp("", "host", "enable", "h2", "-c", r.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, e, "HTTP 403")
	assert.NotContains(t, e, "grafana-secret")
	code, o, e = runOp("", "task", "list", "-c", r.file, "--host", "h2")
	require.Equal(t, exitOK, code, e)
	assert.Contains(t, o, id+"  h2    drain")

	t.Setenv(envTokenFile, "")
	code, o, e = runOp("", "host", "enable", "h2", "-c", r.file, "--wait", "--poll-interval", "5ms")
	require.Equal(t, exitOK, code, e)
	assert.Contains(t, o, "succeeded")
	code, o, e = runOp("", "host", "show", "h2", "-c", r.file, "-o", "json")
	require.Equal(t, exitOK, code, e)
	assert.Contains(t, o, `"admin": "enabled"`)
}

// TestCLITaskShowAndCancelAnEvacuation: `task show` says what each waiting
// VM waits for; `task cancel` ends the evacuation and records who and why
// with it; a second cancel is refused.
func TestCLITaskShowAndCancelAnEvacuation(t *testing.T) {
	r := newRealAPI(t)
	now := time.Now()
	require.NoError(t, evacuator.StoreJournal{S: r.st}.SaveTask(evacuator.Task{ID: "evac-h2-c1", Host: "h2", CorrelationID: "c1",
		Fence: "ipmi verified power off", Created: now, Updated: now, State: evacuator.TaskWaiting, Plans: 1, NextPlan: now.Add(5 * time.Second),
		VMs:      []evacuator.VMTask{{UUID: "u1", Name: "web", Target: "h3", Step: evacuator.StepRunning}},
		Unplaced: []evacuator.UnplacedVM{{UUID: "u2", Name: "db", Waiting: true, Reason: "no capacity: needs 4096 MiB"}}}))

	code, out, errOut := runCLI("task", "show", "evac-h2-c1", "-c", r.file)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "evacuate")
	assert.Contains(t, out, "waits: no capacity: needs 4096 MiB")
	assert.Contains(t, out, "running on h3")

	code, out, errOut = runCLI("task", "cancel", "evac-h2-c1", "-c", r.file, "--reason", "db moves by hand")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "cancelled by api: db moves by hand")
	recs, err := r.st.History(store.Query{Host: "h2", Kind: "evacuation"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "cancelled", recs[0].To)
	assert.Contains(t, recs[0].Reason, "cancelled by api: db moves by hand")

	code, _, errOut = runCLI("task", "cancel", "evac-h2-c1", "-c", r.file)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "already ended")
	code, _, errOut = runCLI("task", "cancel", "op-nope", "-c", r.file)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "not found")
}

func testRing(t *testing.T) identity.Ring {
	r, err := identity.NewRing(testClusterSecret, "")
	require.NoError(t, err)
	return r
}
