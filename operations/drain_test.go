package operations

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// fakeHost records the calls a drain makes, in order.
type fakeHost struct {
	mu         sync.Mutex
	calls      []string
	admin      node.AdminState
	doms       []hypervisor.Domain
	agentErr   error
	agentStop  bool // the agent stops every domain
	listErr    error
	destroyErr map[string]error
	stuck      map[string]bool // destroy "succeeds" but the domain stays running
}

func (f *fakeHost) deps() DrainDeps {
	return DrainDeps{
		SetAdmin: func(host string, st node.AdminState, reason string) (store.Record, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls = append(f.calls, "admin "+st.String()+": "+reason)
			from := f.admin
			f.admin = st
			return store.Record{From: from.String(), To: st.String()}, nil
		},
		AgentDrain: func(ctx context.Context, host string) ([]VMProgress, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls = append(f.calls, "agent drain")
			if f.agentErr != nil {
				return nil, f.agentErr
			}
			var out []VMProgress
			for i := range f.doms {
				if f.agentStop && f.doms[i].State.Active() {
					f.doms[i].State = hypervisor.StateShutoff
					out = append(out, VMProgress{UUID: f.doms[i].UUID, Name: f.doms[i].Name, State: VMDone, Detail: "destroyed by the agent"})
				}
			}
			return out, nil
		},
		Domains: func(ctx context.Context, host string) ([]hypervisor.Domain, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls = append(f.calls, "list")
			if f.listErr != nil {
				return nil, f.listErr
			}
			return append([]hypervisor.Domain{}, f.doms...), nil
		},
		Destroy: func(ctx context.Context, host, uuid string) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.calls = append(f.calls, "destroy "+uuid)
			if err := f.destroyErr[uuid]; err != nil {
				return err
			}
			for i := range f.doms {
				if f.doms[i].UUID == uuid && !f.stuck[uuid] {
					f.doms[i].State = hypervisor.StateShutoff
				}
			}
			return nil
		},
	}
}

func twoVMs() []hypervisor.Domain {
	return []hypervisor.Domain{
		{UUID: "u-web", Name: "web", State: hypervisor.StateRunning},
		{UUID: "u-db", Name: "db", State: hypervisor.StatePaused},
		{UUID: "u-old", Name: "old", State: hypervisor.StateShutoff},
	}
}

type lines struct {
	mu  sync.Mutex
	all []VMProgress
}

func (l *lines) report(vms ...VMProgress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = Merge(l.all, vms, time.Time{})
}

func drainTask() Task {
	return Task{ID: "op-5", Host: "h1", Op: OpDrain, Actor: "alice", Reason: "disk errors"}
}

func TestDrainThroughTheAgent(t *testing.T) {
	f := &fakeHost{doms: twoVMs(), agentStop: true}
	var l lines
	res, err := DrainExecutor(f.deps())(context.Background(), drainTask(), l.report)
	require.NoError(t, err)
	assert.Equal(t, node.Drained, f.admin)
	assert.Equal(t, []string{"admin drained: drain by alice (task op-5): disk errors", "agent drain", "list", "list"}, f.calls,
		"marked drained before anything stops; read back after")
	assert.Contains(t, res, "host h1 drained: no active domain (read back through libvirt, 3 defined)")
	require.Len(t, l.all, 2)
	assert.Equal(t, "destroyed by the agent", l.all[0].Detail)
}

func TestDrainFallsBackToLibvirt(t *testing.T) {
	f := &fakeHost{doms: twoVMs(), agentErr: errors.New("agent h1 unreachable: connection refused")}
	var l lines
	res, err := DrainExecutor(f.deps())(context.Background(), drainTask(), l.report)
	require.NoError(t, err)
	assert.Equal(t, []string{"admin drained: drain by alice (task op-5): disk errors", "agent drain", "list", "destroy u-web", "destroy u-db", "list"}, f.calls)
	assert.Contains(t, res, "destroyed through libvirt: web, db")
	assert.Contains(t, res, "agent drain failed: agent h1 unreachable")
	require.Len(t, l.all, 2)
	for _, v := range l.all {
		assert.Equal(t, VMDone, v.State, v.Name)
		assert.Equal(t, "destroyed through libvirt", v.Detail)
	}
}

func TestDrainFailsWhenSomethingStillRuns(t *testing.T) {
	f := &fakeHost{doms: twoVMs(), agentErr: errors.New("agent down"),
		destroyErr: map[string]error{"u-db": errors.New("libvirt: domain is locked")}, stuck: map[string]bool{"u-web": true}}
	var l lines
	_, err := DrainExecutor(f.deps())(context.Background(), drainTask(), l.report)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "host h1 is marked drained but 2 domain(s) still active: web (running), db (paused)")
	assert.Equal(t, node.Drained, f.admin, "the mark stays: nothing may restart them")
	require.Len(t, l.all, 2)
	assert.Equal(t, VMFailed, l.all[0].State)
	assert.Equal(t, "still running after the drain", l.all[0].Detail)
	assert.Equal(t, VMFailed, l.all[1].State)
}

func TestDrainWithNoReadBackIsUnknown(t *testing.T) {
	f := &fakeHost{doms: twoVMs(), agentErr: errors.New("agent down"), listErr: errors.New("libvirt h1: dial tcp: connection refused")}
	_, err := DrainExecutor(f.deps())(context.Background(), drainTask(), func(...VMProgress) {})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "whether its VMs stopped is unknown: agent drain failed: agent down; libvirt: libvirt h1: dial tcp")
	assert.Contains(t, err.Error(), "fence or confirm-down")

	// The agent's own read-back is accepted when only libvirt is out.
	f = &fakeHost{doms: twoVMs(), agentStop: true, listErr: errors.New("libvirt h1: timeout")}
	res, err := DrainExecutor(f.deps())(context.Background(), drainTask(), func(...VMProgress) {})
	require.NoError(t, err)
	assert.Contains(t, res, "drained by its agent, which read back no active domain (libvirt read-back unavailable: libvirt h1: timeout)")
}

func TestDrainMarkFailureStopsNothing(t *testing.T) {
	f := &fakeHost{doms: twoVMs(), agentStop: true}
	d := f.deps()
	d.SetAdmin = func(string, node.AdminState, string) (store.Record, error) {
		return store.Record{}, errors.New("store closed")
	}
	_, err := DrainExecutor(d)(context.Background(), drainTask(), func(...VMProgress) {})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "mark h1 drained (nothing was stopped): store closed")
	assert.Empty(t, f.calls)
	assert.Equal(t, hypervisor.StateRunning, f.doms[0].State)
}

func TestAdminExecutor(t *testing.T) {
	f := &fakeHost{admin: node.Drained}
	tk := Task{ID: "op-3", Host: "h1", Op: OpEnable, Actor: "bob"}
	res, err := AdminExecutor(f.deps().SetAdmin, node.Enabled)(context.Background(), tk, nil)
	require.NoError(t, err)
	assert.Equal(t, "host h1 is enabled (was drained)", res)
	assert.Equal(t, []string{"admin enabled: enable by bob (task op-3)"}, f.calls)

	fail := func(string, node.AdminState, string) (store.Record, error) {
		return store.Record{}, errors.New("disk full")
	}
	_, err = AdminExecutor(fail, node.Disabled)(context.Background(), tk, nil)
	require.ErrorContains(t, err, "set admin state of h1 to disabled: disk full")
}

type fakeCluster struct {
	hosts map[string]daemon.HostStatus
	storm bool
}

func (c fakeCluster) Host(name string) (daemon.HostStatus, error) {
	h, ok := c.hosts[name]
	if !ok {
		return daemon.HostStatus{}, daemon.ErrUnknownHost
	}
	return h, nil
}

func (c fakeCluster) Status() daemon.Status {
	return daemon.Status{Storm: detector.StormStatus{Paused: c.storm}}
}

type fakeFences map[string]store.FenceRecord

func (f fakeFences) Fences() (map[string]store.FenceRecord, error) { return f, nil }

func TestClusterView(t *testing.T) {
	hb := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c := fakeCluster{storm: true, hosts: map[string]daemon.HostStatus{
		"h1": {HostStatus: detector.HostStatus{Name: "h1", Monitor: node.Unreachable, LastHeartbeat: hb}, Admin: node.Drained, Domains: 3, Active: -1},
		"h2": {HostStatus: detector.HostStatus{Name: "h2", Monitor: node.Normal, LastHeartbeat: hb}},
		// Drained by an operator: its 2 domains are stopped but still at home.
		"h3": {HostStatus: detector.HostStatus{Name: "h3", Monitor: node.Normal, LastHeartbeat: hb}, Admin: node.Drained, Domains: 2, Active: 0},
	}}
	fences := fakeFences{
		"h1": {Host: "h1", State: store.FenceVerified, Started: hb.Add(time.Minute)},
		"h2": {Host: "h2", State: store.FenceConfirmed, Started: hb.Add(-time.Minute)}, // older than its heartbeat
	}
	view := ClusterView(c, fences, nil)
	v, err := view("h1")
	require.NoError(t, err)
	// No heartbeat listed its domains yet: the homes count, cautiously.
	assert.Equal(t, HostView{Name: "h1", Known: true, Admin: node.Drained, Monitor: node.Unreachable, Running: 3,
		FenceProven: true, FenceState: store.FenceVerified, StormPaused: true}, v)
	v, err = view("h2")
	require.NoError(t, err)
	assert.False(t, v.FenceProven, "a proof older than the last heartbeat is stale")
	assert.Equal(t, store.FenceConfirmed, v.FenceState)
	v, err = view("h3")
	require.NoError(t, err)
	assert.Equal(t, 0, v.Running, "the last heartbeat's active count, not the homes")
	v, err = view("ghost")
	require.NoError(t, err)
	assert.False(t, v.Known)

	assert.False(t, FenceProven(store.FenceRecord{State: store.FenceFailed, Started: hb}, time.Time{}))
	assert.False(t, FenceProven(store.FenceRecord{State: store.FenceInFlight, Started: hb}, time.Time{}))
	assert.True(t, FenceProven(store.FenceRecord{State: store.FenceConfirmed, Started: hb}, time.Time{}))
}

// TestClusterViewBMCOnDuringTheSilence: only a clean "on" reading taken
// since the host went silent counts as the daemon's evidence against a
// confirm-down; observe mode comes from the callback.
func TestClusterViewBMCOnDuringTheSilence(t *testing.T) {
	silent := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	reading := func(at time.Time, p power.State, err string) *detector.BMCReading {
		return &detector.BMCReading{At: at, Reachable: true, Power: p, Err: err}
	}
	for name, tc := range map[string]struct {
		bmc  *detector.BMCReading
		want time.Time
	}{
		"on since the silence":  {reading(silent.Add(time.Second), power.On, ""), silent.Add(time.Second)},
		"on before the silence": {reading(silent.Add(-time.Second), power.On, ""), time.Time{}},
		"off":                   {reading(silent.Add(time.Second), power.Off, ""), time.Time{}},
		"failed read":           {reading(silent.Add(time.Second), power.On, "auth"), time.Time{}},
		"unreachable":           {&detector.BMCReading{At: silent.Add(time.Second)}, time.Time{}},
		"none":                  {nil, time.Time{}},
	} {
		c := fakeCluster{hosts: map[string]daemon.HostStatus{
			"h1": {HostStatus: detector.HostStatus{Name: "h1", Monitor: node.Unreachable, SilentSince: silent, BMC: tc.bmc}},
		}}
		observe := true
		v, err := ClusterView(c, fakeFences{}, func() bool { return observe })("h1")
		require.NoError(t, err)
		assert.Equal(t, tc.want, v.BMCOnAt, name)
		assert.True(t, v.Observe, name)
	}
}
