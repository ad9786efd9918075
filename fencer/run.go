package fencer

import (
	"context"
	"fmt"
	"strings"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/power"
)

// Run fences p.Host: its levels in order, each with up to 1+Retries
// attempts spaced by a doubling backoff on clk, until one attempt reads the
// host back as fenced. It returns when a level verified, every level
// failed, or ctx ended (then at once, not verified). Run never returns an
// error: the Result says what happened, and only Result.Verified may lead
// to an evacuation.
//
// An auth or config error (power.KindAuth, power.KindConfig), from the
// command or from the last read-back, ends its level without further
// attempts: bad credentials do not get better with time.
func Run(ctx context.Context, p Plan, clk Clock, log zerolog.Logger) Result {
	r := &runner{
		clk: clk,
		log: log.With().Str("component", "fencer").Str("host", p.Host).Str("action", p.Action.String()).Logger(),
		res: Result{Host: p.Host, Action: p.Action, Started: clk.Now()},
	}
	r.run(ctx, p)
	r.res.Ended = clk.Now()
	return r.res
}

type runner struct {
	clk Clock
	log zerolog.Logger
	res Result
}

func (r *runner) run(ctx context.Context, p Plan) {
	// A plan without host, action or levels is not tried at all: nothing
	// could verify it, and acting on a nameless host is worse than not.
	switch {
	case p.Host == "":
		r.res.Reason = "fence plan has no host"
	case p.Action != ActionOff && p.Action != ActionReboot:
		r.res.Reason = fmt.Sprintf("fence plan has an unknown action %s", p.Action)
	case len(p.Levels) == 0:
		r.res.Reason = "no fence levels configured"
	}
	if r.res.Reason != "" {
		r.log.Error().Str("reason", r.res.Reason).Msg("fence not attempted")
		return
	}
	r.log.Info().Int("levels", len(p.Levels)).Msg("fence started")
	var why []string
	for i, l := range p.Levels {
		if err := ctx.Err(); err != nil {
			for _, rest := range p.Levels[i:] {
				why = append(why, rest.label()+": not tried")
			}
			break
		}
		if i > 0 && p.StillNeeded != nil {
			if err := p.StillNeeded(); err != nil {
				why = append(why, "fence stopped before "+l.label()+": no longer needed: "+err.Error())
				for _, rest := range p.Levels[i+1:] {
					why = append(why, rest.label()+": not tried")
				}
				break
			}
		}
		verified, summary := r.level(ctx, l)
		if verified {
			r.res.Verified, r.res.Level, r.res.VerifiedAt = true, l.Name, r.clk.Now()
			r.log.Info().Str("level", l.Name).Dur("elapsed", r.res.VerifiedAt.Sub(r.res.Started)).Msg("fence verified")
			if p.Action == ActionReboot {
				r.reboot(ctx, l)
			}
			return
		}
		why = append(why, summary)
	}
	if err := ctx.Err(); err != nil {
		why = append([]string{"fence stopped: " + err.Error()}, why...)
	}
	r.res.Reason = strings.Join(why, "; ")
	r.log.Error().Str("reason", r.res.Reason).Msg("fence failed: no level verified")
}

// level runs one level's attempts. It returns whether one verified, or a
// one-line summary of why none did.
func (r *runner) level(ctx context.Context, l LevelPlan) (bool, string) {
	log := r.log.With().Str("level", l.Name).Logger()
	if l.SetupErr != nil {
		return false, r.refuse(log, l, "not set up: "+oneLine(l.SetupErr))
	}
	if err := l.check(); err != nil {
		return false, r.refuse(log, l, "invalid level: "+oneLine(err))
	}
	delay := min(l.backoff(), l.Timeout)
	var (
		last    Attempt
		tries   int
		stopped power.Kind
	)
	for try := 1; try <= 1+l.Retries; try++ {
		if try > 1 {
			if err := r.clk.Sleep(ctx, delay); err != nil {
				break
			}
			delay = min(delay*2, l.Timeout)
		}
		var a Attempt
		if l.isDrain() {
			a, stopped = r.drainAttempt(ctx, l, try)
		} else {
			a, stopped = r.offAttempt(ctx, l, try)
		}
		r.res.Attempts = append(r.res.Attempts, a)
		last, tries = a, try
		if a.Verified {
			return true, ""
		}
		log.Warn().Int("try", try).Int("reads", a.Reads).Dur("elapsed", a.Elapsed).Str("error", a.Err).Msg("fence attempt failed")
		if ctx.Err() != nil || stopped != power.KindUnknown {
			break
		}
	}
	if tries == 0 {
		return false, l.Name + ": not tried"
	}
	s := l.Name + ": "
	if tries > 1 {
		s += fmt.Sprintf("%d attempts, last: ", tries)
	}
	s += last.Err
	if stopped != power.KindUnknown && tries < 1+l.Retries {
		s += fmt.Sprintf(" (not retried: %s)", stopped)
	}
	return false, s
}

// refuse records a level that could not run as one attempt without reads,
// so the attempts list names every level the fence went through.
func (r *runner) refuse(log zerolog.Logger, l LevelPlan, why string) string {
	r.res.Attempts = append(r.res.Attempts, Attempt{Level: l.Name, Try: 1, Started: r.clk.Now(), Err: why})
	log.Error().Str("error", why).Msg("fence level skipped")
	return l.label() + ": " + why
}

func (r *runner) offAttempt(ctx context.Context, l LevelPlan, try int) (Attempt, power.Kind) {
	res, err := PowerOff(ctx, l.Power, r.clk, PowerOffOptions{Timeout: l.Timeout, Poll: l.poll(), Settle: l.Settle})
	a := Attempt{Level: l.Name, Try: try, Started: res.Started, Elapsed: res.Elapsed, Verified: res.Verified, Reads: res.Reads}
	if err != nil {
		a.Err = oneLine(err)
	}
	if res.Verified && res.CommandErr != nil {
		// Normal for "already off"; the read-back is what counts.
		r.log.Info().Str("level", l.Name).Str("command_error", oneLine(res.CommandErr)).Msg("off command failed but power read back off")
	}
	if a.Verified {
		return a, power.KindUnknown
	}
	return a, hopeless(res.CommandErr, res.LastReadErr)
}

func (r *runner) drainAttempt(ctx context.Context, l LevelPlan, try int) (Attempt, power.Kind) {
	start := r.clk.Now()
	a := Attempt{Level: l.Name, Try: try, Started: start}
	actx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()

	stopped, cmdErr := l.Drainer.Drain(actx)
	a.Stopped = stopped
	if k := hopeless(cmdErr); k != power.KindUnknown {
		a.Elapsed = r.clk.Now().Sub(start)
		a.Err = "agent drain: " + oneLine(cmdErr)
		return a, k
	}
	// As with power off, a failed drain command is not final: the agent
	// may have stopped everything already. The read-back decides.
	v := &OffVerifier{Poll: l.poll(), Deadline: start.Add(l.Timeout), Settle: l.Settle}
	var (
		running int
		readErr error
	)
	for {
		running, readErr = l.Drainer.Running(actx)
		if readErr == nil && running < 0 {
			readErr = fmt.Errorf("agent reported %d running domains", running)
		}
		st := power.On
		if readErr == nil && running == 0 {
			st = power.Off
		}
		now := r.clk.Now()
		d := v.Observe(now, st, readErr)
		a.Reads, a.Elapsed = v.Reads(), now.Sub(start)
		if d.Outcome == Verified {
			a.Verified = true
			if cmdErr != nil {
				r.log.Info().Str("level", l.Name).Str("command_error", oneLine(cmdErr)).Msg("drain command failed but agent reports no running domain")
			}
			return a, power.KindUnknown
		}
		var waitErr error
		if d.Outcome == Pending {
			waitErr = r.clk.Sleep(actx, d.Next.Sub(now))
			if waitErr == nil {
				continue
			}
			a.Elapsed = r.clk.Now().Sub(start)
		}
		msg := fmt.Sprintf("domains not read back as stopped after %d readings; ", v.Reads())
		if readErr != nil {
			msg += "last reading failed: " + oneLine(readErr)
		} else {
			msg += fmt.Sprintf("last: %d running", running)
		}
		if cmdErr != nil {
			msg = oneLine(cmdErr) + "; " + msg
		}
		if waitErr != nil {
			msg += ": " + waitErr.Error()
		}
		a.Err = "agent drain: " + msg
		return a, hopeless(readErr)
	}
}

// reboot powers the host back on after a verified off: one attempt within
// the level's timeout, verified by reading On. Its failure is recorded, not
// fatal: the host is fenced and stays drained either way.
func (r *runner) reboot(ctx context.Context, l LevelPlan) {
	log := r.log.With().Str("level", l.Name).Logger()
	if l.isDrain() {
		log.Info().Msg("reboot action: agent-drain did not power the host off, nothing to power on")
		return
	}
	start := r.clk.Now()
	deadline := start.Add(l.Timeout)
	actx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()

	fail := func(msg string) {
		r.res.PowerOnErr = "power on: " + msg
		log.Warn().Str("error", r.res.PowerOnErr).Msg("reboot: host not powered back on; it stays drained")
	}
	cmdErr := l.Power.PowerOn(actx)
	if hopeless(cmdErr) != power.KindUnknown {
		fail(oneLine(cmdErr))
		return
	}
	var (
		reads   int
		last    power.State
		lastErr error
	)
	for {
		last, lastErr = l.Power.PowerStatus(actx)
		reads++
		now := r.clk.Now()
		if lastErr == nil && last == power.On {
			r.res.PoweredOn = true
			log.Info().Dur("elapsed", now.Sub(start)).Msg("reboot: power read back on; host stays drained")
			return
		}
		next := now.Add(l.poll())
		var waitErr error
		if !next.After(deadline) {
			if waitErr = r.clk.Sleep(actx, next.Sub(now)); waitErr == nil {
				continue
			}
		}
		msg := fmt.Sprintf("power not read back as on after %d readings; ", reads)
		if lastErr != nil {
			msg += "last reading failed: " + oneLine(lastErr)
		} else {
			msg += "last state " + last.String()
		}
		if cmdErr != nil {
			msg = oneLine(cmdErr) + "; " + msg
		}
		if waitErr != nil {
			msg += ": " + waitErr.Error()
		}
		fail(msg)
		return
	}
}

// hopeless is the kind of the first auth or config error among errs, or
// KindUnknown when retrying could help.
func hopeless(errs ...error) power.Kind {
	for _, err := range errs {
		if err == nil {
			continue
		}
		if k := power.KindOf(err); k == power.KindAuth || k == power.KindConfig {
			return k
		}
	}
	return power.KindUnknown
}

// oneLine keeps a Reason on one line: errors.Join separates with newlines.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
