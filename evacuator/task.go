package evacuator

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/store"
)

// TaskState is an evacuation task's overall state.
type TaskState string

const (
	TaskRunning TaskState = "running" // work left; a restarted daemon resumes it
	// TaskWaiting: every VM that could be placed was tried; some wait
	// (Task.Waiting) for a re-plan: capacity, an eligible host, their XML.
	// Open: it is retried with back-off and on every change that could
	// help, and a restarted daemon resumes it.
	TaskWaiting   TaskState = "waiting"
	TaskDone      TaskState = "done"      // every VM runs on its new host
	TaskPartial   TaskState = "partial"   // some VMs run; the others can never move here (refused, unsafe, not evacuable)
	TaskFailed    TaskState = "failed"    // no VM runs, and none can
	TaskCancelled TaskState = "cancelled" // an operator ended it (task cancel); what waited stays where it is
)

// Valid reports whether s is one of the states above.
func (s TaskState) Valid() bool {
	switch s {
	case TaskRunning, TaskWaiting, TaskDone, TaskPartial, TaskFailed, TaskCancelled:
		return true
	}
	return false
}

// Open reports whether work is left: the task is resumed after a restart.
func (s TaskState) Open() bool { return s == TaskRunning || s == TaskWaiting }

// VMStep is how far one VM's rebuild got. The executor journals the step
// before it acts (defining, starting) and after (defined, running), so the
// step says which call may have happened and must be checked on resume.
type VMStep string

const (
	StepPending  VMStep = "pending"  // nothing done on Target yet
	StepDefining VMStep = "defining" // Define on Target may have happened
	StepDefined  VMStep = "defined"  // defined on Target, not started
	StepStarting VMStep = "starting" // Start on Target may have happened
	StepCleanup  VMStep = "cleanup"  // failed on Target (see Tried); its copy there is being removed
	StepRunning  VMStep = "running"  // verified running on Target (done)
	StepFailed   VMStep = "failed"   // every target tried, or unsafe to try another
	StepRefused  VMStep = "refused"  // another host runs the UUID: split-brain guard
)

// Terminal reports whether no more work will be done for the VM.
func (s VMStep) Terminal() bool {
	return s == StepRunning || s == StepFailed || s == StepRefused
}

// Valid reports whether s is one of the steps above.
func (s VMStep) Valid() bool {
	switch s {
	case StepPending, StepDefining, StepDefined, StepStarting, StepCleanup, StepRunning, StepFailed, StepRefused:
		return true
	}
	return false
}

// TriedTarget is a target a VM failed on, and why.
type TriedTarget struct {
	Host  string `json:"host"`
	Error string `json:"error"`
}

// UnplacedVM is a VM of the fenced host the scheduler found no place for
// (or that is not evacuable), with the reason.
type UnplacedVM struct {
	UUID   string `json:"uuid"`
	Name   string `json:"name"`
	Reason string `json:"reason"`
	// Waiting: a re-plan may place it (no capacity or eligible host now,
	// no saved XML yet); false when it can never move (opted out, local
	// disks, unreadable XML).
	Waiting bool `json:"waiting,omitempty"`
}

// VMTask is one VM's rebuild.
type VMTask struct {
	UUID     string `json:"uuid"`
	Name     string `json:"name"`
	Priority int    `json:"priority"`
	// XML is the saved inactive definition; the executor rewrites it for
	// each target before defining it there.
	XML string `json:"xml"`
	// Target is the host the VM is being rebuilt on; Alternatives are the
	// next best hosts, tried in order when a step fails on Target.
	Target       string        `json:"target"`
	Alternatives []string      `json:"alternatives,omitempty"`
	Tried        []TriedTarget `json:"tried,omitempty"`
	Step         VMStep        `json:"step"`
	// MayRun: Start may have run on Target. Before another target is
	// tried, the copy there must then be confirmed stopped.
	MayRun bool `json:"may_run,omitempty"`
	// Retry: the VM failed on every target it was given, each copy
	// confirmed removed, so a re-plan may give it new ones (Step failed).
	Retry bool `json:"retry,omitempty"`
	// Cause is why a VM in cleanup left its target (Error then says what
	// the cleanup is waiting for).
	Cause   string    `json:"cause,omitempty"`
	Error   string    `json:"error,omitempty"`
	Updated time.Time `json:"updated"`
	Started time.Time `json:"started,omitzero"` // first Start on the final target
}

// Task is the evacuation of one fenced host: what it was proven down by,
// every VM's rebuild, and the VMs that could not be placed.
type Task struct {
	ID            string    `json:"id"`
	Host          string    `json:"host"` // the fenced host
	CorrelationID string    `json:"correlation_id,omitempty"`
	Created       time.Time `json:"created"`
	Updated       time.Time `json:"updated"`
	Finished      time.Time `json:"finished,omitzero"`
	// Fence says how Host was proven down ("ipmi verified off at …",
	// "confirm-down by alice: …"). Execute refuses a task without it.
	Fence    string       `json:"fence"`
	VMs      []VMTask     `json:"vms"`
	Unplaced []UnplacedVM `json:"unplaced,omitempty"`
	State    TaskState    `json:"state"`
	// Plans counts the plans made (1 + re-plans); NextPlan is when the
	// next re-plan is due at the latest while the task waits.
	Plans    int       `json:"plans,omitempty"`
	NextPlan time.Time `json:"next_plan,omitzero"`
	// PartialAlerted: evacuation.partial was raised for this task (once).
	PartialAlerted bool `json:"partial_alerted,omitempty"`
	// CancelledBy and CancelReason say who ended the task and why.
	CancelledBy  string `json:"cancelled_by,omitempty"`
	CancelReason string `json:"cancel_reason,omitempty"`
}

// Waiting returns the VMs a re-plan may still move: unplaced ones marked
// Waiting, and VMs that failed on every target with Retry.
func (t Task) Waiting() []UnplacedVM {
	var out []UnplacedVM
	for _, vm := range t.VMs {
		if vm.Step == StepFailed && vm.Retry {
			out = append(out, UnplacedVM{UUID: vm.UUID, Name: vm.Name, Reason: vm.Error, Waiting: true})
		}
	}
	for _, u := range t.Unplaced {
		if u.Waiting {
			out = append(out, u)
		}
	}
	return out
}

// Unconfirmed counts the VMs whose Start may have run on their target and
// whose copy there is not yet confirmed stopped: they are never re-placed
// (that could run them twice) and never given up; each pass asks their
// target again.
func (t Task) Unconfirmed() int {
	n := 0
	for _, vm := range t.VMs {
		if vm.Step == StepCleanup && vm.MayRun {
			n++
		}
	}
	return n
}

// Clone returns a deep copy of t, safe to hand to another goroutine.
func (t Task) Clone() Task {
	c := t
	c.VMs = make([]VMTask, len(t.VMs))
	for i, vm := range t.VMs {
		vm.Alternatives = append([]string(nil), vm.Alternatives...)
		vm.Tried = append([]TriedTarget(nil), vm.Tried...)
		c.VMs[i] = vm
	}
	c.Unplaced = append([]UnplacedVM(nil), t.Unplaced...)
	return c
}

// Validate checks what Execute needs before it touches anything: IDs,
// hosts, the fence, known states and steps, one entry per UUID, and a
// target that is not the fenced host for every VM with work left.
func (t Task) Validate() error {
	var errs []error
	if t.ID == "" {
		errs = append(errs, errors.New("ID is empty"))
	}
	if t.Host == "" {
		errs = append(errs, errors.New("Host (the fenced host) is empty"))
	}
	if t.Fence == "" {
		errs = append(errs, ErrNotFenced)
	}
	if !t.State.Valid() && t.State != "" {
		errs = append(errs, fmt.Errorf("unknown state %q", t.State))
	}
	seen := map[string]bool{}
	for i, vm := range t.VMs {
		name := fmt.Sprintf("VM %d", i)
		if vm.UUID != "" {
			name = "VM " + vm.UUID
		}
		switch {
		case vm.UUID == "":
			errs = append(errs, fmt.Errorf("%s: UUID is empty", name))
		case seen[vm.UUID]:
			errs = append(errs, fmt.Errorf("%s: listed twice", name))
		}
		seen[vm.UUID] = true
		if vm.Step != "" && !vm.Step.Valid() { // "" is a new VM: pending
			errs = append(errs, fmt.Errorf("%s: unknown step %q", name, vm.Step))
		}
		if vm.Step.Terminal() {
			continue
		}
		if vm.XML == "" {
			errs = append(errs, fmt.Errorf("%s: no saved XML", name))
		}
		if vm.Target == "" {
			errs = append(errs, fmt.Errorf("%s: no target", name))
		}
		for _, h := range append([]string{vm.Target}, vm.Alternatives...) {
			if h != "" && h == t.Host {
				errs = append(errs, fmt.Errorf("%s: target %s is the fenced host", name, h))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("evacuation task %q of host %q: %w", t.ID, t.Host, errors.Join(errs...))
	}
	return nil
}

// ErrNotFenced is the safety rule: no rebuild unless the source host was
// fenced and verified, or an operator confirmed it down.
var ErrNotFenced = errors.New("no fence recorded: VMs are rebuilt only after their host was fenced and verified, or confirmed down by an operator")

// Journal persists evacuation tasks. SaveTask is durable when it returns
// nil; OpenTasks returns the tasks whose State is running, to resume.
type Journal interface {
	SaveTask(Task) error
	OpenTasks() ([]Task, error)
}

// StoreJournal keeps tasks in the daemon's store.
type StoreJournal struct{ S *store.Store }

// SaveTask writes t as one durable transaction.
func (j StoreJournal) SaveTask(t Task) error { return j.SaveTaskRecords(t) }

// SaveTaskRecords writes t and appends recs to the history in the same
// durable transaction: what the API shows of the task, the history has.
func (j StoreJournal) SaveTaskRecords(t Task, recs ...store.Record) error {
	body, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("save evacuation task %q: encode: %w", t.ID, err)
	}
	updated := t.Updated
	if updated.IsZero() {
		updated = t.Created
	}
	err = j.S.PutTaskRecords(store.TaskRecord{ID: t.ID, Host: t.Host, Open: t.State.Open(), Updated: updated, Body: body}, recs...)
	if err != nil {
		return fmt.Errorf("save evacuation task %q: %w", t.ID, err)
	}
	return nil
}

// OpenTasks returns the tasks still running, oldest first.
func (j StoreJournal) OpenTasks() ([]Task, error) { return j.Tasks(true) }

// Tasks returns every stored task (only the open ones when openOnly),
// oldest first.
func (j StoreJournal) Tasks(openOnly bool) ([]Task, error) {
	recs, err := j.S.Tasks(openOnly)
	if err != nil {
		return nil, fmt.Errorf("read evacuation tasks: %w", err)
	}
	out := make([]Task, 0, len(recs))
	for _, r := range recs {
		t, err := decodeTask(r)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

// Task returns the task with this ID; ok is false when there is none.
func (j StoreJournal) Task(id string) (t Task, ok bool, err error) {
	r, ok, err := j.S.TaskByID(id)
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("read evacuation task %q: %w", id, err)
		}
		return Task{}, false, err
	}
	t, err = decodeTask(r)
	return t, err == nil, err
}

func decodeTask(r store.TaskRecord) (Task, error) {
	var t Task
	if err := json.Unmarshal(r.Body, &t); err != nil {
		return Task{}, fmt.Errorf("read evacuation task %q: %w: %v", r.ID, store.ErrCorrupt, err)
	}
	if t.ID != r.ID {
		return Task{}, fmt.Errorf("read evacuation task %q: %w: body says it is task %q", r.ID, store.ErrCorrupt, t.ID)
	}
	return t, nil
}
