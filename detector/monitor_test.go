package detector

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
)

func mcfg() MonitorConfig {
	return MonitorConfig{
		Thresholds:         Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: 500 * time.Millisecond},
		RecoveryHeartbeats: 3,
		Settle:             time.Second,
	}
}

// hb feeds a heartbeat with the next sequence number.
func hb(t *testing.T, m *Monitor, at time.Time, fault string) []Change {
	t.Helper()
	ch, o := m.Heartbeat(Beat{At: at, BootID: "boot-a", Seq: m.Seq + 1, AgentStart: t0, Fault: fault}, mcfg())
	ok := o.Accepted()
	require.True(t, ok, "heartbeat must be accepted")
	return ch
}

func kinds(ch []Change) []string {
	var out []string
	for _, c := range ch {
		out = append(out, c.Kind+":"+c.From+">"+c.To)
	}
	return out
}

// silence takes a healthy host through a silence to the point where probes
// and the BMC have been asked, returning the silence start.
func silence(t *testing.T, m *Monitor, last time.Time) time.Time {
	t.Helper()
	st := m.Tick(last.Add(3100*time.Millisecond), mcfg(), false)
	require.True(t, st.NeedProbe)
	require.True(t, st.NeedBMC)
	require.Equal(t, last.Add(3*time.Second), st.SilentSince)
	assert.Equal(t, node.Suspect, m.State)
	return st.SilentSince
}

func TestMonitorPowerLoss(t *testing.T) {
	m := NewMonitor(t0)
	assert.Equal(t, node.Unknown, m.State)
	ch := hb(t, m, t0.Add(time.Second), "")
	assert.Equal(t, []string{"monitor:unknown>normal", "verdict:suspect>healthy"}, kinds(ch))

	last := t0.Add(2 * time.Second)
	hb(t, m, last, "")
	st := m.Tick(last.Add(3*time.Second), mcfg(), false)
	assert.Empty(t, st.Changes, "exactly one window of silence is not stale yet")
	assert.False(t, st.NeedProbe)

	st = m.Tick(last.Add(3100*time.Millisecond), mcfg(), false)
	assert.Equal(t, []string{"monitor:normal>suspect", "verdict:healthy>suspect"}, kinds(st.Changes))
	ss := st.SilentSince
	assert.True(t, m.Silent())

	require.True(t, m.ProbeResult(ss, ss.Add(200*time.Millisecond), false, "tcp timeout"))
	st = m.Tick(ss.Add(200*time.Millisecond), mcfg(), false)
	assert.Equal(t, []string{"monitor:suspect>unreachable"}, kinds(st.Changes))
	assert.True(t, st.NeedBMC, "still waiting for the BMC")
	assert.False(t, st.NeedProbe)

	require.True(t, m.BMCResult(ss, BMCReading{At: ss.Add(300 * time.Millisecond), Reachable: true, Power: power.Off}))
	st = m.Tick(ss.Add(300*time.Millisecond), mcfg(), false)
	assert.Empty(t, st.Changes, "held for the settle time")
	assert.Equal(t, Suspect, m.Verdict)
	assert.Contains(t, m.VerdictReason, "held until")

	st = m.Tick(ss.Add(time.Second), mcfg(), false)
	assert.Equal(t, []string{"verdict:suspect>host-down"}, kinds(st.Changes))
	assert.Equal(t, HostDown, m.Verdict)
	assert.False(t, st.NeedProbe || st.NeedBMC)

	// Evidence expires after a window: asked again, verdict stands.
	st = m.Tick(ss.Add(3500*time.Millisecond), mcfg(), false)
	assert.Empty(t, st.Changes)
	assert.True(t, st.NeedProbe && st.NeedBMC)
	assert.Equal(t, HostDown, m.Verdict, "a conclusion stands while evidence is refreshed")
}

func TestMonitorVerdicts(t *testing.T) {
	cases := []struct {
		name     string
		answered bool
		bmc      BMCReading
		verdict  Verdict
		state    node.MonitorState
		silent   bool
	}{
		{"agent down, host answers", true, BMCReading{Reachable: true, Power: power.On}, AgentDown, node.Suspect, false},
		{"isolated or hung", false, BMCReading{Reachable: true, Power: power.On}, IsolatedOrHung, node.Unreachable, true},
		{"BMC unreachable", false, BMCReading{Err: "dial timeout"}, Unprovable, node.Unreachable, true},
		{"BMC wrong password", false, BMCReading{Reachable: true, Err: "auth rejected"}, Unprovable, node.Unreachable, true},
		{"power off", false, BMCReading{Reachable: true, Power: power.Off}, HostDown, node.Unreachable, true},
		{"powering off is not off", false, BMCReading{Reachable: true, Power: power.PoweringOff}, IsolatedOrHung, node.Unreachable, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := NewMonitor(t0)
			hb(t, m, t0, "")
			ss := silence(t, m, t0)
			m.ProbeResult(ss, ss.Add(100*time.Millisecond), c.answered, "probe")
			r := c.bmc
			r.At = ss.Add(100 * time.Millisecond)
			m.BMCResult(ss, r)
			m.Tick(ss.Add(2*time.Second), mcfg(), false)
			assert.Equal(t, c.verdict, m.Verdict, m.VerdictReason)
			assert.Equal(t, c.state, m.State)
			assert.Equal(t, c.silent, m.Silent())
		})
	}
}

func TestMonitorPaused(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	ss := silence(t, m, t0)
	m.ProbeResult(ss, ss.Add(100*time.Millisecond), false, "")
	m.BMCResult(ss, BMCReading{At: ss.Add(100 * time.Millisecond), Reachable: true, Power: power.Off})
	st := m.Tick(ss.Add(2*time.Second), mcfg(), true)
	assert.Equal(t, Paused, m.Verdict)
	assert.Contains(t, m.VerdictReason, "would be host-down")
	assert.Equal(t, []string{"monitor:suspect>unreachable", "verdict:suspect>paused"}, kinds(st.Changes))

	// Still paused after the evidence expired: no nesting, no flapping.
	st = m.Tick(ss.Add(4*time.Second), mcfg(), true)
	assert.Empty(t, st.Changes)
	assert.Equal(t, Paused, m.Verdict)

	// Guard clears: evidence is stale, so nothing is concluded until fresh
	// evidence arrives.
	st = m.Tick(ss.Add(4100*time.Millisecond), mcfg(), false)
	assert.Equal(t, Suspect, m.Verdict)
	assert.True(t, st.NeedProbe && st.NeedBMC)
	at := ss.Add(4200 * time.Millisecond)
	m.ProbeResult(ss, at, false, "")
	m.BMCResult(ss, BMCReading{At: at, Reachable: true, Power: power.Off})
	m.Tick(at, mcfg(), false)
	assert.Equal(t, HostDown, m.Verdict)

	// A storm that starts after the verdict turns it into paused too.
	m.Tick(at.Add(time.Millisecond), mcfg(), true)
	assert.Equal(t, Paused, m.Verdict)
}

func TestMonitorRecoveryHysteresis(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	ss := silence(t, m, t0)
	m.ProbeResult(ss, ss.Add(100*time.Millisecond), false, "")
	m.Tick(ss.Add(100*time.Millisecond), mcfg(), false)
	require.Equal(t, node.Unreachable, m.State)

	now := ss.Add(10 * time.Second)
	ch := hb(t, m, now, "")
	assert.Equal(t, node.Unreachable, m.State, "one good heartbeat is not recovery")
	assert.Equal(t, []string{"verdict:suspect>healthy"}, kinds(ch), "the verdict follows the fresh heartbeat at once")
	hb(t, m, now.Add(time.Second), "")
	assert.Equal(t, node.Unreachable, m.State)
	ch = hb(t, m, now.Add(2*time.Second), "storage /mnt/shared not writable")
	assert.Equal(t, node.Error, m.State, "a fault while recovering is an error, and resets the streak")
	assert.Equal(t, []string{"monitor:unreachable>error"}, kinds(ch))
	hb(t, m, now.Add(3*time.Second), "")
	hb(t, m, now.Add(4*time.Second), "")
	assert.Equal(t, node.Error, m.State)
	ch = hb(t, m, now.Add(5*time.Second), "")
	assert.Equal(t, node.Normal, m.State)
	assert.Equal(t, "3 consecutive good heartbeats", ch[0].Reason)
	assert.True(t, m.SilentSince.IsZero())
	assert.Nil(t, m.BMC, "evidence of the old silence is dropped")
}

func TestMonitorFaultFromNormal(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	ch := hb(t, m, t0.Add(time.Second), "libvirtd unreachable")
	assert.Equal(t, []string{"monitor:normal>error"}, kinds(ch))
	assert.Equal(t, "agent reports fault: libvirtd unreachable", ch[0].Reason)
	assert.Equal(t, Healthy, m.Verdict, "a fault is not a reason to fence")
}

func TestMonitorReboot(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	ch, o := m.Heartbeat(Beat{At: t0.Add(5 * time.Second), BootID: "boot-b", Seq: 1, AgentStart: t0.Add(4 * time.Second)}, mcfg())
	ok := o.Accepted()
	require.True(t, ok)
	assert.Equal(t, []string{"reboot:boot-a>boot-b", "verdict:healthy>rebooted"}, kinds(ch))
	ch, _ = m.Heartbeat(Beat{At: t0.Add(6 * time.Second), BootID: "boot-b", Seq: 2, AgentStart: t0.Add(4 * time.Second)}, mcfg())
	assert.Equal(t, []string{"verdict:rebooted>healthy"}, kinds(ch), "rebooted is reported once")
}

func TestMonitorDuplicateHeartbeat(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	hb(t, m, t0.Add(time.Second), "")
	_, o := m.Heartbeat(Beat{At: t0.Add(2 * time.Second), BootID: "boot-a", Seq: 1, AgentStart: t0}, mcfg())
	ok := o.Accepted()
	assert.False(t, ok, "a replayed old sequence number is ignored")
	assert.Equal(t, t0.Add(time.Second), m.LastHeartbeat)
	_, o = m.Heartbeat(Beat{At: t0.Add(2 * time.Second), BootID: "boot-a", Seq: 1, AgentStart: t0.Add(time.Second)}, mcfg())
	ok = o.Accepted()
	assert.True(t, ok, "a restarted agent starts counting again")
}

func TestMonitorEvidenceFromEarlierSilenceDropped(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0, "")
	ss := silence(t, m, t0)
	// A heartbeat arrives while the BMC read is in flight...
	hb(t, m, ss.Add(50*time.Millisecond), "")
	// ...and the read returns "off": it belongs to the old silence.
	assert.False(t, m.BMCResult(ss, BMCReading{At: ss.Add(60 * time.Millisecond), Reachable: true, Power: power.Off}))
	assert.False(t, m.ProbeResult(ss, ss.Add(60*time.Millisecond), false, ""))
	m.Tick(ss.Add(time.Second), mcfg(), false)
	assert.Equal(t, Healthy, m.Verdict)
	assert.Equal(t, node.Normal, m.State)
}

func TestMonitorDaemonRestartGivesAWindow(t *testing.T) {
	m := NewMonitor(t0.Add(time.Hour))
	m.LastHeartbeat = t0 // persisted from before the restart
	st := m.Tick(t0.Add(time.Hour+2*time.Second), mcfg(), false)
	assert.Empty(t, st.Changes, "silence is measured from the daemon's start")
	st = m.Tick(t0.Add(time.Hour+3100*time.Millisecond), mcfg(), false)
	assert.Equal(t, []string{"monitor:unknown>suspect"}, kinds(st.Changes))

	fresh := NewMonitor(t0)
	st = fresh.Tick(t0.Add(3100*time.Millisecond), mcfg(), false)
	require.Len(t, st.Changes, 1)
	assert.Contains(t, st.Changes[0].Reason, "no heartbeat since the daemon started")
}

func TestMonitorClockJumps(t *testing.T) {
	m := NewMonitor(t0)
	hb(t, m, t0.Add(time.Minute), "")
	// The clock steps back an hour: the heartbeat is in the future, which
	// proves nothing either way until the next heartbeat re-stamps it.
	st := m.Tick(t0, mcfg(), false)
	assert.Equal(t, []string{"verdict:healthy>suspect"}, kinds(st.Changes))
	assert.Contains(t, m.VerdictReason, "clock skew")
	hb(t, m, t0.Add(time.Second), "")
	assert.Equal(t, Healthy, m.Verdict)
	// The clock leaps forward a day: stale, but nothing is concluded
	// without evidence gathered after the leap.
	st = m.Tick(t0.Add(24*time.Hour), mcfg(), false)
	assert.True(t, st.NeedProbe && st.NeedBMC)
	assert.Equal(t, Suspect, m.Verdict)
}

// TestMonitorNeverHostDownWithoutEvidence drives random sequences of
// heartbeats, ticks, probe and BMC results, storm-guard flips and clock
// jumps, and checks the one rule after every step: host-down only with a
// stale heartbeat, an unanswered probe and an Off reading, both taken during
// the current silence and within a window, past the settle time, and never
// while paused.
func TestMonitorNeverHostDownWithoutEvidence(t *testing.T) {
	cfg := mcfg()
	for seed := uint64(0); seed < 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		m := NewMonitor(t0)
		now := t0
		var pending []time.Time // silences probes were asked for
		for step := 0; step < 200; step++ {
			now = now.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
			if r.IntN(50) == 0 {
				now = now.Add(-time.Duration(r.IntN(10)) * time.Second) // clock steps back
			}
			paused := r.IntN(6) == 0
			switch r.IntN(5) {
			case 0:
				m.Heartbeat(Beat{At: now, BootID: []string{"a", "b"}[r.IntN(2)], Seq: m.Seq + 1, AgentStart: t0}, cfg)
			case 1:
				if len(pending) > 0 {
					m.ProbeResult(pending[r.IntN(len(pending))], now, r.IntN(2) == 0, "")
				}
			case 2:
				if len(pending) > 0 {
					m.BMCResult(pending[r.IntN(len(pending))], BMCReading{At: now, Reachable: r.IntN(4) != 0,
						Power: power.State(r.IntN(5)), Err: []string{"", "", "timeout"}[r.IntN(3)]})
				}
			}
			st := m.Tick(now, cfg, paused)
			if st.NeedProbe || st.NeedBMC {
				pending = append(pending, st.SilentSince)
			}
			if m.Verdict != HostDown {
				continue
			}
			require.False(t, paused, "seed %d step %d: host-down while paused", seed, step)
			require.False(t, m.SilentSince.IsZero(), "seed %d step %d: host-down without silence", seed, step)
			require.NotNil(t, m.BMC, "seed %d step %d", seed, step)
			assert.True(t, m.BMC.Reachable && m.BMC.Err == "" && m.BMC.Power.IsOff(), "seed %d step %d: host-down on %+v", seed, step, *m.BMC)
			assert.False(t, m.ProbeAnswered, "seed %d step %d: host-down although the host answered", seed, step)
			assert.True(t, m.BMC.At.After(m.SilentSince) && m.ProbeAt.After(m.SilentSince), "seed %d step %d: evidence predates the silence", seed, step)
			assert.False(t, m.VerdictAt.Before(m.SilentSince.Add(cfg.Settle)), "seed %d step %d: judged before the settle time", seed, step)
		}
	}
}

// A dead host's orphaned TCP socket can deliver its last heartbeat seconds
// later, once the link is back: it must not make the host look alive.
func TestMonitorLateHeartbeatDropped(t *testing.T) {
	m := NewMonitor(t0)
	agentClock := t0.Add(-time.Hour) // agent and daemon clocks disagree by an hour: irrelevant
	beat := func(at, sent time.Time) bool {
		_, o := m.Heartbeat(Beat{At: at, BootID: "boot-a", Seq: m.Seq + 1, AgentStart: t0, SentAt: sent}, mcfg())
		ok := o.Accepted()
		return ok
	}
	require.True(t, beat(t0, agentClock))
	require.True(t, beat(t0.Add(time.Second), agentClock.Add(time.Second)))
	// Sent one second later on the agent's clock, received 10 s later.
	assert.False(t, beat(t0.Add(11*time.Second), agentClock.Add(2*time.Second)), "sent 9 s before it arrived")
	assert.Equal(t, t0.Add(time.Second), m.LastHeartbeat, "the late heartbeat did not refresh the host")
	// A delay within the window is ordinary network jitter.
	assert.True(t, beat(t0.Add(12*time.Second), agentClock.Add(9500*time.Millisecond)))

	// The agent's clock steps back an hour: three heartbeats agreeing on the
	// new offset re-baseline it.
	back := agentClock.Add(-time.Hour)
	assert.False(t, beat(t0.Add(13*time.Second), back.Add(13*time.Second)))
	assert.False(t, beat(t0.Add(14*time.Second), back.Add(14*time.Second)))
	assert.True(t, beat(t0.Add(15*time.Second), back.Add(15*time.Second)), "a clock step is accepted after 3 heartbeats")
	assert.True(t, beat(t0.Add(16*time.Second), back.Add(16*time.Second)))

	// A restarted agent starts a new baseline at once.
	_, o := m.Heartbeat(Beat{At: t0.Add(17 * time.Second), BootID: "boot-a", Seq: 1, AgentStart: t0.Add(time.Minute), SentAt: t0.Add(-5 * time.Hour)}, mcfg())
	ok := o.Accepted()
	assert.True(t, ok)
}
