package fencer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/power"
)

const ms = time.Millisecond

// vclock is virtual time that records every sleep.
type vclock struct {
	now    time.Time
	sleeps []time.Duration
}

func (c *vclock) Now() time.Time { return c.now }
func (c *vclock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

// pick is script[i], the last entry repeating; the zero value past an
// empty script.
func pick[T any](script []T, i int) T {
	var zero T
	if len(script) == 0 {
		return zero
	}
	return script[min(i, len(script)-1)]
}

// fakePC is a BMC answering from per-call scripts. Every call costs cost
// of virtual time and is recorded in calls.
type fakePC struct {
	clk     *vclock
	cost    time.Duration
	offErrs []error
	onErrs  []error
	status  []reading
	calls   []string
	// hook runs at the start of each call, with the call's name and its
	// index among calls of that name.
	hook func(call string, i int)

	nOff, nOn, nStatus int
}

func (b *fakePC) enter(call string, n *int) int {
	i := *n
	*n++
	b.calls = append(b.calls, call)
	if b.hook != nil {
		b.hook(call, i)
	}
	b.clk.now = b.clk.now.Add(b.cost)
	return i
}

func (b *fakePC) PowerOff(context.Context) error { return pick(b.offErrs, b.enter("off", &b.nOff)) }
func (b *fakePC) PowerOn(context.Context) error  { return pick(b.onErrs, b.enter("on", &b.nOn)) }
func (b *fakePC) PowerStatus(context.Context) (power.State, error) {
	r := pick(b.status, b.enter("status", &b.nStatus))
	return r.st, r.err
}
func (b *fakePC) PowerCycle(context.Context) error { panic("fencer must not power-cycle") }
func (b *fakePC) SoftOff(context.Context) error    { panic("fencer must not soft-off") }
func (b *fakePC) Check(context.Context) (power.State, error) {
	panic("fencer must not dry-run during a fence")
}

type count struct {
	n   int
	err error
}

// fakeAgent is a Drainer answering from scripts.
type fakeAgent struct {
	clk       *vclock
	drainErrs []error
	running   []count
	drains    int
	reads     int
	stopped   int // what each drain says it stopped
}

func (a *fakeAgent) Drain(context.Context) (int, error) {
	a.drains++
	return a.stopped, pick(a.drainErrs, a.drains-1)
}
func (a *fakeAgent) Running(context.Context) (int, error) {
	c := pick(a.running, a.reads)
	a.reads++
	return c.n, c.err
}

var (
	_ PowerController = (*fakePC)(nil)
	_ Drainer         = (*fakeAgent)(nil)
)

func authErr(step string) error {
	// Drivers redact; this is what one says for a wrong password.
	return power.Errorf(power.KindAuth, "n1", step, "authentication refused by BMC")
}

func ipmiLevel(pc PowerController, retries int) LevelPlan {
	return LevelPlan{Name: "ipmi", Power: pc, Timeout: time.Second, Retries: retries, Poll: 250 * ms, Backoff: 500 * ms}
}

func nolog() zerolog.Logger { return zerolog.Nop() }

func TestRunAlreadyOffIsVerifiedByReadBack(t *testing.T) {
	clk := &vclock{now: t0}
	refused := power.Errorf(power.KindRefused, "n1", "ipmi: chassis control", "already off")
	bmc := &fakePC{clk: clk, cost: 10 * ms, offErrs: []error{refused}, status: []reading{off()}}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(bmc, 2)}}, clk, nolog())

	require.True(t, res.Verified, res.Reason)
	assert.Equal(t, "ipmi", res.Level)
	assert.Equal(t, []string{"off", "status"}, bmc.calls, "the refusal is not trusted: power is read back")
	assert.Equal(t, t0, res.Started)
	assert.Equal(t, t0.Add(20*ms), res.VerifiedAt)
	assert.Equal(t, []Attempt{{Level: "ipmi", Try: 1, Started: t0, Elapsed: 20 * ms, Verified: true, Reads: 1}}, res.Attempts)
	assert.Empty(t, res.Reason)
	assert.Empty(t, clk.sleeps)
}

func TestRunStaysOnFailsLevelAfterTimeoutThenNextLevelVerifies(t *testing.T) {
	clk := &vclock{now: t0}
	ipmi := &fakePC{clk: clk, status: []reading{on()}}
	redfish := &fakePC{clk: clk, status: []reading{{st: power.PoweringOff}, off()}}
	p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{
		ipmiLevel(ipmi, 0),
		{Name: "redfish", Power: redfish, Timeout: 2 * time.Second, Poll: 100 * ms},
	}}
	res := Run(context.Background(), p, clk, nolog())

	require.True(t, res.Verified, res.Reason)
	assert.Equal(t, "redfish", res.Level)
	require.Len(t, res.Attempts, 2)
	assert.Equal(t, Attempt{Level: "ipmi", Try: 1, Started: t0, Elapsed: time.Second, Reads: 5,
		Err: "power off: power not read back as off after 5 readings; last state on"}, res.Attempts[0])
	assert.Equal(t, Attempt{Level: "redfish", Try: 1, Started: t0.Add(time.Second), Elapsed: 100 * ms, Verified: true, Reads: 2}, res.Attempts[1])
	assert.Equal(t, t0.Add(1100*ms), res.VerifiedAt)
	assert.Equal(t, []string{"off", "status", "status", "status", "status", "status"}, ipmi.calls)
	assert.Equal(t, []time.Duration{250 * ms, 250 * ms, 250 * ms, 250 * ms, 100 * ms}, clk.sleeps, "ipmi polls, then redfish's one poll; no backoff between levels")
}

func TestRunWrongPasswordIsNotRetriedInTheLevel(t *testing.T) {
	for _, tc := range []struct {
		name  string
		bmc   func(*vclock) *fakePC
		calls []string
	}{
		{"off command refused", func(c *vclock) *fakePC {
			return &fakePC{clk: c, offErrs: []error{authErr("ipmi: open session")}, status: []reading{on()}}
		}, []string{"off"}},
		{"reads refused", func(c *vclock) *fakePC {
			return &fakePC{clk: c, status: []reading{{err: authErr("ipmi: open session")}}}
		}, []string{"off", "status", "status", "status", "status", "status"}},
		{"config error", func(c *vclock) *fakePC {
			return &fakePC{clk: c, offErrs: []error{power.Errorf(power.KindConfig, "n1", "ipmi: open session", "cipher suite 17 not offered")}}
		}, []string{"off"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &vclock{now: t0}
			ipmi := tc.bmc(clk)
			redfish := &fakePC{clk: clk, status: []reading{off()}}
			p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{
				ipmiLevel(ipmi, 3),
				{Name: "redfish", Power: redfish, Timeout: time.Second},
			}}
			res := Run(context.Background(), p, clk, nolog())

			require.True(t, res.Verified, res.Reason)
			assert.Equal(t, "redfish", res.Level)
			assert.Equal(t, tc.calls, ipmi.calls, "one attempt only, though 3 retries were allowed")
			require.Len(t, res.Attempts, 2)
			assert.False(t, res.Attempts[0].Verified)
			assert.Equal(t, 1, res.Attempts[0].Try)
			for _, d := range clk.sleeps {
				assert.Equal(t, 250*ms, d, "poll sleeps only, no backoff")
			}
		})
	}
}

func TestRunRetriesWithDoublingBackoffCappedAtTimeout(t *testing.T) {
	clk := &vclock{now: t0}
	bmc := &fakePC{clk: clk, status: []reading{on()}}
	lv := LevelPlan{Name: "ipmi", Power: bmc, Timeout: 3 * time.Second, Retries: 3, Poll: time.Second, Backoff: 2 * time.Second}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{lv}}, clk, nolog())

	require.False(t, res.Verified)
	s := time.Second
	// Each attempt reads at 0, 1, 2 and 3s (three 1s polls); between
	// attempts the backoff is 2s, then 4s capped at the 3s timeout, twice.
	assert.Equal(t, []time.Duration{s, s, s, 2 * s, s, s, s, 3 * s, s, s, s, 3 * s, s, s, s}, clk.sleeps)
	var starts []time.Time
	for _, a := range res.Attempts {
		starts = append(starts, a.Started)
		assert.Equal(t, 3*s, a.Elapsed)
		assert.Equal(t, 4, a.Reads)
	}
	assert.Equal(t, []time.Time{t0, t0.Add(5 * s), t0.Add(11 * s), t0.Add(17 * s)}, starts)
	assert.Equal(t, 4, bmc.nOff)
	assert.Equal(t, "ipmi: 4 attempts, last: power off: power not read back as off after 4 readings; last state on", res.Reason)
	assert.Equal(t, t0.Add(20*s), res.Ended)
}

func TestRunDefaultBackoffAndRecoveryOnRetry(t *testing.T) {
	clk := &vclock{now: t0}
	// First attempt: the BMC does not answer; second attempt it reads Off.
	bmc := &fakePC{clk: clk, offErrs: []error{power.Errorf(power.KindUnreachable, "n1", "ipmi: chassis control", "no reply")}}
	bmc.hook = func(call string, i int) {
		if call == "status" {
			bmc.status = []reading{{err: power.ErrUnreachable}}
			if bmc.nOff == 2 {
				bmc.status = []reading{off()}
			}
		}
	}
	lv := LevelPlan{Name: "ipmi", Power: bmc, Timeout: 500 * ms, Retries: 2, Poll: 500 * ms}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{lv}}, clk, nolog())

	require.True(t, res.Verified, res.Reason)
	require.Len(t, res.Attempts, 2)
	assert.False(t, res.Attempts[0].Verified)
	assert.Contains(t, res.Attempts[0].Err, "last reading failed: bmc-unreachable")
	assert.True(t, res.Attempts[1].Verified)
	assert.Equal(t, []time.Duration{500 * ms, DefaultBackoff}, clk.sleeps, "one poll to the deadline, then the default backoff")
	assert.Equal(t, t0.Add(750*ms), res.VerifiedAt)
}

func TestRunRebootPowersOnAfterVerifiedOff(t *testing.T) {
	clk := &vclock{now: t0}
	bmc := &fakePC{clk: clk, status: []reading{off(), {st: power.PoweringOn}, on()}}
	lv := ipmiLevel(bmc, 0)
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Action: ActionReboot, Levels: []LevelPlan{lv}}, clk, nolog())

	require.True(t, res.Verified, res.Reason)
	assert.True(t, res.PoweredOn)
	assert.Empty(t, res.PowerOnErr)
	assert.Equal(t, t0, res.VerifiedAt, "verified before power-on")
	assert.Equal(t, []string{"off", "status", "on", "status", "status"}, bmc.calls)
	assert.Equal(t, t0.Add(250*ms), res.Ended)
}

func TestRunRebootPowerOnFailureIsReportedButFenceVerified(t *testing.T) {
	for _, tc := range []struct {
		name   string
		onErr  error
		status []reading
		calls  []string
		errMsg string
	}{
		{"reads fail", nil, []reading{off(), {err: power.ErrUnreachable}}, []string{"off", "status", "on", "status", "status", "status", "status", "status"},
			"power on: power not read back as on after 5 readings; last reading failed: bmc-unreachable"},
		{"stays off", nil, nil, []string{"off", "status", "on", "status", "status", "status", "status", "status"},
			"power on: power not read back as on after 5 readings; last state off"},
		{"command failed and stays off", power.Errorf(power.KindUnreachable, "n1", "ipmi: chassis control", "no reply"), nil,
			[]string{"off", "status", "on", "status", "status", "status", "status", "status"},
			"power on: host n1: ipmi: chassis control: bmc-unreachable: no reply; power not read back as on after 5 readings; last state off"},
		{"credentials refused", authErr("ipmi: open session"), nil, []string{"off", "status", "on"},
			"power on: host n1: ipmi: open session: bmc-auth-failed: authentication refused by BMC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &vclock{now: t0}
			if tc.status == nil {
				tc.status = []reading{off()}
			}
			bmc := &fakePC{clk: clk, onErrs: []error{tc.onErr}, status: tc.status}
			res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Action: ActionReboot, Levels: []LevelPlan{ipmiLevel(bmc, 2)}}, clk, nolog())

			assert.True(t, res.Verified, "the host was proven off; it stays drained")
			assert.False(t, res.PoweredOn)
			assert.Equal(t, tc.errMsg, res.PowerOnErr)
			assert.Equal(t, tc.calls, bmc.calls, "one power-on attempt only")
			assert.Empty(t, res.Reason)
		})
	}
}

func TestRunOffActionNeverPowersOn(t *testing.T) {
	clk := &vclock{now: t0}
	bmc := &fakePC{clk: clk, status: []reading{off()}}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(bmc, 0)}}, clk, nolog())
	require.True(t, res.Verified)
	assert.Equal(t, []string{"off", "status"}, bmc.calls)
	assert.False(t, res.PoweredOn)
}

func TestRunAgentDrain(t *testing.T) {
	for _, tc := range []struct {
		name     string
		drainErr error
		running  []count
		verified bool
		reads    int
		elapsed  time.Duration
		err      string
	}{
		{"running 2, 1, 0", nil, []count{{n: 2}, {n: 1}, {n: 0}}, true, 3, 500 * ms, ""},
		{"a failed read proves nothing", nil, []count{{n: 1}, {err: power.ErrUnreachable}, {n: 0}}, true, 3, 500 * ms, ""},
		{"read error never counts as zero", nil, []count{{err: power.ErrTimeout}}, false, 5, time.Second,
			"agent drain: domains not read back as stopped after 5 readings; last reading failed: timeout"},
		{"negative count is not zero", nil, []count{{n: -1}}, false, 5, time.Second,
			"agent drain: domains not read back as stopped after 5 readings; last reading failed: agent reported -1 running domains"},
		{"drain failed but nothing runs", errors.New("agent: drain: HTTP 500"), []count{{n: 0}}, true, 1, 0, ""},
		{"drain failed and domains still run", errors.New("agent: drain: HTTP 500"), []count{{n: 1}}, false, 5, time.Second,
			"agent drain: agent: drain: HTTP 500; domains not read back as stopped after 5 readings; last: 1 running"},
		{"token refused", authErr("agent: drain"), []count{{n: 0}}, false, 0, 0,
			"agent drain: host n1: agent: drain: bmc-auth-failed: authentication refused by BMC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &vclock{now: t0}
			ag := &fakeAgent{clk: clk, drainErrs: []error{tc.drainErr}, running: tc.running}
			lv := LevelPlan{Name: LevelAgentDrain, Drainer: ag, Timeout: time.Second, Poll: 250 * ms}
			res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{lv}}, clk, nolog())

			assert.Equal(t, tc.verified, res.Verified, res.Reason)
			require.Len(t, res.Attempts, 1)
			a := res.Attempts[0]
			assert.Equal(t, tc.reads, a.Reads)
			assert.Equal(t, tc.elapsed, a.Elapsed)
			assert.Equal(t, tc.err, a.Err)
			assert.Equal(t, 1, ag.drains)
			if tc.verified {
				assert.Equal(t, LevelAgentDrain, res.Level)
			} else {
				assert.Equal(t, "agent-drain: "+tc.err, res.Reason)
			}
		})
	}
}

func TestRunAgentDrainSettleMustHold(t *testing.T) {
	clk := &vclock{now: t0}
	ag := &fakeAgent{clk: clk, running: []count{{n: 0}, {n: 1}, {n: 0}, {n: 0}, {n: 0}}}
	lv := LevelPlan{Name: LevelAgentDrain, Drainer: ag, Timeout: 2 * time.Second, Poll: 100 * ms, Settle: 150 * ms}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{lv}}, clk, nolog())
	require.True(t, res.Verified)
	assert.Equal(t, 5, res.Attempts[0].Reads, "a domain reappearing restarts the settle")
	assert.Equal(t, 350*ms, res.Attempts[0].Elapsed)
}

func TestRunRebootAfterAgentDrainDoesNotTouchPower(t *testing.T) {
	clk := &vclock{now: t0}
	ag := &fakeAgent{clk: clk, running: []count{{n: 0}}}
	lv := LevelPlan{Name: LevelAgentDrain, Drainer: ag, Timeout: time.Second}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Action: ActionReboot, Levels: []LevelPlan{lv}}, clk, nolog())
	require.True(t, res.Verified)
	assert.False(t, res.PoweredOn)
	assert.Empty(t, res.PowerOnErr)
}

func TestRunEveryLevelFailsReasonNamesEach(t *testing.T) {
	clk := &vclock{now: t0}
	ipmi := &fakePC{clk: clk, offErrs: []error{authErr("ipmi: open session")}}
	redfish := &fakePC{clk: clk, status: []reading{on()}}
	ag := &fakeAgent{clk: clk, running: []count{{n: 1}}}
	p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{
		ipmiLevel(ipmi, 2),
		{Name: "redfish", SetupErr: errors.New("redfish: host n1: password file /etc/chime/n1.pw: permission denied")},
		{Name: "redfish", Power: redfish, Timeout: time.Second, Poll: 250 * ms},
		{Name: LevelAgentDrain, Drainer: ag, Timeout: 500 * ms, Poll: 250 * ms, Retries: 1, Backoff: 100 * ms},
	}}
	var logs bytes.Buffer
	res := Run(context.Background(), p, clk, zerolog.New(&logs))

	require.False(t, res.Verified)
	assert.Empty(t, res.Level)
	assert.True(t, res.VerifiedAt.IsZero())
	assert.Equal(t, "ipmi: power off: host n1: ipmi: open session: bmc-auth-failed: authentication refused by BMC (not retried: bmc-auth-failed); "+
		"redfish: not set up: redfish: host n1: password file /etc/chime/n1.pw: permission denied; "+
		"redfish: power off: power not read back as off after 5 readings; last state on; "+
		"agent-drain: 2 attempts, last: agent drain: domains not read back as stopped after 3 readings; last: 1 running", res.Reason)
	assert.NotContains(t, res.Reason, "\n")
	var levels []string
	for _, a := range res.Attempts {
		levels = append(levels, fmt.Sprintf("%s#%d", a.Level, a.Try))
	}
	assert.Equal(t, []string{"ipmi#1", "redfish#1", "redfish#1", "agent-drain#1", "agent-drain#2"}, levels)
	assert.Equal(t, 0, res.Attempts[1].Reads)

	// Logs are JSON lines from component fencer, naming the host.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.NotEmpty(t, lines)
	for _, l := range lines {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		assert.Equal(t, "fencer", m["component"])
		assert.Equal(t, "n1", m["host"])
	}
	assert.Contains(t, lines[len(lines)-1], "no level verified")
}

func TestRunInvalidLevelsFailWithClearReasons(t *testing.T) {
	clk := &vclock{now: t0}
	good := &fakePC{clk: clk, status: []reading{off()}}
	p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{
		{Name: "ipmi", Timeout: time.Second},
		{Name: LevelAgentDrain, Timeout: 0, Retries: -1},
		{Name: "redfish", Power: good, Timeout: time.Second, Settle: time.Second},
		{Power: good, Timeout: time.Second, Retries: 3},
		{Name: "redfish", Power: good, Timeout: time.Second},
	}}
	err := p.Validate()
	require.Error(t, err)
	for _, want := range []string{
		"level 1 (ipmi): no power controller",
		"level 2 (agent-drain): agent-drain level has no agent to drain",
		"level 2 (agent-drain): agent-drain level has no agent to drain\ntimeout must be positive, got 0s\nretries must be 0 or more, got -1",
		"level 3 (redfish): settle delay 1s must be shorter than the timeout 1s, or the level can never verify",
	} {
		assert.Contains(t, err.Error(), want)
	}
	assert.Contains(t, err.Error(), "level 4 (unnamed level): no name")
	assert.NotContains(t, err.Error(), "level 5")

	res := Run(context.Background(), p, clk, nolog())
	require.True(t, res.Verified, "the valid fifth level still runs")
	assert.Equal(t, []string{"off", "status"}, good.calls, "the invalid third level did not act")
	assert.Equal(t, "invalid level: agent-drain level has no agent to drain; timeout must be positive, got 0s; retries must be 0 or more, got -1", res.Attempts[1].Err)
	require.Len(t, res.Attempts, 5, "each invalid level recorded once, not retried")
	assert.Equal(t, "unnamed level: invalid level: no name", Run(context.Background(), Plan{Host: "n1", Levels: p.Levels[3:4]}, clk, nolog()).Reason)
}

func TestRunRefusesPlansItCannotAttempt(t *testing.T) {
	clk := &vclock{now: t0}
	bmc := &fakePC{clk: clk, status: []reading{off()}}
	lv := ipmiLevel(bmc, 0)
	for _, tc := range []struct {
		plan   Plan
		reason string
	}{
		{Plan{Rack: "r1", Levels: []LevelPlan{lv}}, "fence plan has no host"},
		{Plan{Host: "n1", Action: Action(7), Levels: []LevelPlan{lv}}, "fence plan has an unknown action Action(7)"},
		{Plan{Host: "n1"}, "no fence levels configured"},
	} {
		res := Run(context.Background(), tc.plan, clk, nolog())
		assert.False(t, res.Verified)
		assert.Equal(t, tc.reason, res.Reason)
		assert.Empty(t, res.Attempts)
		assert.Error(t, tc.plan.Validate())
	}
	assert.Empty(t, bmc.calls, "nothing acted")
}

func TestRunStopsAtOnceWhenCancelled(t *testing.T) {
	t.Run("during a read-back", func(t *testing.T) {
		clk := &vclock{now: t0}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ipmi := &fakePC{clk: clk, status: []reading{on()}}
		ipmi.hook = func(call string, i int) {
			if call == "status" && i == 1 {
				cancel()
			}
		}
		redfish := &fakePC{clk: clk, status: []reading{off()}}
		p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(ipmi, 5), {Name: "redfish", Power: redfish, Timeout: time.Second}}}
		res := Run(ctx, p, clk, nolog())

		assert.False(t, res.Verified)
		assert.Empty(t, redfish.calls)
		assert.Equal(t, []string{"off", "status", "status"}, ipmi.calls, "the read in flight returns, then nothing more")
		require.True(t, strings.HasPrefix(res.Reason, "fence stopped: context canceled; ipmi: "), res.Reason)
		assert.True(t, strings.HasSuffix(res.Reason, "; redfish: not tried"), res.Reason)
		assert.Len(t, res.Attempts, 1, "no retry after cancel")
	})
	t.Run("during backoff", func(t *testing.T) {
		clk := &vclock{now: t0}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ipmi := &fakePC{clk: clk, status: []reading{on()}}
		ipmi.hook = func(call string, i int) {
			if call == "status" && i == 4 { // the first attempt's last read
				cancel()
			}
		}
		redfish := &fakePC{clk: clk, status: []reading{off()}}
		p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(ipmi, 5), {Name: "redfish", Power: redfish, Timeout: time.Second}}}
		res := Run(ctx, p, clk, nolog())

		assert.False(t, res.Verified)
		assert.Empty(t, redfish.calls)
		assert.Equal(t, 1, ipmi.nOff)
		assert.Equal(t, "fence stopped: context canceled; ipmi: power off: power not read back as off after 5 readings; last state on; redfish: not tried", res.Reason)
	})
	t.Run("before the start", func(t *testing.T) {
		clk := &vclock{now: t0}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		bmc := &fakePC{clk: clk, status: []reading{off()}}
		res := Run(ctx, Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(bmc, 0)}}, clk, nolog())
		assert.False(t, res.Verified)
		assert.Empty(t, bmc.calls)
		assert.Equal(t, "fence stopped: context canceled; ipmi: not tried", res.Reason)
	})
}

func TestResultJSON(t *testing.T) {
	clk := &vclock{now: t0}
	bmc := &fakePC{clk: clk, status: []reading{on()}}
	res := Run(context.Background(), Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(bmc, 0)}}, clk, nolog())
	b, err := json.Marshal(res)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "off", m["action"])
	assert.Equal(t, false, m["verified"])
	assert.NotContains(t, m, "verified_at", "zero time is omitted, not 0001-01-01")
	assert.NotContains(t, m, "power_on_err")
	assert.Equal(t, res.Reason, m["reason"])
}

func TestActionText(t *testing.T) {
	for _, a := range []Action{ActionOff, ActionReboot} {
		b, err := a.MarshalText()
		require.NoError(t, err)
		var got Action
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, a, got)
	}
	var a Action
	assert.EqualError(t, a.UnmarshalText([]byte("cycle")), `unknown fence action "cycle" (want off or reboot)`)
	assert.Equal(t, ActionOff, Action(0), "the zero action is the conservative one")
}

func TestRunStopsBetweenLevelsWhenNoLongerNeeded(t *testing.T) {
	clk := &vclock{now: t0}
	ipmi := &fakePC{clk: clk, offErrs: []error{authErr("ipmi: open session")}}
	ag := &fakeAgent{clk: clk, running: []count{{n: 0}}}
	redfish := &fakePC{clk: clk, status: []reading{off()}}
	asked := 0
	p := Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{
		ipmiLevel(ipmi, 0),
		{Name: LevelAgentDrain, Drainer: ag, Timeout: time.Second, Poll: 250 * ms},
		{Name: "redfish", Power: redfish, Timeout: time.Second},
	}, StillNeeded: func() error {
		asked++
		return errors.New("host n1 heartbeats again")
	}}
	res := Run(context.Background(), p, clk, nolog())
	assert.False(t, res.Verified)
	assert.Equal(t, 1, asked, "asked once, before the second level; not before the first")
	assert.Equal(t, 0, ag.drains, "a host that came back is not drained by the next level")
	assert.Empty(t, redfish.calls)
	require.Len(t, res.Attempts, 1)
	assert.Contains(t, res.Reason, "ipmi: ")
	assert.Contains(t, res.Reason, "; fence stopped before agent-drain: no longer needed: host n1 heartbeats again; redfish: not tried")

	// Still needed: every level runs as before.
	clk = &vclock{now: t0}
	ipmi = &fakePC{clk: clk, offErrs: []error{authErr("ipmi: open session")}}
	redfish = &fakePC{clk: clk, status: []reading{off()}}
	p = Plan{Host: "n1", Rack: "r1", Levels: []LevelPlan{ipmiLevel(ipmi, 0), {Name: "redfish", Power: redfish, Timeout: time.Second}},
		StillNeeded: func() error { return nil }}
	res = Run(context.Background(), p, clk, nolog())
	assert.True(t, res.Verified)
	assert.Equal(t, "redfish", res.Level)
}
