package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// Cluster is what the coordinator reads and changes about hosts;
// *daemon.Daemon satisfies it.
type Cluster interface {
	Host(name string) (daemon.HostStatus, error)
	Status() daemon.Status
	SetAdminState(host string, st node.AdminState, reason string) (store.Record, error)
}

// Journal is the durable state the coordinator needs; *store.Store
// satisfies it.
type Journal interface {
	PutFence(r store.FenceRecord) error
	Fences() (map[string]store.FenceRecord, error)
	Append(recs ...store.Record) ([]store.Record, error)
}

// FenceSetup is one host's fence, built from its effective policy when the
// fence is about to run (so a reloaded config applies).
type FenceSetup struct {
	Plan     fencer.Plan
	Limits   fencer.Limits
	Evacuate bool
	// TrustAgentDrain (policy trust_agent_drain) lets an evacuation start
	// on its own when an agent's drain is the fence's only proof; see
	// autoEvacuate.
	TrustAgentDrain bool
	// Isolation is the host's on_isolation policy: whether, and after
	// what grace, an isolated-or-hung verdict is fenced too.
	Isolation detector.IsolationPolicy
}

// Evacuator rebuilds a fenced host's VMs. Evacuate blocks until the task
// ends and is idempotent for one taskID (it resumes a journaled task).
type Evacuator interface {
	Evacuate(ctx context.Context, req EvacuationRequest) (EvacuationReport, error)
}

// EvacuationRequest names the host, its incident and its proof of death.
type EvacuationRequest struct {
	TaskID        string
	Host          string
	CorrelationID string
	Fence         string // how the host was proven down, for the task
	// Started, if set, is called once the task is known to run (planned
	// now, or open in the journal), never for a finished one.
	Started func()
	// Target, if set, is the only host the VMs may go to (an operator's
	// rebuild --target).
	Target string
	// Progress, if set, sees the task after each journal write.
	Progress func(evacuator.Task)
	// Waiting, if set, is called once per task when it first waits for a
	// re-plan (some VMs could not be placed or started), after the
	// history record of it is durable.
	Waiting func(EvacuationReport)
	// StillProven, if set, is asked before each re-plan: an error (the
	// fenced host heartbeated again) ends the waiting task instead, since
	// a proof of death covers only the silence it was taken in.
	StillProven func() error
}

// EvacuationReport sums a finished evacuation up for alerts and history.
type EvacuationReport struct {
	TaskID   string      `json:"task_id"`
	State    string      `json:"state"` // done, partial, failed
	Running  []VMOutcome `json:"running"`
	Failed   []VMOutcome `json:"failed,omitempty"`
	Unplaced []VMOutcome `json:"unplaced,omitempty"`
	Elapsed  string      `json:"elapsed"`
	// Replayed: the task had finished before this call (a repeated verdict
	// or a restart), or recorded its own end (cancelled), so this report
	// is not a new result.
	Replayed bool `json:"-"`
	// PartialAlerted: evacuation.partial was raised while it waited.
	PartialAlerted bool `json:"-"`
	// Recorded: the history record of the end was written with the task's
	// end, in one step; the caller does not record it again.
	Recorded bool `json:"-"`
}

// VMOutcome is one VM's result.
type VMOutcome struct {
	UUID   string `json:"uuid"`
	Name   string `json:"name"`
	Host   string `json:"host,omitempty"` // where it runs now
	Reason string `json:"reason,omitempty"`
	// Waiting: not moved yet, and a re-plan may still move it.
	Waiting bool `json:"waiting,omitempty"`
}

// Deps are the coordinator's collaborators. All are required but Log.
type Deps struct {
	Cluster   Cluster
	Journal   Journal
	Setup     func(host string) (FenceSetup, error)
	Fence     func(ctx context.Context, p fencer.Plan) fencer.Result
	Evacuator Evacuator
	Alert     func(ev alert.Event)
	Now       func() time.Time
	Log       zerolog.Logger
	// Metrics, if set, counts fences and evacuations.
	Metrics *Metrics
	// Lock, if set, takes the host lock operator operations share, so an
	// automatic incident and an operator's task never act on one host at
	// once; an incident for a locked host waits (Config.Retry).
	Lock func(host, owner string) (release func(), err error)
}

// Config tunes the coordinator.
type Config struct {
	// Cluster names the cluster in alerts.
	Cluster string
	// Retry is how often deferred hosts are looked at again (default 1s).
	Retry time.Duration
}

// Coordinator runs the fence → drain → evacuate pipeline, one incident per
// host at a time.
type Coordinator struct {
	cfg  Config
	deps Deps
	log  zerolog.Logger

	wake chan struct{}

	mu       sync.Mutex
	gate     *fencer.Gate
	pending  map[string]pendingHost // queued by HostDown, not yet admitted
	busy     map[string]bool        // a goroutine owns this host
	deferred map[string]string      // last deferral reason logged, per host
	wg       sync.WaitGroup
}

type pendingHost struct {
	ev      detector.DownEvent
	retryAt time.Time
}

// New checks deps; no I/O.
func New(cfg Config, deps Deps) (*Coordinator, error) {
	switch {
	case deps.Cluster == nil, deps.Journal == nil, deps.Setup == nil, deps.Fence == nil,
		deps.Evacuator == nil, deps.Alert == nil, deps.Now == nil:
		return nil, errors.New("recovery: every dependency but Log is required")
	}
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	return &Coordinator{
		cfg: cfg, deps: deps, log: deps.Log.With().Str("component", "recovery").Logger(),
		wake: make(chan struct{}, 1), gate: fencer.NewGate(),
		pending: map[string]pendingHost{}, busy: map[string]bool{}, deferred: map[string]string{},
	}, nil
}

// HostDown queues a host the detector judged down. It never blocks.
func (c *Coordinator) HostDown(ev detector.DownEvent) {
	c.mu.Lock()
	c.pending[ev.Host] = pendingHost{ev: ev}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Run works the queue until ctx ends, then waits for fences and
// evacuations in flight to return (they obey ctx).
func (c *Coordinator) Run(ctx context.Context) error {
	c.resume(ctx)
	t := time.NewTicker(c.cfg.Retry)
	defer t.Stop()
	for {
		c.dispatch(ctx)
		select {
		case <-ctx.Done():
			c.wg.Wait()
			return nil
		case <-c.wake:
		case <-t.C:
		}
	}
}

// Wait blocks until every incident in flight has returned (tests).
func (c *Coordinator) Wait() { c.wg.Wait() }

// dispatch starts the pending hosts that may start now.
func (c *Coordinator) dispatch(ctx context.Context) {
	now := c.deps.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	hosts := make([]string, 0, len(c.pending))
	for h := range c.pending {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		p := c.pending[h]
		if c.busy[h] || now.Before(p.retryAt) {
			continue
		}
		delete(c.pending, h)
		c.busy[h] = true
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			var retry time.Time
			var reason string
			if release, err := c.lockHost(h); err != nil {
				retry, reason = c.deps.Now().Add(c.cfg.Retry), err.Error()
			} else {
				retry, reason = c.incident(ctx, p.ev)
				release()
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			delete(c.busy, h)
			if !retry.IsZero() && ctx.Err() == nil {
				if _, newer := c.pending[h]; !newer {
					c.pending[h] = pendingHost{ev: p.ev, retryAt: retry}
				}
				if c.deferred[h] != reason {
					c.deferred[h] = reason
					c.log.Warn().Str("host", h).Str("correlation_id", p.ev.CorrelationID).Time("retry_at", retry).
						Msgf("fence of %s deferred: %s", h, reason)
				}
			} else {
				delete(c.deferred, h)
			}
		}()
	}
}

// incident handles one host-down verdict. A non-zero retry means "not
// now, ask again at retry" (the admission gate said so).
func (c *Coordinator) incident(ctx context.Context, ev detector.DownEvent) (retry time.Time, reason string) {
	host := ev.Host
	log := c.log.With().Str("host", host).Str("correlation_id", ev.CorrelationID).Logger()
	st, err := c.deps.Cluster.Host(host)
	if err != nil {
		log.Error().Err(err).Msg("host-down for a host the daemon no longer knows; nothing done")
		return time.Time{}, ""
	}
	fences, err := c.deps.Journal.Fences()
	if err != nil {
		log.Error().Err(err).Msg("cannot read the fence journal; not fencing blind")
		return c.deps.Now().Add(c.cfg.Retry), "fence journal unreadable: " + err.Error()
	}
	if prev, ok := fences[host]; ok && prev.Proven() && provenSinceHeartbeat(prev, st) {
		// Already fenced for this silence (a repeated verdict or a daemon
		// restart): finish the evacuation if the policy wants one, never
		// fence twice.
		if setup, err := c.deps.Setup(host); err != nil || !autoEvacuate(setup, prev) {
			log.Warn().Msgf("%s is already fenced; its policy does not evacuate on this proof (or cannot be read): nothing more to do", host)
			return time.Time{}, ""
		}
		_, _ = c.evacuate(ctx, prev, nil, log)
		return time.Time{}, ""
	}
	setup, setupErr := c.deps.Setup(host)
	verdict, why := c.stillDown(host, setup.Isolation)
	if why != "" {
		what := "host-down verdict"
		if ev.Isolated {
			what = "isolation fence"
		}
		c.record(store.Record{At: c.deps.Now(), Host: host, Kind: "fence-skipped", To: "skipped", CorrelationID: ev.CorrelationID,
			Reason: what + " no longer holds at fence time: " + why})
		log.Warn().Msgf("not fencing %s: %s", host, why)
		return time.Time{}, ""
	}
	if setupErr != nil {
		c.failed(store.FenceRecord{Host: host, CorrelationID: ev.CorrelationID, Started: c.deps.Now()}, "fence setup: "+setupErr.Error(), nil, log)
		return time.Time{}, ""
	}
	if verdict == detector.IsolatedOrHung {
		// The BMC says on: only a power level's Off read-back may prove
		// this host's QEMUs dead before any of its VMs starts elsewhere.
		var err error
		if setup.Plan, err = IsolationPlan(setup.Plan, setup.Isolation.Action); err != nil {
			c.failed(store.FenceRecord{Host: host, CorrelationID: ev.CorrelationID, Started: c.deps.Now()}, "isolation fence: "+err.Error(), nil, log)
			return time.Time{}, ""
		}
	}
	now := c.deps.Now()
	adm, done := c.admit(host, st.Rack, setup.Limits, now)
	if !adm.OK {
		retry := adm.RetryAt
		if retry.IsZero() { // a concurrency limit: look again soon
			retry = now.Add(c.cfg.Retry)
		}
		return retry, adm.Reason
	}
	defer done()

	setup.Plan.StillNeeded = c.stillNeeded(host, now)
	rec, err := c.fence(ctx, host, st.Rack, ev.CorrelationID, ev.Reason, "unreachable", setup, log)
	switch {
	case errors.Is(err, errNotJournaled):
		return c.deps.Now().Add(c.cfg.Retry), err.Error()
	case err != nil:
		return time.Time{}, ""
	}
	switch {
	case autoEvacuate(setup, rec):
		_, _ = c.evacuate(ctx, rec, nil, log)
	case setup.Evacuate:
		msg := fmt.Sprintf("%s's only proof is its agent's drain (nothing was powered off) and the policy has trust_agent_drain: false: its VMs are not started elsewhere automatically; an operator rebuilds them (chime-fence host rebuild) once sure the host is down", host)
		c.record(store.Record{At: c.deps.Now(), Host: host, Kind: "evacuation", To: "withheld", CorrelationID: rec.CorrelationID, Reason: msg})
		log.Warn().Msg(msg)
	default:
		log.Warn().Msgf("policy says evacuate: false; %s's VMs wait for an operator", host)
	}
	return time.Time{}, ""
}

// admit asks the gate whether host may be fenced now; when it may, done
// tells the gate the fence is over.
func (c *Coordinator) admit(host, rack string, limits fencer.Limits, now time.Time) (adm fencer.Admission, done func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	adm = c.gate.Admit(fencer.Request{Host: host, Rack: rack, Limits: limits}, now)
	return adm, func() {
		c.mu.Lock()
		c.gate.Done(host, c.deps.Now())
		c.mu.Unlock()
	}
}

// stillNeeded is asked between fence levels: a host that heartbeats again
// after the fence began came back (it was not dead), and a paused storm
// guard means the daemon doubts its own view. Both stop the fence. A
// verdict that merely wavers (one failed BMC read) does not: the next
// level may be the one that works.
func (c *Coordinator) stillNeeded(host string, began time.Time) func() error {
	return func() error {
		if st, err := c.deps.Cluster.Host(host); err == nil && st.LastHeartbeat.After(began) {
			return fmt.Errorf("%s heartbeated again at %s, after the fence began", host, st.LastHeartbeat.Format(time.RFC3339Nano))
		}
		if storm := c.deps.Cluster.Status().Storm; storm.Paused {
			return errors.New("storm guard paused: " + storm.Reason)
		}
		return nil
	}
}

// errNotJournaled: the fence intent could not be journaled, so nothing
// was done; try again later.
var errNotJournaled = errors.New("fence journal write failed; not fencing")

// fence journals the intent, runs the plan, journals the outcome and, when
// verified, drains the host. err is nil only for a verified, journaled
// fence; a failed one has been recorded and alerted.
func (c *Coordinator) fence(ctx context.Context, host, rack, corrID, why, from string, setup FenceSetup, log zerolog.Logger) (store.FenceRecord, error) {
	now := c.deps.Now()
	rec := store.FenceRecord{Host: host, CorrelationID: corrID, State: store.FenceInFlight,
		Action: setup.Plan.Action.String(), Started: now}
	if err := c.deps.Journal.PutFence(rec); err != nil {
		// No journal, no fence: a crash now would leave nobody knowing a
		// power-off was in flight.
		log.Error().Err(err).Msg("cannot journal the fence intent; not fencing")
		return rec, fmt.Errorf("%w: %w", errNotJournaled, err)
	}
	levels := make([]string, len(setup.Plan.Levels))
	for i, l := range setup.Plan.Levels {
		levels[i] = l.Name
	}
	c.record(store.Record{At: now, Host: host, Kind: "fence", From: from, To: "fencing", CorrelationID: corrID,
		Reason: fmt.Sprintf("fencing %s (action %s, levels %v) because %s", host, rec.Action, levels, why)})
	c.alert(alert.Event{Type: alert.FenceStarted, Severity: "warning", At: now, Host: host, CorrelationID: corrID,
		Summary: fmt.Sprintf("fencing %s: %s", host, why), Details: map[string]any{"levels": levels, "action": rec.Action}})
	log.Warn().Strs("levels", levels).Msgf("fencing %s because %s", host, why)

	setup.Plan.Host, setup.Plan.Rack = host, rack
	c.deps.Metrics.fenceStarted()
	res := c.deps.Fence(ctx, setup.Plan)
	c.deps.Metrics.fenceEnded(res, c.deps.Now().Sub(now))
	attempts, _ := json.Marshal(res.Attempts)
	rec.Attempts = attempts
	rec.Finished = c.deps.Now()
	if !res.Verified {
		c.failed(rec, res.Reason, res.Attempts, log)
		return rec, errors.New("fence not verified: " + res.Reason)
	}
	rec.State, rec.Level = store.FenceVerified, res.Level
	if res.PowerOnErr != "" {
		rec.Reason = "powered back on failed: " + res.PowerOnErr
	}
	if err := c.deps.Journal.PutFence(rec); err != nil {
		// The host is off, but without the record no rebuild may rely on
		// it: alert and stop here; the next verdict retries the journal.
		log.Error().Err(err).Msg("fence verified but not journaled; evacuation withheld")
		c.alert(alert.Event{Type: alert.FenceFailed, Severity: "critical", At: rec.Finished, Host: host, CorrelationID: corrID,
			Summary: fmt.Sprintf("%s is off (verified by %s) but the journal write failed, so nothing is evacuated: %v", host, res.Level, err)})
		return rec, fmt.Errorf("fence verified by %s but not journaled: %w", res.Level, err)
	}
	took := rec.Finished.Sub(rec.Started).Round(time.Millisecond)
	summary := fmt.Sprintf("%s fenced: %s in %s", host, proofOf(res.Level, res.Attempts), took)
	if before := failedLevels(res.Attempts); before != "" {
		summary += " (after " + before + ")"
	}
	if setup.Plan.Action == fencer.ActionReboot {
		summary += "; powered back on (stays drained)"
		if res.PowerOnErr != "" {
			summary = fmt.Sprintf("%s fenced: %s in %s; power on failed: %s", host, proofOf(res.Level, res.Attempts), took, res.PowerOnErr)
		}
	}
	c.record(store.Record{At: rec.Finished, Host: host, Kind: "fence", From: "fencing", To: "verified", CorrelationID: corrID,
		Reason: summary, Evidence: attempts})
	if _, err := c.deps.Cluster.SetAdminState(host, node.Drained, "fenced by chime-fence ("+corrID+"): "+summary); err != nil {
		log.Error().Err(err).Msg("fence verified but the host could not be marked drained")
	}
	c.alert(alert.Event{Type: alert.FenceSucceeded, Severity: "warning", At: rec.Finished, Host: host, CorrelationID: corrID,
		Summary: summary, Details: map[string]any{"level": res.Level, "elapsed": took.String(), "attempts": res.Attempts}})
	log.Warn().Str("level", res.Level).Dur("elapsed", took).Msg(summary)
	return rec, nil
}

// failedLevels names each level that failed before the verified one, with
// its last error: an operator reading "verified" should also learn that a
// BMC is broken.
func failedLevels(attempts []fencer.Attempt) string {
	var order []string
	last := map[string]string{}
	for _, a := range attempts {
		if a.Verified {
			continue
		}
		if _, seen := last[a.Level]; !seen {
			order = append(order, a.Level)
		}
		last[a.Level] = a.Err
	}
	parts := make([]string, len(order))
	for i, l := range order {
		parts[i] = l + " failed: " + last[l]
	}
	return strings.Join(parts, "; ")
}

// provenSinceHeartbeat: the proof is about the current silence, not an
// earlier one the host has since recovered from.
func provenSinceHeartbeat(r store.FenceRecord, st daemon.HostStatus) bool {
	return st.LastHeartbeat.IsZero() || st.LastHeartbeat.Before(r.Started)
}

// stillDown re-reads the verdict and the storm guard just before acting
// (stillActs); why is "" when the fence may go ahead on verdict v.
func (c *Coordinator) stillDown(host string, iso detector.IsolationPolicy) (v detector.Verdict, why string) {
	st, err := c.deps.Cluster.Host(host)
	if err != nil {
		return st.Verdict, err.Error()
	}
	return st.Verdict, stillActs(st, c.deps.Cluster.Status().Storm, iso, c.deps.Now())
}

func (c *Coordinator) failed(rec store.FenceRecord, reason string, attempts []fencer.Attempt, log zerolog.Logger) {
	rec.State, rec.Reason = store.FenceFailed, reason
	if rec.Finished.IsZero() {
		rec.Finished = c.deps.Now()
	}
	if err := c.deps.Journal.PutFence(rec); err != nil {
		log.Error().Err(err).Msg("cannot journal the failed fence")
	}
	summary := fmt.Sprintf("fence of %s FAILED, nothing evacuated, host stays unreachable (an operator may confirm-down): %s", rec.Host, reason)
	c.record(store.Record{At: rec.Finished, Host: rec.Host, Kind: "fence", From: "fencing", To: "failed", CorrelationID: rec.CorrelationID,
		Reason: summary, Evidence: rec.Attempts})
	c.alert(alert.Event{Type: alert.FenceFailed, Severity: "critical", At: rec.Finished, Host: rec.Host, CorrelationID: rec.CorrelationID,
		Summary: summary, Details: map[string]any{"reason": reason, "attempts": attempts}})
	log.Error().Msg(summary)
}

// TaskID is the evacuation task of one fence incident.
func TaskID(r store.FenceRecord) string {
	return "evac-" + r.Host + "-" + r.CorrelationID
}

func fenceProof(r store.FenceRecord) string {
	if r.State == store.FenceConfirmed {
		return fmt.Sprintf("confirmed down by an operator at %s: %s", r.Finished.Format(time.RFC3339), r.Reason)
	}
	return fmt.Sprintf("%s at %s", recordProof(r), r.Finished.Format(time.RFC3339Nano))
}

// recordProof is proofOf a journaled verified fence.
func recordProof(r store.FenceRecord) string {
	var attempts []fencer.Attempt
	_ = json.Unmarshal(r.Attempts, &attempts) // a count missing from an old record reads as 0
	return proofOf(r.Level, attempts)
}

// proofOf says what a verified level proved. A BMC level read power Off;
// the agent-drain level powered nothing off: its agent said it stopped its
// domains and listed none running (an authenticated answer, bound to the
// host), and the record must never say more.
func proofOf(level string, attempts []fencer.Attempt) string {
	if level != LevelAgentDrain {
		return level + " verified power off"
	}
	stopped := 0
	for _, a := range attempts {
		if a.Level == LevelAgentDrain {
			stopped += a.Stopped
		}
	}
	return fmt.Sprintf("agent drained, %d domains stopped (agent-drain: the host was not powered off)", stopped)
}

// LevelAgentDrain is the agent-drain level's name in plans and records.
const LevelAgentDrain = "agent-drain"

// autoEvacuate says whether a proven fence starts an evacuation without an
// operator: the policy evacuates, and the proof is more than an agent's
// drain unless the policy trusts that (trust_agent_drain). A confirmed
// fence is an operator's word and evacuates as the policy says.
func autoEvacuate(setup FenceSetup, rec store.FenceRecord) bool {
	if !setup.Evacuate {
		return false
	}
	if rec.State == store.FenceVerified && rec.Level == LevelAgentDrain {
		return setup.TrustAgentDrain
	}
	return true
}

// evacuate runs (or resumes) the evacuation of a proven fence.
func (c *Coordinator) evacuate(ctx context.Context, rec store.FenceRecord, progress func(evacuator.Task), log zerolog.Logger) (EvacuationReport, error) {
	if !rec.Proven() {
		log.Error().Msg("refusing to evacuate without a proven fence") // unreachable by construction
		return EvacuationReport{}, errors.New("refusing to evacuate without a proven fence")
	}
	// No wait for the rest of the cluster to be judged: the plan samples
	// its candidates' libvirt itself (a host not judged yet is a target
	// only if it answers), a resumed task asks its targets directly, and
	// the split-brain guard skips the fenced host, whose proof is rec.
	c.ensureDrained(rec, log)
	id := TaskID(rec)
	rep, err := c.runEvacuation(ctx, EvacuationRequest{TaskID: id, Host: rec.Host, CorrelationID: rec.CorrelationID,
		Fence: fenceProof(rec), Progress: progress, StillProven: func() error {
			if st, err := c.deps.Cluster.Host(rec.Host); err == nil && !provenSinceHeartbeat(rec, st) {
				return fmt.Errorf("%s heartbeated at %s, after its fence began: a new incident, so its VMs are not moved on the old proof",
					rec.Host, st.LastHeartbeat.Format(time.RFC3339Nano))
			}
			return nil
		}}, log)
	if err == nil && rec.Evacuation != id {
		rec.Evacuation = id
		if err := c.deps.Journal.PutFence(rec); err != nil {
			log.Error().Err(err).Msg("cannot note the evacuation on the fence record")
		}
	}
	return rep, err
}

// ensureDrained drains a proven host whose drain was lost (the daemon
// died between journaling the proof and changing the admin state).
func (c *Coordinator) ensureDrained(rec store.FenceRecord, log zerolog.Logger) {
	st, err := c.deps.Cluster.Host(rec.Host)
	if err != nil || st.Admin == node.Drained {
		return
	}
	// The history record of the proof is written between the journal and
	// the drain, so it was lost too.
	if rec.State == store.FenceVerified {
		c.record(store.Record{At: c.deps.Now(), Host: rec.Host, Kind: "fence", From: "fencing", To: "verified", CorrelationID: rec.CorrelationID,
			Reason: fmt.Sprintf("%s fenced: %s (recorded after a daemon restart)", rec.Host, fenceProof(rec)), Evidence: rec.Attempts})
	}
	if _, err := c.deps.Cluster.SetAdminState(rec.Host, node.Drained,
		fmt.Sprintf("fenced by chime-fence (%s): %s (drained on resume)", rec.CorrelationID, fenceProof(rec))); err != nil {
		log.Error().Err(err).Msg("fence proven but the host could not be marked drained")
	}
}

// runEvacuation runs one evacuation task with its alerts, history record
// and metrics. err is set only when the task could not run at all.
func (c *Coordinator) runEvacuation(ctx context.Context, req EvacuationRequest, log zerolog.Logger) (EvacuationReport, error) {
	start := c.deps.Now()
	// Only a task that runs is "started": a repeated verdict or a restart
	// that finds it finished replays its report and alerts nothing.
	req.Started = func() {
		c.alert(alert.Event{Type: alert.EvacuationStarted, Severity: "warning", At: start, Host: req.Host, CorrelationID: req.CorrelationID,
			Summary: fmt.Sprintf("evacuating %s (task %s)", req.Host, req.TaskID)})
	}
	// evacuation.partial fires once, when VMs first wait; the task goes
	// on and evacuation.finished follows when the last of them runs.
	req.Waiting = func(rep EvacuationReport) {
		summary := rep.Summary(req.Host)
		c.alert(alert.Event{Type: alert.EvacuationPartial, Severity: "critical", At: c.deps.Now(), Host: req.Host, CorrelationID: req.CorrelationID,
			Summary: summary, Details: map[string]any{"report": rep}})
		log.Error().Msg(summary)
	}
	rep, err := c.deps.Evacuator.Evacuate(ctx, req)
	now := c.deps.Now()
	if err != nil && ctx.Err() != nil {
		// The daemon is stopping: the task stays open in the journal and
		// the next daemon resumes it. Nothing failed; nothing to alert.
		log.Warn().Err(err).Msg("evacuation stopped with the daemon; it resumes at the next start")
		return rep, err
	}
	if err != nil {
		c.deps.Metrics.evacuationEnded(EvacuationReport{}, "error", now.Sub(start))
		summary := fmt.Sprintf("evacuation of %s did not run: %v", req.Host, err)
		c.record(store.Record{At: now, Host: req.Host, Kind: "evacuation", To: "error", CorrelationID: req.CorrelationID, Reason: summary})
		c.alert(alert.Event{Type: alert.EvacuationPartial, Severity: "critical", At: now, Host: req.Host, CorrelationID: req.CorrelationID, Summary: summary})
		log.Error().Err(err).Msg("evacuation did not run")
		return rep, err
	}
	if !rep.Replayed {
		c.deps.Metrics.evacuationEnded(rep, rep.State, now.Sub(start))
	}
	ev, _ := json.Marshal(rep)
	summary := rep.Summary(req.Host)
	if !rep.Recorded && !rep.Replayed { // else it is in the history with the task's end
		c.record(store.Record{At: now, Host: req.Host, Kind: "evacuation", To: rep.State, CorrelationID: req.CorrelationID, Reason: summary, Evidence: ev})
	}
	typ, sev := alert.EvacuationFinished, "info"
	if (rep.State != "done" || len(rep.Unplaced) > 0) && !rep.PartialAlerted {
		typ, sev = alert.EvacuationPartial, "critical"
	}
	if rep.Replayed {
		log.Info().RawJSON("report", ev).Msg("already finished: " + summary)
		return rep, nil
	}
	c.alert(alert.Event{Type: typ, Severity: sev, At: now, Host: req.Host, CorrelationID: req.CorrelationID, Summary: summary,
		Details: map[string]any{"report": rep}})
	log.Warn().RawJSON("report", ev).Msg(summary)
	return rep, nil
}

// Summary is the report on one line, naming every VM that is not running
// elsewhere and why.
func (r EvacuationReport) Summary(host string) string {
	summary := fmt.Sprintf("evacuation of %s %s: %d running elsewhere, %d failed, %d not moved", host, r.State,
		len(r.Running), len(r.Failed), len(r.Unplaced))
	for _, u := range r.Unplaced {
		if u.Waiting {
			summary += fmt.Sprintf("; %s waits: %s", u.Name, u.Reason)
		} else {
			summary += fmt.Sprintf("; %s: %s", u.Name, u.Reason)
		}
	}
	for _, f := range r.Failed {
		summary += fmt.Sprintf("; %s FAILED: %s", f.Name, f.Reason)
	}
	return summary
}

// resume finishes what a previous daemon left: proven fences whose
// evacuation may not have ended. Evacuate is idempotent per task, so a
// finished one only reports again.
func (c *Coordinator) resume(ctx context.Context) {
	fences, err := c.deps.Journal.Fences()
	if err != nil {
		c.log.Error().Err(err).Msg("cannot read the fence journal at start; nothing resumed")
		return
	}
	hosts := make([]string, 0, len(fences))
	for h := range fences {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, h := range hosts {
		rec := fences[h]
		log := c.log.With().Str("host", h).Str("correlation_id", rec.CorrelationID).Logger()
		switch {
		case rec.State == store.FenceInFlight:
			log.Warn().Msgf("a fence of %s was in flight when the daemon stopped; its power state is unknown until the detector decides again", h)
			continue
		case !rec.Proven():
			continue
		}
		st, err := c.deps.Cluster.Host(h)
		if err != nil || !provenSinceHeartbeat(rec, st) {
			continue
		}
		setup, err := c.deps.Setup(h)
		if err != nil || !autoEvacuate(setup, rec) {
			continue
		}
		c.mu.Lock()
		if c.busy[h] {
			c.mu.Unlock()
			continue
		}
		c.busy[h] = true
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			// At start nothing else holds the lock but a task the
			// operations manager resumed; then that task finishes the host.
			release, err := c.lockHost(h)
			if err != nil {
				log.Warn().Err(err).Msgf("not resuming the evacuation of %s", h)
			} else {
				log.Warn().Msgf("resuming the evacuation of %s after a restart", h)
				_, _ = c.evacuate(ctx, rec, nil, log)
				release()
			}
			c.mu.Lock()
			delete(c.busy, h)
			c.mu.Unlock()
		}()
	}
}

// lockOwner names the automatic pipeline in lock conflicts.
const lockOwner = "recovery (automatic fence and evacuation)"

func (c *Coordinator) lockHost(host string) (func(), error) {
	if c.deps.Lock == nil {
		return func() {}, nil
	}
	release, err := c.deps.Lock(host, lockOwner)
	if err != nil {
		return nil, fmt.Errorf("%s is locked: %w", host, err)
	}
	return release, nil
}

func (c *Coordinator) record(r store.Record) {
	if _, err := c.deps.Journal.Append(r); err != nil {
		c.log.Error().Err(err).Str("host", r.Host).Str("kind", r.Kind).Msg("cannot record history")
	}
}

func (c *Coordinator) alert(ev alert.Event) {
	ev.Cluster = c.cfg.Cluster
	c.deps.Alert(ev)
}
