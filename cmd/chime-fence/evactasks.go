package main

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

// OpEvacuate names evacuation tasks in the tasks endpoints and the CLI.
const OpEvacuate operations.Op = "evacuate"

// taskBackend serves the operators' tasks and the evacuation tasks (the
// automatic pipeline's, and those of rebuild and confirm-down) through the
// same endpoints: `task show evac-…` says what each waiting VM waits for,
// and `task cancel` ends an evacuation by hand.
type taskBackend struct {
	*operations.Manager
	evac  *recovery.Evacuation
	tasks evacuator.StoreJournal
}

func isEvacTask(id string) bool {
	return strings.HasPrefix(id, "evac-") || strings.HasPrefix(id, "rebuild-")
}

// Task returns an operation's task, or an evacuation's in the same shape.
func (b taskBackend) Task(id string) (operations.Task, error) {
	if !isEvacTask(id) {
		return b.Manager.Task(id)
	}
	t, ok, err := b.tasks.Task(id)
	if err != nil {
		return operations.Task{}, err
	}
	if !ok {
		return operations.Task{}, fmt.Errorf("task %q: %w", id, operations.ErrNotFound)
	}
	return evacView(t), nil
}

// Tasks lists the operations' tasks and the evacuations of host (all when
// host is ""), oldest first.
func (b taskBackend) Tasks(host string) ([]operations.Task, error) {
	out, err := b.Manager.Tasks(host)
	if err != nil {
		return nil, err
	}
	evs, err := b.tasks.Tasks(false)
	if err != nil {
		return nil, err
	}
	for _, t := range evs {
		if host == "" || t.Host == host {
			out = append(out, evacView(t))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Cancel ends an open evacuation task; operations' tasks are not
// cancellable (they end on their own timeout).
func (b taskBackend) Cancel(id, actor, reason string) (operations.Task, error) {
	if !isEvacTask(id) {
		if _, err := b.Manager.Task(id); err != nil {
			return operations.Task{}, err
		}
		return operations.Task{}, fmt.Errorf("%w: task %s is an operation; only evacuation tasks are cancelled by hand", operations.ErrUnavailable, id)
	}
	if b.evac == nil {
		return operations.Task{}, fmt.Errorf("%w: this daemon runs no evacuations", operations.ErrUnavailable)
	}
	_, err := b.evac.Cancel(id, actor, reason)
	switch {
	case errors.Is(err, recovery.ErrNoTask):
		return operations.Task{}, fmt.Errorf("task %q: %w", id, operations.ErrNotFound)
	case errors.Is(err, recovery.ErrTaskEnded):
		return operations.Task{}, fmt.Errorf("%w: %w", operations.ErrConflict, err)
	case err != nil:
		return operations.Task{}, err
	}
	return b.Task(id)
}

// evacView shows an evacuation task as an operations.Task: one progress
// line per VM, and for each waiting VM what it waits for. Pure.
func evacView(t evacuator.Task) operations.Task {
	v := operations.Task{ID: t.ID, Host: t.Host, Op: OpEvacuate, Actor: "recovery", Reason: t.Fence,
		Created: t.Created, Updated: t.Updated, Finished: t.Finished}
	switch t.State {
	case evacuator.TaskRunning, evacuator.TaskWaiting, "":
		v.State = operations.TaskRunning
	case evacuator.TaskDone:
		v.State = operations.TaskSucceeded
	case evacuator.TaskCancelled:
		v.State = operations.TaskInterrupted
		v.Error = "cancelled by " + t.CancelledBy
		if t.CancelReason != "" {
			v.Error += ": " + t.CancelReason
		}
	default:
		v.State = operations.TaskFailed
	}
	next := ""
	if t.State == evacuator.TaskWaiting && !t.NextPlan.IsZero() {
		next = "; re-planned when a host becomes eligible or its capacity changes, at the latest at " + t.NextPlan.UTC().Format(time.RFC3339)
	}
	running, waiting := 0, 0
	for _, vm := range t.VMs {
		p := operations.VMProgress{UUID: vm.UUID, Name: vm.Name, Target: vm.Target, At: vm.Updated}
		switch {
		case vm.Step == evacuator.StepRunning:
			p.State, p.Detail = operations.VMDone, "running on "+vm.Target
			running++
		case vm.Step == evacuator.StepFailed && vm.Retry && t.State.Open():
			p.State, p.Detail, p.Target = operations.VMPending, "waits: "+vm.Error+next, ""
			waiting++
		case vm.Step == evacuator.StepFailed || vm.Step == evacuator.StepRefused:
			p.State, p.Detail = operations.VMFailed, string(vm.Step)+": "+vm.Error
		case vm.Step == evacuator.StepPending:
			p.State, p.Detail = operations.VMPending, "planned on "+vm.Target
		default:
			p.State, p.Detail = operations.VMRunning, string(vm.Step)+" on "+vm.Target
		}
		v.Progress = append(v.Progress, p)
	}
	for _, u := range t.Unplaced {
		p := operations.VMProgress{UUID: u.UUID, Name: u.Name, State: operations.VMSkipped, Detail: "not moved: " + u.Reason}
		if u.Waiting && t.State.Open() {
			p.State, p.Detail = operations.VMPending, "waits: "+u.Reason+next
			waiting++
		}
		v.Progress = append(v.Progress, p)
	}
	v.Result = fmt.Sprintf("evacuation %s: %d running elsewhere, %d waiting, %d plan(s)", t.State, running, waiting, t.Plans)
	return v
}

// notEvacuable says why some of host's domains could not be rebuilt if it
// failed now: those without saved XML in the journal or the mirror (a
// daemon's first start, before its first capture of the host). "" when
// every domain has its XML; whether each is evacuable by its disks is the
// fence readiness check's part.
func notEvacuable(homes func(string) []store.DomainHome, saved func(string) ([]store.DomainRecord, error),
	mirror func(host, uuid string) (string, time.Time, bool, error)) func(host string) string {
	return func(host string) string {
		hs := homes(host)
		if len(hs) == 0 {
			return ""
		}
		recs, err := saved(host)
		if err != nil {
			return "saved domain XML unreadable: " + err.Error()
		}
		have := map[string]bool{}
		for _, r := range recs {
			have[r.UUID] = r.XML != ""
		}
		var missing []string
		for _, h := range hs {
			if have[h.UUID] {
				continue
			}
			if _, _, ok, err := mirror(host, h.UUID); err == nil && ok {
				continue
			}
			missing = append(missing, h.Name)
		}
		if len(missing) == 0 {
			return ""
		}
		return fmt.Sprintf("not yet evacuable: %d of %d domain(s) have no saved XML (not captured while healthy since the daemon started, not in the mirror): %s",
			len(missing), len(hs), strings.Join(missing, ", "))
	}
}
