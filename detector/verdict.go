package detector

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/power"
)

// Verdict is what the detector concludes about one host.
//
// The zero value is Suspect, "not decided yet", so a forgotten field never
// reads as healthy and never as down.
type Verdict int

const (
	// Suspect: the heartbeat is stale (or untrustworthy) and the evidence
	// needed to judge it is still being gathered.
	Suspect Verdict = iota
	// Healthy: the heartbeat is fresh.
	Healthy
	// Rebooted: the heartbeat is fresh and carries a new boot id.
	Rebooted
	// AgentDown: heartbeats stopped but the host answers probes. Alert, no
	// fence.
	AgentDown
	// IsolatedOrHung: the host is silent but its BMC says the power is not
	// off (network cut or congested, or a hung kernel). Never fenced on this
	// alone.
	IsolatedOrHung
	// Unprovable: the host is silent and its BMC cannot be read. Alert and
	// wait for an operator or a fence level that verifies.
	Unprovable
	// HostDown: the host is silent and its BMC reads power off. Fence (keep
	// it off), then evacuate.
	HostDown
	// Paused: the storm guard holds every decision. Never returned by Decide.
	Paused
)

var verdictNames = [...]string{"suspect", "healthy", "rebooted", "agent-down", "isolated-or-hung", "unprovable", "host-down", "paused"}

func (v Verdict) String() string {
	if v < 0 || int(v) >= len(verdictNames) {
		return fmt.Sprintf("Verdict(%d)", int(v))
	}
	return verdictNames[v]
}

// ParseVerdict is the inverse of String.
func ParseVerdict(s string) (Verdict, error) {
	for i, n := range verdictNames {
		if n == s {
			return Verdict(i), nil
		}
	}
	return Suspect, fmt.Errorf("unknown verdict %q (want one of %s)", s, strings.Join(verdictNames[:], ", "))
}

// MarshalText lets a Verdict appear by name in JSON, YAML and logs.
func (v Verdict) MarshalText() ([]byte, error) {
	if v < 0 || int(v) >= len(verdictNames) {
		return nil, fmt.Errorf("cannot marshal %s: not a known verdict", v)
	}
	return []byte(v.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (v *Verdict) UnmarshalText(b []byte) error {
	p, err := ParseVerdict(string(b))
	if err != nil {
		return err
	}
	*v = p
	return nil
}

// BMCReading is one attempt to read a host's power state from its BMC.
type BMCReading struct {
	// At is when the BMC answered or the attempt failed, on the daemon's
	// clock.
	At time.Time `json:"at"`
	// Reachable: the BMC answered. Power is meaningful only when Reachable
	// is true and Err is empty.
	Reachable bool        `json:"reachable"`
	Power     power.State `json:"power"`
	// Err is why the read failed (unreachable, auth, timeout, protocol).
	// A non-empty Err makes the reading unable to prove anything, even if
	// Reachable is true (a BMC that rejects the password answered, but did
	// not say the power is off). Must not contain secrets.
	Err string `json:"error,omitempty"`
}

// Signals is everything known about one host at the time of a decision.
type Signals struct {
	// LastHeartbeat is when the daemon last received a heartbeat; zero means
	// never.
	LastHeartbeat time.Time
	// BootID is the boot id in the latest heartbeat, PrevBootID the one
	// before it. Both non-empty and different means the host rebooted.
	BootID, PrevBootID string
	// AgentFault, when non-empty, is the fault the agent reports in otherwise
	// regular heartbeats.
	AgentFault string
	// ProbeAt is when the latest active probe round (TCP to the agent and
	// libvirt ports, ICMP) concluded; zero means none yet. ProbeAnswered is
	// whether any probe of that round got an answer.
	ProbeAt       time.Time
	ProbeAnswered bool
	// BMC is the latest BMC reading; nil means not read yet.
	BMC *BMCReading
}

// Thresholds set how long silence must last before it means anything.
type Thresholds struct {
	// HeartbeatInterval is how often agents send a heartbeat.
	HeartbeatInterval time.Duration
	// MissedHeartbeats is how many intervals may pass without one before the
	// heartbeat is stale. The window is HeartbeatInterval × MissedHeartbeats;
	// it is also how long a probe result or BMC reading stays countable.
	MissedHeartbeats int
	// ProbeTimeout is the caller's deadline for one probe round. It must fit
	// inside the window, or a round could not conclude before the evidence
	// it is paired with goes old.
	ProbeTimeout time.Duration
}

// Window is HeartbeatInterval × MissedHeartbeats. Meaningful only when
// Validate returns nil.
func (th Thresholds) Window() time.Duration {
	return th.HeartbeatInterval * time.Duration(th.MissedHeartbeats)
}

// Validate reports every field that makes the thresholds unusable.
func (th Thresholds) Validate() error {
	var errs []error
	if th.HeartbeatInterval <= 0 {
		errs = append(errs, fmt.Errorf("heartbeat interval must be > 0, got %s", th.HeartbeatInterval))
	}
	if th.MissedHeartbeats < 1 {
		errs = append(errs, fmt.Errorf("missed heartbeats must be >= 1, got %d", th.MissedHeartbeats))
	}
	if th.ProbeTimeout <= 0 {
		errs = append(errs, fmt.Errorf("probe timeout must be > 0, got %s", th.ProbeTimeout))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if int64(th.MissedHeartbeats) > math.MaxInt64/int64(th.HeartbeatInterval) {
		return fmt.Errorf("heartbeat interval %s × missed heartbeats %d overflows", th.HeartbeatInterval, th.MissedHeartbeats)
	}
	if th.ProbeTimeout > th.Window() {
		return fmt.Errorf("probe timeout %s must not exceed the window (heartbeat interval %s × missed heartbeats %d = %s)",
			th.ProbeTimeout, th.HeartbeatInterval, th.MissedHeartbeats, th.Window())
	}
	return nil
}

// Decision is the outcome of Decide.
type Decision struct {
	Verdict Verdict
	// Reason explains the verdict for a human and cites the evidence.
	Reason string
	// NeedProbe asks the caller for a new probe round; NeedBMC for a new BMC
	// reading. They are set exactly when the verdict waits on that evidence.
	NeedProbe bool
	NeedBMC   bool
}

// evidence classifies one timestamped piece of evidence.
type evidence int

const (
	missing  evidence = iota
	predates          // taken while the heartbeat was still fresh
	ahead             // dated after now: clock skew
	expired           // older than one window
	current
)

func (e evidence) counts() bool { return e == current }

func classify(at, staleAt, now time.Time, window time.Duration) evidence {
	switch {
	case at.IsZero():
		return missing
	case at.After(now):
		return ahead
	case !staleAt.IsZero() && !at.After(staleAt):
		return predates
	case now.Sub(at) > window:
		return expired
	}
	return current
}

// why says why evidence does not count, for the Reason.
func (e evidence) why(what string, at, now time.Time) string {
	switch e {
	case missing:
		return "no " + what + " yet"
	case predates:
		return fmt.Sprintf("%s from %s ago predates the silence", what, now.Sub(at))
	case ahead:
		return fmt.Sprintf("%s dated %s in the future (clock skew)", what, at.Sub(now))
	case expired:
		return fmt.Sprintf("%s from %s ago is too old", what, now.Sub(at))
	}
	return ""
}

// Decide judges one host. It is total: any input gives a Decision and never
// panics. See the package doc for the caller contract.
func Decide(s Signals, th Thresholds, now time.Time) Decision {
	if err := th.Validate(); err != nil {
		return Decision{Verdict: Unprovable, Reason: "invalid thresholds: " + strings.ReplaceAll(err.Error(), "\n", "; ")}
	}
	window := th.Window()

	var staleAt time.Time // zero: no heartbeat ever, so no evidence predates the silence
	var silence string
	if s.LastHeartbeat.IsZero() {
		silence = "no heartbeat ever received"
	} else {
		age := now.Sub(s.LastHeartbeat)
		switch {
		case age < -window:
			return Decision{
				Verdict:   Suspect,
				Reason:    fmt.Sprintf("clock skew: last heartbeat is dated %s in the future, more than the %s window; probing", -age, window),
				NeedProbe: true,
			}
		case age <= window:
			return fresh(s, age, window)
		}
		staleAt = s.LastHeartbeat.Add(window)
		silence = fmt.Sprintf("last heartbeat %s ago (window %s)", age, window)
	}

	probe := classify(s.ProbeAt, staleAt, now, window)
	bmc := missing
	if s.BMC != nil {
		bmc = classify(s.BMC.At, staleAt, now, window)
	}
	bmcDone := bmc.counts()

	if !probe.counts() {
		d := Decision{Verdict: Suspect, NeedProbe: true, NeedBMC: !bmcDone}
		d.Reason = silence + "; " + probe.why("probe result", s.ProbeAt, now)
		if !bmcDone {
			d.Reason += "; " + bmcWhy(s.BMC, bmc, now)
		}
		return d
	}
	probeAgo := now.Sub(s.ProbeAt)
	if s.ProbeAnswered {
		return Decision{Verdict: AgentDown, Reason: fmt.Sprintf("%s; host answered a probe %s ago: agent down, host alive", silence, probeAgo)}
	}
	silence = fmt.Sprintf("%s; probes got no answer %s ago", silence, probeAgo)

	if !bmcDone {
		return Decision{Verdict: Suspect, NeedBMC: true, Reason: silence + "; " + bmcWhy(s.BMC, bmc, now)}
	}
	r := s.BMC
	bmcAgo := now.Sub(r.At)
	switch {
	case !r.Reachable || r.Err != "":
		cause := r.Err
		if cause == "" {
			cause = "no answer"
		}
		return Decision{Verdict: Unprovable, Reason: fmt.Sprintf("%s; BMC read %s ago failed (%s): cannot prove the host is off", silence, bmcAgo, cause)}
	case r.Power.IsOff():
		return Decision{Verdict: HostDown, Reason: fmt.Sprintf("%s; BMC reported power %s %s ago", silence, r.Power, bmcAgo)}
	}
	return Decision{Verdict: IsolatedOrHung, Reason: fmt.Sprintf("%s; BMC reported power %s %s ago: isolated or hung, not down", silence, r.Power, bmcAgo)}
}

func bmcWhy(r *BMCReading, e evidence, now time.Time) string {
	if r == nil {
		return "no BMC reading yet"
	}
	return e.why("BMC reading", r.At, now)
}

func fresh(s Signals, age, window time.Duration) Decision {
	d := Decision{Verdict: Healthy}
	// Every heartbeat is judged here: concatenation, not fmt, for the
	// same text at a fraction of the cost.
	if age < 0 {
		d.Reason = "last heartbeat dated " + (-age).String() + " in the future, within the " + window.String() + " window"
	} else {
		d.Reason = "last heartbeat " + age.String() + " ago (window " + window.String() + ")"
	}
	if s.BootID != "" && s.PrevBootID != "" && s.BootID != s.PrevBootID {
		d.Verdict = Rebooted
		d.Reason += fmt.Sprintf("; boot id changed from %q to %q", s.PrevBootID, s.BootID)
	}
	if s.AgentFault != "" {
		d.Reason += "; agent reports fault: " + s.AgentFault
	}
	return d
}
