package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/readiness"
)

type testNodeRun struct {
	code   int
	report readiness.Report
	stderr string
}

// testNode runs `chime-fence test-node HOST -o json` in the controller
// namespace, as an operator on the management network would.
func testNode(t *testing.T, ctx context.Context, l *lab.Lab, bin, cfg, host string) testNodeRun {
	t.Helper()
	cmd := l.Controller().Command(ctx, bin, "test-node", host, "-c", cfg, "-o", "json", "--timeout", "3s")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := testNodeRun{stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	require.NoError(t, json.Unmarshal(out.Bytes(), &r.report), "stdout: %s\nstderr: %s", out.String(), errb.String())
	return r
}

func TestTestNodeOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin := buildChimeFence(t)
	l := startLab(t, ctx, lab.Config{Name: "chtn", Hosts: 3, BMCTypes: []string{lab.BMCIPMI, lab.BMCRedfish, lab.BMCIPMI}})
	h1, h2, h3 := l.Hosts()[0], l.Hosts()[1], l.Hosts()[2]

	_, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "web", Shared: true})
	require.NoError(t, err)
	_, err = l.CreateVM(ctx, h1, lab.VMSpec{Name: "scratch", Shared: false})
	require.NoError(t, err)

	dir := t.TempDir()
	cfg, err := labconfig.Write(l, filepath.Join(dir, "good.yaml"), labconfig.Options{})
	require.NoError(t, err)
	wrongPW := filepath.Join(dir, "wrong-password")
	require.NoError(t, os.WriteFile(wrongPW, []byte("not-the-password\n"), 0o600))
	badCfg, err := labconfig.Write(l, filepath.Join(dir, "bad.yaml"), labconfig.Options{PasswordFiles: map[string]string{h2.Name: wrongPW, h3.Name: wrongPW}})
	require.NoError(t, err)

	powerOf := func(h lab.Host) bool {
		on, err := l.BMCPower(ctx, h)
		require.NoError(t, err)
		return on
	}
	before := map[string]bool{h1.Name: powerOf(h1), h2.Name: powerOf(h2), h3.Name: powerOf(h3)}
	require.Equal(t, map[string]bool{h1.Name: true, h2.Name: true, h3.Name: true}, before)

	t.Run("healthy ipmi host", func(t *testing.T) {
		r := testNode(t, ctx, l, bin, cfg, h1.Name)
		assert.Equal(t, 0, r.code, r.stderr)
		require.Len(t, r.report.Levels, 1)
		lv := r.report.Levels[0]
		assert.True(t, lv.Usable)
		assert.Equal(t, "on", lv.Power.String())
		assert.Positive(t, lv.Latency)
		require.NotNil(t, r.report.Libvirt)
		assert.True(t, r.report.Libvirt.Reachable)
		ev := map[string]bool{}
		for _, d := range r.report.Domains {
			ev[d.Name] = d.Evacuable
			assert.Equal(t, "running", d.State.String(), d.Name)
		}
		assert.Equal(t, map[string]bool{"web": true, "scratch": false}, ev)
		assert.Contains(t, r.report.Summary, "ready: 1 of 1 fence level(s) usable (ipmi); 1 of 2 domain(s) evacuable")
	})
	t.Run("healthy redfish host", func(t *testing.T) {
		r := testNode(t, ctx, l, bin, cfg, h2.Name)
		assert.Equal(t, 0, r.code, r.stderr)
		require.Len(t, r.report.Levels, 1)
		assert.Equal(t, "redfish", string(r.report.Levels[0].Type))
		assert.True(t, r.report.Levels[0].Usable, r.report.Levels[0].Error)
		assert.Equal(t, "on", r.report.Levels[0].Power.String())
	})
	t.Run("wrong password", func(t *testing.T) {
		for _, h := range []lab.Host{h2, h3} {
			r := testNode(t, ctx, l, bin, badCfg, h.Name)
			assert.Equal(t, 1, r.code, h.Name)
			assert.False(t, r.report.Ready)
			assert.Equal(t, "bmc-auth-failed", r.report.Levels[0].Kind, "%s: %s", h.Name, r.report.Levels[0].Error)
			assert.Contains(t, r.stderr, "not ready")
			assert.NotContains(t, r.stderr+r.report.Summary, "not-the-password")
		}
	})
	t.Run("bmc unreachable", func(t *testing.T) {
		require.NoError(t, l.BlockBMC(ctx, h1))
		defer func() { require.NoError(t, l.UnblockBMC(ctx, h1)) }()
		start := time.Now()
		r := testNode(t, ctx, l, bin, cfg, h1.Name)
		assert.Less(t, time.Since(start), 10*time.Second, "bounded by --timeout")
		assert.Equal(t, 1, r.code)
		kind := r.report.Levels[0].Kind
		assert.True(t, kind == "bmc-unreachable" || kind == "timeout", "kind %s: %s", kind, r.report.Levels[0].Error)
		assert.True(t, r.report.Libvirt.Reachable, "the host itself is fine")
	})
	t.Run("host down", func(t *testing.T) {
		require.NoError(t, l.PowerLoss(ctx, h3))
		before[h3.Name] = false
		r := testNode(t, ctx, l, bin, cfg, h3.Name)
		assert.Equal(t, 0, r.code, "a powered-off host is still fenceable: its BMC reads Off: %s", r.stderr)
		assert.Equal(t, "off", r.report.Levels[0].Power.String())
		assert.False(t, r.report.Libvirt.Reachable)
		assert.Contains(t, r.report.Summary, "libvirt unreachable, domains unknown")
	})

	after := map[string]bool{h1.Name: powerOf(h1), h2.Name: powerOf(h2), h3.Name: powerOf(h3)}
	assert.Equal(t, before, after, "test-node never changes power")
	doms, err := l.Domains(ctx, h1)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{"web": "running", "scratch": "running"}, doms, "nor VM state")
}
