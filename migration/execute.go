package migration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Hypervisor is what Execute needs from a host's libvirtd
// (drivers/libvirt.Client satisfies it).
type Hypervisor interface {
	Domain(ctx context.Context, uuid string) (hypervisor.Domain, error)
	Migrate(ctx context.Context, m hypervisor.Migration, progress func(hypervisor.MigrationProgress)) error
	PrepareCopyTargets(ctx context.Context, dirs []string) (release func(context.Context) error, err error)
}

// Endpoint is how a SOURCE host reaches a destination: the libvirt URI its
// libvirtd connects to and the address the data goes to.
type Endpoint struct {
	DestURI string // qemu+tcp://ADDR/system
	DataURI string // tcp://ADDR; "" = the destination's host name
}

// VM progress states; the same strings as the operations package's.
const (
	VMPending = "pending"
	VMRunning = "running"
	VMDone    = "done"
	VMFailed  = "failed"
	VMSkipped = "skipped"
)

// Progress is one VM's line in a migration's report.
type Progress struct {
	UUID   string    `json:"uuid,omitempty"`
	Name   string    `json:"name"`
	State  string    `json:"state"`
	Target string    `json:"target,omitempty"`
	Detail string    `json:"detail,omitempty"`
	At     time.Time `json:"at,omitzero"`
}

// Config wires Execute to the world. Hosts and Endpoint are required.
type Config struct {
	// Hosts returns the driver of a host by name.
	Hosts func(host string) (Hypervisor, error)
	// Endpoint says how the source reaches a target host.
	Endpoint func(target string) (Endpoint, error)
	// Parallel bounds concurrent migrations off the host. Default 2: each
	// one shares the source's network and CPU.
	Parallel int
	// VMTimeout bounds each migration (ctx's deadline still applies).
	// Default 30 minutes.
	VMTimeout time.Duration
	// CallTimeout bounds each read-back call. Default 30s.
	CallTimeout time.Duration
	// AllowUnsafe and BandwidthMiBs go into every hypervisor.Migration.
	AllowUnsafe   bool
	BandwidthMiBs uint64
	// Report receives progress lines; it may be called from several
	// goroutines. Optional.
	Report func(...Progress)
	// Moved is called once per VM whose move was verified (it runs on the
	// target and no longer on the source), before the VM's line says done:
	// the daemon records the new home there (Relocate) so the agents'
	// assignments follow. An error is reported with the VM and fails the
	// operation; the VM has moved all the same. Optional.
	Moved func(ctx context.Context, m Move) error
	Now   func() time.Time
	Log   zerolog.Logger
}

// Outcome is one VM's result.
type Outcome struct {
	Move   Move   `json:"move"`
	State  string `json:"state"` // VMDone, VMFailed or VMPending (never started)
	Detail string `json:"detail"`
}

// Result is a migration's result.
type Result struct {
	Source   string    `json:"source"`
	Outcomes []Outcome `json:"outcomes"`
	Skipped  []Skip    `json:"skipped"`
}

// Moved counts the VMs now on their targets.
func (r Result) Moved() int {
	n := 0
	for _, o := range r.Outcomes {
		if o.State == VMDone {
			n++
		}
	}
	return n
}

// Summary is the result in one line, for the task's result.
func (r Result) Summary() string {
	s := fmt.Sprintf("%d of %d VMs migrated off %s", r.Moved(), len(r.Outcomes), r.Source)
	if len(r.Skipped) > 0 {
		s += fmt.Sprintf("; %d not moved by design", len(r.Skipped))
	}
	return s
}

// Execute carries out plan: it first prepares every target that receives
// disk copies (nothing moves if one cannot), then migrates VM by VM, at
// most Parallel at once, in the plan's order. After each migration it
// reads back both hosts: a VM counts as moved only when the target has it
// (running, or defined for an offline move) and the source no longer runs
// it, whatever the migration call returned (an aborted migration may have
// completed; a successful one is checked all the same). Moved is called
// for each verified VM. When ctx ends, running migrations are aborted and
// VMs not started stay pending. The error, nil only when every move was
// verified, names every VM that did not move.
func Execute(ctx context.Context, plan Plan, cfg Config) (Result, error) {
	if cfg.Hosts == nil || cfg.Endpoint == nil {
		return Result{}, errors.New("migration: Config.Hosts and Config.Endpoint are required")
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 2
	}
	if cfg.VMTimeout <= 0 {
		cfg.VMTimeout = 30 * time.Minute
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Report == nil {
		cfg.Report = func(...Progress) {}
	}
	log := cfg.Log.With().Str("component", "migration").Str("source", plan.Source).Logger()
	res := Result{Source: plan.Source, Outcomes: make([]Outcome, len(plan.Moves)), Skipped: plan.Skipped}
	lines := make([]Progress, 0, len(plan.Moves)+len(plan.Skipped))
	for i, m := range plan.Moves {
		res.Outcomes[i] = Outcome{Move: m, State: VMPending}
		lines = append(lines, Progress{UUID: m.VM.UUID, Name: m.VM.Name, State: VMPending, Target: m.Target, Detail: "waiting", At: cfg.Now()})
	}
	for _, s := range plan.Skipped {
		lines = append(lines, Progress{UUID: s.UUID, Name: s.Name, State: VMSkipped, Detail: s.Reason, At: cfg.Now()})
	}
	if len(lines) > 0 {
		cfg.Report(lines...)
	}
	if len(plan.Moves) == 0 {
		return res, nil
	}

	src, err := cfg.Hosts(plan.Source)
	if err != nil {
		return res, failAll(&res, cfg, fmt.Errorf("source %s: %w", plan.Source, err))
	}
	release, err := prepareTargets(ctx, plan, cfg)
	if err != nil {
		return res, failAll(&res, cfg, err)
	}
	defer release()

	sem := make(chan struct{}, cfg.Parallel)
	var wg sync.WaitGroup
	for i := range res.Outcomes {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(o *Outcome) {
			defer wg.Done()
			defer func() { <-sem }()
			migrateOne(ctx, src, o, cfg, log)
		}(&res.Outcomes[i])
	}
	wg.Wait()

	var failed []string
	var notStarted int
	for i := range res.Outcomes {
		o := &res.Outcomes[i]
		switch o.State {
		case VMFailed:
			failed = append(failed, fmt.Sprintf("%s (%s): %s", o.Move.VM.Name, o.Move.VM.UUID, o.Detail))
		case VMPending:
			notStarted++
			o.Detail = fmt.Sprintf("not started: %v", context.Cause(ctx))
			cfg.Report(Progress{UUID: o.Move.VM.UUID, Name: o.Move.VM.Name, State: VMPending, Target: o.Move.Target, Detail: o.Detail, At: cfg.Now()})
		}
	}
	if len(failed) == 0 && notStarted == 0 {
		return res, nil
	}
	msg := res.Summary()
	if len(failed) > 0 {
		msg += "; failed: " + strings.Join(failed, "; ")
	}
	if notStarted > 0 {
		msg += fmt.Sprintf("; %d not started (%v)", notStarted, context.Cause(ctx))
	}
	return res, errors.New("migration: " + msg)
}

// failAll marks every move failed with err before anything moved.
func failAll(res *Result, cfg Config, err error) error {
	var lines []Progress
	for i := range res.Outcomes {
		o := &res.Outcomes[i]
		o.State, o.Detail = VMFailed, "not started: "+err.Error()
		lines = append(lines, Progress{UUID: o.Move.VM.UUID, Name: o.Move.VM.Name, State: VMFailed, Target: o.Move.Target, Detail: o.Detail, At: cfg.Now()})
	}
	cfg.Report(lines...)
	return fmt.Errorf("migration off %s: nothing moved: %w", res.Source, err)
}

// prepareTargets readies every target that receives disk copies, once per
// target for the whole run (a pool released while another VM's copy is
// being created would fail it).
func prepareTargets(ctx context.Context, plan Plan, cfg Config) (func(), error) {
	dirs := map[string][]string{}
	var targets []string
	for _, m := range plan.Moves {
		for _, d := range m.CopyDirs {
			if _, ok := dirs[m.Target]; !ok {
				targets = append(targets, m.Target)
			}
			if !slices.Contains(dirs[m.Target], d) {
				dirs[m.Target] = append(dirs[m.Target], d)
			}
		}
	}
	var releases []func(context.Context) error
	releaseAll := func() {
		for _, r := range releases {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.CallTimeout)
			if err := r(rctx); err != nil {
				cfg.Log.Warn().Err(err).Msg("migration: releasing a copy target failed")
			}
			cancel()
		}
	}
	for _, t := range targets {
		hv, err := cfg.Hosts(t)
		if err != nil {
			releaseAll()
			return nil, fmt.Errorf("target %s: %w", t, err)
		}
		pctx, cancel := context.WithTimeout(ctx, cfg.CallTimeout)
		r, err := hv.PrepareCopyTargets(pctx, dirs[t])
		cancel()
		if err != nil {
			releaseAll()
			return nil, fmt.Errorf("target %s cannot receive disk copies in %s: %w", t, strings.Join(dirs[t], ", "), err)
		}
		releases = append(releases, r)
	}
	return releaseAll, nil
}

// migrateOne migrates o's VM and verifies where it runs.
func migrateOne(ctx context.Context, src Hypervisor, o *Outcome, cfg Config, log zerolog.Logger) {
	m := o.Move
	vlog := log.With().Str("uuid", m.VM.UUID).Str("domain", m.VM.Name).Str("target", m.Target).Logger()
	report := func(state, detail string) {
		o.State, o.Detail = state, detail
		cfg.Report(Progress{UUID: m.VM.UUID, Name: m.VM.Name, State: state, Target: m.Target, Detail: detail, At: cfg.Now()})
	}
	dst, err := cfg.Hosts(m.Target)
	if err != nil {
		report(VMFailed, fmt.Sprintf("not started: target %s: %v", m.Target, err))
		return
	}
	ep, err := cfg.Endpoint(m.Target)
	if err != nil {
		report(VMFailed, fmt.Sprintf("not started: target %s: %v", m.Target, err))
		return
	}
	what := "live"
	switch {
	case m.Offline:
		what = "offline (definition only)"
	case len(m.CopyDisks) > 0:
		what = "live, copying " + strings.Join(m.CopyDisks, ", ")
	}
	report(VMRunning, "migrating "+what)
	vlog.Info().Str("how", what).Msg("migration starting")

	mctx, cancel := context.WithTimeout(ctx, cfg.VMTimeout)
	migErr := src.Migrate(mctx, hypervisor.Migration{
		UUID: m.VM.UUID, DestURI: ep.DestURI, DataURI: ep.DataURI, CopyDisks: m.CopyDisks,
		Offline: m.Offline, AllowUnsafe: cfg.AllowUnsafe, BandwidthMiBs: cfg.BandwidthMiBs,
	}, func(p hypervisor.MigrationProgress) {
		report(VMRunning, fmt.Sprintf("migrating %s: %.0f%% (%d of %d MiB sent, %s)", what, p.Percent(),
			p.DataProcessed>>20, p.DataTotal>>20, p.Elapsed.Round(time.Second)))
	})
	cancel()

	// Read back on a context that outlives a cancelled operation: the
	// answer decides whether the daemon records the move.
	vctx, vcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*cfg.CallTimeout)
	where, verr := readBack(vctx, src, dst, m, cfg.CallTimeout)
	vcancel()
	switch {
	case verr == nil && migErr == nil:
		vlog.Info().Msg("migration verified")
	case verr == nil:
		vlog.Warn().Err(migErr).Msg("migration call failed, but the VM runs on the target only: counted as moved")
		where += fmt.Sprintf(" (the migration call reported: %v)", migErr)
	case migErr != nil:
		vlog.Error().Err(migErr).AnErr("read_back", verr).Msg("migration failed")
		report(VMFailed, fmt.Sprintf("%v; %v", migErr, verr))
		return
	default:
		vlog.Error().AnErr("read_back", verr).Msg("migration reported success but does not read back")
		report(VMFailed, fmt.Sprintf("libvirt reported success, but %v", verr))
		return
	}
	if cfg.Moved != nil {
		hctx, hcancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.CallTimeout)
		err := cfg.Moved(hctx, m)
		hcancel()
		if err != nil {
			vlog.Error().Err(err).Msg("moved, but recording the new home failed")
			report(VMFailed, fmt.Sprintf("moved to %s (%s), but recording it failed: %v", m.Target, where, err))
			return
		}
	}
	report(VMDone, where)
}

// readBack checks that m's VM is on its target and gone from its source;
// it returns a description of what it found, or an error saying what is
// wrong.
func readBack(ctx context.Context, src, dst Hypervisor, m Move, timeout time.Duration) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	d, derr := dst.Domain(dctx, m.VM.UUID)
	cancel()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	s, serr := src.Domain(sctx, m.VM.UUID)
	cancel()
	srcGone := errors.Is(serr, hypervisor.ErrNotFound)
	switch {
	case serr != nil && !srcGone:
		return "", fmt.Errorf("cannot read the VM on the source %s: %w", m.Source, serr)
	case !srcGone && s.State.Active():
		if derr == nil && d.State.Active() {
			return "", fmt.Errorf("the VM is active on both %s (%s) and %s (%s): check by hand", m.Source, s.State, m.Target, d.State)
		}
		return "", fmt.Errorf("the VM is still %s on the source %s", s.State, m.Source)
	case errors.Is(derr, hypervisor.ErrNotFound):
		return "", fmt.Errorf("the VM is not defined on the target %s", m.Target)
	case derr != nil:
		return "", fmt.Errorf("cannot read the VM on the target %s: %w", m.Target, derr)
	case !m.Offline && !d.State.Active():
		return "", fmt.Errorf("the VM is %s on the target %s, not running", d.State, m.Target)
	case !d.Persistent:
		return "", fmt.Errorf("the VM is not persistently defined on the target %s", m.Target)
	}
	desc := fmt.Sprintf("%s on %s", d.State, m.Target)
	if !srcGone {
		// UndefineSource failed after the move: a stale definition only.
		desc += fmt.Sprintf("; still defined (%s) on %s: undefine it there", s.State, m.Source)
	}
	return desc, nil
}
