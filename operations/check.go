package operations

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chimestack/chime-fence/node"
)

// MaxReasonBytes bounds a request's reason (it goes into every history
// record of the task).
const MaxReasonBytes = 1024

// Validate checks the request's own fields, independent of any host state:
// a known op, a host name, and only the fields the op takes.
func Validate(req Request) error {
	if _, err := ParseOp(string(req.Op)); err != nil {
		return err
	}
	var errs []string
	if req.Host == "" {
		errs = append(errs, "host is empty")
	}
	if strings.IndexByte(req.Host, 0) >= 0 || len(req.Host) > 253 {
		errs = append(errs, fmt.Sprintf("host %q is not a host name", req.Host))
	}
	if req.Actor == "" {
		errs = append(errs, "actor is empty (who asked goes into the history)")
	}
	if req.Target != "" && req.Op != OpMigrate && req.Op != OpRebuild {
		errs = append(errs, fmt.Sprintf("target is only for migrate and rebuild, not %s", req.Op))
	}
	if strings.IndexByte(req.Target, 0) >= 0 || len(req.Target) > 253 {
		errs = append(errs, fmt.Sprintf("target %q is not a host name", req.Target))
	}
	if req.Target != "" && req.Target == req.Host {
		errs = append(errs, fmt.Sprintf("target %s is the host itself", req.Target))
	}
	if req.MigrateLocalDiskVMs && req.Op != OpMigrate {
		errs = append(errs, fmt.Sprintf("migrate_local_disk_vms is only for migrate, not %s", req.Op))
	}
	if req.Force && req.Op != OpFence && req.Op != OpConfirmDown {
		errs = append(errs, fmt.Sprintf("force is only for fence and confirm-down, not %s", req.Op))
	}
	if req.Force && strings.TrimSpace(req.Reason) == "" {
		errs = append(errs, "force needs a reason (it is recorded with the evidence it overrides)")
	}
	if req.Op == OpConfirmDown && strings.TrimSpace(req.Reason) == "" {
		errs = append(errs, "confirm-down needs a reason (it is recorded with who confirmed the host is down)")
	}
	if len(req.Reason) > MaxReasonBytes {
		errs = append(errs, fmt.Sprintf("reason is %d bytes, at most %d", len(req.Reason), MaxReasonBytes))
	}
	if !utf8.ValidString(req.Reason) || strings.IndexByte(req.Reason, 0) >= 0 {
		errs = append(errs, "reason is not valid UTF-8 text")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s on %q: %s", ErrInvalid, req.Op, req.Host, strings.Join(errs, "; "))
	}
	return nil
}

// Check decides whether req may start now on the host h describes. It is
// pure: the same request and view always give the same answer. The error
// wraps ErrInvalid, ErrNotFound or ErrConflict and says exactly why; the
// rules are listed in the package documentation.
func Check(req Request, h HostView) error {
	if err := Validate(req); err != nil {
		return err
	}
	if !h.Known {
		return fmt.Errorf("%w: host %q is not in the daemon's configuration", ErrNotFound, req.Host)
	}
	// A target that does not exist is a wrong request, whatever the state.
	if req.Target != "" && (h.Target == nil || !h.Target.Known) {
		return fmt.Errorf("%w: %s %s: target host %q is not in the daemon's configuration", ErrInvalid, req.Op, req.Host, req.Target)
	}
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s %s refused: %s", ErrConflict, req.Op, req.Host, fmt.Sprintf(format, args...))
	}
	// The lock comes first: whatever the states say, nothing runs beside
	// a task on the same host.
	if h.Lock != nil {
		return refuse("host is locked by %s running since %s; wait for it to finish (never queued)",
			h.Lock, h.Lock.Since.UTC().Format("2006-01-02T15:04:05Z"))
	}
	switch req.Op {
	case OpEnable:
		if h.Admin == node.Enabled {
			return refuse("host is already enabled")
		}
	case OpDisable:
		if h.Admin != node.Enabled {
			return refuse("host is %s; only an enabled host can be disabled (enable it first)", h.Admin)
		}
	case OpDrain:
		if h.Admin == node.Drained {
			return refuse("host is already drained")
		}
		if h.Monitor == node.Unreachable {
			return refuse("host is unreachable, so nothing can stop its VMs and read back that they stopped: use fence or confirm-down")
		}
	case OpRebuild:
		if h.Admin != node.Drained {
			return refuse("host is %s; rebuild runs only on a drained host (drain it first)", h.Admin)
		}
		if !h.Heartbeating() && !h.FenceProven {
			return refuse("host is %s and no verified or confirmed fence proves it stopped: fence or confirm-down first", h.Monitor)
		}
		if h.Heartbeating() && h.Running > 0 {
			return refuse("host still reports %d running domain(s); drain it again", h.Running)
		}
		if err := checkTarget(req, h.Target); err != nil {
			return err
		}
	case OpMigrate:
		if h.Admin != node.Enabled && h.Admin != node.Disabled {
			return refuse("host is %s; only an enabled or disabled host has VMs to migrate", h.Admin)
		}
		if !h.Heartbeating() {
			return refuse("host is %s; live migration needs a heartbeating host (use drain, fence or confirm-down)", h.Monitor)
		}
		if err := checkTarget(req, h.Target); err != nil {
			return err
		}
	case OpFence, OpConfirmDown:
		if req.Op == OpConfirmDown && h.Monitor != node.Unreachable {
			// Never forced: a host the daemon hears from is alive, and
			// starting its VMs elsewhere would run them twice.
			return refuse("host is %s; confirm-down is only for an unreachable host (the daemon sees it alive)", h.Monitor)
		}
		if ev := Overrides(req, h); len(ev) > 0 && !req.Force {
			return refuse("%s; if you are sure, repeat with --force and a reason (recorded with what it overrides)", strings.Join(ev, "; "))
		}
	}
	return nil
}

// Overrides lists the daemon's own evidence that contradicts a fence or a
// confirm-down of the host: its BMC read power on during the current
// silence (confirm-down), the storm guard is paused (the daemon may be the
// one cut off), the daemon is in observe mode (fence: it fences nothing by
// itself). Check refuses the request while the list is not empty, unless
// it is forced; a forced task records the list.
func Overrides(req Request, h HostView) []string {
	var ev []string
	if req.Op == OpConfirmDown && !h.BMCOnAt.IsZero() {
		ev = append(ev, fmt.Sprintf("the host's BMC read power on at %s, during its current silence", h.BMCOnAt.UTC().Format(time.RFC3339)))
	}
	if (req.Op == OpFence || req.Op == OpConfirmDown) && h.StormPaused {
		ev = append(ev, "the storm guard is paused (the daemon may be the one cut off)")
	}
	if req.Op == OpFence && h.Observe {
		ev = append(ev, "the daemon is in observe mode (it fences nothing by itself)")
	}
	return ev
}

// checkTarget: a named target must be another known, enabled, normal
// host that no task holds.
func checkTarget(req Request, t *HostView) error {
	if req.Target == "" {
		return nil
	}
	if t == nil || !t.Known {
		return fmt.Errorf("%w: %s %s: target host %q is not in the daemon's configuration", ErrInvalid, req.Op, req.Host, req.Target)
	}
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s %s refused: target %s %s", ErrConflict, req.Op, req.Host, req.Target, fmt.Sprintf(format, args...))
	}
	switch {
	case t.Admin != node.Enabled:
		return refuse("is %s; VMs only land on an enabled host", t.Admin)
	case t.Monitor != node.Normal:
		return refuse("is %s; VMs only land on a normal (heartbeating, fault-free) host", t.Monitor)
	case t.Lock != nil:
		return refuse("is locked by %s", t.Lock)
	}
	return nil
}
