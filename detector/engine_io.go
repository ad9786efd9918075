package detector

import (
	"context"
	"encoding/json"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// probe runs one probe round in the background. Called with h.mu held; the
// result is applied under the lock and judged at the next tick.
func (e *Engine) probe(ctx context.Context, h *hostEntry, silentSince time.Time, timeout time.Duration) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		answered, conclusive, detail := false, false, "daemon stopping"
		if acquire(ctx, e.sem.probe) {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			answered, conclusive, detail = e.deps.Prober.ProbeHost(pctx, h.cfg.Name)
			cancel()
			<-e.sem.probe
		}
		at := e.deps.Clock.Now()
		h.mu.Lock()
		h.probing = false
		switch {
		case ctx.Err() != nil:
		case conclusive:
			h.m.ProbeResult(silentSince, at, answered, detail)
		default:
			// Nothing could be probed: no evidence either way. Try again
			// later rather than in a tight loop.
			h.nextProbe = at.Add(timeout)
			e.log.Warn().Str("host", h.cfg.Name).Msg("probe round inconclusive: " + detail)
		}
		e.touched(h)
		h.mu.Unlock()
	}()
}

func (e *Engine) readBMC(ctx context.Context, h *hostEntry, silentSince time.Time, timeout time.Duration) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		r := BMCReading{Err: "daemon stopping"}
		if acquire(ctx, e.sem.bmc) {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			st, err := e.deps.Power.ReadPower(pctx, h.cfg.Name)
			cancel()
			<-e.sem.bmc
			r = BMCReading{Reachable: err == nil, Power: st}
			if err != nil {
				r.Err = err.Error()
				// A BMC that answered "wrong password" was reachable, but it
				// still proves nothing.
				r.Reachable = answeredBMC(err)
			}
		}
		r.At = e.deps.Clock.Now()
		h.mu.Lock()
		h.readingBMC = false
		if ctx.Err() == nil {
			h.m.BMCResult(silentSince, r)
		}
		e.touched(h)
		h.mu.Unlock()
	}()
}

func (e *Engine) checkReadiness(ctx context.Context, h *hostEntry) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if !acquire(ctx, e.sem.ready) {
			return
		}
		r := e.deps.Readiness.CheckReadiness(ctx, h.cfg.Name)
		<-e.sem.ready
		if r.At.IsZero() {
			r.At = e.deps.Clock.Now()
		}
		h.mu.Lock()
		h.checking = false
		prev := h.readiness
		h.readiness = &r
		interval := h.cfg.ReadinessInterval
		// ±10 % so thousands of hosts do not line up.
		h.nextCheck = r.At.Add(interval - interval/10 + e.jitter(interval/5))
		e.touched(h)
		incident := h.m.Incident
		h.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if prev == nil || prev.Ready != r.Ready {
			from := ""
			if prev != nil {
				from = readyName(prev.Ready)
			}
			to := readyName(r.Ready)
			ev, _ := json.Marshal(r)
			e.record([]store.Record{{At: r.At, Host: h.cfg.Name, Kind: "readiness", From: from, To: to, Reason: r.Summary, CorrelationID: incident, Evidence: ev}})
		}
		if !r.Ready && (prev == nil || prev.Ready) {
			e.deps.Alerter.Alert(ctx, Alert{At: r.At, Host: h.cfg.Name, Kind: "readiness", Summary: "no usable fence level: " + r.Summary})
		}
	}()
}

func acquire(ctx context.Context, sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// updateStorm re-evaluates the storm guard, records and alerts on a change,
// and probes the reference addresses when they are configured. decide is
// Storm over every host, given the references and whether the guard was
// paused; it is called with stormMu held.
func (e *Engine) updateStorm(ctx context.Context, cfg EngineConfig, now time.Time, decide func(refs References, wasPaused bool) StormState) bool {
	e.stormMu.Lock()
	if cfg.References > 0 && e.deps.Refs != nil && !e.refsBusy &&
		(e.refs.At.IsZero() || now.Sub(e.refs.At) >= cfg.Monitor.HeartbeatInterval) {
		e.refsBusy = true
		e.wg.Add(1)
		// Only what it needs: capturing cfg would put it on the heap every tick.
		configured, timeout := cfg.References, cfg.Monitor.ProbeTimeout
		go func() {
			defer e.wg.Done()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			ok, _ := e.deps.Refs.ProbeReferences(pctx)
			cancel()
			e.stormMu.Lock()
			e.refs = References{Configured: configured, Answered: ok, At: e.deps.Clock.Now()}
			e.refsBusy = false
			e.stormMu.Unlock()
		}()
	}
	refs := e.refs
	refs.Configured = cfg.References
	prev := e.storm
	next := decide(refs, prev.Paused)
	if next.Paused == prev.Paused {
		e.storm = next
		e.stormMu.Unlock()
		return next.Paused
	}
	id := e.stormID
	if next.Paused {
		id = newID("storm")
	}
	e.stormMu.Unlock()
	// A flip becomes visible (Status) only once its history record is
	// written: whoever sees the guard paused or cleared finds the record.
	// Step runs on one goroutine, so nothing flips it meanwhile.
	defer func() {
		e.stormMu.Lock()
		e.storm, e.stormID = next, id
		e.stormMu.Unlock()
	}()

	rec := store.Record{At: now, Kind: "storm", From: "running", To: "paused", Reason: next.Reason, CorrelationID: id}
	if !next.Paused {
		rec.From, rec.To, rec.Reason = "paused", "running", "storm guard cleared: "+prev.Reason+" no longer holds"
		e.log.Warn().Str("correlation_id", id).Msg(rec.Reason)
	} else {
		e.log.Error().Str("correlation_id", id).Msg("storm guard: pausing every decision: " + next.Reason)
	}
	e.record([]store.Record{rec})
	e.flushRecords() // now, not by the recorder: see above
	kind := AlertStormPaused
	if !next.Paused {
		kind = AlertStormCleared
	}
	e.deps.Alerter.Alert(ctx, Alert{At: now, Kind: kind, Summary: rec.From + " → " + rec.To + ": " + rec.Reason, CorrelationID: id})
	return next.Paused
}

// record queues records for the recorder goroutine and logs them.
func (e *Engine) record(recs []store.Record) {
	if len(recs) == 0 {
		return
	}
	for _, r := range recs {
		e.log.Info().Str("host", r.Host).Str("kind", r.Kind).Str("from", r.From).Str("to", r.To).
			Str("correlation_id", r.CorrelationID).Msg(r.Reason)
	}
	e.recMu.Lock()
	e.pending = append(e.pending, recs...)
	e.recMu.Unlock()
	select {
	case e.recWake <- struct{}{}:
	default:
	}
}

func (e *Engine) recorder(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.recWake:
			e.flushRecords()
		}
	}
}

// Flush writes queued records, changed memos and every host's replay mark
// now (tests and shutdown).
func (e *Engine) Flush() { e.flushRecords(); e.flushMemos(true) }

// markEvery is how often a host's memo is rewritten when only its seq moved
// (a new agent_start is written at the next flush, MemoEvery). Writing every
// beat's seq would be 10,000 writes a second; a restart after a crash then
// knows a seq up to this old. That reopens nothing the clock-skew window does
// not already bound: a beat replayed after the restart must still be dated
// within detection.heartbeat_max_clock_skew of the daemon's clock and be
// newer than every beat taken since, so each captured beat counts at most
// once and only if the daemon was down for less than the window.
const markEvery = time.Minute

func (e *Engine) flushRecords() {
	e.recMu.Lock()
	recs := e.pending
	e.pending = nil
	e.recMu.Unlock()
	if len(recs) == 0 {
		return
	}
	if _, err := e.deps.History.Append(recs...); err != nil {
		// Keep them for the next attempt rather than lose the evidence.
		e.log.Error().Err(err).Int("records", len(recs)).Msg("history: append failed; will retry")
		e.recMu.Lock()
		e.pending = append(recs, e.pending...)
		e.recMu.Unlock()
	}
}

// flushMemos writes the memo of every host that changed, and of every host
// whose replay mark moved, if all (shutdown) or the mark was last written
// markEvery ago.
func (e *Engine) flushMemos(all bool) {
	e.hostsMu.RLock()
	hosts := e.hosts
	e.hostsMu.RUnlock()
	now := e.deps.Clock.Now()
	memos := map[string]store.HostMemo{}
	for n, h := range hosts {
		h.mu.Lock()
		if !h.dirty && h.m.Mark() != h.persisted && (all || now.Sub(h.markAt) >= markEvery) {
			h.dirty = true
		}
		if h.dirty {
			h.markAt = now
			m := h.m
			memos[n] = store.HostMemo{BootID: m.BootID, LastHeartbeat: m.LastHeartbeat, LastVerdict: m.Verdict.String(),
				LastVerdictAt: m.VerdictAt, Monitor: m.State.String(), AgentStart: m.AgentStart, Seq: m.Seq}
			h.dirty = false
			h.persisted = m.Mark()
		}
		h.mu.Unlock()
	}
	if len(memos) == 0 {
		return
	}
	if err := e.deps.Memos.PutHostMemos(memos); err != nil {
		e.log.Error().Err(err).Msg("host memos: write failed; will retry")
		for n := range memos {
			if h, ok := hosts[n]; ok {
				h.mu.Lock()
				h.dirty = true
				h.mu.Unlock()
			}
		}
	}
}

// Wait blocks until every probe, BMC read and readiness check in flight has
// finished (tests).
func (e *Engine) Wait() { e.wg.Wait() }

// HostStatus is one host as `chime-fence status` shows it.
type HostStatus struct {
	Name          string             `json:"name"`
	Rack          string             `json:"rack"`
	Monitor       node.MonitorState  `json:"monitor"`
	Verdict       Verdict            `json:"verdict"`
	VerdictReason string             `json:"verdict_reason"`
	VerdictAt     time.Time          `json:"verdict_at,omitzero"`
	LastHeartbeat time.Time          `json:"last_heartbeat,omitzero"`
	HeartbeatAge  heartbeat.Duration `json:"heartbeat_age,omitempty"`
	SilentSince   time.Time          `json:"silent_since,omitzero"`
	// IsolatedSince is when the isolated-or-hung verdict began to hold,
	// unbroken (Monitor.IsolatedSince).
	IsolatedSince time.Time `json:"isolated_since,omitzero"`
	BootID        string    `json:"boot_id,omitempty"`
	Seq           uint64    `json:"seq,omitempty"`
	// AgentStart is the agent process of the newest heartbeat taken.
	AgentStart   time.Time          `json:"agent_start,omitzero"`
	AgentVersion string             `json:"agent_version,omitempty"`
	ClockSkew    heartbeat.Duration `json:"clock_skew,omitempty"`
	// LastRefused is why the host's last stale or skewed heartbeat was
	// refused, and when (e.g. "skewed: sent_at 7m ahead …: check NTP").
	LastRefused   string     `json:"last_refused,omitempty"`
	LastRefusedAt time.Time  `json:"last_refused_at,omitzero"`
	Fault         string     `json:"fault,omitempty"`
	Incident      string     `json:"correlation_id,omitempty"`
	Readiness     *Readiness `json:"readiness,omitempty"`
	// BMC is the last reading of the host's BMC (nil before one).
	BMC *BMCReading `json:"bmc,omitempty"`
}

// Storm is the guard's current state.
type StormStatus struct {
	Paused        bool   `json:"paused"`
	Reason        string `json:"reason,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
}

// Status is every host, sorted by name, and the storm guard.
func (e *Engine) Status() ([]HostStatus, StormStatus) {
	now := e.deps.Clock.Now()
	e.hostsMu.RLock()
	order := e.order
	e.hostsMu.RUnlock()
	out := make([]HostStatus, 0, len(order))
	for _, h := range order {
		out = append(out, h.status(now))
	}
	e.stormMu.Lock()
	s := StormStatus{Paused: e.storm.Paused, Reason: e.storm.Reason}
	if s.Paused {
		s.CorrelationID = e.stormID
	}
	e.stormMu.Unlock()
	return out, s
}

// Host is one host's status.
func (e *Engine) Host(name string) (HostStatus, bool) {
	h, _, ok := e.host(name)
	if !ok {
		return HostStatus{}, false
	}
	return h.status(e.deps.Clock.Now()), true
}

func (h *hostEntry) status(now time.Time) HostStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.m
	s := HostStatus{Name: h.cfg.Name, Rack: h.cfg.Rack, Monitor: m.State, Verdict: m.Verdict, VerdictReason: m.VerdictReason,
		VerdictAt: m.VerdictAt, LastHeartbeat: m.LastHeartbeat, SilentSince: m.SilentSince, IsolatedSince: m.IsolatedSince, BootID: m.BootID, Seq: m.Seq, AgentStart: m.AgentStart,
		AgentVersion: h.agentVersion, ClockSkew: heartbeat.Duration(h.skew), Fault: m.Fault, Incident: m.Incident,
		LastRefused: h.refused, LastRefusedAt: h.refusedAt}
	if !m.LastHeartbeat.IsZero() {
		s.HeartbeatAge = heartbeat.Duration(now.Sub(m.LastHeartbeat))
	}
	if h.readiness != nil {
		r := *h.readiness
		s.Readiness = &r
	}
	if m.BMC != nil {
		b := *m.BMC
		s.BMC = &b
	}
	return s
}

// answeredBMC: the BMC replied (wrong password, refused, garbled) as opposed
// to not replying at all.
func answeredBMC(err error) bool {
	switch power.KindOf(err) {
	case power.KindAuth, power.KindRefused, power.KindProtocol:
		return true
	}
	return false
}

func readyName(ready bool) string {
	if ready {
		return "ready"
	}
	return "not-ready"
}
