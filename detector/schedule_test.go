package detector

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// stepPlain is Step as it was before the schedule and the silent tally:
// a snapshot of every host for the storm guard through Storm, then every
// host ticked. It is the reference the scheduled Step must match.
func (e *Engine) stepPlain(ctx context.Context, now time.Time) {
	e.hostsMu.RLock()
	order, cfg := e.order, e.cfg
	e.hostsMu.RUnlock()
	sh := make([]StormHost, 0, len(order))
	for _, h := range order {
		h.mu.Lock()
		sh = append(sh, StormHost{Rack: h.cfg.Rack, Silent: h.m.Silent(), SilentSince: h.m.SilentSince})
		h.mu.Unlock()
	}
	paused := e.updateStorm(ctx, cfg, now, func(refs References, wasPaused bool) StormState {
		return Storm(sh, refs, cfg.Storm, wasPaused, now)
	})
	for _, h := range order {
		h.mu.Lock()
		recs := e.tickHost(ctx, h, now, cfg, paused)
		h.mu.Unlock()
		e.record(recs)
	}
}

// eqWorld answers probes, BMC reads and readiness checks as the scenario
// sets them, identically for both engines.
type eqWorld struct {
	mu           sync.Mutex
	clk          *fakeClock
	answers      map[string]bool
	inconclusive map[string]bool
	power        map[string]power.State
	bmcErr       map[string]error
	ready        map[string]bool
	readyIn      map[string]time.Duration // a check is dated this far after it ran
	refsOK       bool
	alerts       []Alert
	downs        []DownEvent
	recs         []store.Record
}

func newEqWorld(clk *fakeClock) *eqWorld {
	return &eqWorld{clk: clk, answers: map[string]bool{}, inconclusive: map[string]bool{}, power: map[string]power.State{},
		bmcErr: map[string]error{}, ready: map[string]bool{}, readyIn: map[string]time.Duration{}, refsOK: true}
}

func (w *eqWorld) ProbeHost(_ context.Context, host string) (bool, bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.inconclusive[host] {
		return false, false, "no probe possible"
	}
	return w.answers[host], true, "tcp " + host
}

func (w *eqWorld) ProbeReferences(context.Context) (bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refsOK, ""
}

func (w *eqWorld) ReadPower(_ context.Context, host string) (power.State, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.bmcErr[host]; err != nil {
		return power.Unknown, err
	}
	return w.power[host], nil
}

func (w *eqWorld) CheckReadiness(_ context.Context, host string) Readiness {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Readiness{At: w.clk.Now().Add(w.readyIn[host]), Ready: w.ready[host], Summary: fmt.Sprint("ready ", w.ready[host])}
}

func (w *eqWorld) Alert(_ context.Context, a Alert) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.alerts = append(w.alerts, a)
}

func (w *eqWorld) Append(recs ...store.Record) ([]store.Record, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recs = append(w.recs, recs...)
	return recs, nil
}

func (w *eqWorld) PutHostMemos(map[string]store.HostMemo) error { return nil }

// twin is one of the two engines under comparison and what it has said.
type twin struct {
	e     *Engine
	clk   *fakeClock
	w     *eqWorld
	ids   map[string]string
	seenR int
	seenA int
	seenD int
}

func newTwin(t *testing.T, cfg EngineConfig) *twin {
	clk := &fakeClock{now: t0}
	w := newEqWorld(clk)
	e, err := NewEngine(cfg, Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w, History: w, Memos: w, Alerter: w,
		Log: zerolog.Nop(), Seed: 7, OnHostDown: func(ev DownEvent) { w.mu.Lock(); w.downs = append(w.downs, ev); w.mu.Unlock() }}, nil)
	require.NoError(t, err)
	return &twin{e: e, clk: clk, w: w, ids: map[string]string{}}
}

// id replaces a random correlation id by its order of appearance.
func (tw *twin) id(s string) string {
	if s == "" {
		return ""
	}
	if n, ok := tw.ids[s]; ok {
		return n
	}
	n := fmt.Sprintf("%s#%d", s[:strings.LastIndex(s, "-")], len(tw.ids))
	tw.ids[s] = n
	return n
}

// saying is what an engine has made observable.
type saying struct {
	Events []string // records, alerts and hand-overs to the fencer since the last call
	Hosts  []HostStatus
	Storm  StormStatus
}

// said is everything the engine has made observable since the last call,
// in a canonical order: records, alerts, hand-overs to the fencer, then
// every host's status and the storm guard's.
func (tw *twin) said() saying {
	tw.e.Flush()
	tw.w.mu.Lock()
	recs := append([]store.Record(nil), tw.w.recs[tw.seenR:]...)
	alerts := append([]Alert(nil), tw.w.alerts[tw.seenA:]...)
	downs := append([]DownEvent(nil), tw.w.downs[tw.seenD:]...)
	tw.seenR, tw.seenA, tw.seenD = len(tw.w.recs), len(tw.w.alerts), len(tw.w.downs)
	tw.w.mu.Unlock()
	// Readiness checks finish in any order; sort by everything but the
	// random correlation id before numbering the ids.
	rk := make([]string, len(recs))
	for i, r := range recs {
		rk[i] = fmt.Sprintf("record %s %s %s %s>%s %q %s", r.At.Format(time.RFC3339Nano), r.Host, r.Kind, r.From, r.To, r.Reason, r.Evidence)
	}
	ak := make([]string, len(alerts))
	for i, a := range alerts {
		ak[i] = fmt.Sprintf("alert %s %s %s %q", a.At.Format(time.RFC3339Nano), a.Host, a.Kind, a.Summary)
	}
	ri, ai := sortedIndex(rk), sortedIndex(ak)
	var out []string
	for _, i := range ri {
		out = append(out, rk[i]+" "+tw.id(recs[i].CorrelationID))
	}
	for _, i := range ai {
		out = append(out, ak[i]+" "+tw.id(alerts[i].CorrelationID))
	}
	for _, d := range downs {
		out = append(out, fmt.Sprintf("down %s %s %s %q %s", d.At.Format(time.RFC3339Nano), d.Host, d.Rack, d.Reason, tw.id(d.CorrelationID)))
	}
	hosts, storm := tw.e.Status()
	for i := range hosts {
		hosts[i].Incident = tw.id(hosts[i].Incident)
	}
	storm.CorrelationID = tw.id(storm.CorrelationID)
	return saying{Events: out, Hosts: hosts, Storm: storm}
}

func sortedIndex(keys []string) []int {
	idx := make([]int, len(keys))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	return idx
}

// agent is how one host heartbeats in the scenario.
type agent struct {
	last   time.Time // the latest heartbeat accepted
	boot   string
	start  time.Time
	seq    uint64
	silent bool
	fault  bool
	next   time.Time
}

// TestEngineStepMatchesTickingEveryHost drives two engines with the same
// random inputs, one stepping with Step (schedule and tally), one ticking
// every host with a storm snapshot as Step used to, and requires that they
// say exactly the same things at exactly the same times after every step:
// records, alerts, hand-overs to the fencer, every host's status and the
// storm guard.
func TestEngineStepMatchesTickingEveryHost(t *testing.T) {
	seeds, steps := 16, 600
	if testing.Short() {
		seeds = 4
	}
	var visits, plainVisits, early int
	for seed := range uint64(seeds) {
		v, pv, ea := runEquivalence(t, seed, steps)
		visits, plainVisits, early = visits+v, plainVisits+pv, early+ea
		if t.Failed() {
			return
		}
	}
	// The comparison means something only if hosts were skipped, and woken
	// early by what changed them.
	assert.Less(t, visits, plainVisits/2, "Step visited %d hosts, the plain loop %d", visits, plainVisits)
	assert.Positive(t, early, "no host was ever woken early")
}

func runEquivalence(t *testing.T, seed uint64, steps int) (visits, plainVisits, early int) {
	r := rand.New(rand.NewPCG(seed, 99))
	names := []string{}
	for i := range 8 + r.IntN(16) {
		names = append(names, fmt.Sprintf("h%02d", i))
	}
	racks := []string{"r0", "r1", "r2", ""}
	hostCfg := map[string]HostConfig{}
	newHost := func(n string) {
		ri := time.Duration(0)
		if r.IntN(3) > 0 {
			// At most 4 ns: interval/5 is 0, so completing a check draws no
			// jitter and both engines stay in step whatever order their
			// checks finish in.
			ri = time.Duration(1 + r.IntN(4))
		}
		hostCfg[n] = HostConfig{Name: n, Rack: racks[r.IntN(len(racks))], ReadinessInterval: ri}
	}
	for _, n := range names {
		newHost(n)
	}
	config := func() EngineConfig {
		var hc []HostConfig
		for _, n := range names {
			hc = append(hc, hostCfg[n])
		}
		return EngineConfig{Hosts: hc, Tick: 50 * time.Millisecond,
			Monitor: MonitorConfig{
				Thresholds:         Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 2 + r.IntN(2), ProbeTimeout: 500 * time.Millisecond},
				RecoveryHeartbeats: 1 + r.IntN(3), Settle: time.Duration(r.IntN(3)) * time.Second},
			Storm:      StormGuard{MaxFraction: 0.2 + 0.4*r.Float64(), MaxRackFraction: map[string]float64{"r1": 0.5, "": 0.7}, Window: time.Duration(2+r.IntN(20)) * time.Second},
			References: 2 * r.IntN(2),
			Enforce:    r.IntN(2) == 0,
		}
	}
	cfg := config()
	a, b := newTwin(t, cfg), newTwin(t, cfg)
	both := func(f func(tw *twin)) { f(a); f(b) }
	agents := map[string]*agent{}
	now := t0
	agentFor := func(n string) *agent {
		if agents[n] == nil {
			agents[n] = &agent{boot: "boot-1", start: now, next: now.Add(time.Duration(r.IntN(1000)) * time.Millisecond)}
		}
		return agents[n]
	}
	world := func(n string) {
		p := power.State(r.IntN(5))
		ans, inc, ready := r.IntN(3) == 0, r.IntN(10) == 0, r.IntN(4) > 0
		var bmcErr error
		if r.IntN(5) == 0 {
			bmcErr = []error{power.ErrAuth, errors.New("timeout")}[r.IntN(2)]
		}
		in := time.Duration(r.IntN(8000)) * time.Millisecond
		both(func(tw *twin) {
			tw.w.mu.Lock()
			tw.w.power[n], tw.w.answers[n], tw.w.inconclusive[n], tw.w.bmcErr[n] = p, ans, inc, bmcErr
			tw.w.ready[n], tw.w.readyIn[n] = ready, in
			tw.w.mu.Unlock()
		})
	}
	for _, n := range names {
		world(n)
	}
	ctx := context.Background()
	prevStep := now
	for step := range steps {
		switch x := r.IntN(200); {
		case x < 4:
			now = now.Add(time.Duration(r.IntN(4000)) * time.Millisecond)
		case x < 6:
			now = now.Add(time.Duration(r.IntN(30)) * time.Second)
		case x < 8:
			now = now.Add(-time.Duration(r.IntN(5000)) * time.Millisecond) // the clock steps back
		case x < 20:
			now = now.Add(time.Duration(1+r.IntN(49)) * time.Millisecond)
		default:
			now = now.Add(50 * time.Millisecond)
		}
		if r.IntN(2000) == 0 {
			// Back to before the daemon started: every heartbeat from now
			// on predates WatchSince, which Tick never takes as quiet.
			now = now.Add(-time.Hour)
		}
		both(func(tw *twin) { tw.clk.mu.Lock(); tw.clk.now = now; tw.clk.mu.Unlock() })

		for _, n := range names {
			ag := agentFor(n)
			if r.IntN(map[bool]int{false: 400, true: 60}[ag.silent]) == 0 {
				ag.silent = !ag.silent
			}
			if r.IntN(150) == 0 {
				world(n)
			}
			if ag.next.Sub(now) > 1200*time.Millisecond {
				ag.next = now // the daemon's clock stepped back; the agent's did not
			}
			if ag.silent || now.Before(ag.next) {
				continue
			}
			ag.next = now.Add(time.Duration(800+r.IntN(400)) * time.Millisecond)
			switch x := r.IntN(100); {
			case x < 3:
				ag.boot = fmt.Sprintf("boot-%d", step) // rebooted
				ag.start, ag.seq = now, 0
			case x < 5:
				ag.start, ag.seq = now, 0 // agent restarted
			case x < 10:
				ag.fault = !ag.fault
			}
			seq, sent := ag.seq+1, now
			switch x := r.IntN(100); {
			case x < 3 && ag.seq > 0:
				seq = ag.seq // duplicate
			case x < 6:
				sent = now.Add(-20 * time.Second) // delivered long after it was sent
			}
			ag.seq = max(ag.seq, seq)
			hb := heartbeat.Heartbeat{Host: n, BootID: ag.boot, Seq: seq, AgentStart: ag.start, SentAt: sent, AgentVersion: "t",
				Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: !ag.fault}}}
			okA, errA := a.e.Heartbeat(hb)
			okB, errB := b.e.Heartbeat(hb)
			require.Equal(t, errB, errA)
			require.Equal(t, okB, okA, "seed %d step %d: heartbeat %+v", seed, step, hb)
			if okA.Accepted() {
				ag.last = now
			}
		}
		if r.IntN(100) == 0 {
			both(func(tw *twin) { tw.w.mu.Lock(); tw.w.refsOK = !tw.w.refsOK; tw.w.mu.Unlock() })
		}
		if r.IntN(150) == 0 {
			switch r.IntN(4) {
			case 0:
				if len(names) > 2 {
					i := r.IntN(len(names))
					names = append(names[:i], names[i+1:]...)
				}
			case 1:
				n := fmt.Sprintf("h%02d", 50+step%50)
				if _, ok := hostCfg[n]; !ok {
					newHost(n)
					names = append(names, n)
					world(n)
				}
			case 2:
				n := names[r.IntN(len(names))]
				hc := hostCfg[n]
				hc.Rack = racks[r.IntN(len(racks))]
				hostCfg[n] = hc
			}
			cfg = config()
			both(func(tw *twin) { require.NoError(t, tw.e.Reconfigure(cfg)) })
		}

		at := now
		for _, n := range names {
			// Land on the exact nanosecond a silent host's heartbeat goes
			// overdue, or the one before.
			ag := agentFor(n)
			edge := ag.last.Add(cfg.Monitor.Window() + time.Duration(r.IntN(2)))
			if ag.silent && edge.After(prevStep) && !edge.After(now) && r.IntN(2) == 0 {
				at = edge
				break
			}
		}
		if r.IntN(60) == 0 {
			// Step's now lags the heartbeats (a stalled ticker), possibly
			// by more than a window.
			at = now.Add(-time.Duration(r.IntN(6000)) * time.Millisecond)
			if r.IntN(2) == 0 && at.Before(prevStep) {
				at = prevStep
			}
		}
		prevStep = at
		a.e.Step(ctx, at)
		b.e.stepPlain(ctx, at)
		a.e.Wait()
		b.e.Wait()
		require.Equal(t, b.said(), a.said(), "seed %d step %d at %s", seed, step, at.Format(time.RFC3339Nano))
		plainVisits += len(names)
	}
	return a.e.sched.visits, plainVisits, a.e.sched.early
}

// TestMonitorQuietMeansTickDoesNothing: whenever Quiet says now is inside
// the span, Tick returns an empty Step and leaves the monitor as it was,
// and the span is exactly the heartbeat ± one window of the old fast path.
// Tick's NeedProbe/NeedBMC are Decide's after judging, as they were when
// Tick called Decide a second time.
func TestMonitorQuietMeansTickDoesNothing(t *testing.T) {
	cfg := mcfg()
	window := cfg.Window()
	quietSeen := 0
	for seed := uint64(0); seed < 100; seed++ {
		r := rand.New(rand.NewPCG(seed, 3))
		m := NewMonitor(t0)
		now := t0
		var pending []time.Time
		for step := 0; step < 300; step++ {
			now = now.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
			if r.IntN(40) == 0 {
				now = now.Add(-time.Duration(r.IntN(10)) * time.Second)
			}
			switch r.IntN(5) {
			case 0, 1:
				m.Heartbeat(Beat{At: now.Add(time.Duration(r.IntN(3)-1) * time.Duration(r.IntN(4)) * time.Second),
					BootID: []string{"a", "b"}[r.IntN(2)], Seq: m.Seq + 1, AgentStart: t0}, cfg)
			case 2:
				if len(pending) > 0 {
					m.ProbeResult(pending[r.IntN(len(pending))], now, r.IntN(2) == 0, "")
				}
			case 3:
				if len(pending) > 0 {
					m.BMCResult(pending[r.IntN(len(pending))], BMCReading{At: now, Reachable: true, Power: power.State(r.IntN(5))})
				}
			}
			from, until, ok := m.Quiet(cfg)
			age := now.Sub(m.LastHeartbeat)
			old := m.SilentSince.IsZero() && m.Verdict == Healthy && m.PrevBootID == "" &&
				!m.LastHeartbeat.Before(m.WatchSince) && age <= window && age >= -window
			in := ok && !now.Before(from) && !now.After(until)
			require.Equal(t, old, in, "seed %d step %d: Quiet disagrees with the fast path it replaced", seed, step)
			before := *m
			st := m.Tick(now, cfg, r.IntN(8) == 0)
			if in {
				quietSeen++
				require.Equal(t, Step{}, st, "seed %d step %d", seed, step)
				require.Equal(t, before, *m, "seed %d step %d: a quiet Tick changed the monitor", seed, step)
				continue
			}
			if !m.SilentSince.IsZero() {
				d := m.decide(now, cfg)
				require.Equal(t, d.NeedProbe, st.NeedProbe, "seed %d step %d", seed, step)
				require.Equal(t, d.NeedBMC, st.NeedBMC, "seed %d step %d", seed, step)
				if st.NeedProbe || st.NeedBMC {
					pending = append(pending, st.SilentSince)
				}
			} else {
				require.False(t, st.NeedProbe || st.NeedBMC, "seed %d step %d", seed, step)
			}
		}
	}
	assert.Greater(t, quietSeen, 1000, "the quiet case was exercised")
}

// TestEngineStormTallyFollowsHosts: the silent tally Step feeds the storm
// guard from gives the same counts as Storm over a snapshot of every host,
// through silences, recoveries, agent-down and reconfigured racks.
func TestEngineStormTallyFollowsHosts(t *testing.T) {
	r := newRig(t, t.TempDir()+"/s.db", nil, "a", "b", "c", "d", "e", "x", "y")
	r.w.mu.Lock()
	r.w.answers["c"] = true // c's agent dies with the host alive: agent-down is not silent
	r.w.power["b"], r.w.power["d"] = power.Off, power.On
	r.w.mu.Unlock()
	check := func(what string) {
		t.Helper()
		now := r.clk.Now()
		r.e.stepMu.Lock()
		defer r.e.stepMu.Unlock()
		g := StormGuard{Window: 2 * time.Second}
		all, racks := r.e.stormCounts(g, now)
		var sh []StormHost
		for _, h := range r.e.order {
			h.mu.Lock()
			sh = append(sh, StormHost{Rack: h.cfg.Rack, Silent: h.m.Silent(), SilentSince: h.m.SilentSince})
			h.mu.Unlock()
		}
		wantAll, wantRacks := stormCountsOf(sh, g, now)
		assert.Equal(t, wantAll, all, what)
		assert.Equal(t, wantRacks, append([]rackCount(nil), racks...), what)
	}
	r.run(2*time.Second, "a", "b", "c", "d", "e", "x", "y")
	check("all beating")
	require.Zero(t, len(r.e.sum.silent))
	r.run(5*time.Second, "a", "e", "x", "y")
	check("b, c, d silent")
	require.Equal(t, AgentDown, r.status("c").Verdict)
	assert.Len(t, r.e.sum.silent, 2, "b and d; c answered a probe")
	cfg := engineConfig("a", "b", "c", "d", "e", "f", "x", "y")
	cfg.Hosts[1].Rack, cfg.Hosts[5].Rack = "r2", "r3"
	require.NoError(t, r.e.Reconfigure(cfg))
	check("b moved to r2, f added")
	r.run(4*time.Second, "a", "b", "c", "e", "x", "y")
	check("b back, f never heard from")
	assert.Len(t, r.e.sum.silent, 2, "d and f")
	require.NoError(t, r.e.Reconfigure(engineConfig("a", "c", "e", "x", "y")))
	check("b, d and f removed")
	assert.Empty(t, r.e.sum.silent)
	r.run(4*time.Second, "a", "x", "y")
	check("c and e stopped; c still answers probes")
	assert.Len(t, r.e.sum.silent, 1, "e")
}

// stormCountsOf is Storm's counting, for comparison.
func stormCountsOf(hosts []StormHost, g StormGuard, now time.Time) (stormCount, []rackCount) {
	all := stormCount{}
	byRack := map[string]*stormCount{}
	for _, h := range hosts {
		if byRack[h.Rack] == nil {
			byRack[h.Rack] = &stormCount{}
		}
		all.total++
		byRack[h.Rack].total++
		if h.Silent {
			all.addSilent(h.SilentSince, g, now)
			byRack[h.Rack].addSilent(h.SilentSince, g, now)
		}
	}
	var racks []rackCount
	for n, c := range byRack {
		racks = append(racks, rackCount{name: n, stormCount: *c})
	}
	sort.Slice(racks, func(i, j int) bool { return racks[i].name < racks[j].name })
	return all, racks
}

func TestWakeHeapPopsInTimeOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var q wakeHeap
	var want []time.Time
	for i := range 500 {
		at := t0.Add(time.Duration(r.IntN(100)) * time.Millisecond)
		q.push(wakeEntry{at: at, idx: int32(i)})
		want = append(want, at)
		if r.IntN(3) == 0 {
			sort.Slice(want, func(i, j int) bool { return want[i].Before(want[j]) })
			assert.Equal(t, want[0], q.pop().at)
			want = want[1:]
		}
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Before(want[j]) })
	for _, w := range want {
		require.Equal(t, w, q.pop().at)
	}
	assert.Empty(t, q)
}

// fresh builds its reason without fmt; the text must not change.
func TestFreshReasonText(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	window := 3 * time.Second
	for range 2000 {
		age := time.Duration(r.Int64N(int64(2*window))) - window
		if r.IntN(10) == 0 {
			age = time.Duration(r.IntN(3)-1) * time.Duration(r.IntN(1000)) // ns around zero
		}
		want := fmt.Sprintf("last heartbeat %s ago (window %s)", age, window)
		if age < 0 {
			want = fmt.Sprintf("last heartbeat dated %s in the future, within the %s window", -age, window)
		}
		require.Equal(t, want, fresh(Signals{}, age, window).Reason)
	}
}
