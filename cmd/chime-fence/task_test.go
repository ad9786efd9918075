package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/operations"
)

func TestProgressPrintsChangesOnly(t *testing.T) {
	var b bytes.Buffer
	p := newProgress(&b)
	run := task("T1", operations.OpRebuild, "h2", operations.TaskRunning,
		vm("web", operations.VMPending, "", ""), vm("db", operations.VMPending, "", ""))
	run.Target, run.Reason = "h3", "host died\nat night"
	p.update(run)
	p.update(run)
	run.Progress[0] = vm("web", operations.VMRunning, "h3", "defining")
	p.update(run)
	run.Progress[0] = vm("web", operations.VMRunning, "h3", "starting")
	run.Progress = append(run.Progress, vm("local-disk-vm", operations.VMSkipped, "", "local disk: not rebuilt"))
	p.update(run)
	// Same name, other UUID: another VM.
	other := vm("web", operations.VMFailed, "h1", "define: no such network")
	other.UUID = "uuid-web-2"
	run.Progress = append(run.Progress, other)
	p.update(run)
	end := run
	end.State, end.Finished, end.Error = operations.TaskFailed, t0.Add(90*time.Second+1234*time.Microsecond), "1 VM failed"
	end.Progress[0] = vm("web", operations.VMDone, "h3", "running on h3")
	p.update(end)
	p.finish(end)
	p.finish(end)
	assert.Equal(t, `task T1: rebuild h2 → h3 by alice: host died at night
  web  pending
  db   pending
  web  running  → h3  defining
  web            running  → h3  starting
  local-disk-vm  skipped  local disk: not rebuilt
  web            failed   → h1  define: no such network
  web            done     → h3  running on h3
task T1 failed after 1m30.001s: 1 VM failed [1 done, 1 failed, 1 skipped, 1 pending]
`, b.String())
}

func TestProgressLineShowsTheVMsTime(t *testing.T) {
	v := vm("web", operations.VMDone, "", "")
	v.At = time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
	assert.Equal(t, "  03:04:05 web  done", vmLine(v, 3))
}

func TestTaskExit(t *testing.T) {
	ok := task("T", operations.OpRebuild, "h2", operations.TaskSucceeded, vm("a", operations.VMDone, "h1", ""), vm("b", operations.VMSkipped, "", "local disk"))
	assert.NoError(t, taskExit(ok), "a skipped local-disk VM is the rebuild's rule, not a failure")

	partial := ok
	partial.Progress = append(partial.Progress, vm("c", operations.VMFailed, "", "no capacity"))
	err := taskExit(partial)
	require.Error(t, err)
	assert.Equal(t, exitFailure, err.(*exitError).code)
	assert.Contains(t, err.Error(), "task T (rebuild h2) partly failed: 1 done, 1 failed, 1 skipped")

	for _, st := range []operations.TaskState{operations.TaskFailed, operations.TaskInterrupted} {
		bad := task("T", operations.OpDrain, "h2", st)
		bad.Error = "agent unreachable and libvirt refused"
		err := taskExit(bad)
		require.Error(t, err)
		assert.Equal(t, exitFailure, err.(*exitError).code)
		assert.Contains(t, err.Error(), "task T (drain h2) "+string(st)+": agent unreachable and libvirt refused")
	}
}

func TestTaskWaitExitsByOutcome(t *testing.T) {
	f := newFakeDaemon(t)
	failed := task("TF", operations.OpDrain, "h1", operations.TaskFailed, vm("a", operations.VMFailed, "", "still running after destroy"))
	failed.Error = "1 domain still runs"
	f.addTask(task("TF", operations.OpDrain, "h1", operations.TaskRunning, vm("a", operations.VMRunning, "", "")), failed)
	f.addTask(drainScript()[4])

	code, out, errOut := runOp("", "task", "wait", "TF", "-c", f.file, "--poll-interval", "5ms")
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, out, "  a  failed   still running after destroy\n")
	assert.Contains(t, out, "task TF failed after 12s: 1 domain still runs [1 failed]\n")
	assert.Contains(t, errOut, "error: task TF (drain h1) failed: 1 domain still runs")

	code, out, errOut = runOp("", "task", "wait", "T1", "-c", f.file)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "task T1 succeeded after 12s", "a finished task is reported at once")

	code, _, errOut = runOp("", "task", "wait", "nope", "-c", f.file)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `task "nope": not found`)
}

func TestTaskWaitJSONKeepsStdoutOneDocument(t *testing.T) {
	f := newFakeDaemon(t)
	f.script[operations.OpDrain] = drainScript()
	code, out, errOut := runOp("", "host", "drain", "h2", "-c", f.file, "--yes", "--wait", "--poll-interval", "5ms", "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var got operations.Task
	dec := json.NewDecoder(strings.NewReader(out))
	require.NoError(t, dec.Decode(&got))
	assert.False(t, dec.More(), "nothing after the document")
	assert.Equal(t, operations.TaskSucceeded, got.State)
	assert.Equal(t, "2 domains stopped; h2 drained", got.Result)
	var shape map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &shape))
	for _, k := range []string{"id", "host", "op", "actor", "state", "created", "updated", "finished", "progress", "result"} {
		assert.Contains(t, shape, k)
	}
	assert.Contains(t, errOut, "  vm-bb  done     destroyed by the agent\n", "progress goes to stderr")
}

func TestTaskWaitGivesUpButTheTaskGoesOn(t *testing.T) {
	f := newFakeDaemon(t)
	f.addTask(task("TR", operations.OpMigrate, "h1", operations.TaskRunning, vm("a", operations.VMRunning, "h2", "copying memory")))
	code, out, errOut := runOp("", "task", "wait", "TR", "-c", f.file, "--poll-interval", "5ms", "--wait-timeout", "100ms")
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, out, "  a  running  → h2  copying memory\n")
	assert.Contains(t, errOut, "stopped following after --wait-timeout 100ms; task TR (migrate h1) goes on on the daemon: chime-fence task wait TR")

	// The daemon stops answering while followed: a few misses are
	// tolerated (a restart), more are "unreachable".
	f.addTask(task("TB", operations.OpMigrate, "h1", operations.TaskRunning), drainScript()[4])
	f.mu.Lock()
	f.drop, f.dropID = 2, "TB"
	f.mu.Unlock()
	code, _, errOut = runOp("", "task", "wait", "TB", "-c", f.file, "--poll-interval", "5ms")
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, errOut, "daemon not answering (1/10), still following task TB")

	f.addTask(task("TC", operations.OpMigrate, "h1", operations.TaskRunning))
	f.mu.Lock()
	f.drop, f.dropID = 1000, "TC"
	f.mu.Unlock()
	code, _, errOut = runOp("", "task", "wait", "TC", "-c", f.file, "--poll-interval", "5ms")
	assert.Equal(t, exitUnreachable, code, errOut)
	assert.Contains(t, errOut, "daemon not answering (10/10)")
	assert.Contains(t, errOut, "not reachable")
}

func TestTaskShowAndList(t *testing.T) {
	f := newFakeDaemon(t)
	code, out, errOut := runOp("", "task", "list", "-c", f.file, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "[]\n", out)

	done := drainScript()[4]
	done.Reason = "disk errors"
	f.addTask(done)
	mig := task("T2", operations.OpMigrate, "h1", operations.TaskRunning, vm("a", operations.VMRunning, "h3", "copying"))
	mig.Target, mig.MigrateLocalDiskVMs = "h3", true
	f.addTask(mig)

	code, out, errOut = runOp("", "task", "show", "T2", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	for _, want := range []string{
		"Task:            T2\n", "Operation:       migrate h1\n", "Target:          h3\n", "Local-disk VMs:  migrated too\n",
		"Actor:           alice\n", "State:           running\n", "VMs:             1 running\n",
	} {
		assert.Contains(t, out, want)
	}
	assert.Regexp(t, `(?m)^VM +UUID +STATE +TARGET +AT +DETAIL\na +uuid-a +running +h3 +- +copying$`, out)

	code, out, errOut = runOp("", "task", "show", "T1", "-c", f.file, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var got operations.Task
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	assert.Equal(t, done, got)

	code, out, errOut = runOp("", "task", "list", "-c", f.file)
	require.Equal(t, exitOK, code, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 3)
	assert.Regexp(t, `^ID +HOST +OP +STATE +ACTOR +CREATED +VMS +RESULT$`, lines[0])
	assert.Regexp(t, `^T1 +h2 +drain +succeeded +alice +\S+ \S+ +2 done +2 domains stopped; h2 drained$`, lines[1])
	assert.Regexp(t, `^T2 +h1 +migrate +running +alice +\S+ \S+ +1 running$`, lines[2])

	code, out, errOut = runOp("", "task", "list", "-c", f.file, "--host", "h1", "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var ts []operations.Task
	require.NoError(t, json.Unmarshal([]byte(out), &ts))
	require.Len(t, ts, 1)
	assert.Equal(t, "T2", ts[0].ID)

	code, out, errOut = runOp("", "task", "list", "-c", f.file, "--limit", "1")
	require.Equal(t, exitOK, code, errOut)
	assert.NotContains(t, out, "T1 ")
	assert.Contains(t, out, "T2 ")

	code, _, errOut = runOp("", "task", "list", "-c", f.file, "--limit", "0")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "--limit 0")
}
