package evacuator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Defaults for ExecDeps' zero fields.
const (
	DefaultPerTarget     = 4
	DefaultCallTimeout   = 10 * time.Second
	DefaultVerifyTimeout = 30 * time.Second
	DefaultPollInterval  = 250 * time.Millisecond
	DefaultGuardTimeout  = 3 * time.Second
)

// Alert kinds Execute raises through ExecDeps.Alert. Results per VM (failed
// on every target, not placed) are in the finished task, not alerted here.
const (
	// AlertSplitBrain: another host runs (or libvirt says holds the disks
	// of) a domain with the VM's UUID; the VM was not started.
	AlertSplitBrain = "evacuation-split-brain"
	// AlertUnsafe: a start failed on a target that then could not be
	// confirmed stopped; the VM is not retried elsewhere so it cannot run
	// twice, and an operator must look.
	AlertUnsafe = "evacuation-unsafe"
)

// Clock is time as the executor sees it; tests pass a virtual one.
type Clock interface {
	Now() time.Time
	// Sleep waits d or until ctx ends, whichever is first.
	Sleep(ctx context.Context, d time.Duration) error
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }

func (RealClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ExecDeps is what Execute needs from the daemon. Journal, Hypervisor and
// Peers are required; every other field has a default.
type ExecDeps struct {
	Journal Journal
	// Hypervisor returns the connection to a host's hypervisor.
	Hypervisor func(host string) (Hypervisor, error)
	// Peers are the hosts the split-brain guard asks before every start
	// (the VM's own target is skipped: it is checked directly). An
	// unreachable peer is skipped, so include every host that might run
	// the VM. The task's fenced host is never asked: its power-off is
	// proven (the task's Fence), and a powered-off host would only hold
	// each start up until its connect timeout.
	Peers func() []string
	// GuardTimeout bounds each peer's answer to the split-brain guard
	// (default 3s): a live libvirtd answers in milliseconds, and one that
	// does not is skipped anyway.
	GuardTimeout time.Duration
	// Rewrite adapts saved XML to a target (graphics listen address,
	// bridge names). It must keep the UUID. Nil defines the XML as saved.
	Rewrite func(xml, target string) (string, error)
	Clock   Clock // default RealClock
	// PerTarget bounds the rebuilds in flight on one target (default 4).
	PerTarget int
	// CallTimeout bounds each hypervisor call (default 10s).
	CallTimeout time.Duration
	// VerifyTimeout is how long a started VM may take to read back as
	// running (default 30s); PollInterval is the time between readings
	// (default 250ms).
	VerifyTimeout time.Duration
	PollInterval  time.Duration
	// OnVMRunning is called when a VM was verified running on its target,
	// just before that is journaled (vm.Step is already StepRunning): the
	// caller records the new home and the eviction from the fenced host.
	// A crash between the two makes the resumed Execute call it again for
	// the VM, so it must be idempotent. An error is logged, not fatal.
	OnVMRunning func(t Task, vm VMTask) error
	// OnProgress, if set, gets a copy of the task after every journal
	// write, in order. It must return quickly.
	OnProgress func(t Task)
	// Alert raises an alert (kinds: AlertSplitBrain, AlertUnsafe). Nil
	// only logs.
	Alert func(kind, summary string)
	// AfterSave, if set, is called after each successful journal write
	// with the number of writes so far in this Execute call, before the
	// steps that write allows (a test hook: the lab kills the daemon here).
	// Steps of VMs rebuilt in parallel may share a write, so the number of
	// writes of an evacuation varies from run to run.
	AfterSave func(n int)
	Log       zerolog.Logger
}

func (d *ExecDeps) check() error {
	var errs []error
	if d.Journal == nil {
		errs = append(errs, errors.New("Journal is nil"))
	}
	if d.Hypervisor == nil {
		errs = append(errs, errors.New("Hypervisor is nil"))
	}
	if d.Peers == nil {
		errs = append(errs, errors.New("Peers is nil (the split-brain guard needs the hosts to ask)"))
	}
	for name, v := range map[string]time.Duration{"CallTimeout": d.CallTimeout, "GuardTimeout": d.GuardTimeout, "VerifyTimeout": d.VerifyTimeout, "PollInterval": d.PollInterval} {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s %s is negative", name, v))
		}
	}
	if d.PerTarget < 0 {
		errs = append(errs, fmt.Errorf("PerTarget %d is negative", d.PerTarget))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if d.Clock == nil {
		d.Clock = RealClock{}
	}
	if d.PerTarget == 0 {
		d.PerTarget = DefaultPerTarget
	}
	if d.CallTimeout == 0 {
		d.CallTimeout = DefaultCallTimeout
	}
	if d.GuardTimeout == 0 {
		d.GuardTimeout = DefaultGuardTimeout
	}
	if d.VerifyTimeout == 0 {
		d.VerifyTimeout = DefaultVerifyTimeout
	}
	if d.PollInterval == 0 {
		d.PollInterval = DefaultPollInterval
	}
	return nil
}

// Execute rebuilds the task's VMs on their targets and journals every step;
// see doc.go for the contract. It changes *t as it goes (do not read t
// until it returns); on return *t is what the journal last stored. It
// returns an error only when it did not finish: bad input (nothing done),
// a journal write failed, or ctx ended. The task then stays running in
// the journal, and Execute on the task read back from it resumes. A
// finished task (done, partial, failed) is left alone.
func Execute(ctx context.Context, t *Task, d ExecDeps) error {
	if t == nil {
		return errors.New("evacuator: execute: task is nil")
	}
	if err := t.Validate(); err != nil {
		return fmt.Errorf("evacuator: execute: %w", err)
	}
	if err := d.check(); err != nil {
		return fmt.Errorf("evacuator: execute task %q: dependencies: %w", t.ID, err)
	}
	if t.State != "" && t.State != TaskRunning {
		return nil // finished, or waiting for a re-plan (the caller's)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	e := &executor{
		d: d, t: t, host: t.Host, cancel: cancel,
		log:         d.Log.With().Str("component", "evacuator").Str("task", t.ID).Str("fenced_host", t.Host).Logger(),
		lastWritten: t.Clone(),
	}
	e.written = sync.NewCond(&e.mu)
	// A new task is journaled before anything else; one read back from the
	// journal is already there (and a write that records no progress could
	// stall a daemon that keeps dying after one write).
	fresh := t.State == ""
	for _, vm := range t.VMs {
		fresh = fresh || vm.Step == ""
	}
	if fresh {
		if err := e.save(func(t *Task) {
			t.State = TaskRunning
			for i := range t.VMs {
				if t.VMs[i].Step == "" {
					t.VMs[i].Step = StepPending
				}
			}
		}); err != nil {
			return err
		}
	}
	e.log.Info().Int("vms", len(t.VMs)).Int("unplaced", len(t.Unplaced)).Str("fence", t.Fence).Msg("evacuation executing")

	e.run(runCtx)

	if err := e.stopErr(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("evacuator: task %q interrupted (it stays open and resumes from the journal): %w", t.ID, err)
	}
	var running, bad int
	err := e.save(func(t *Task) {
		for _, vm := range t.VMs {
			if vm.Step == StepRunning {
				running++
			} else {
				bad++
			}
		}
		if len(t.Waiting()) > 0 || t.Unconfirmed() > 0 {
			// Not finished: what waits is re-planned by the caller.
			t.State = TaskWaiting
			return
		}
		switch {
		case running == 0 && (bad > 0 || len(t.Unplaced) > 0):
			t.State = TaskFailed
		case bad > 0 || len(t.Unplaced) > 0:
			t.State = TaskPartial
		default:
			t.State = TaskDone
		}
		t.Finished = e.d.Clock.Now()
	})
	if err != nil {
		return err
	}
	if t.State == TaskWaiting {
		e.log.Warn().Int("running", running).Int("waiting", len(t.Waiting())).Msg("evacuation pass ended; VMs wait for a re-plan")
		return nil
	}
	e.log.Info().Str("state", string(t.State)).Int("running", running).Int("not_running", bad).
		Int("unplaced", len(t.Unplaced)).Dur("took", t.Finished.Sub(t.Created)).Msg("evacuation finished")
	return nil
}

type outcome int

const (
	outDone  outcome = iota // the VM reached a terminal step
	outRetry                // moved to its next target: schedule again
	outAbort                // journal failed or ctx ended: stop
)

type executor struct {
	d      ExecDeps
	log    zerolog.Logger
	host   string // the fenced host; t.Host may only be read under mu
	cancel context.CancelFunc

	mu sync.Mutex
	t  *Task
	// Journal writes (see save): version counts changes to t, durable is
	// the last version written, lastWritten that version's copy.
	written     *sync.Cond
	writing     bool
	version     uint64
	durable     uint64
	lastWritten Task
	saves       int
	journalErr  error
}

// run schedules one attempt per VM at a time, highest priority first, at
// most PerTarget attempts per target at once. A VM that fails on a target
// comes back with its next target.
func (e *executor) run(ctx context.Context) {
	type done struct {
		i      int
		target string
		out    outcome
	}
	var queue []int
	e.mu.Lock()
	prio := make([]int, len(e.t.VMs))
	for i, vm := range e.t.VMs {
		prio[i] = vm.Priority
		if !vm.Step.Terminal() {
			queue = append(queue, i)
		}
	}
	e.mu.Unlock()
	less := func(a, b int) bool {
		return prio[a] > prio[b] || (prio[a] == prio[b] && a < b)
	}
	sort.SliceStable(queue, func(x, y int) bool { return less(queue[x], queue[y]) })

	results := make(chan done)
	inFlight := map[string]int{}
	active := 0
	stopping := false
	for {
		if !stopping {
			rest := queue[:0]
			for _, i := range queue {
				target := e.vm(i).Target
				if inFlight[target] >= e.d.PerTarget {
					rest = append(rest, i)
					continue
				}
				inFlight[target]++
				active++
				go func() { results <- done{i, target, e.attempt(ctx, i)} }()
			}
			queue = rest
		}
		if active == 0 {
			return
		}
		r := <-results
		active--
		inFlight[r.target]--
		switch r.out {
		case outRetry:
			at := sort.Search(len(queue), func(k int) bool { return less(r.i, queue[k]) })
			queue = append(queue[:at], append([]int{r.i}, queue[at:]...)...)
		case outAbort:
			stopping = true
		}
		if ctx.Err() != nil {
			stopping = true
		}
	}
}

// attempt takes VM i one try further on its current target, from the step
// the journal says it reached, checking the target first.
func (e *executor) attempt(ctx context.Context, i int) outcome {
	vm := e.vm(i)
	target := vm.Target
	log := e.log.With().Str("vm", vm.UUID).Str("name", vm.Name).Str("target", target).Logger()
	if vm.Step == StepCleanup {
		return e.moveOn(ctx, i, nil, false, log)
	}
	// Start may have run on the target only if the journal says so: only
	// then is "cannot tell" not a "no".
	startIssued := vm.MayRun || vm.Step == StepStarting

	hv, dom, err := e.inspect(ctx, target, vm.UUID, startIssued)
	needDefine := vm.Step == StepPending || vm.Step == StepDefining
	switch {
	case err == nil && dom.State == hypervisor.StateRunning:
		log.Info().Str("step", string(vm.Step)).Msg("already running on target")
		return e.running(ctx, i, log)
	case err == nil && dom.State.Active():
		// A QEMU exists (paused, booting): never start over it, and treat
		// it as ours if it fails.
		return e.verify(ctx, i, hv, log)
	case err == nil:
		// Defined and stopped. A step before defined redefines it, so the
		// saved XML, not whatever an older copy says, is what runs.
	case errors.Is(err, hypervisor.ErrNotFound):
		needDefine = true
	default:
		return e.fail(ctx, i, hv, "check target", err, startIssued, log)
	}

	if needDefine {
		xml := vm.XML
		if e.d.Rewrite != nil {
			if xml, err = e.d.Rewrite(vm.XML, target); err != nil {
				return e.fail(ctx, i, hv, "rewrite XML", err, false, log)
			}
		}
		if e.setStep(i, StepDefining) != nil {
			return outAbort
		}
		c, cancel := e.call(ctx)
		began := e.d.Clock.Now()
		got, err := hv.Define(c, xml)
		cancel()
		log.Debug().Err(err).Dur("took", e.d.Clock.Now().Sub(began)).Msg("define")
		if err == nil && got != vm.UUID {
			e.cleanup(ctx, hv, got, log)
			err = fmt.Errorf("libvirt defined UUID %s, want %s (the rewrite must keep the UUID)", got, vm.UUID)
		}
		if err != nil {
			return e.fail(ctx, i, hv, "define", err, false, log)
		}
		if e.setStep(i, StepDefined) != nil {
			return outAbort
		}
	}

	// A definition the target already had may carry autostart; a rebuilt
	// VM must not (its new host would start it by itself after a power
	// cycle, even if it was evacuated again meanwhile). Off before start.
	c, cancel := e.call(ctx)
	err = hv.SetAutostart(c, vm.UUID, false)
	cancel()
	if err != nil {
		return e.fail(ctx, i, hv, "autostart off", err, false, log)
	}

	began := e.d.Clock.Now()
	holders := e.guard(ctx, vm.UUID, target, log)
	log.Debug().Strs("holders", holders).Dur("took", e.d.Clock.Now().Sub(began)).Msg("split-brain guard asked every peer")
	if len(holders) > 0 {
		return e.refuse(ctx, i, hv, "split-brain guard: a domain with this UUID is active on "+strings.Join(holders, ", "), log)
	}
	if ctx.Err() != nil {
		return outAbort
	}
	if e.setStep(i, StepStarting) != nil {
		return outAbort
	}
	c, cancel = e.call(ctx)
	began = e.d.Clock.Now()
	err = hv.Start(c, vm.UUID)
	cancel()
	log.Debug().Err(err).Dur("took", e.d.Clock.Now().Sub(began)).Msg("start")
	switch {
	case hypervisor.KindOf(err) == hypervisor.KindConflict:
		return e.refuse(ctx, i, hv, fmt.Sprintf("start refused by libvirt (disks held by another process?): %v", err), log)
	case err != nil:
		return e.fail(ctx, i, hv, "start", err, true, log)
	}
	return e.verify(ctx, i, hv, log)
}

// inspect asks target about the domain. When Start may have run there, an
// unreachable target is asked again until VerifyTimeout.
func (e *executor) inspect(ctx context.Context, target, uuid string, patient bool) (Hypervisor, hypervisor.Domain, error) {
	deadline := e.d.Clock.Now().Add(e.d.VerifyTimeout)
	for {
		hv, err := e.d.Hypervisor(target)
		var dom hypervisor.Domain
		if err == nil {
			c, cancel := e.call(ctx)
			dom, err = hv.Domain(c, uuid)
			cancel()
		} else {
			hv, err = nil, fmt.Errorf("connect: %w", err)
		}
		if err == nil || errors.Is(err, hypervisor.ErrNotFound) || !patient ||
			ctx.Err() != nil || !e.d.Clock.Now().Before(deadline) {
			return hv, dom, err
		}
		if e.d.Clock.Sleep(ctx, e.d.PollInterval) != nil {
			return hv, dom, err
		}
	}
}

// verify polls the target until the VM reads back as running.
func (e *executor) verify(ctx context.Context, i int, hv Hypervisor, log zerolog.Logger) outcome {
	uuid := e.vm(i).UUID
	deadline := e.d.Clock.Now().Add(e.d.VerifyTimeout)
	last := "no reading"
	for {
		if e.stopErr() != nil {
			return outAbort
		}
		c, cancel := e.call(ctx)
		st, err := hv.State(c, uuid)
		cancel()
		switch {
		case err == nil && st == hypervisor.StateRunning:
			return e.running(ctx, i, log)
		case errors.Is(err, hypervisor.ErrNotFound):
			return e.fail(ctx, i, hv, "verify", errors.New("the domain disappeared from the target after start"), true, log)
		case err == nil && !st.Active():
			return e.fail(ctx, i, hv, "verify", fmt.Errorf("the domain is %s after start", st), true, log)
		case err != nil:
			if ctx.Err() != nil {
				return outAbort
			}
			last = err.Error()
		default:
			last = st.String()
		}
		if !e.d.Clock.Now().Before(deadline) {
			return e.fail(ctx, i, hv, "verify", fmt.Errorf("not running after %s (last reading: %s)", e.d.VerifyTimeout, last), true, log)
		}
		if e.d.Clock.Sleep(ctx, e.d.PollInterval) != nil {
			return outAbort
		}
	}
}

// running reports the VM to the caller, then journals it as done.
func (e *executor) running(ctx context.Context, i int, log zerolog.Logger) outcome {
	if ctx.Err() != nil {
		return outAbort
	}
	if e.d.OnVMRunning != nil {
		e.mu.Lock()
		snap := e.t.Clone()
		e.mu.Unlock()
		snap.VMs[i].Step, snap.VMs[i].Error = StepRunning, ""
		if err := e.d.OnVMRunning(snap, snap.VMs[i]); err != nil {
			log.Error().Err(err).Msg("recording the rebuilt VM failed")
		}
	}
	if e.saveVM(i, func(vm *VMTask) { vm.Step, vm.Error = StepRunning, "" }) != nil {
		return outAbort
	}
	log.Info().Msg("VM running on its new host")
	return outDone
}

// fail journals a failed step on the VM's target (with whether Start may
// have run there), then moves on. Journaling first keeps the failure even
// if the daemon dies during the cleanup, which a resume then finishes.
func (e *executor) fail(ctx context.Context, i int, hv Hypervisor, step string, cause error, startIssued bool, log zerolog.Logger) outcome {
	if ctx.Err() != nil || e.stopErr() != nil {
		// We are stopping; the failure may be ours. Resume redoes the step.
		return outAbort
	}
	reason := fmt.Sprintf("%s: %v", step, cause)
	log.Warn().Str("step", step).Err(cause).Msg("rebuild step failed on target")
	if e.saveVM(i, func(vm *VMTask) {
		vm.Tried = append(vm.Tried, TriedTarget{Host: vm.Target, Error: reason})
		vm.Step, vm.Error, vm.MayRun = StepCleanup, reason, vm.MayRun || startIssued
	}) != nil {
		return outAbort
	}
	// A target that did not even answer the first question has nothing
	// started by us; cleanup would only wait for it again.
	return e.moveOn(ctx, i, hv, step == "check target" && !startIssued, log)
}

// moveOn removes the copy from the VM's failed target and moves the VM to
// its next untried alternative. If Start may have run there and the copy
// cannot be confirmed stopped, the VM fails instead: starting it elsewhere
// could run it twice.
func (e *executor) moveOn(ctx context.Context, i int, hv Hypervisor, skipCleanup bool, log zerolog.Logger) outcome {
	vm := e.vm(i)
	target := vm.Target
	var leftover error
	mayRun := vm.MayRun || vm.Step == StepStarting
	if !skipCleanup || mayRun {
		if hv == nil {
			h, err := e.d.Hypervisor(target)
			if err != nil {
				leftover = fmt.Errorf("connect: %w", err)
			}
			hv = h
		}
		if leftover == nil {
			leftover = e.cleanup(ctx, hv, vm.UUID, log)
		}
	}
	if ctx.Err() != nil || e.stopErr() != nil {
		return outAbort // resume finishes the cleanup
	}
	if mayRun && leftover != nil {
		// Not given up: the VM stays in cleanup on its target, the task
		// waits, and every later pass asks that target again (attempt →
		// moveOn) until the copy is confirmed stopped (then the next host
		// is tried) or found running there (then it runs, once).
		cause := vm.Error
		if vm.Step == StepCleanup && vm.Cause != "" {
			cause = vm.Cause
		}
		msg := fmt.Sprintf("%s; then could not confirm it stopped on %s (%v), so it is not started anywhere else until it is", cause, target, leftover)
		first := vm.Error != msg
		if e.saveVM(i, func(vm *VMTask) { vm.Step, vm.Cause, vm.Error, vm.MayRun = StepCleanup, cause, msg, true }) != nil {
			return outAbort
		}
		if first { // once per reason, not every pass
			log.Error().Msg(msg)
			e.alert(AlertUnsafe, fmt.Sprintf("VM %s (%s) from fenced host %s: %s", vm.Name, vm.UUID, e.host, msg))
		}
		return outDone
	}
	if leftover != nil {
		log.Warn().Err(leftover).Msg("cleanup of a copy that was never started failed; moving on")
	}

	var next string
	err := e.saveVM(i, func(vm *VMTask) {
		tried := map[string]bool{}
		for _, tt := range vm.Tried {
			tried[tt.Host] = true
		}
		for _, alt := range vm.Alternatives {
			if !tried[alt] && alt != e.host {
				next = alt
				break
			}
		}
		if next == "" {
			var all []string
			for _, tt := range vm.Tried {
				all = append(all, tt.Host+": "+tt.Error)
			}
			// Every copy was confirmed removed (or never started), so a
			// re-plan may try other hosts: the VM waits (Retry).
			vm.Step, vm.Error, vm.Retry = StepFailed, "failed on every target: "+strings.Join(all, "; "), true
			return
		}
		vm.Target, vm.Step, vm.Error, vm.Cause, vm.Started, vm.MayRun = next, StepPending, "", "", time.Time{}, false
	})
	if err != nil {
		return outAbort
	}
	if next == "" {
		log.Error().Msg("VM failed on every target")
		return outDone
	}
	log.Info().Str("next_target", next).Msg("trying the next target")
	return outRetry
}

// refuse gives up on the VM without starting it, removes the copy defined
// on the target, and alerts.
func (e *executor) refuse(ctx context.Context, i int, hv Hypervisor, reason string, log zerolog.Logger) outcome {
	if ctx.Err() != nil {
		return outAbort
	}
	vm := e.vm(i)
	if err := e.cleanup(ctx, hv, vm.UUID, log); err != nil {
		log.Warn().Err(err).Msg("could not remove the refused copy from the target")
	}
	if e.saveVM(i, func(vm *VMTask) { vm.Step, vm.Error = StepRefused, reason }) != nil {
		return outAbort
	}
	log.Error().Str("reason", reason).Msg("rebuild refused")
	e.alert(AlertSplitBrain, fmt.Sprintf("VM %s (%s) from fenced host %s was not started on %s: %s", vm.Name, vm.UUID, e.host, vm.Target, reason))
	return outDone
}

// cleanup destroys and undefines uuid on a target, best effort, and
// returns nil only when the target then confirms no QEMU runs it.
func (e *executor) cleanup(ctx context.Context, hv Hypervisor, uuid string, log zerolog.Logger) error {
	c, cancel := e.call(ctx)
	if err := hv.Destroy(c, uuid); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		log.Debug().Err(err).Msg("cleanup: destroy") // "not running" is the usual answer
	}
	cancel()
	c, cancel = e.call(ctx)
	if err := hv.Undefine(c, uuid); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		log.Warn().Err(err).Msg("cleanup: undefine")
	}
	cancel()
	c, cancel = e.call(ctx)
	defer cancel()
	st, err := hv.State(c, uuid)
	switch {
	case errors.Is(err, hypervisor.ErrNotFound):
		return nil
	case err != nil:
		return err
	case st.Active():
		return fmt.Errorf("it is still %s", st)
	}
	return nil
}

// guard asks every peer but the target and the fenced host, in parallel,
// whether a domain with uuid is active there, and returns those that say
// yes. A peer that does not answer within GuardTimeout is skipped: it
// cannot be asked, and the fence rule already covers the host that failed
// (whose proof is the task's Fence: it is not asked at all).
func (e *executor) guard(ctx context.Context, uuid, target string, log zerolog.Logger) []string {
	seen := map[string]bool{target: true, e.host: true}
	var (
		mu      sync.Mutex
		holders []string
		wg      sync.WaitGroup
	)
	for _, p := range e.d.Peers() {
		if seen[p] || p == "" {
			continue
		}
		seen[p] = true
		wg.Go(func() {
			hv, err := e.d.Hypervisor(p)
			var dom hypervisor.Domain
			if err == nil {
				c, cancel := context.WithTimeout(ctx, min(e.d.GuardTimeout, e.d.CallTimeout))
				dom, err = hv.Domain(c, uuid)
				cancel()
			}
			switch {
			case errors.Is(err, hypervisor.ErrNotFound):
			case err != nil:
				if ctx.Err() == nil {
					log.Warn().Str("peer", p).Err(err).Msg("split-brain guard: peer did not answer, skipped")
				}
			case dom.State.Active():
				mu.Lock()
				holders = append(holders, fmt.Sprintf("%s (%s)", p, dom.State))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	sort.Strings(holders)
	return holders
}

func (e *executor) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.d.CallTimeout)
}

func (e *executor) alert(kind, summary string) {
	if e.d.Alert != nil {
		e.d.Alert(kind, summary)
	}
}

func (e *executor) vm(i int) VMTask {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.t.VMs[i]
}

func (e *executor) stopErr() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.journalErr
}

// setStep journals VM i's step. Writing the step it already has is
// skipped: the journal already allows what follows, and every write then
// records progress.
func (e *executor) setStep(i int, s VMStep) error {
	if e.vm(i).Step == s {
		return nil
	}
	return e.saveVM(i, func(vm *VMTask) {
		if s == StepStarting {
			vm.Started, vm.MayRun = e.d.Clock.Now(), true
		}
		vm.Step = s
	})
}

func (e *executor) saveVM(i int, fn func(*VMTask)) error {
	return e.save(func(t *Task) {
		fn(&t.VMs[i])
		t.VMs[i].Updated = e.d.Clock.Now()
	})
}

// save changes the task and returns once a journal write holding the
// change returned nil. Writes are serialised (the journal never goes back)
// and coalesced: changes made while a write is under way go into the next
// one, so parallel rebuilds share writes. When a write fails the task goes
// back to the last written state, the error sticks and the run is
// cancelled: nothing a lost change was meant to allow happens.
func (e *executor) save(fn func(*Task)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.journalErr != nil {
		return e.journalErr
	}
	fn(e.t)
	e.t.Updated = e.d.Clock.Now()
	e.version++
	mine := e.version
	for e.durable < mine && e.journalErr == nil {
		if e.writing {
			e.written.Wait()
			continue
		}
		e.writing = true
		snap, v := e.t.Clone(), e.version
		e.mu.Unlock()
		err := e.d.Journal.SaveTask(snap)
		e.mu.Lock()
		e.writing = false
		if err != nil {
			*e.t = e.lastWritten.Clone()
			e.journalErr = fmt.Errorf("evacuator: task %q: journal write failed (the task stays open and resumes from its last write): %w", e.t.ID, err)
			e.cancel()
		} else {
			e.durable, e.lastWritten = v, snap
			e.saves++
			if e.d.AfterSave != nil {
				e.d.AfterSave(e.saves)
			}
			if e.d.OnProgress != nil {
				e.d.OnProgress(snap.Clone())
			}
		}
		e.written.Broadcast()
	}
	if e.durable < mine {
		return e.journalErr
	}
	return nil
}
