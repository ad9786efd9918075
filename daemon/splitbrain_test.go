package daemon

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

func TestStaleCopies(t *testing.T) {
	ev := map[string]store.Eviction{u1: {Host: "h1", UUID: u1, Name: "web"}}
	homes := map[string]store.DomainHome{u1: {UUID: u1, Name: "web", Host: "h2"}, u2: {UUID: u2, Name: "db", Host: "h1"}}
	web := running(u1, "web")
	paused := web
	paused.State = hypervisor.StatePaused
	stopped := web
	stopped.State, stopped.Reason = hypervisor.StateShutoff, "unknown"
	now := t0.Add(time.Hour)
	on2 := map[string]Listing{"h2": {At: now.Add(-time.Second), Domains: []heartbeat.Domain{web}}}
	off2 := map[string]Listing{"h2": {At: now.Add(-time.Second), Domains: []heartbeat.Domain{stopped}}}
	old2 := map[string]Listing{"h2": {At: now.Add(-time.Minute), Domains: []heartbeat.Domain{web}}}
	for _, c := range []struct {
		name     string
		host     string
		doms     []heartbeat.Domain
		evicted  map[string]store.Eviction
		homes    map[string]store.DomainHome
		listings map[string]Listing
		want     []StaleCopy
	}{
		{"evicted and running here, running at home: two hosts", "h1", []heartbeat.Domain{web}, ev, homes, on2,
			[]StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2", HomeActive: true}}},
		{"paused holds its disks too", "h1", []heartbeat.Domain{paused}, ev, homes, on2,
			[]StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2", HomeActive: true}}},
		{"home not running it (yet): still a stale copy, not two hosts", "h1", []heartbeat.Domain{web}, ev, homes, off2,
			[]StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2"}}},
		{"home never reported", "h1", []heartbeat.Domain{web}, ev, homes, nil,
			[]StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2"}}},
		{"home's report too old to say it runs there now", "h1", []heartbeat.Domain{web}, ev, homes, old2,
			[]StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2"}}},
		{"evicted but stopped: nothing runs twice", "h1", []heartbeat.Domain{stopped}, ev, homes, on2, nil},
		{"not evicted (a live migration's two copies): never", "h1", []heartbeat.Domain{running(u2, "db")}, ev, homes, on2, nil},
		{"no evictions", "h1", []heartbeat.Domain{web}, nil, homes, on2, nil},
		{"home is this host: never the copy to destroy", "h2", []heartbeat.Domain{web},
			map[string]store.Eviction{u1: {Host: "h2", UUID: u1}}, homes, on2, nil},
		{"no home known: nothing to protect, nothing proven", "h1", []heartbeat.Domain{web}, ev, map[string]store.DomainHome{}, on2, nil},
	} {
		assert.Equal(t, c.want, StaleCopies(c.host, c.doms, c.evicted, c.homes, c.listings, now, 3*time.Second), c.name)
	}
}

// TestHeartbeatReportsStaleCopies: after web is rebuilt on h2, h1 comes
// back running its old copy: every h1 heartbeat that lists it active tells
// the handler (two hosts once h2 reported it), and the home stays on h2.
func TestHeartbeatReportsStaleCopies(t *testing.T) {
	f := newFixture(t)
	var got []StaleCopy
	f.d.OnStaleCopy(func(sc StaleCopy) { got = append(got, sc) })
	f.beat(t, "h1", running(u1, "web"))
	require.NoError(t, f.d.Relocate(u1, "web", "h1", "h2", t0.Add(time.Minute)))
	f.beat(t, "h2", running(u1, "web"))
	assert.Empty(t, got, "the home's own report is never a stale copy")
	f.beat(t, "h1", running(u1, "web"), running(u2, "db"))
	assert.Equal(t, []StaleCopy{{UUID: u1, Name: "web", Host: "h1", Home: "h2", HomeActive: true}}, got)
	assert.Equal(t, "h2", f.d.homes[u1].Host, "the stale copy never moves the home back")
	stopped := running(u1, "web")
	stopped.State, stopped.Reason = hypervisor.StateShutoff, "destroyed"
	f.beat(t, "h1", stopped)
	assert.Len(t, got, 1, "destroyed: no more reports")
}

func TestDoubleRuns(t *testing.T) {
	now := t0.Add(time.Hour)
	homes := map[string]store.DomainHome{u1: {UUID: u1, Name: "web", Host: "h2"}}
	web := running(u1, "web")
	paused := web
	paused.State = hypervisor.StatePaused
	fresh := func(d heartbeat.Domain) map[string]Listing {
		return map[string]Listing{"h2": {At: now.Add(-time.Second), Domains: []heartbeat.Domain{d}}}
	}
	for _, c := range []struct {
		name     string
		host     string
		doms     []heartbeat.Domain
		evicted  map[string]store.Eviction
		listings map[string]Listing
		want     []DoubleRun
	}{
		{"running here and at its home", "h1", []heartbeat.Domain{web}, nil, fresh(web), []DoubleRun{{UUID: u1, Name: "web", Host: "h1", Home: "h2"}}},
		{"paused here: a migration's destination", "h1", []heartbeat.Domain{paused}, nil, fresh(web), nil},
		{"paused at home: a migration's source after the switch", "h1", []heartbeat.Domain{web}, nil, fresh(paused), nil},
		{"home's report is old (a dead host's last word)", "h1", []heartbeat.Domain{web},
			nil, map[string]Listing{"h2": {At: now.Add(-time.Minute), Domains: []heartbeat.Domain{web}}}, nil},
		{"evicted here: StaleCopies' case", "h1", []heartbeat.Domain{web}, map[string]store.Eviction{u1: {UUID: u1}}, fresh(web), nil},
		{"its home reporting", "h2", []heartbeat.Domain{web}, nil, fresh(web), nil},
		{"home not listing it", "h1", []heartbeat.Domain{web}, nil, fresh(running(u2, "db")), nil},
	} {
		assert.Equal(t, c.want, DoubleRuns(c.host, c.doms, c.evicted, homes, c.listings, now, 3*time.Second), c.name)
	}
}

// TestHeartbeatReportsDoubleRuns: web runs on h1 (its home) and someone
// starts a copy on h2 (not evicted there): h2's heartbeat reports it, and
// after the home moved to h2 (the latest running report wins), h1's next
// one does too.
func TestHeartbeatReportsDoubleRuns(t *testing.T) {
	f := newFixture(t)
	var got []DoubleRun
	f.d.OnDoubleRun(func(dr DoubleRun) { got = append(got, dr) })
	f.beat(t, "h1", running(u1, "web"))
	f.beat(t, "h2", running(u1, "web"))
	f.beat(t, "h1", running(u1, "web"))
	assert.Equal(t, []DoubleRun{{UUID: u1, Name: "web", Host: "h2", Home: "h1"}, {UUID: u1, Name: "web", Host: "h1", Home: "h2"}}, got)
	*f.clock = f.clock.Add(time.Minute) // h1 (web's home now) went silent
	got = nil
	f.beat(t, "h2", running(u1, "web"))
	assert.Empty(t, got, "a silent host's old report proves nothing")
}

func TestAutostartOn(t *testing.T) {
	f := newFixture(t)
	_, known := f.d.AutostartOn("h1")
	assert.False(t, known, "no listing yet")
	web := running(u1, "web")
	web.Autostart = true
	f.beat(t, "h1", web, running(u2, "db"))
	on, known := f.d.AutostartOn("h1")
	assert.True(t, known)
	assert.Equal(t, map[string]bool{u1: true}, on)
	f.beat(t, "h1", running(u1, "web"), running(u2, "db"))
	on, _ = f.d.AutostartOn("h1")
	assert.Empty(t, on, "turned off: the latest report wins")
}
