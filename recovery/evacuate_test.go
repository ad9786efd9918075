package recovery

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/store"
)

const (
	eu1 = "11111111-1111-1111-1111-111111111111"
	eu2 = "22222222-2222-2222-2222-222222222222"
	eu3 = "33333333-3333-3333-3333-333333333333"
	eu4 = "44444444-4444-4444-4444-444444444444"
)

func domXML(uuid, name, disk string) string {
	return fmt.Sprintf(`<domain type='kvm'><name>%s</name><uuid>%s</uuid><memory unit='KiB'>1048576</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><source file='%s'/><target dev='vda' bus='virtio'/></disk></devices></domain>`, name, uuid, disk)
}

func planInput() PlanInput {
	saved := map[string]store.DomainRecord{
		eu1: {UUID: eu1, Name: "web", XML: domXML(eu1, "web", "/mnt/shared/web.qcow2")},
		eu2: {UUID: eu2, Name: "scratch", XML: domXML(eu2, "scratch", "/var/lib/libvirt/images/scratch.qcow2")},
		eu3: {UUID: eu3, Name: "broken", XML: "<domain><name>"},
	}
	return PlanInput{
		Request: EvacuationRequest{TaskID: "evac-a-1", Host: "a", CorrelationID: "a-1", Fence: "ipmi verified power off"},
		Now:     t0,
		Homes: []store.DomainHome{{UUID: eu4, Name: "never", Host: "a"}, {UUID: eu3, Name: "broken", Host: "a"},
			{UUID: eu2, Name: "scratch", Host: "a"}, {UUID: eu1, Name: "web", Host: "a"}},
		Saved:   saved,
		Storage: evacuator.StorageRules{SharedPaths: []string{"/mnt/shared"}},
		Candidates: []evacuator.Candidate{
			{Name: "a", Eligible: false, Why: "is the failed host"},
			{Name: "b", Eligible: true, CPUs: 8, MemoryMiB: 16384, FreeMemoryMiB: 16384, Load: 0.5},
			{Name: "c", Eligible: true, CPUs: 8, MemoryMiB: 16384, FreeMemoryMiB: 16384, Load: 0.1},
		},
		Limits: evacuator.Limits{CPUOvercommit: 4, MemoryOvercommit: 1},
	}
}

func TestBuildTaskPlacesOrExplainsEveryHome(t *testing.T) {
	task, _ := BuildTask(planInput())
	assert.Equal(t, "evac-a-1", task.ID)
	assert.Equal(t, "ipmi verified power off", task.Fence)
	assert.Equal(t, evacuator.TaskRunning, task.State)
	require.Len(t, task.VMs, 1)
	assert.Equal(t, "web", task.VMs[0].Name)
	assert.Equal(t, "c", task.VMs[0].Target, "the least loaded candidate")
	assert.Equal(t, evacuator.StepPending, task.VMs[0].Step)
	assert.Contains(t, task.VMs[0].XML, "<name>web</name>", "the saved XML goes with the VM")

	reasons := map[string]string{}
	for _, u := range task.Unplaced {
		reasons[u.Name] = u.Reason
	}
	require.Len(t, reasons, 3, "every other home is explained: %v", reasons)
	assert.Contains(t, reasons["never"], "never captured while a was healthy")
	assert.Contains(t, reasons["broken"], "unreadable")
	assert.Contains(t, reasons["scratch"], "local")

	again, _ := BuildTask(planInput())
	assert.Equal(t, task, again, "pure: the same input gives the same task")
	assert.Equal(t, "evacuation plan for a: 1 to rebuild, 3 stay: web → c; "+
		"broken stays: "+reasons["broken"]+"; never stays: "+reasons["never"]+"; scratch stays: "+reasons["scratch"], PlanSummary(task))
}

// TestBuildTaskLeavesAutostartVMs: a VM whose saved record has libvirt
// autostart on stays, with the reason; off (or absent) moves.
func TestBuildTaskLeavesAutostartVMs(t *testing.T) {
	in := planInput()
	web := in.Saved[eu1]
	web.Autostart = true
	in.Saved[eu1] = web
	task, _ := BuildTask(in)
	assert.Empty(t, task.VMs, "nothing to rebuild")
	reasons := map[string]string{}
	for _, u := range task.Unplaced {
		reasons[u.Name] = u.Reason
	}
	assert.Equal(t, "not evacuable: "+evacuator.AutostartReason, reasons["web"])
	assert.Contains(t, PlanSummary(task), "web stays: not evacuable: autostart on: would start again on its old host")
}

// memJournal keeps tasks in memory.
type memJournal struct {
	mu    sync.Mutex
	tasks map[string]evacuator.Task
	recs  []store.Record
}

func (j *memJournal) SaveTask(t evacuator.Task) error { return j.SaveTaskRecords(t) }

func (j *memJournal) SaveTaskRecords(t evacuator.Task, recs ...store.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tasks[t.ID] = t.Clone()
	j.recs = append(j.recs, recs...)
	return nil
}

func (j *memJournal) records() []store.Record {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]store.Record(nil), j.recs...)
}

// fastClock is a virtual clock whose Sleep passes at once.
type fastClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fastClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fastClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return ctx.Err()
}

func (j *memJournal) OpenTasks() ([]evacuator.Task, error) { return nil, nil }

func (j *memJournal) Task(id string) (evacuator.Task, bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	t, ok := j.tasks[id]
	return t.Clone(), ok, nil
}

func TestEvacuateRecordsThePlanHonoursTheTargetWaitsAndCancels(t *testing.T) {
	in := planInput()
	j := &memJournal{tasks: map[string]evacuator.Task{}}
	var progress []evacuator.Task
	clock := &fastClock{now: t0}
	var e *Evacuation
	var waited []EvacuationReport
	cancelled := make(chan struct{})
	e = &Evacuation{D: EvacuationDeps{
		Homes: func(string) []store.DomainHome { return in.Homes },
		Saved: func(string) ([]store.DomainRecord, error) {
			return []store.DomainRecord{in.Saved[eu1], in.Saved[eu2]}, nil
		},
		Candidates: func(context.Context, string) []evacuator.Candidate { return in.Candidates },
		Storage:    in.Storage, Limits: in.Limits, Tasks: j,
		// No VM is executed: the hypervisor refuses everything, which
		// the executor reports per VM; the VM then waits for a re-plan.
		Exec: evacuator.ExecDeps{Hypervisor: func(string) (evacuator.Hypervisor, error) { return nil, fmt.Errorf("no libvirt in this test") },
			Peers: func() []string { return nil }, Clock: clock, PerTarget: 1},
		Now: clock.Now,
	}}
	req := in.Request
	req.Target = "b" // the operator's choice, though c is less loaded
	req.Progress = func(t evacuator.Task) { progress = append(progress, t) }
	req.Waiting = func(r EvacuationReport) {
		waited = append(waited, r)
		if len(waited) == 1 {
			go func() { // Cancel waits for the loop, which waits for this hook
				got, err := e.Cancel(req.TaskID, "alice", "e2e")
				assert.NoError(t, err, "a live task is cancelled by its loop")
				assert.Equal(t, evacuator.TaskCancelled, got.State, "Cancel returns once the loop ended the task")
				close(cancelled)
			}()
		}
	}
	rep, err := e.Evacuate(context.Background(), req)
	require.NoError(t, err)
	<-cancelled
	assert.Equal(t, string(evacuator.TaskCancelled), rep.State)
	require.Len(t, waited, 1, "evacuation.partial's hook fires once")
	saved, ok, _ := j.Task("evac-a-1")
	require.True(t, ok)
	require.Len(t, saved.VMs, 1)
	assert.Equal(t, "b", saved.VMs[0].Target, "only the requested target")
	assert.Equal(t, evacuator.TaskCancelled, saved.State)
	assert.Equal(t, "alice", saved.CancelledBy)
	recs := j.records()
	require.GreaterOrEqual(t, len(recs), 3, "plan, waiting, (re-plans,) cancelled: %+v", recs)
	assert.Equal(t, PlanKind, recs[0].Kind)
	assert.Contains(t, recs[0].Reason, "web → b")
	assert.Equal(t, []string{"planned", "waiting", "cancelled"}, []string{recs[0].To, recs[1].To, recs[len(recs)-1].To})
	for _, r := range recs[2 : len(recs)-1] {
		assert.Equal(t, "re-planned", r.To, "only re-plans between: %s", r.Reason)
	}
	assert.Contains(t, recs[1].Reason, "web waits: failed on every target")
	require.NotEmpty(t, progress)
	assert.Equal(t, "web", progress[0].VMs[0].Name, "the plan is reported before anything runs")

	rep2, err := e.Evacuate(context.Background(), req)
	require.NoError(t, err)
	assert.True(t, rep2.Replayed, "an ended task only reports again")
	assert.Len(t, j.records(), len(recs), "nothing recorded again")
	_, err = e.Cancel(req.TaskID, "bob", "")
	assert.ErrorIs(t, err, ErrTaskEnded)
	_, err = e.Cancel("nope", "bob", "")
	assert.ErrorIs(t, err, ErrNoTask)
}

// TestReplanPlacesWhatWaitsWhenRoomAppears: capacity short, one VM waits
// with a capacity reason; a host enabled later takes it, and what already
// runs is left alone.
func TestReplanPlacesWhatWaitsWhenRoomAppears(t *testing.T) {
	in := planInput()
	in.Saved[eu4] = store.DomainRecord{UUID: eu4, Name: "never", XML: domXML(eu4, "never", "/mnt/shared/never.qcow2")}
	in.Candidates = []evacuator.Candidate{
		{Name: "a", Eligible: false, Why: "is the failed host"},
		{Name: "b", Eligible: true, CPUs: 1, MemoryMiB: 1024, FreeMemoryMiB: -1, Load: -1}, // room for one 1 GiB VM
		{Name: "c", Eligible: false, Why: "admin disabled", CPUs: 8, MemoryMiB: 16384, FreeMemoryMiB: -1, Load: -1},
	}
	in.Limits = evacuator.Limits{CPUOvercommit: 1, MemoryOvercommit: 1}
	task, _ := BuildTask(in)
	require.Len(t, task.VMs, 1)
	task.VMs[0].Step = evacuator.StepRunning
	task.State = evacuator.TaskWaiting
	w := task.Waiting()
	require.Len(t, w, 1, "%+v", task.Unplaced)
	assert.Contains(t, w[0].Reason, "no capacity")

	// Fresh samples count the VM now running on b.
	in.Candidates[1].UsedVCPUs, in.Candidates[1].UsedMemoryMiB = 1, 1024
	same, _ := Replan(task, in)
	assert.Equal(t, evacuator.TaskWaiting, same.State, "nothing changed: still waiting")
	assert.Len(t, same.Waiting(), 1)
	assert.Equal(t, 2, same.Plans)

	in.Candidates[2].Eligible, in.Candidates[2].Why = true, "" // enabled
	next, p := Replan(task, in)
	assert.Equal(t, evacuator.TaskRunning, next.State)
	assert.Empty(t, next.Waiting())
	require.Len(t, p.Assignments, 1)
	require.Len(t, next.VMs, 2)
	assert.Equal(t, evacuator.StepRunning, next.VMs[0].Step, "the running VM is left alone")
	assert.Equal(t, "c", next.VMs[1].Target)
	assert.Equal(t, evacuator.StepPending, next.VMs[1].Step)
	for _, u := range next.Unplaced {
		assert.False(t, u.Waiting, "%s", u.Name)
	}
	require.NoError(t, next.Validate())
}

// TestPlanInputFallsBackToTheMirror: a home the journal has no XML for
// (a daemon's first start, before its first capture of the host) is
// planned from the shared-storage mirror; one the mirror lacks too waits.
func TestPlanInputFallsBackToTheMirror(t *testing.T) {
	in := planInput()
	var asked []string
	e := &Evacuation{D: EvacuationDeps{
		Homes: func(string) []store.DomainHome { return in.Homes },
		Saved: func(string) ([]store.DomainRecord, error) { return []store.DomainRecord{in.Saved[eu2]}, nil },
		Mirror: func(host, uuid string) (string, time.Time, bool, error) {
			asked = append(asked, uuid)
			if uuid == eu1 {
				return in.Saved[eu1].XML, t0.Add(-time.Hour), true, nil
			}
			return "", time.Time{}, false, nil
		},
		Candidates: func(context.Context, string) []evacuator.Candidate { return in.Candidates },
		Storage:    in.Storage, Limits: in.Limits,
		Now: func() time.Time { return t0 },
	}}
	task, _ := BuildTask(e.planInput(context.Background(), in.Request, t0, zerolog.Nop()))
	assert.ElementsMatch(t, []string{eu1, eu3, eu4}, asked, "the mirror is read only where the journal has no XML")
	require.Len(t, task.VMs, 1)
	assert.Equal(t, "web", task.VMs[0].Name, "rebuilt from the mirror")
	waits := map[string]bool{}
	for _, u := range task.Unplaced {
		waits[u.Name] = u.Waiting
	}
	assert.Equal(t, map[string]bool{"never": true, "broken": true, "scratch": false}, waits,
		"no XML anywhere yet: it waits (a capture may bring it); a local disk never moves")
}

// TestAWaitingTaskEndsWhenTheFencedHostComesBack: the proof covers only
// the silence it was taken in; a fenced host that heartbeats again is a
// new incident, so what still waits is not moved on the old proof.
func TestAWaitingTaskEndsWhenTheFencedHostComesBack(t *testing.T) {
	in := planInput()
	j := &memJournal{tasks: map[string]evacuator.Task{}}
	clock := &fastClock{now: t0}
	e := &Evacuation{D: EvacuationDeps{
		Homes:      func(string) []store.DomainHome { return in.Homes },
		Saved:      func(string) ([]store.DomainRecord, error) { return []store.DomainRecord{in.Saved[eu1]}, nil },
		Candidates: func(context.Context, string) []evacuator.Candidate { return in.Candidates },
		Storage:    in.Storage, Limits: in.Limits, Tasks: j,
		Exec: evacuator.ExecDeps{Hypervisor: func(string) (evacuator.Hypervisor, error) { return nil, fmt.Errorf("no libvirt in this test") },
			Peers: func() []string { return nil }, Clock: clock, PerTarget: 1},
		Now: clock.Now,
	}}
	req := in.Request
	asked := 0
	req.StillProven = func() error {
		asked++
		if asked < 3 {
			return nil
		}
		return fmt.Errorf("a heartbeated at 12:01, after its fence began")
	}
	rep, err := e.Evacuate(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, string(evacuator.TaskCancelled), rep.State)
	assert.Equal(t, 3, asked, "asked before every re-plan")
	saved, _, _ := j.Task(req.TaskID)
	assert.Equal(t, "recovery", saved.CancelledBy)
	assert.Contains(t, saved.CancelReason, "after its fence began")
	recs := j.records()
	assert.Equal(t, "cancelled", recs[len(recs)-1].To)
	assert.Len(t, recs, 5, "planned, waiting, 2 re-plans, cancelled: %+v", recs)
}

// TestReplanNeverReplacesAnUnconfirmedCopy: a VM whose Start may have run
// on a target that cannot confirm it stopped is neither re-placed (it
// could run twice) nor given up: the re-plan sends the task running again
// so the next pass asks that target once more.
func TestReplanNeverReplacesAnUnconfirmedCopy(t *testing.T) {
	in := planInput()
	task, _ := BuildTask(in)
	require.NotEmpty(t, task.VMs)
	for i := range task.VMs {
		task.VMs[i].Step = evacuator.StepRunning
	}
	vm := &task.VMs[0]
	target := vm.Target
	vm.Step, vm.MayRun, vm.Error = evacuator.StepCleanup, true, "could not confirm it stopped"
	task.State = evacuator.TaskWaiting
	for _, w := range task.Waiting() {
		require.NotEqual(t, vm.UUID, w.UUID, "an unconfirmed copy is not re-placed")
	}
	require.Equal(t, 1, task.Unconfirmed())

	next, p := Replan(task, in)
	assert.Equal(t, evacuator.TaskRunning, next.State, "the next pass asks the target again")
	for _, a := range p.Assignments {
		assert.NotEqual(t, vm.UUID, a.VM.UUID, "never placed elsewhere")
	}
	assert.Equal(t, target, next.VMs[0].Target)
	assert.Equal(t, evacuator.StepCleanup, next.VMs[0].Step)
	rep := report(next, t0, t0)
	var waits bool
	for _, u := range rep.Unplaced {
		waits = waits || (u.UUID == vm.UUID && u.Waiting)
	}
	assert.True(t, waits, "reported as waiting, not as failed")
}
