package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

// Hypervisor is the host's libvirtd as the agent uses it;
// drivers/libvirt.Client implements it. Calls get a context with a
// deadline.
type Hypervisor interface {
	Ping(ctx context.Context) error
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
	Start(ctx context.Context, uuid string) error
	// Destroy and Undefine get rid of evicted domains and drain the host;
	// a domain that does not exist is hypervisor.KindNotFound.
	Destroy(ctx context.Context, uuid string) error
	Undefine(ctx context.Context, uuid string) error
	// SetAutostart turns libvirt's autostart of a domain on or off; the
	// agent only ever turns it off (autostart.go).
	SetAutostart(ctx context.Context, uuid string, on bool) error
}

// CheckHypervisor is what the health checks need from libvirtd.
type CheckHypervisor interface {
	Ping(ctx context.Context) error
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
}

// Daemon is the chime-fence daemon as the agent uses it; DaemonClient
// implements it. Calls get a context with a deadline.
type Daemon interface {
	Assignment(ctx context.Context) (heartbeat.Assignment, error)
	Heartbeat(ctx context.Context, hb heartbeat.Heartbeat) (heartbeat.Ack, error)
}

// Config is one agent's settings. Host and BootID are required; zero
// durations take the defaults named on each field.
type Config struct {
	// Host is this host's name as the daemon knows it.
	Host string
	// BootID is the kernel's boot id; it changes at every boot, so the
	// daemon sees a reboot even when it missed no heartbeat.
	BootID string
	// Version is sent in every heartbeat.
	Version string
	// Interfaces are network interfaces that must be up (e.g. the
	// storage and business networks).
	Interfaces []string
	// Storage are directories (absolute) that must be writable, typically
	// the shared storage VM disks live on.
	Storage []string
	// HeartbeatInterval is used until the daemon's first answer names
	// its own. Default 5s.
	HeartbeatInterval time.Duration
	// ReconcileInterval is how often domains that should run are checked.
	// Default 60s (the seed's value).
	ReconcileInterval time.Duration
	// CheckTimeout is the deadline of each health check run. Default 5s.
	CheckTimeout time.Duration
	// CallTimeout bounds each libvirt call of reconcile and status, and
	// each assignment fetch. Default 30s.
	CallTimeout time.Duration
	// RetryInitial and RetryMax bound the backoff between failed
	// assignment fetches. Defaults 500ms and 30s.
	RetryInitial, RetryMax time.Duration
	// SysClassNet is where interface states are read. Default
	// /sys/class/net.
	SysClassNet string
	// Now is the clock for the times heartbeats carry. Default time.Now.
	Now func() time.Time
	// StateDir (absolute) holds the local drain marker and the last admin
	// state fetched. "" disables local drain: Drain refuses, and no marker
	// is ever read. chime-agent defaults it to DefaultStateDir.
	StateDir string
	// Checks, if set, is a separate libvirt connection for the health
	// checks. drivers/libvirt drops a connection when a call on it times
	// out, failing every call in flight on it: a check timing out while
	// libvirtd is busy must not cut a start of reconcile. Default: the
	// Hypervisor given to New.
	Checks CheckHypervisor
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

func (c Config) withDefaults() (Config, error) {
	var errs []error
	if !hostRE.MatchString(c.Host) {
		errs = append(errs, fmt.Errorf("host name %q: want letters, digits, '.', '_' or '-'", c.Host))
	}
	if strings.TrimSpace(c.BootID) == "" {
		errs = append(errs, errors.New("boot id is empty"))
	}
	for _, n := range c.Interfaces {
		if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/ \t\n") {
			errs = append(errs, fmt.Errorf("interface name %q is not a valid interface name", n))
		}
	}
	for _, p := range c.Storage {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("storage path %q is not absolute", p))
		}
	}
	if c.StateDir != "" && !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state directory %q is not absolute", c.StateDir))
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"heartbeat interval", &c.HeartbeatInterval, 5 * time.Second},
		{"reconcile interval", &c.ReconcileInterval, 60 * time.Second},
		{"check timeout", &c.CheckTimeout, 5 * time.Second},
		{"call timeout", &c.CallTimeout, 30 * time.Second},
		{"retry initial", &c.RetryInitial, 500 * time.Millisecond},
		{"retry max", &c.RetryMax, 30 * time.Second},
	} {
		switch {
		case *d.v < 0:
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, *d.v))
		case *d.v == 0:
			*d.v = d.def
		}
	}
	if c.HeartbeatInterval > 0 && (c.HeartbeatInterval < minInterval || c.HeartbeatInterval > maxInterval) {
		errs = append(errs, fmt.Errorf("heartbeat interval %s out of range %s..%s", c.HeartbeatInterval, minInterval, maxInterval))
	}
	if c.SysClassNet == "" {
		c.SysClassNet = "/sys/class/net"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, errors.Join(errs...)
}

// Agent is one host's chime-agent: heartbeats, health checks, the held
// assignment and the reconcile loop. Create it with New and run it with
// Run; Status may be called concurrently (the HTTP API does).
type Agent struct {
	cfg    Config
	hv     Hypervisor
	daemon Daemon
	log    zerolog.Logger
	start  time.Time
	held   *held
	checks *checker

	stopsMu sync.Mutex
	stops   Stops

	// gate orders marker writes against starts (drain.go).
	gate *gate
	// evictFaults are the evicted domains the last cleanup could not
	// finish; reported in every heartbeat until a round succeeds.
	evictMu     sync.Mutex
	evictFaults []heartbeat.Check
	// Owned by whoever calls apply (startup, then assignmentLoop).
	adminSeen   AdminSeen
	markerWhy   string // last reason the marker was kept, to log changes only
	markerErrAt string

	fetchNow     chan struct{}
	reconcileNow chan struct{}

	// autostart.go: the domains the last listing showed with autostart on,
	// and the evicted-but-active domains last logged.
	autoMu       sync.Mutex
	autoPending  []hypervisor.Domain
	splitSeen    string
	autostartNow chan struct{}
}

// New checks cfg and builds an agent; no I/O.
func New(cfg Config, hv Hypervisor, d Daemon, log zerolog.Logger) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if hv == nil {
		err = errors.Join(err, errors.New("no hypervisor"))
	}
	if d == nil {
		err = errors.Join(err, errors.New("no daemon client"))
	}
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	a := &Agent{
		cfg: cfg, hv: hv, daemon: d,
		log:          log.With().Str("host", cfg.Host).Logger(),
		start:        cfg.Now(),
		held:         newHeld(cfg.HeartbeatInterval),
		gate:         &gate{dir: cfg.StateDir},
		fetchNow:     make(chan struct{}, 1),
		reconcileNow: make(chan struct{}, 1),
		autostartNow: make(chan struct{}, 1),
	}
	var checks CheckHypervisor = hv
	if cfg.Checks != nil {
		checks = cfg.Checks
	}
	jobs := []*job{libvirtJob(checks)}
	for _, n := range cfg.Interfaces {
		jobs = append(jobs, interfaceJob(cfg.SysClassNet, n))
	}
	for _, p := range cfg.Storage {
		jobs = append(jobs, storageJob(p, cfg.Host))
	}
	a.checks = newChecker(jobs, cfg.CheckTimeout, func(d []hypervisor.Domain) { a.observe(d); a.listed(d) })
	return a, nil
}

func (a *Agent) logger(component string) zerolog.Logger {
	return a.log.With().Str("component", component).Logger()
}

// Run runs the agent until ctx is done, then returns nil. Call it once.
func (a *Agent) Run(ctx context.Context) error {
	log := a.logger("agent")
	log.Info().Str("boot_id", a.cfg.BootID).Str("version", a.cfg.Version).
		Strs("interfaces", a.cfg.Interfaces).Strs("storage", a.cfg.Storage).
		Str("heartbeat_interval", a.cfg.HeartbeatInterval.String()).Str("reconcile_interval", a.cfg.ReconcileInterval.String()).
		Msg("agent starting; admin state unknown until the daemon answers: no domain is started before")
	switch m, err := ReadMarker(a.cfg.StateDir); {
	case err != nil:
		log.Error().Err(err).Msg("drain marker unreadable: treated as drained, no domain will be started")
	case m != nil:
		log.Warn().Time("drained_at", m.DrainedAt).Str("by", m.By).
			Msg("host drained locally: no domain will be started until the daemon sets enabled or disabled after the drain")
	}
	a.startup(ctx)
	var wg sync.WaitGroup
	for _, loop := range []func(context.Context){a.checkLoop, a.heartbeatLoop, a.assignmentLoop, a.reconcileLoop, a.autostartLoop} {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	wg.Wait()
	log.Info().Msg("agent stopped")
	return nil
}

func trigger(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // one pending is enough
	}
}

// sleep waits d or until ctx is done; false means ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// observe runs every domain listing through Stops.
func (a *Agent) observe(doms []hypervisor.Domain) []hypervisor.Domain {
	a.stopsMu.Lock()
	defer a.stopsMu.Unlock()
	out, next := a.stops.Observe(doms)
	a.stops = next
	return out
}

// startup fetches the assignment once, before the first heartbeat, and
// gets rid of the evicted domains it names, so the host's first report
// already lacks them. A daemon that does not answer within the deadline
// leaves it to assignmentLoop (with backoff); no domain starts meanwhile.
func (a *Agent) startup(ctx context.Context) {
	log := a.logger("agent")
	fctx, cancel := context.WithTimeout(ctx, min(a.cfg.CallTimeout, startupFetchTimeout))
	asg, err := a.daemon.Assignment(fctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			log.Warn().Err(err).Msg("assignment not fetched at start; heartbeating without it, evicted domains are cleaned up once it arrives")
		}
		trigger(a.fetchNow)
		return
	}
	a.apply(asg)
	if len(asg.Evicted) > 0 {
		lctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
		doms, err := a.hv.Domains(lctx, false)
		cancel()
		a.setEvictFaults(a.evict(ctx, asg.Evicted, doms, err))
	}
}

// startupFetchTimeout bounds the first fetch, which delays the first
// heartbeat.
const startupFetchTimeout = 10 * time.Second

func (a *Agent) setEvictFaults(f []heartbeat.Check) {
	a.evictMu.Lock()
	defer a.evictMu.Unlock()
	a.evictFaults = f
}

func (a *Agent) evictionFaults() []heartbeat.Check {
	a.evictMu.Lock()
	defer a.evictMu.Unlock()
	return append([]heartbeat.Check(nil), a.evictFaults...)
}

func (a *Agent) checkLoop(ctx context.Context) {
	for {
		a.checks.round(ctx)
		if len(a.evictionFaults()) > 0 {
			trigger(a.reconcileNow) // retry the cleanup at the heartbeat's pace
		}
		if !sleep(ctx, a.held.heartbeatInterval()) {
			return
		}
	}
}

func (a *Agent) heartbeatLoop(ctx context.Context) {
	log := a.logger("heartbeat")
	// The first heartbeat carries real check results; every check reports
	// within CheckTimeout, so this waits at most that long, once.
	select {
	case <-a.checks.ready:
	case <-time.After(a.cfg.CheckTimeout + time.Second):
	case <-ctx.Done():
		return
	}
	var lastErr string
	failures := 0
	for seq := uint64(1); ; seq++ {
		interval := a.held.heartbeatInterval()
		next := time.Now().Add(interval)
		ack, err := a.beat(ctx, seq, interval)
		switch {
		case ctx.Err() != nil:
			return
		case err == nil && ack.Stale():
			// The daemon took a newer beat in this host's name than any we
			// sent: a forged beat (seq 10^12) or the replay of one. Every
			// further beat of this sequence would be refused while the
			// daemon counts the host silent: start a new one.
			old := a.start
			a.start = a.cfg.Now()
			if !a.start.After(old) {
				a.start = old.Add(time.Nanosecond)
			}
			log.Error().Uint64("seq", seq).Time("old_agent_start", old).Time("agent_start", a.start).Str("daemon_says", ack.OutcomeDetail).
				Msg("the daemon refused this heartbeat as stale: it took a newer one in this host's name that this agent never sent (a forged or replayed heartbeat); starting a new heartbeat sequence. Check who holds this host's agent credential")
			seq = 0 // the loop's seq++ makes it 1
			// Then wait as usual: if a forged agent_start is still ahead of
			// this one (the daemon bounds it by its clock-skew window), the
			// next beat starts over again, once an interval.
		case err != nil:
			failures++
			// Log when the error changes, not every beat of an outage.
			if msg := err.Error(); msg != lastErr {
				log.Warn().Err(err).Uint64("seq", seq).Int("failures", failures).Msg("heartbeat not delivered")
				lastErr = msg
			}
		case failures > 0:
			log.Info().Uint64("seq", seq).Int("failures", failures).Msg("daemon answers heartbeats again")
			failures, lastErr = 0, ""
		case seq == 1:
			log.Info().Str("interval", interval.String()).Msg("first heartbeat delivered")
		}
		if !sleep(ctx, time.Until(next)) {
			return
		}
	}
}

// beat sends one heartbeat under a deadline of one interval and applies
// the ack.
func (a *Agent) beat(ctx context.Context, seq uint64, interval time.Duration) (heartbeat.Ack, error) {
	health, doms := a.checks.snapshot()
	var evicted []heartbeat.AssignedDomain
	if asg := a.held.last(); asg != nil {
		evicted = asg.Evicted
	}
	health.Evictions = evictionHealth(a.evictionFaults(), evicted, doms)
	hb := heartbeat.Heartbeat{
		Host: a.cfg.Host, BootID: a.cfg.BootID, Seq: seq,
		AgentStart: a.start, AgentVersion: a.cfg.Version, SentAt: a.cfg.Now(),
		Health: health, Domains: doms,
	}
	switch m, err := ReadMarker(a.cfg.StateDir); {
	case err != nil:
		hb.LocalDrain = &heartbeat.LocalDrain{By: "unknown (marker unreadable)"}
	case m != nil:
		hb.LocalDrain = &heartbeat.LocalDrain{Since: m.DrainedAt, By: m.By}
	}
	if pending, err := PendingMigrations(a.cfg.StateDir); err != nil {
		log := a.logger("heartbeat")
		log.Warn().Err(err).Msg("local migrations not reported")
	} else {
		hb.LocalMigrations = pending
	}
	hctx, cancel := context.WithTimeout(ctx, interval)
	defer cancel()
	ack, err := a.daemon.Heartbeat(hctx, hb)
	if err != nil {
		return heartbeat.Ack{}, err
	}
	a.checks.sent(health.IOErrors)
	if err := AckMigrations(a.cfg.StateDir, ack.LocalMigrationsSeen); err != nil {
		log := a.logger("heartbeat")
		log.Warn().Err(err).Msg("local migrations acknowledged by the daemon not marked; they are sent again")
	}
	before := a.held.adminState()
	if a.held.setAck(ack) {
		trigger(a.fetchNow)
	}
	if after := a.held.adminState(); after != before {
		log := a.logger("heartbeat")
		log.Info().Str("admin_state", after).Str("was", before).Uint64("assignment_revision", ack.AssignmentRevision).
			Msg("admin state changed (heartbeat ack)")
		trigger(a.reconcileNow)
	}
	return ack, nil
}

// assignmentLoop fetches the assignment at start and whenever an ack says
// it changed, retrying with backoff. A heartbeat ack during the backoff
// proves the daemon answers again and retries at once.
func (a *Agent) assignmentLoop(ctx context.Context) {
	log := a.logger("agent")
	b := &backoff.ExponentialBackOff{InitialInterval: a.cfg.RetryInitial, RandomizationFactor: 0.2,
		Multiplier: 2, MaxInterval: a.cfg.RetryMax}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.fetchNow:
		}
		b.Reset()
		for attempt := 1; ; attempt++ {
			fctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
			asg, err := a.daemon.Assignment(fctx)
			cancel()
			if err == nil {
				a.apply(asg)
				break
			}
			if ctx.Err() != nil {
				return
			}
			wait := b.NextBackOff()
			log.Warn().Err(err).Int("attempt", attempt).Str("retry_in", wait.String()).Str("admin_state", a.held.adminState()).
				Msg("assignment not fetched; reconcile starts nothing until it is")
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			case <-a.fetchNow:
			}
		}
	}
}

func (a *Agent) apply(asg heartbeat.Assignment) {
	before := a.held.adminState()
	log := a.logger("agent")
	ev := log.Debug()
	if a.held.setAssignment(asg) {
		ev = log.Info()
		trigger(a.reconcileNow)
	}
	ev.Uint64("revision", asg.Revision).Str("admin_state", asg.AdminState.String()).Str("was", before).
		Int("domains", len(asg.Domains)).Int("evicted", len(asg.Evicted)).Msg("assignment")
	// Remembered for chime-agent drain, which records it in the marker.
	if seen := adminSeenOf(asg); a.cfg.StateDir != "" && (seen.State != a.adminSeen.State || !seen.Since.Equal(a.adminSeen.Since)) {
		if err := writeFileSync(a.cfg.StateDir, AdminFile, seen); err != nil {
			log.Warn().Err(err).Msg("cannot record the admin state in the state directory")
		} else {
			a.adminSeen = seen
		}
	}
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.reconcileNow:
		}
		a.reconcile(ctx)
	}
}

// reconcile lists the local domains, gets rid of evicted ones, lifts the
// local drain when the daemon says so, plans, and starts what Plan says.
func (a *Agent) reconcile(ctx context.Context) {
	log := a.logger("reconcile")
	cur := a.held.current()
	if cur == nil {
		log.Debug().Str("admin_state", a.held.adminState()).Msg("no current assignment: starting nothing")
		return
	}
	a.liftMarker(cur)
	mayStart := cur.AdminState.MayStartDomains()
	if !mayStart && len(cur.Evicted) == 0 {
		a.setEvictFaults(nil)
		log.Debug().Str("admin_state", cur.AdminState.String()).Msg("host may not start domains: starting nothing")
		return
	}
	lctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	doms, err := a.hv.Domains(lctx, false)
	cancel()
	if len(cur.Evicted) > 0 {
		a.setEvictFaults(a.evict(ctx, cur.Evicted, doms, err))
	} else {
		a.setEvictFaults(nil)
	}
	if err != nil {
		log.Warn().Err(err).Msg("cannot list domains: starting nothing this round")
		return
	}
	switch m, merr := ReadMarker(a.cfg.StateDir); {
	case !mayStart:
		log.Debug().Str("admin_state", cur.AdminState.String()).Msg("host may not start domains: starting nothing")
		return
	case m != nil || merr != nil:
		log.Debug().Str("admin_state", "drained").Bool("local_drain", true).Msg("host drained locally: starting nothing")
		return
	}
	started := 0
	for _, act := range Plan(cur, a.observe(doms)) {
		ev := log.With().Str("action", act.Kind.String()).Str("uuid", act.UUID).Str("domain", act.Name).
			Str("reason", act.Reason).Uint64("assignment_revision", cur.Revision).Logger()
		switch act.Kind {
		case Missing:
			ev.Warn().Msg("domain should run here but is not defined; not creating it")
		case Hold:
			ev.Info().Msg("domain should run but stays stopped")
		case Start:
			if a.start1(ctx, act.UUID, ev) {
				started++
			}
		}
	}
	if started > 0 || len(cur.Evicted) > 0 {
		a.checks.round(ctx) // the next heartbeat shows what changed
	}
}

// start1 starts one domain under the gate, after checking again that
// nothing forbids it now: an ack may have drained the host or a new
// assignment moved the domain while we listed, and a local drain may have
// begun. It reports whether the domain started.
func (a *Agent) start1(ctx context.Context, uuid string, ev zerolog.Logger) bool {
	unlock, err := a.gate.lock()
	if err != nil {
		ev.Error().Err(err).Msg("not starting: cannot lock the state directory")
		return false
	}
	defer unlock()
	if m, err := ReadMarker(a.cfg.StateDir); m != nil || err != nil {
		ev.Info().Msg("not starting: the host was drained locally meanwhile")
		return false
	}
	if now := a.held.current(); now == nil || !now.AdminState.MayStartDomains() || !hasDomain(now, uuid) || isEvicted(now, uuid) {
		ev.Info().Str("admin_state", a.held.adminState()).Msg("not starting: the assignment changed meanwhile")
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	err = a.hv.Start(sctx, uuid)
	cancel()
	switch {
	case hypervisor.KindOf(err) == hypervisor.KindConflict:
		ev.Error().Err(err).Msg("start refused: its disk is in use elsewhere (possible split brain)")
	case err != nil:
		ev.Error().Err(err).Msg("start failed")
	default:
		ev.Info().Msg("domain started")
		return true
	}
	return false
}

// liftMarker removes the local drain marker when the daemon's assignment
// says the host may run domains again and said so after the drain
// (MarkerLifts). The decision is taken again under the gate: a drain may
// have rewritten the marker meanwhile.
func (a *Agent) liftMarker(cur *heartbeat.Assignment) {
	if a.cfg.StateDir == "" {
		return
	}
	log := a.logger("drain")
	m, err := ReadMarker(a.cfg.StateDir)
	if err != nil {
		if msg := err.Error(); msg != a.markerErrAt {
			log.Error().Err(err).Msg("drain marker unreadable: treated as drained")
			a.markerErrAt = msg
		}
		return
	}
	a.markerErrAt = ""
	if m == nil {
		return
	}
	if ok, why := MarkerLifts(*m, *cur); !ok {
		if why != a.markerWhy {
			log.Info().Str("why", why).Msg("local drain kept")
			a.markerWhy = why
		}
		return
	}
	unlock, err := a.gate.lock()
	if err != nil {
		log.Error().Err(err).Msg("local drain kept: cannot lock the state directory")
		return
	}
	defer unlock()
	m, err = ReadMarker(a.cfg.StateDir)
	if err != nil || m == nil {
		return
	}
	ok, why := MarkerLifts(*m, *cur)
	if !ok {
		return
	}
	if err := os.Remove(filepath.Join(a.cfg.StateDir, MarkerFile)); err != nil {
		log.Error().Err(err).Msg("local drain should end but the marker cannot be removed")
		return
	}
	if err := syncDir(a.cfg.StateDir); err != nil {
		log.Warn().Err(err).Msg("marker removed; syncing the state directory failed")
	}
	a.markerWhy = ""
	log.Warn().Str("why", why).Time("drained_at", m.DrainedAt).Msg("local drain lifted: domains may be started again")
}

func isEvicted(a *heartbeat.Assignment, uuid string) bool {
	for _, d := range a.Evicted {
		if d.UUID == uuid {
			return true
		}
	}
	return false
}

func hasDomain(a *heartbeat.Assignment, uuid string) bool {
	for _, d := range a.Domains {
		if d.UUID == uuid {
			return true
		}
	}
	return false
}

// Status is the agent's view of its host, as GET /v1/status returns it
// (drivers/agent decodes it).
type Status struct {
	Host   string `json:"host"`
	BootID string `json:"boot_id"`
	// AdminState is "enabled", "disabled", "drained", or "unknown" before
	// the daemon answered. It is "drained" while the host is drained
	// locally, whatever the daemon says.
	AdminState string `json:"admin_state"`
	// LocalDrain: the host carries the local drain marker (or an
	// unreadable one); LocalDrainSince is when it was written.
	LocalDrain      bool           `json:"local_drain"`
	LocalDrainSince time.Time      `json:"local_drain_since,omitzero"`
	Domains         []StatusDomain `json:"domains"`
}

// StatusDomain is one local domain.
type StatusDomain struct {
	UUID   string                 `json:"uuid"`
	Name   string                 `json:"name"`
	State  hypervisor.DomainState `json:"state"`
	Reason string                 `json:"reason,omitempty"`
}

// Status lists the domains now (never from a cache: the daemon uses it to
// verify that a host stopped running domains). An error means the agent
// cannot tell, which the caller must not read as "no domains".
func (a *Agent) Status(ctx context.Context) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	doms, err := a.hv.Domains(ctx, false)
	if err != nil {
		return Status{}, fmt.Errorf("list domains: %w", err)
	}
	a.observe(doms) // remember reasons; report libvirt's own
	st := Status{Host: a.cfg.Host, BootID: a.cfg.BootID, AdminState: a.held.adminState(), Domains: make([]StatusDomain, 0, len(doms))}
	if m, err := ReadMarker(a.cfg.StateDir); m != nil || err != nil {
		st.AdminState, st.LocalDrain = node.Drained.String(), true
		if m != nil {
			st.LocalDrainSince = m.DrainedAt
		}
	}
	for _, d := range doms {
		st.Domains = append(st.Domains, StatusDomain{UUID: d.UUID, Name: d.Name, State: d.State, Reason: d.Reason})
	}
	return st, nil
}

// Drain drains the host locally (POST /v1/drain): the marker first, then
// every active domain destroyed; see DrainLocal. The drain goes on when
// ctx ends after the marker is written (destroys have their own
// deadlines): a half-drained host helps nobody.
func (a *Agent) Drain(ctx context.Context) (DrainResult, error) {
	var admin *AdminSeen
	if asg := a.held.last(); asg != nil {
		s := adminSeenOf(*asg)
		admin = &s
	}
	res, err := DrainLocal(context.WithoutCancel(ctx), a.hv, DrainOptions{Host: a.cfg.Host, StateDir: a.cfg.StateDir, By: "api",
		Now: a.cfg.Now, CallTimeout: a.cfg.CallTimeout, Admin: admin, gate: a.gate}, a.logger("drain"))
	a.checks.round(ctx) // the next heartbeat shows the domains stopped
	return res, err
}
