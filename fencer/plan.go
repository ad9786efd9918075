package fencer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Action is what a fence does to the host's power once verified off.
type Action int

const (
	// ActionOff leaves the host off. The zero value, so an unset action is
	// the conservative one.
	ActionOff Action = iota
	// ActionReboot powers the host back on after the off is verified. The
	// host stays drained either way: its agent starts nothing.
	ActionReboot
)

var actionNames = [...]string{"off", "reboot"}

func (a Action) String() string {
	if a < 0 || int(a) >= len(actionNames) {
		return fmt.Sprintf("Action(%d)", int(a))
	}
	return actionNames[a]
}

// ParseAction maps a config word ("off", "reboot") to an Action.
func ParseAction(s string) (Action, error) {
	for i, n := range actionNames {
		if n == s {
			return Action(i), nil
		}
	}
	return ActionOff, fmt.Errorf("unknown fence action %q (want off or reboot)", s)
}

func (a Action) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

func (a *Action) UnmarshalText(b []byte) error {
	v, err := ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// LevelAgentDrain is the one level name that uses a Drainer instead of a
// PowerController. Every other name ("ipmi", "redfish") is a power level;
// the name is only a label for records and reasons.
const LevelAgentDrain = "agent-drain"

// Default timings for a LevelPlan left at zero.
const (
	DefaultPoll    = 250 * time.Millisecond
	DefaultBackoff = 250 * time.Millisecond
)

// Drainer is a host's agent as the agent-drain level sees it.
type Drainer interface {
	// Drain asks the agent to stop every domain on its host; stopped is
	// how many it stopped (the fence record says so, never "power off").
	Drain(ctx context.Context) (stopped int, err error)
	// Running is how many domains the agent reports as still holding
	// their disks.
	Running(ctx context.Context) (int, error)
}

// Plan is one fence of one host: its levels in the order to try them,
// built by the caller from the host's effective policy.
type Plan struct {
	Host   string
	Rack   string
	Action Action
	Levels []LevelPlan
	// StillNeeded, if set, is asked before every level after the first:
	// a non-nil answer (the host heartbeats again, say) stops the fence
	// there, not verified, with that reason. Without it a host powering
	// back on while its first level failed could be "verified" by a later
	// agent-drain and drained for nothing.
	StillNeeded func() error
}

// LevelPlan is one fence level with its driver already built.
type LevelPlan struct {
	// Name is "ipmi", "redfish" or "agent-drain" (LevelAgentDrain).
	Name string
	// Power acts for a power level; nil for agent-drain.
	Power PowerController
	// Drainer acts for agent-drain only.
	Drainer Drainer
	// Timeout bounds one attempt, the command plus its read-back. Required.
	Timeout time.Duration
	// Retries is how many extra attempts the level gets after the first.
	Retries int
	// Settle is how long Off (or zero running domains) must hold before it
	// counts; shorter than Timeout.
	Settle time.Duration
	// Poll is the read-back interval; zero means DefaultPoll.
	Poll time.Duration
	// Backoff is the first delay between attempts; it doubles per attempt,
	// capped at Timeout. Zero means DefaultBackoff.
	Backoff time.Duration
	// SetupErr says the level's driver could not be built (bad address,
	// unreadable secret): the level fails at once with it.
	SetupErr error
}

func (l LevelPlan) isDrain() bool { return l.Name == LevelAgentDrain }

// label names the level in reasons, even when the plan forgot its name.
func (l LevelPlan) label() string {
	if l.Name == "" {
		return "unnamed level"
	}
	return l.Name
}

func (l LevelPlan) poll() time.Duration {
	if l.Poll > 0 {
		return l.Poll
	}
	return DefaultPoll
}

func (l LevelPlan) backoff() time.Duration {
	if l.Backoff > 0 {
		return l.Backoff
	}
	return DefaultBackoff
}

// check reports what makes the level unusable, SetupErr aside.
func (l LevelPlan) check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if l.Name == "" {
		bad("no name")
	}
	switch {
	case l.isDrain() && l.Drainer == nil:
		bad("agent-drain level has no agent to drain")
	case l.isDrain() && l.Power != nil:
		bad("agent-drain level must not have a power controller")
	case !l.isDrain() && l.Power == nil:
		bad("no power controller")
	}
	if l.Timeout <= 0 {
		bad("timeout must be positive, got %s", l.Timeout)
	}
	if l.Retries < 0 {
		bad("retries must be 0 or more, got %d", l.Retries)
	}
	if l.Settle < 0 {
		bad("settle delay must not be negative, got %s", l.Settle)
	} else if l.Timeout > 0 && l.Settle >= l.Timeout {
		bad("settle delay %s must be shorter than the timeout %s, or the level can never verify", l.Settle, l.Timeout)
	}
	if l.Poll < 0 {
		bad("poll interval must not be negative, got %s", l.Poll)
	}
	if l.Backoff < 0 {
		bad("backoff must not be negative, got %s", l.Backoff)
	}
	return errors.Join(errs...)
}

// Validate reports every problem in the plan that would stop a level from
// running, each naming its level; SetupErr is not a problem of the plan.
// Run checks the same things, so calling Validate first is optional (a
// dry run wants it).
func (p Plan) Validate() error {
	var errs []error
	if p.Host == "" {
		errs = append(errs, errors.New("fence plan: no host"))
	}
	if p.Action != ActionOff && p.Action != ActionReboot {
		errs = append(errs, fmt.Errorf("fence plan for %s: unknown action %s", p.Host, p.Action))
	}
	if len(p.Levels) == 0 {
		errs = append(errs, fmt.Errorf("fence plan for %s: no fence levels", p.Host))
	}
	for i, l := range p.Levels {
		if err := l.check(); err != nil {
			errs = append(errs, fmt.Errorf("fence plan for %s: level %d (%s): %w", p.Host, i+1, l.label(), err))
		}
	}
	return errors.Join(errs...)
}

// Attempt is one try of one level, for the journal and the alert.
type Attempt struct {
	Level   string        `json:"level"`
	Try     int           `json:"try"` // 1-based within the level
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed"`
	// Verified: this attempt read the host back as fenced.
	Verified bool `json:"verified"`
	// Reads is how many read-backs it took.
	Reads int `json:"reads"`
	// Stopped (agent-drain) is how many domains the agent said it stopped.
	Stopped int `json:"stopped,omitempty"`
	// Err is why it did not verify; empty when it did. A level that could
	// not be built or is invalid records one attempt with no reads.
	Err string `json:"err,omitempty"`
}

// Result is how a fence went. Errors in it come from drivers, which keep
// credentials out of their text; Run adds none.
type Result struct {
	Host   string `json:"host"`
	Action Action `json:"action"`
	// Verified is the only field that allows evacuation: a level read the
	// host back as off (or its agent as running nothing).
	Verified   bool      `json:"verified"`
	Level      string    `json:"level,omitempty"` // the level that verified
	Started    time.Time `json:"started"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	Ended      time.Time `json:"ended"`
	Attempts   []Attempt `json:"attempts"`
	// Reason, when not verified, names every level and why it failed, on
	// one line, for the alert.
	Reason string `json:"reason,omitempty"`
	// PoweredOn (reboot only): power was read back On after the verified
	// off. Never set when agent-drain verified: that level does not power
	// the host off, so there is nothing to power on.
	PoweredOn bool `json:"powered_on,omitempty"`
	// PowerOnErr (reboot only) is why the host was not read back On. The
	// fence is still verified and the host stays drained.
	PowerOnErr string `json:"power_on_err,omitempty"`
}
