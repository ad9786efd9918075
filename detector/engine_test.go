package detector

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// fakeWorld answers probes and BMC reads per host, as configured.
type fakeWorld struct {
	mu       sync.Mutex
	answers  map[string]bool // probe answered
	power    map[string]power.State
	bmcErr   map[string]error
	ready    map[string]bool
	refsOK   bool
	probes   map[string]int
	alerts   []Alert
	readings int
}

func newWorld() *fakeWorld {
	return &fakeWorld{answers: map[string]bool{}, power: map[string]power.State{}, bmcErr: map[string]error{},
		ready: map[string]bool{}, probes: map[string]int{}, refsOK: true}
}

func (w *fakeWorld) ProbeHost(_ context.Context, host string) (bool, bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.probes[host]++
	if w.answers[host] {
		return true, true, "tcp " + host + ":7481 refused"
	}
	return false, true, "tcp " + host + ":7481 timeout"
}

func (w *fakeWorld) ProbeReferences(context.Context) (bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refsOK, ""
}

func (w *fakeWorld) ReadPower(_ context.Context, host string) (power.State, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.readings++
	if err := w.bmcErr[host]; err != nil {
		return power.Unknown, err
	}
	return w.power[host], nil
}

func (w *fakeWorld) CheckReadiness(_ context.Context, host string) Readiness {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ready[host] {
		return Readiness{Ready: true, Summary: "ipmi: power on"}
	}
	return Readiness{Ready: false, Summary: "ipmi: auth rejected"}
}

func (w *fakeWorld) Alert(_ context.Context, a Alert) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.alerts = append(w.alerts, a)
}

func (w *fakeWorld) alertKinds(host string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, a := range w.alerts {
		if a.Host == host {
			out = append(out, a.Kind)
		}
	}
	return out
}

type rig struct {
	t     *testing.T
	e     *Engine
	clk   *fakeClock
	w     *fakeWorld
	st    *store.Store
	seq   map[string]uint64
	hosts []string
}

func engineConfig(hosts ...string) EngineConfig {
	var hc []HostConfig
	for _, h := range hosts {
		hc = append(hc, HostConfig{Name: h, Rack: "r1", ReadinessInterval: 10 * time.Minute})
	}
	return EngineConfig{Hosts: hc, Monitor: mcfg(), Storm: StormGuard{MaxFraction: 0.5, Window: time.Minute}}
}

func newRig(t *testing.T, path string, memos map[string]store.HostMemo, hosts ...string) *rig {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clk := &fakeClock{now: t0}
	w := newWorld()
	for _, h := range hosts {
		w.ready[h] = true
	}
	e, err := NewEngine(engineConfig(hosts...), Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w,
		History: st, Memos: st, Alerter: w, Log: zerolog.Nop(), Seed: 1}, memos)
	require.NoError(t, err)
	return &rig{t: t, e: e, clk: clk, w: w, st: st, seq: map[string]uint64{}, hosts: hosts}
}

func (r *rig) beat(host string) {
	r.t.Helper()
	r.seq[host]++
	o, err := r.e.Heartbeat(heartbeat.Heartbeat{Host: host, BootID: "boot-" + host, Seq: r.seq[host], AgentStart: t0, AgentVersion: "test", Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}})
	accepted := o.Accepted()
	require.NoError(r.t, err)
	require.True(r.t, accepted)
}

// run advances the clock by d in steps of 100 ms, heartbeating the given
// hosts every second and letting the checks finish at each step.
func (r *rig) run(d time.Duration, beating ...string) {
	for elapsed := time.Duration(0); elapsed < d; elapsed += 100 * time.Millisecond {
		now := r.clk.Add(100 * time.Millisecond)
		if now.Sub(t0)%time.Second == 0 {
			for _, h := range beating {
				r.beat(h)
			}
		}
		r.e.Step(context.Background(), now)
		r.e.Wait()
	}
	r.e.Flush()
}

func (r *rig) status(host string) HostStatus {
	s, ok := r.e.Host(host)
	require.True(r.t, ok)
	return s
}

func TestEnginePowerLossAgentDownAndIsolation(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a", "b", "c", "d", "e", "f", "g", "h", "i")
	all := r.hosts
	healthy := []string{"a", "f", "g", "h", "i"}
	r.run(3*time.Second, all...)
	for _, h := range all {
		assert.Equal(t, node.Normal, r.status(h).Monitor, h)
		assert.Equal(t, Healthy, r.status(h).Verdict, h)
	}
	r.w.mu.Lock()
	r.w.power["b"] = power.Off      // b lost power
	r.w.answers["c"] = true         // c's agent died, host fine
	r.w.power["d"] = power.On       // d isolated
	r.w.bmcErr["e"] = power.ErrAuth // e's BMC rejects the password
	r.w.mu.Unlock()
	r.run(6*time.Second, healthy...)

	assert.Equal(t, HostDown, r.status("b").Verdict, r.status("b").VerdictReason)
	assert.Equal(t, node.Unreachable, r.status("b").Monitor)
	assert.Equal(t, AgentDown, r.status("c").Verdict)
	assert.Equal(t, node.Suspect, r.status("c").Monitor)
	assert.Equal(t, IsolatedOrHung, r.status("d").Verdict)
	assert.Equal(t, Unprovable, r.status("e").Verdict)
	assert.Contains(t, r.status("e").VerdictReason, "auth")
	assert.Equal(t, Healthy, r.status("a").Verdict)
	_, storm := r.e.Status()
	assert.False(t, storm.Paused, "4 of 9 hosts silent is within the 50 % limit")
	assert.Equal(t, []string{"agent-down"}, r.w.alertKinds("c"))
	assert.Equal(t, []string{"isolated-or-hung"}, r.w.alertKinds("d"))
	assert.Equal(t, []string{"would-fence"}, r.w.alertKinds("b"))
	r.w.mu.Lock()
	assert.Zero(t, r.w.probes["a"], "a healthy host is never probed")
	r.w.mu.Unlock()
}

func TestEngineHistorySurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	r := newRig(t, path, nil, "a", "b", "c")
	r.run(2*time.Second, "a", "b", "c")
	r.w.power["b"] = power.Off
	r.run(6*time.Second, "a", "c")
	require.Equal(t, HostDown, r.status("b").Verdict)

	recs, err := r.st.History(store.Query{Host: "b"})
	require.NoError(t, err)
	var seen []string
	ids := map[string]bool{}
	for _, rec := range recs {
		seen = append(seen, rec.Kind+":"+rec.From+">"+rec.To)
		if rec.Kind != "readiness" {
			ids[rec.CorrelationID] = true
		}
	}
	assert.Subset(t, seen, []string{"monitor:normal>suspect", "monitor:suspect>unreachable", "verdict:suspect>host-down", "would-fence:suspect>host-down"})
	delete(ids, "")
	assert.Len(t, ids, 1, "one incident, one correlation id: %v", ids)
	last := recs[len(recs)-1]
	var ev Evidence
	require.NoError(t, json.Unmarshal(last.Evidence, &ev))
	require.NotNil(t, ev.BMC)
	assert.Equal(t, power.Off, ev.BMC.Power, "the record carries the BMC answer")
	assert.False(t, *ev.ProbeAnswered)
	assert.Contains(t, r.w.alertKinds("b"), "would-fence")

	// Restart: a new engine on the same store keeps the hysteresis.
	r.e.Flush()
	memos, err := r.st.HostMemos()
	require.NoError(t, err)
	require.NoError(t, r.st.Close())
	r2 := newRig(t, path, memos, "a", "b", "c")
	// The agents kept running through the daemon's restart: their sequences
	// go on, and a beat from before the restart is stale after it.
	for h, n := range r.seq {
		r2.seq[h] = n
	}
	o, err := r2.e.Heartbeat(heartbeat.Heartbeat{Host: "a", BootID: "boot-a", Seq: r.seq["a"] - 1, AgentStart: t0})
	require.NoError(t, err)
	assert.Equal(t, IntakeStale, o.Intake, "a beat from before the restart replayed after it: %+v", o)
	assert.Equal(t, node.Unreachable, r2.status("b").Monitor)
	assert.Equal(t, HostDown, r2.status("b").Verdict)
	r2.run(2*time.Second, "a", "b", "c")
	assert.Equal(t, node.Unreachable, r2.status("b").Monitor, "two good heartbeats are not enough")
	r2.run(2*time.Second, "a", "b", "c")
	assert.Equal(t, node.Normal, r2.status("b").Monitor)
	recs, err = r2.st.History(store.Query{Host: "b", Kind: "monitor"})
	require.NoError(t, err)
	assert.Equal(t, "normal", recs[len(recs)-1].To)
	assert.Equal(t, "3 consecutive good heartbeats", recs[len(recs)-1].Reason)
}

func TestEngineStormGuard(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a", "b", "c", "d")
	r.run(2*time.Second, "a", "b", "c", "d")
	r.w.power["b"], r.w.power["c"], r.w.power["d"] = power.Off, power.Off, power.Off
	r.run(8*time.Second, "a")
	_, storm := r.e.Status()
	require.True(t, storm.Paused)
	assert.Contains(t, storm.Reason, "3 of 4 hosts silent")
	for _, h := range []string{"b", "c", "d"} {
		assert.Equal(t, Paused, r.status(h).Verdict, h)
		recs, err := r.st.History(store.Query{Host: h, Kind: "verdict"})
		require.NoError(t, err)
		for _, rec := range recs {
			assert.NotEqual(t, "host-down", rec.To, "%s: no host-down while the guard holds", h)
		}
	}
	recs, err := r.st.History(store.Query{Kind: "storm"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "paused", recs[0].To)

	// Heal two of them: the guard clears, and d is judged on fresh evidence.
	r.run(5*time.Second, "a", "b", "c")
	_, storm = r.e.Status()
	assert.False(t, storm.Paused)
	assert.Equal(t, HostDown, r.status("d").Verdict)
	recs, err = r.st.History(store.Query{Kind: "storm"})
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.Equal(t, "running", recs[1].To)
	assert.Equal(t, recs[0].CorrelationID, recs[1].CorrelationID)
	assert.Equal(t, []string{AlertStormPaused, AlertStormCleared}, r.w.alertKinds(""), "alert kinds say which way the guard went")
}

func TestEngineReferencesPause(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a", "b", "c")
	cfg := engineConfig("a", "b", "c")
	cfg.References = 2
	require.NoError(t, r.e.Reconfigure(cfg))
	r.w.refsOK = false
	r.run(2*time.Second, "a", "b", "c")
	_, storm := r.e.Status()
	assert.True(t, storm.Paused)
	assert.Contains(t, storm.Reason, "reference addresses")
	r.w.mu.Lock()
	r.w.refsOK = true
	r.w.mu.Unlock()
	r.run(2*time.Second, "a", "b", "c")
	_, storm = r.e.Status()
	assert.False(t, storm.Paused)
}

func TestEngineReadiness(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a", "b")
	r.w.ready["b"] = false
	r.run(31*time.Second, "a", "b")
	ra, rb := r.status("a").Readiness, r.status("b").Readiness
	require.NotNil(t, ra, "every host is checked within 30 s of start")
	require.NotNil(t, rb)
	assert.True(t, ra.Ready)
	assert.False(t, rb.Ready)
	assert.Equal(t, []string{"readiness"}, r.w.alertKinds("b"))
	assert.Empty(t, r.w.alertKinds("a"))
	recs, err := r.st.History(store.Query{Host: "b", Kind: "readiness"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "not-ready", recs[0].To)
	// The next check is 9–11 minutes later, not before.
	next := rb.At
	r.run(8*time.Minute, "a", "b")
	assert.Equal(t, next, r.status("b").Readiness.At)
	r.run(4*time.Minute, "a", "b")
	assert.True(t, r.status("b").Readiness.At.After(next))
	assert.Equal(t, []string{"readiness"}, r.w.alertKinds("b"), "no repeated alert while it stays not ready")
}

func TestEngineUnknownHost(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a")
	_, err := r.e.Heartbeat(heartbeat.Heartbeat{Host: "zz", BootID: "x", Seq: 1})
	assert.True(t, errors.Is(err, ErrUnknownHost))
	assert.Contains(t, err.Error(), `"zz"`)
}

func TestEngineEnforceHandsHostDownToTheFencer(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	clk := &fakeClock{now: t0}
	w := newWorld()
	hosts := []string{"a", "b", "c"}
	for _, h := range hosts {
		w.ready[h] = true
	}
	var mu sync.Mutex
	var got []DownEvent
	cfg := engineConfig(hosts...)
	cfg.Enforce = true
	e, err := NewEngine(cfg, Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w, History: st, Memos: st, Alerter: w,
		Log: zerolog.Nop(), Seed: 1, OnHostDown: func(ev DownEvent) { mu.Lock(); got = append(got, ev); mu.Unlock() }}, nil)
	require.NoError(t, err)
	r := &rig{t: t, e: e, clk: clk, w: w, st: st, seq: map[string]uint64{}, hosts: hosts}
	r.run(3*time.Second, hosts...)
	r.w.mu.Lock()
	r.w.power["b"] = power.Off
	r.w.mu.Unlock()
	r.run(6*time.Second, "a", "c")

	require.Equal(t, HostDown, r.status("b").Verdict)
	mu.Lock()
	require.Len(t, got, 1, "one verdict, one hand-over")
	assert.Equal(t, "b", got[0].Host)
	assert.Equal(t, "r1", got[0].Rack)
	assert.Equal(t, r.status("b").Incident, got[0].CorrelationID)
	assert.Contains(t, got[0].Reason, "off")
	mu.Unlock()
	recs, err := st.History(store.Query{Host: "b", Kind: "would-fence"})
	require.NoError(t, err)
	assert.Empty(t, recs, "enforce mode hands over instead of recording what it would do")
	assert.Equal(t, []string{"host-down"}, r.w.alertKinds("b"))
}

// TestEngineStormFlipIsRecordedBeforeItShows: the API never shows the
// guard paused or cleared while the history lacks the record (the cause
// of a flaky lab test: the record was written by the recorder a moment
// after Status already showed the flip).
func TestEngineStormFlipIsRecordedBeforeItShows(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a", "b", "c", "d")
	r.run(2*time.Second, "a", "b", "c", "d")
	r.w.power["b"], r.w.power["c"], r.w.power["d"] = power.Off, power.Off, power.Off
	step := func(beating ...string) {
		now := r.clk.Add(100 * time.Millisecond)
		if now.Sub(t0)%time.Second == 0 {
			for _, h := range beating {
				r.beat(h)
			}
		}
		r.e.Step(context.Background(), now) // no Flush: what a reader sees at once
		r.e.Wait()
	}
	flips, was := 0, false
	check := func() {
		_, storm := r.e.Status()
		if storm.Paused != was {
			flips, was = flips+1, storm.Paused
		}
		recs, err := r.st.History(store.Query{Kind: "storm"})
		require.NoError(t, err)
		require.Len(t, recs, flips, "status shows paused=%v after %d flip(s); the history has %d storm records", storm.Paused, flips, len(recs))
	}
	for range 80 {
		step("a")
		check()
	}
	require.Equal(t, 1, flips, "the guard paused")
	for range 50 {
		step("a", "b", "c")
		check()
	}
	require.Equal(t, 2, flips, "the guard cleared")
}

// The replay mark is written without a write per heartbeat: a new
// agent_start at the next memo flush, a seq that only moved once markEvery
// has passed, and every mark at shutdown (Flush).
func TestEngineReplayMarkIsCoalesced(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a")
	memo := func() store.HostMemo {
		t.Helper()
		m, err := r.st.HostMemos()
		require.NoError(t, err)
		return m["a"]
	}
	r.beat("a")
	r.e.flushMemos(false)
	assert.Equal(t, uint64(1), memo().Seq, "a new agent process is written at the next flush")
	assert.True(t, t0.Equal(memo().AgentStart))

	for range 5 {
		r.clk.Add(time.Second)
		r.beat("a")
	}
	r.e.flushMemos(false)
	assert.Equal(t, uint64(1), memo().Seq, "a seq that only moved waits for markEvery")

	r.clk.Add(markEvery)
	r.beat("a")
	r.e.flushMemos(false)
	assert.Equal(t, uint64(7), memo().Seq, "written once markEvery passed")

	r.beat("a")
	r.e.Flush()
	assert.Equal(t, uint64(8), memo().Seq, "shutdown writes every mark")

	// A new agent process is written at the next flush, markEvery or not.
	r.clk.Add(time.Second)
	o, err := r.e.Heartbeat(heartbeat.Heartbeat{Host: "a", BootID: "boot-a", Seq: 1, AgentStart: t0.Add(time.Minute)})
	require.NoError(t, err)
	require.True(t, o.Accepted(), "%+v", o)
	r.e.flushMemos(false)
	assert.Equal(t, uint64(1), memo().Seq)
	assert.True(t, t0.Add(time.Minute).Equal(memo().AgentStart))
}

// A stale heartbeat is alerted and recorded, at most once a minute per
// host and kind; a duplicate (a retransmission) is not. One sent before the
// newest taken is a replay (a warning); one sent after it means the newest
// was forged (critical).
func TestEngineStaleHeartbeatAlerts(t *testing.T) {
	r := newRig(t, filepath.Join(t.TempDir(), "s.db"), nil, "a")
	send := func(seq uint64, sent time.Time) Outcome {
		o, err := r.e.Heartbeat(heartbeat.Heartbeat{Host: "a", BootID: "boot-a", Seq: seq, AgentStart: t0, SentAt: sent})
		require.NoError(t, err)
		return o
	}
	count := func(kind string) int {
		n := 0
		for _, k := range r.w.alertKinds("a") {
			if k == kind {
				n++
			}
		}
		return n
	}
	require.True(t, send(1, t0.Add(-time.Second)).Accepted())
	require.True(t, send(2, t0).Accepted())
	assert.Equal(t, IntakeDuplicate, send(2, t0).Intake)
	assert.Zero(t, count(AlertHeartbeatReplayed)+count(AlertHeartbeatStale), "a retransmission is no attack")
	assert.Equal(t, IntakeStale, send(1, t0.Add(-time.Second)).Intake)
	assert.Equal(t, IntakeStale, send(1, t0.Add(-time.Second)).Intake)
	r.e.Flush()
	assert.Equal(t, 1, count(AlertHeartbeatReplayed), "rate-limited")
	assert.Zero(t, count(AlertHeartbeatStale))
	recs, err := r.st.History(store.Query{Host: "a", Kind: AlertHeartbeatReplayed})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Contains(t, recs[0].Reason, "seq 1 is not after 2")
	assert.Contains(t, r.status("a").LastRefused, "stale: seq 1")

	// Sent after the newest taken: that one was not the agent's.
	assert.Equal(t, IntakeStale, send(1, t0.Add(time.Second)).Intake)
	assert.Equal(t, 1, count(AlertHeartbeatStale), "a different kind is not held back by the replay's limit")
	r.e.Flush()
	recs, err = r.st.History(store.Query{Host: "a", Kind: AlertHeartbeatStale})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Contains(t, recs[0].Reason, "sent in the agent's name by someone else")

	r.clk.Add(staleAlertEvery)
	assert.Equal(t, IntakeStale, send(1, t0.Add(-time.Second)).Intake)
	assert.Equal(t, 2, count(AlertHeartbeatReplayed), "alerted again a minute later")
}
