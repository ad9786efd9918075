package evacuator

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// Capture defaults.
const (
	DefaultCaptureInterval = 60 * time.Second
	DefaultCaptureDebounce = 200 * time.Millisecond
	DefaultCaptureTimeout  = 10 * time.Second
	// DefaultHealthPoll bounds how long a host that was not healthy waits
	// for its next look, so a host that just became normal is captured soon.
	DefaultHealthPoll = 5 * time.Second
)

// Errors CaptureNow returns, for errors.Is.
var (
	// ErrCaptureUnhealthy: the host's monitor state is not normal, so it is
	// not captured (and its records are kept for a rebuild).
	ErrCaptureUnhealthy = errors.New("host is not healthy; its inventory is left as it was")
	// ErrCaptureUnknownHost: the host is not among those given to SetHosts.
	ErrCaptureUnknownHost = errors.New("host is not configured for inventory capture")
)

// CaptureConfig tunes a Capture. The zero value is valid (no mirror).
type CaptureConfig struct {
	// Interval between captures of a healthy host. Default 60s.
	Interval time.Duration
	// Debounce: a capture follows a burst of lifecycle events this long
	// after its first event. Default 200ms.
	Debounce time.Duration
	// HealthPoll: after a host was found not healthy, it is looked at again
	// after min(HealthPoll, Interval). Default 5s.
	HealthPoll time.Duration
	// MirrorDir, when set, gets a copy of every saved definition at
	// <MirrorDir>/<host>/<uuid>.xml, so an operator can `virsh define` it
	// by hand. It must be absolute. Files are 0600: secure XML may hold
	// secrets.
	MirrorDir string
	// CallTimeout caps each hypervisor call. Default 10s.
	CallTimeout time.Duration
	// Storage is passed to ParseVM to size domains for HostLoad.
	Storage StorageRules
	// StartSpread spreads the hosts' first captures over this long (each
	// host at a fixed offset from its name), so a daemon starting with
	// thousands of hosts does not dial every libvirtd at once. Default 0.
	StartSpread time.Duration
}

// InventoryStore is what Capture needs from the journal; *store.Store
// implements it.
type InventoryStore interface {
	PutInventory(host string, put []store.DomainRecord, remove []string) error
	Inventory(host string) ([]store.DomainRecord, error)
}

// CaptureClock is time as Capture sees it; tests pass a virtual one.
type CaptureClock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type captureWallClock struct{}

func (captureWallClock) Now() time.Time                         { return time.Now() }
func (captureWallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// CaptureDeps are Capture's collaborators. Hypervisor and Healthy are
// called from several goroutines at once.
type CaptureDeps struct {
	Store InventoryStore
	// Hypervisor returns the host's hypervisor connection; it does no I/O.
	Hypervisor func(host string) (Hypervisor, error)
	// Healthy is true only while the host's monitor state is normal.
	Healthy func(host string) bool
	Clock   CaptureClock // nil: the wall clock
	Log     zerolog.Logger
}

// HostLoad is a host's capacity and use as of its last capture.
type HostLoad struct {
	CPUs          int   `json:"cpus"`
	MemoryMiB     int64 `json:"memory_mib"`
	FreeMemoryMiB int64 `json:"free_memory_mib"`
	// Load is the share of the CPUs busy between the last two samples, in
	// [0, 1]; -1 when unknown (one sample only, counters went back after a
	// reboot, or the older sample is more than 3 intervals old).
	Load float64 `json:"load"`
	// UsedVCPUs and UsedMemoryMiB sum the sizes of the active domains.
	UsedVCPUs     int   `json:"used_vcpus"`
	UsedMemoryMiB int64 `json:"used_memory_mib"`
	// At is when the latest node sample was taken.
	At time.Time `json:"at"`
}

// CaptureStats count what Capture did since it was made.
type CaptureStats struct {
	Captures       uint64 `json:"captures"`        // captures that reached the journal
	Failures       uint64 `json:"failures"`        // captures that failed (hypervisor or journal)
	Skipped        uint64 `json:"skipped"`         // looks at a host that was not healthy
	MirrorFailures uint64 `json:"mirror_failures"` // mirror file writes or removals that failed
	StatsFailures  uint64 `json:"stats_failures"`  // node samples that failed
}

// Capture keeps the domain inventory: while a host is healthy it saves each
// domain's definition in the journal (and the mirror) on a period and on
// lifecycle events, and samples the host's load. Safe for concurrent use.
type Capture struct {
	cfg   CaptureConfig
	deps  CaptureDeps
	clock CaptureClock
	log   zerolog.Logger

	mu     sync.Mutex
	hosts  map[string]*hostState
	locks  map[string]chan struct{} // per host, kept across SetHosts so captures of a host never overlap
	runCtx context.Context          // non-nil while Run runs
	wg     sync.WaitGroup

	captures, failures, skipped, mirrorFailures, statsFailures atomic.Uint64

	// beforeRename, when set (tests only), runs after a mirror file's
	// temporary copy is complete and before it replaces the file.
	beforeRename func(tmp, final string)
}

// hostState is one host's memory. Fields below the line are guarded by the
// host's capture lock, load by Capture.mu.
type hostState struct {
	name   string
	cancel context.CancelFunc // its loop's, while it runs
	load   loadState

	parsed       map[string]parsedVM // by UUID
	transient    map[string]bool     // UUIDs already logged as transient
	mirrorSynced bool                // the mirror dir was compared with libvirt once
	lastErr      string              // last failure logged, to log changes only
}

type parsedVM struct {
	hash      string
	vcpus     int
	memoryMiB int64
	ok        bool
}

// NewCapture checks cfg and deps; it does no I/O.
func NewCapture(cfg CaptureConfig, deps CaptureDeps) (*Capture, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Interval", cfg.Interval}, {"Debounce", cfg.Debounce}, {"HealthPoll", cfg.HealthPoll}, {"CallTimeout", cfg.CallTimeout},
		{"StartSpread", cfg.StartSpread}} {
		if d.v < 0 {
			return nil, fmt.Errorf("inventory capture: %s %s is negative", d.name, d.v)
		}
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultCaptureInterval
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = DefaultCaptureDebounce
	}
	if cfg.HealthPoll == 0 {
		cfg.HealthPoll = DefaultHealthPoll
	}
	cfg.HealthPoll = min(cfg.HealthPoll, cfg.Interval)
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = DefaultCaptureTimeout
	}
	if cfg.MirrorDir != "" && !filepath.IsAbs(cfg.MirrorDir) {
		return nil, fmt.Errorf("inventory capture: MirrorDir %q is not an absolute path", cfg.MirrorDir)
	}
	switch {
	case deps.Store == nil:
		return nil, errors.New("inventory capture: CaptureDeps.Store is required")
	case deps.Hypervisor == nil:
		return nil, errors.New("inventory capture: CaptureDeps.Hypervisor is required")
	case deps.Healthy == nil:
		return nil, errors.New("inventory capture: CaptureDeps.Healthy is required")
	}
	c := &Capture{
		cfg: cfg, deps: deps, clock: deps.Clock,
		log:   deps.Log.With().Str("component", "inventory").Logger(),
		hosts: map[string]*hostState{},
		locks: map[string]chan struct{}{},
	}
	if c.clock == nil {
		c.clock = captureWallClock{}
	}
	return c, nil
}

// SetHosts sets the hosts to capture. While Run runs, loops start for new
// hosts and stop for removed ones (whose records stay in the journal). A
// host name must be usable as a directory name: not empty, ".", "..", and
// without '/' or NUL.
func (c *Capture) SetHosts(hosts []string) error {
	want := map[string]bool{}
	for _, h := range hosts {
		if err := checkHostName(h); err != nil {
			return fmt.Errorf("inventory capture: set hosts: %w", err)
		}
		want[h] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, st := range c.hosts {
		if !want[name] {
			if st.cancel != nil {
				st.cancel()
			}
			delete(c.hosts, name)
		}
	}
	for name := range want {
		if c.hosts[name] != nil {
			continue
		}
		st := &hostState{name: name, parsed: map[string]parsedVM{}, transient: map[string]bool{}}
		c.hosts[name] = st
		if c.locks[name] == nil {
			c.locks[name] = make(chan struct{}, 1)
		}
		if c.runCtx != nil {
			c.startLoop(st)
		}
	}
	return nil
}

func checkHostName(h string) error {
	switch {
	case h == "", h == ".", h == "..":
		return fmt.Errorf("host name %q cannot name a mirror directory", h)
	case strings.ContainsAny(h, "/\x00"):
		return fmt.Errorf("host name %q contains '/' or NUL", h)
	case len(h) > 255:
		return fmt.Errorf("host name is %d bytes, at most 255", len(h))
	}
	return nil
}

// Run captures every host until ctx ends, then waits for its loops and
// returns nil. It may run only once at a time.
func (c *Capture) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.runCtx != nil {
		c.mu.Unlock()
		return errors.New("inventory capture: Run is already running")
	}
	c.runCtx = ctx
	for _, st := range c.hosts {
		c.startLoop(st)
	}
	c.mu.Unlock()

	<-ctx.Done()
	c.mu.Lock()
	c.runCtx = nil
	for _, st := range c.hosts {
		if st.cancel != nil {
			st.cancel()
			st.cancel = nil
		}
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// startLoop runs st's loop under runCtx. c.mu must be held.
func (c *Capture) startLoop(st *hostState) {
	ctx, cancel := context.WithCancel(c.runCtx)
	st.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer cancel()
		c.loop(ctx, st)
	}()
}

// loop captures one host: now, every Interval, and after lifecycle events.
// Each host has its own loop, so a slow host delays only itself.
func (c *Capture) loop(ctx context.Context, st *hostState) {
	log := c.log.With().Str("host", st.name).Logger()
	var events <-chan hypervisor.Event
	var stopEvents context.CancelFunc = func() {}
	defer func() { stopEvents() }()
	subscribe := func() {
		hv, err := c.deps.Hypervisor(st.name)
		if err != nil {
			log.Warn().Err(err).Msg("no hypervisor connection for lifecycle events; retrying at the next interval")
			return
		}
		stopEvents()
		var ectx context.Context
		ectx, stopEvents = context.WithCancel(ctx)
		events = hv.Events(ectx)
	}

	// Lifecycle events are subscribed to once the host's libvirtd has
	// answered a capture: a stream per host that cannot be reached would
	// only redial it in the background.
	if off := startOffset(st.name, c.cfg.StartSpread); off > 0 {
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(off):
		}
	}
	wait, ok := c.attempt(ctx, st)
	if ok {
		subscribe()
	}
	next := c.clock.After(wait)
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-next:
			wait, ok := c.attempt(ctx, st)
			if ok && events == nil {
				subscribe()
			}
			next = c.clock.After(wait)
		case _, ok := <-events:
			if !ok {
				// The stream ended before ctx did: resubscribe at the next tick.
				events = nil
				continue
			}
			if debounce == nil {
				debounce = c.clock.After(c.cfg.Debounce)
			}
		case <-debounce:
			debounce = nil
			c.attempt(ctx, st)
		}
	}
}

// startOffset is host's fixed place within spread.
func startOffset(host string, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(host))
	return time.Duration(h.Sum64() % uint64(spread))
}

// attempt captures st if it is healthy and returns how long to wait
// before the next periodic look, and whether the capture worked.
func (c *Capture) attempt(ctx context.Context, st *hostState) (time.Duration, bool) {
	err := c.capture(ctx, st)
	if errors.Is(err, ErrCaptureUnhealthy) && ctx.Err() == nil {
		return c.cfg.HealthPoll, false
	}
	return c.cfg.Interval, err == nil
}

func (c *Capture) lockOf(host string) chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.locks[host]
}

// CaptureNow captures host at once (tests, the lab, an operator). It fails
// with ErrCaptureUnhealthy when the host is not healthy and with
// ErrCaptureUnknownHost when SetHosts did not name it.
func (c *Capture) CaptureNow(ctx context.Context, host string) error {
	c.mu.Lock()
	st := c.hosts[host]
	c.mu.Unlock()
	if st == nil {
		return fmt.Errorf("inventory capture: host %q: %w", host, ErrCaptureUnknownHost)
	}
	return c.capture(ctx, st)
}

// capture lists st's domains, writes what changed to the journal, then the
// mirror, and samples the node. Captures of one host never overlap.
func (c *Capture) capture(ctx context.Context, st *hostState) error {
	host := st.name
	lock := c.lockOf(host)
	select {
	case lock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("inventory capture: host %s: wait for the capture in progress: %w", host, ctx.Err())
	}
	defer func() { <-lock }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("inventory capture: host %s: %w", host, err)
	}
	if !c.deps.Healthy(host) {
		c.skipped.Add(1)
		return fmt.Errorf("inventory capture: host %s: %w", host, ErrCaptureUnhealthy)
	}
	err := c.captureLocked(ctx, st)
	switch {
	case errors.Is(err, ErrCaptureUnhealthy):
		c.skipped.Add(1)
		return err
	case err != nil:
		c.failures.Add(1)
	default:
		c.captures.Add(1)
	}
	// Log failures when they change, not once per interval.
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	switch {
	case msg == st.lastErr:
	case err != nil:
		c.log.Warn().Str("host", st.name).Err(err).Msg("inventory capture failed; records kept as they were")
	default:
		c.log.Info().Str("host", st.name).Msg("inventory capture works again")
	}
	st.lastErr = msg
	return err
}

func (c *Capture) captureLocked(ctx context.Context, st *hostState) error {
	host := st.name
	hv, err := c.deps.Hypervisor(host)
	if err != nil {
		return fmt.Errorf("inventory capture: host %s: hypervisor: %w", host, err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	doms, err := hv.Domains(cctx, true)
	cancel()
	if err != nil {
		return fmt.Errorf("inventory capture: host %s: list domains: %w", host, err)
	}
	now := c.clock.Now()

	sctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	ns, statsErr := hv.NodeStats(sctx)
	cancel()
	statsAt := c.clock.Now()

	// The host may have failed while we listed: a dying host's answer must
	// not prune the records a rebuild is about to need.
	if !c.deps.Healthy(host) {
		return fmt.Errorf("inventory capture: host %s: became unhealthy during the capture: %w", host, ErrCaptureUnhealthy)
	}
	stored, err := c.deps.Store.Inventory(host)
	if err != nil {
		return fmt.Errorf("inventory capture: host %s: %w", host, err)
	}
	d := diffInventory(host, stored, doms, now)
	c.logOdd(st, d)
	if len(d.put) > 0 || len(d.remove) > 0 {
		if err := c.deps.Store.PutInventory(host, d.put, d.remove); err != nil {
			return fmt.Errorf("inventory capture: host %s: %w", host, err)
		}
		c.log.Info().Str("host", host).Int("saved", len(d.put)).Int("removed", len(d.remove)).Msg("inventory changed")
	}
	if c.cfg.MirrorDir != "" {
		c.mirror(st, d)
	}

	usedVCPUs, usedMiB := c.usedBy(st, doms)
	c.mu.Lock()
	st.load.usedVCPUs, st.load.usedMiB = usedVCPUs, usedMiB
	if statsErr == nil {
		st.load.add(ns, statsAt, c.cfg.Interval/2)
	}
	c.mu.Unlock()
	if statsErr != nil {
		c.statsFailures.Add(1)
		c.log.Warn().Str("host", host).Err(statsErr).Msg("node sample failed; host load not updated (inventory saved)")
	}
	return nil
}

// logOdd logs transient domains once each, and persistent domains listed
// without XML.
func (c *Capture) logOdd(st *hostState, d inventoryDiff) {
	seen := make(map[string]bool, len(d.transient))
	for _, dom := range d.transient {
		seen[dom.UUID] = true
		if !st.transient[dom.UUID] {
			st.transient[dom.UUID] = true
			c.log.Warn().Str("host", st.name).Str("uuid", dom.UUID).Str("domain", dom.Name).
				Msg("transient domain has no saved definition; it cannot be rebuilt after a host failure")
		}
	}
	for u := range st.transient {
		if !seen[u] {
			delete(st.transient, u)
		}
	}
	for _, dom := range d.noXML {
		c.log.Warn().Str("host", st.name).Str("uuid", dom.UUID).Str("domain", dom.Name).
			Msg("domain listed without its XML; its saved record is kept as it was")
	}
}

// usedBy sums the sizes of doms' active domains, parsing each XML once.
func (c *Capture) usedBy(st *hostState, doms []hypervisor.Domain) (vcpus int, mib int64) {
	keep := make(map[string]bool, len(doms))
	for _, dom := range doms {
		keep[dom.UUID] = true
		if dom.XML == "" {
			continue
		}
		hash := store.InventoryHash(dom.XML)
		p, ok := st.parsed[dom.UUID]
		if !ok || p.hash != hash {
			p = parsedVM{hash: hash}
			vm, err := ParseVM(dom.XML, c.cfg.Storage)
			if err != nil {
				c.log.Warn().Str("host", st.name).Str("uuid", dom.UUID).Err(err).Msg("domain XML does not parse; its size is not counted in the host's load")
			} else {
				p.vcpus, p.memoryMiB, p.ok = vm.VCPUs, vm.MemoryMiB, true
			}
			st.parsed[dom.UUID] = p
		}
		if p.ok && dom.State.Active() {
			vcpus += p.vcpus
			mib += p.memoryMiB
		}
	}
	for u := range st.parsed {
		if !keep[u] {
			delete(st.parsed, u)
		}
	}
	return vcpus, mib
}

// HostLoad returns host's load as of its last capture; ok is false until a
// node sample succeeded or when the host is not configured.
func (c *Capture) HostLoad(host string) (HostLoad, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.hosts[host]
	if st == nil {
		return HostLoad{}, false
	}
	return st.load.of(c.clock.Now(), 3*c.cfg.Interval)
}

// Stats returns the counters.
func (c *Capture) Stats() CaptureStats {
	return CaptureStats{
		Captures: c.captures.Load(), Failures: c.failures.Load(), Skipped: c.skipped.Load(),
		MirrorFailures: c.mirrorFailures.Load(), StatsFailures: c.statsFailures.Load(),
	}
}

// inventoryDiff is what one capture changes.
type inventoryDiff struct {
	put        []store.DomainRecord
	remove     []string
	xmlChanged []string            // UUIDs in put whose XML changed: mirror writes
	current    map[string]string   // persistent domains listed with XML: UUID → XML
	keep       map[string]bool     // persistent domains still defined (with or without XML)
	transient  []hypervisor.Domain // skipped: nothing to rebuild from
	noXML      []hypervisor.Domain // persistent but listed without XML: record kept
}

// diffInventory compares a host's stored records with its domains now. It
// is pure. Only persistent domains are saved; a record whose domain is no
// longer defined (or is now transient) is removed; a record is rewritten
// when its XML, name, active state or autostart changed.
func diffInventory(host string, stored []store.DomainRecord, doms []hypervisor.Domain, now time.Time) inventoryDiff {
	old := make(map[string]store.DomainRecord, len(stored))
	for _, r := range stored {
		old[r.UUID] = r
	}
	d := inventoryDiff{current: map[string]string{}, keep: map[string]bool{}}
	listed := make(map[string]bool, len(doms))
	for _, dom := range doms {
		if dom.UUID == "" || listed[dom.UUID] {
			continue
		}
		listed[dom.UUID] = true
		switch {
		case !dom.Persistent:
			d.transient = append(d.transient, dom)
			continue
		case dom.XML == "":
			d.noXML = append(d.noXML, dom)
			d.keep[dom.UUID] = true
			continue
		}
		d.keep[dom.UUID] = true
		d.current[dom.UUID] = dom.XML
		hash := store.InventoryHash(dom.XML)
		active := dom.State.Active()
		r, known := old[dom.UUID]
		if known && r.Hash == hash && r.Name == dom.Name && r.Active == active && r.Autostart == dom.Autostart {
			continue
		}
		d.put = append(d.put, store.DomainRecord{Host: host, UUID: dom.UUID, Name: dom.Name, XML: dom.XML, Hash: hash, CapturedAt: now,
			Active: active, Autostart: dom.Autostart})
		if !known || r.Hash != hash {
			d.xmlChanged = append(d.xmlChanged, dom.UUID)
		}
	}
	for _, r := range stored {
		if !d.keep[r.UUID] {
			d.remove = append(d.remove, r.UUID)
		}
	}
	sort.Strings(d.remove)
	return d
}

// loadState keeps two CPU counter samples far enough apart to mean
// something, and the latest sample's capacity.
type loadState struct {
	prev, cur, last sample
	usedVCPUs       int
	usedMiB         int64
}

type sample struct {
	at time.Time
	ns hypervisor.NodeStats
}

// add records a node sample taken at at. A sample less than minWindow after
// the current one only refreshes capacity: event-driven captures come in
// bursts, and a load over a few milliseconds is noise. Counters that went
// back (a reboot) always shift, so the load reads unknown at once.
func (l *loadState) add(ns hypervisor.NodeStats, at time.Time, minWindow time.Duration) {
	s := sample{at: at, ns: ns}
	back := ns.BusyNs < l.cur.ns.BusyNs || ns.IdleNs < l.cur.ns.IdleNs
	switch {
	case l.cur.at.IsZero():
		l.cur = s
	case at.Sub(l.cur.at) >= minWindow || back:
		l.prev, l.cur = l.cur, s
	}
	l.last = s
}

// of is the HostLoad at now; Load is -1 when the older sample is more than
// stale old.
func (l *loadState) of(now time.Time, stale time.Duration) (HostLoad, bool) {
	if l.last.at.IsZero() {
		return HostLoad{}, false
	}
	hl := HostLoad{
		CPUs: l.last.ns.CPUs, MemoryMiB: int64(l.last.ns.MemoryKiB / 1024), FreeMemoryMiB: int64(l.last.ns.FreeKiB / 1024),
		Load: -1, UsedVCPUs: l.usedVCPUs, UsedMemoryMiB: l.usedMiB, At: l.last.at,
	}
	if !l.prev.at.IsZero() && now.Sub(l.prev.at) <= stale {
		if load, ok := hypervisor.CPULoad(l.prev.ns, l.cur.ns); ok {
			hl.Load = load
		}
	}
	return hl, true
}
