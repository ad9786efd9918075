package recovery

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
}

func (j *memJournal) SaveTask(t evacuator.Task) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tasks[t.ID] = t.Clone()
	return nil
}

func (j *memJournal) OpenTasks() ([]evacuator.Task, error) { return nil, nil }

func (j *memJournal) Task(id string) (evacuator.Task, bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	t, ok := j.tasks[id]
	return t.Clone(), ok, nil
}

func TestEvacuateRecordsThePlanHonoursTheTargetAndReplays(t *testing.T) {
	in := planInput()
	j := &memJournal{tasks: map[string]evacuator.Task{}}
	var recs []store.Record
	var progress []evacuator.Task
	e := &Evacuation{D: EvacuationDeps{
		Homes: func(string) []store.DomainHome { return in.Homes },
		Saved: func(string) ([]store.DomainRecord, error) {
			return []store.DomainRecord{in.Saved[eu1], in.Saved[eu2]}, nil
		},
		Candidates: func(string) []evacuator.Candidate { return in.Candidates },
		Storage:    in.Storage, Limits: in.Limits, Tasks: j,
		Record: func(r store.Record) { recs = append(recs, r) },
		// No VM is executed: the hypervisor refuses everything, which
		// the executor reports per VM; this test is about the plan.
		Exec: evacuator.ExecDeps{Hypervisor: func(string) (evacuator.Hypervisor, error) { return nil, fmt.Errorf("no libvirt in this test") },
			Peers: func() []string { return nil }, Clock: evacuator.RealClock{}, PerTarget: 1},
		Now: func() time.Time { return t0 },
	}}
	req := in.Request
	req.Target = "b" // the operator's choice, though c is less loaded
	req.Progress = func(t evacuator.Task) { progress = append(progress, t) }
	rep, err := e.Evacuate(context.Background(), req)
	require.NoError(t, err)
	assert.False(t, rep.Replayed)
	saved, ok, _ := j.Task("evac-a-1")
	require.True(t, ok)
	require.Len(t, saved.VMs, 1)
	assert.Equal(t, "b", saved.VMs[0].Target, "only the requested target")
	require.Len(t, recs, 1)
	assert.Equal(t, PlanKind, recs[0].Kind)
	assert.Contains(t, recs[0].Reason, "web → b")
	require.NotEmpty(t, progress)
	assert.Equal(t, "web", progress[0].VMs[0].Name, "the plan is reported before anything runs")

	rep2, err := e.Evacuate(context.Background(), req)
	require.NoError(t, err)
	assert.True(t, rep2.Replayed, "a finished task only reports again")
	assert.Len(t, recs, 1, "the plan is recorded once")
}
