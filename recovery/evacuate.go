package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/store"
)

// PlanInput is everything a fenced host's evacuation plan depends on.
type PlanInput struct {
	Request EvacuationRequest
	Now     time.Time
	// Homes are the domains that should run on the failed host (running
	// or crashed there when last seen).
	Homes []store.DomainHome
	// Saved is the host's captured domain XML, by UUID.
	Saved      map[string]store.DomainRecord
	Storage    evacuator.StorageRules
	Candidates []evacuator.Candidate
	Limits     evacuator.Limits
}

// BuildTask plans a fenced host's evacuation: every domain that should run
// there is either assigned a target or reported with the reason it stays
// (Waiting when a later plan may move it). Pure: the same input gives the
// same task.
func BuildTask(in PlanInput) (evacuator.Task, evacuator.Placement) {
	t := evacuator.Task{ID: in.Request.TaskID, Host: in.Request.Host, CorrelationID: in.Request.CorrelationID,
		Created: in.Now, Fence: in.Request.Fence, State: evacuator.TaskRunning, Plans: 1}
	homes := append([]store.DomainHome(nil), in.Homes...)
	sort.Slice(homes, func(i, j int) bool { return homes[i].UUID < homes[j].UUID })
	var vms []evacuator.VM
	xmls := map[string]string{}
	for _, h := range homes {
		rec, ok := in.Saved[h.UUID]
		if !ok || rec.XML == "" {
			t.Unplaced = append(t.Unplaced, evacuator.UnplacedVM{UUID: h.UUID, Name: h.Name, Waiting: true,
				Reason: "no saved domain XML: it was never captured while " + in.Request.Host + " was healthy, and the mirror has none"})
			continue
		}
		vm, err := evacuator.ParseVM(rec.XML, in.Storage)
		if err == nil && vm.UUID != h.UUID {
			err = fmt.Errorf("it names UUID %s", vm.UUID)
		}
		if err != nil {
			t.Unplaced = append(t.Unplaced, evacuator.UnplacedVM{UUID: h.UUID, Name: h.Name,
				Reason: fmt.Sprintf("saved domain XML (captured %s) unreadable: %v", rec.CapturedAt.Format(time.RFC3339), err)})
			continue
		}
		vms = append(vms, evacuator.WithAutostart(vm, rec.Autostart))
		xmls[vm.UUID] = rec.XML
	}
	p := evacuator.Place(evacuator.PlaceRequest{FailedHost: in.Request.Host, VMs: vms, Hosts: in.Candidates, Limits: in.Limits})
	for _, a := range p.Assignments {
		t.VMs = append(t.VMs, evacuator.VMTask{UUID: a.VM.UUID, Name: a.VM.Name, Priority: a.VM.Priority, XML: xmls[a.VM.UUID],
			Target: a.Host, Alternatives: a.Alternatives, Step: evacuator.StepPending, Updated: in.Now})
	}
	for _, u := range p.Unplaced {
		t.Unplaced = append(t.Unplaced, evacuator.UnplacedVM{UUID: u.VM.UUID, Name: u.VM.Name, Reason: u.Reason, Waiting: u.NoRoom})
	}
	return t, p
}

// Replan plans t's waiting VMs again from fresh input (in.Homes and
// in.Saved as for BuildTask; the VMs that failed on every target keep the
// XML the task has) and merges the result in: a placed VM gets its new
// target and starts over as pending, one still unplaced gets the new
// reason. t is running again when anything was placed, else waiting.
// Pure.
func Replan(t evacuator.Task, in PlanInput) (evacuator.Task, evacuator.Placement) {
	t = t.Clone()
	waiting := map[string]bool{}
	var homes []store.DomainHome
	saved := map[string]store.DomainRecord{}
	for _, w := range t.Waiting() {
		waiting[w.UUID] = true
		homes = append(homes, store.DomainHome{UUID: w.UUID, Name: w.Name})
		if r, ok := in.Saved[w.UUID]; ok {
			saved[w.UUID] = r
		}
	}
	idx := map[string]int{}
	for i, vm := range t.VMs {
		idx[vm.UUID] = i
		if waiting[vm.UUID] && vm.XML != "" {
			saved[vm.UUID] = store.DomainRecord{UUID: vm.UUID, Name: vm.Name, XML: vm.XML}
		}
	}
	in.Homes, in.Saved = homes, saved
	nt, p := BuildTask(in)
	for _, vm := range nt.VMs {
		if i, ok := idx[vm.UUID]; ok {
			old := t.VMs[i]
			vm.Tried = old.Tried // the earlier targets' errors stay visible
			t.VMs[i] = vm
			continue
		}
		t.VMs = append(t.VMs, vm)
	}
	unplaced := t.Unplaced[:0:0]
	for _, u := range t.Unplaced {
		if !waiting[u.UUID] {
			unplaced = append(unplaced, u)
		}
	}
	for _, u := range nt.Unplaced {
		if i, ok := idx[u.UUID]; ok {
			// It stays a failed VM of the task, with why it still waits.
			t.VMs[i].Error, t.VMs[i].Retry = u.Reason, u.Waiting
			continue
		}
		unplaced = append(unplaced, u)
	}
	t.Unplaced = unplaced
	t.Plans++
	t.State = evacuator.TaskWaiting
	if len(nt.VMs) > 0 || t.Unconfirmed() > 0 {
		// Placed VMs run, and unconfirmed copies are asked about again.
		t.State = evacuator.TaskRunning
	}
	t.Updated = in.Now
	return t, p
}

// Back-off of a waiting task's re-plans, and how often it looks for a
// change that could help (a host eligible, enabled or resized).
const (
	DefaultRetryMin  = 5 * time.Second
	DefaultRetryMax  = 30 * time.Second
	DefaultRetryPoll = time.Second
)

// TaskStore is the evacuation journal Evacuation needs; evacuator.StoreJournal
// is one. SaveTaskRecords writes the task and its history records in one
// durable step.
type TaskStore interface {
	evacuator.Journal
	Task(id string) (evacuator.Task, bool, error)
	SaveTaskRecords(t evacuator.Task, recs ...store.Record) error
}

// EvacuationDeps are what Evacuation reads and drives.
type EvacuationDeps struct {
	Homes func(host string) []store.DomainHome
	Saved func(host string) ([]store.DomainRecord, error)
	// Mirror, if set, reads a domain's mirrored XML when the journal has
	// none (evacuator.ReadMirror).
	Mirror     func(host, uuid string) (xml string, written time.Time, ok bool, err error)
	Candidates func(ctx context.Context, failed string) []evacuator.Candidate
	Storage    evacuator.StorageRules
	Limits     evacuator.Limits
	Tasks      TaskStore
	// Exec is the executor's wiring; Journal is set from Tasks. Its Clock
	// also times the re-plans.
	Exec evacuator.ExecDeps
	// RetryMin and RetryMax bound a waiting task's back-off between
	// re-plans (defaults 5s and 30s); RetryPoll is how often it looks for
	// a change in its candidates that could help (default 1s).
	RetryMin, RetryMax, RetryPoll time.Duration
	Now                           func() time.Time
	Log                           zerolog.Logger

	mu        sync.Mutex
	cancelled map[string]cancelReq // by task ID, for the loop that runs it
	live      map[string]bool
}

type cancelReq struct {
	by, reason string
	done       chan struct{} // closed when the loop has written the end
}

// Evacuation is the Evacuator: plan once per task id, journal, execute,
// and re-plan what waits until every evacuable VM runs or an operator
// cancels the task.
type Evacuation struct{ D EvacuationDeps }

// Evacuate implements Evacuator. It returns when the task has finished
// (done, partial, failed, cancelled) or ctx ended.
func (e *Evacuation) Evacuate(ctx context.Context, req EvacuationRequest) (EvacuationReport, error) {
	start := e.D.Now()
	t, ok, err := e.D.Tasks.Task(req.TaskID)
	if err != nil {
		return EvacuationReport{}, fmt.Errorf("evacuate %s: read task %s: %w", req.Host, req.TaskID, err)
	}
	log := e.D.Log.With().Str("component", "evacuation").Str("host", req.Host).Str("task", req.TaskID).Logger()
	if !ok {
		var p evacuator.Placement
		t, p = BuildTask(e.planInput(ctx, req, start, log))
		plan, _ := json.Marshal(p.Hosts)
		summary := PlanSummary(t)
		log.Warn().Int("vms", len(t.VMs)).Int("unplaced", len(t.Unplaced)).RawJSON("hosts", plan).Msg(summary)
		t.Updated = start
		if err := e.D.Tasks.SaveTaskRecords(t, store.Record{At: start, Host: req.Host, Kind: PlanKind, To: "planned",
			CorrelationID: req.CorrelationID, Reason: summary, Evidence: plan}); err != nil {
			return EvacuationReport{}, fmt.Errorf("evacuate %s: journal the plan: %w", req.Host, err)
		}
	} else if !t.State.Open() {
		r := report(t, start, e.D.Now())
		r.Replayed = true
		return r, nil
	}
	if req.Started != nil {
		req.Started()
	}
	e.enter(req.TaskID)
	defer e.leave(req.TaskID)
	deps := e.D.Exec
	deps.Journal = endRecorder{TaskStore: e.D.Tasks, start: start, now: e.D.Now}
	if deps.Clock == nil {
		deps.Clock = evacuator.RealClock{}
	}
	if req.Progress != nil {
		req.Progress(t.Clone())
		if prev := deps.OnProgress; prev != nil {
			deps.OnProgress = func(t evacuator.Task) { prev(t); req.Progress(t) }
		} else {
			deps.OnProgress = req.Progress
		}
	}
	bo := &backoff.ExponentialBackOff{InitialInterval: orDefault(e.D.RetryMin, DefaultRetryMin), Multiplier: 2,
		MaxInterval: orDefault(e.D.RetryMax, DefaultRetryMax)}
	bo.Reset()
	// A task found waiting (a restart) is re-planned at once: the state it
	// waited on is gone with the old daemon.
	replanNow := t.State == evacuator.TaskWaiting
	said := map[string]string{} // UUID → the wait reason last logged
	for {
		if c, ok := e.cancelOf(req.TaskID); ok && t.State == evacuator.TaskWaiting {
			return e.cancel(t, c, start, log)
		}
		if t.State == evacuator.TaskRunning {
			if err := evacuator.Execute(ctx, &t, deps); err != nil {
				return report(t, start, e.D.Now()), fmt.Errorf("evacuate %s: %w", req.Host, err)
			}
		}
		if t.State != evacuator.TaskWaiting {
			r := report(t, start, e.D.Now())
			r.Recorded = true // by endRecorder, with the task's end
			return r, nil
		}
		if c, ok := e.cancelOf(req.TaskID); ok {
			return e.cancel(t, c, start, log)
		}
		wait := bo.NextBackOff()
		t.NextPlan = deps.Clock.Now().Add(wait)
		var recs []store.Record
		if !t.PartialAlerted {
			t.PartialAlerted = true
			rep := report(t, start, e.D.Now())
			recs = append(recs, waitingRecord(t, rep, e.D.Now()))
		}
		if err := e.D.Tasks.SaveTaskRecords(t, recs...); err != nil {
			return report(t, start, e.D.Now()), fmt.Errorf("evacuate %s: journal the waiting task: %w", req.Host, err)
		}
		if req.Waiting != nil && len(recs) > 0 { // after the record is durable
			req.Waiting(report(t, start, e.D.Now()))
		}
		for _, w := range t.Waiting() {
			if said[w.UUID] != w.Reason { // log what changed, not every round
				said[w.UUID] = w.Reason
				log.Warn().Str("vm", w.UUID).Str("name", w.Name).Time("next_plan", t.NextPlan).Msgf("%s waits: %s", w.Name, w.Reason)
			}
		}
		why := "resumed after a restart"
		if !replanNow {
			var err error
			if why, err = e.awaitChange(ctx, req, t.NextPlan, deps.Clock); err != nil {
				return report(t, start, e.D.Now()), fmt.Errorf("evacuate %s: %w (the task stays open and resumes)", req.Host, err)
			}
		}
		replanNow = false
		if c, ok := e.cancelOf(req.TaskID); ok {
			return e.cancel(t, c, start, log)
		}
		if req.StillProven != nil {
			if err := req.StillProven(); err != nil {
				return e.cancel(t, cancelReq{by: "recovery", reason: err.Error()}, start, log)
			}
		}
		in := e.planInput(ctx, req, e.D.Now(), log)
		var p evacuator.Placement
		t, p = Replan(t, in)
		plan, _ := json.Marshal(p.Hosts)
		summary := fmt.Sprintf("re-plan %d of %s's evacuation (%s): %d placed, %d still wait", t.Plans, req.Host, why,
			len(p.Assignments), len(t.Waiting()))
		var rec []store.Record
		if len(p.Assignments) > 0 {
			// Only a re-plan that moves something goes into the history; the
			// others would fill it every retry interval.
			log.Warn().RawJSON("hosts", plan).Msg(summary)
			rec = append(rec, store.Record{At: e.D.Now(), Host: req.Host, Kind: PlanKind, To: "re-planned",
				CorrelationID: req.CorrelationID, Reason: summary, Evidence: plan})
			bo.Reset() // progress: the next wait starts short again
		} else {
			log.Debug().RawJSON("hosts", plan).Msg(summary)
		}
		if err := e.D.Tasks.SaveTaskRecords(t, rec...); err != nil {
			return report(t, start, e.D.Now()), fmt.Errorf("evacuate %s: journal the re-plan: %w", req.Host, err)
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// planInput gathers a plan's input now: the host's homes, their saved XML
// (the mirror's where the journal has none) and fresh candidates.
func (e *Evacuation) planInput(ctx context.Context, req EvacuationRequest, now time.Time, log zerolog.Logger) PlanInput {
	saved, err := e.D.Saved(req.Host)
	if err != nil {
		log.Error().Err(err).Msg("cannot read saved domain XML; planning on the mirror only")
	}
	byUUID := make(map[string]store.DomainRecord, len(saved))
	for _, r := range saved {
		byUUID[r.UUID] = r
	}
	homes := e.D.Homes(req.Host)
	if e.D.Mirror != nil {
		for _, h := range homes {
			if r, ok := byUUID[h.UUID]; ok && r.XML != "" {
				continue
			}
			xml, at, ok, err := e.D.Mirror(req.Host, h.UUID)
			switch {
			case err != nil:
				log.Warn().Err(err).Str("vm", h.UUID).Msg("cannot read the mirrored domain XML")
			case ok:
				log.Warn().Str("vm", h.UUID).Str("name", h.Name).Time("written", at).Msg("no XML in the journal; rebuilding from the shared-storage mirror")
				byUUID[h.UUID] = store.DomainRecord{Host: req.Host, UUID: h.UUID, Name: h.Name, XML: xml, CapturedAt: at}
			}
		}
	}
	cands := e.D.Candidates(ctx, req.Host)
	if req.Target != "" {
		cands = slices.DeleteFunc(cands, func(c evacuator.Candidate) bool { return c.Name != req.Target })
	}
	return PlanInput{Request: req, Now: now, Homes: homes, Saved: byUUID, Storage: e.D.Storage, Candidates: cands, Limits: e.D.Limits}
}

// awaitChange waits until next, or until the candidates change in a way
// that could help (a host becomes eligible, or its capacity changes), or
// the task is cancelled. It returns what ended the wait.
func (e *Evacuation) awaitChange(ctx context.Context, req EvacuationRequest, next time.Time, clock evacuator.Clock) (string, error) {
	before := fingerprint(e.D.Candidates(ctx, req.Host))
	poll := orDefault(e.D.RetryPoll, DefaultRetryPoll)
	for {
		if _, ok := e.cancelOf(req.TaskID); ok {
			return "cancelled", nil
		}
		now := clock.Now()
		if !now.Before(next) {
			return "retry interval", nil
		}
		if err := clock.Sleep(ctx, min(poll, next.Sub(now))); err != nil {
			return "", err
		}
		if fp := fingerprint(e.D.Candidates(ctx, req.Host)); fp != before {
			return "hosts changed: " + fp, nil
		}
	}
}

// fingerprint names what of the candidates a plan depends on: who is
// eligible and with how much room (not the load or free memory, which
// move all the time).
func fingerprint(cs []evacuator.Candidate) string {
	parts := make([]string, 0, len(cs))
	for _, c := range cs {
		if c.Eligible {
			parts = append(parts, fmt.Sprintf("%s eligible %d/%d vCPUs %d/%d MiB", c.Name, c.UsedVCPUs, c.CPUs, c.UsedMemoryMiB, c.MemoryMiB))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// endRecorder is the executor's journal: the write that ends a task (done,
// partial, failed) carries the evacuation's history record, so the API
// never shows an ended task whose end the history lacks.
type endRecorder struct {
	TaskStore
	start time.Time
	now   func() time.Time
}

func (j endRecorder) SaveTask(t evacuator.Task) error {
	if t.State.Open() || t.State == "" {
		return j.TaskStore.SaveTask(t)
	}
	rep := report(t, j.start, j.now())
	ev, _ := json.Marshal(rep)
	at := t.Finished
	if at.IsZero() {
		at = j.now()
	}
	return j.SaveTaskRecords(t, store.Record{At: at, Host: t.Host, Kind: "evacuation", To: string(t.State),
		CorrelationID: t.CorrelationID, Reason: rep.Summary(t.Host), Evidence: ev})
}

// waitingRecord is the history record of a task that first waits.
func waitingRecord(t evacuator.Task, rep EvacuationReport, now time.Time) store.Record {
	ev, _ := json.Marshal(rep)
	return store.Record{At: now, Host: t.Host, Kind: "evacuation", To: "waiting", CorrelationID: t.CorrelationID,
		Reason: rep.Summary(t.Host), Evidence: ev}
}

// Cancel ends an open evacuation task by hand: what waits stays where it
// is. A task whose VMs are being rebuilt right now ends when that pass
// does (its VMs in flight finish, none is started after). The task and
// its history record are written in one step.
func (e *Evacuation) Cancel(id, by, reason string) (evacuator.Task, error) {
	t, ok, err := e.D.Tasks.Task(id)
	if err != nil {
		return evacuator.Task{}, fmt.Errorf("cancel evacuation task %s: %w", id, err)
	}
	if !ok {
		return evacuator.Task{}, fmt.Errorf("cancel evacuation task %s: %w", id, ErrNoTask)
	}
	if !t.State.Open() {
		return t, fmt.Errorf("cancel evacuation task %s: it already ended (%s): %w", id, t.State, ErrTaskEnded)
	}
	e.D.mu.Lock()
	if e.D.live[id] {
		if e.D.cancelled == nil {
			e.D.cancelled = map[string]cancelReq{}
		}
		c, ok := e.D.cancelled[id]
		if !ok {
			c = cancelReq{by: by, reason: reason, done: make(chan struct{})}
			e.D.cancelled[id] = c
		}
		e.D.mu.Unlock()
		// The loop that runs it ends it and writes the record: at its next
		// look (RetryPoll) while it waits, or when a pass in flight ends.
		timer := time.NewTimer(CancelWait)
		defer timer.Stop()
		select {
		case <-c.done:
		case <-timer.C:
		}
		t, _, err = e.D.Tasks.Task(id)
		return t, err
	}
	e.D.mu.Unlock()
	_, err = e.cancel(t, cancelReq{by: by, reason: reason}, e.D.Now(), e.D.Log)
	t, _, _ = e.D.Tasks.Task(id)
	return t, err
}

// CancelWait bounds how long Cancel waits for the loop running a task to
// end it; the task then ends later, and Cancel returns it as it is.
const CancelWait = 10 * time.Second

// Errors Cancel returns, for errors.Is.
var (
	ErrNoTask    = errors.New("no such evacuation task")
	ErrTaskEnded = errors.New("the task has already ended")
)

func (e *Evacuation) cancel(t evacuator.Task, c cancelReq, start time.Time, log zerolog.Logger) (EvacuationReport, error) {
	now := e.D.Now()
	t.State, t.Finished, t.Updated, t.CancelledBy, t.CancelReason = evacuator.TaskCancelled, now, now, c.by, c.reason
	rep := report(t, start, now)
	rep.Recorded = true
	summary := fmt.Sprintf("evacuation of %s cancelled by %s: %s; %s", t.Host, c.by, orNone(c.reason), rep.Summary(t.Host))
	ev, _ := json.Marshal(rep)
	err := e.D.Tasks.SaveTaskRecords(t, store.Record{At: now, Host: t.Host, Kind: "evacuation", To: "cancelled",
		CorrelationID: t.CorrelationID, Reason: summary, Evidence: ev})
	if err != nil {
		return rep, fmt.Errorf("cancel evacuation task %s: %w", t.ID, err)
	}
	log.Warn().Str("task", t.ID).Msg(summary)
	e.D.mu.Lock()
	if c.done != nil {
		close(c.done)
	}
	delete(e.D.cancelled, t.ID)
	e.D.mu.Unlock()
	return rep, nil
}

func (e *Evacuation) enter(id string) {
	e.D.mu.Lock()
	defer e.D.mu.Unlock()
	if e.D.live == nil {
		e.D.live = map[string]bool{}
	}
	e.D.live[id] = true
}

func (e *Evacuation) leave(id string) {
	e.D.mu.Lock()
	defer e.D.mu.Unlock()
	delete(e.D.live, id)
}

func (e *Evacuation) cancelOf(id string) (cancelReq, bool) {
	e.D.mu.Lock()
	defer e.D.mu.Unlock()
	c, ok := e.D.cancelled[id]
	return c, ok
}

func report(t evacuator.Task, start, now time.Time) EvacuationReport {
	r := EvacuationReport{TaskID: t.ID, State: string(t.State), Elapsed: now.Sub(start).Round(time.Millisecond).String(),
		PartialAlerted: t.PartialAlerted}
	for _, v := range t.VMs {
		switch {
		case v.Step == evacuator.StepRunning:
			r.Running = append(r.Running, VMOutcome{UUID: v.UUID, Name: v.Name, Host: v.Target})
		case v.Step == evacuator.StepFailed && v.Retry, v.Step == evacuator.StepCleanup && v.MayRun:
			r.Unplaced = append(r.Unplaced, VMOutcome{UUID: v.UUID, Name: v.Name, Reason: v.Error, Waiting: true})
		default:
			r.Failed = append(r.Failed, VMOutcome{UUID: v.UUID, Name: v.Name, Reason: fmt.Sprintf("%s: %s", v.Step, v.Error)})
		}
	}
	for _, u := range t.Unplaced {
		r.Unplaced = append(r.Unplaced, VMOutcome{UUID: u.UUID, Name: u.Name, Reason: u.Reason, Waiting: u.Waiting})
	}
	return r
}

// PlanKind is the history kind of an evacuation's plan.
const PlanKind = "evacuation-plan"

// PlanSummary is a task's plan on one line: each VM and its target, then
// the VMs that stay and why.
func PlanSummary(t evacuator.Task) string {
	var b strings.Builder
	fmt.Fprintf(&b, "evacuation plan for %s: %d to rebuild, %d stay", t.Host, len(t.VMs), len(t.Unplaced))
	for i, vm := range t.VMs {
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(&b, "%s%s → %s", sep, vm.Name, vm.Target)
	}
	for _, u := range t.Unplaced {
		fmt.Fprintf(&b, "; %s stays: %s", u.Name, u.Reason)
	}
	return b.String()
}
