package recovery

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

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
// there is either assigned a target or reported with the reason it stays.
// Pure: the same input gives the same task.
func BuildTask(in PlanInput) (evacuator.Task, evacuator.Placement) {
	t := evacuator.Task{ID: in.Request.TaskID, Host: in.Request.Host, CorrelationID: in.Request.CorrelationID,
		Created: in.Now, Fence: in.Request.Fence, State: evacuator.TaskRunning}
	homes := append([]store.DomainHome(nil), in.Homes...)
	sort.Slice(homes, func(i, j int) bool { return homes[i].UUID < homes[j].UUID })
	var vms []evacuator.VM
	xmls := map[string]string{}
	for _, h := range homes {
		rec, ok := in.Saved[h.UUID]
		if !ok || rec.XML == "" {
			t.Unplaced = append(t.Unplaced, evacuator.UnplacedVM{UUID: h.UUID, Name: h.Name,
				Reason: "no saved domain XML: it was never captured while " + in.Request.Host + " was healthy"})
			continue
		}
		vm, err := evacuator.ParseVM(rec.XML, in.Storage)
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
		t.Unplaced = append(t.Unplaced, evacuator.UnplacedVM{UUID: u.VM.UUID, Name: u.VM.Name, Reason: u.Reason})
	}
	return t, p
}

// EvacuationDeps are what Evacuation reads and drives.
type EvacuationDeps struct {
	Homes      func(host string) []store.DomainHome
	Saved      func(host string) ([]store.DomainRecord, error)
	Candidates func(failed string) []evacuator.Candidate
	Storage    evacuator.StorageRules
	Limits     evacuator.Limits
	Tasks      interface {
		evacuator.Journal
		Task(id string) (evacuator.Task, bool, error)
	}
	// Record, if set, writes the plan into the history (PlanKind).
	Record func(store.Record)
	// Exec is the executor's wiring; Journal is set from Tasks.
	Exec evacuator.ExecDeps
	Now  func() time.Time
	Log  zerolog.Logger
}

// Evacuation is the Evacuator: plan once per task id, journal, execute.
type Evacuation struct{ D EvacuationDeps }

// Evacuate implements Evacuator.
func (e *Evacuation) Evacuate(ctx context.Context, req EvacuationRequest) (EvacuationReport, error) {
	start := e.D.Now()
	t, ok, err := e.D.Tasks.Task(req.TaskID)
	if err != nil {
		return EvacuationReport{}, fmt.Errorf("evacuate %s: read task %s: %w", req.Host, req.TaskID, err)
	}
	log := e.D.Log.With().Str("component", "evacuation").Str("host", req.Host).Str("task", req.TaskID).Logger()
	if !ok {
		saved, err := e.D.Saved(req.Host)
		if err != nil {
			return EvacuationReport{}, fmt.Errorf("evacuate %s: read saved domain XML: %w", req.Host, err)
		}
		byUUID := make(map[string]store.DomainRecord, len(saved))
		for _, r := range saved {
			byUUID[r.UUID] = r
		}
		var p evacuator.Placement
		cands := e.D.Candidates(req.Host)
		if req.Target != "" {
			cands = slices.DeleteFunc(cands, func(c evacuator.Candidate) bool { return c.Name != req.Target })
		}
		t, p = BuildTask(PlanInput{Request: req, Now: start, Homes: e.D.Homes(req.Host), Saved: byUUID,
			Storage: e.D.Storage, Candidates: cands, Limits: e.D.Limits})
		plan, _ := json.Marshal(p.Hosts)
		summary := PlanSummary(t)
		log.Warn().Int("vms", len(t.VMs)).Int("unplaced", len(t.Unplaced)).RawJSON("hosts", plan).Msg(summary)
		if err := e.D.Tasks.SaveTask(t); err != nil {
			return EvacuationReport{}, fmt.Errorf("evacuate %s: journal the plan: %w", req.Host, err)
		}
		if e.D.Record != nil {
			e.D.Record(store.Record{At: start, Host: req.Host, Kind: PlanKind, To: "planned", CorrelationID: req.CorrelationID,
				Reason: summary, Evidence: plan})
		}
	} else if t.State != evacuator.TaskRunning {
		r := report(t, start, e.D.Now())
		r.Replayed = true
		return r, nil
	}
	deps := e.D.Exec
	deps.Journal = e.D.Tasks
	if req.Progress != nil {
		req.Progress(t.Clone())
		if prev := deps.OnProgress; prev != nil {
			deps.OnProgress = func(t evacuator.Task) { prev(t); req.Progress(t) }
		} else {
			deps.OnProgress = req.Progress
		}
	}
	if err := evacuator.Execute(ctx, &t, deps); err != nil {
		return report(t, start, e.D.Now()), fmt.Errorf("evacuate %s: %w", req.Host, err)
	}
	return report(t, start, e.D.Now()), nil
}

func report(t evacuator.Task, start, now time.Time) EvacuationReport {
	r := EvacuationReport{TaskID: t.ID, State: string(t.State), Elapsed: now.Sub(start).Round(time.Millisecond).String()}
	for _, v := range t.VMs {
		switch v.Step {
		case evacuator.StepRunning:
			r.Running = append(r.Running, VMOutcome{UUID: v.UUID, Name: v.Name, Host: v.Target})
		default:
			r.Failed = append(r.Failed, VMOutcome{UUID: v.UUID, Name: v.Name, Reason: fmt.Sprintf("%s: %s", v.Step, v.Error)})
		}
	}
	for _, u := range t.Unplaced {
		r.Unplaced = append(r.Unplaced, VMOutcome{UUID: u.UUID, Name: u.Name, Reason: u.Reason})
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
