package migration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
)

// cluster is a fake set of hosts: which host has which domain in which
// state, and what each migration call does.
type cluster struct {
	mu   sync.Mutex
	doms map[string]map[string]hypervisor.Domain // host -> uuid -> domain
	// migrate, if set, decides a migration's fate (return value, and
	// whether the domain moves); default: it moves, nil.
	migrate  func(ctx context.Context, host string, m hypervisor.Migration) (moves bool, err error)
	prepErr  map[string]error
	prepared map[string][]string
	released map[string]int
	calls    []hypervisor.Migration
	active   int
	peak     int
}

func newCluster() *cluster {
	return &cluster{doms: map[string]map[string]hypervisor.Domain{}, prepErr: map[string]error{}, prepared: map[string][]string{}, released: map[string]int{}}
}

func (c *cluster) put(host, uuid string, st hypervisor.DomainState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.doms[host] == nil {
		c.doms[host] = map[string]hypervisor.Domain{}
	}
	c.doms[host][uuid] = hypervisor.Domain{UUID: uuid, State: st, Persistent: true}
}

func (c *cluster) where(uuid string) map[string]hypervisor.DomainState {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]hypervisor.DomainState{}
	for h, ds := range c.doms {
		if d, ok := ds[uuid]; ok {
			out[h] = d.State
		}
	}
	return out
}

type fakeHV struct {
	c    *cluster
	host string
}

func (f fakeHV) Domain(_ context.Context, uuid string) (hypervisor.Domain, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	d, ok := f.c.doms[f.host][uuid]
	if !ok {
		return hypervisor.Domain{}, &hypervisor.Error{Kind: hypervisor.KindNotFound, Host: f.host}
	}
	return d, nil
}

func (f fakeHV) Migrate(ctx context.Context, m hypervisor.Migration, progress func(hypervisor.MigrationProgress)) error {
	c := f.c
	c.mu.Lock()
	c.calls = append(c.calls, m)
	c.active++
	c.peak = max(c.peak, c.active)
	fn := c.migrate
	c.mu.Unlock()
	defer func() { c.mu.Lock(); c.active--; c.mu.Unlock() }()
	if err := m.Validate(); err != nil {
		return err
	}
	progress(hypervisor.MigrationProgress{UUID: m.UUID, DataTotal: 100 << 20, DataProcessed: 50 << 20, DataRemaining: 50 << 20, Elapsed: time.Second})
	moves, err := true, error(nil)
	if fn != nil {
		moves, err = fn(ctx, f.host, m)
	}
	if moves {
		dest := hostOfURI(m.DestURI)
		c.mu.Lock()
		d := c.doms[f.host][m.UUID]
		delete(c.doms[f.host], m.UUID)
		if c.doms[dest] == nil {
			c.doms[dest] = map[string]hypervisor.Domain{}
		}
		c.doms[dest][m.UUID] = d
		c.mu.Unlock()
	}
	return err
}

func (f fakeHV) PrepareCopyTargets(_ context.Context, dirs []string) (func(context.Context) error, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if err := f.c.prepErr[f.host]; err != nil {
		return nil, err
	}
	f.c.prepared[f.host] = append(f.c.prepared[f.host], dirs...)
	return func(context.Context) error {
		f.c.mu.Lock()
		defer f.c.mu.Unlock()
		f.c.released[f.host]++
		return nil
	}, nil
}

// hostOfURI maps qemu+tcp://hN/system back to hN (the fake's endpoint).
func hostOfURI(u string) string {
	var h string
	_, _ = fmt.Sscanf(u, "qemu+tcp://%2s/system", &h)
	return h
}

type recorder struct {
	mu    sync.Mutex
	lines []Progress
	moved []Move
}

func (r *recorder) report(ps ...Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, ps...)
}

func (r *recorder) last(uuid string) Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.lines) - 1; i >= 0; i-- {
		if r.lines[i].UUID == uuid {
			return r.lines[i]
		}
	}
	return Progress{}
}

func (r *recorder) config(c *cluster) Config {
	return Config{
		Hosts: func(h string) (Hypervisor, error) {
			if h == "hX" {
				return nil, errors.New("no driver for hX")
			}
			return fakeHV{c: c, host: h}, nil
		},
		Endpoint: func(h string) (Endpoint, error) {
			return Endpoint{DestURI: "qemu+tcp://" + h + "/system", DataURI: "tcp://" + h}, nil
		},
		Report: r.report,
		Moved: func(_ context.Context, m Move) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.moved = append(r.moved, m)
			return nil
		},
		CallTimeout: 5 * time.Second,
	}
}

func move(i int, target string) Move {
	return Move{VM: evacuator.VM{UUID: uuid(i), Name: fmt.Sprintf("vm%d", i)}, Source: "h1", Target: target}
}

func TestExecuteMovesAndVerifies(t *testing.T) {
	c := newCluster()
	c.put("h1", uuid(1), hypervisor.StateRunning)
	c.put("h1", uuid(2), hypervisor.StateRunning)
	c.put("h1", uuid(3), hypervisor.StateShutoff)
	off := move(3, "h3")
	off.Offline = true
	plan := Plan{Source: "h1", Moves: []Move{move(1, "h2"), move(2, "h3"), off}, Skipped: []Skip{{UUID: uuid(9), Name: "vm9", Reason: "has local disks"}}}
	var r recorder
	res, err := Execute(context.Background(), plan, r.config(c))
	require.NoError(t, err)
	assert.Equal(t, 3, res.Moved())
	assert.Equal(t, "3 of 3 VMs migrated off h1; 1 not moved by design", res.Summary())
	assert.Equal(t, map[string]hypervisor.DomainState{"h2": hypervisor.StateRunning}, c.where(uuid(1)))
	assert.Equal(t, map[string]hypervisor.DomainState{"h3": hypervisor.StateShutoff}, c.where(uuid(3)))
	assert.Len(t, r.moved, 3, "the hook ran for every verified VM")
	assert.Equal(t, VMDone, r.last(uuid(1)).State)
	assert.Equal(t, "running on h2", r.last(uuid(1)).Detail)
	assert.Equal(t, VMSkipped, r.last(uuid(9)).State)
	assert.Equal(t, "has local disks", r.last(uuid(9)).Detail)
	var sawProgress bool
	for _, l := range r.lines {
		if l.UUID == uuid(1) && l.State == VMRunning && l.Detail == "migrating live: 50% (50 of 100 MiB sent, 1s)" {
			sawProgress = true
		}
	}
	assert.True(t, sawProgress, "progress lines reach the report")
	for _, m := range c.calls {
		assert.Equal(t, m.UUID == uuid(3), m.Offline)
		assert.Contains(t, m.DataURI, "tcp://h")
	}
}

func TestExecuteReadBackDecides(t *testing.T) {
	c := newCluster()
	for i := 1; i <= 4; i++ {
		c.put("h1", uuid(i), hypervisor.StateRunning)
	}
	c.migrate = func(_ context.Context, _ string, m hypervisor.Migration) (bool, error) {
		switch m.UUID {
		case uuid(1): // timed out after the switch-over: it moved
			return true, &hypervisor.Error{Kind: hypervisor.KindTimeout, Step: "migrate"}
		case uuid(2): // refused: it stays
			return false, &hypervisor.Error{Kind: hypervisor.KindInvalid, Err: errors.New("Unsafe migration")}
		case uuid(3): // success claimed, but nothing moved
			return false, nil
		}
		return true, nil
	}
	var r recorder
	cfg := r.config(c)
	cfg.Moved = func(_ context.Context, m Move) error {
		if m.VM.UUID == uuid(4) {
			return errors.New("store is read-only")
		}
		r.mu.Lock()
		r.moved = append(r.moved, m)
		r.mu.Unlock()
		return nil
	}
	res, err := Execute(context.Background(), Plan{Source: "h1", Moves: []Move{move(1, "h2"), move(2, "h2"), move(3, "h2"), move(4, "h2")}}, cfg)
	require.Error(t, err)
	assert.Equal(t, 1, res.Moved())
	got := map[string]Outcome{}
	for _, o := range res.Outcomes {
		got[o.Move.VM.UUID] = o
	}
	assert.Equal(t, VMDone, got[uuid(1)].State)
	assert.Contains(t, got[uuid(1)].Detail, "running on h2 (the migration call reported: migrate: timeout)")
	assert.Equal(t, VMFailed, got[uuid(2)].State)
	assert.Contains(t, got[uuid(2)].Detail, "Unsafe migration; the VM is still running on the source h1")
	assert.Equal(t, VMFailed, got[uuid(3)].State)
	assert.Contains(t, got[uuid(3)].Detail, "libvirt reported success, but the VM is still running on the source h1")
	assert.Equal(t, VMFailed, got[uuid(4)].State)
	assert.Contains(t, got[uuid(4)].Detail, "moved to h2 (running on h2), but recording it failed: store is read-only")
	require.Len(t, r.moved, 1)
	assert.Equal(t, uuid(1), r.moved[0].VM.UUID, "the hook runs only for verified moves")
	for _, want := range []string{"1 of 4 VMs migrated off h1", "vm2 (" + uuid(2) + ")", "vm3 (", "vm4 ("} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestExecutePreparesCopyTargetsFirst(t *testing.T) {
	c := newCluster()
	c.put("h1", uuid(1), hypervisor.StateRunning)
	c.put("h1", uuid(2), hypervisor.StateRunning)
	m1, m2 := move(1, "h2"), move(2, "h3")
	m1.CopyDisks, m1.CopyDirs = []string{"vda"}, []string{"/var/lib/libvirt/images"}
	m2.CopyDisks, m2.CopyDirs = []string{"vdb"}, []string{"/srv"}
	c.prepErr["h3"] = errors.New("permission denied")
	var r recorder
	res, err := Execute(context.Background(), Plan{Source: "h1", Moves: []Move{m1, m2}}, r.config(c))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nothing moved: target h3 cannot receive disk copies in /srv: permission denied")
	assert.Empty(t, c.calls, "no migration started")
	assert.Equal(t, 1, c.released["h2"], "the target already prepared is released")
	for _, o := range res.Outcomes {
		assert.Equal(t, VMFailed, o.State)
	}

	delete(c.prepErr, "h3")
	c.released = map[string]int{}
	_, err = Execute(context.Background(), Plan{Source: "h1", Moves: []Move{m1, m2}}, r.config(c))
	require.NoError(t, err)
	assert.Equal(t, []string{"/srv"}, c.prepared["h3"])
	assert.Equal(t, map[string]int{"h2": 1, "h3": 1}, c.released, "every prepared target released once, after the moves")
	require.Len(t, c.calls, 2)
	for _, call := range c.calls {
		if call.UUID == uuid(1) {
			assert.Equal(t, []string{"vda"}, call.CopyDisks)
		}
	}
}

func TestExecuteBoundsParallelism(t *testing.T) {
	c := newCluster()
	var moves []Move
	for i := 1; i <= 7; i++ {
		c.put("h1", uuid(i), hypervisor.StateRunning)
		moves = append(moves, move(i, "h2"))
	}
	gate := make(chan struct{})
	started := make(chan struct{}, 10)
	c.migrate = func(ctx context.Context, _ string, _ hypervisor.Migration) (bool, error) {
		started <- struct{}{}
		<-gate
		return true, nil
	}
	var r recorder
	cfg := r.config(c)
	cfg.Parallel = 3
	done := make(chan error, 1)
	go func() { _, err := Execute(context.Background(), Plan{Source: "h1", Moves: moves}, cfg); done <- err }()
	for range 3 {
		<-started
	}
	select {
	case <-started:
		t.Fatal("a fourth migration started while three ran")
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	require.NoError(t, <-done)
	assert.Equal(t, 3, c.peak)
	assert.Len(t, c.calls, 7)
}

func TestExecuteCancelLeavesRestPending(t *testing.T) {
	c := newCluster()
	for i := 1; i <= 3; i++ {
		c.put("h1", uuid(i), hypervisor.StateRunning)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.migrate = func(mctx context.Context, _ string, _ hypervisor.Migration) (bool, error) {
		cancel()
		<-mctx.Done() // the driver aborts the job: nothing moves
		return false, &hypervisor.Error{Kind: hypervisor.KindUnknown, Err: mctx.Err()}
	}
	var r recorder
	cfg := r.config(c)
	cfg.Parallel = 1
	res, err := Execute(ctx, Plan{Source: "h1", Moves: []Move{move(1, "h2"), move(2, "h2"), move(3, "h2")}}, cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "2 not started (context canceled)")
	assert.Len(t, c.calls, 1)
	assert.Equal(t, VMFailed, res.Outcomes[0].State)
	assert.Equal(t, VMPending, res.Outcomes[1].State)
	assert.Equal(t, "not started: context canceled", r.last(uuid(3)).Detail)
	assert.Empty(t, r.moved)
}

func TestExecuteUnknownTargetAndConfig(t *testing.T) {
	_, err := Execute(context.Background(), Plan{Source: "h1"}, Config{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Config.Hosts and Config.Endpoint are required")

	c := newCluster()
	c.put("h1", uuid(1), hypervisor.StateRunning)
	var r recorder
	res, err := Execute(context.Background(), Plan{Source: "h1", Moves: []Move{move(1, "hX")}}, r.config(c))
	require.Error(t, err)
	assert.Equal(t, VMFailed, res.Outcomes[0].State)
	assert.Contains(t, res.Outcomes[0].Detail, "not started: target hX: no driver for hX")
	assert.Empty(t, c.calls)
}
