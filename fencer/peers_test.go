package fencer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/drivers/ipmi"
	"github.com/chimestack/chime-fence/drivers/redfish"
	"github.com/chimestack/chime-fence/e2e/ipmisim"
	"github.com/chimestack/chime-fence/e2e/redfishsim"
	"github.com/chimestack/chime-fence/fencer"
)

// These tests run Run against real peers: OpenIPMI's ipmi_sim and the
// Redfish simulator over loopback HTTP, with the real drivers and clock.

const (
	ipmiUser     = "admin"
	ipmiPassword = "Ipmi-pw-never-leak1"
	wrongIPMI    = "wr0ng-Passw0rd-77"
	rfUser       = "fence"
	rfPassword   = "Rf-pw-must-never-leak"
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startIPMISim(t *testing.T) *ipmisim.Sim {
	t.Helper()
	if _, err := os.Stat(ipmisim.Binary); err != nil {
		t.Skipf("skipping real-BMC test: %s not installed (Debian package openipmi)", ipmisim.Binary)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sim, err := ipmisim.Start(ctx, ipmisim.Config{Addr: "127.0.0.1", User: ipmiUser, Password: ipmiPassword,
		StateDir: filepath.Join(t.TempDir(), "sim")})
	require.NoError(t, err)
	t.Cleanup(func() { _ = sim.Stop() })
	return sim
}

func ipmiOn(t *testing.T, sim *ipmisim.Sim) bool {
	t.Helper()
	on, err := ipmisim.FilePower(sim.PowerDir())
	require.NoError(t, err)
	return on
}

func ipmiClient(t *testing.T, sim *ipmisim.Sim, password string, log zerolog.Logger) *ipmi.Client {
	t.Helper()
	c, err := ipmi.New(ipmi.Config{Host: "n1", Addr: "127.0.0.1", Port: sim.Port(), Username: ipmiUser, Password: password,
		Timeout: time.Second}, log)
	require.NoError(t, err)
	return c
}

func startRedfish(t *testing.T, cfg redfishsim.Config) (*redfishsim.Sim, string) {
	t.Helper()
	cfg.Username, cfg.Password = rfUser, rfPassword
	sim, err := redfishsim.New(cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	require.True(t, strings.HasPrefix(srv.Listener.Addr().String(), "127.0.0.1:"))
	return sim, srv.URL
}

func TestRunRealBMCsWrongIPMIPasswordThenRedfishReboot(t *testing.T) {
	isim := startIPMISim(t)
	rsim, url := startRedfish(t, redfishsim.Config{OffLag: 300 * time.Millisecond, OnLag: 200 * time.Millisecond})
	logs := &syncBuffer{}
	log := zerolog.New(logs)

	rf, err := redfish.New(redfish.Config{Host: "n1", Endpoint: url, Username: rfUser, Password: rfPassword, Timeout: 2 * time.Second}, log)
	require.NoError(t, err)
	p := fencer.Plan{Host: "n1", Rack: "r1", Action: fencer.ActionReboot, Levels: []fencer.LevelPlan{
		{Name: "ipmi", Power: ipmiClient(t, isim, wrongIPMI, log), Timeout: 3 * time.Second, Retries: 2, Poll: 100 * time.Millisecond},
		{Name: "redfish", Power: rf, Timeout: 5 * time.Second, Retries: 1, Poll: 100 * time.Millisecond},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	res := fencer.Run(ctx, p, fencer.RealClock{}, log)
	took := time.Since(start)

	require.True(t, res.Verified, res.Reason)
	assert.Equal(t, "redfish", res.Level)
	require.Len(t, res.Attempts, 2, "ipmi once (credentials refused: not retried), redfish once")
	assert.Contains(t, res.Attempts[0].Err, "bmc-auth-failed")
	assert.Equal(t, 0, res.Attempts[0].Reads)
	assert.True(t, res.Attempts[1].Verified)
	assert.GreaterOrEqual(t, res.Attempts[1].Elapsed, 300*time.Millisecond, "redfish reports PoweringOff for 300ms; Off is read after")
	assert.True(t, res.PoweredOn, res.PowerOnErr)
	assert.Equal(t, "On", rsim.Stats().PowerStates["1"])
	assert.Equal(t, 1, rsim.Stats().Resets["ForceOff"])
	assert.True(t, ipmiOn(t, isim), "the ipmi level never acted")
	assert.Less(t, took, 20*time.Second)
	t.Logf("wrong ipmi password, redfish off verified and on again in %s (verified after %s)", took, res.VerifiedAt.Sub(res.Started))

	b, err := json.Marshal(res)
	require.NoError(t, err)
	for _, secret := range []string{ipmiPassword, wrongIPMI, rfPassword} {
		assert.NotContains(t, string(b), secret)
		assert.NotContains(t, logs.String(), secret)
	}
}

func TestRunRealIPMISimOffThenAlreadyOff(t *testing.T) {
	isim := startIPMISim(t)
	log := zerolog.Nop()
	p := fencer.Plan{Host: "n1", Rack: "r1", Levels: []fencer.LevelPlan{
		{Name: "ipmi", Power: ipmiClient(t, isim, ipmiPassword, log), Timeout: 5 * time.Second, Retries: 1, Poll: 100 * time.Millisecond},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.True(t, ipmiOn(t, isim))

	res := fencer.Run(ctx, p, fencer.RealClock{}, log)
	require.True(t, res.Verified, res.Reason)
	assert.False(t, ipmiOn(t, isim), "the chassis really is off")
	t.Logf("ipmi_sim off verified in %s", res.VerifiedAt.Sub(res.Started))

	res = fencer.Run(ctx, p, fencer.RealClock{}, log)
	require.True(t, res.Verified, "already off is success after the read-back: %s", res.Reason)
	assert.Len(t, res.Attempts, 1)
	assert.GreaterOrEqual(t, res.Attempts[0].Reads, 1)
}

func TestRunRealRedfishNeverOffFailsWithReason(t *testing.T) {
	// A Redfish BMC that refuses ForceOff (not in its allowed reset types)
	// and a level that therefore cannot verify: the reason says so.
	_, url := startRedfish(t, redfishsim.Config{AllowedResetTypes: []string{"On", "GracefulShutdown"}})
	rf, err := redfish.New(redfish.Config{Host: "n1", Endpoint: url, Username: rfUser, Password: rfPassword, Timeout: 2 * time.Second}, zerolog.Nop())
	require.NoError(t, err)
	p := fencer.Plan{Host: "n1", Rack: "r1", Levels: []fencer.LevelPlan{
		{Name: "redfish", Power: rf, Timeout: 500 * time.Millisecond, Retries: 1, Poll: 100 * time.Millisecond, Backoff: 100 * time.Millisecond},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := fencer.Run(ctx, p, fencer.RealClock{}, zerolog.Nop())
	require.False(t, res.Verified)
	assert.True(t, strings.HasPrefix(res.Reason, "redfish: "), res.Reason)
	assert.Contains(t, res.Reason, "last state on")
	assert.NotContains(t, res.Reason, rfPassword)
	t.Logf("reason: %s", res.Reason)
}
