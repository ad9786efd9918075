package recovery

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

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
	return daemon.Status{Storm: c.storm}
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
	e.reqs = append(e.reqs, req)
	return EvacuationReport{TaskID: req.TaskID, State: "done", Running: []VMOutcome{{Name: "vm1", Host: "b"}}}, nil
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
	now    time.Time
}

func newRig(t *testing.T, verify bool) *rig {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "s.db"), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	r := &rig{st: st, ev: &fakeEvac{}, verify: verify, now: t0, cl: &fakeCluster{hosts: map[string]daemon.HostStatus{}}}
	for _, h := range []string{"a", "b", "c"} {
		r.cl.hosts[h] = daemon.HostStatus{HostStatus: detector.HostStatus{Name: h, Rack: "r1", Verdict: detector.HostDown,
			Monitor: node.Unreachable, LastHeartbeat: t0.Add(-10 * time.Second)}}
	}
	r.c, err = New(Config{Cluster: "test"}, Deps{
		Cluster: r.cl, Journal: st, Evacuator: r.ev, Log: zerolog.Nop(),
		Now: func() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now },
		Setup: func(host string) (FenceSetup, error) {
			r.mu.Lock()
			manual := r.manual
			r.mu.Unlock()
			return FenceSetup{Plan: fencer.Plan{Levels: []fencer.LevelPlan{{Name: "ipmi", Timeout: time.Second}}}, Evacuate: !manual,
				Limits: fencer.Limits{MaxConcurrent: 2, MaxConcurrentPerRack: 1, MinInterval: 0}}, nil
		},
		Fence: func(_ context.Context, p fencer.Plan) fencer.Result {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.fences = append(r.fences, p.Host)
			if r.verify {
				return fencer.Result{Host: p.Host, Verified: true, Level: "ipmi"}
			}
			return fencer.Result{Host: p.Host, Reason: "ipmi: 1 attempts, last: authentication refused by BMC"}
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
