package migration

import (
	"context"
	"errors"
	"fmt"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/operations"
)

// OperationDeps is what the migrate operation needs from the daemon.
type OperationDeps struct {
	// Domains lists the source host's domains with their definitions and
	// live states (its libvirtd; a migration needs it to answer anyway).
	Domains func(ctx context.Context, host string) ([]hypervisor.Domain, error)
	// Cluster gives the planner's inputs for a migration off source: every
	// host as a candidate (eligibility, capacity, load), the scheduler's
	// limits and the storage rules.
	Cluster func(source string) ([]evacuator.Candidate, evacuator.Limits, evacuator.StorageRules)
	// Exec configures Execute; its Report is replaced by the task's.
	Exec Config
}

// Operation is the daemon's `host migrate` executor: plan the whole host
// (the task's Target, or the scheduler; local-disk VMs only with
// MigrateLocalDiskVMs), refuse before moving anything when the plan does
// not fit, then Execute it with per-VM lines in the task.
func Operation(deps OperationDeps) operations.Executor {
	return func(ctx context.Context, t operations.Task, report operations.Report) (string, error) {
		if deps.Domains == nil || deps.Cluster == nil {
			return "", errors.New("migrate: the daemon wired no domain lister or cluster view")
		}
		doms, err := deps.Domains(ctx, t.Host)
		if err != nil {
			return "", fmt.Errorf("migrate %s: list its domains: %w; nothing moved", t.Host, err)
		}
		hosts, limits, rules := deps.Cluster(t.Host)
		req := Request{Source: t.Host, Target: t.Target, MigrateLocalDiskVMs: t.MigrateLocalDiskVMs,
			Hosts: hosts, Limits: limits, Storage: rules}
		for _, d := range doms {
			req.Domains = append(req.Domains, Domain{XML: d.XML, State: d.State})
		}
		plan, err := NewPlan(req)
		if err != nil {
			report(refusedLines(plan)...)
			return "", fmt.Errorf("migrate %s: %w", t.Host, err)
		}
		cfg := deps.Exec
		cfg.Report = func(ps ...Progress) {
			lines := make([]operations.VMProgress, len(ps))
			for i, p := range ps {
				lines[i] = operations.VMProgress(p)
			}
			report(lines...)
		}
		res, err := Execute(ctx, plan, cfg)
		if err != nil {
			return "", err
		}
		return res.Summary(), nil
	}
}

// refusedLines are the task's lines for a plan that may not run: VMs it
// leaves by design, VMs that fit nowhere, and the rest not started.
func refusedLines(p Plan) []operations.VMProgress {
	var out []operations.VMProgress
	for _, s := range p.Skipped {
		out = append(out, operations.VMProgress{UUID: s.UUID, Name: s.Name, State: operations.VMSkipped, Detail: s.Reason})
	}
	for _, u := range p.Placement.Unplaced {
		out = append(out, operations.VMProgress{UUID: u.VM.UUID, Name: u.VM.Name, State: operations.VMFailed, Detail: "does not fit: " + u.Reason})
	}
	for _, m := range p.Moves {
		out = append(out, operations.VMProgress{UUID: m.VM.UUID, Name: m.VM.Name, State: operations.VMPending, Target: m.Target,
			Detail: "not started: the plan does not fit as a whole"})
	}
	return out
}
