package evacuator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

var tx0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	u1 = "00000000-0000-4000-8000-000000000001"
	u2 = "00000000-0000-4000-8000-000000000002"
	u3 = "00000000-0000-4000-8000-000000000003"
	u4 = "00000000-0000-4000-8000-000000000004"
	u5 = "00000000-0000-4000-8000-000000000005"
)

func vmTask(uuid, target string, prio int, alts ...string) VMTask {
	name := "vm-" + uuid[len(uuid)-2:]
	return VMTask{UUID: uuid, Name: name, Priority: prio, XML: vmXML(uuid, name), Target: target, Alternatives: alts}
}

func newTask(vms ...VMTask) *Task {
	return &Task{ID: "evac-dead-1", Host: "dead", CorrelationID: "corr-1", Created: tx0,
		Fence: "ipmi verified off at 12:00:00", VMs: vms}
}

// rig is a fake cluster with a fenced host "dead" (unreachable, and asked
// by the split-brain guard like every other peer).
type rig struct {
	c      *execCluster
	j      *memJournal
	clock  *execClock
	alerts *alerts

	mu       sync.Mutex
	homes    map[string]string // OnVMRunning: uuid → host
	reported map[string]int    // OnVMRunning calls per uuid
	progress []Task
	saves    []int
}

func newRig(hosts ...string) *rig {
	r := &rig{
		c:     newExecCluster(append(hosts, "dead")...),
		j:     &memJournal{},
		clock: &execClock{now: tx0}, alerts: &alerts{},
		homes: map[string]string{}, reported: map[string]int{},
	}
	r.c.host("dead").down = true
	return r
}

func (r *rig) deps() ExecDeps {
	return ExecDeps{
		Journal:    r.j,
		Hypervisor: r.c.Hypervisor,
		Peers: func() []string {
			var out []string
			for h := range r.c.hosts {
				out = append(out, h)
			}
			return out
		},
		Rewrite: func(xml, target string) (string, error) {
			return strings.Replace(xml, "listen='10.0.0.1'", "listen='0.0.0.0'", 1), nil
		},
		Clock: r.clock,
		Alert: r.alerts.add,
		OnVMRunning: func(t Task, vm VMTask) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			if vm.Step != StepRunning || t.VMs[indexOf(t, vm.UUID)].Step != StepRunning {
				return fmt.Errorf("OnVMRunning for %s with step %s", vm.UUID, vm.Step)
			}
			r.homes[vm.UUID] = vm.Target
			r.reported[vm.UUID]++
			return nil
		},
		OnProgress: func(t Task) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.progress = append(r.progress, t)
		},
		AfterSave: func(n int) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.saves = append(r.saves, n)
		},
	}
}

func indexOf(t Task, uuid string) int {
	for i, vm := range t.VMs {
		if vm.UUID == uuid {
			return i
		}
	}
	return -1
}

func vmOf(t *testing.T, task Task, uuid string) VMTask {
	t.Helper()
	i := indexOf(task, uuid)
	require.GreaterOrEqual(t, i, 0, "VM %s in task", uuid)
	return task.VMs[i]
}

// steps lists the distinct steps VM uuid went through in the journal.
func steps(j *memJournal, uuid string) []VMStep {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []VMStep
	for _, t := range j.all {
		if i := indexOf(t, uuid); i >= 0 {
			if s := t.VMs[i].Step; len(out) == 0 || out[len(out)-1] != s {
				out = append(out, s)
			}
		}
	}
	return out
}

func TestExecuteHappyPath(t *testing.T) {
	r := newRig("a", "b")
	task := newTask(vmTask(u1, "a", 0, "b"), vmTask(u2, "b", 0), vmTask(u3, "a", 5))
	task.Unplaced = nil
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	assert.Equal(t, TaskDone, task.State)
	assert.Equal(t, r.clock.Now(), task.Finished)
	for uuid, host := range map[string]string{u1: "a", u2: "b", u3: "a"} {
		vm := vmOf(t, *task, uuid)
		assert.Equal(t, StepRunning, vm.Step, uuid)
		assert.Equal(t, host, vm.Target, uuid)
		assert.Empty(t, vm.Tried, uuid)
		assert.False(t, vm.Started.IsZero(), "Started set for %s", uuid)
		assert.Equal(t, []string{host}, r.c.activeOn(uuid), "%s runs only on its target", uuid)
		assert.Equal(t, 1, r.c.startsOn(host, uuid), "%s started once", uuid)
		assert.Contains(t, r.c.host(host).doms[uuid].xml, "listen='0.0.0.0'", "the rewritten XML was defined")
		assert.Equal(t, host, r.homes[uuid])
		assert.Equal(t, 1, r.reported[uuid])
		assert.Equal(t, []VMStep{StepPending, StepDefining, StepDefined, StepStarting, StepRunning}, steps(r.j, uuid),
			"every step journaled before and after")
	}
	assert.Equal(t, *task, r.j.last(t, task.ID), "the journal holds the final task")
	open, err := r.j.OpenTasks()
	require.NoError(t, err)
	assert.Empty(t, open, "a finished task is not open")
	assert.Empty(t, r.alerts.all())
	assert.Empty(t, r.c.violations)
	assert.Zero(t, r.c.count("dead domain"), "the guard never asks the fenced host: its power-off is proven")

	// OnProgress and AfterSave follow every write, in order.
	writes := r.j.count()
	assert.LessOrEqual(t, writes, 1+3*4+1, "start, 4 steps per VM, finish, or fewer when parallel steps share a write")
	assert.GreaterOrEqual(t, writes, 1+4+1, "one VM's steps never share a write")
	require.Len(t, r.progress, writes)
	assert.Equal(t, TaskRunning, r.progress[0].State)
	assert.Equal(t, TaskDone, r.progress[writes-1].State)
	want := make([]int, writes)
	for i := range want {
		want[i] = i + 1
	}
	assert.Equal(t, want, r.saves)

	// Running it again changes nothing.
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	assert.Equal(t, writes, r.j.count())
}

func TestExecuteHigherPriorityFirst(t *testing.T) {
	r := newRig("a")
	task := newTask(vmTask(u1, "a", 1), vmTask(u2, "a", 50), vmTask(u3, "a", 1), vmTask(u4, "a", 7), vmTask(u5, "a", 50))
	d := r.deps()
	d.PerTarget = 1
	require.NoError(t, Execute(context.Background(), task, d))
	assert.Equal(t, []string{u2, u5, u4, u1, u3}, r.c.host("a").defineOrder, "priority, then task order")
}

func TestExecuteFailedStartMovesToNextAlternative(t *testing.T) {
	r := newRig("a", "b", "c")
	r.c.host("a").onStart = func(ctx context.Context, uuid string) error {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: "a", Step: "start", Err: errors.New("qemu: could not open disk image")}
	}
	task := newTask(vmTask(u1, "a", 0, "b", "c"))
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	vm := task.VMs[0]
	assert.Equal(t, StepRunning, vm.Step)
	assert.Equal(t, "b", vm.Target)
	require.Len(t, vm.Tried, 1)
	assert.Equal(t, "a", vm.Tried[0].Host)
	assert.Contains(t, vm.Tried[0].Error, "start: host a: start: invalid: qemu: could not open disk image")
	assert.Equal(t, []string{"b"}, r.c.activeOn(u1))
	assert.NotContains(t, r.c.host("a").doms, u1, "the failed copy was undefined")
	assert.Equal(t, 1, r.c.count("a start"))
	assert.Equal(t, 1, r.c.startsOn("b", u1))
	assert.Zero(t, r.c.count("c define"), "c not needed")
	assert.Equal(t, TaskDone, task.State)
	assert.Equal(t, []VMStep{StepPending, StepDefining, StepDefined, StepStarting, StepCleanup, StepPending, StepDefining, StepDefined, StepStarting, StepRunning}, steps(r.j, u1))
}

func TestExecuteEveryTargetFails(t *testing.T) {
	r := newRig("a", "b", "c")
	r.c.host("a").onDefine = func(context.Context, string) error {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: "a", Step: "define", Err: errors.New("unknown bridge br-vm")}
	}
	r.c.host("b").onStart = func(context.Context, string) error {
		return &hypervisor.Error{Kind: hypervisor.KindUnknown, Host: "b", Step: "start", Err: errors.New("cannot allocate memory")}
	}
	r.c.host("c").afterStart = hypervisor.StatePaused // never reaches running
	task := newTask(vmTask(u1, "a", 0, "b", "c"))
	task.Unplaced = []UnplacedVM{{UUID: u2, Name: "local", Reason: "disk vda is on local storage"}}
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	vm := task.VMs[0]
	assert.Equal(t, StepFailed, vm.Step)
	assert.Equal(t, []string{"a", "b", "c"}, []string{vm.Tried[0].Host, vm.Tried[1].Host, vm.Tried[2].Host})
	assert.Contains(t, vm.Error, "failed on every target: a: define: ")
	assert.Contains(t, vm.Error, "unknown bridge br-vm")
	assert.Contains(t, vm.Error, "; b: start: ")
	assert.Contains(t, vm.Error, "cannot allocate memory")
	assert.Contains(t, vm.Error, "; c: verify: not running after 30s (last reading: paused)")
	assert.Empty(t, r.c.activeOn(u1))
	for _, h := range []string{"a", "b", "c"} {
		assert.NotContains(t, r.c.host(h).doms, u1, "no copy left on %s", h)
	}
	assert.True(t, vm.Retry, "every copy was removed: a re-plan may try other hosts")
	assert.Equal(t, TaskWaiting, task.State, "nothing runs, and the VM waits for a re-plan")
	assert.True(t, task.Finished.IsZero(), "a waiting task is not finished")
	assert.Equal(t, []UnplacedVM{{UUID: u1, Name: vm.Name, Reason: vm.Error, Waiting: true}}, task.Waiting(),
		"the VM waits; the local-disk VM never will")
	open, err := r.j.OpenTasks()
	require.NoError(t, err)
	require.Len(t, open, 1, "a waiting task stays open: a restart resumes it")
	assert.GreaterOrEqual(t, r.clock.Now().Sub(tx0), 30*time.Second, "verify waited its timeout on the virtual clock")
}

func TestExecuteSplitBrainGuard(t *testing.T) {
	r := newRig("a", "b", "x", "y")
	r.c.put("x", u1, "vm-01", hypervisor.StateRunning) // the same VM runs on x
	r.c.put("x", u3, "vm-03", hypervisor.StatePaused)  // paused still holds its disks
	r.c.put("x", u4, "vm-04", hypervisor.StateShutoff) // defined but stopped: no conflict
	r.c.host("y").down = true                          // unreachable peer: skipped
	r.c.host("b").onStart = func(_ context.Context, uuid string) error {
		if uuid == u5 {
			return &hypervisor.Error{Kind: hypervisor.KindConflict, Host: "b", Step: "start", Err: errors.New("Failed to get \"write\" lock")}
		}
		return nil
	}
	var started []string
	var mu sync.Mutex
	r.c.host("a").onStart = func(_ context.Context, uuid string) error {
		mu.Lock()
		defer mu.Unlock()
		started = append(started, uuid)
		return nil
	}
	task := newTask(vmTask(u1, "a", 0, "b"), vmTask(u2, "a", 0), vmTask(u3, "a", 0, "b"), vmTask(u4, "a", 0), vmTask(u5, "b", 0, "a"))
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	assert.ElementsMatch(t, []string{u2, u4}, started, "refused VMs are never started")
	for _, uuid := range []string{u1, u3} {
		vm := vmOf(t, *task, uuid)
		assert.Equal(t, StepRefused, vm.Step, uuid)
		assert.Equal(t, "a", vm.Target, "%s is not moved to an alternative", uuid)
		assert.NotContains(t, r.c.host("a").doms, uuid, "the copy defined on a was removed")
		assert.Equal(t, []string{"x"}, r.c.activeOn(uuid), "%s still runs only on x", uuid)
	}
	assert.Contains(t, vmOf(t, *task, u1).Error, "split-brain guard: a domain with this UUID is active on x (running)")
	assert.Contains(t, vmOf(t, *task, u3).Error, "active on x (paused)")
	assert.Equal(t, StepRunning, vmOf(t, *task, u2).Step, "an unreachable peer does not block")
	assert.Equal(t, StepRunning, vmOf(t, *task, u4).Step, "a stopped copy elsewhere does not block")
	assert.Positive(t, r.c.count("y domain"), "the unreachable peer was asked")
	assert.NotContains(t, r.c.host("b").doms, u1, "a refused VM is not tried elsewhere")

	u5vm := vmOf(t, *task, u5)
	assert.Equal(t, StepRefused, u5vm.Step, "libvirt's disk lock conflict is a split brain, not a reason to try a")
	assert.Contains(t, u5vm.Error, `start refused by libvirt`)
	assert.NotContains(t, r.c.host("a").doms, u5)

	got := r.alerts.all()
	require.Len(t, got, 3)
	for _, a := range got {
		assert.True(t, strings.HasPrefix(a, AlertSplitBrain+": "), a)
		assert.Contains(t, a, "from fenced host dead")
	}
	assert.Equal(t, TaskPartial, task.State)
	assert.Empty(t, r.c.violations)
}

func TestExecuteRefusesWithoutFence(t *testing.T) {
	r := newRig("a")
	task := newTask(vmTask(u1, "a", 0))
	task.Fence = ""
	err := Execute(context.Background(), task, r.deps())
	require.ErrorIs(t, err, ErrNotFenced)
	assert.Contains(t, err.Error(), `evacuation task "evac-dead-1" of host "dead"`)
	assert.Zero(t, r.j.count(), "nothing journaled")
	assert.Empty(t, r.c.calls, "no hypervisor touched")
	assert.Equal(t, VMStep(""), task.VMs[0].Step, "task unchanged")
}

func TestExecuteRefusesBadInput(t *testing.T) {
	for name, tc := range map[string]struct {
		task func() *Task
		deps func(*ExecDeps)
		want string
	}{
		"nil task":       {func() *Task { return nil }, nil, "task is nil"},
		"no ID":          {func() *Task { t := newTask(); t.ID = ""; return t }, nil, "ID is empty"},
		"no host":        {func() *Task { t := newTask(); t.Host = ""; return t }, nil, "Host (the fenced host) is empty"},
		"twice":          {func() *Task { return newTask(vmTask(u1, "a", 0), vmTask(u1, "a", 0)) }, nil, "VM " + u1 + ": listed twice"},
		"no UUID":        {func() *Task { return newTask(VMTask{Target: "a", XML: "<domain/>"}) }, nil, "VM 0: UUID is empty"},
		"fenced target":  {func() *Task { return newTask(vmTask(u1, "dead", 0)) }, nil, "target dead is the fenced host"},
		"fenced alt":     {func() *Task { return newTask(vmTask(u1, "a", 0, "dead")) }, nil, "target dead is the fenced host"},
		"no target":      {func() *Task { return newTask(vmTask(u1, "", 0)) }, nil, "VM " + u1 + ": no target"},
		"no XML":         {func() *Task { v := vmTask(u1, "a", 0); v.XML = ""; return newTask(v) }, nil, "no saved XML"},
		"unknown step":   {func() *Task { v := vmTask(u1, "a", 0); v.Step = "flying"; return newTask(v) }, nil, `unknown step "flying"`},
		"unknown state":  {func() *Task { t := newTask(); t.State = "paused"; return t }, nil, `unknown state "paused"`},
		"no journal":     {func() *Task { return newTask() }, func(d *ExecDeps) { d.Journal = nil }, "Journal is nil"},
		"no hypervisor":  {func() *Task { return newTask() }, func(d *ExecDeps) { d.Hypervisor = nil }, "Hypervisor is nil"},
		"no peers":       {func() *Task { return newTask() }, func(d *ExecDeps) { d.Peers = nil }, "Peers is nil"},
		"negative bound": {func() *Task { return newTask() }, func(d *ExecDeps) { d.PerTarget = -1 }, "PerTarget -1 is negative"},
		"negative time":  {func() *Task { return newTask() }, func(d *ExecDeps) { d.VerifyTimeout = -time.Second }, "VerifyTimeout -1s is negative"},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig("a")
			d := r.deps()
			if tc.deps != nil {
				tc.deps(&d)
			}
			err := Execute(context.Background(), tc.task(), d)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Zero(t, r.j.count())
			assert.Empty(t, r.c.calls)
		})
	}
}

func TestExecutePerTargetBound(t *testing.T) {
	r := newRig("a", "b")
	gate := make(chan struct{})
	r.c.host("a").onDefine = func(ctx context.Context, _ string) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	var vms []VMTask
	for i := range 10 {
		vms = append(vms, vmTask(fmt.Sprintf("00000000-0000-4000-8000-0000000001%02d", i), "a", i))
	}
	vms = append(vms, vmTask(u1, "b", 0), vmTask(u2, "b", 0))
	task := newTask(vms...)
	d := r.deps()
	d.PerTarget = 3
	done := make(chan error, 1)
	go func() { done <- Execute(context.Background(), task, d) }()

	inFlight := func() (int, int) {
		r.c.mu.Lock()
		defer r.c.mu.Unlock()
		return r.c.host("a").inFlight, r.c.host("a").maxInFlight
	}
	require.Eventually(t, func() bool {
		n, _ := inFlight()
		return n == 3 && len(r.c.activeOn(u1)) == 1 && len(r.c.activeOn(u2)) == 1
	}, 10*time.Second, time.Millisecond, "3 defines wait on a while b's VMs get to run")
	for range 10 {
		gate <- struct{}{}
	}
	require.NoError(t, <-done)
	_, most := inFlight()
	assert.Equal(t, 3, most, "never more than PerTarget rebuilds on one target")
	assert.Equal(t, TaskDone, task.State)
	for _, vm := range task.VMs {
		assert.Equal(t, []string{vm.Target}, r.c.activeOn(vm.UUID))
	}
	first := r.c.host("a").defineOrder[:3]
	assert.ElementsMatch(t, []string{vms[9].UUID, vms[8].UUID, vms[7].UUID}, first, "the highest priorities go first")
}

func TestExecuteResumeChecksTargetFirst(t *testing.T) {
	for name, tc := range map[string]struct {
		step      VMStep
		onTarget  hypervisor.DomainState // StateUnknown: not defined there
		wantCalls map[string]int
	}{
		"starting, already running":     {StepStarting, hypervisor.StateRunning, map[string]int{"a define": 0, "a start": 0}},
		"pending, already running":      {StepPending, hypervisor.StateRunning, map[string]int{"a define": 0, "a start": 0}},
		"starting, defined and stopped": {StepStarting, hypervisor.StateShutoff, map[string]int{"a define": 0, "a start": 1}},
		"defined, defined":              {StepDefined, hypervisor.StateShutoff, map[string]int{"a define": 0, "a start": 1}},
		"defined, gone":                 {StepDefined, hypervisor.StateUnknown, map[string]int{"a define": 1, "a start": 1}},
		"defining, stale copy":          {StepDefining, hypervisor.StateShutoff, map[string]int{"a define": 1, "a start": 1}},
		"defining, nothing":             {StepDefining, hypervisor.StateUnknown, map[string]int{"a define": 1, "a start": 1}},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig("a", "b")
			if tc.onTarget != hypervisor.StateUnknown {
				r.c.put("a", u1, "vm-01", tc.onTarget)
			}
			vm := vmTask(u1, "a", 0, "b")
			vm.Step = tc.step
			task := newTask(vm)
			task.State = TaskRunning
			require.NoError(t, Execute(context.Background(), task, r.deps()))
			assert.Equal(t, StepRunning, task.VMs[0].Step)
			assert.Equal(t, "a", task.VMs[0].Target)
			assert.Equal(t, []string{"a"}, r.c.activeOn(u1))
			for k, n := range tc.wantCalls {
				assert.Equal(t, n, r.c.count(k), k)
			}
			if tc.wantCalls["a define"] == 1 {
				assert.Contains(t, r.c.host("a").doms[u1].xml, "listen='0.0.0.0'", "the saved XML replaced the old copy")
			}
			assert.Equal(t, 1, r.reported[u1], "OnVMRunning called")
			assert.Equal(t, TaskDone, task.State)
		})
	}
}

func TestExecuteStartedOnUnreachableTargetIsNotMoved(t *testing.T) {
	r := newRig("a", "b")
	r.c.host("a").down = true
	vm := vmTask(u1, "a", 0, "b")
	vm.Step = StepStarting // the crash came after "starting" was journaled
	task := newTask(vm)
	task.State = TaskRunning
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	got := task.VMs[0]
	// Not given up: it waits in cleanup on a, never placed elsewhere.
	assert.Equal(t, StepCleanup, got.Step)
	assert.True(t, got.MayRun)
	assert.Equal(t, "a", got.Target)
	assert.Contains(t, got.Error, "could not confirm it stopped on a")
	assert.Contains(t, got.Error, "so it is not started anywhere else")
	assert.Zero(t, r.c.count("b define"), "b is not tried: the VM may run on a")
	assert.Greater(t, r.c.count("a domain"), 1, "a was asked again while Start may have run there")
	assert.GreaterOrEqual(t, r.clock.Now().Sub(tx0), 30*time.Second, "for VerifyTimeout")
	alerts := r.alerts.all()
	require.Len(t, alerts, 1)
	assert.True(t, strings.HasPrefix(alerts[0], AlertUnsafe+": VM vm-01 ("+u1+") from fenced host dead: "), alerts[0])
	assert.Equal(t, TaskWaiting, task.State, "the task stays open")
	assert.Equal(t, 1, task.Unconfirmed())

	// A later pass while a is still silent: asked again, still not moved,
	// not alerted again.
	task.State = TaskRunning
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	assert.Equal(t, StepCleanup, task.VMs[0].Step)
	assert.Zero(t, r.c.count("b define"))
	assert.Len(t, r.alerts.all(), 1, "one alert per reason")

	// a answers again and holds no copy: confirmed stopped, so the VM
	// moves on to b and runs there, once.
	r.c.host("a").down = false
	task.State = TaskRunning
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	assert.Equal(t, StepRunning, task.VMs[0].Step)
	assert.Equal(t, "b", task.VMs[0].Target)
	assert.Equal(t, []string{"b"}, r.c.activeOn(u1))
	assert.Equal(t, TaskDone, task.State)
}

func TestExecuteUnstoppableCopyIsNotMoved(t *testing.T) {
	r := newRig("a", "b")
	r.c.host("a").afterStart = hypervisor.StatePaused
	r.c.host("a").destroyErr = &hypervisor.Error{Kind: hypervisor.KindTimeout, Host: "a", Step: "destroy"}
	task := newTask(vmTask(u1, "a", 0, "b"))
	require.NoError(t, Execute(context.Background(), task, r.deps()))

	got := task.VMs[0]
	assert.Equal(t, StepCleanup, got.Step, "waits on a, never moved while its copy may run")
	assert.Equal(t, TaskWaiting, task.State)
	assert.Contains(t, got.Error, "verify: not running after 30s (last reading: paused); then could not confirm it stopped on a (it is still paused)")
	assert.Zero(t, r.c.count("b define"))
	require.Len(t, r.alerts.all(), 1)
	assert.True(t, strings.HasPrefix(r.alerts.all()[0], AlertUnsafe), r.alerts.all()[0])
}

func TestExecuteUnreachableTargetBeforeStartMovesOn(t *testing.T) {
	r := newRig("a", "b")
	r.c.connectErr["a"] = errors.New("dial tcp 10.0.0.1:16509: connect: no route to host")
	task := newTask(vmTask(u1, "a", 0, "b"))
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	assert.Equal(t, StepRunning, task.VMs[0].Step)
	assert.Equal(t, "b", task.VMs[0].Target)
	assert.Equal(t, []TriedTarget{{Host: "a", Error: "check target: connect: dial tcp 10.0.0.1:16509: connect: no route to host"}}, task.VMs[0].Tried)
	assert.Equal(t, tx0, r.clock.Now(), "nothing was started on a, so no waiting for it")
}

func TestExecuteRewriteAndDefineMistakesMoveOn(t *testing.T) {
	r := newRig("a", "b", "c")
	d := r.deps()
	d.Rewrite = func(xml, target string) (string, error) {
		switch target {
		case "a":
			return "", errors.New("no bridge mapping for br-ext on a")
		case "b":
			return strings.Replace(xml, u1, u2, 1), nil // a rewrite that lost the UUID
		}
		return xml, nil
	}
	task := newTask(vmTask(u1, "a", 0, "b", "c"))
	require.NoError(t, Execute(context.Background(), task, d))
	vm := task.VMs[0]
	assert.Equal(t, StepRunning, vm.Step)
	assert.Equal(t, "c", vm.Target)
	require.Len(t, vm.Tried, 2)
	assert.Equal(t, TriedTarget{Host: "a", Error: "rewrite XML: no bridge mapping for br-ext on a"}, vm.Tried[0])
	assert.Equal(t, TriedTarget{Host: "b", Error: "define: libvirt defined UUID " + u2 + ", want " + u1 + " (the rewrite must keep the UUID)"}, vm.Tried[1])
	assert.Zero(t, r.c.count("a define"), "nothing defined when the rewrite fails")
	assert.Empty(t, r.c.host("b").doms, "the wrongly defined domain was removed")
	assert.Equal(t, []string{"c"}, r.c.activeOn(u1))
}

func TestExecuteCancelledLeavesTaskOpen(t *testing.T) {
	r := newRig("a")
	ctx, cancel := context.WithCancel(context.Background())
	r.c.host("a").onDefine = func(ctx context.Context, _ string) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}
	task := newTask(vmTask(u1, "a", 0))
	err := Execute(ctx, task, r.deps())
	require.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "stays open")
	saved := r.j.last(t, task.ID)
	assert.Equal(t, TaskRunning, saved.State)
	assert.Equal(t, StepDefining, saved.VMs[0].Step, "the failed define is not recorded as the target's fault")
	assert.Empty(t, saved.VMs[0].Tried)

	r.c.host("a").onDefine = nil
	require.NoError(t, Execute(context.Background(), &saved, r.deps()))
	assert.Equal(t, TaskDone, saved.State)
	assert.Equal(t, []string{"a"}, r.c.activeOn(u1))
}

func TestExecuteOnVMRunningErrorIsLogged(t *testing.T) {
	r := newRig("a")
	var buf bytes.Buffer
	d := r.deps()
	d.Log = zerolog.New(&buf)
	d.OnVMRunning = func(Task, VMTask) error { return errors.New("store is closed") }
	task := newTask(vmTask(u1, "a", 0))
	require.NoError(t, Execute(context.Background(), task, d))
	assert.Equal(t, TaskDone, task.State)
	assert.Contains(t, buf.String(), `"error":"store is closed"`)
	assert.Contains(t, buf.String(), `"message":"recording the rebuilt VM failed"`)
	assert.Contains(t, buf.String(), `"component":"evacuator"`)
}

func TestExecuteJournalFailureStopsBeforeTheStep(t *testing.T) {
	r := newRig("a")
	r.j.limit = 3 // initial, defining, defined: "starting" fails
	task := newTask(vmTask(u1, "a", 0))
	err := Execute(context.Background(), task, r.deps())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "journal write failed")
	assert.Zero(t, r.c.count("a start"), "no start without the journal saying starting")
	assert.Equal(t, StepDefined, task.VMs[0].Step, "*t is what the journal last stored")
	assert.Equal(t, r.j.last(t, task.ID), *task)
}

// TestExecuteResumesAfterCrashAtEveryWrite stops the journal after write
// N, for every N, then resumes from what the store holds: every VM ends up
// running once, on one host.
func TestExecuteResumesAfterCrashAtEveryWrite(t *testing.T) {
	scenario := func() (*rig, *Task) {
		r := newRig("a", "b", "c")
		r.c.host("b").onStart = func(_ context.Context, uuid string) error {
			if uuid == u3 {
				return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: "b", Step: "start", Err: errors.New("no space for guest memory")}
			}
			return nil
		}
		task := newTask(vmTask(u1, "a", 5, "b"), vmTask(u2, "a", 1), vmTask(u3, "b", 0, "c"), vmTask(u4, "c", 0), vmTask(u5, "b", 9))
		task.Unplaced = []UnplacedVM{{UUID: "00000000-0000-4000-8000-0000000000ff", Name: "local", Reason: "local disk"}}
		return r, task
	}
	want := map[string]string{u1: "a", u2: "a", u3: "c", u4: "c", u5: "b"}
	check := func(t *testing.T, r *rig, final Task) {
		t.Helper()
		assert.Empty(t, r.c.violations)
		assert.Equal(t, TaskPartial, final.State, "all placed VMs run; one was never placed")
		for uuid, host := range want {
			vm := vmOf(t, final, uuid)
			assert.Equal(t, StepRunning, vm.Step, uuid)
			assert.Equal(t, host, vm.Target, uuid)
			assert.Equal(t, []string{host}, r.c.activeOn(uuid), "%s runs exactly once", uuid)
			assert.Equal(t, 1, r.c.startsOn(host, uuid), "%s started once where it runs", uuid)
			assert.Equal(t, host, r.homes[uuid], "OnVMRunning told the caller")
		}
		assert.NotContains(t, r.c.host("b").doms, u3, "the failed copy on b was removed")
	}

	// A run without a crash tells how many writes there are.
	r, task := scenario()
	d := r.deps()
	d.PerTarget = 2
	require.NoError(t, Execute(context.Background(), task, d))
	check(t, r, *task)
	most := 1 + 5*4 + 3 + 2 + 1 // start, 4 per VM, u3's 3 on b, cleanup and move to c, finish
	require.LessOrEqual(t, r.j.count(), most, "parallel steps may share a write")

	for n := 1; n < most; n++ {
		t.Run(fmt.Sprintf("crash after write %d", n), func(t *testing.T) {
			st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = st.Close() })
			sj := StoreJournal{S: st}

			r, task := scenario()
			r.j.inner, r.j.limit = sj, n
			d := r.deps()
			d.PerTarget = 2
			err = Execute(context.Background(), task, d)
			if err == nil {
				// This run shared enough writes to finish within n.
				check(t, r, *task)
				return
			}
			assert.Contains(t, err.Error(), "journal stopped after")

			open, err := sj.OpenTasks()
			require.NoError(t, err)
			require.Len(t, open, 1, "the interrupted task is open")
			resumed := open[0]
			r.j = &memJournal{inner: sj}
			d = r.deps()
			d.PerTarget = 2
			require.NoError(t, Execute(context.Background(), &resumed, d))
			check(t, r, resumed)

			open, err = sj.OpenTasks()
			require.NoError(t, err)
			assert.Empty(t, open)
			stored, ok, err := sj.Task(task.ID)
			require.NoError(t, err)
			require.True(t, ok)
			assert.Equal(t, resumed, stored, "the store holds the finished task")
		})
	}
}

// TestExecuteResumesThroughRepeatedCrashes lets every life of the daemon
// write only a few times.
func TestExecuteResumesThroughRepeatedCrashes(t *testing.T) {
	for _, perLife := range []int{1, 2, 3, 5} {
		t.Run(fmt.Sprintf("%d writes per life", perLife), func(t *testing.T) {
			r := newRig("a", "b", "c")
			r.c.host("b").onStart = func(_ context.Context, uuid string) error {
				if uuid == u3 {
					return errors.New("start failed")
				}
				return nil
			}
			task := newTask(vmTask(u1, "a", 5, "b"), vmTask(u2, "a", 1), vmTask(u3, "b", 0, "c"), vmTask(u4, "c", 0))
			lives := 0
			for ; lives < 100; lives++ {
				r.j = &memJournal{limit: perLife, tasks: map[string]Task{task.ID: task.Clone()}}
				err := Execute(context.Background(), task, r.deps())
				saved := r.j.last(t, task.ID)
				task = &saved
				if err == nil {
					break
				}
			}
			require.Less(t, lives, 100, "made progress")
			assert.Equal(t, TaskDone, task.State)
			assert.Empty(t, r.c.violations)
			for uuid, host := range map[string]string{u1: "a", u2: "a", u3: "c", u4: "c"} {
				assert.Equal(t, []string{host}, r.c.activeOn(uuid), uuid)
				assert.Equal(t, 1, r.c.startsOn(host, uuid), uuid)
			}
		})
	}
}

func TestStoreJournal(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	j := StoreJournal{S: st}

	open := newTask(vmTask(u1, "a", 3, "b"))
	open.State = TaskRunning
	open.VMs[0].Step = StepStarting
	open.VMs[0].Tried = []TriedTarget{{Host: "c", Error: "define: boom"}}
	open.Unplaced = []UnplacedVM{{UUID: u2, Name: "db", Reason: "no capacity"}}
	require.NoError(t, j.SaveTask(*open))
	done := newTask(vmTask(u3, "a", 0))
	done.ID, done.State, done.Finished = "evac-2", TaskDone, tx0.Add(time.Minute)
	require.NoError(t, j.SaveTask(*done))

	got, err := j.OpenTasks()
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, *open, got[0], "round trip")
	all, err := j.Tasks(false)
	require.NoError(t, err)
	assert.Len(t, all, 2)
	one, ok, err := j.Task("evac-2")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, *done, one)
	_, ok, err = j.Task("nope")
	require.NoError(t, err)
	assert.False(t, ok)

	// A body that names another task is corrupt, not silently used.
	require.NoError(t, st.PutTask(store.TaskRecord{ID: "evac-3", Host: "dead", Open: true, Updated: tx0, Body: []byte(`{"id":"evac-9"}`)}))
	_, err = j.OpenTasks()
	require.ErrorIs(t, err, store.ErrCorrupt)
	assert.Contains(t, err.Error(), `task "evac-3"`)

	bad := newTask()
	bad.Host = ""
	err = j.SaveTask(*bad)
	require.ErrorIs(t, err, store.ErrInvalid)
	assert.Contains(t, err.Error(), `save evacuation task "evac-dead-1"`)
}

// BenchmarkExecuteStoreJournal rebuilds 100 VMs on 5 fake targets with the
// bbolt journal: the cost is the journal's durable writes (4 per VM), each
// the whole task with every VM's XML (about 5 KiB each, as libvirt's are).
func BenchmarkExecuteStoreJournal(b *testing.B) {
	pad := "<description>" + strings.Repeat("x", 5000) + "</description>"
	for b.Loop() {
		b.StopTimer()
		st, err := store.Open(filepath.Join(b.TempDir(), store.FileName), store.Options{})
		if err != nil {
			b.Fatal(err)
		}
		r := newRig("t0", "t1", "t2", "t3", "t4")
		var vms []VMTask
		for i := range 100 {
			vm := vmTask(fmt.Sprintf("00000000-0000-4000-8000-%012d", i), fmt.Sprintf("t%d", i%5), i%3)
			vm.XML = strings.Replace(vm.XML, "<devices>", pad+"<devices>", 1)
			vms = append(vms, vm)
		}
		task := newTask(vms...)
		d := r.deps()
		d.Journal = StoreJournal{S: st}
		b.StartTimer()
		if err := Execute(context.Background(), task, d); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if task.State != TaskDone {
			b.Fatalf("state %s", task.State)
		}
		_ = st.Close()
		b.StartTimer()
	}
}

// TestExecuteTurnsAutostartOffBeforeStart: a target that already had a
// definition with autostart on (a copy left from an earlier move) gets it
// turned off before the start; every rebuilt VM has autostart off.
func TestExecuteTurnsAutostartOffBeforeStart(t *testing.T) {
	r := newRig("a", "b")
	r.c.put("b", u1, "vm-01", hypervisor.StateShutoff)
	r.c.host("b").doms[u1].autostart = true
	task := newTask(vmTask(u1, "b", 0), vmTask(u2, "a", 0))
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	assert.Equal(t, TaskDone, task.State)
	assert.Empty(t, r.c.violations, "nothing started with autostart on")
	assert.False(t, r.c.host("b").doms[u1].autostart)
	assert.False(t, r.c.host("a").doms[u2].autostart)
	assert.Equal(t, 1, r.c.count("b autostart"))
	assert.Equal(t, 1, r.c.count("a autostart"))
}

// TestExecuteAutostartFailureStartsNothing: when autostart cannot be
// turned off the VM is not started there (the next alternative is tried).
func TestExecuteAutostartFailureStartsNothing(t *testing.T) {
	r := newRig("a", "b")
	r.c.host("a").autostartErr = &hypervisor.Error{Kind: hypervisor.KindUnknown, Host: "a", Step: "autostart off", Err: errors.New("permission denied")}
	task := newTask(vmTask(u1, "a", 0, "b"))
	require.NoError(t, Execute(context.Background(), task, r.deps()))
	vm := task.VMs[0]
	assert.Equal(t, StepRunning, vm.Step)
	assert.Equal(t, "b", vm.Target)
	require.Len(t, vm.Tried, 1)
	assert.Contains(t, vm.Tried[0].Error, "autostart off")
	assert.Zero(t, r.c.startsOn("a", u1), "never started where autostart could not be turned off")
	assert.Empty(t, r.c.violations)
}
