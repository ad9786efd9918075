package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/store"
)

// TestEvacViewSaysWhatEachWaitingVMWaitsFor is what `task show` prints
// for an evacuation that waits.
func TestEvacViewSaysWhatEachWaitingVMWaitsFor(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 22, 0, 0, 0, time.UTC)
	task := evacuator.Task{ID: "evac-h1-c1", Host: "h1", Fence: "ipmi verified power off", State: evacuator.TaskWaiting,
		Created: t0, Plans: 2, NextPlan: t0.Add(10 * time.Second),
		VMs: []evacuator.VMTask{
			{UUID: "u1", Name: "web", Target: "h2", Step: evacuator.StepRunning},
			{UUID: "u2", Name: "db", Target: "h3", Step: evacuator.StepFailed, Retry: true, Error: "failed on every target: h3: start: no memory"},
		},
		Unplaced: []evacuator.UnplacedVM{
			{UUID: "u3", Name: "big", Waiting: true, Reason: "no capacity: needs 4096 MiB"},
			{UUID: "u4", Name: "opt", Reason: `opted out by metadata evacuate="false"`},
		}}
	v := evacView(task)
	assert.Equal(t, operations.TaskRunning, v.State, "a waiting evacuation is not over")
	assert.Equal(t, OpEvacuate, v.Op)
	require.Len(t, v.Progress, 4)
	by := map[string]operations.VMProgress{}
	for _, p := range v.Progress {
		by[p.Name] = p
	}
	assert.Equal(t, operations.VMDone, by["web"].State)
	assert.Equal(t, operations.VMPending, by["db"].State)
	assert.Contains(t, by["db"].Detail, "waits: failed on every target: h3: start: no memory")
	assert.Contains(t, by["db"].Detail, "at the latest at 2026-12-07T22:00:10Z")
	assert.Equal(t, operations.VMPending, by["big"].State)
	assert.Contains(t, by["big"].Detail, "waits: no capacity: needs 4096 MiB")
	assert.Equal(t, operations.VMSkipped, by["opt"].State)
	assert.Equal(t, "evacuation waiting: 1 running elsewhere, 2 waiting, 2 plan(s)", v.Result)

	task.State, task.CancelledBy, task.CancelReason = evacuator.TaskCancelled, "alice", "host retired"
	v = evacView(task)
	assert.Equal(t, operations.TaskInterrupted, v.State)
	assert.Equal(t, "cancelled by alice: host retired", v.Error)
	assert.Equal(t, operations.VMFailed, v.Progress[1].State, "nothing waits in an ended task")
}

// TestNotEvacuableNamesDomainsWithoutXML: status says which hosts could
// not have all their VMs rebuilt now, and why.
func TestNotEvacuableNamesDomainsWithoutXML(t *testing.T) {
	homes := map[string][]store.DomainHome{
		"h1": {{UUID: "u1", Name: "web"}, {UUID: "u2", Name: "db"}, {UUID: "u3", Name: "cache"}},
		"h2": {{UUID: "u4", Name: "ok"}},
	}
	saved := map[string][]store.DomainRecord{"h1": {{UUID: "u1", XML: "<domain/>"}}, "h2": {{UUID: "u4", XML: "<domain/>"}}}
	f := notEvacuable(func(h string) []store.DomainHome { return homes[h] },
		func(h string) ([]store.DomainRecord, error) { return saved[h], nil },
		func(host, uuid string) (string, time.Time, bool, error) {
			return "<domain/>", time.Time{}, uuid == "u3", nil
		})
	assert.Equal(t, "not yet evacuable: 1 of 3 domain(s) have no saved XML (not captured while healthy since the daemon started, not in the mirror): db", f("h1"),
		"web is in the journal, cache in the mirror")
	assert.Empty(t, f("h2"))
	assert.Empty(t, f("h3"), "no domains: nothing to say")
}
