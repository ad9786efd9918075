package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/operations"
)

func TestVMProgressMapsEveryStep(t *testing.T) {
	at := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	task := evacuator.Task{
		VMs: []evacuator.VMTask{
			{UUID: "u1", Name: "a", Target: "h2", Step: evacuator.StepPending, Updated: at},
			{UUID: "u2", Name: "b", Target: "h2", Step: evacuator.StepStarting, Updated: at},
			{UUID: "u3", Name: "c", Target: "h3", Step: evacuator.StepRunning, Updated: at},
			{UUID: "u4", Name: "d", Target: "h3", Step: evacuator.StepFailed, Error: "start: no memory", Updated: at},
			{UUID: "u5", Name: "e", Target: "h3", Step: evacuator.StepRefused, Error: "split-brain guard: active on h9", Updated: at},
		},
		Unplaced: []evacuator.UnplacedVM{{UUID: "u6", Name: "f", Reason: "local disk /var/lib/x.qcow2"}},
	}
	got := vmProgress(task)
	want := []operations.VMProgress{
		{UUID: "u1", Name: "a", Target: "h2", At: at, State: operations.VMPending},
		{UUID: "u2", Name: "b", Target: "h2", At: at, State: operations.VMRunning, Detail: "starting"},
		{UUID: "u3", Name: "c", Target: "h3", At: at, State: operations.VMDone, Detail: "running on h3"},
		{UUID: "u4", Name: "d", Target: "h3", At: at, State: operations.VMFailed, Detail: "failed: start: no memory"},
		{UUID: "u5", Name: "e", Target: "h3", At: at, State: operations.VMFailed, Detail: "refused: split-brain guard: active on h9"},
		{UUID: "u6", Name: "f", State: operations.VMSkipped, Detail: "local disk /var/lib/x.qcow2"},
	}
	assert.Equal(t, want, got)
}

func TestHostShowListsDomains(t *testing.T) {
	var b strings.Builder
	h := api.HostInfo{HostStatus: daemon.HostStatus{Domains: 1, Active: 0},
		Assigned: []heartbeat.AssignedDomain{{UUID: "u1", Name: "web"}},
		Evicted:  []heartbeat.AssignedDomain{{UUID: "u2", Name: "db"}}}
	h.Name = "h1"
	h.LastRefused = "skewed: sent_at 7m0s ahead of the daemon's clock (at most 30s allowed): check NTP on the host"
	h.LastRefusedAt = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	printHost(&b, h)
	out := b.String()
	assert.Contains(t, out, "Active:")
	assert.Regexp(t, `(?m)^Refused heartbeat: +skewed: sent_at 7m0s ahead .*check NTP on the host \(2030-01-02T03:04:05Z\)$`, out)
	assert.Regexp(t, `(?m)^  web +u1$`, out)
	assert.Regexp(t, `(?m)^  db +u2 \(runs elsewhere: to be destroyed and undefined here\)$`, out)
}
