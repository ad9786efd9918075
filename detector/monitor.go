package detector

import (
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/node"
)

// MonitorConfig is what one host's state machine needs besides its signals.
type MonitorConfig struct {
	Thresholds
	// RecoveryHeartbeats is the hysteresis: consecutive good heartbeats
	// before an unreachable or error host is normal again.
	RecoveryHeartbeats int
	// Settle holds a verdict that could lead to a fence (host-down,
	// isolated-or-hung, unprovable) until this long after the silence
	// began. One heartbeat interval is enough for every host cut at the same
	// moment to have gone stale too, so the storm guard sees them all before
	// any single host is judged.
	Settle time.Duration
	// StartGrace is how long after the daemon starts a host it has never
	// heard from (no heartbeat, none remembered from before a restart) may
	// take to check in before its silence begins; never less than one
	// window. Agents beat at their own configured pace until a daemon's
	// first answer names its interval, and that pace may be slower than the
	// daemon's: a fresh cluster must not look silent, and trip the storm
	// guard, just because the daemon started for the first time. A host
	// heard from before a restart gets one window, as its agent already
	// beats at the daemon's pace; a host that beats and then stops is
	// judged on the window as always.
	StartGrace time.Duration
	// MaxClockSkew bounds how far a heartbeat's sent_at may be from the
	// daemon's clock, either way (Order); 0 checks nothing (tests of other
	// logic: the daemon always sets detection.heartbeat_max_clock_skew).
	MaxClockSkew time.Duration
}

// startGrace is StartGrace, at least one window.
func (c MonitorConfig) startGrace() time.Duration { return max(c.StartGrace, c.Window()) }

// Beat is what the state machine takes from one accepted heartbeat.
type Beat struct {
	At         time.Time // the daemon's receive time
	BootID     string
	Seq        uint64
	AgentStart time.Time
	// SentAt is the agent's clock when it sent the heartbeat. It must be
	// within MaxClockSkew of At (replay protection, Order); besides that,
	// only differences between heartbeats of one agent process are used.
	SentAt time.Time
	Fault  string // "" when every health check passed
}

// lateStepAccept is how many consecutive "late" heartbeats of one agent
// process, agreeing on their delay, are taken as the agent's clock having
// stepped rather than as old heartbeats delivered late.
const lateStepAccept = 3

// Change is one recordable step of a host's state machine.
type Change struct {
	At       time.Time
	Kind     string // ChangeMonitor, ChangeVerdict or ChangeReboot
	From, To string
	Reason   string
	// Incident is the correlation id of the incident this change belongs
	// to; the caller stamps it (see Monitor.Incident).
	Incident string
}

// Kinds of Change.
const (
	ChangeMonitor = "monitor"
	ChangeVerdict = "verdict"
	ChangeReboot  = "reboot"
)

// Monitor is one host's detector state. Its methods are pure state
// transitions: no I/O, no clock, no goroutines. The engine owns one per host,
// serialises calls to it, carries out the probes and BMC reads it asks for,
// and records the Changes it returns.
type Monitor struct {
	State node.MonitorState
	// WatchSince is when the daemon started watching; silence is measured
	// from the later of it and LastHeartbeat, so a restarted daemon gives
	// every host one window to check in.
	WatchSince    time.Time
	LastHeartbeat time.Time
	BootID        string
	PrevBootID    string
	AgentStart    time.Time
	Seq           uint64
	// SentAt is the newest taken heartbeat's, by the agent's clock: a stale
	// heartbeat sent after it was overtaken by a forged one, one sent
	// before it is an old one delivered again.
	SentAt time.Time
	// Transit is receive time minus SentAt of the last accepted heartbeat;
	// a heartbeat whose transit exceeds it by more than a window was sent
	// long ago (e.g. retransmitted by a dead host's orphaned TCP socket
	// once its link is back) and proves nothing about now.
	Transit    time.Duration
	hasTransit bool
	lateStreak int
	lateLast   time.Duration
	Fault      string
	// GoodStreak counts consecutive good heartbeats while recovering.
	GoodStreak int
	// SilentSince is when the current silence began (the heartbeat went
	// stale); zero while heartbeats are fresh.
	SilentSince time.Time

	ProbeAt       time.Time
	ProbeAnswered bool
	ProbeDetail   string
	BMC           *BMCReading

	Verdict       Verdict
	VerdictReason string
	VerdictAt     time.Time
	// IsolatedSince is when the isolated-or-hung verdict began to hold,
	// judged on evidence of this silence, and it has held unbroken since;
	// zero otherwise. Any other verdict (a probe answered, the BMC
	// unreadable, the storm guard paused) starts the count over: the
	// isolation grace is time the host spent provably silent and powered.
	IsolatedSince time.Time
	// Incident is set when the host leaves normal and cleared when it is
	// normal again; every Change in between belongs to it.
	Incident string
}

// NewMonitor is a host the daemon has not heard from since it started.
func NewMonitor(watchSince time.Time) *Monitor {
	return &Monitor{State: node.Unknown, WatchSince: watchSince, Verdict: Suspect, VerdictReason: "no heartbeat yet"}
}

// Silent reports whether the host is in a silence that the storm guard
// should count: stale heartbeat, and no probe has shown the host alive.
func (m *Monitor) Silent() bool {
	return !m.SilentSince.IsZero() && m.Verdict != AgentDown
}

// Mark is the newest heartbeat taken (AgentStart, Seq).
func (m *Monitor) Mark() Mark { return Mark{AgentStart: m.AgentStart, Seq: m.Seq} }

// Heartbeat applies one heartbeat. For any outcome but accepted (a
// duplicate, stale, late or skewed heartbeat: see Order) it changes nothing
// but the late-delivery bookkeeping.
func (m *Monitor) Heartbeat(b Beat, cfg MonitorConfig) ([]Change, Outcome) {
	if o := Order(m.Mark(), b.AgentStart, b.Seq, b.SentAt, b.At, cfg.MaxClockSkew); !o.Accepted() {
		return nil, o
	}
	sameAgent := b.AgentStart.Equal(m.AgentStart)
	if m.late(b, sameAgent, cfg.Window()) {
		return nil, Outcome{IntakeLate, fmt.Sprintf("sent %s before it arrived, more than a window (%s) longer than this agent's usual transit: it proves nothing about the host now",
			b.At.Sub(b.SentAt).Round(time.Millisecond), cfg.Window())}
	}
	var ch []Change
	if m.BootID != "" && b.BootID != m.BootID {
		m.PrevBootID = m.BootID
		ch = append(ch, Change{At: b.At, Kind: ChangeReboot, From: m.BootID, To: b.BootID,
			Reason: fmt.Sprintf("boot id changed from %s to %s: the host rebooted", m.BootID, b.BootID)})
	}
	m.BootID, m.AgentStart, m.Seq, m.Fault, m.SentAt = b.BootID, b.AgentStart, b.Seq, b.Fault, b.SentAt
	m.LastHeartbeat = b.At
	// Evidence gathered for the silence that just ended must not leak into
	// the next one.
	m.SilentSince, m.ProbeAt, m.ProbeAnswered, m.ProbeDetail, m.BMC = time.Time{}, time.Time{}, false, "", nil

	from := m.State
	to := from
	switch {
	case b.Fault != "":
		m.GoodStreak = 0
		to = node.Error
	case from == node.Unknown || from == node.Suspect || from == node.Normal:
		to = node.Normal
	default: // unreachable or error: hysteresis
		m.GoodStreak++
		if m.GoodStreak >= cfg.RecoveryHeartbeats {
			to = node.Normal
		}
	}
	reason := ""
	switch {
	case to == node.Error:
		reason = "agent reports fault: " + b.Fault
	case to == node.Normal && (from == node.Unreachable || from == node.Error):
		reason = fmt.Sprintf("%d consecutive good heartbeats", m.GoodStreak)
	case to == node.Normal:
		reason = "heartbeat received"
	}
	if to != from {
		if to == node.Normal {
			m.GoodStreak = 0
		}
		ch = append(ch, Change{At: b.At, Kind: ChangeMonitor, From: from.String(), To: to.String(), Reason: reason})
		m.State = to
	}
	jc, _ := m.judge(b.At, cfg, false)
	ch = append(ch, jc...)
	return ch, Outcome{Intake: IntakeAccepted}
}

// late reports whether b was sent more than a window before it arrived,
// judged against the same agent's previous transit time, and keeps the
// transit bookkeeping.
func (m *Monitor) late(b Beat, sameAgent bool, window time.Duration) bool {
	if b.SentAt.IsZero() {
		m.hasTransit = false
		return false
	}
	transit := b.At.Sub(b.SentAt)
	if sameAgent && m.hasTransit && transit-m.Transit > window {
		// Several in a row agreeing on the new transit: the agent's clock
		// stepped back; accept the new baseline.
		if m.lateStreak > 0 && absDur(transit-m.lateLast) <= window {
			m.lateStreak++
		} else {
			m.lateStreak = 1
		}
		m.lateLast = transit
		if m.lateStreak < lateStepAccept {
			return true
		}
	}
	m.Transit, m.hasTransit, m.lateStreak = transit, true, 0
	return false
}

func absDur(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// ProbeResult applies a probe round that was asked for during the silence
// that began at silentSince; a result from an earlier silence is dropped.
func (m *Monitor) ProbeResult(silentSince, at time.Time, answered bool, detail string) bool {
	if m.SilentSince.IsZero() || !m.SilentSince.Equal(silentSince) {
		return false
	}
	m.ProbeAt, m.ProbeAnswered, m.ProbeDetail = at, answered, detail
	return true
}

// BMCResult applies a BMC reading asked for during the silence that began
// at silentSince; a reading from an earlier silence is dropped.
func (m *Monitor) BMCResult(silentSince time.Time, r BMCReading) bool {
	if m.SilentSince.IsZero() || !m.SilentSince.Equal(silentSince) {
		return false
	}
	m.BMC = &r
	return true
}

// Step is what Tick asks of the caller.
type Step struct {
	Changes []Change
	// NeedProbe / NeedBMC: start a probe round / BMC read for the silence
	// that began at SilentSince, unless one is already in flight.
	NeedProbe, NeedBMC bool
	SilentSince        time.Time
}

// Quiet reports whether the host is in the common case, healthy with a
// heartbeat received since the daemon started and no reboot to report, and
// then the span [from, until] (the heartbeat ± one window) over which Tick
// returns an empty Step and changes nothing. Any other call on the monitor
// may end it early: ask again after each. The engine uses it to leave a host
// alone between heartbeats instead of ticking it every 50 ms.
func (m *Monitor) Quiet(cfg MonitorConfig) (from, until time.Time, ok bool) {
	if !m.SilentSince.IsZero() || m.Verdict != Healthy || m.PrevBootID != "" || m.LastHeartbeat.Before(m.WatchSince) {
		return time.Time{}, time.Time{}, false
	}
	w := cfg.Window()
	return m.LastHeartbeat.Add(-w), m.LastHeartbeat.Add(w), true
}

// Tick advances the host to now: notices a heartbeat going stale, moves the
// monitor state, and recomputes the verdict. paused is the storm guard.
func (m *Monitor) Tick(now time.Time, cfg MonitorConfig, paused bool) Step {
	var st Step
	if from, until, ok := m.Quiet(cfg); ok && !now.Before(from) && !now.After(until) {
		return st // fast path: a healthy host with a fresh heartbeat, the common case
	}
	last := m.silenceBase(cfg)
	window := cfg.Window()
	if now.Sub(last) > window && m.SilentSince.IsZero() {
		m.SilentSince = last.Add(window)
		from := m.State
		if from != node.Unreachable && from != node.Suspect {
			m.State = node.Suspect
			reason := fmt.Sprintf("no heartbeat for %s (window %s)", now.Sub(last), window)
			switch {
			case m.LastHeartbeat.IsZero():
				reason = fmt.Sprintf("no heartbeat since the daemon started %s ago (start-up grace %s)", now.Sub(m.WatchSince), cfg.startGrace())
			case m.LastHeartbeat.Before(m.WatchSince):
				reason = fmt.Sprintf("no heartbeat since the daemon started %s ago (window %s)", now.Sub(m.WatchSince), window)
			}
			st.Changes = append(st.Changes, Change{At: now, Kind: ChangeMonitor, From: from.String(), To: m.State.String(), Reason: reason})
		}
	}
	ch, d := m.judge(now, cfg, paused)
	st.Changes = append(st.Changes, ch...)
	if !m.SilentSince.IsZero() {
		st.NeedProbe, st.NeedBMC, st.SilentSince = d.NeedProbe, d.NeedBMC, m.SilentSince
	}
	return st
}

// silenceBase is the time silence is measured from: the last heartbeat;
// for a host not heard from since the daemon started, the start; for a host
// never heard from at all, the start plus the start-up grace less one
// window (so the silence begins when the grace ends).
func (m *Monitor) silenceBase(cfg MonitorConfig) time.Time {
	switch {
	case m.LastHeartbeat.IsZero():
		return m.WatchSince.Add(cfg.startGrace() - cfg.Window())
	case m.LastHeartbeat.Before(m.WatchSince):
		return m.WatchSince
	}
	return m.LastHeartbeat
}

func (m *Monitor) signals(cfg MonitorConfig) Signals {
	last := m.silenceBase(cfg)
	return Signals{LastHeartbeat: last, BootID: m.BootID, PrevBootID: m.PrevBootID, AgentFault: m.Fault,
		ProbeAt: m.ProbeAt, ProbeAnswered: m.ProbeAnswered, BMC: m.BMC}
}

func (m *Monitor) decide(now time.Time, cfg MonitorConfig) Decision {
	return Decide(m.signals(cfg), cfg.Thresholds, now)
}

// actionable verdicts are the ones a fencer may act on; they wait for the
// settle time and yield to the storm guard.
func actionable(v Verdict) bool { return v == HostDown || v == IsolatedOrHung || v == Unprovable }

// conclusive verdicts are the ones about a silent host that evidence settled.
func conclusive(v Verdict) bool { return v != Suspect && v != Healthy && v != Rebooted }

// judge recomputes the verdict and the monitor state that follows from it,
// and returns the Decision it judged on. Its NeedProbe and NeedBMC are what
// Decide says after judging too: the one input judging changes is a
// reported reboot, which only a fresh heartbeat yields, and a fresh
// heartbeat needs neither.
func (m *Monitor) judge(now time.Time, cfg MonitorConfig, paused bool) (ch []Change, d Decision) {
	d = m.decide(now, cfg)

	// Not heard from since the daemon started, and not silent for a window
	// yet: nothing to judge.
	if m.SilentSince.IsZero() && m.LastHeartbeat.Before(m.WatchSince) {
		return nil, d
	}

	// The monitor state follows the latest countable probe round: no answer
	// → unreachable; an answer while unreachable → suspect (alive, agent
	// silent).
	if !m.SilentSince.IsZero() && classify(m.ProbeAt, m.SilentSince, now, cfg.Window()) == current {
		to := node.Unreachable
		if m.ProbeAnswered {
			to = node.Suspect
		}
		if to != m.State {
			ch = append(ch, Change{At: now, Kind: ChangeMonitor, From: m.State.String(), To: to.String(), Reason: m.probeReason(to)})
			m.State = to
			m.GoodStreak = 0
		}
	}

	v, reason := d.Verdict, d.Reason
	if v == Suspect && conclusive(m.Verdict) {
		// Evidence expired and is being gathered again: a conclusion stands
		// until new evidence replaces it, so verdicts do not flap every window.
		v, reason = m.Verdict, m.VerdictReason
		if v == Paused && !paused {
			v, reason = Suspect, "storm guard cleared; gathering fresh evidence"
		}
	}
	if actionable(v) && now.Before(m.SilentSince.Add(cfg.Settle)) {
		v, reason = Suspect, reason+fmt.Sprintf("; held until %s after the silence began so the storm guard sees every host that went silent with it", cfg.Settle)
	}
	if paused && conclusive(v) && v != Paused {
		v, reason = Paused, "storm guard: too many hosts silent at once, deciding nothing; would be "+v.String()+": "+reason
	}
	if v == Rebooted {
		// Reported once per reboot; from the next heartbeat on the host is
		// judged like any other.
		m.PrevBootID = ""
	}
	switch {
	case v != IsolatedOrHung:
		m.IsolatedSince = time.Time{}
	case m.IsolatedSince.IsZero() && d.Verdict == IsolatedOrHung:
		// Only evidence of this silence starts the count, never a verdict
		// carried over (from before a restart, or while evidence is being
		// gathered again).
		m.IsolatedSince = now
	}
	if v != m.Verdict {
		ch = append(ch, Change{At: now, Kind: ChangeVerdict, From: m.Verdict.String(), To: v.String(), Reason: reason})
		m.Verdict, m.VerdictAt = v, now
	}
	m.VerdictReason = reason
	return ch, d
}

func (m *Monitor) probeReason(to node.MonitorState) string {
	if to == node.Suspect {
		return "host answered a probe (" + m.ProbeDetail + "): alive, agent silent"
	}
	if m.ProbeDetail != "" {
		return "host answered no probe (" + m.ProbeDetail + ")"
	}
	return "host answered no probe"
}

// Validate reports what makes the configuration unusable.
func (c MonitorConfig) Validate() error {
	if err := c.Thresholds.Validate(); err != nil {
		return err
	}
	if c.MaxClockSkew < 0 {
		return fmt.Errorf("max clock skew must be >= 0, got %s", c.MaxClockSkew)
	}
	return nil
}
