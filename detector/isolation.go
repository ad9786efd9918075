package detector

import (
	"fmt"
	"strings"
	"time"
)

// IsolationAction is what a host's policy (on_isolation) does with an
// isolated-or-hung verdict: a silent host, answering no probe, whose BMC
// reads power on.
//
// The zero value is IsolationAlert, so a forgotten field never fences.
type IsolationAction int

const (
	// IsolationAlert raises an alert and does nothing more.
	IsolationAlert IsolationAction = iota
	// IsolationFence powers the host off through its BMC levels after the
	// grace, verifies Off by read-back, then evacuates like a host-down.
	IsolationFence
	// IsolationReboot is IsolationFence, then powers the host back on: it
	// returns drained, and its agent undefines the domains now running
	// elsewhere before anything else.
	IsolationReboot
)

var isolationNames = [...]string{"alert", "fence", "reboot"}

func (a IsolationAction) String() string {
	if a < 0 || int(a) >= len(isolationNames) {
		return fmt.Sprintf("IsolationAction(%d)", int(a))
	}
	return isolationNames[a]
}

// ParseIsolationAction is the inverse of String.
func ParseIsolationAction(s string) (IsolationAction, error) {
	for i, n := range isolationNames {
		if n == s {
			return IsolationAction(i), nil
		}
	}
	return IsolationAlert, fmt.Errorf("unknown on_isolation %q (want one of %s)", s, strings.Join(isolationNames[:], ", "))
}

// Fences reports whether the action powers the host off.
func (a IsolationAction) Fences() bool { return a == IsolationFence || a == IsolationReboot }

// IsolationPolicy is one host's on_isolation and isolation_grace.
type IsolationPolicy struct {
	Action IsolationAction
	// Grace is how long the isolated-or-hung verdict must hold, unbroken,
	// before the host is fenced: a network cut that heals within it costs
	// no VM a restart.
	Grace time.Duration
}

// IsolationFenceDue decides whether a host judged isolated-or-hung must be
// fenced now. heldSince is when the verdict began to hold, unbroken, in the
// current silence (Monitor.IsolatedSince; zero when it does not hold). It is
// pure: the engine asks it at every tick, and the fencer asks it again with
// a fresh status just before acting.
//
// Due only when all hold: the verdict is isolated-or-hung (silent, no probe
// answered, BMC reachable and reading power on, all counted for this
// silence); the policy fences or reboots; the storm guard is not paused
// (many hosts silent at once means the daemon's own network is the likelier
// fault); and the verdict has held for at least the grace. when is the time
// it falls due (zero if it never will in this hold); why says what is
// missing, or why it is due.
func IsolationFenceDue(v Verdict, heldSince time.Time, p IsolationPolicy, paused bool, now time.Time) (due bool, when time.Time, why string) {
	switch {
	case v != IsolatedOrHung:
		return false, time.Time{}, "verdict is " + v.String() + ", not isolated-or-hung"
	case !p.Action.Fences():
		return false, time.Time{}, "on_isolation is " + p.Action.String() + ": alert only"
	case heldSince.IsZero():
		return false, time.Time{}, "isolated-or-hung has no start time in this silence"
	case p.Grace < 0:
		return false, time.Time{}, fmt.Sprintf("isolation_grace %s is negative", p.Grace)
	}
	when = heldSince.Add(p.Grace)
	held := now.Sub(heldSince)
	if now.Before(when) {
		return false, when, fmt.Sprintf("isolated-or-hung for %s, isolation_grace %s not over yet", held, p.Grace)
	}
	if paused {
		return false, when, "storm guard paused"
	}
	return true, when, fmt.Sprintf("isolated or hung for %s (isolation_grace %s, on_isolation %s)", held, p.Grace, p.Action)
}
