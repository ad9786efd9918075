package daemon

import (
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// fakeEngine knows a fixed set of hosts and accepts every heartbeat unless
// told otherwise.
type fakeEngine struct {
	hosts  []string
	mu     sync.Mutex
	reject bool
}

func (e *fakeEngine) Heartbeat(heartbeat.Heartbeat) (detector.Outcome, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.reject {
		return detector.Outcome{Intake: detector.IntakeStale, Reason: "test"}, nil
	}
	return detector.Outcome{}, nil
}

func (e *fakeEngine) Status() ([]detector.HostStatus, detector.StormStatus) {
	out := make([]detector.HostStatus, len(e.hosts))
	for i, h := range e.hosts {
		out[i] = detector.HostStatus{Name: h}
	}
	return out, detector.StormStatus{}
}

func (e *fakeEngine) Host(name string) (detector.HostStatus, bool) {
	for _, h := range e.hosts {
		if h == name {
			return detector.HostStatus{Name: h}, true
		}
	}
	return detector.HostStatus{}, false
}

const (
	u1 = "6f1c2a9e-0000-4000-8000-000000000001"
	u2 = "6f1c2a9e-0000-4000-8000-000000000002"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

type fixture struct {
	st    *store.Store
	path  string
	eng   *fakeEngine
	d     *Daemon
	clock *time.Time
	seq   map[string]uint64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), store.FileName)
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	f := &fixture{st: st, path: path, eng: &fakeEngine{hosts: []string{"h1", "h2", "h3"}}, seq: map[string]uint64{}}
	now := t0
	f.clock = &now
	f.d = f.open(t)
	return f
}

// open builds a Daemon on the fixture's store, as a daemon restart does.
func (f *fixture) open(t *testing.T) *Daemon {
	t.Helper()
	d, err := New(f.st, f.eng, func() time.Duration { return time.Second }, func() time.Time { return *f.clock }, zerolog.Nop())
	require.NoError(t, err)
	return d
}

func (f *fixture) beat(t *testing.T, host string, doms ...heartbeat.Domain) heartbeat.Ack {
	t.Helper()
	f.seq[host]++
	if doms == nil {
		doms = []heartbeat.Domain{}
	}
	ack, err := f.d.Heartbeat(heartbeat.Heartbeat{Host: host, BootID: "b", Seq: f.seq[host],
		Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirtd", OK: true}}, Domains: doms})
	require.NoError(t, err)
	return ack
}

func running(uuid, name string) heartbeat.Domain {
	return heartbeat.Domain{UUID: uuid, Name: name, State: hypervisor.StateRunning}
}

func (f *fixture) assignment(t *testing.T, host string) heartbeat.Assignment {
	t.Helper()
	a, err := f.d.Assignment(host)
	require.NoError(t, err)
	return a
}

func TestRelocateEvictsTheOldHostUntilItReportsTheDomainGone(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"), running(u2, "db"))
	before1, before2 := f.assignment(t, "h1"), f.assignment(t, "h2")
	require.Equal(t, []heartbeat.AssignedDomain{{UUID: u2, Name: "db"}, {UUID: u1, Name: "web"}}, before1.Domains)

	// h1 is fenced; web is rebuilt on h2.
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0.Add(time.Minute)))
	a1, a2 := f.assignment(t, "h1"), f.assignment(t, "h2")
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u2, Name: "db"}}, a1.Domains)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "web"}}, a1.Evicted)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "web"}}, a2.Domains)
	assert.Empty(t, a2.Evicted)
	assert.NotEqual(t, before1.Revision, a1.Revision, "the old host's assignment changed")
	assert.NotEqual(t, before2.Revision, a2.Revision, "the new host's assignment changed")
	assert.Equal(t, a2.Revision, f.beat(t, "h2", running(u1, "web")).AssignmentRevision, "h2's ack names its new revision")
	stored, err := f.st.Evictions("h1")
	require.NoError(t, err)
	assert.Equal(t, []store.Eviction{{Host: "h1", UUID: u1, Name: "web", Since: t0.Add(time.Minute)}}, stored, "persisted")

	// h1 comes back still running its stale copy: the home stays on h2.
	ack := f.beat(t, "h1", running(u1, "web"), running(u2, "db"))
	assert.Equal(t, a1.Revision, ack.AssignmentRevision, "nothing changed for h1")
	assert.Equal(t, "h2", f.d.Homes("h2")[0].Host)
	assert.Len(t, f.d.Homes("h1"), 1, "only db lives on h1")
	// Destroyed but still defined: not done yet.
	f.beat(t, "h1", heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateShutoff, Reason: "destroyed"}, running(u2, "db"))
	assert.Len(t, f.assignment(t, "h1").Evicted, 1)
	hist, err := f.st.History(store.Query{Kind: EvictedKind})
	require.NoError(t, err)
	assert.Empty(t, hist)

	// Undefined: the eviction is cleared, with a history record.
	f.clock = ptr(t0.Add(2 * time.Minute))
	ack = f.beat(t, "h1", running(u2, "db"))
	after := f.assignment(t, "h1")
	assert.Empty(t, after.Evicted)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u2, Name: "db"}}, after.Domains)
	assert.NotEqual(t, a1.Revision, after.Revision)
	assert.Equal(t, after.Revision, ack.AssignmentRevision, "the ack of that heartbeat already names the new revision")
	stored, err = f.st.Evictions("")
	require.NoError(t, err)
	assert.Empty(t, stored)
	hist, err = f.st.History(store.Query{Kind: EvictedKind})
	require.NoError(t, err)
	require.Len(t, hist, 1)
	assert.Equal(t, "h1", hist[0].Host)
	assert.Equal(t, u1, hist[0].To)
	assert.Equal(t, t0.Add(2*time.Minute), hist[0].At)
	assert.Contains(t, hist[0].Reason, "web ("+u1+")")
	assert.Equal(t, "h2", f.d.Homes("h2")[0].Host, "web still lives on h2")
}

func ptr[T any](v T) *T { return &v }

// TestEvictionNotClearedByUnreliableReports: a heartbeat the detector
// refused, one whose libvirt check failed, and one with domains unknown
// (null) say nothing about what the host still has.
func TestEvictionNotClearedByUnreliableReports(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"))
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0))

	f.eng.mu.Lock()
	f.eng.reject = true
	f.eng.mu.Unlock()
	f.beat(t, "h1")
	f.eng.mu.Lock()
	f.eng.reject = false
	f.eng.mu.Unlock()
	_, err := f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: 10, Health: heartbeat.Health{Libvirt: heartbeat.Check{Detail: "down"}}, Domains: []heartbeat.Domain{}})
	require.NoError(t, err)
	_, err = f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: 11, Health: heartbeat.Health{Libvirt: heartbeat.Check{OK: true}}, Domains: nil})
	require.NoError(t, err)

	assert.Len(t, f.assignment(t, "h1").Evicted, 1)
	stored, err := f.st.Evictions("h1")
	require.NoError(t, err)
	assert.Len(t, stored, 1)
}

func TestEvictionsAndAdminSinceSurviveRestart(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"))
	f.clock = ptr(t0.Add(time.Minute))
	rec, err := f.d.SetAdminState("h1", node.Drained, "fenced")
	require.NoError(t, err)
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0.Add(2*time.Minute)))
	a := f.assignment(t, "h1")
	assert.Equal(t, rec.At, a.AdminSince)
	assert.Equal(t, t0.Add(time.Minute), a.AdminSince)

	f.d = f.open(t)
	b := f.assignment(t, "h1")
	assert.Equal(t, a, b, "same assignment and revision after a restart")
	assert.Equal(t, []store.Eviction{{Host: "h1", UUID: u1, Name: "web", Since: t0.Add(2 * time.Minute)}}, f.d.Evictions("h1"))
	// Still filtered after the restart.
	f.beat(t, "h1", running(u1, "web"))
	assert.Equal(t, "h2", f.d.Homes("h2")[0].Host)
}

// TestAdminSinceChangesTheRevision: enabling an already enabled host is a
// new decision an agent must see (its local drain marker may wait for it).
func TestAdminSinceChangesTheRevision(t *testing.T) {
	f := newFixture(t)
	a0 := f.assignment(t, "h1")
	assert.True(t, a0.AdminSince.IsZero(), "never set")
	f.clock = ptr(t0.Add(time.Hour))
	_, err := f.d.SetAdminState("h1", node.Enabled, "operator: local drain over")
	require.NoError(t, err)
	a1 := f.assignment(t, "h1")
	assert.Equal(t, node.Enabled, a1.AdminState)
	assert.Equal(t, t0.Add(time.Hour), a1.AdminSince)
	assert.NotEqual(t, a0.Revision, a1.Revision)
}

func TestRelocateBackCancelsTheEviction(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"))
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0))
	require.NoError(t, f.d.Relocate(u1, "web", "h2", "h1", t0.Add(time.Hour)))
	a1, a2 := f.assignment(t, "h1"), f.assignment(t, "h2")
	assert.Empty(t, a1.Evicted, "h1 must not destroy the domain that now lives there again")
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "web"}}, a1.Domains)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "web"}}, a2.Evicted)
	assert.Empty(t, a2.Domains)
	// h1's report of web now counts again.
	f.beat(t, "h1", running(u1, "web"))
	assert.Len(t, f.d.Homes("h1"), 1)
}

func TestRelocateRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		uuid, from, to string
		at             time.Time
		want           []string
	}{
		{"NOT-A-UUID", "h1", "h2", t0, []string{`domain UUID "NOT-A-UUID" is not a lower-case canonical UUID`}},
		{u1, "h1", "h9", t0, []string{`target host "h9": unknown host`}},
		{u1, "", "h2", t0, []string{`source host "": unknown host`}},
		{u1, "h1", "h1", t0, []string{`source and target are both host "h1"`}},
		{u1, "h1", "h2", time.Time{}, []string{"time is zero"}},
	} {
		err := f.d.Relocate(tc.uuid, "web", tc.from, tc.to, tc.at)
		require.Error(t, err)
		for _, w := range tc.want {
			assert.Contains(t, err.Error(), w)
		}
	}
	all, err := f.st.Evictions("")
	require.NoError(t, err)
	assert.Empty(t, all, "nothing written")
	assert.Empty(t, f.d.Homes("h2"))
}

// TestRelocateRacingHeartbeats: the old host keeps reporting the domain
// (running, then destroyed, and so on) while it is relocated; the cache and the store agree afterwards
// that it lives on the new host (a heartbeat computed before the relocation
// cannot write its stale home after it).
func TestRelocateRacingHeartbeats(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"))
	var wg sync.WaitGroup
	var beats atomic.Int64
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := uint64(1000 * (g + 1)); ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				// Alternately running and destroyed: every report writes
				// (home put, home removed) until the relocation.
				dom := running(u1, "web")
				if seq%2 == 0 {
					dom.State, dom.Reason = hypervisor.StateShutoff, "destroyed"
				}
				_, err := f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: seq,
					Health: heartbeat.Health{Libvirt: heartbeat.Check{OK: true}}, Domains: []heartbeat.Domain{dom}})
				assert.NoError(t, err)
				beats.Add(1)
			}
		}()
	}
	waitBeats := func(n int64) {
		require.Eventually(t, func() bool { return beats.Load() >= n }, 10*time.Second, time.Millisecond)
	}
	waitBeats(50)
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0))
	waitBeats(beats.Load() + 50)
	close(stop)
	wg.Wait()
	homes, err := f.st.DomainHomes()
	require.NoError(t, err)
	assert.Equal(t, "h2", homes[u1].Host, "store")
	assert.Equal(t, []store.DomainHome{homes[u1]}, f.d.Homes("h2"), "cache")
	assert.Empty(t, f.d.Homes("h1"))
}

func TestActiveCountsOnlyRunningDomainsOfTheLastHeartbeat(t *testing.T) {
	f := newFixture(t)
	h, err := f.d.Host("h1")
	require.NoError(t, err)
	assert.Equal(t, -1, h.Active, "unknown before a heartbeat lists domains")
	f.beat(t, "h1", running(u1, "web"), running(u2, "db"))
	h, err = f.d.Host("h1")
	require.NoError(t, err)
	assert.Equal(t, 2, h.Active)
	assert.Equal(t, 2, h.Domains)
	// Drained: both stopped by the drain, both still at home here (a
	// rebuild recreates them elsewhere).
	_, err = f.d.SetAdminState("h1", node.Drained, "drain")
	require.NoError(t, err)
	f.beat(t, "h1", heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateShutoff, Reason: "destroyed"},
		heartbeat.Domain{UUID: u2, Name: "db", State: hypervisor.StateShutoff, Reason: "destroyed"})
	h, err = f.d.Host("h1")
	require.NoError(t, err)
	assert.Equal(t, 0, h.Active, "a stopped domain is not active")
	assert.Equal(t, 2, h.Domains, "but still homed here")
	var inStatus HostStatus
	for _, s := range f.d.Status().Hosts {
		if s.Name == "h1" {
			inStatus = s
		}
	}
	assert.Equal(t, h.Active, inStatus.Active, "Status and Host agree")
}

func TestDestroyedOutsideADrainForgetsTheHome(t *testing.T) {
	f := newFixture(t)
	f.beat(t, "h1", running(u1, "web"))
	f.beat(t, "h1", heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateShutoff, Reason: "destroyed"})
	h, err := f.d.Host("h1")
	require.NoError(t, err)
	assert.Equal(t, 0, h.Domains, "stopped on purpose on an enabled host: it should not run anywhere")
}

func TestLocalMigrationsAreRecordedOnceAndAcknowledged(t *testing.T) {
	f := newFixture(t)
	migs := []heartbeat.LocalMigration{
		{ID: "m1", At: t0, UUID: u1, Name: "web", Dest: "10.79.0.12", Interface: "stor0", Moved: true},
		{ID: "m2", At: t0, UUID: u2, Name: "db", Dest: "10.79.0.12", Interface: "stor0", Error: "destination refused: no storage pool"},
	}
	send := func() heartbeat.Ack {
		f.seq["h1"]++
		ack, err := f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: f.seq["h1"],
			Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirtd", OK: true}}, Domains: []heartbeat.Domain{}, LocalMigrations: migs})
		require.NoError(t, err)
		return ack
	}
	ack := send()
	assert.Equal(t, []string{"m1", "m2"}, ack.LocalMigrationsSeen)
	recs, err := f.st.History(store.Query{Host: "h1", Kind: LocalMigrationKind})
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.Equal(t, "moved", recs[0].To)
	assert.Contains(t, recs[0].Reason, "migrated web ("+u1+") to 10.79.0.12 over stor0")
	assert.Equal(t, "failed", recs[1].To)
	assert.Contains(t, recs[1].Reason, "no storage pool")

	// The ack was lost: the agent sends them again; recorded once.
	ack = send()
	assert.Equal(t, []string{"m1", "m2"}, ack.LocalMigrationsSeen)
	recs, err = f.st.History(store.Query{Host: "h1", Kind: LocalMigrationKind})
	require.NoError(t, err)
	assert.Len(t, recs, 2, "a resent record is not recorded twice")

	// A heartbeat the detector refused (replayed) records and acks nothing.
	f.eng.mu.Lock()
	f.eng.reject = true
	f.eng.mu.Unlock()
	f.seq["h1"]++
	ack, err = f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: f.seq["h1"], Domains: []heartbeat.Domain{},
		LocalMigrations: []heartbeat.LocalMigration{{ID: "m3", UUID: u1, Name: "web", Dest: "x", Moved: true}}})
	require.NoError(t, err)
	assert.Empty(t, ack.LocalMigrationsSeen)
}

func TestALocalDrainBecomesTheAdminStateUnlessAnOperatorSpokeLater(t *testing.T) {
	f := newFixture(t)
	drainedAt := t0.Add(-time.Minute)
	beat := func(ld *heartbeat.LocalDrain) {
		f.seq["h1"]++
		_, err := f.d.Heartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "b", Seq: f.seq["h1"],
			Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirtd", OK: true}}, Domains: []heartbeat.Domain{}, LocalDrain: ld})
		require.NoError(t, err)
	}
	admin := func() node.AdminState { h, err := f.d.Host("h1"); require.NoError(t, err); return h.Admin }

	beat(&heartbeat.LocalDrain{Since: drainedAt, By: "cli"})
	assert.Equal(t, node.Drained, admin())
	recs, err := f.st.History(store.Query{Host: "h1", Kind: "admin"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Contains(t, recs[0].Reason, "drained locally by chime-agent on h1 (cli)")
	beat(&heartbeat.LocalDrain{Since: drainedAt, By: "cli"})
	recs, _ = f.st.History(store.Query{Host: "h1", Kind: "admin"})
	assert.Len(t, recs, 1, "already drained: nothing more recorded")

	// The operator enables it after the drain: the agent lifts its marker
	// on that same rule; until its next heartbeat says so, the daemon
	// must not drain it again.
	*f.clock = t0.Add(time.Minute)
	_, err = f.d.SetAdminState("h1", node.Enabled, "maintenance over")
	require.NoError(t, err)
	beat(&heartbeat.LocalDrain{Since: drainedAt, By: "cli"})
	assert.Equal(t, node.Enabled, admin(), "an admin state newer than the drain wins")

	// A new local drain (after the enable) drains it again.
	beat(&heartbeat.LocalDrain{Since: t0.Add(2 * time.Minute), By: "api"})
	assert.Equal(t, node.Drained, admin())
}
