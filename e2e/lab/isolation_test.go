package lab

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/blackhole"
)

// routeGet is `ip route get ADDR` in the root namespace.
func routeGet(addr string) string {
	out, _ := exec.Command("ip", "route", "get", addr).CombinedOutput()
	return strings.TrimSpace(string(out))
}

// TestLabRootNamespaceUnreachable: while a lab is up, its addresses have
// an unreachable route in the root namespace, so a client run outside the
// controller namespace fails at once; Close removes the routes.
func TestLabRootNamespaceUnreachable(t *testing.T) {
	skipUnlessLab(t)
	require.Empty(t, blackhole.Live(), "another lab or bench holds the lab subnets; run lab tests one at a time (flock)")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	l := startLab(t, ctx, Config{Name: "chlabr", Dir: t.TempDir(), Hosts: 1})
	h := l.Hosts()[0]

	for _, a := range []string{ControllerMgmtAddr, h.MgmtAddr, h.BMC.Addr} {
		assert.Contains(t, routeGet(a), "No route to host", "ip route get %s in the root namespace", a)
	}
	rs, err := blackhole.Routes(ctx, Subnets)
	require.NoError(t, err)
	assert.Equal(t, Subnets, rs)
	dir, err := Lookup("chlabr")
	require.NoError(t, err)
	assert.Equal(t, l.Dir(), dir)
	// A client in the wrong namespace fails at once, without a timeout.
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-N", "5", "-R", "1",
		"-H", h.BMC.Addr, "-U", "admin", "-f", h.BMC.PasswordFile, "chassis", "power", "status").CombinedOutput()
	require.Error(t, err)
	assert.Less(t, time.Since(t0), 4*time.Second, "ipmitool from the root namespace: %s", out)
	// From the controller, the lab answers as before.
	got, err := ipmitool(ctx, l, h, "chassis", "power", "status")
	require.NoError(t, err, got)

	require.NoError(t, l.Close())
	rs, err = blackhole.Routes(ctx, Subnets)
	require.NoError(t, err)
	assert.Empty(t, rs, "routes after Close")
	assert.NotContains(t, routeGet(h.MgmtAddr), "No route to host")
	_, err = Lookup("chlabr")
	assert.Error(t, err, "the lab is no longer indexed")
}
