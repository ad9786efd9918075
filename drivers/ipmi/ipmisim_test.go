package ipmi

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goipmi "github.com/bougou/go-ipmi/pkg/client"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/ipmisim"
	"github.com/chimestack/chime-fence/power"
)

// simBMC is a real OpenIPMI ipmi_sim whose chassis_control program logs
// every invocation before delegating to the file-backed power script.
type simBMC struct {
	sim      *ipmisim.Sim
	powerDir string
	calls    string // log of chassis_control invocations
}

func startSimBMC(t *testing.T) *simBMC {
	t.Helper()
	if _, err := os.Stat(ipmisim.Binary); err != nil {
		t.Skipf("skipping real-BMC test: %s not installed (Debian package openipmi)", ipmisim.Binary)
	}
	dir := t.TempDir()
	powerDir := filepath.Join(dir, "power")
	prog, err := ipmisim.WriteFilePowerControl(powerDir)
	require.NoError(t, err)
	calls := filepath.Join(dir, "calls.log")
	wrapper := filepath.Join(dir, "logging-control")
	script := "#!/bin/sh\necho \"$*\" >> " + calls + "\nexec " + prog + " \"$@\"\n"
	require.NoError(t, os.WriteFile(wrapper, []byte(script), 0o755))

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sim, err := ipmisim.Start(ctx, ipmisim.Config{Addr: "127.0.0.1", User: testUser, Password: testPassword,
		StateDir: filepath.Join(dir, "sim"), ChassisControl: wrapper})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sim.Stop() })
	return &simBMC{sim: sim, powerDir: powerDir, calls: calls}
}

func (b *simBMC) on(t *testing.T) bool {
	t.Helper()
	on, err := ipmisim.FilePower(b.powerDir)
	require.NoError(t, err)
	return on
}

func (b *simBMC) callLog(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(b.calls)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func simClient(t *testing.T, b *simBMC, mod func(*Config)) (*Client, *syncBuffer) {
	t.Helper()
	return newClient(t, b.sim.Port(), func(cfg *Config) {
		cfg.Timeout = time.Second
		if mod != nil {
			mod(cfg)
		}
	})
}

func TestIPMISimStatusOffOnCycleSoft(t *testing.T) {
	b := startSimBMC(t)
	c, logs := simClient(t, b, nil)
	ctx := ctxTimeout(t, 20*time.Second)

	st, err := c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)

	require.NoError(t, c.PowerOff(ctx))
	assert.False(t, b.on(t), "file power after PowerOff")
	st, err = c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.Off, st)

	// Already off: a hard power down is still accepted.
	require.NoError(t, c.PowerOff(ctx))

	require.NoError(t, c.PowerOn(ctx))
	assert.True(t, b.on(t), "file power after PowerOn")
	st, err = c.PowerStatus(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.On, st)

	require.NoError(t, c.PowerCycle(ctx))
	// ipmi_sim powers back on about a second after the cycle's power down.
	require.Eventually(t, func() bool {
		calls := b.callLog(t)
		return len(calls) > 0 && calls[len(calls)-1] == "set power 1"
	}, 5*time.Second, 50*time.Millisecond)
	assert.True(t, b.on(t))

	require.NoError(t, c.SoftOff(ctx))
	assert.False(t, b.on(t), "the simulated OS honours ACPI soft off")

	var sets []string
	for _, l := range b.callLog(t) {
		if strings.HasPrefix(l, "set ") {
			sets = append(sets, l)
		}
	}
	assert.Equal(t, []string{"set power 0", "set power 0", "set power 1", "set power 0", "set power 1", "set shutdown 1"}, sets)
	assert.NotContains(t, logs.String(), testPassword)
}

func TestIPMISimCheckNeverActs(t *testing.T) {
	b := startSimBMC(t)
	require.NoError(t, ipmisim.SetFilePower(b.powerDir, false))
	c, _ := simClient(t, b, nil)
	st, err := c.Check(ctxTimeout(t, 10*time.Second))
	require.NoError(t, err)
	assert.Equal(t, power.Off, st)
	assert.False(t, b.on(t))
	for _, l := range b.callLog(t) {
		assert.Equal(t, "get power", l, "Check must only read")
	}
}

func TestIPMISimWrongPasswordIsAuth(t *testing.T) {
	b := startSimBMC(t)
	const wrong = "wr0ng-Passw0rd-77"
	c, logs := simClient(t, b, func(cfg *Config) { cfg.Password = wrong })
	err := c.PowerOff(ctxTimeout(t, 10*time.Second))
	require.Error(t, err)
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrAuth)
	assert.NotContains(t, err.Error(), wrong)
	assert.NotContains(t, logs.String(), wrong)
	assert.True(t, b.on(t), "a refused session must not power anything off")
}

func TestIPMISimUnsupportedSuiteIsConfigAndOrderIsKept(t *testing.T) {
	b := startSimBMC(t)
	c, _ := simClient(t, b, func(cfg *Config) { cfg.CipherSuites = []int{17} })
	_, err := c.PowerStatus(ctxTimeout(t, 10*time.Second))
	t.Log(err)
	assert.ErrorIs(t, err, power.ErrConfig, "ipmi_sim 2.0.33 rejects suite 17")

	c, _ = simClient(t, b, func(cfg *Config) { cfg.CipherSuites = []int{17, 3} })
	st, err := c.PowerStatus(ctxTimeout(t, 10*time.Second))
	require.NoError(t, err, "suite 3 is tried after 17 fails")
	assert.Equal(t, power.On, st)
}

func TestIPMISimStoppedBMCIsUnreachable(t *testing.T) {
	b := startSimBMC(t)
	c, _ := simClient(t, b, nil)
	require.NoError(t, b.sim.Stop())
	const deadline = 3 * time.Second
	start := time.Now()
	_, err := c.PowerStatus(ctxTimeout(t, deadline))
	t.Log(err)
	k := power.KindOf(err)
	assert.True(t, k == power.KindUnreachable || k == power.KindTimeout, "kind %s", k)
	assert.Less(t, time.Since(start), deadline+200*time.Millisecond)
}

func TestIPMISimTwentyBMCsFencedConcurrently(t *testing.T) {
	const n = 20
	bmcs := make([]*simBMC, n)
	clients := make([]*Client, n)
	var mu sync.Mutex
	seen := map[*goipmi.Client]bool{}
	sessions := 0
	for i := range bmcs {
		bmcs[i] = startSimBMC(t)
		clients[i], _ = simClient(t, bmcs[i], nil)
		clients[i].onSession = func(gc *goipmi.Client) {
			mu.Lock()
			defer mu.Unlock()
			seen[gc] = true
			sessions++
		}
	}
	ctx := ctxTimeout(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make([]error, n)
	states := make([]power.State, n)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = clients[i].PowerOff(ctx); errs[i] != nil {
				return
			}
			states[i], errs[i] = clients[i].PowerStatus(ctx)
		}()
	}
	wg.Wait()
	for i := range clients {
		require.NoError(t, errs[i], "bmc %d", i)
		assert.Equal(t, power.Off, states[i], "bmc %d", i)
		assert.False(t, bmcs[i].on(t), "bmc %d file power", i)
	}
	assert.Equal(t, 2*n, sessions)
	assert.Len(t, seen, 2*n, "every operation must have its own go-ipmi client")
}

func TestIPMISimCancelAtRandomPointsNeverCrashes(t *testing.T) {
	b := startSimBMC(t)
	c, _ := simClient(t, b, func(cfg *Config) { cfg.Timeout = 200 * time.Millisecond })
	before := numGoroutines()
	for i := 0; i < 25; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Duration(rand.IntN(8000))*time.Microsecond, cancel)
		_, err := c.PowerStatus(ctx)
		if err != nil {
			assert.ErrorIs(t, err, power.ErrTimeout, "iteration %d", i)
		}
		cancel()
	}
	waitSessions(t, c, 5*time.Second)
	assertGoroutinesBack(t, before)

	// The BMC is still usable: no session or state was corrupted.
	st, err := c.PowerStatus(ctxTimeout(t, 5*time.Second))
	require.NoError(t, err)
	assert.Equal(t, power.On, st)
}
