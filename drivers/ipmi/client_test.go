package ipmi

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/power"
)

func TestNewValidatesConfig(t *testing.T) {
	good := Config{Host: "node1", Addr: "10.0.0.1", Username: "admin", Password: testPassword}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no host", func(c *Config) { c.Host = "" }, "host name is empty"},
		{"no addr", func(c *Config) { c.Addr = " " }, "BMC address is empty"},
		{"bad port", func(c *Config) { c.Port = 70000 }, "port 70000 is outside 1..65535"},
		{"no user", func(c *Config) { c.Username = "" }, "username is empty"},
		{"long user", func(c *Config) { c.Username = strings.Repeat("u", 17) }, "username is 17 bytes"},
		{"no password", func(c *Config) { c.Password = "" }, "password is empty"},
		{"long password", func(c *Config) { c.Password = testPassword + strings.Repeat("x", 10) }, "password is 24 bytes, IPMI 2.0 allows at most 20"},
		{"bad suite", func(c *Config) { c.CipherSuites = []int{3, 42} }, "cipher suite 42 is not an IPMI 2.0 cipher suite"},
		{"dup suite", func(c *Config) { c.CipherSuites = []int{3, 3} }, "cipher suite 3 is listed twice"},
		{"suite 1 without integrity", func(c *Config) { c.CipherSuites = []int{3, 1} }, "cipher suite 1 does not protect message integrity"},
		{"suite 6 without integrity", func(c *Config) { c.CipherSuites = []int{6} }, "cipher suite 6 does not protect message integrity"},
		{"suite 15 without integrity", func(c *Config) { c.CipherSuites = []int{15, 17} }, "cipher suite 15 does not protect message integrity"},
		{"suite 0 without anything", func(c *Config) { c.CipherSuites = []int{0} }, "cipher suite 0 does not protect message integrity"},
		{"user privilege", func(c *Config) { c.Privilege = "user" }, `privilege "user" cannot control chassis power`},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "timeout -1s is negative"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			_, err := New(cfg, zerolog.Nop())
			require.Error(t, err)
			assert.ErrorIs(t, err, power.ErrConfig)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), testPassword)
		})
	}

	c, err := New(good, zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, DefaultPort, c.cfg.Port)
	assert.Equal(t, []int{3, 17}, c.cfg.CipherSuites)
	assert.Equal(t, []types.CipherSuiteID{3, 17}, c.suites)
	assert.Equal(t, "operator", c.cfg.Privilege)
	assert.Equal(t, types.PrivilegeLevelOperator, c.priv)
	assert.Equal(t, DefaultTimeout, c.cfg.Timeout)
}

func TestEmbeddedPowerOperations(t *testing.T) {
	port, ch := startEmbeddedBMC(t, bmc.PrivilegeLevelOperator)
	c, logs := newClient(t, port, nil)
	ctx := ctxTimeout(t, 10*time.Second)

	st, err := c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)

	require.NoError(t, c.PowerOff(ctx))
	on, _ := ch.snapshot()
	assert.False(t, on, "chassis still on after PowerOff")
	st, err = c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.Off, st)

	require.NoError(t, c.PowerOn(ctx))
	st, err = c.Check(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)

	require.NoError(t, c.PowerCycle(ctx))
	require.NoError(t, c.SoftOff(ctx))
	_, actions := ch.snapshot()
	assert.Equal(t, []string{"off", "on", "cycle", "soft"}, actions, "Check and PowerStatus must not act")
	assert.NotContains(t, logs.String(), testPassword)
	assert.Contains(t, logs.String(), `"component":"ipmi"`)
}

func TestEmbeddedRefusedAction(t *testing.T) {
	port, ch := startEmbeddedBMC(t, bmc.PrivilegeLevelOperator)
	ch.mu.Lock()
	ch.refuse = types.CompletionCode(0xD5) // not supported in present state
	ch.mu.Unlock()
	c, _ := newClient(t, port, nil)

	err := c.PowerOff(ctxTimeout(t, 5*time.Second))
	require.Error(t, err)
	assert.ErrorIs(t, err, power.ErrRefused)
	var pe *power.Error
	require.True(t, errors.As(err, &pe))
	assert.Equal(t, "node1", pe.Host)
	assert.Equal(t, "ipmi: chassis power off", pe.Step)
}

// TestBMCOfferingOnlySuitesWithoutIntegrityIsNeverRead is the attack of a
// BMC (or a man in the middle answering for it) that offers only suites
// whose replies carry no integrity check: no reading comes back, so no
// forged Off can become a verified fence.
func TestBMCOfferingOnlySuitesWithoutIntegrityIsNeverRead(t *testing.T) {
	for _, offered := range [][]types.CipherSuiteID{{types.CipherSuiteID1}, {types.CipherSuiteID0, types.CipherSuiteID1}} {
		port, ch := startEmbeddedBMC(t, bmc.PrivilegeLevelAdministrator, offered...)
		c, _ := newClient(t, port, nil)
		st, err := c.PowerStatus(ctxTimeout(t, 5*time.Second))
		require.Error(t, err, "offered %v: a reading came back: %v", offered, st)
		t.Log(err)
		assert.NotErrorIs(t, err, power.ErrUnreachable, "the BMC answered; the refusal must not read as silence")
		_, actions := ch.snapshot()
		require.Error(t, c.PowerOff(ctxTimeout(t, 5*time.Second)))
		_, after := ch.snapshot()
		assert.Equal(t, actions, after)
	}
}

func TestEmbeddedWrongPasswordIsAuth(t *testing.T) {
	port, _ := startEmbeddedBMC(t, bmc.PrivilegeLevelAdministrator)
	const wrong = "not-the-pw-9931"
	c, logs := newClient(t, port, func(cfg *Config) { cfg.Password = wrong })

	_, err := c.PowerStatus(ctxTimeout(t, 5*time.Second))
	require.Error(t, err)
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrAuth, "%v", err)
	assert.NotContains(t, err.Error(), wrong)
	assert.NotContains(t, err.Error(), testPassword)
	assert.NotContains(t, logs.String(), wrong)
}

func TestEmbeddedUnknownUserIsAuth(t *testing.T) {
	port, _ := startEmbeddedBMC(t, bmc.PrivilegeLevelAdministrator)
	c, _ := newClient(t, port, func(cfg *Config) { cfg.Username = "nobody" })
	_, err := c.Check(ctxTimeout(t, 5*time.Second))
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrAuth, "%v", err)
}

func TestEmbeddedUserBelowOperatorFailsCheck(t *testing.T) {
	port, ch := startEmbeddedBMC(t, bmc.PrivilegeLevelUser)
	c, _ := newClient(t, port, nil)
	_, err := c.Check(ctxTimeout(t, 5*time.Second))
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrAuth, "%v", err)
	_, actions := ch.snapshot()
	assert.Empty(t, actions)
}

func TestClosedPortIsUnreachable(t *testing.T) {
	c, _ := newClient(t, closedPort(t), nil)
	start := time.Now()
	_, err := c.PowerStatus(ctxTimeout(t, 5*time.Second))
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrUnreachable, "%v", err)
	assert.Less(t, time.Since(start), 5*time.Second)
}

func TestSilentBMCEndsWithinDeadline(t *testing.T) {
	c, _ := newClient(t, blackhole(t), nil)
	const deadline = 700 * time.Millisecond
	start := time.Now()
	err := c.PowerOff(ctxTimeout(t, deadline))
	took := time.Since(start)
	require.Error(t, err)
	k := power.KindOf(err)
	assert.True(t, k == power.KindTimeout || k == power.KindUnreachable, "kind %s: %v", k, err)
	assert.Less(t, took, deadline+200*time.Millisecond)
}

func TestSilentBMCWithoutDeadlineIsUnreachable(t *testing.T) {
	// Per-exchange timeouts and retries run out before the default cap.
	c, _ := newClient(t, blackhole(t), func(cfg *Config) { cfg.Timeout = 50 * time.Millisecond })
	_, err := c.PowerStatus(context.Background())
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrUnreachable, "%v", err)
}

func TestCancelMidCallReturnsAndSessionEnds(t *testing.T) {
	c, _ := newClient(t, blackhole(t), nil)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := c.PowerOff(ctx)
	assert.ErrorIs(t, err, power.ErrTimeout, "%v", err)
	assert.Less(t, time.Since(start), 400*time.Millisecond)

	waitSessions(t, c, 3*time.Second)
	assertGoroutinesBack(t, before)
}

func assertGoroutinesBack(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	assert.LessOrEqual(t, runtime.NumGoroutine(), before, "goroutines leaked")
}
