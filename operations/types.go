package operations

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/node"
)

// Op is an operator operation on one host.
type Op string

const (
	OpEnable      Op = "enable"
	OpDisable     Op = "disable"
	OpDrain       Op = "drain"
	OpRebuild     Op = "rebuild"
	OpMigrate     Op = "migrate"
	OpFence       Op = "fence"
	OpConfirmDown Op = "confirm-down"
)

// Ops lists every operation, in the order the CLI shows them.
var Ops = []Op{OpMigrate, OpDrain, OpRebuild, OpEnable, OpDisable, OpFence, OpConfirmDown}

// ParseOp is the inverse of the Op strings; an unknown name is ErrInvalid
// naming the known ones.
func ParseOp(s string) (Op, error) {
	for _, o := range Ops {
		if string(o) == s {
			return o, nil
		}
	}
	return "", fmt.Errorf("%w: unknown operation %q (want one of migrate, drain, rebuild, enable, disable, fence, confirm-down)", ErrInvalid, s)
}

// Errors Check and Manager return; the API maps them to HTTP codes.
var (
	// ErrInvalid: the request itself is wrong (400).
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: the host or task does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the host's state or a running task forbids the
	// operation now (409). Never queued: the caller retries or gives up.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: this daemon has no executor for the operation (501).
	ErrUnavailable = errors.New("operation not available")
)

// Request asks for one operation on one host. It is also the JSON body of
// POST /v1/hosts/{host}/operations/{op} (Host, Op and Actor come from the
// path and the token, never from the body).
type Request struct {
	Host string `json:"-"`
	Op   Op     `json:"-"`
	// Target: migrate and rebuild only; "" lets the scheduler place.
	Target string `json:"target,omitempty"`
	// MigrateLocalDiskVMs: migrate only; also moves VMs with local disks
	// (copying their storage).
	MigrateLocalDiskVMs bool `json:"migrate_local_disk_vms,omitempty"`
	// Reason goes into the history; required for confirm-down and with
	// Force.
	Reason string `json:"reason,omitempty"`
	// Force overrides the daemon's own evidence against a fence or a
	// confirm-down (its BMC read power on, the storm guard, observe mode);
	// what it overrode is recorded with the task (Task.Overridden).
	Force bool `json:"force,omitempty"`
	// Actor is who asked: the API token's name, or "recovery".
	Actor string `json:"-"`
}

// TaskState is where a task is in its life.
type TaskState string

const (
	TaskRunning   TaskState = "running"
	TaskSucceeded TaskState = "succeeded"
	TaskFailed    TaskState = "failed"
	// TaskInterrupted: the daemon stopped or restarted while the task ran;
	// what the executor had done is in Progress, the rest never happened.
	TaskInterrupted TaskState = "interrupted"
)

// Done reports whether the task has finished (in any way).
func (s TaskState) Done() bool { return s != TaskRunning }

// VM progress states.
const (
	VMPending = "pending"
	VMRunning = "running" // the step on this VM is in progress
	VMDone    = "done"
	VMFailed  = "failed"
	VMSkipped = "skipped" // e.g. a local-disk VM a rebuild leaves alone
)

// VMProgress is one VM's line in a task.
type VMProgress struct {
	UUID string `json:"uuid,omitempty"`
	Name string `json:"name"`
	// State is one of VMPending, VMRunning, VMDone, VMFailed, VMSkipped.
	State string `json:"state"`
	// Target is where the VM goes (migrate, rebuild), if anywhere.
	Target string `json:"target,omitempty"`
	// Detail says what happened, e.g. "destroyed by the agent" or why it failed.
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// key identifies a VM across reports: its UUID, else its name.
func (v VMProgress) key() string {
	if v.UUID != "" {
		return "u:" + v.UUID
	}
	return "n:" + v.Name
}

// Task is one operation's record: what was asked, by whom, how far it got
// and how it ended.
type Task struct {
	ID                  string `json:"id"`
	Host                string `json:"host"`
	Op                  Op     `json:"op"`
	Target              string `json:"target,omitempty"`
	MigrateLocalDiskVMs bool   `json:"migrate_local_disk_vms,omitempty"`
	Reason              string `json:"reason,omitempty"`
	Actor               string `json:"actor"`
	// Overridden lists the evidence a forced request overrode.
	Overridden []string     `json:"overridden,omitempty"`
	State      TaskState    `json:"state"`
	Created    time.Time    `json:"created"`
	Updated    time.Time    `json:"updated"`
	Finished   time.Time    `json:"finished,omitzero"`
	Progress   []VMProgress `json:"progress"`
	// Result is the executor's summary on success, Error its reason on
	// failure or interruption.
	Result string `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Report is how an executor records per-VM progress. Each call merges its
// lines into the task's Progress: a line for a VM already listed (same
// UUID, or same name when UUID is empty) replaces it, a new one is
// appended. Each call is persisted before it returns; it is safe to call
// from several goroutines.
type Report func(vms ...VMProgress)

// Executor carries out one operation. It runs in its own goroutine with a
// context whose deadline is the operation's timeout and which is cancelled
// when the daemon stops. It returns a one-line summary on success, or an
// error saying what failed (the task's Error). It must not hold on to
// report after it returns. The host lock is held for its whole run.
type Executor func(ctx context.Context, t Task, report Report) (result string, err error)

// Executors holds one executor per operation; a nil one makes the
// operation ErrUnavailable.
type Executors struct {
	Enable, Disable, Drain, Rebuild, Migrate, Fence, ConfirmDown Executor
}

func (e Executors) get(op Op) Executor {
	switch op {
	case OpEnable:
		return e.Enable
	case OpDisable:
		return e.Disable
	case OpDrain:
		return e.Drain
	case OpRebuild:
		return e.Rebuild
	case OpMigrate:
		return e.Migrate
	case OpFence:
		return e.Fence
	case OpConfirmDown:
		return e.ConfirmDown
	}
	return nil
}

// Holder is who holds a host's lock: a task of this Manager, or another
// owner (TryLock, e.g. the automatic recovery).
type Holder struct {
	TaskID string    `json:"task_id,omitempty"`
	Op     Op        `json:"op,omitempty"`
	Owner  string    `json:"owner"` // the task's actor, or TryLock's owner
	Since  time.Time `json:"since"`
}

func (h Holder) String() string {
	if h.TaskID != "" {
		return fmt.Sprintf("task %s (%s by %s)", h.TaskID, h.Op, h.Owner)
	}
	return h.Owner
}

// HostView is what Check needs to know about a host at the moment of the
// request. The Manager builds it from its View function and its locks.
type HostView struct {
	Name    string            `json:"name"`
	Known   bool              `json:"known"` // false: not in the configuration
	Admin   node.AdminState   `json:"admin"`
	Monitor node.MonitorState `json:"monitor"`
	// Running is the number of domains the host last reported active.
	Running int `json:"running"`
	// FenceProven: the journal holds a verified or operator-confirmed
	// fence of the host newer than its last heartbeat.
	FenceProven bool `json:"fence_proven"`
	// FenceState is the journal's latest fence state ("" if none).
	FenceState  string `json:"fence_state,omitempty"`
	StormPaused bool   `json:"storm_paused"`
	// BMCOnAt is when the daemon's BMC reading during the host's current
	// silence said power on (zero: no such reading, or the last one was
	// not a clean "on").
	BMCOnAt time.Time `json:"bmc_on_at,omitzero"`
	// Observe: the daemon is in observe mode (it fences nothing itself).
	Observe bool `json:"observe,omitempty"`
	// Lock is the holder of the host's lock, nil when free.
	Lock *Holder `json:"lock,omitempty"`
	// Target is the requested migrate or rebuild target's view, when the
	// request names one.
	Target *HostView `json:"target,omitempty"`
}

// Heartbeating reports whether the host's agent currently heartbeats.
func (h HostView) Heartbeating() bool {
	return h.Monitor == node.Normal || h.Monitor == node.Error
}
