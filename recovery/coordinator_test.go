package recovery

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

type fakeCluster struct {
	mu    sync.Mutex
	hosts map[string]daemon.HostStatus
	storm detector.StormStatus
}

func (c *fakeCluster) Host(name string) (daemon.HostStatus, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.hosts[name]
	if !ok {
		return daemon.HostStatus{}, errors.New("unknown host")
	}
	return h, nil
}

func (c *fakeCluster) Status() daemon.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := daemon.Status{Storm: c.storm}
	for _, name := range []string{"a", "b", "c"} {
		if h, ok := c.hosts[name]; ok {
			st.Hosts = append(st.Hosts, h)
		}
	}
	return st
}

func (c *fakeCluster) SetAdminState(host string, st node.AdminState, _ string) (store.Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hosts[host]
	h.Admin = st
	c.hosts[host] = h
	return store.Record{}, nil
}

type fakeEvac struct {
	mu   sync.Mutex
	reqs []EvacuationRequest
}

func (e *fakeEvac) Evacuate(_ context.Context, req EvacuationRequest) (EvacuationReport, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	replayed := false
	for _, r := range e.reqs {
		replayed = replayed || r.TaskID == req.TaskID
	}
	e.reqs = append(e.reqs, req)
	if req.Started != nil && !replayed {
		req.Started()
	}
	return EvacuationReport{TaskID: req.TaskID, State: "done", Running: []VMOutcome{{Name: "vm1", Host: "b"}},
		Replayed: replayed}, nil
}

type rig struct {
	c      *Coordinator
	cl     *fakeCluster
	st     *store.Store
	ev     *fakeEvac
	mu     sync.Mutex
	fences []string
	alerts []string
	verify bool
	manual bool // policy evacuate: false
	// byAgent: a verified fence is proven by the agent-drain level
	// (3 domains stopped); trust is the policy's trust_agent_drain.
	byAgent, trust bool
	now            time.Time
	reg            *prometheus.Registry
	locks          map[string]string // host → owner
	owners         []string          // every owner that took a lock
	// iso and levels, when set, are the hosts' on_isolation policy and
	// fence levels; plans are the plans Fence was given.
	iso    detector.IsolationPolicy
	levels []fencer.LevelPlan
	plans  []fencer.Plan
}

func newRig(t *testing.T, verify bool) *rig {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	r := &rig{st: st, ev: &fakeEvac{}, verify: verify, now: t0, cl: &fakeCluster{hosts: map[string]daemon.HostStatus{}},
		reg: prometheus.NewRegistry()}
	m, err := NewMetrics(r.reg)
	require.NoError(t, err)
	for _, h := range []string{"a", "b", "c"} {
		r.cl.hosts[h] = daemon.HostStatus{HostStatus: detector.HostStatus{Name: h, Rack: "r1", Verdict: detector.HostDown,
			Monitor: node.Unreachable, LastHeartbeat: t0.Add(-10 * time.Second)}}
	}
	r.c, err = New(Config{Cluster: "test"}, Deps{
		Cluster: r.cl, Journal: st, Evacuator: r.ev, Log: zerolog.Nop(), Metrics: m,
		Lock: func(host, owner string) (func(), error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if who := r.locks[host]; who != "" {
				return nil, errors.New("held by " + who)
			}
			if r.locks == nil {
				r.locks = map[string]string{}
			}
			r.locks[host] = owner
			r.owners = append(r.owners, owner)
			return func() { r.mu.Lock(); delete(r.locks, host); r.mu.Unlock() }, nil
		},
		Now: func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now },
		Setup: func(host string) (FenceSetup, error) {
			r.mu.Lock()
			manual, iso, levels, trust := r.manual, r.iso, r.levels, r.trust
			r.mu.Unlock()
			if levels == nil {
				levels = []fencer.LevelPlan{{Name: "ipmi", Timeout: time.Second}}
			}
			return FenceSetup{Plan: fencer.Plan{Action: fencer.ActionOff, Levels: levels}, Evacuate: !manual, TrustAgentDrain: trust, Isolation: iso,
				Limits: fencer.Limits{MaxConcurrent: 2, MaxConcurrentPerRack: 1, MinInterval: 0}}, nil
		},
		Fence: func(_ context.Context, p fencer.Plan) fencer.Result {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.fences = append(r.fences, p.Host)
			r.plans = append(r.plans, p)
			r.now = r.now.Add(40 * time.Millisecond)
			if r.verify && r.byAgent {
				return fencer.Result{Host: p.Host, Verified: true, Level: LevelAgentDrain,
					Attempts: []fencer.Attempt{{Level: LevelAgentDrain, Try: 1, Elapsed: 30 * time.Millisecond, Verified: true, Reads: 1, Stopped: 3}}}
			}
			if r.verify {
				return fencer.Result{Host: p.Host, Verified: true, Level: "ipmi",
					Attempts: []fencer.Attempt{{Level: "ipmi", Try: 1, Elapsed: 30 * time.Millisecond, Verified: true, Reads: 1}}}
			}
			return fencer.Result{Host: p.Host, Reason: "ipmi: 1 attempts, last: authentication refused by BMC",
				Attempts: []fencer.Attempt{{Level: "ipmi", Try: 1, Elapsed: 10 * time.Millisecond, Err: "authentication refused by BMC"}}}
		},
		Alert: func(ev alert.Event) { r.mu.Lock(); r.alerts = append(r.alerts, ev.Host+":"+ev.Type); r.mu.Unlock() },
	})
	require.NoError(t, err)
	return r
}

func (r *rig) incident(t *testing.T, host string) {
	t.Helper()
	retry, reason := r.c.incident(context.Background(), detector.DownEvent{Host: host, Rack: "r1", CorrelationID: host + "-1", Reason: "power off"})
	assert.True(t, retry.IsZero(), "not deferred: %s", reason)
}

func TestVerifiedFenceDrainsAndEvacuates(t *testing.T) {
	r := newRig(t, true)
	r.incident(t, "a")
	assert.Equal(t, []string{"a"}, r.fences)
	f, err := r.st.Fences()
	require.NoError(t, err)
	assert.Equal(t, store.FenceVerified, f["a"].State)
	assert.Equal(t, "ipmi", f["a"].Level)
	assert.Equal(t, "evac-a-a-1", f["a"].Evacuation)
	h, _ := r.cl.Host("a")
	assert.Equal(t, node.Drained, h.Admin)
	require.Len(t, r.ev.reqs, 1)
	assert.Contains(t, r.ev.reqs[0].Fence, "ipmi verified power off")
	assert.Equal(t, []string{"a:" + alert.FenceStarted, "a:" + alert.FenceSucceeded, "a:" + alert.EvacuationStarted, "a:" + alert.EvacuationFinished}, r.alerts)

	// The same verdict again (a flap, or a restarted daemon): no second
	// fence, the same evacuation task resumed.
	r.incident(t, "a")
	assert.Equal(t, []string{"a"}, r.fences, "a proven host is never fenced twice for one silence")
	require.Len(t, r.ev.reqs, 2)
	assert.Equal(t, r.ev.reqs[0].TaskID, r.ev.reqs[1].TaskID)
	assert.Len(t, r.alerts, 4, "the replayed, finished evacuation alerts nothing again: %v", r.alerts)
}

func TestFailedFenceEvacuatesNothing(t *testing.T) {
	r := newRig(t, false)
	r.incident(t, "a")
	f, err := r.st.Fences()
	require.NoError(t, err)
	assert.Equal(t, store.FenceFailed, f["a"].State)
	assert.Contains(t, f["a"].Reason, "authentication refused")
	assert.Empty(t, r.ev.reqs, "nothing is evacuated without a verified fence")
	h, _ := r.cl.Host("a")
	assert.Equal(t, node.Enabled, h.Admin, "not drained: nothing was proven")
	assert.Equal(t, []string{"a:" + alert.FenceStarted, "a:" + alert.FenceFailed}, r.alerts)
	recs, err := r.st.History(store.Query{Host: "a", Kind: "fence"})
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.Equal(t, "failed", recs[1].To)
	assert.Contains(t, recs[1].Reason, "authentication refused")
}

func TestNoFenceWhenTheVerdictOrStormChanged(t *testing.T) {
	for name, change := range map[string]func(c *fakeCluster){
		"heartbeat came back": func(c *fakeCluster) {
			h := c.hosts["a"]
			h.Verdict = detector.Healthy
			c.hosts["a"] = h
		},
		"storm guard paused": func(c *fakeCluster) { c.storm = detector.StormStatus{Paused: true, Reason: "2 of 3 hosts silent"} },
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, true)
			change(r.cl)
			r.incident(t, "a")
			assert.Empty(t, r.fences)
			assert.Empty(t, r.ev.reqs)
			recs, err := r.st.History(store.Query{Host: "a", Kind: "fence-skipped"})
			require.NoError(t, err)
			require.Len(t, recs, 1)
			assert.Contains(t, recs[0].Reason, "no longer holds")
		})
	}
}

func TestOldProofDoesNotCoverANewSilence(t *testing.T) {
	r := newRig(t, true)
	r.incident(t, "a")
	// The host came back (heartbeat after the fence), then died again.
	r.cl.mu.Lock()
	h := r.cl.hosts["a"]
	h.LastHeartbeat = t0.Add(time.Minute)
	r.cl.hosts["a"] = h
	r.cl.mu.Unlock()
	r.mu.Lock()
	r.now = t0.Add(2 * time.Minute)
	r.mu.Unlock()
	r.incident(t, "a")
	assert.Equal(t, []string{"a", "a"}, r.fences, "a new silence needs a new proof")
}

func TestGateDefersASecondFenceInTheRack(t *testing.T) {
	r := newRig(t, true)
	// Hold host a's fence in flight by admitting it by hand.
	adm := r.c.gate.Admit(fencer.Request{Host: "a", Rack: "r1", Limits: fencer.Limits{MaxConcurrent: 2, MaxConcurrentPerRack: 1}}, t0)
	require.True(t, adm.OK)
	retry, reason := r.c.incident(context.Background(), detector.DownEvent{Host: "b", Rack: "r1", CorrelationID: "b-1"})
	assert.Contains(t, reason, "rack r1")
	assert.Equal(t, t0.Add(time.Second), retry, "deferred, looked at again after Config.Retry")
	assert.Empty(t, r.fences, "deferred, not fenced")
}

func TestHostDownRunsThroughRun(t *testing.T) {
	r := newRig(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.c.Run(ctx) }()
	r.c.HostDown(detector.DownEvent{Host: "b", Rack: "r1", CorrelationID: "b-1", Reason: "power off"})
	require.Eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.fences) == 1
	}, 5*time.Second, 5*time.Millisecond)
	cancel()
	<-done
	f, err := r.st.Fences()
	require.NoError(t, err)
	assert.Equal(t, store.FenceVerified, f["b"].State)
}

func TestManualPolicyNeverEvacuatesEvenOnARepeatedVerdict(t *testing.T) {
	r := newRig(t, true)
	r.manual = true
	r.incident(t, "a")
	r.incident(t, "a")
	assert.Equal(t, []string{"a"}, r.fences)
	assert.Empty(t, r.ev.reqs, "evacuate: false means an operator decides, whatever the verdict does")
	h, _ := r.cl.Host("a")
	assert.Equal(t, node.Drained, h.Admin)
}

func TestMetricsCountFencesLevelsAndEvacuationsOnce(t *testing.T) {
	r := newRig(t, true)
	r.incident(t, "a")
	r.incident(t, "a") // repeated verdict: the finished evacuation only reports again
	r.mu.Lock()
	r.verify = false
	r.mu.Unlock()
	r.incident(t, "b")

	want := `
# HELP chime_fence_evacuated_vms_total VMs of evacuations, by result: running (on a new host), failed (tried, not running), not_moved (not evacuable or no capacity).
# TYPE chime_fence_evacuated_vms_total counter
chime_fence_evacuated_vms_total{result="failed"} 0
chime_fence_evacuated_vms_total{result="not_moved"} 0
chime_fence_evacuated_vms_total{result="running"} 1
# HELP chime_fence_evacuations_total Evacuations finished, by state: done, partial, failed, error (did not run).
# TYPE chime_fence_evacuations_total counter
chime_fence_evacuations_total{state="done"} 1
# HELP chime_fence_fence_attempts_total Fence level attempts, by level (ipmi, redfish, agent-drain) and result (verified, failed).
# TYPE chime_fence_fence_attempts_total counter
chime_fence_fence_attempts_total{level="ipmi",result="failed"} 1
chime_fence_fence_attempts_total{level="ipmi",result="verified"} 1
# HELP chime_fence_fences_in_flight Fences running now.
# TYPE chime_fence_fences_in_flight gauge
chime_fence_fences_in_flight 0
# HELP chime_fence_fences_total Fences run, by result: verified (a level read the host back as fenced) or failed (every level failed).
# TYPE chime_fence_fences_total counter
chime_fence_fences_total{result="failed"} 1
chime_fence_fences_total{result="verified"} 1
`
	require.NoError(t, testutil.GatherAndCompare(r.reg, strings.NewReader(want),
		"chime_fence_evacuated_vms_total", "chime_fence_evacuations_total", "chime_fence_fence_attempts_total",
		"chime_fence_fences_in_flight", "chime_fence_fences_total"))
	// Durations come from the injected clock (the fake fence takes 40 ms)
	// and the attempt's own Elapsed.
	n, err := testutil.GatherAndCount(r.reg, "chime_fence_fence_duration_seconds", "chime_fence_fence_attempt_duration_seconds")
	require.NoError(t, err)
	assert.Equal(t, 4, n, "a series per result for the fence and per level×result for attempts")
	mfs, err := r.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "chime_fence_fence_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			assert.InDelta(t, 0.04, m.GetHistogram().GetSampleSum(), 1e-9, "fence duration of %v", m.GetLabel())
		}
	}
}

func TestIncidentWaitsForTheHostLock(t *testing.T) {
	r := newRig(t, true)
	r.locks = map[string]string{"b": "task T9 (drain by bob)"}
	ctx := context.Background()
	r.c.HostDown(detector.DownEvent{Host: "b", Rack: "r1", CorrelationID: "b-1", Reason: "power off"})
	r.c.dispatch(ctx)
	r.c.Wait()
	assert.Empty(t, r.fences, "an operator's task holds b: no fence under it")
	r.c.mu.Lock()
	p, queued := r.c.pending["b"]
	reason := r.c.deferred["b"]
	r.c.mu.Unlock()
	require.True(t, queued, "deferred, not dropped")
	assert.Equal(t, t0.Add(time.Second), p.retryAt)
	assert.Contains(t, reason, "held by task T9 (drain by bob)")

	r.mu.Lock()
	delete(r.locks, "b")
	r.now = r.now.Add(2 * time.Second)
	r.mu.Unlock()
	r.c.dispatch(ctx)
	r.c.Wait()
	assert.Equal(t, []string{"b"}, r.fences)
	assert.Equal(t, []string{lockOwner}, r.owners)
	assert.Empty(t, r.locks, "released after the incident")
}

func TestVerifiedSummaryNamesTheLevelsThatFailedFirst(t *testing.T) {
	assert.Equal(t, "", failedLevels([]fencer.Attempt{{Level: "ipmi", Verified: true}}))
	assert.Equal(t, "ipmi failed: bmc-auth-failed: RAKP2 mismatch; agent-drain failed: timeout",
		failedLevels([]fencer.Attempt{
			{Level: "ipmi", Try: 1, Err: "bmc-unreachable"},
			{Level: "ipmi", Try: 2, Err: "bmc-auth-failed: RAKP2 mismatch"},
			{Level: "agent-drain", Try: 1, Err: "timeout"},
			{Level: "redfish", Try: 1, Verified: true},
		}), "each failed level once, with its last error, in order")
}

// TestResumeAfterACrashBetweenProofAndDrainResumesAtOnce: the journal's
// proof is enough; the evacuation does not wait for the other hosts to be
// judged (the plan samples its candidates itself).
func TestResumeAfterACrashBetweenProofAndDrainResumesAtOnce(t *testing.T) {
	r := newRig(t, true)
	// The daemon died right after journaling the proof: host a is still
	// enabled, and after the restart nobody has been judged yet.
	require.NoError(t, r.st.PutFence(store.FenceRecord{Host: "a", CorrelationID: "a-1", State: store.FenceVerified, Level: "ipmi",
		Started: t0, Finished: t0}))
	r.set("a", func(h *daemonHost) {
		h.Admin, h.Monitor, h.LastHeartbeat = node.Enabled, node.Unknown, t0.Add(-time.Minute)
	})
	r.set("b", func(h *daemonHost) { h.Monitor = node.Unknown })
	r.set("c", func(h *daemonHost) { h.Monitor = node.Normal })
	c, err := New(Config{Cluster: "test", Retry: time.Millisecond}, r.c.deps)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	require.Eventually(t, func() bool { h, _ := r.cl.Host("a"); return h.Admin == node.Drained }, 5*time.Second, time.Millisecond,
		"the lost drain is redone on resume")
	require.Eventually(t, func() bool { r.ev.mu.Lock(); defer r.ev.mu.Unlock(); return len(r.ev.reqs) == 1 }, 5*time.Second, time.Millisecond)
	assert.Equal(t, "evac-a-a-1", r.ev.reqs[0].TaskID, "resumed while host b is still not judged")
	h, _ := r.cl.Host("b")
	assert.Equal(t, node.Unknown, h.Monitor)
	assert.Empty(t, r.fences, "resumed, never fenced again")
	recs, err := r.st.History(store.Query{Host: "a", Kind: "fence"})
	require.NoError(t, err)
	require.Len(t, recs, 1, "the lost history record of the proof is written")
	assert.Equal(t, "verified", recs[0].To)
	assert.Contains(t, recs[0].Reason, "ipmi verified power off")
}

func TestAFenceStopsBetweenLevelsWhenTheHostHeartbeatsAgain(t *testing.T) {
	r := newRig(t, true)
	var answers []error
	deps := r.c.deps
	deps.Fence = func(_ context.Context, p fencer.Plan) fencer.Result {
		require.NotNil(t, p.StillNeeded, "an automatic fence can be stopped between levels")
		answers = append(answers, p.StillNeeded()) // level 1 failed; still silent
		r.set("a", func(h *daemonHost) { h.LastHeartbeat = t0.Add(time.Second) })
		answers = append(answers, p.StillNeeded()) // it came back
		return fencer.Result{Host: p.Host, Reason: "ipmi: timeout; fence stopped before redfish: no longer needed"}
	}
	c, err := New(Config{Cluster: "test"}, deps)
	require.NoError(t, err)
	retry, _ := c.incident(context.Background(), detector.DownEvent{Host: "a", Rack: "r1", CorrelationID: "a-1", Reason: "power off"})
	assert.True(t, retry.IsZero())
	require.Len(t, answers, 2)
	assert.NoError(t, answers[0])
	require.Error(t, answers[1])
	assert.Contains(t, answers[1].Error(), "a heartbeated again")

	r.cl.mu.Lock()
	r.cl.storm = detector.StormStatus{Paused: true, Reason: "4 of 6 hosts silent"}
	r.cl.mu.Unlock()
	r.set("a", func(h *daemonHost) { h.LastHeartbeat = t0.Add(-time.Minute) })
	assert.ErrorContains(t, c.stillNeeded("a", t0)(), "storm guard paused: 4 of 6 hosts silent")

	out, err := r.c.FenceNow(context.Background(), "b", "T1", "alice", "")
	require.NoError(t, err, out)
}

type evacFunc func(ctx context.Context, req EvacuationRequest) (EvacuationReport, error)

// Evacuate runs f; like the real one, it says the task started unless f
// replays a finished one.
func (f evacFunc) Evacuate(ctx context.Context, req EvacuationRequest) (EvacuationReport, error) {
	rep, err := f(ctx, req)
	if req.Started != nil && !rep.Replayed {
		req.Started()
	}
	return rep, err
}

// TestAnEvacuationStoppedWithTheDaemonIsNotAFailure: a waiting task that
// ends because the daemon stops stays open for the next daemon; it is
// neither recorded as an error nor alerted.
func TestAnEvacuationStoppedWithTheDaemonIsNotAFailure(t *testing.T) {
	r := newRig(t, true)
	deps := r.c.deps
	deps.Evacuator = evacFunc(func(ctx context.Context, req EvacuationRequest) (EvacuationReport, error) {
		<-ctx.Done()
		return EvacuationReport{TaskID: req.TaskID, State: "waiting"}, fmt.Errorf("evacuate a: %w (the task stays open and resumes)", ctx.Err())
	})
	c, err := New(Config{Cluster: "test"}, deps)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.runEvacuation(ctx, EvacuationRequest{TaskID: "evac-a-1", Host: "a", CorrelationID: "a-1"}, zerolog.Nop())
	require.ErrorIs(t, err, context.Canceled)
	recs, err := r.st.History(store.Query{Host: "a", Kind: "evacuation"})
	require.NoError(t, err)
	assert.Empty(t, recs, "no error record")
	r.mu.Lock()
	alerts := append([]string(nil), r.alerts...)
	r.mu.Unlock()
	assert.NotContains(t, alerts, "a:"+alert.EvacuationPartial, "no critical alert")

	// A real failure still is both.
	deps.Evacuator = evacFunc(func(context.Context, EvacuationRequest) (EvacuationReport, error) {
		return EvacuationReport{}, errors.New("journal write failed")
	})
	c, err = New(Config{Cluster: "test"}, deps)
	require.NoError(t, err)
	_, err = c.runEvacuation(context.Background(), EvacuationRequest{TaskID: "evac-a-1", Host: "a", CorrelationID: "a-1"}, zerolog.Nop())
	require.Error(t, err)
	recs, err = r.st.History(store.Query{Host: "a", Kind: "evacuation"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "error", recs[0].To)
	r.mu.Lock()
	assert.Contains(t, r.alerts, "a:"+alert.EvacuationPartial)
	r.mu.Unlock()
}

// TestAgentDrainProofIsNotPowerOff is item 5: a fence proven only by the
// agent-drain level is recorded as "agent drained, N domains stopped",
// never "power off"; the host is drained, and its VMs start elsewhere on
// their own only under trust_agent_drain: true (else an operator rebuilds).
func TestAgentDrainProofIsNotPowerOff(t *testing.T) {
	for _, trust := range []bool{false, true} {
		t.Run(fmt.Sprintf("trust_agent_drain=%v", trust), func(t *testing.T) {
			r := newRig(t, true)
			r.byAgent, r.trust = true, trust
			r.levels = []fencer.LevelPlan{{Name: LevelAgentDrain, Timeout: time.Second}}
			r.incident(t, "a")
			f, err := r.st.Fences()
			require.NoError(t, err)
			assert.Equal(t, store.FenceVerified, f["a"].State)
			assert.Equal(t, LevelAgentDrain, f["a"].Level)
			h, _ := r.cl.Host("a")
			assert.Equal(t, node.Drained, h.Admin, "fenced and drained either way")
			recs, err := r.st.History(store.Query{Host: "a"})
			require.NoError(t, err)
			var all []string
			for _, rec := range recs {
				all = append(all, rec.Kind+" "+rec.To+": "+rec.Reason)
				if rec.To == "verified" || rec.To == "withheld" {
					assert.NotContains(t, rec.Reason, "power off", "nothing was powered off")
				}
			}
			assert.Contains(t, strings.Join(all, "\n"), "fence verified: a fenced: agent drained, 3 domains stopped (agent-drain: the host was not powered off)")
			if !trust {
				assert.Empty(t, r.ev.reqs, "no automatic evacuation on an agent's word")
				assert.Contains(t, strings.Join(all, "\n"), "evacuation withheld: a's only proof is its agent's drain")
				// A repeated verdict does not start it either.
				r.incident(t, "a")
				assert.Empty(t, r.ev.reqs)
				return
			}
			require.Len(t, r.ev.reqs, 1)
			assert.Contains(t, r.ev.reqs[0].Fence, "agent drained, 3 domains stopped")
			assert.NotContains(t, r.ev.reqs[0].Fence, "power off")
		})
	}
}
