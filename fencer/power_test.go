package fencer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/power"
)

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// fakeClock advances only when slept on.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }
func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.now = c.now.Add(d)
	return nil
}

type reading struct {
	st  power.State
	err error
}

// scriptedBMC answers PowerStatus from a script; the last entry repeats.
type scriptedBMC struct {
	offErr   error
	script   []reading
	offCalls int
	reads    int
	clk      *fakeClock
	cmdCost  time.Duration
}

func (b *scriptedBMC) PowerOff(context.Context) error {
	b.offCalls++
	b.clk.now = b.clk.now.Add(b.cmdCost)
	return b.offErr
}
func (b *scriptedBMC) PowerStatus(context.Context) (power.State, error) {
	i := min(b.reads, len(b.script)-1)
	b.reads++
	return b.script[i].st, b.script[i].err
}
func (b *scriptedBMC) PowerOn(context.Context) error    { return errors.New("unexpected") }
func (b *scriptedBMC) PowerCycle(context.Context) error { return errors.New("unexpected") }
func (b *scriptedBMC) SoftOff(context.Context) error    { return errors.New("unexpected") }
func (b *scriptedBMC) Check(context.Context) (power.State, error) {
	return power.Unknown, errors.New("unexpected")
}

var _ PowerController = (*scriptedBMC)(nil)

func on() reading  { return reading{st: power.On} }
func off() reading { return reading{st: power.Off} }

func TestOffVerifier(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name   string
		settle time.Duration
		readAt []time.Duration // offsets from t0
		reads  []reading
		want   []VerifyOutcome
		reason string
	}{
		{"off at first read", 0, []time.Duration{0}, []reading{off()}, []VerifyOutcome{Verified}, ""},
		{"powering-off is not off", 0, []time.Duration{0, 100 * ms}, []reading{{st: power.PoweringOff}, off()}, []VerifyOutcome{Pending, Verified}, ""},
		{"unknown is not off", 0, []time.Duration{0, 100 * ms}, []reading{{st: power.Unknown}, off()}, []VerifyOutcome{Pending, Verified}, ""},
		{"read errors prove nothing", 0, []time.Duration{0, 100 * ms}, []reading{{err: power.ErrTimeout}, off()}, []VerifyOutcome{Pending, Verified}, ""},
		{"settle: off must hold", 250 * ms, []time.Duration{0, 100 * ms, 250 * ms}, []reading{off(), off(), off()}, []VerifyOutcome{Pending, Pending, Verified}, ""},
		{"settle: back on restarts it", 250 * ms, []time.Duration{0, 100 * ms, 200 * ms, 450 * ms}, []reading{off(), on(), off(), off()}, []VerifyOutcome{Pending, Pending, Pending, Verified}, ""},
		{"deadline: still on", 0, []time.Duration{0, 100 * ms, 200 * ms, 300 * ms}, []reading{on(), on(), on(), on()}, []VerifyOutcome{Pending, Pending, Pending, Failed}, "after 4 readings; last state on"},
		{"deadline: last read failed", 0, []time.Duration{0, 300 * ms}, []reading{on(), {err: power.ErrUnreachable}}, []VerifyOutcome{Pending, Failed}, "last reading failed: bmc-unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &OffVerifier{Poll: 100 * ms, Deadline: t0.Add(350 * ms), Settle: tc.settle}
			var got []VerifyOutcome
			var last Decision
			for i, r := range tc.reads {
				last = v.Observe(t0.Add(tc.readAt[i]), r.st, r.err)
				got = append(got, last.Outcome)
			}
			assert.Equal(t, tc.want, got)
			if tc.reason != "" {
				assert.Contains(t, last.Reason, tc.reason)
			}
		})
	}
}

func TestOffVerifierSchedulesSettleCheckBeforeNextPoll(t *testing.T) {
	v := &OffVerifier{Poll: time.Second, Deadline: t0.Add(time.Minute), Settle: 300 * time.Millisecond}
	d := v.Observe(t0, power.Off, nil)
	assert.Equal(t, Pending, d.Outcome)
	assert.Equal(t, t0.Add(300*time.Millisecond), d.Next, "re-read when the settle delay ends, not a whole poll later")
}

func TestPowerOffVerifiesByReadBack(t *testing.T) {
	clk := &fakeClock{now: t0}
	bmc := &scriptedBMC{clk: clk, cmdCost: 40 * time.Millisecond, script: []reading{{st: power.PoweringOff}, {st: power.PoweringOff}, off()}}
	res, err := PowerOff(context.Background(), bmc, clk, PowerOffOptions{Timeout: 5 * time.Second, Poll: 100 * time.Millisecond})
	require.NoError(t, err)
	assert.True(t, res.Verified)
	assert.Equal(t, 1, bmc.offCalls)
	assert.Equal(t, 3, res.Reads)
	assert.Equal(t, 240*time.Millisecond, res.Elapsed, "40ms command + two 100ms polls")
}

func TestPowerOffAlreadyOffRefusalIsSuccessAfterReadBack(t *testing.T) {
	clk := &fakeClock{now: t0}
	refused := power.Errorf(power.KindRefused, "n1", "redfish: reset ForceOff", "HTTP 409")
	bmc := &scriptedBMC{clk: clk, offErr: refused, script: []reading{off()}}
	res, err := PowerOff(context.Background(), bmc, clk, PowerOffOptions{Timeout: time.Second})
	require.NoError(t, err)
	assert.True(t, res.Verified)
	assert.ErrorIs(t, res.CommandErr, power.ErrRefused, "kept for the log")
}

func TestPowerOffAuthFailureStopsAtOnce(t *testing.T) {
	clk := &fakeClock{now: t0}
	bmc := &scriptedBMC{clk: clk, offErr: power.Errorf(power.KindAuth, "n1", "ipmi: open session", "rakp2 failed"), script: []reading{on()}}
	res, err := PowerOff(context.Background(), bmc, clk, PowerOffOptions{Timeout: time.Second})
	assert.ErrorIs(t, err, power.ErrAuth)
	assert.False(t, res.Verified)
	assert.Equal(t, 0, bmc.reads, "no point reading power with rejected credentials")
}

func TestPowerOffNeverVerifiedFails(t *testing.T) {
	clk := &fakeClock{now: t0}
	bmc := &scriptedBMC{clk: clk, script: []reading{on()}}
	res, err := PowerOff(context.Background(), bmc, clk, PowerOffOptions{Timeout: time.Second, Poll: 250 * time.Millisecond})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "power not read back as off after 5 readings; last state on")
	assert.False(t, res.Verified)
	assert.Equal(t, time.Second, res.Elapsed, "reads at 0, 250, 500, 750 and at the deadline itself")
}

func TestPowerOffCommandErrorThenStillOnReportsBoth(t *testing.T) {
	clk := &fakeClock{now: t0}
	bmc := &scriptedBMC{clk: clk, offErr: power.Errorf(power.KindUnreachable, "n1", "ipmi: chassis control", "no reply"), script: []reading{{err: power.ErrUnreachable}}}
	_, err := PowerOff(context.Background(), bmc, clk, PowerOffOptions{Timeout: 500 * time.Millisecond})
	require.Error(t, err)
	assert.ErrorIs(t, err, power.ErrUnreachable)
	assert.Contains(t, err.Error(), "last reading failed")
}

func TestPowerOffStopsWhenCallerCancels(t *testing.T) {
	clk := &fakeClock{now: t0}
	bmc := &scriptedBMC{clk: clk, script: []reading{on()}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := PowerOff(ctx, bmc, clk, PowerOffOptions{Timeout: time.Hour})
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, res.Verified)
}
