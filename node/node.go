// Package node is the shared vocabulary for a compute host's two states: the
// admin state operators (and the daemon's own operations) set, and the
// monitor state the detector derives from signals.
//
// It is a leaf: the agent, the daemon's core, the store and the API all use
// these names, and none of them needs to import another for it.
package node

import (
	"fmt"
	"strings"
)

// AdminState is set by operators or by the daemon's operations and is
// persisted. It never changes because of a signal.
type AdminState int

const (
	// Enabled: new VMs may land here. The zero value, so a host nobody
	// touched is enabled.
	Enabled AdminState = iota
	// Disabled: no new VMs; existing ones stay and are managed.
	Disabled
	// Drained: no VM runs here at all; set by drain and by a verified fence.
	// A drained host's agent never starts a domain, even after a reboot.
	Drained
)

var adminNames = [...]string{"enabled", "disabled", "drained"}

func (s AdminState) String() string { return name(adminNames[:], int(s), "AdminState") }

// MayStartDomains reports whether the agent may start (or restart) domains.
func (s AdminState) MayStartDomains() bool { return s == Enabled || s == Disabled }

// ParseAdminState is the inverse of String.
func ParseAdminState(s string) (AdminState, error) {
	i, err := parse(adminNames[:], s, "admin state")
	return AdminState(i), err
}

func (s AdminState) MarshalText() ([]byte, error) {
	return marshal(adminNames[:], int(s), "admin state")
}

func (s *AdminState) UnmarshalText(b []byte) error {
	i, err := parse(adminNames[:], string(b), "admin state")
	if err == nil {
		*s = AdminState(i)
	}
	return err
}

// MonitorState is derived from signals by the detector.
type MonitorState int

const (
	// Normal: heartbeats arrive and the agent reports no fault. The zero
	// value: kept for symmetry; a host the daemon has never heard from is Unknown.
	Normal MonitorState = iota
	// Suspect: heartbeats stopped; probes and the BMC are being asked.
	Suspect
	// Unreachable: heartbeats stopped and the host answered no probe.
	Unreachable
	// Error: heartbeats arrive but the agent reports a fault (libvirtd down,
	// a network interface down, shared storage not writable, I/O errors).
	Error
	// Unknown: no heartbeat since the daemon started; not yet judged.
	Unknown
)

var monitorNames = [...]string{"normal", "suspect", "unreachable", "error", "unknown"}

func (s MonitorState) String() string { return name(monitorNames[:], int(s), "MonitorState") }

// ParseMonitorState is the inverse of String.
func ParseMonitorState(s string) (MonitorState, error) {
	i, err := parse(monitorNames[:], s, "monitor state")
	return MonitorState(i), err
}

func (s MonitorState) MarshalText() ([]byte, error) {
	return marshal(monitorNames[:], int(s), "monitor state")
}

func (s *MonitorState) UnmarshalText(b []byte) error {
	i, err := parse(monitorNames[:], string(b), "monitor state")
	if err == nil {
		*s = MonitorState(i)
	}
	return err
}

func name(names []string, i int, typ string) string {
	if i < 0 || i >= len(names) {
		return fmt.Sprintf("%s(%d)", typ, i)
	}
	return names[i]
}

func marshal(names []string, i int, what string) ([]byte, error) {
	if i < 0 || i >= len(names) {
		return nil, fmt.Errorf("cannot marshal %s %d: not a known value", what, i)
	}
	return []byte(names[i]), nil
}

func parse(names []string, s, what string) (int, error) {
	for i, n := range names {
		if n == s {
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q (want one of %s)", what, s, strings.Join(names, ", "))
}
