package agent

import (
	"fmt"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

// ActionKind is what the reconcile loop does about one assigned domain.
type ActionKind int

const (
	// Start: the domain should run, its QEMU died or the host restarted;
	// start it again.
	Start ActionKind = iota + 1
	// Missing: the domain should run here but is not defined locally. The
	// agent reports it and creates nothing: defining domains is the
	// daemon's job (rebuild), never a side effect of reconcile.
	Missing
	// Hold: the domain should run but is not running, and the agent leaves
	// it alone because it was stopped on purpose or is in a state a start
	// would not fix. Reported so the log explains the difference.
	Hold
)

var actionNames = [...]string{"", "start", "missing", "hold"}

func (k ActionKind) String() string {
	if k <= 0 || int(k) >= len(actionNames) {
		return fmt.Sprintf("ActionKind(%d)", int(k))
	}
	return actionNames[k]
}

// Action is one reconcile decision with the reason behind it.
type Action struct {
	Kind   ActionKind
	UUID   string
	Name   string
	Reason string
}

// restartReasons are libvirt's shut-off reasons that mean "nobody stopped
// this domain": QEMU died, or the host (or libvirtd) restarted under it.
// Measured in the lab (libvirt 9.0): kill -9 of QEMU gives "crashed", also
// when libvirtd was down while QEMU died and reconnects later; a power
// cycle gives "unknown" (the runtime state in /run is gone, only the
// persistent definition is left). "failed" is a QEMU that could not be
// (re)started or reconnected; "daemon" is a domain the daemon itself shut
// down when the host stopped.
//
// "unknown" is also what libvirt reports for a domain defined but never
// started, and for any inactive domain after libvirtd restarted (it keeps
// the reason only in memory). Starting such a domain is right when the
// daemon says it should run; see Stops for the libvirtd-restart case.
var restartReasons = map[string]bool{
	"crashed": true,
	"failed":  true,
	"unknown": true,
	"daemon":  true,
}

// RestartableReason reports whether a domain shut off for reason may be
// started again by reconcile. Every other reason, including ones this
// version does not know, means somebody stopped it on purpose (shutdown,
// destroyed, saved, migrated, from-snapshot) and it stays down.
func RestartableReason(reason string) bool { return restartReasons[reason] }

// Plan decides what reconcile does, from the assignment the agent holds and
// the domains libvirt lists. a == nil means the agent does not know its
// admin state (daemon not reached yet, or its assignment is stale): then it
// plans nothing. It plans nothing either when the admin state does not
// allow starting domains (drained).
//
// A domain in a.Evicted is never planned, even if the daemon also lists it
// in a.Domains (DecodeAssignment refuses that; Plan does not rely on it).
//
// Otherwise every assigned domain that is not active gets exactly one
// action, in assignment order: Start when it is defined here and shut off
// for a RestartableReason, Missing when it is not defined here, Hold
// otherwise. Active domains (running, paused, ...) and local domains not in
// the assignment get none. Domains are matched by UUID only.
func Plan(a *heartbeat.Assignment, local []hypervisor.Domain) []Action {
	if a == nil || !a.AdminState.MayStartDomains() {
		return nil
	}
	byUUID := make(map[string]hypervisor.Domain, len(local))
	for _, d := range local {
		byUUID[d.UUID] = d
	}
	var out []Action
	seen := make(map[string]bool, len(a.Domains)+len(a.Evicted))
	for _, e := range a.Evicted {
		seen[e.UUID] = true // runs elsewhere: never started here
	}
	for _, want := range a.Domains {
		if seen[want.UUID] {
			continue // listed twice by the daemon (decide once), or evicted
		}
		seen[want.UUID] = true
		d, ok := byUUID[want.UUID]
		if !ok {
			out = append(out, Action{Kind: Missing, UUID: want.UUID, Name: want.Name,
				Reason: "assigned to this host but not defined in libvirt here"})
			continue
		}
		if act, ok := decide(d); ok {
			out = append(out, act)
		}
	}
	return out
}

// decide handles one assigned domain that libvirt knows.
func decide(d hypervisor.Domain) (Action, bool) {
	act := Action{UUID: d.UUID, Name: d.Name}
	switch d.State {
	case hypervisor.StateShutoff:
		if RestartableReason(d.Reason) {
			act.Kind, act.Reason = Start, "shut off ("+d.Reason+"): QEMU died or the host restarted"
		} else {
			act.Kind, act.Reason = Hold, "shut off ("+d.Reason+"): stopped on purpose"
		}
	case hypervisor.StateCrashed:
		// libvirt keeps a crashed guest in this state only with
		// on_crash=preserve, for debugging; a start would fail anyway.
		act.Kind, act.Reason = Hold, "state crashed (on_crash=preserve): left for inspection"
	case hypervisor.StateUnknown:
		act.Kind, act.Reason = Hold, "libvirt reports no state"
	default: // running, paused, other: a QEMU exists
		return Action{}, false
	}
	return act, true
}

// Stops remembers, per domain UUID, that the agent saw the domain shut off
// on purpose. libvirtd keeps an inactive domain's reason only in memory:
// after libvirtd restarts, a domain an operator destroyed reads "unknown",
// which alone would make reconcile start it again. Stops carries the
// reason across that restart for as long as the agent process lives (an
// agent restart forgets; a host restart, which also resets the reasons,
// restarts the agent).
type Stops map[string]string

// Observe returns local with remembered reasons restored, and the memory
// for the next listing. A domain seen active, shut off for a restartable
// reason other than "unknown", or no longer listed is forgotten; one shut
// off on purpose is remembered; one shut off "unknown" that is remembered
// gets its remembered reason back. Observe does not modify s or local.
func (s Stops) Observe(local []hypervisor.Domain) ([]hypervisor.Domain, Stops) {
	next := make(Stops)
	out := make([]hypervisor.Domain, len(local))
	copy(out, local)
	for i, d := range out {
		if d.State != hypervisor.StateShutoff {
			continue
		}
		switch {
		case d.Reason == "unknown":
			if r, ok := s[d.UUID]; ok {
				out[i].Reason = r
				next[d.UUID] = r
			}
		case !RestartableReason(d.Reason):
			next[d.UUID] = d.Reason
		}
	}
	return out, next
}
