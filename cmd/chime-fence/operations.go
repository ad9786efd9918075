package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/migration"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

// newOperations wires the operator's operations: admin changes and drain
// run here, fence, confirm-down and rebuild go through the recovery
// coordinator (the same pipeline as a host-down verdict).
func newOperations(cs *configs.Store, st *store.Store, d *daemon.Daemon, coord *recovery.Coordinator, hv *hypervisors,
	migrate operations.Executor, log zerolog.Logger) (*operations.Manager, error) {
	drain := operations.DrainExecutor(operations.DrainDeps{
		SetAdmin: d.SetAdminState,
		AgentDrain: func(ctx context.Context, host string) ([]operations.VMProgress, error) {
			cfg := cs.Current()
			h, ok := cfg.Host(host)
			if !ok {
				return nil, fmt.Errorf("host %q is not configured", host)
			}
			c, err := agentClient(cfg, h)
			if err != nil {
				return nil, err
			}
			res, err := c.Drain(ctx)
			if err != nil {
				return nil, err
			}
			lines := make([]operations.VMProgress, 0, len(res.Domains))
			var failed int
			for _, dom := range res.Domains {
				p := operations.VMProgress{UUID: dom.UUID, Name: dom.Name, State: operations.VMDone, Detail: dom.Action + " by the agent"}
				if dom.Action == "failed" {
					failed++
					p.State, p.Detail = operations.VMFailed, "agent could not stop it: "+dom.Error
				}
				lines = append(lines, p)
			}
			if failed > 0 {
				return lines, fmt.Errorf("the agent could not stop %d domain(s)", failed)
			}
			return lines, nil
		},
		Domains: func(ctx context.Context, host string) ([]hypervisor.Domain, error) {
			c, err := hv.get(host)
			if err != nil {
				return nil, err
			}
			return c.Domains(ctx, false)
		},
		Destroy: func(ctx context.Context, host, uuid string) error {
			c, err := hv.get(host)
			if err != nil {
				return err
			}
			return c.Destroy(ctx, uuid)
		},
	})
	exec := operations.Executors{
		Enable:  operations.AdminExecutor(d.SetAdminState, node.Enabled),
		Disable: operations.AdminExecutor(d.SetAdminState, node.Disabled),
		Drain:   drain,
		Migrate: migrate,
		Fence: func(ctx context.Context, t operations.Task, _ operations.Report) (string, error) {
			return coord.FenceNow(ctx, t.Host, t.ID, t.Actor, forcedReason(t))
		},
		ConfirmDown: func(ctx context.Context, t operations.Task, report operations.Report) (string, error) {
			return coord.ConfirmDown(ctx, t.Host, t.ID, t.Actor, forcedReason(t), evacuationProgress(report))
		},
		Rebuild: func(ctx context.Context, t operations.Task, report operations.Report) (string, error) {
			return coord.Rebuild(ctx, t.Host, t.Target, t.ID, t.Actor, evacuationProgress(report))
		},
	}
	return operations.New(operations.Config{}, operations.Deps{
		Store: st, View: operations.ClusterView(d, st, func() bool { return cs.Current().Mode == configs.ModeObserve }),
		Executors: exec, Now: time.Now,
		Log: log.With().Str("component", "operations").Logger(),
	})
}

// forcedReason is the operator's reason, plus what a forced request
// overrode, so the fence journal and its alert carry both.
func forcedReason(t operations.Task) string {
	if len(t.Overridden) == 0 {
		return t.Reason
	}
	return t.Reason + " (forced over: " + strings.Join(t.Overridden, "; ") + ")"
}

// evacuationProgress turns each journaled state of an evacuation task into
// the operator task's per-VM lines.
func evacuationProgress(report operations.Report) func(evacuator.Task) {
	return func(t evacuator.Task) { report(vmProgress(t)...) }
}

// vmProgress is one line per VM of an evacuation task: those it moves, by
// step, and those it leaves, with the reason.
func vmProgress(t evacuator.Task) []operations.VMProgress {
	out := make([]operations.VMProgress, 0, len(t.VMs)+len(t.Unplaced))
	for _, vm := range t.VMs {
		p := operations.VMProgress{UUID: vm.UUID, Name: vm.Name, Target: vm.Target, At: vm.Updated}
		switch vm.Step {
		case evacuator.StepPending:
			p.State = operations.VMPending
		case evacuator.StepRunning:
			p.State, p.Detail = operations.VMDone, "running on "+vm.Target
		case evacuator.StepFailed, evacuator.StepRefused:
			p.State, p.Detail = operations.VMFailed, string(vm.Step)+": "+vm.Error
		default:
			p.State, p.Detail = operations.VMRunning, string(vm.Step)
		}
		out = append(out, p)
	}
	for _, u := range t.Unplaced {
		out = append(out, operations.VMProgress{UUID: u.UUID, Name: u.Name, State: operations.VMSkipped, Detail: u.Reason})
	}
	return out
}

// migrateExecutor is `host migrate`: the whole host planned first (target
// or scheduler), then peer-to-peer live migrations driven by the source's
// libvirtd, each verified by reading both hosts back; a moved VM's new home
// is recorded so the agents' assignments follow.
func migrateExecutor(cs *configs.Store, d *daemon.Daemon, capture *evacuator.Capture, hv *hypervisors, log zerolog.Logger) operations.Executor {
	return migration.Operation(migration.OperationDeps{
		Domains: func(ctx context.Context, host string) ([]hypervisor.Domain, error) {
			c, err := hv.client(host)
			if err != nil {
				return nil, err
			}
			return c.Domains(ctx, true)
		},
		Cluster: func(source string) ([]evacuator.Candidate, evacuator.Limits, evacuator.StorageRules) {
			cfg := cs.Current()
			return planCandidates(context.Background(), d.Status(), source, capture), schedulerLimits(cfg), storageRules(cfg)
		},
		Exec: migration.Config{
			Hosts: func(host string) (migration.Hypervisor, error) { return hv.client(host) },
			Endpoint: func(target string) (migration.Endpoint, error) {
				h, ok := cs.Current().Host(target)
				if !ok {
					return migration.Endpoint{}, fmt.Errorf("host %q is not configured", target)
				}
				return migration.Endpoint{DestURI: "qemu+tcp://" + h.Libvirt.Address + "/system", DataURI: "tcp://" + h.Address}, nil
			},
			AllowUnsafe: cs.Current().Scheduler.MigrationAllowUnsafe,
			Moved: func(_ context.Context, m migration.Move) error {
				return d.Relocate(m.VM.UUID, m.VM.Name, m.Source, m.Target, time.Now())
			},
			Now: time.Now,
			Log: log.With().Str("component", "migration").Logger(),
		},
	})
}
