package detector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// The engine's collaborators. cmd/ wires drivers into them; tests use fakes.
type (
	// Prober runs one active probe round against a host (TCP to the agent
	// and libvirt ports, ICMP) and reports whether anything answered.
	// conclusive is false when no probe could be performed at all (e.g. ICMP
	// not permitted and no TCP target): that is evidence of nothing.
	Prober interface {
		ProbeHost(ctx context.Context, host string) (answered, conclusive bool, detail string)
	}
	// ReferenceProber probes the daemon's own reference addresses.
	ReferenceProber interface {
		ProbeReferences(ctx context.Context) (answered bool, detail string)
	}
	// PowerReader reads a host's power state from its BMC (never acts).
	PowerReader interface {
		ReadPower(ctx context.Context, host string) (power.State, error)
	}
	// ReadinessChecker checks a host's fence levels the way test-node does.
	ReadinessChecker interface {
		CheckReadiness(ctx context.Context, host string) Readiness
	}
	// History records transitions and verdicts; *store.Store satisfies it.
	History interface {
		Append(recs ...store.Record) ([]store.Record, error)
	}
	// MemoStore keeps what must survive a restart; *store.Store satisfies it.
	MemoStore interface {
		PutHostMemos(map[string]store.HostMemo) error
	}
	// Alerter tells a human. It must not block for long.
	Alerter interface {
		Alert(ctx context.Context, a Alert)
	}
	// Clock is the daemon's time source.
	Clock interface{ Now() time.Time }
)

// Readiness is one fence-readiness check of a host.
type Readiness struct {
	At      time.Time `json:"at"`
	Ready   bool      `json:"ready"`
	Summary string    `json:"summary"`
}

// Alert is something an operator should hear about.
type Alert struct {
	At            time.Time `json:"at"`
	Host          string    `json:"host,omitempty"`
	Kind          string    `json:"kind"` // verdict name, AlertStormPaused, AlertStormCleared, "readiness", "would-fence"
	Summary       string    `json:"summary"`
	CorrelationID string    `json:"correlation_id,omitempty"`
}

// HostConfig is one watched host.
type HostConfig struct {
	Name string
	Rack string
	// ReadinessInterval is how often fence readiness is checked; 0 never.
	ReadinessInterval time.Duration
	// Isolation is the host's on_isolation policy; the zero value alerts.
	Isolation IsolationPolicy
}

// EngineConfig is the engine's tuning.
type EngineConfig struct {
	Hosts   []HostConfig
	Monitor MonitorConfig
	Storm   StormGuard
	// References is how many reference addresses are configured (0: none).
	References int
	// Enforce is false in observe mode. In enforce mode a host-down verdict,
	// and an isolated-or-hung one whose policy fences once its grace is
	// over (IsolationFenceDue), goes to Deps.OnHostDown; in observe mode it
	// is recorded as "would fence". Switching to enforce by Reconfigure
	// hands over every host whose verdict already acts.
	Enforce bool
	// Tick is how often hosts are re-judged; default min(interval/20, 50ms).
	Tick time.Duration
	// Concurrency limits for outgoing checks.
	MaxProbes, MaxBMCReads, MaxReadiness int
	// MemoEvery is how often changed host memos are persisted; default 5s.
	MemoEvery time.Duration
}

// Deps are the engine's collaborators. All but Clock and Log are required.
type Deps struct {
	Clock     Clock
	Prober    Prober
	Refs      ReferenceProber
	Power     PowerReader
	Readiness ReadinessChecker
	History   History
	Memos     MemoStore
	Alerter   Alerter
	Log       zerolog.Logger
	// Seed makes readiness jitter reproducible in tests; 0 picks one.
	Seed uint64
	// OnHostDown, in enforce mode, receives every host-down verdict, and
	// every isolated-or-hung host whose isolation fence fell due (once per
	// unbroken hold of the verdict). It is called with the host's lock held: it must not block or call back
	// into the engine (recovery.Coordinator.HostDown only queues).
	OnHostDown func(DownEvent)
}

// Alert kinds of the storm guard, and of an isolation fence handed over.
const (
	AlertStormPaused    = "storm-paused"
	AlertStormCleared   = "storm-cleared"
	AlertIsolationFence = "isolation-fence"
	// AlertHeartbeatStale: a heartbeat older than one already taken from
	// the host but sent after it: a forged beat overtook the agent's
	// sequence (critical).
	AlertHeartbeatStale = "heartbeat-stale"
	// AlertHeartbeatReplayed: a heartbeat older than one already taken
	// and sent before it: a replay, or a datagram delayed past its
	// successor (refused either way; a warning).
	AlertHeartbeatReplayed = "heartbeat-replayed"
	// AlertHeartbeatSkewed: a heartbeat whose sent_at is outside
	// detection.heartbeat_max_clock_skew of the daemon's clock.
	AlertHeartbeatSkewed = "heartbeat-skewed"
)

// DownEvent is a host-down verdict handed to the fencer.
type DownEvent struct {
	At            time.Time
	Host, Rack    string
	CorrelationID string
	Reason        string
	// Isolated: the verdict is isolated-or-hung (BMC reads on) and the
	// host's on_isolation policy fences it, not host-down. The fencer must
	// then re-check IsolationFenceDue, and prove the power Off by a BMC
	// read-back: nothing else shows that a hung host's QEMUs are dead.
	Isolated bool
}

// ErrUnknownHost is returned for a heartbeat from a host not in the config.
var ErrUnknownHost = errors.New("unknown host")

type hostEntry struct {
	mu           sync.Mutex
	cfg          HostConfig
	m            *Monitor
	agentVersion string
	skew         time.Duration
	probing      bool
	nextProbe    time.Time // after an inconclusive round
	readingBMC   bool
	checking     bool
	readiness    *Readiness
	nextCheck    time.Time
	dirty        bool
	// persisted is the Mark in the last memo written (or restored).
	persisted Mark
	markAt    time.Time // when the memo was last written
	// refused is the last refused (stale or skewed) heartbeat's reason,
	// for status; alertAt rate-limits its alerts, by kind.
	refused   string
	refusedAt time.Time
	alertAt   map[string]time.Time
	// isoFor is the Monitor.IsolatedSince whose due isolation fence was
	// acted on: handed to the fencer (isoHanded) or, in observe mode,
	// recorded as "would fence".
	isoFor    time.Time
	isoHanded bool

	// Step's bookkeeping (schedule.go): idx is set with stepMu held, rack
	// with stepMu and mu; the rest is under mu, except silentPos, under
	// Engine.sum.mu.
	idx          int32
	rack         int
	gone         bool // removed by Reconfigure
	asleep       bool
	wakeAt       time.Time // visit at or after
	sleptAt      time.Time // the Step that found it idle
	sleepCfg     MonitorConfig
	tallied      bool // in the silent tally, as of talliedSince and talliedRack
	talliedSince time.Time
	talliedRack  int
	silentPos    int
}

// Engine runs every host's Monitor against real time and real probes.
type Engine struct {
	cfg  EngineConfig
	deps Deps
	log  zerolog.Logger

	// stepMu serialises Step and Reconfigure; it guards sched, order's
	// indexes and the rack totals.
	stepMu     sync.Mutex
	sched      schedule
	sum        summary
	rackNames  []string
	rackTotals []int

	hostsMu sync.RWMutex
	hosts   map[string]*hostEntry
	order   []*hostEntry // by name

	stormMu  sync.Mutex
	storm    StormState
	stormID  string
	refs     References
	refsBusy bool

	recMu   sync.Mutex
	pending []store.Record
	recWake chan struct{}

	sem   struct{ probe, bmc, ready chan struct{} }
	wg    sync.WaitGroup
	rnd   *mrand.Rand
	rndMu sync.Mutex
}

// NewEngine builds the engine; memos restore boot ids, monitor states and
// verdicts from before a restart.
func NewEngine(cfg EngineConfig, deps Deps, memos map[string]store.HostMemo) (*Engine, error) {
	if err := cfg.Monitor.Validate(); err != nil {
		return nil, fmt.Errorf("detector: %w", err)
	}
	if deps.Prober == nil || deps.Power == nil || deps.Readiness == nil || deps.History == nil || deps.Memos == nil || deps.Alerter == nil {
		return nil, errors.New("detector: engine needs a prober, a power reader, a readiness checker, history, memos and an alerter")
	}
	if deps.Clock == nil {
		deps.Clock = realClock{}
	}
	if cfg.Tick <= 0 {
		cfg.Tick = min(cfg.Monitor.HeartbeatInterval/20, 50*time.Millisecond)
		cfg.Tick = max(cfg.Tick, 5*time.Millisecond)
	}
	if cfg.MemoEvery <= 0 {
		cfg.MemoEvery = 5 * time.Second
	}
	cfg.MaxProbes = orDefault(cfg.MaxProbes, 256)
	cfg.MaxBMCReads = orDefault(cfg.MaxBMCReads, 64)
	cfg.MaxReadiness = orDefault(cfg.MaxReadiness, 4)
	seed := deps.Seed
	if seed == 0 {
		seed = mrand.Uint64()
	}
	e := &Engine{cfg: cfg, deps: deps, log: deps.Log.With().Str("component", "detector").Logger(),
		recWake: make(chan struct{}, 1), rnd: mrand.New(mrand.NewPCG(seed, seed>>1))}
	e.sem.probe = make(chan struct{}, cfg.MaxProbes)
	e.sem.bmc = make(chan struct{}, cfg.MaxBMCReads)
	e.sem.ready = make(chan struct{}, cfg.MaxReadiness)
	e.hosts = e.buildHosts(cfg.Hosts, nil, memos, deps.Clock.Now())
	e.setRoster(e.hosts)
	return e, nil
}

func orDefault(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (e *Engine) buildHosts(cfgs []HostConfig, old map[string]*hostEntry, memos map[string]store.HostMemo, now time.Time) map[string]*hostEntry {
	hosts := make(map[string]*hostEntry, len(cfgs))
	for _, hc := range cfgs {
		if h, ok := old[hc.Name]; ok {
			h.mu.Lock()
			h.cfg = hc
			h.mu.Unlock()
			hosts[hc.Name] = h
			continue
		}
		m := NewMonitor(now)
		if memo, ok := memos[hc.Name]; ok {
			m.BootID = memo.BootID
			m.LastHeartbeat = memo.LastHeartbeat
			// The replay high-water mark: a beat captured before the
			// restart must not be taken after it.
			m.AgentStart, m.Seq = memo.AgentStart, memo.Seq
			if st, err := node.ParseMonitorState(memo.Monitor); err == nil && (st == node.Unreachable || st == node.Error) {
				// Keep the hysteresis across a restart: a host that was
				// unreachable must still earn its way back.
				m.State = st
			}
			if v, err := ParseVerdict(memo.LastVerdict); err == nil && conclusive(v) {
				m.Verdict, m.VerdictAt, m.VerdictReason = v, memo.LastVerdictAt, "restored from before the daemon restarted"
			}
		}
		h := &hostEntry{cfg: hc, m: m, silentPos: -1, persisted: m.Mark()}
		h.nextCheck = now.Add(e.jitter(min(hc.ReadinessInterval, 30*time.Second)))
		hosts[hc.Name] = h
	}
	return hosts
}

// Reconfigure applies a reloaded config: new hosts start unknown, removed
// hosts are forgotten, the rest keep their state.
func (e *Engine) Reconfigure(cfg EngineConfig) error {
	if err := cfg.Monitor.Validate(); err != nil {
		return fmt.Errorf("detector: %w", err)
	}
	e.stepMu.Lock()
	defer e.stepMu.Unlock()
	e.hostsMu.Lock()
	defer e.hostsMu.Unlock()
	cfg.Tick, cfg.MemoEvery = e.cfg.Tick, e.cfg.MemoEvery
	cfg.MaxProbes, cfg.MaxBMCReads, cfg.MaxReadiness = e.cfg.MaxProbes, e.cfg.MaxBMCReads, e.cfg.MaxReadiness
	wasEnforce := e.cfg.Enforce
	e.cfg = cfg
	old := e.hosts
	now := e.deps.Clock.Now()
	e.hosts = e.buildHosts(cfg.Hosts, old, nil, now)
	for n, h := range old {
		if e.hosts[n] != h {
			e.forget(h)
		}
	}
	e.setRoster(e.hosts)
	if cfg.Enforce && !wasEnforce {
		e.enforceNow(now)
	}
	return nil
}

// enforceNow hands over what observe mode only recorded: every host whose
// verdict is host-down now. A host whose isolation fence is due is handed
// over at the next Step (checkIsolation), which re-judges it first. Called
// with stepMu and hostsMu held.
func (e *Engine) enforceNow(now time.Time) {
	e.log.Warn().Msg("mode is now enforce: re-examining every host whose verdict acts (host-down; isolated-or-hung past its grace when its policy fences)")
	for _, h := range e.order {
		h.mu.Lock()
		m := h.m
		switch {
		case m.Verdict == HostDown && e.deps.OnHostDown != nil:
			e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).
				Msgf("%s is down (%s): handing it to the fencer now that the mode is enforce", h.cfg.Name, m.VerdictReason)
			e.deps.OnHostDown(DownEvent{At: now, Host: h.cfg.Name, Rack: h.cfg.Rack, CorrelationID: m.Incident, Reason: m.VerdictReason})
		case m.Verdict == IsolatedOrHung && h.cfg.Isolation.Action.Fences():
			e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).
				Msgf("%s is isolated or hung: its on_isolation %s applies from the next tick", h.cfg.Name, h.cfg.Isolation.Action)
		}
		h.mu.Unlock()
	}
}

// checkIsolation hands a host whose isolation fence is due to the fencer
// (enforce) or records that it would be fenced (observe), once per
// unbroken hold of the verdict. Called with h.mu held.
func (e *Engine) checkIsolation(ctx context.Context, h *hostEntry, now time.Time, cfg EngineConfig, paused bool, recs *[]store.Record) {
	m := h.m
	due, _, why := IsolationFenceDue(m.Verdict, m.IsolatedSince, h.cfg.Isolation, paused, now)
	if !due || h.isoFor.Equal(m.IsolatedSince) && (h.isoHanded || !cfg.Enforce) {
		return
	}
	h.isoFor = m.IsolatedSince
	why = fmt.Sprintf("%s: %s", why, m.VerdictReason)
	a := Alert{At: now, Host: h.cfg.Name, Kind: AlertIsolationFence, Summary: why, CorrelationID: m.Incident}
	if cfg.Enforce && e.deps.OnHostDown != nil {
		h.isoHanded = true
		e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).Msgf("%s is %s: handing it to the fencer", h.cfg.Name, why)
		e.deps.OnHostDown(DownEvent{At: now, Host: h.cfg.Name, Rack: h.cfg.Rack, CorrelationID: m.Incident, Reason: why, Isolated: true})
		e.deps.Alerter.Alert(ctx, a)
		return
	}
	h.isoHanded = false
	why = fmt.Sprintf("would fence %s (on_isolation %s) because it is %s", h.cfg.Name, h.cfg.Isolation.Action, why)
	if cfg.Enforce {
		why += " (mode enforce, but no fencer is wired: nothing was done)"
	}
	e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).Msg(why)
	ev, _ := json.Marshal(evidenceOf(m, now))
	*recs = append(*recs, store.Record{At: now, Host: h.cfg.Name, Kind: "would-fence", From: m.Verdict.String(), To: "isolation-fence",
		Reason: why, CorrelationID: m.Incident, Evidence: ev})
	a.Kind, a.Summary = "would-fence", why
	e.deps.Alerter.Alert(ctx, a)
}

// jitter is a uniformly random duration in [0, d).
func (e *Engine) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	e.rndMu.Lock()
	defer e.rndMu.Unlock()
	return time.Duration(e.rnd.Int64N(int64(d)))
}

func (e *Engine) host(name string) (*hostEntry, MonitorConfig, bool) {
	e.hostsMu.RLock()
	defer e.hostsMu.RUnlock()
	h, ok := e.hosts[name]
	return h, e.cfg.Monitor, ok
}

// Heartbeat takes one validated heartbeat, stamped with the daemon's clock.
// It never blocks on I/O: records and alerts are queued. Only an accepted
// heartbeat changes anything: a duplicate, stale, late or skewed one (Order)
// describes the past or cannot be dated, and its content (its domain list
// included) must not be acted on.
func (e *Engine) Heartbeat(hb heartbeat.Heartbeat) (Outcome, error) {
	h, mc, ok := e.host(hb.Host)
	if !ok {
		return Outcome{}, fmt.Errorf("detector: heartbeat from host %q: %w", hb.Host, ErrUnknownHost)
	}
	now := e.deps.Clock.Now()
	h.mu.Lock()
	ch, o := h.m.Heartbeat(Beat{At: now, BootID: hb.BootID, Seq: hb.Seq, AgentStart: hb.AgentStart, SentAt: hb.SentAt, Fault: hb.Health.Fault()}, mc)
	var recs []store.Record
	var alert *Alert
	switch o.Intake {
	case IntakeAccepted:
		h.agentVersion = hb.AgentVersion
		if !hb.SentAt.IsZero() {
			h.skew = hb.SentAt.Sub(now)
		}
		if !hb.AgentStart.Equal(h.persisted.AgentStart) {
			// A new agent process: persist its mark with the next memo
			// flush even if nothing else about the host changed.
			h.dirty = true
		}
		e.touched(h)
	case IntakeLate:
		e.log.Warn().Str("host", hb.Host).Uint64("seq", hb.Seq).Time("sent_at", hb.SentAt).
			Msg("dropped a heartbeat that arrived long after it was sent; it proves nothing about the host now")
	case IntakeStale, IntakeSkewed:
		h.refused, h.refusedAt = o.Intake.String()+": "+o.Reason, now
		kind, summary := refusalKind(h.m, hb, o)
		if at, ok := h.alertAt[kind]; !ok || now.Sub(at) >= staleAlertEvery {
			if h.alertAt == nil {
				h.alertAt = map[string]time.Time{}
			}
			h.alertAt[kind] = now
			alert, recs = e.refusal(h, hb, kind, summary, now)
		}
	}
	recs = append(recs, e.stamp(h, ch)...)
	h.mu.Unlock()
	e.record(recs)
	if alert != nil {
		e.deps.Alerter.Alert(context.Background(), *alert)
	}
	return o, nil
}

// staleAlertEvery rate-limits the alert and record of refused heartbeats,
// per host and kind: a replay or a wrong clock goes on every beat.
const staleAlertEvery = time.Minute

// refusalKind names a stale or skewed heartbeat's alert and says why. A
// live agent sends no stale heartbeat: one sent after the newest taken was
// overtaken by a beat forged in its name (the agent starts a new sequence
// and is heard again, but someone holds the host's credential); one sent
// before it is a replay, or a datagram delayed past its successor. A skewed
// one is a clock to fix, or a replay of an old beat.
func refusalKind(m *Monitor, hb heartbeat.Heartbeat, o Outcome) (kind, summary string) {
	switch {
	case o.Intake != IntakeStale:
		return AlertHeartbeatSkewed, fmt.Sprintf("refused a heartbeat from %s: %s", hb.Host, o.Reason)
	case !m.SentAt.IsZero() && hb.SentAt.After(m.SentAt):
		// (Zero after a restart: the memo keeps only the mark, so the
		// newest beat's send time is unknown until the next one.)
		return AlertHeartbeatStale, fmt.Sprintf("refused a stale heartbeat from %s (monitor %s, verdict %s): %s; it was sent after the newest heartbeat taken, so that one was sent in the agent's name by someone else (the agent starts a new sequence): check who holds the host's agent credential",
			hb.Host, m.State, m.Verdict, o.Reason)
	}
	return AlertHeartbeatReplayed, fmt.Sprintf("refused an old heartbeat from %s (monitor %s, verdict %s): %s; a replay, or a datagram delayed past its successor",
		hb.Host, m.State, m.Verdict, o.Reason)
}

// refusal is the alert and history record of a refused heartbeat. Called
// with h.mu held.
func (e *Engine) refusal(h *hostEntry, hb heartbeat.Heartbeat, kind, summary string, now time.Time) (*Alert, []store.Record) {
	e.log.Warn().Str("host", hb.Host).Uint64("seq", hb.Seq).Time("agent_start", hb.AgentStart).Time("sent_at", hb.SentAt).
		Str("kind", kind).Msg(summary)
	rec := store.Record{At: now, Host: hb.Host, Kind: kind, Reason: summary, CorrelationID: h.m.Incident}
	return &Alert{At: now, Host: hb.Host, Kind: kind, Summary: summary, CorrelationID: h.m.Incident}, []store.Record{rec}
}

// Run ticks until ctx ends, then waits for outgoing checks and flushes.
func (e *Engine) Run(ctx context.Context) error {
	recDone := make(chan struct{})
	go func() { defer close(recDone); e.recorder(ctx) }()
	// Reconfigure keeps both, but writes e.cfg under stepMu.
	e.stepMu.Lock()
	tick, memoEvery := e.cfg.Tick, e.cfg.MemoEvery
	e.stepMu.Unlock()
	t := time.NewTicker(tick)
	defer t.Stop()
	lastMemo := e.deps.Clock.Now()
	for {
		select {
		case <-ctx.Done():
			e.wg.Wait()
			<-recDone
			e.flushRecords()
			e.flushMemos(true)
			return nil
		case <-t.C:
		}
		now := e.deps.Clock.Now()
		e.Step(ctx, now)
		if now.Sub(lastMemo) >= memoEvery {
			lastMemo = now
			e.flushMemos(false)
		}
	}
}

// Step is one tick at now: storm guard, every host's monitor, and the
// checks they ask for. Exported so tests drive it with a fake clock. Calls
// are serialised. A host that is healthy and fresh, with no readiness check
// due, is not visited until that can change (schedule.go): the outcome is
// the same as ticking it.
func (e *Engine) Step(ctx context.Context, now time.Time) {
	e.stepMu.Lock()
	defer e.stepMu.Unlock()
	e.hostsMu.RLock()
	order, cfg := e.order, e.cfg
	e.hostsMu.RUnlock()

	paused := e.updateStorm(ctx, cfg, now, func(refs References, wasPaused bool) StormState {
		all, racks := e.stormCounts(cfg.Storm, now)
		return decideStorm(all, racks, refs, cfg.Storm, wasPaused)
	})

	for _, i := range e.dueHosts(now, len(order)) {
		h := order[i]
		h.mu.Lock()
		if wake, idle := h.idleUntil(now, cfg.Monitor); idle {
			e.settle(h, now, cfg.Monitor, wake, true)
			h.mu.Unlock()
			continue
		}
		recs := e.tickHost(ctx, h, now, cfg, paused)
		e.touched(h)
		wake, idle := h.idleUntil(now, cfg.Monitor)
		e.settle(h, now, cfg.Monitor, wake, idle)
		h.mu.Unlock()
		e.record(recs)
	}
}

// tickHost is one host's part of a tick. Called with h.mu held.
func (e *Engine) tickHost(ctx context.Context, h *hostEntry, now time.Time, cfg EngineConfig, paused bool) []store.Record {
	prev := h.m.Verdict
	st := h.m.Tick(now, cfg.Monitor, paused)
	recs := e.stamp(h, st.Changes)
	if h.m.Verdict != prev {
		e.onVerdict(ctx, h, prev, now, &recs)
	}
	e.checkIsolation(ctx, h, now, cfg, paused, &recs)
	if st.NeedProbe && !h.probing && !now.Before(h.nextProbe) {
		h.probing = true
		e.probe(ctx, h, st.SilentSince, cfg.Monitor.ProbeTimeout)
	}
	if st.NeedBMC && !h.readingBMC {
		h.readingBMC = true
		e.readBMC(ctx, h, st.SilentSince, cfg.Monitor.ProbeTimeout)
	}
	if h.cfg.ReadinessInterval > 0 && !h.checking && !now.Before(h.nextCheck) {
		h.checking = true
		e.checkReadiness(ctx, h)
	}
	return recs
}

// stamp turns a host's changes into records with evidence and the
// incident's correlation id. Called with h.mu held.
func (e *Engine) stamp(h *hostEntry, ch []Change) []store.Record {
	if len(ch) == 0 {
		return nil
	}
	h.dirty = true
	m := h.m
	recs := make([]store.Record, 0, len(ch))
	for _, c := range ch {
		if m.Incident == "" && !(c.Kind == ChangeMonitor && c.To == node.Normal.String()) &&
			!(c.Kind == ChangeVerdict && (c.To == Healthy.String() && c.From == Suspect.String() && m.State == node.Normal)) {
			m.Incident = newID(h.cfg.Name)
		}
		ev, _ := json.Marshal(evidenceOf(m, c.At))
		recs = append(recs, store.Record{At: c.At, Host: h.cfg.Name, Kind: c.Kind, From: c.From, To: c.To,
			Reason: c.Reason, CorrelationID: m.Incident, Evidence: ev})
		if c.Kind == ChangeMonitor && c.To == node.Normal.String() {
			m.Incident = ""
		}
	}
	return recs
}

// onVerdict alerts and, for host-down, says what enforce mode would do.
// Called with h.mu held.
func (e *Engine) onVerdict(ctx context.Context, h *hostEntry, prev Verdict, now time.Time, recs *[]store.Record) {
	m := h.m
	a := Alert{At: now, Host: h.cfg.Name, Kind: m.Verdict.String(), Summary: m.VerdictReason, CorrelationID: m.Incident}
	switch m.Verdict {
	case AgentDown, IsolatedOrHung, Unprovable:
		e.deps.Alerter.Alert(ctx, a)
	case HostDown:
		if e.cfg.Enforce && e.deps.OnHostDown != nil {
			e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).Msgf("%s is down (%s): handing it to the fencer", h.cfg.Name, m.VerdictReason)
			e.deps.OnHostDown(DownEvent{At: now, Host: h.cfg.Name, Rack: h.cfg.Rack, CorrelationID: m.Incident, Reason: m.VerdictReason})
			e.deps.Alerter.Alert(ctx, a)
			return
		}
		why := fmt.Sprintf("would fence %s because %s", h.cfg.Name, m.VerdictReason)
		if e.cfg.Enforce {
			why += " (mode enforce, but no fencer is wired: nothing was done)"
		}
		e.log.Warn().Str("host", h.cfg.Name).Str("correlation_id", m.Incident).Msg(why)
		ev, _ := json.Marshal(evidenceOf(m, now))
		*recs = append(*recs, store.Record{At: now, Host: h.cfg.Name, Kind: "would-fence", From: prev.String(), To: m.Verdict.String(),
			Reason: why, CorrelationID: m.Incident, Evidence: ev})
		a.Kind, a.Summary = "would-fence", why
		e.deps.Alerter.Alert(ctx, a)
	}
}

func newID(host string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// Evidence is what a record carries: the signals behind the change.
type Evidence struct {
	LastHeartbeat time.Time   `json:"last_heartbeat,omitzero"`
	HeartbeatAge  string      `json:"heartbeat_age,omitempty"`
	BootID        string      `json:"boot_id,omitempty"`
	PrevBootID    string      `json:"prev_boot_id,omitempty"`
	Fault         string      `json:"fault,omitempty"`
	SilentSince   time.Time   `json:"silent_since,omitzero"`
	ProbeAt       time.Time   `json:"probe_at,omitzero"`
	ProbeAnswered *bool       `json:"probe_answered,omitempty"`
	ProbeDetail   string      `json:"probe_detail,omitempty"`
	BMC           *BMCReading `json:"bmc,omitempty"`
	Monitor       string      `json:"monitor"`
	Verdict       string      `json:"verdict"`
}

func evidenceOf(m *Monitor, now time.Time) Evidence {
	ev := Evidence{LastHeartbeat: m.LastHeartbeat, BootID: m.BootID, PrevBootID: m.PrevBootID, Fault: m.Fault,
		SilentSince: m.SilentSince, ProbeAt: m.ProbeAt, ProbeDetail: m.ProbeDetail, BMC: m.BMC,
		Monitor: m.State.String(), Verdict: m.Verdict.String()}
	if !m.LastHeartbeat.IsZero() {
		ev.HeartbeatAge = now.Sub(m.LastHeartbeat).String()
	}
	if !m.ProbeAt.IsZero() {
		a := m.ProbeAnswered
		ev.ProbeAnswered = &a
	}
	return ev
}
