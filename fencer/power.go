package fencer

import (
	"context"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/power"
)

// PowerController is a host's BMC, one self-contained session per call.
type PowerController interface {
	PowerStatus(ctx context.Context) (power.State, error)
	PowerOff(ctx context.Context) error // hard off
	PowerOn(ctx context.Context) error
	PowerCycle(ctx context.Context) error
	SoftOff(ctx context.Context) error
	// Check is a dry run: reachable, credentials accepted, power readable,
	// off permitted. It never acts.
	Check(ctx context.Context) (power.State, error)
}

// Clock is time as the fencer sees it; tests pass a virtual one.
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

// VerifyOutcome is the verifier's answer to a reading.
type VerifyOutcome int

const (
	// Pending: read again at Next.
	Pending VerifyOutcome = iota
	// Verified: Off was read and held through the settle delay.
	Verified
	// Failed: the deadline passed without a verified Off.
	Failed
)

func (o VerifyOutcome) String() string {
	return [...]string{"pending", "verified", "failed"}[o]
}

// OffVerifier decides, from timed power readings, whether a host is proven
// off. It does no I/O.
type OffVerifier struct {
	Poll     time.Duration // between readings
	Deadline time.Time     // give up after this
	// Settle keeps reading after the first Off until Off has held this
	// long, for BMCs known to report Off before the host really is.
	Settle time.Duration

	firstOff time.Time
	reads    int
	last     power.State
	lastErr  error
}

// Decision is what to do after a reading.
type Decision struct {
	Outcome VerifyOutcome
	Next    time.Time // when to read again, if Pending
	Reason  string    // why Failed, for the alert
}

// Observe takes a reading (or the error reading it) taken at now.
func (v *OffVerifier) Observe(now time.Time, st power.State, err error) Decision {
	v.reads++
	v.last, v.lastErr = st, err
	switch {
	case err != nil:
		// A failed read proves nothing; it does not reset a settle in
		// progress either, since the BMC, not the host, failed to answer.
	case st.IsOff():
		if v.firstOff.IsZero() {
			v.firstOff = now
		}
		if now.Sub(v.firstOff) >= v.Settle {
			return Decision{Outcome: Verified}
		}
	default:
		v.firstOff = time.Time{} // On again (or PoweringOff): start over
	}
	next := now.Add(v.Poll)
	if !v.firstOff.IsZero() {
		if settled := v.firstOff.Add(v.Settle); settled.Before(next) {
			next = settled
		}
	}
	if next.After(v.Deadline) {
		return Decision{Outcome: Failed, Reason: v.failReason()}
	}
	return Decision{Outcome: Pending, Next: next}
}

// Reads is how many readings were observed.
func (v *OffVerifier) Reads() int { return v.reads }

func (v *OffVerifier) failReason() string {
	if v.lastErr != nil {
		return fmt.Sprintf("power not read back as off after %d readings; last reading failed: %v", v.reads, v.lastErr)
	}
	return fmt.Sprintf("power not read back as off after %d readings; last state %s", v.reads, v.last)
}

// OffResult is how a power-off level went, with its timeline.
type OffResult struct {
	Verified  bool
	Reads     int
	Started   time.Time
	CommandAt time.Time     // the off command returned
	Elapsed   time.Duration // start to verified (or to giving up)
	// CommandErr is the off command's error, kept even when the read-back
	// verified: an "already off" refusal is normal, and worth a log line.
	CommandErr error
	// LastReadErr is the last power reading's error, if it failed: lets a
	// caller see that reads were refused for bad credentials and stop
	// retrying.
	LastReadErr error
}

// PowerOffOptions tune one power-off attempt.
type PowerOffOptions struct {
	Timeout time.Duration // whole attempt, command plus read-back
	Poll    time.Duration // default 100ms
	Settle  time.Duration
}

// PowerOff sends a hard off and verifies it by reading power back. The off
// command failing is not final: a BMC may refuse "off" for a host that is
// already off, so the read-back decides. Only a verified Off returns nil.
func PowerOff(ctx context.Context, pc PowerController, clk Clock, opt PowerOffOptions) (OffResult, error) {
	if opt.Poll <= 0 {
		opt.Poll = 100 * time.Millisecond
	}
	start := clk.Now()
	res := OffResult{Started: start}
	ctx, cancel := context.WithTimeout(ctx, opt.Timeout)
	defer cancel()
	v := &OffVerifier{Poll: opt.Poll, Deadline: start.Add(opt.Timeout), Settle: opt.Settle}

	res.CommandErr = pc.PowerOff(ctx)
	res.CommandAt = clk.Now()
	if kind := power.KindOf(res.CommandErr); res.CommandErr != nil && (kind == power.KindAuth || kind == power.KindConfig) {
		res.Elapsed = clk.Now().Sub(start)
		return res, fmt.Errorf("power off: %w", res.CommandErr)
	}
	for {
		st, err := pc.PowerStatus(ctx)
		now := clk.Now()
		d := v.Observe(now, st, err)
		res.Reads = v.Reads()
		res.LastReadErr = err
		res.Elapsed = now.Sub(start)
		switch d.Outcome {
		case Verified:
			res.Verified = true
			return res, nil
		case Failed:
			if res.CommandErr != nil {
				return res, fmt.Errorf("power off: %w; %s", res.CommandErr, d.Reason)
			}
			return res, fmt.Errorf("power off: %s", d.Reason)
		}
		if err := clk.Sleep(ctx, d.Next.Sub(now)); err != nil {
			res.Elapsed = clk.Now().Sub(start)
			return res, fmt.Errorf("power off: %s: %w", v.failReason(), err)
		}
	}
}
