package power

import "fmt"

// State is a host's power state read back from its BMC.
//
// Only Off proves a fence. PoweringOff is a transition that has not finished
// (a Redfish BMC may report it for seconds), and Unknown is what a BMC that
// answers with something we do not understand gets: neither counts as off.
type State int

const (
	Unknown State = iota
	On
	Off
	PoweringOn
	PoweringOff
)

var stateNames = [...]string{"unknown", "on", "off", "powering-on", "powering-off"}

func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("State(%d)", int(s))
	}
	return stateNames[s]
}

// IsOff reports whether s proves the host cannot run anything.
func (s State) IsOff() bool { return s == Off }

// ParseState is the inverse of String.
func ParseState(s string) (State, error) {
	for i, n := range stateNames {
		if n == s {
			return State(i), nil
		}
	}
	return Unknown, fmt.Errorf("unknown power state %q", s)
}

// MarshalText lets a State appear by name in JSON, YAML and logs.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (s *State) UnmarshalText(b []byte) error {
	v, err := ParseState(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
