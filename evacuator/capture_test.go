package evacuator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// capClock is a virtual clock: After waits until Advance passes its time.
type capClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []capWaiter
}

type capWaiter struct {
	at time.Time
	ch chan time.Time
}

func newCapClock() *capClock {
	return &capClock{now: time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)}
}

func (c *capClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *capClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, capWaiter{c.now.Add(d), ch})
	return ch
}

// Advance moves time on and fires the timers that are due.
func (c *capClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// Waiting lists the pending timers' durations from now.
func (c *capClock) Waiting() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, w := range c.waiters {
		out = append(out, w.at.Sub(c.now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// capHV is a fake hypervisor made of functions; only what Capture uses.
type capHV struct {
	domains func(ctx context.Context) ([]hypervisor.Domain, error)
	stats   func(ctx context.Context) (hypervisor.NodeStats, error)
	events  func(ctx context.Context) <-chan hypervisor.Event

	domainCalls, eventCalls atomic.Int32
}

var errCapUnused = errors.New("not used by Capture")

func (h *capHV) Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error) {
	h.domainCalls.Add(1)
	if !withXML {
		return nil, errors.New("capture must ask for the XML")
	}
	return h.domains(ctx)
}
func (h *capHV) NodeStats(ctx context.Context) (hypervisor.NodeStats, error) {
	if h.stats == nil {
		return hypervisor.NodeStats{CPUs: 4, MemoryKiB: 8 << 20, FreeKiB: 4 << 20, BusyNs: 1, IdleNs: 1}, nil
	}
	return h.stats(ctx)
}
func (h *capHV) Events(ctx context.Context) <-chan hypervisor.Event {
	h.eventCalls.Add(1)
	if h.events == nil {
		ch := make(chan hypervisor.Event)
		go func() { <-ctx.Done(); close(ch) }()
		return ch
	}
	return h.events(ctx)
}
func (h *capHV) Domain(context.Context, string) (hypervisor.Domain, error) {
	return hypervisor.Domain{}, errCapUnused
}
func (h *capHV) Define(context.Context, string) (string, error)   { return "", errCapUnused }
func (h *capHV) Start(context.Context, string) error              { return errCapUnused }
func (h *capHV) Destroy(context.Context, string) error            { return errCapUnused }
func (h *capHV) Undefine(context.Context, string) error           { return errCapUnused }
func (h *capHV) SetAutostart(context.Context, string, bool) error { return errCapUnused }
func (h *capHV) State(context.Context, string) (hypervisor.DomainState, error) {
	return 0, errCapUnused
}

// capDomains is a mutable domain list for a capHV.
type capDomains struct {
	mu   sync.Mutex
	doms []hypervisor.Domain
}

func (d *capDomains) set(doms ...hypervisor.Domain) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.doms = doms
}

func (d *capDomains) get(context.Context) ([]hypervisor.Domain, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]hypervisor.Domain(nil), d.doms...), nil
}

type capBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *capBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *capBuf) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.b.String(), s)
}

// capStore lets a test fail the journal.
type capStore struct {
	*store.Store
	putErr atomic.Pointer[error]
}

func (s *capStore) PutInventory(host string, put []store.DomainRecord, remove []string) error {
	if e := s.putErr.Load(); e != nil {
		return *e
	}
	return s.Store.PutInventory(host, put, remove)
}

type capEnv struct {
	t       *testing.T
	store   *capStore
	clock   *capClock
	log     *capBuf
	mirror  string
	c       *Capture
	hv      map[string]*capHV
	doms    map[string]*capDomains
	healthy sync.Map // host → bool
}

func newCapEnv(t *testing.T, cfg CaptureConfig, hosts ...string) *capEnv {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	e := &capEnv{t: t, store: &capStore{Store: st}, clock: newCapClock(), log: &capBuf{},
		hv: map[string]*capHV{}, doms: map[string]*capDomains{}}
	if cfg.MirrorDir == "" {
		cfg.MirrorDir = filepath.Join(t.TempDir(), "chime-fence", "domains")
	}
	e.mirror = cfg.MirrorDir
	for _, h := range hosts {
		d := &capDomains{}
		e.doms[h] = d
		e.hv[h] = &capHV{domains: d.get}
		e.healthy.Store(h, true)
	}
	e.c, err = NewCapture(cfg, CaptureDeps{
		Store: e.store,
		Hypervisor: func(host string) (Hypervisor, error) {
			if hv := e.hv[host]; hv != nil {
				return hv, nil
			}
			return nil, fmt.Errorf("no hypervisor for %s", host)
		},
		Healthy: func(host string) bool { v, _ := e.healthy.Load(host); return v == true },
		Clock:   e.clock,
		Log:     zerolog.New(e.log),
	})
	require.NoError(t, err)
	require.NoError(t, e.c.SetHosts(hosts))
	return e
}

func (e *capEnv) records(host string) map[string]store.DomainRecord {
	e.t.Helper()
	recs, err := e.store.Inventory(host)
	require.NoError(e.t, err)
	out := map[string]store.DomainRecord{}
	for _, r := range recs {
		out[r.UUID] = r
	}
	return out
}

func (e *capEnv) mirrorFile(host, uuid string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(e.mirror, host, uuid+".xml"))
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	require.NoError(e.t, err)
	return string(b), true
}

// run starts Run and stops it at cleanup.
func (e *capEnv) run() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.c.Run(ctx) }()
	e.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(e.t, err)
		case <-time.After(10 * time.Second):
			e.t.Error("Run did not return after its context ended")
		}
	})
}

// eventually polls cond: it synchronises with the loops' goroutines and
// asserts nothing about speed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitTimers waits until the pending timers are exactly want.
func (e *capEnv) waitTimers(want ...time.Duration) {
	e.t.Helper()
	eventually(e.t, fmt.Sprintf("timers %v (have %v)", want, e.clock.Waiting()), func() bool {
		got := e.clock.Waiting()
		if len(got) != len(want) {
			return false
		}
		for i := range got {
			if got[i] != want[i] {
				return false
			}
		}
		return true
	})
}

const (
	cu1 = "11111111-1111-1111-1111-111111111111"
	cu2 = "22222222-2222-2222-2222-222222222222"
	cu3 = "33333333-3333-3333-3333-333333333333"
)

func capXML(uuid, name string, vcpus int, mib int64) string {
	return fmt.Sprintf(`<domain type='kvm'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='KiB'>%d</memory>
  <vcpu placement='static'>%d</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><source file='/mnt/shared/%s.qcow2'/><target dev='vda' bus='virtio'/></disk>
  </devices>
</domain>
`, name, uuid, mib*1024, vcpus, name)
}

func capDom(uuid, name string, st hypervisor.DomainState, vcpus int, mib int64) hypervisor.Domain {
	return hypervisor.Domain{UUID: uuid, Name: name, State: st, Persistent: true, XML: capXML(uuid, name, vcpus, mib)}
}

func TestDiffInventory(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	before := now.Add(-time.Hour)
	run := capDom(cu1, "web", hypervisor.StateRunning, 2, 1024)
	stored := func(d hypervisor.Domain) store.DomainRecord {
		return store.DomainRecord{Host: "h1", UUID: d.UUID, Name: d.Name, XML: d.XML, Hash: store.InventoryHash(d.XML), CapturedAt: before, Active: d.State.Active()}
	}
	fresh := func(d hypervisor.Domain) store.DomainRecord {
		r := stored(d)
		r.CapturedAt = now
		return r
	}
	changedXML := run
	changedXML.XML = capXML(cu1, "web", 4, 1024)
	stopped := run
	stopped.State, stopped.Reason = hypervisor.StateShutoff, "shutdown"
	renamed := run
	renamed.Name = "web2"
	transient := run
	transient.Persistent = false
	noXML := run
	noXML.XML = ""
	autostart := run
	autostart.Autostart = true
	freshAuto := fresh(autostart)
	freshAuto.Autostart = true
	storedAuto := stored(autostart)
	storedAuto.Autostart = true

	cases := []struct {
		name       string
		stored     []store.DomainRecord
		doms       []hypervisor.Domain
		put        []store.DomainRecord
		remove     []string
		xmlChanged []string
		transient  int
		noXML      int
	}{
		{"new domain is saved", nil, []hypervisor.Domain{run}, []store.DomainRecord{fresh(run)}, nil, []string{cu1}, 0, 0},
		{"unchanged: nothing", []store.DomainRecord{stored(run)}, []hypervisor.Domain{run}, nil, nil, nil, 0, 0},
		{"XML changed", []store.DomainRecord{stored(run)}, []hypervisor.Domain{changedXML}, []store.DomainRecord{fresh(changedXML)}, nil, []string{cu1}, 0, 0},
		{"stopped: record rewritten, XML the same", []store.DomainRecord{stored(run)}, []hypervisor.Domain{stopped}, []store.DomainRecord{fresh(stopped)}, nil, nil, 0, 0},
		{"renamed", []store.DomainRecord{stored(run)}, []hypervisor.Domain{renamed}, []store.DomainRecord{fresh(renamed)}, nil, nil, 0, 0},
		{"undefined: removed", []store.DomainRecord{stored(run)}, nil, nil, []string{cu1}, nil, 0, 0},
		{"transient: skipped", nil, []hypervisor.Domain{transient}, nil, nil, nil, 1, 0},
		{"became transient (undefined while running): removed", []store.DomainRecord{stored(run)}, []hypervisor.Domain{transient}, nil, []string{cu1}, nil, 1, 0},
		{"listed without XML: record kept", []store.DomainRecord{stored(run)}, []hypervisor.Domain{noXML}, nil, nil, nil, 0, 1},
		{"autostart turned on: record rewritten with it", []store.DomainRecord{stored(run)}, []hypervisor.Domain{autostart}, []store.DomainRecord{freshAuto}, nil, nil, 0, 0},
		{"autostart turned off: record rewritten", []store.DomainRecord{storedAuto}, []hypervisor.Domain{run}, []store.DomainRecord{fresh(run)}, nil, nil, 0, 0},
		{"autostart still on: nothing", []store.DomainRecord{storedAuto}, []hypervisor.Domain{autostart}, nil, nil, nil, 0, 0},
		{"listed twice: once", nil, []hypervisor.Domain{run, changedXML}, []store.DomainRecord{fresh(run)}, nil, []string{cu1}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := diffInventory("h1", c.stored, c.doms, now)
			assert.Equal(t, c.put, d.put)
			assert.Equal(t, c.remove, d.remove)
			assert.Equal(t, c.xmlChanged, d.xmlChanged)
			assert.Len(t, d.transient, c.transient)
			assert.Len(t, d.noXML, c.noXML)
		})
	}
}

func TestCaptureNowSavesJournalAndMirror(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1", "h2")
	tr := capDom(cu3, "scratch", hypervisor.StateRunning, 1, 256)
	tr.Persistent = false
	e.doms["h1"].set(
		capDom(cu1, "web", hypervisor.StateRunning, 2, 1024),
		capDom(cu2, "db", hypervisor.StateShutoff, 4, 4096),
		tr,
	)
	ctx := context.Background()
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))

	recs := e.records("h1")
	require.Len(t, recs, 2, "the transient domain is not saved")
	assert.Equal(t, capXML(cu1, "web", 2, 1024), recs[cu1].XML)
	assert.True(t, recs[cu1].Active)
	assert.False(t, recs[cu2].Active)
	assert.Equal(t, e.clock.Now(), recs[cu1].CapturedAt)
	assert.Empty(t, e.records("h2"), "only the captured host")

	for _, u := range []string{cu1, cu2} {
		got, ok := e.mirrorFile("h1", u)
		require.True(t, ok, u)
		assert.Equal(t, recs[u].XML, got, "mirror holds the exact XML")
		fi, err := os.Stat(filepath.Join(e.mirror, "h1", u+".xml"))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "secure XML may hold secrets")
	}
	_, ok := e.mirrorFile("h1", cu3)
	assert.False(t, ok, "no mirror file for the transient domain")
	dir, err := os.Stat(filepath.Join(e.mirror, "h1"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), dir.Mode().Perm())
	entries, err := os.ReadDir(filepath.Join(e.mirror, "h1"))
	require.NoError(t, err)
	assert.Len(t, entries, 2, "no temporary files left behind")

	// A second capture: nothing changed, the transient domain is not logged again.
	e.clock.Advance(time.Minute)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	assert.Equal(t, recs, e.records("h1"), "unchanged domains are not rewritten (CapturedAt kept)")
	assert.Equal(t, 1, e.log.count("transient domain has no saved definition"))
	assert.Equal(t, 1, e.log.count(`"uuid":"`+cu3+`"`))
	assert.Equal(t, CaptureStats{Captures: 2}, e.c.Stats())
}

func TestCaptureRemovesUndefinedDomains(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1", "h2")
	ctx := context.Background()
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024), capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	e.doms["h2"].set(capDom(cu1, "web", hypervisor.StateShutoff, 2, 1024))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	require.NoError(t, e.c.CaptureNow(ctx, "h2"))

	e.doms["h1"].set(capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	recs := e.records("h1")
	assert.NotContains(t, recs, cu1)
	assert.Contains(t, recs, cu2)
	_, ok := e.mirrorFile("h1", cu1)
	assert.False(t, ok, "the removed domain's mirror file is gone")
	_, ok = e.mirrorFile("h1", cu2)
	assert.True(t, ok)
	assert.Contains(t, e.records("h2"), cu1, "another host's record of the same UUID stays")
	_, ok = e.mirrorFile("h2", cu1)
	assert.True(t, ok)

	// Everything undefined: the host's inventory empties.
	e.doms["h1"].set()
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	assert.Empty(t, e.records("h1"))
	entries, err := os.ReadDir(filepath.Join(e.mirror, "h1"))
	require.NoError(t, err)
	assert.Empty(t, entries)
}

func TestCaptureUnhealthyHostNeitherCapturedNorPruned(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1")
	ctx := context.Background()
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	calls := e.hv["h1"].domainCalls.Load()

	// The host dies: libvirt would now list nothing (or anything).
	e.healthy.Store("h1", false)
	e.doms["h1"].set()
	err := e.c.CaptureNow(ctx, "h1")
	require.ErrorIs(t, err, ErrCaptureUnhealthy)
	assert.Contains(t, err.Error(), "host h1")
	assert.Equal(t, calls, e.hv["h1"].domainCalls.Load(), "an unhealthy host's libvirt is not even asked")
	assert.Contains(t, e.records("h1"), cu1, "its records are what a rebuild needs")
	_, ok := e.mirrorFile("h1", cu1)
	assert.True(t, ok)

	// It fails while we list: the answer is thrown away.
	e.healthy.Store("h1", true)
	e.hv["h1"].domains = func(context.Context) ([]hypervisor.Domain, error) {
		e.healthy.Store("h1", false)
		return nil, nil
	}
	err = e.c.CaptureNow(ctx, "h1")
	require.ErrorIs(t, err, ErrCaptureUnhealthy)
	assert.Contains(t, err.Error(), "became unhealthy during the capture")
	assert.Contains(t, e.records("h1"), cu1)
	_, ok = e.mirrorFile("h1", cu1)
	assert.True(t, ok)
	assert.Equal(t, CaptureStats{Captures: 1, Skipped: 2}, e.c.Stats())
}

func TestCaptureFailuresKeepRecords(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{}, "h1")
	ctx := context.Background()
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))

	// libvirt fails: nothing changes.
	listErr := &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "h1", Step: "libvirt: list domains"}
	e.hv["h1"].domains = func(context.Context) ([]hypervisor.Domain, error) { return nil, listErr }
	err := e.c.CaptureNow(ctx, "h1")
	require.ErrorIs(t, err, hypervisor.ErrUnreachable)
	assert.Contains(t, err.Error(), "inventory capture: host h1: list domains")
	assert.Contains(t, e.records("h1"), cu1)
	require.Error(t, e.c.CaptureNow(ctx, "h1"))
	assert.Equal(t, 1, e.log.count("inventory capture failed"), "the same failure is logged once")

	// The journal fails: the mirror is not touched (journal first).
	d := &capDomains{}
	d.set(capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	e.hv["h1"].domains = d.get
	jerr := errors.New("disk full")
	e.store.putErr.Store(&jerr)
	err = e.c.CaptureNow(ctx, "h1")
	require.ErrorIs(t, err, jerr)
	_, ok := e.mirrorFile("h1", cu2)
	assert.False(t, ok, "nothing mirrored that the journal does not hold")
	_, ok = e.mirrorFile("h1", cu1)
	assert.True(t, ok)

	e.store.putErr.Store(nil)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	assert.Equal(t, 1, e.log.count("inventory capture works again"))
	_, ok = e.mirrorFile("h1", cu2)
	assert.True(t, ok)
	_, ok = e.mirrorFile("h1", cu1)
	assert.False(t, ok)
	assert.Equal(t, CaptureStats{Captures: 2, Failures: 3}, e.c.Stats())
}

func TestCapturePeriodicAndEventDriven(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute, HealthPoll: 5 * time.Second}, "h1")
	events := make(chan hypervisor.Event, 8)
	e.hv["h1"].events = func(context.Context) <-chan hypervisor.Event { return events }
	hv := e.hv["h1"]
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	e.run()

	// At start: a capture, then the interval timer.
	e.waitTimers(time.Minute)
	assert.EqualValues(t, 1, hv.domainCalls.Load())
	assert.Contains(t, e.records("h1"), cu1)

	// Every interval.
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024), capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	e.clock.Advance(time.Minute)
	e.waitTimers(time.Minute)
	eventually(t, "second capture saved", func() bool { return len(e.records("h1")) == 2 })
	assert.EqualValues(t, 2, hv.domainCalls.Load())

	// A burst of events: one capture, Debounce after the first.
	e.doms["h1"].set(capDom(cu2, "db", hypervisor.StateRunning, 1, 512))
	events <- hypervisor.Event{Host: "h1", UUID: cu1, Kind: hypervisor.EventStopped}
	e.waitTimers(DefaultCaptureDebounce, time.Minute)
	events <- hypervisor.Event{Host: "h1", UUID: cu1, Kind: hypervisor.EventUndefined}
	events <- hypervisor.Event{Host: "h1", UUID: cu1, Kind: hypervisor.EventOther}
	eventually(t, "burst consumed", func() bool { return len(events) == 0 })
	assert.Len(t, e.clock.Waiting(), 2, "one debounce timer for the burst")
	assert.EqualValues(t, 2, hv.domainCalls.Load(), "nothing before the debounce ends")
	e.clock.Advance(DefaultCaptureDebounce)
	eventually(t, "event capture removed the undefined domain", func() bool { return len(e.records("h1")) == 1 })
	e.waitTimers(time.Minute - DefaultCaptureDebounce)
	assert.EqualValues(t, 3, hv.domainCalls.Load())

	// Not healthy: neither events nor the interval capture it, and it is
	// looked at again after HealthPoll.
	e.healthy.Store("h1", false)
	e.doms["h1"].set()
	events <- hypervisor.Event{Host: "h1", UUID: cu2, Kind: hypervisor.EventUndefined}
	e.waitTimers(DefaultCaptureDebounce, time.Minute-DefaultCaptureDebounce)
	e.clock.Advance(DefaultCaptureDebounce)
	e.waitTimers(time.Minute - 2*DefaultCaptureDebounce)
	e.clock.Advance(time.Minute - 2*DefaultCaptureDebounce)
	e.waitTimers(5 * time.Second)
	assert.EqualValues(t, 3, hv.domainCalls.Load(), "libvirt of an unhealthy host is not asked")
	assert.Contains(t, e.records("h1"), cu2, "and its records are not pruned")
	assert.Equal(t, uint64(2), e.c.Stats().Skipped)

	// Healthy again: captured at the next health poll, back to the interval.
	e.healthy.Store("h1", true)
	e.clock.Advance(5 * time.Second)
	e.waitTimers(time.Minute)
	assert.EqualValues(t, 4, hv.domainCalls.Load())
	assert.Empty(t, e.records("h1"))
	assert.EqualValues(t, 1, hv.eventCalls.Load())
}

func TestCaptureResubscribesWhenEventsEnd(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "h1")
	hv := e.hv["h1"]
	first := make(chan hypervisor.Event)
	var n atomic.Int32
	hv.events = func(ctx context.Context) <-chan hypervisor.Event {
		if n.Add(1) == 1 {
			return first
		}
		ch := make(chan hypervisor.Event)
		go func() { <-ctx.Done(); close(ch) }()
		return ch
	}
	e.run()
	e.waitTimers(time.Minute)
	close(first) // the stream died without our context ending
	e.clock.Advance(time.Minute)
	e.waitTimers(time.Minute)
	eventually(t, "resubscribed", func() bool { return hv.eventCalls.Load() == 2 })
	e.clock.Advance(time.Minute)
	e.waitTimers(time.Minute)
	assert.EqualValues(t, 2, hv.eventCalls.Load(), "a live stream is not replaced")
}

func TestCaptureSlowHostDoesNotBlockOthers(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute, CallTimeout: time.Hour}, "slow", "fast")
	slowIn := make(chan struct{})
	var once sync.Once
	e.hv["slow"].domains = func(ctx context.Context) ([]hypervisor.Domain, error) {
		once.Do(func() { close(slowIn) })
		<-ctx.Done() // a host that never answers
		return nil, ctx.Err()
	}
	e.doms["fast"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	e.run()
	<-slowIn
	eventually(t, "fast host captured while slow hangs", func() bool { return len(e.records("fast")) == 1 })
	e.waitTimers(time.Minute) // fast's interval; slow is still in its call
	e.doms["fast"].set()
	e.clock.Advance(time.Minute)
	eventually(t, "fast captured again", func() bool { return len(e.records("fast")) == 0 })

	// CaptureNow on the hung host honours its own context.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := e.c.CaptureNow(ctx, "slow")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "wait for the capture in progress")
	assert.Less(t, time.Since(start), 5*time.Second, "returns at its deadline, not when the hung call ends")
}

func TestCaptureCallTimeout(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{CallTimeout: 50 * time.Millisecond}, "h1")
	e.hv["h1"].domains = func(ctx context.Context) ([]hypervisor.Domain, error) {
		_, ok := ctx.Deadline()
		assert.True(t, ok, "every hypervisor call has a deadline")
		<-ctx.Done()
		return nil, &hypervisor.Error{Kind: hypervisor.KindTimeout, Host: "h1", Err: ctx.Err()}
	}
	start := time.Now()
	err := e.c.CaptureNow(context.Background(), "h1")
	require.ErrorIs(t, err, hypervisor.ErrTimeout)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestCaptureSetHostsStopsLoops(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "h1")
	e.hv["h2"] = &capHV{domains: (&capDomains{}).get}
	e.healthy.Store("h2", true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h1ctx := make(chan context.Context, 1)
	e.hv["h1"].events = func(ctx context.Context) <-chan hypervisor.Event {
		h1ctx <- ctx
		return make(chan hypervisor.Event)
	}
	done := make(chan error, 1)
	go func() { done <- e.c.Run(ctx) }()
	e.waitTimers(time.Minute)
	require.Error(t, e.c.Run(ctx), "Run twice at once is refused")

	require.NoError(t, e.c.SetHosts([]string{"h2"}))
	e.waitTimers(time.Minute, time.Minute)
	assert.EqualValues(t, 1, e.hv["h2"].domainCalls.Load(), "the new host's loop started")
	evCtx := <-h1ctx
	eventually(t, "h1's loop stopped", func() bool { return evCtx.Err() != nil })
	_, ok := e.c.HostLoad("h1")
	assert.False(t, ok)
	require.ErrorIs(t, e.c.CaptureNow(ctx, "h1"), ErrCaptureUnknownHost)
	e.clock.Advance(time.Minute)
	eventually(t, "h2 captured again", func() bool { return e.hv["h2"].domainCalls.Load() == 2 })
	assert.EqualValues(t, 1, e.hv["h1"].domainCalls.Load(), "the removed host is not captured")

	cancel()
	require.NoError(t, <-done)
}

func TestCaptureHostLoad(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "h1")
	ctx := context.Background()
	var stats []hypervisor.NodeStats
	var mu sync.Mutex
	e.hv["h1"].stats = func(context.Context) (hypervisor.NodeStats, error) {
		mu.Lock()
		defer mu.Unlock()
		s := stats[0]
		stats = stats[1:]
		return s, nil
	}
	push := func(busy, idle uint64, freeMiB uint64) {
		mu.Lock()
		defer mu.Unlock()
		stats = append(stats, hypervisor.NodeStats{CPUs: 16, MemoryKiB: 64 << 20, FreeKiB: freeMiB << 10, BusyNs: busy, IdleNs: idle})
	}
	e.doms["h1"].set(
		capDom(cu1, "web", hypervisor.StateRunning, 2, 1024),
		capDom(cu2, "db", hypervisor.StatePaused, 4, 4096), // paused still holds its memory
		capDom(cu3, "off", hypervisor.StateShutoff, 8, 8192),
	)
	_, ok := e.c.HostLoad("h1")
	assert.False(t, ok, "no sample yet")

	push(1000, 9000, 50000)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl, ok := e.c.HostLoad("h1")
	require.True(t, ok)
	assert.Equal(t, HostLoad{CPUs: 16, MemoryMiB: 64 << 10, FreeMemoryMiB: 50000, Load: -1, UsedVCPUs: 6, UsedMemoryMiB: 5120, At: e.clock.Now()}, hl,
		"one sample: load unknown; only active domains count")

	// A minute later, 3000 of the next 4000 ns busy.
	e.clock.Advance(time.Minute)
	push(4000, 10000, 40000)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl, _ = e.c.HostLoad("h1")
	assert.InDelta(t, 0.75, hl.Load, 1e-9)
	assert.Equal(t, int64(40000), hl.FreeMemoryMiB)

	// An event capture 200 ms later refreshes capacity but keeps the window.
	e.clock.Advance(200 * time.Millisecond)
	push(4001, 10001, 30000)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl, _ = e.c.HostLoad("h1")
	assert.InDelta(t, 0.75, hl.Load, 1e-9, "a 200 ms window would be noise")
	assert.Equal(t, int64(30000), hl.FreeMemoryMiB)
	assert.Equal(t, e.clock.Now(), hl.At)

	// Stale: no capture for more than 3 intervals.
	e.clock.Advance(3 * time.Minute)
	hl, _ = e.c.HostLoad("h1")
	assert.Equal(t, -1.0, hl.Load, "the samples are too old to say anything now")
	assert.Equal(t, int64(30000), hl.FreeMemoryMiB, "capacity is still reported, with its time")

	// The host rebooted: counters went back.
	push(100, 200, 60000)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl, _ = e.c.HostLoad("h1")
	assert.Equal(t, -1.0, hl.Load)
	e.clock.Advance(time.Minute)
	push(200, 500, 60000)
	e.doms["h1"].set(capDom(cu3, "off", hypervisor.StateRunning, 8, 8192))
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl, _ = e.c.HostLoad("h1")
	assert.InDelta(t, 0.25, hl.Load, 1e-9)
	assert.Equal(t, 8, hl.UsedVCPUs)
	assert.Equal(t, int64(8192), hl.UsedMemoryMiB)

	// A failed node sample keeps the inventory and the last load.
	e.hv["h1"].stats = func(context.Context) (hypervisor.NodeStats, error) { return hypervisor.NodeStats{}, errors.New("boom") }
	e.clock.Advance(time.Minute)
	require.NoError(t, e.c.CaptureNow(ctx, "h1"))
	hl2, _ := e.c.HostLoad("h1")
	assert.Equal(t, hl.At, hl2.At)
	assert.Equal(t, uint64(1), e.c.Stats().StatsFailures)
}

func TestLoadStateWindow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ns := func(busy, idle uint64) hypervisor.NodeStats {
		return hypervisor.NodeStats{CPUs: 2, BusyNs: busy, IdleNs: idle}
	}
	var l loadState
	l.add(ns(0, 0), t0, 30*time.Second)
	l.add(ns(10, 10), t0.Add(10*time.Second), 30*time.Second) // too soon: no shift
	hl, _ := l.of(t0.Add(10*time.Second), 3*time.Minute)
	assert.Equal(t, -1.0, hl.Load, "still one counter sample")
	l.add(ns(40, 60), t0.Add(40*time.Second), 30*time.Second)
	hl, _ = l.of(t0.Add(40*time.Second), 3*time.Minute)
	assert.InDelta(t, 0.4, hl.Load, 1e-9, "window from the first sample")
	hl, _ = l.of(t0.Add(3*time.Minute), 3*time.Minute)
	assert.InDelta(t, 0.4, hl.Load, 1e-9, "exactly 3 intervals old is still fresh")
	hl, _ = l.of(t0.Add(3*time.Minute+time.Nanosecond), 3*time.Minute)
	assert.Equal(t, -1.0, hl.Load)
	// Identical counters: no time passed on the CPUs.
	l.add(ns(40, 60), t0.Add(80*time.Second), 30*time.Second)
	hl, _ = l.of(t0.Add(80*time.Second), 3*time.Minute)
	assert.Equal(t, -1.0, hl.Load)
}

func TestNewCaptureAndSetHostsRefuseBadInput(t *testing.T) {
	st := &capStore{}
	hv := func(string) (Hypervisor, error) { return nil, nil }
	ok := func(string) bool { return true }
	for name, tc := range map[string]struct {
		cfg  CaptureConfig
		deps CaptureDeps
		want string
	}{
		"negative interval": {CaptureConfig{Interval: -time.Second}, CaptureDeps{Store: st, Hypervisor: hv, Healthy: ok}, "Interval -1s is negative"},
		"negative timeout":  {CaptureConfig{CallTimeout: -1}, CaptureDeps{Store: st, Hypervisor: hv, Healthy: ok}, "CallTimeout -1ns is negative"},
		"relative mirror":   {CaptureConfig{MirrorDir: "shared/domains"}, CaptureDeps{Store: st, Hypervisor: hv, Healthy: ok}, `MirrorDir "shared/domains" is not an absolute path`},
		"no store":          {CaptureConfig{}, CaptureDeps{Hypervisor: hv, Healthy: ok}, "Store is required"},
		"no hypervisor":     {CaptureConfig{}, CaptureDeps{Store: st, Healthy: ok}, "Hypervisor is required"},
		"no health":         {CaptureConfig{}, CaptureDeps{Store: st, Hypervisor: hv}, "Healthy is required"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewCapture(tc.cfg, tc.deps)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	c, err := NewCapture(CaptureConfig{}, CaptureDeps{Store: st, Hypervisor: hv, Healthy: ok})
	require.NoError(t, err)
	for _, bad := range []string{"", ".", "..", "a/b", "../etc", "a\x00b", strings.Repeat("h", 256)} {
		err := c.SetHosts([]string{"ok", bad})
		require.Error(t, err, "%q", bad)
		assert.Contains(t, err.Error(), "inventory capture: set hosts")
	}
	require.ErrorIs(t, c.CaptureNow(context.Background(), "ok"), ErrCaptureUnknownHost, "a refused SetHosts changes nothing")
}

// BenchmarkCaptureUnchanged100 is one periodic capture of a host with 100
// domains that did not change: read the host's records, hash every XML,
// parse none (cached), write nothing.
func BenchmarkCaptureUnchanged100(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), store.FileName), store.Options{})
	require.NoError(b, err)
	defer st.Close()
	d := &capDomains{}
	var doms []hypervisor.Domain
	for i := range 100 {
		u := fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)
		doms = append(doms, capDom(u, fmt.Sprintf("vm%d", i), hypervisor.StateRunning, 2, 2048))
	}
	d.set(doms...)
	hv := &capHV{domains: d.get}
	c, err := NewCapture(CaptureConfig{MirrorDir: filepath.Join(b.TempDir(), "m")}, CaptureDeps{Store: st,
		Hypervisor: func(string) (Hypervisor, error) { return hv, nil },
		Healthy:    func(string) bool { return true }})
	require.NoError(b, err)
	require.NoError(b, c.SetHosts([]string{"h1"}))
	ctx := context.Background()
	require.NoError(b, c.CaptureNow(ctx, "h1"))
	for b.Loop() {
		if err := c.CaptureNow(ctx, "h1"); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCaptureSubscribesOnlyOnceLibvirtAnswered(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "h1")
	hv := e.hv["h1"]
	var down atomic.Bool
	down.Store(true)
	d := &capDomains{}
	d.set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	hv.domains = func(ctx context.Context) ([]hypervisor.Domain, error) {
		if down.Load() {
			return nil, &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "h1", Step: "libvirt: list domains"}
		}
		return d.get(ctx)
	}
	e.run()
	e.waitTimers(time.Minute)
	assert.EqualValues(t, 0, hv.eventCalls.Load(), "no event stream to a libvirtd that does not answer")
	down.Store(false)
	e.clock.Advance(time.Minute)
	e.waitTimers(time.Minute)
	eventually(t, "subscribed after the first capture that worked", func() bool { return hv.eventCalls.Load() == 1 })
	assert.Contains(t, e.records("h1"), cu1)
}

func TestCaptureStartSpread(t *testing.T) {
	spread := 10 * time.Second
	seen := map[time.Duration]bool{}
	for i := range 200 {
		off := startOffset(fmt.Sprintf("host%04d", i), spread)
		assert.GreaterOrEqual(t, off, time.Duration(0))
		assert.Less(t, off, spread)
		assert.Equal(t, off, startOffset(fmt.Sprintf("host%04d", i), spread), "fixed per host")
		seen[off.Truncate(time.Second)] = true
	}
	assert.Len(t, seen, 10, "200 hosts land in every second of the spread")
	assert.Zero(t, startOffset("h1", 0))

	e := newCapEnv(t, CaptureConfig{Interval: time.Minute, StartSpread: spread}, "h1")
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024))
	e.run()
	off := startOffset("h1", spread)
	e.waitTimers(off)
	assert.EqualValues(t, 0, e.hv["h1"].domainCalls.Load(), "nothing before the host's offset")
	e.clock.Advance(off)
	e.waitTimers(time.Minute)
	assert.EqualValues(t, 1, e.hv["h1"].domainCalls.Load(), "captured at its offset")
}
