package detector

import (
	"fmt"
	"time"
)

// Intake is what the detector did with one heartbeat.
type Intake int

// Intakes of a heartbeat. Only IntakeAccepted changes the host's state; the
// others are answered (the agent learns which) and otherwise ignored.
const (
	// IntakeAccepted: newer than every heartbeat taken from the host.
	IntakeAccepted Intake = iota
	// IntakeDuplicate: the same agent_start and seq as the newest taken, a
	// retransmission (e.g. over HTTP after the UDP answer was lost).
	IntakeDuplicate
	// IntakeStale: older than the newest taken: an older agent_start, or
	// the same agent_start and a lower seq. A live agent never sends one;
	// it is a replay, or someone sent a beat in the agent's name that
	// overtook it (the agent then starts a new sequence, see heartbeat.Ack).
	IntakeStale
	// IntakeLate: newer, but sent long before it arrived compared with the
	// agent's previous beats (Monitor.late): it proves nothing about now.
	IntakeLate
	// IntakeSkewed: sent_at is missing or further from the daemon's clock
	// than MonitorConfig.MaxClockSkew, or agent_start is after sent_at.
	// Refused (HTTP 422, a refused datagram): the agent's clock needs
	// fixing, or the beat was captured and replayed.
	IntakeSkewed
)

var intakeNames = [...]string{"accepted", "duplicate", "stale", "late", "skewed"}

func (i Intake) String() string {
	if i < 0 || int(i) >= len(intakeNames) {
		return fmt.Sprintf("intake(%d)", int(i))
	}
	return intakeNames[i]
}

// Outcome is an Intake and, unless accepted, why.
type Outcome struct {
	Intake Intake
	Reason string
}

// Accepted reports whether the heartbeat changed the host's state.
func (o Outcome) Accepted() bool { return o.Intake == IntakeAccepted }

// Mark is the newest heartbeat taken from a host: its agent process
// (AgentStart) and that process's sequence number. It only moves forward,
// and it is persisted (store.HostMemo) so a daemon restart does not reopen
// the past to replays.
type Mark struct {
	AgentStart time.Time
	Seq        uint64
}

// Order decides whether a heartbeat with agentStart, seq and sentAt,
// received at now, may be taken after last. maxSkew > 0 bounds how far
// sentAt may be from now either way; 0 checks nothing about the clocks
// (unit tests of other logic; the daemon always sets it).
//
// The window is what makes replay useless: a captured beat is refused once
// it is older than maxSkew, and before that it is refused unless it is newer
// than every beat taken (each captured beat counts at most once). It also
// bounds agent_start from above (agent_start <= sent_at <= now+maxSkew), so
// a forged beat with a far-future agent_start cannot make every later real
// beat stale for longer than maxSkew.
func Order(last Mark, agentStart time.Time, seq uint64, sentAt, now time.Time, maxSkew time.Duration) Outcome {
	if maxSkew > 0 {
		if sentAt.IsZero() {
			return Outcome{IntakeSkewed, "sent_at is missing: the daemon refuses heartbeats it cannot date (replay protection)"}
		}
		switch d := sentAt.Sub(now); {
		case d > maxSkew:
			return Outcome{IntakeSkewed, fmt.Sprintf("sent_at %s ahead of the daemon's clock (at most %s allowed): check NTP on the host", roundSkew(d), maxSkew)}
		case -d > maxSkew:
			return Outcome{IntakeSkewed, fmt.Sprintf("sent_at %s behind the daemon's clock (at most %s allowed): check NTP on the host, or the heartbeat was captured and replayed", roundSkew(-d), maxSkew)}
		}
		if agentStart.After(sentAt) {
			return Outcome{IntakeSkewed, fmt.Sprintf("agent_start %s is after sent_at %s: the agent's clock stepped back since it started (it starts over once its clock passes agent_start), or the heartbeat is forged",
				agentStart.UTC().Format(time.RFC3339Nano), sentAt.UTC().Format(time.RFC3339Nano))}
		}
	}
	switch {
	case agentStart.Before(last.AgentStart):
		return Outcome{IntakeStale, fmt.Sprintf("agent_start %s is older than the newest taken from this host (%s): a replayed heartbeat, or one from an agent process that has since restarted",
			agentStart.UTC().Format(time.RFC3339Nano), last.AgentStart.UTC().Format(time.RFC3339Nano))}
	case !agentStart.Equal(last.AgentStart):
		return Outcome{Intake: IntakeAccepted}
	case seq == last.Seq:
		return Outcome{IntakeDuplicate, fmt.Sprintf("seq %d of this agent process was already taken", seq)}
	case seq < last.Seq:
		return Outcome{IntakeStale, fmt.Sprintf("seq %d is not after %d, the newest taken from this agent process: a replayed heartbeat, or a heartbeat sent in the agent's name overtook it", seq, last.Seq)}
	}
	return Outcome{Intake: IntakeAccepted}
}

// roundSkew keeps a skew readable: "7m0s", not "6m59.993417s".
func roundSkew(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}
