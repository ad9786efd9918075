package detector

import (
	"strings"
	"testing"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

func TestOrder(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	start := now.Add(-time.Hour)
	last := Mark{AgentStart: start, Seq: 10}
	const skew = 30 * time.Second
	cases := []struct {
		name    string
		last    Mark
		start   time.Time
		seq     uint64
		sent    time.Time
		skew    time.Duration
		want    Intake
		because string
	}{
		{"first beat ever", Mark{}, start, 1, now, skew, IntakeAccepted, ""},
		{"next seq", last, start, 11, now, skew, IntakeAccepted, ""},
		{"seq jumps ahead", last, start, 1e12, now, skew, IntakeAccepted, ""},
		{"same seq: a retransmission", last, start, 10, now, skew, IntakeDuplicate, "already taken"},
		{"lower seq", last, start, 9, now, skew, IntakeStale, "seq 9 is not after 10"},
		{"newer agent process starts at 1", last, start.Add(time.Minute), 1, now, skew, IntakeAccepted, ""},
		{"older agent process, higher seq", last, start.Add(-time.Second), 500, now, skew, IntakeStale, "older than the newest taken"},
		{"agent_start equal in another zone", last, start.In(time.FixedZone("x", 3600)), 11, now, skew, IntakeAccepted, ""},
		{"sent_at at the edge ahead", last, start, 11, now.Add(skew), skew, IntakeAccepted, ""},
		{"sent_at just past the edge ahead", last, start, 11, now.Add(skew + time.Nanosecond), skew, IntakeSkewed, "ahead of the daemon's clock (at most 30s allowed): check NTP"},
		{"sent_at 7 minutes ahead", last, start, 11, now.Add(7 * time.Minute), skew, IntakeSkewed, "sent_at 7m0s ahead of the daemon's clock"},
		{"sent_at at the edge behind", last, start, 11, now.Add(-skew), skew, IntakeAccepted, ""},
		{"sent_at 7 minutes behind: captured and replayed", last, start, 11, now.Add(-7 * time.Minute), skew, IntakeSkewed, "sent_at 7m0s behind the daemon's clock"},
		{"sent_at missing", last, start, 11, time.Time{}, skew, IntakeSkewed, "sent_at is missing"},
		{"agent_start after sent_at (forged far future)", last, now.Add(time.Second), 1, now, skew, IntakeSkewed, "is after sent_at"},
		{"agent_start equal to sent_at", last, now, 1, now, skew, IntakeAccepted, ""},
		{"skew checked before order", last, start, 9, now.Add(-time.Hour), skew, IntakeSkewed, "behind"},
		{"no window: clocks not checked", last, start, 11, time.Time{}, 0, IntakeAccepted, ""},
		{"no window: order still checked", last, start, 10, time.Time{}, 0, IntakeDuplicate, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := Order(c.last, c.start, c.seq, c.sent, now, c.skew)
			if o.Intake != c.want {
				t.Fatalf("Order = %s (%s), want %s", o.Intake, o.Reason, c.want)
			}
			if o.Accepted() != (c.want == IntakeAccepted) {
				t.Errorf("Accepted() = %v for %s", o.Accepted(), o.Intake)
			}
			if c.want == IntakeAccepted && o.Reason != "" {
				t.Errorf("accepted with a reason: %q", o.Reason)
			}
			if !strings.Contains(o.Reason, c.because) {
				t.Errorf("reason %q does not say %q", o.Reason, c.because)
			}
		})
	}
}

// A forged far-future agent_start mutes the live agent for at most the
// window: it must be within the window itself, and the agent's new
// sequence (agent_start = its now) passes it once the clock does.
func TestOrderForgedAgentStartMutesAtMostTheWindow(t *testing.T) {
	const skew = 30 * time.Second
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if o := Order(Mark{}, t0.Add(skew+time.Second), 1, t0.Add(skew+time.Second), t0, skew); o.Accepted() {
		t.Fatal("a forged agent_start past the window was taken")
	}
	forged := Mark{AgentStart: t0.Add(skew), Seq: 1e12} // the furthest that can be taken at t0
	if o := Order(Mark{}, forged.AgentStart, forged.Seq, forged.AgentStart, t0, skew); !o.Accepted() {
		t.Fatalf("setup: %+v", o)
	}
	for now := t0; ; now = now.Add(time.Second) {
		// The agent starts over with agent_start = now at each stale answer.
		if o := Order(forged, now, 1, now, now, skew); o.Accepted() {
			if d := now.Sub(t0); d > skew+time.Second {
				t.Fatalf("muted for %s, more than the window %s", d, skew)
			}
			return
		}
		if now.Sub(t0) > time.Hour {
			t.Fatal("muted for an hour")
		}
	}
}

func TestIntakeNamesMatchAckOutcomes(t *testing.T) {
	// The daemon sends Intake.String() as heartbeat.Ack.Outcome.
	for i, want := range []string{heartbeat.OutcomeAccepted, heartbeat.OutcomeDuplicate, heartbeat.OutcomeStale, heartbeat.OutcomeLate, "skewed"} {
		if got := Intake(i).String(); got != want {
			t.Errorf("Intake(%d) = %q, want %q", i, got, want)
		}
	}
}
