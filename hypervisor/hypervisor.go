package hypervisor

import (
	"errors"
	"fmt"
	"time"
)

// DomainState is a domain's run state, reduced to what recovery cares about.
type DomainState int

const (
	StateUnknown DomainState = iota
	StateRunning
	StatePaused
	StateShutoff
	StateCrashed
	StateOther // blocked, shutting down, suspended to memory
)

var domainStateNames = [...]string{"unknown", "running", "paused", "shutoff", "crashed", "other"}

func (s DomainState) String() string {
	if s < 0 || int(s) >= len(domainStateNames) {
		return fmt.Sprintf("DomainState(%d)", int(s))
	}
	return domainStateNames[s]
}

// MarshalText prints a state by name.
func (s DomainState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (s *DomainState) UnmarshalText(b []byte) error {
	for i, n := range domainStateNames {
		if n == string(b) {
			*s = DomainState(i)
			return nil
		}
	}
	return fmt.Errorf("unknown domain state %q", b)
}

// Active reports whether a QEMU process may exist for the domain: anything
// but shut off or crashed counts, because a paused guest still holds its
// disks.
func (s DomainState) Active() bool {
	return s != StateShutoff && s != StateCrashed
}

// Domain is one domain on one host.
type Domain struct {
	UUID  string      `json:"uuid"`
	Name  string      `json:"name"`
	State DomainState `json:"state"`
	// Reason is why a shut-off domain stopped, as libvirt names it:
	// "crashed" (QEMU died), "shutdown", "destroyed", "unknown" (e.g. after
	// libvirtd restarted), ...; "" when the domain is not shut off.
	Reason string `json:"reason,omitempty"`
	// Persistent is false for transient domains (no saved config).
	Persistent bool `json:"persistent"`
	// Autostart: libvirtd starts the domain whenever it starts. On a host
	// that was fenced and whose VMs were rebuilt elsewhere, that is a
	// second copy of each such VM the moment the host powers on, so the
	// agent turns it off and the daemon evacuates no VM that has it on.
	Autostart bool `json:"autostart,omitempty"`
	// XML is the inactive, secure definition: what a rebuild defines.
	XML string `json:"xml,omitempty"`
}

// NodeStats is a snapshot of a host's capacity and cumulative CPU use. CPU
// load is the difference of two snapshots (see CPULoad), so the driver only
// reports counters and the core does the arithmetic.
type NodeStats struct {
	At        time.Time `json:"at"`
	CPUs      int       `json:"cpus"`
	MemoryKiB uint64    `json:"memory_kib"`
	FreeKiB   uint64    `json:"free_kib"`
	// BusyNs is cumulative non-idle CPU time of all CPUs (kernel + user).
	BusyNs uint64 `json:"busy_ns"`
	// IdleNs is cumulative idle CPU time (idle + iowait).
	IdleNs uint64 `json:"idle_ns"`
}

// CPULoad is the share of the host's CPUs busy between two snapshots, in
// [0, 1]. ok is false when the snapshots cannot be compared (counters went
// backwards: a reboot; or no time passed).
func CPULoad(prev, cur NodeStats) (load float64, ok bool) {
	if cur.BusyNs < prev.BusyNs || cur.IdleNs < prev.IdleNs {
		return 0, false
	}
	busy := cur.BusyNs - prev.BusyNs
	total := busy + (cur.IdleNs - prev.IdleNs)
	if total == 0 {
		return 0, false
	}
	return float64(busy) / float64(total), true
}

// EventKind is a domain lifecycle event type.
type EventKind int

const (
	EventOther EventKind = iota
	EventDefined
	EventUndefined
	EventStarted
	EventStopped
	EventCrashed
)

var eventNames = [...]string{"other", "defined", "undefined", "started", "stopped", "crashed"}

func (k EventKind) String() string {
	if k < 0 || int(k) >= len(eventNames) {
		return fmt.Sprintf("EventKind(%d)", int(k))
	}
	return eventNames[k]
}

// Event is a domain lifecycle event. Resubscribed marks the first event
// after a reconnect: events may have been missed, so the consumer should
// re-list domains.
type Event struct {
	Host         string
	UUID         string
	Name         string
	Kind         EventKind
	Resubscribed bool
}

// Kind classifies a failed hypervisor call.
type Kind int

const (
	KindUnknown     Kind = iota
	KindUnreachable      // host or libvirtd does not answer
	KindTimeout          // the context deadline passed
	KindNotFound         // no such domain
	KindInvalid          // bad XML or an operation invalid in the domain's state
	KindConflict         // e.g. disk locked by another QEMU: a split-brain guard fired
)

var kindNames = [...]string{"unknown", "host-unreachable", "timeout", "not-found", "invalid", "conflict"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Sentinels for errors.Is.
var (
	ErrUnreachable = &Error{Kind: KindUnreachable}
	ErrTimeout     = &Error{Kind: KindTimeout}
	ErrNotFound    = &Error{Kind: KindNotFound}
	ErrInvalid     = &Error{Kind: KindInvalid}
	ErrConflict    = &Error{Kind: KindConflict}
)

// Error is a failed hypervisor call, with the host and the step.
type Error struct {
	Kind Kind
	Host string
	Step string
	Err  error
}

func (e *Error) Error() string {
	s := e.Kind.String()
	if e.Step != "" {
		s = e.Step + ": " + s
	}
	if e.Host != "" {
		s = "host " + e.Host + ": " + s
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches sentinels by Kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.Host == "" && t.Step == "" && t.Err == nil
}

// KindOf returns the Kind of the first *Error in err's chain.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindUnknown
}
