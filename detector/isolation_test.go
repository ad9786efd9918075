package detector

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

func TestIsolationFenceDue(t *testing.T) {
	held := t0
	fence := IsolationPolicy{Action: IsolationFence, Grace: 10 * time.Second}
	reboot := IsolationPolicy{Action: IsolationReboot, Grace: 10 * time.Second}
	cases := []struct {
		name   string
		v      Verdict
		since  time.Time
		p      IsolationPolicy
		paused bool
		now    time.Time
		due    bool
		when   time.Time
		why    string
	}{
		{"fence after the grace", IsolatedOrHung, held, fence, false, t0.Add(10 * time.Second), true, t0.Add(10 * time.Second), "isolated or hung for 10s (isolation_grace 10s, on_isolation fence)"},
		{"reboot after the grace", IsolatedOrHung, held, reboot, false, t0.Add(11 * time.Second), true, t0.Add(10 * time.Second), "on_isolation reboot"},
		{"grace not over", IsolatedOrHung, held, fence, false, t0.Add(9999 * time.Millisecond), false, t0.Add(10 * time.Second), "not over yet"},
		{"zero grace is due at once", IsolatedOrHung, held, IsolationPolicy{Action: IsolationFence}, false, t0, true, t0, "isolation_grace 0s"},
		{"alert policy never", IsolatedOrHung, held, IsolationPolicy{Action: IsolationAlert, Grace: time.Second}, false, t0.Add(time.Hour), false, time.Time{}, "alert only"},
		{"zero value policy never", IsolatedOrHung, held, IsolationPolicy{}, false, t0.Add(time.Hour), false, time.Time{}, "alert only"},
		{"storm guard", IsolatedOrHung, held, fence, true, t0.Add(time.Hour), false, t0.Add(10 * time.Second), "storm guard paused"},
		{"host down is not isolation", HostDown, held, fence, false, t0.Add(time.Hour), false, time.Time{}, "verdict is host-down"},
		{"agent down", AgentDown, held, fence, false, t0.Add(time.Hour), false, time.Time{}, "not isolated-or-hung"},
		{"unprovable", Unprovable, held, fence, false, t0.Add(time.Hour), false, time.Time{}, "verdict is unprovable"},
		{"paused verdict", Paused, held, fence, false, t0.Add(time.Hour), false, time.Time{}, "verdict is paused"},
		{"no start time", IsolatedOrHung, time.Time{}, fence, false, t0.Add(time.Hour), false, time.Time{}, "no start time"},
		{"negative grace", IsolatedOrHung, held, IsolationPolicy{Action: IsolationFence, Grace: -time.Second}, false, t0.Add(time.Hour), false, time.Time{}, "negative"},
		{"clock before the hold", IsolatedOrHung, held, fence, false, t0.Add(-time.Minute), false, t0.Add(10 * time.Second), "not over yet"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			due, when, why := IsolationFenceDue(c.v, c.since, c.p, c.paused, c.now)
			assert.Equal(t, c.due, due, why)
			assert.Equal(t, c.when, when)
			assert.Contains(t, why, c.why)
		})
	}
}

func TestIsolationActionText(t *testing.T) {
	for _, a := range []IsolationAction{IsolationAlert, IsolationFence, IsolationReboot} {
		p, err := ParseIsolationAction(a.String())
		require.NoError(t, err)
		assert.Equal(t, a, p)
	}
	_, err := ParseIsolationAction("kill")
	assert.ErrorContains(t, err, "alert, fence, reboot")
	assert.Equal(t, "IsolationAction(7)", IsolationAction(7).String())
	assert.False(t, IsolationAlert.Fences())
	assert.True(t, IsolationFence.Fences())
	assert.True(t, IsolationReboot.Fences())
}

// isolate takes a monitor through a silence to isolated-or-hung (settle
// included) and returns the silence start and the time of the verdict.
func isolate(t *testing.T, m *Monitor) (ss, at time.Time) {
	t.Helper()
	hb(t, m, t0, "")
	ss = silence(t, m, t0)
	m.ProbeResult(ss, ss.Add(100*time.Millisecond), false, "probe")
	m.BMCResult(ss, BMCReading{At: ss.Add(100 * time.Millisecond), Reachable: true, Power: power.On})
	at = ss.Add(time.Second)
	m.Tick(at, mcfg(), false)
	require.Equal(t, IsolatedOrHung, m.Verdict, m.VerdictReason)
	return ss, at
}

func TestMonitorIsolatedSince(t *testing.T) {
	t.Run("set when evidence first says so, kept while evidence is refreshed", func(t *testing.T) {
		m := NewMonitor(t0)
		ss, at := isolate(t, m)
		assert.Equal(t, at, m.IsolatedSince)
		// Evidence expires: the verdict stands and so does the count.
		st := m.Tick(ss.Add(3500*time.Millisecond), mcfg(), false)
		require.True(t, st.NeedProbe)
		assert.Equal(t, IsolatedOrHung, m.Verdict)
		assert.Equal(t, at, m.IsolatedSince)
		m.ProbeResult(ss, ss.Add(3600*time.Millisecond), false, "probe")
		m.BMCResult(ss, BMCReading{At: ss.Add(3600 * time.Millisecond), Reachable: true, Power: power.On})
		m.Tick(ss.Add(3700*time.Millisecond), mcfg(), false)
		assert.Equal(t, at, m.IsolatedSince)
	})
	t.Run("a probe answered starts it over", func(t *testing.T) {
		m := NewMonitor(t0)
		ss, _ := isolate(t, m)
		m.ProbeResult(ss, ss.Add(1500*time.Millisecond), true, "probe")
		m.Tick(ss.Add(1500*time.Millisecond), mcfg(), false)
		assert.Equal(t, AgentDown, m.Verdict)
		assert.True(t, m.IsolatedSince.IsZero())
		m.ProbeResult(ss, ss.Add(2*time.Second), false, "probe")
		m.Tick(ss.Add(2*time.Second), mcfg(), false)
		assert.Equal(t, IsolatedOrHung, m.Verdict)
		assert.Equal(t, ss.Add(2*time.Second), m.IsolatedSince, "counted again from the new hold")
	})
	t.Run("the storm guard starts it over", func(t *testing.T) {
		m := NewMonitor(t0)
		ss, _ := isolate(t, m)
		m.Tick(ss.Add(1500*time.Millisecond), mcfg(), true)
		assert.Equal(t, Paused, m.Verdict)
		assert.True(t, m.IsolatedSince.IsZero())
	})
	t.Run("a heartbeat ends it", func(t *testing.T) {
		m := NewMonitor(t0)
		ss, _ := isolate(t, m)
		hb(t, m, ss.Add(2*time.Second), "")
		assert.True(t, m.IsolatedSince.IsZero())
	})
	t.Run("a verdict carried over without evidence does not start it", func(t *testing.T) {
		m := NewMonitor(t0)
		ss, _ := isolate(t, m)
		m.IsolatedSince = time.Time{} // as after a restart that restored the verdict
		st := m.Tick(ss.Add(3500*time.Millisecond), mcfg(), false)
		require.True(t, st.NeedProbe, "evidence expired")
		assert.Equal(t, IsolatedOrHung, m.Verdict, "a conclusion stands while evidence is gathered")
		assert.True(t, m.IsolatedSince.IsZero(), "no evidence of this hold yet")
		m.ProbeResult(ss, ss.Add(3600*time.Millisecond), false, "probe")
		m.BMCResult(ss, BMCReading{At: ss.Add(3600 * time.Millisecond), Reachable: true, Power: power.On})
		m.Tick(ss.Add(3700*time.Millisecond), mcfg(), false)
		assert.Equal(t, ss.Add(3700*time.Millisecond), m.IsolatedSince)
	})
}

func TestMonitorStartGrace(t *testing.T) {
	cfg := mcfg()
	cfg.StartGrace = 10 * time.Second
	t.Run("a host not heard from since the start gets the grace", func(t *testing.T) {
		m := NewMonitor(t0)
		st := m.Tick(t0.Add(9*time.Second), cfg, false)
		assert.Empty(t, st.Changes)
		assert.False(t, m.Silent())
		assert.False(t, st.NeedProbe)
		st = m.Tick(t0.Add(10100*time.Millisecond), cfg, false)
		assert.Equal(t, []string{"monitor:unknown>suspect"}, kinds(st.Changes))
		assert.Contains(t, st.Changes[0].Reason, "start-up grace 10s")
		assert.Equal(t, t0.Add(10*time.Second), m.SilentSince)
		assert.True(t, st.NeedProbe)
	})
	t.Run("a host heard from before a restart gets one window", func(t *testing.T) {
		m := NewMonitor(t0)
		m.LastHeartbeat = t0.Add(-time.Minute) // from the memo
		assert.Empty(t, m.Tick(t0.Add(2900*time.Millisecond), cfg, false).Changes)
		st := m.Tick(t0.Add(3100*time.Millisecond), cfg, false)
		require.NotEmpty(t, st.Changes)
		assert.Contains(t, st.Changes[0].Reason, "window 3s")
		assert.Equal(t, t0.Add(3*time.Second), m.SilentSince)
	})
	t.Run("a host that beats once and stops is judged on the window", func(t *testing.T) {
		m := NewMonitor(t0)
		ch, o := m.Heartbeat(Beat{At: t0.Add(time.Second), BootID: "b", Seq: 1, AgentStart: t0}, cfg)
		ok := o.Accepted()
		require.True(t, ok)
		require.NotEmpty(t, ch)
		st := m.Tick(t0.Add(4100*time.Millisecond), cfg, false)
		assert.Equal(t, t0.Add(4*time.Second), m.SilentSince)
		assert.True(t, st.NeedProbe)
	})
	t.Run("never shorter than a window", func(t *testing.T) {
		short := mcfg()
		short.StartGrace = time.Second
		m := NewMonitor(t0)
		assert.Empty(t, m.Tick(t0.Add(2900*time.Millisecond), short, false).Changes)
		assert.NotEmpty(t, m.Tick(t0.Add(3100*time.Millisecond), short, false).Changes)
	})
}

// enforceRig is a rig whose engine hands verdicts to a recorder.
type enforceRig struct {
	*rig
	mu  sync.Mutex
	got []DownEvent
}

func newEnforceRig(t *testing.T, cfg EngineConfig, hosts ...string) *enforceRig {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clk := &fakeClock{now: t0}
	w := newWorld()
	for _, h := range hosts {
		w.ready[h] = true
	}
	er := &enforceRig{}
	e, err := NewEngine(cfg, Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w, History: st, Memos: st, Alerter: w,
		Log: zerolog.Nop(), Seed: 1, OnHostDown: func(ev DownEvent) { er.mu.Lock(); er.got = append(er.got, ev); er.mu.Unlock() }}, nil)
	require.NoError(t, err)
	er.rig = &rig{t: t, e: e, clk: clk, w: w, st: st, seq: map[string]uint64{}, hosts: hosts}
	return er
}

func (r *enforceRig) events() []DownEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]DownEvent(nil), r.got...)
}

func isolationConfig(enforce bool) EngineConfig {
	cfg := engineConfig("a", "b", "c", "d", "e")
	cfg.Enforce = enforce
	cfg.Hosts[1].Isolation = IsolationPolicy{Action: IsolationFence, Grace: 5 * time.Second}
	cfg.Hosts[2].Isolation = IsolationPolicy{Action: IsolationReboot, Grace: 5 * time.Second}
	// d keeps the zero value: alert.
	return cfg
}

func TestEngineIsolationFence(t *testing.T) {
	r := newEnforceRig(t, isolationConfig(true), "a", "b", "c", "d", "e")
	r.run(3*time.Second, r.hosts...)
	r.w.mu.Lock()
	r.w.power["b"], r.w.power["d"] = power.On, power.On // b and d hang
	r.w.mu.Unlock()
	r.run(6*time.Second, "a", "c", "e")
	require.Equal(t, IsolatedOrHung, r.status("b").Verdict, r.status("b").VerdictReason)
	held := r.status("b").IsolatedSince
	require.False(t, held.IsZero())
	assert.Empty(t, r.events(), "within the grace nothing is handed over")

	r.run(held.Add(5*time.Second).Sub(r.clk.Now())-100*time.Millisecond, "a", "c", "e")
	assert.Empty(t, r.events(), "one step before the grace ends")
	r.run(10*time.Second, "a", "c", "e")
	ev := r.events()
	require.Len(t, ev, 1, "b once (d's policy only alerts): %+v", ev)
	assert.Equal(t, "b", ev[0].Host)
	assert.True(t, ev[0].Isolated)
	assert.Equal(t, r.status("b").Incident, ev[0].CorrelationID)
	assert.Contains(t, ev[0].Reason, "isolation_grace 5s, on_isolation fence")
	assert.Contains(t, ev[0].Reason, "BMC reported power on")
	assert.False(t, ev[0].At.Before(held.Add(5*time.Second)))
	assert.Equal(t, []string{"isolated-or-hung", AlertIsolationFence}, r.w.alertKinds("b"))
	assert.Equal(t, []string{"isolated-or-hung"}, r.w.alertKinds("d"))

	// b beats again (the network healed): a later hang is a new hold,
	// handed over again after its own grace.
	r.run(2*time.Second, "a", "b", "c", "e")
	require.True(t, r.status("b").IsolatedSince.IsZero())
	r.run(15*time.Second, "a", "c", "e")
	ev = r.events()
	require.Len(t, ev, 2)
	assert.Equal(t, "b", ev[1].Host)
}

func TestEngineIsolationObserveRecordsWouldFence(t *testing.T) {
	r := newEnforceRig(t, isolationConfig(false), "a", "b", "c", "d", "e")
	r.run(3*time.Second, r.hosts...)
	r.w.mu.Lock()
	r.w.power["c"] = power.On
	r.w.mu.Unlock()
	r.run(15*time.Second, "a", "b", "d", "e")
	require.Equal(t, IsolatedOrHung, r.status("c").Verdict)
	assert.Empty(t, r.events(), "observe mode hands nothing over")
	recs, err := r.st.History(store.Query{Host: "c", Kind: "would-fence"})
	require.NoError(t, err)
	require.Len(t, recs, 1, "recorded once per hold")
	assert.Equal(t, "isolation-fence", recs[0].To)
	assert.Contains(t, recs[0].Reason, "on_isolation reboot")
}

func TestEngineSwitchToEnforceActsOnWhatIsDecided(t *testing.T) {
	cfg := isolationConfig(false)
	cfg.Storm.MaxFraction = 0.8 // three of five hosts fail here
	r := newEnforceRig(t, cfg, "a", "b", "c", "d", "e")
	r.run(3*time.Second, r.hosts...)
	r.w.mu.Lock()
	r.w.power["a"] = power.Off // a lost power
	r.w.power["b"] = power.On  // b hung, policy fence
	r.w.power["d"] = power.On  // d hung, policy alert
	r.w.mu.Unlock()
	r.run(15*time.Second, "c", "e")
	require.Equal(t, HostDown, r.status("a").Verdict)
	require.Equal(t, IsolatedOrHung, r.status("b").Verdict)
	require.Empty(t, r.events(), "observe mode")

	cfg.Enforce = true
	require.NoError(t, r.e.Reconfigure(cfg))
	ev := r.events()
	require.Len(t, ev, 1, "the host-down host at once")
	assert.Equal(t, "a", ev[0].Host)
	assert.False(t, ev[0].Isolated)
	assert.Equal(t, r.status("a").Incident, ev[0].CorrelationID)

	r.e.Step(context.Background(), r.clk.Add(100*time.Millisecond))
	r.e.Wait()
	ev = r.events()
	require.Len(t, ev, 2, "the isolated host past its grace at the next step; d only alerts")
	assert.Equal(t, "b", ev[1].Host)
	assert.True(t, ev[1].Isolated)

	// Reloading enforce again hands nothing over twice.
	require.NoError(t, r.e.Reconfigure(cfg))
	r.run(time.Second, "c", "e")
	assert.Len(t, r.events(), 2)
}

func TestEngineStartGraceNoStormAtFirstStart(t *testing.T) {
	cfg := engineConfig("a", "b", "c")
	cfg.Monitor.StartGrace = 6 * time.Second // agents beat every 5 s until the daemon's first answer
	r := newEnforceRig(t, cfg, "a", "b", "c")
	// The agents' first heartbeats arrive 4.5 s after the start: later
	// than one 3 s window.
	r.run(4500 * time.Millisecond)
	for _, h := range r.hosts {
		r.beat(h)
	}
	r.run(5*time.Second, r.hosts...)
	_, storm := r.e.Status()
	assert.False(t, storm.Paused)
	assert.Empty(t, r.w.alertKinds(""), "no storm alert")
	recs, err := r.st.History(store.Query{Kind: "storm"})
	require.NoError(t, err)
	assert.Empty(t, recs)

	// Without the grace the same start trips the guard: the test can fail.
	cfg.Monitor.StartGrace = 0
	r2 := newEnforceRig(t, cfg, "a", "b", "c")
	r2.run(4500 * time.Millisecond)
	_, storm = r2.e.Status()
	assert.True(t, storm.Paused, "3 of 3 silent after one window")
}
