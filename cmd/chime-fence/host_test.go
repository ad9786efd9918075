package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
)

var t0 = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

func vm(name, state, target, detail string) operations.VMProgress {
	return operations.VMProgress{UUID: "uuid-" + name, Name: name, State: state, Target: target, Detail: detail}
}

func task(id string, op operations.Op, host string, st operations.TaskState, vms ...operations.VMProgress) operations.Task {
	t := operations.Task{ID: id, Host: host, Op: op, Actor: "alice", State: st, Created: t0, Updated: t0, Progress: vms}
	if st.Done() {
		t.Finished = t0.Add(12 * time.Second)
	}
	return t
}

// drainScript: two VMs stopped one after the other, with a repeated
// snapshot (a poll where nothing changed).
func drainScript() []operations.Task {
	return []operations.Task{
		task("T1", operations.OpDrain, "h2", operations.TaskRunning, vm("vm-a", operations.VMPending, "", ""), vm("vm-bb", operations.VMPending, "", "")),
		task("T1", operations.OpDrain, "h2", operations.TaskRunning, vm("vm-a", operations.VMRunning, "", "stopping through the agent"), vm("vm-bb", operations.VMPending, "", "")),
		task("T1", operations.OpDrain, "h2", operations.TaskRunning, vm("vm-a", operations.VMRunning, "", "stopping through the agent"), vm("vm-bb", operations.VMPending, "", "")),
		task("T1", operations.OpDrain, "h2", operations.TaskRunning, vm("vm-a", operations.VMDone, "", "destroyed by the agent"), vm("vm-bb", operations.VMRunning, "", "stopping through the agent")),
		func() operations.Task {
			t := task("T1", operations.OpDrain, "h2", operations.TaskSucceeded, vm("vm-a", operations.VMDone, "", "destroyed by the agent"), vm("vm-bb", operations.VMDone, "", "destroyed by the agent"))
			t.Result = "2 domains stopped; h2 drained"
			return t
		}(),
	}
}

func TestHostDrainWaitPrintsEachVMStepOnceThenResult(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpDrain] = drainScript()
	code, out, errOut := runOp("", "host", "drain", "h2", "-c", f.file, "--yes", "--wait", "--poll-interval", "5ms", "--reason", "disk errors")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, `task T1: drain h2 by alice
  vm-a   pending
  vm-bb  pending
  vm-a   running  stopping through the agent
  vm-a   done     destroyed by the agent
  vm-bb  running  stopping through the agent
  vm-bb  done     destroyed by the agent
task T1 succeeded after 12s: 2 domains stopped; h2 drained [2 done]
`, out)
	calls := f.calls()
	require.Len(t, calls, 1)
	assert.Equal(t, "h2", calls[0].host)
	assert.Equal(t, operations.OpDrain, calls[0].op)
	assert.Equal(t, "disk errors", calls[0].req.Reason)
	assert.Equal(t, `{"reason":"disk errors"}`, strings.TrimSpace(calls[0].raw), "only the request's own fields are sent")
	assert.Equal(t, 5, f.gets("T1"), "polled until the last snapshot")
}

func TestHostOpNoWaitPrintsTheTaskIDOnly(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpDrain] = drainScript()
	code, out, errOut := runOp("", "host", "drain", "h2", "-c", f.file, "--yes", "--no-wait")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "T1\n", out, "stdout is the id alone, for scripts")
	assert.Contains(t, errOut, "chime-fence task wait T1")
	assert.Zero(t, f.gets("T1"), "--no-wait never polls")

	// JSON: the started task as one document.
	f.script[operations.OpDrain] = drainScript()
	code, out, errOut = runOp("", "host", "drain", "h2", "-c", f.file, "--yes", "--no-wait", "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var got operations.Task
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	assert.Equal(t, "T1", got.ID)
	assert.Equal(t, operations.TaskRunning, got.State)
	assert.Len(t, got.Progress, 2)
}

func TestHostOpWaitsByDefaultOnlyOnATerminal(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpEnable] = []operations.Task{
		task("T2", operations.OpEnable, "h1", operations.TaskRunning),
		func() operations.Task {
			t := task("T2", operations.OpEnable, "h1", operations.TaskSucceeded)
			t.Result = "h1 enabled"
			return t
		}(),
	}
	code, out, errOut := runOp("", "host", "enable", "h1", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "T2\n", out, "no terminal: --no-wait is the default")

	term := ttyWriter{&bytes.Buffer{}}
	code, errOut = runCLIIO(strings.NewReader(""), term, "host", "enable", "h1", "-c", f.file, "--poll-interval", "5ms")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "task T2: enable h1 by alice\ntask T2 succeeded after 12s: h1 enabled\n", term.String())

	code, out, errOut = runCLIIO2(ttyWriter{&bytes.Buffer{}}, "host", "enable", "h1", "-c", f.file, "--no-wait")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "T2\n", out, "--no-wait wins on a terminal")

	code, _, errOut = runOp("", "host", "enable", "h1", "-c", f.file, "--wait", "--no-wait")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "none of the others can be")
}

// runCLIIO2 runs with a terminal stdout and returns what it printed.
func runCLIIO2(w ttyWriter, args ...string) (int, string, string) {
	code, errOut := runCLIIO(strings.NewReader(""), w, args...)
	return code, w.String(), errOut
}

func TestHostOpConfirmationPrompt(t *testing.T) {
	f := newFakeDaemon(t)
	f.hosts = hostsFixture()
	for _, tc := range []struct {
		name, in string
		tty      bool
		code     int
		errHas   string
	}{
		{"typed the name", "h2\n", true, exitOK, "h2: admin drained, monitor unreachable, verdict host-down, 2 domains, last fence verified (proven), locked by task T8 (rebuild by alice)\ndrain h2: type the host name to confirm: "},
		{"typed the name, no newline", "  h2  ", true, exitOK, "type the host name"},
		{"typed another host", "h1\n", true, exitUsage, `drain h2 not confirmed: typed "h1", expected "h2"`},
		{"typed nothing", "", true, exitUsage, "drain h2 not confirmed: no answer read"},
		{"no terminal", "h2\n", false, exitUsage, "stdin is not a terminal to confirm on: pass --yes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.script[operations.OpDrain] = drainScript()
			before := len(f.calls())
			var in = strings.NewReader(tc.in)
			var o bytes.Buffer
			var code int
			var errOut string
			if tc.tty {
				code, errOut = runCLIIO(ttyReader{in}, &o, "host", "drain", "h2", "-c", f.file, "--no-wait")
			} else {
				code, errOut = runCLIIO(in, &o, "host", "drain", "h2", "-c", f.file, "--no-wait")
			}
			assert.Equal(t, tc.code, code, errOut)
			assert.Contains(t, errOut, tc.errHas)
			if tc.code == exitOK {
				assert.Len(t, f.calls(), before+1)
				assert.Equal(t, "T1\n", o.String(), "the prompt goes to stderr, not stdout")
			} else {
				assert.Len(t, f.calls(), before, "nothing is sent without a confirmation")
				assert.Empty(t, o.String())
			}
		})
	}

	// The daemon cannot show h3: refused before asking.
	before := len(f.calls())
	code, errOut := runCLIIO(ttyReader{strings.NewReader("h3\n")}, &bytes.Buffer{}, "host", "fence", "h3", "-c", f.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `host "h3": unknown host`)
	assert.NotContains(t, errOut, "type the host name")
	assert.Len(t, f.calls(), before)

	f.script[operations.OpConfirmDown] = []operations.Task{task("T6", operations.OpConfirmDown, "h2", operations.TaskSucceeded)}
	code, errOut = runCLIIO(ttyReader{strings.NewReader("h2\n")}, &bytes.Buffer{}, "host", "confirm-down", "h2", "-c", f.file, "--reason", "cords pulled", "--no-wait")
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, errOut, "If h2 is in fact running, its VMs will run twice.\nconfirm-down h2: type the host name to confirm: ")
}

func TestEveryDestructiveOpAsksAndOthersDoNot(t *testing.T) {
	f := newFakeDaemon(t)
	for _, s := range opSpecs {
		f.script[s.op] = []operations.Task{task("T-"+string(s.op), s.op, "h2", operations.TaskSucceeded)}
		args := []string{"host", string(s.op), "h2", "-c", f.file, "--no-wait"}
		if s.needReason {
			args = append(args, "--reason", "pulled the cords")
		}
		code, out, errOut := runOp("", args...)
		if s.destructive {
			assert.Equal(t, exitUsage, code, "%s without --yes and no terminal", s.op)
			assert.Contains(t, errOut, string(s.op)+" h2 is destructive")
			code, out, errOut = runOp("", append(args, "--yes")...)
		}
		assert.Equal(t, exitOK, code, "%s: %s", s.op, errOut)
		assert.Equal(t, "T-"+string(s.op)+"\n", out)
	}
	var ops []operations.Op
	for _, c := range f.calls() {
		ops = append(ops, c.op)
	}
	assert.ElementsMatch(t, operations.Ops, ops, "each op reaches its own endpoint once")
	assert.Equal(t, exitUsage, codeOf(runOp("", "host", "enable", "h2", "-c", f.file, "--yes")), "enable has no --yes: it is not destructive")
}

func codeOf(code int, _, _ string) int { return code }

func TestHostOpRefusalsAndExitCodes(t *testing.T) {
	f := newFakeDaemon(t)
	for _, tc := range []struct {
		name   string
		code   int
		msg    string
		exit   int
		errHas string
	}{
		{"409 conflict", http.StatusConflict, `host h2 is locked by task T7 (drain by bob)`, exitUsage, "HTTP 409: host h2 is locked by task T7 (drain by bob)"},
		{"400 bad request", http.StatusBadRequest, `rebuild: host h2 is enabled, only a drained host can be rebuilt`, exitUsage, "only a drained host can be rebuilt"},
		{"404 unknown host", http.StatusNotFound, `host "h2": unknown host`, exitUsage, "HTTP 404"},
		{"403 read-only token", http.StatusForbidden, `token "ro" is read-only`, exitUsage, "HTTP 403"},
		{"501 no executor", http.StatusNotImplemented, `rebuild is not available`, exitUsage, "HTTP 501"},
		{"500 daemon error", http.StatusInternalServerError, `journal write failed`, exitFailure, "HTTP 500: journal write failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.refuse[operations.OpRebuild] = refusal{tc.code, tc.msg}
			code, out, errOut := runOp("", "host", "rebuild", "h2", "-c", f.file, "--yes", "--wait")
			assert.Equal(t, tc.exit, code, errOut)
			assert.Contains(t, errOut, tc.errHas)
			assert.Empty(t, out)
			assert.NotContains(t, errOut, f.token)
		})
	}
}

func TestHostOpWrongTokenAndEnvTokenFile(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpDisable] = []operations.Task{task("T3", operations.OpDisable, "h1", operations.TaskSucceeded)}
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine.token")
	require.NoError(t, os.WriteFile(mine, []byte("operator-alice-secret\n"), 0o600))

	t.Setenv(envTokenFile, mine)
	code, _, errOut := runOp("", "host", "disable", "h1", "-c", f.file, "--no-wait")
	assert.Equal(t, exitUsage, code, "the daemon does not know alice's token: refused")
	assert.Contains(t, errOut, "HTTP 401")
	assert.NotContains(t, errOut, "operator-alice-secret")
	f.mu.Lock()
	assert.Equal(t, "Bearer operator-alice-secret", f.auth[len(f.auth)-1], "the env's token file wins over the config's")
	f.token = "operator-alice-secret"
	f.mu.Unlock()
	code, out, errOut := runOp("", "host", "disable", "h1", "-c", f.file, "--no-wait")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "T3\n", out)

	t.Setenv(envTokenFile, filepath.Join(dir, "missing.token"))
	code, _, errOut = runOp("", "host", "disable", "h1", "-c", f.file, "--no-wait")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "missing.token")
}

func TestHostOpDaemonUnreachable(t *testing.T) {
	f := newFakeDaemon(t)
	f.srv.Close()
	for _, args := range [][]string{
		{"host", "fence", "h1", "--yes"},
		{"host", "list"},
		{"task", "wait", "T1"},
	} {
		code, _, errOut := runOp("", append(args, "-c", f.file)...)
		assert.Equal(t, exitUnreachable, code, "%v: %s", args, errOut)
		assert.Contains(t, errOut, "not reachable")
	}
}

func TestHostOpFlagChecks(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpMigrate] = []operations.Task{task("T4", operations.OpMigrate, "h1", operations.TaskSucceeded)}
	f.script[operations.OpConfirmDown] = []operations.Task{task("T5", operations.OpConfirmDown, "h1", operations.TaskSucceeded)}
	for _, tc := range []struct {
		args   []string
		errHas string
	}{
		{[]string{"host", "confirm-down", "h1", "--yes"}, `required flag(s) "reason" not set`},
		{[]string{"host", "confirm-down", "h1", "--yes", "--reason", "  "}, "--reason must say why"},
		{[]string{"host", "migrate", "h1", "--yes", "--target", "h1"}, "--target h1 is the host being emptied"},
		{[]string{"host", "migrate", "h1", "--yes", "--target", "h9"}, `--target: no host "h9"`},
		{[]string{"host", "drain", "h9", "--yes"}, `no host "h9" in`},
		{[]string{"host", "drain", "h1", "--yes", "-o", "yaml"}, `--output "yaml": must be table or json`},
		{[]string{"host", "drain", "h1", "--yes", "--poll-interval", "0s"}, "must be positive"},
		{[]string{"host", "drain"}, "accepts 1 arg(s)"},
		{[]string{"host", "enable", "h1", "--target", "h2"}, "unknown flag: --target"},
		{[]string{"host", "fence", "h1", "--yes", "--force"}, "--reason must say why"},
		{[]string{"host", "drain", "h1", "--yes", "--force", "--reason", "x"}, "unknown flag: --force"},
	} {
		code, _, errOut := runOp("", append(tc.args, "-c", f.file)...)
		assert.Equal(t, exitUsage, code, "%v", tc.args)
		assert.Contains(t, errOut, tc.errHas, "%v", tc.args)
	}
	assert.Empty(t, f.calls(), "no bad command line reaches the daemon")

	code, _, errOut := runOp("", "host", "migrate", "h1", "-c", f.file, "--yes", "--no-wait", "--target", "h3", "--migrate-local-disk-vms")
	require.Equal(t, exitOK, code, errOut)
	code, _, errOut = runOp("", "host", "confirm-down", "h1", "-c", f.file, "--yes", "--no-wait", "--reason", "BMC dead; cords pulled by DC ops")
	require.Equal(t, exitOK, code, errOut)
	calls := f.calls()
	require.Len(t, calls, 2)
	assert.Equal(t, operations.Request{Target: "h3", MigrateLocalDiskVMs: true}, calls[0].req)
	assert.Equal(t, operations.Request{Reason: "BMC dead; cords pulled by DC ops"}, calls[1].req)
}

func hostsFixture() []api.HostInfo {
	h1 := api.HostInfo{HostStatus: daemon.HostStatus{HostStatus: detector.HostStatus{Name: "h1", Rack: "r1", Monitor: node.Normal,
		Verdict: detector.Healthy, LastHeartbeat: t0, HeartbeatAge: 1500 * 1e6,
		Readiness: &detector.Readiness{At: t0, Ready: true, Summary: "ipmi: reachable"}}, Admin: node.Enabled, Domains: 3}}
	h2 := api.HostInfo{HostStatus: daemon.HostStatus{HostStatus: detector.HostStatus{Name: "h2", Rack: "r1", Monitor: node.Unreachable,
		Verdict: detector.HostDown, VerdictReason: "silent, BMC says off", Incident: "inc-9",
		Readiness: &detector.Readiness{At: t0, Ready: false, Summary: "ipmi: connection refused"}}, Admin: node.Drained, Domains: 2},
		Fence: &api.FenceSummary{State: "verified", Level: "ipmi", Proven: true, Finished: t0},
		Lock:  &operations.Holder{TaskID: "T8", Op: operations.OpRebuild, Owner: "alice", Since: t0}}
	return []api.HostInfo{h1, h2}
}

func TestHostListAndShow(t *testing.T) {
	f := newFakeDaemon(t)
	f.hosts = hostsFixture()

	code, out, errOut := runOp("", "host", "list", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3, out)
	assert.Regexp(t, `^HOST +RACK +ADMIN +MONITOR +HEARTBEAT +VERDICT +READINESS +FENCE +TASK +DOMAINS$`, lines[0])
	assert.Regexp(t, `^h1 +r1 +enabled +normal +1.5s ago +healthy +ready +- +- +3$`, lines[1])
	assert.Regexp(t, `^h2 +r1 +drained +unreachable +never +host-down +NOT READY +verified \(proven\) +rebuild T8 +2$`, lines[2])

	code, out, errOut = runOp("", "host", "show", "h2", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	for _, want := range []string{
		"Verdict:          host-down: silent, BMC says off",
		"Fence readiness:  NOT READY: ipmi: connection refused",
		"Last fence:       verified (proven), level ipmi,",
		"Locked by:        task T8 (rebuild by alice) since",
		"Incident:         inc-9",
	} {
		assert.Contains(t, out, want)
	}

	code, _, errOut = runOp("", "host", "show", "h7", "-c", f.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `host "h7": unknown host`)
}

func TestHostJSONShapes(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errOut := runOp("", "host", "list", "-c", f.file, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "[]\n", out, "no hosts is an empty array, not null")

	f.hosts = hostsFixture()
	code, out, errOut = runOp("", "host", "list", "-c", f.file, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &list))
	require.Len(t, list, 2)
	assert.Equal(t, "h2", list[1]["name"])
	assert.Equal(t, "drained", list[1]["admin"])
	assert.Equal(t, "unreachable", list[1]["monitor"])
	assert.Equal(t, true, list[1]["fence"].(map[string]any)["proven"])
	assert.Equal(t, "T8", list[1]["lock"].(map[string]any)["task_id"])
	assert.NotContains(t, list[0], "lock", "a free host has no lock key")

	code, out, errOut = runOp("", "host", "show", "h1", "-c", f.file, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var one api.HostInfo
	require.NoError(t, json.Unmarshal([]byte(out), &one))
	assert.Equal(t, f.hosts[0], one)
}

func TestCompletion(t *testing.T) {
	f := newFakeDaemon(t)
	f.hosts = hostsFixture()
	f.hosts = append(f.hosts, api.HostInfo{HostStatus: daemon.HostStatus{HostStatus: detector.HostStatus{Name: "h-daemon-only"}}})

	code, out, errOut := runOp("", "__complete", "host", "drain", "-c", f.file, "h")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "h1\nh2\nh-daemon-only\n:4\n", out, "the daemon's names, not the file's")

	code, out, _ = runOp("", "__complete", "host", "migrate", "-c", f.file, "h1", "--target", "h2")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "h2\n:4\n", out)

	code, out, _ = runOp("", "__complete", "host", "drain", "-c", f.file, "h1", "")
	require.Equal(t, exitOK, code)
	assert.Equal(t, ":4\n", out, "one host only")

	f.addTask(task("T9", operations.OpDrain, "h1", operations.TaskSucceeded))
	code, out, _ = runOp("", "__complete", "task", "wait", "-c", f.file, "")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "T9\tdrain h1 (succeeded)\n:36\n", out)

	f.srv.Close()
	code, out, _ = runOp("", "__complete", "host", "show", "-c", f.file, "")
	require.Equal(t, exitOK, code)
	assert.Equal(t, "h1\nh2\nh3\n:4\n", out, "daemon down: the configuration's hosts")

	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errOut = runOp("", "completion", sh)
		require.Equal(t, exitOK, code, errOut)
		assert.Contains(t, out, "chime-fence", sh)
		assert.Contains(t, out, "__complete", sh)
	}
}

func TestHostCommandsOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir, "daemon")
	f := newFakeDaemonTLS(t, cert, key)
	f.hosts = hostsFixture()
	withTLS(t, f.file, cert, key)
	code, out, errOut := runOp("", "host", "list", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "h2    r1    drained")

	// A certificate the configuration does not name is not trusted.
	other, otherKey := selfSigned(t, dir, "impostor")
	withTLS(t, f.file, other, otherKey)
	code, _, errOut = runOp("", "host", "list", "-c", f.file)
	assert.Equal(t, exitUnreachable, code)
	assert.Contains(t, errOut, "certificate")

	// A configuration that says TLS, a daemon that does not.
	plain := newFakeDaemon(t)
	withTLS(t, plain.file, cert, key)
	code, _, errOut = runOp("", "host", "list", "-c", plain.file)
	assert.Equal(t, exitUnreachable, code)
	assert.Contains(t, errOut, "HTTP response to HTTPS client")

	// A certificate file with no certificate in it.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "empty.pem"), []byte("nothing\n"), 0o644))
	withTLS(t, plain.file, filepath.Join(dir, "empty.pem"), key)
	code, _, errOut = runOp("", "host", "list", "-c", plain.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "no PEM certificate in it")
}

// TestHostOpForceIsSent: --force with a reason reaches the daemon in the
// request body.
func TestHostOpForceIsSent(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpConfirmDown] = []operations.Task{task("T6", operations.OpConfirmDown, "h1", operations.TaskSucceeded)}
	code, out, errOut := runOp("", "host", "confirm-down", "h1", "-c", f.file, "--yes", "--no-wait", "--force", "--reason", "cords pulled; the BMC lies")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "T6\n", out)
	calls := f.calls()
	require.Len(t, calls, 1)
	assert.JSONEq(t, `{"reason":"cords pulled; the BMC lies","force":true}`, calls[0].raw)
}
