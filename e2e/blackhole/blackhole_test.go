package blackhole

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOrphans(t *testing.T) {
	const mgmt, bmc, bench, admin = "10.77.0.0/24", "10.78.0.0/24", "10.200.0.0/16", "10.9.0.0/16"
	for _, tc := range []struct {
		name string
		have []string
		gone []string
		live [][]string
		want []string
	}{
		{"nothing installed", nil, []string{mgmt}, nil, nil},
		{"last claim gone", []string{mgmt, bmc}, []string{mgmt, bmc}, nil, []string{mgmt, bmc}},
		{"another lab keeps them", []string{mgmt, bmc}, []string{mgmt, bmc}, [][]string{{mgmt, bmc}}, nil},
		{"the bench's go, the lab's stay", []string{mgmt, bench}, []string{bench}, [][]string{{mgmt}}, []string{bench}},
		{"a route no claim in this directory named stays", []string{mgmt, admin}, []string{mgmt}, nil, []string{mgmt}},
		{"a dead claim and a release naming the same subnet", []string{mgmt}, []string{mgmt, mgmt}, nil, []string{mgmt}},
	} {
		have := map[string]bool{}
		for _, n := range tc.have {
			have[n] = true
		}
		assert.Equal(t, tc.want, Orphans(have, tc.gone, tc.live), tc.name)
	}
}

func TestClaimFileAndLiveness(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "lab-x")
	st := startTime(os.Getpid())
	require.NotEmpty(t, st)
	require.NoError(t, os.WriteFile(p, []byte("1 0\n"), 0o644)) // PID 1 with a wrong start time: a reused PID
	c, err := readClaim(p)
	require.NoError(t, err)
	assert.False(t, c.live(), "a PID whose start time differs is not the claimant")
	require.NoError(t, os.WriteFile(p, []byte(itoa(os.Getpid())+" "+st+"\n10.77.0.0/24\n10.78.0.0/24\n"), 0o644))
	c, err = readClaim(p)
	require.NoError(t, err)
	assert.True(t, c.live())
	assert.Equal(t, []string{"10.77.0.0/24", "10.78.0.0/24"}, c.nets)
}

func TestClaimRejectsBadInput(t *testing.T) {
	err := claim(t.Context(), t.TempDir(), "Bad Owner", []string{"10.77.0.0/24"}, os.Getpid())
	assert.ErrorContains(t, err, `invalid owner "Bad Owner"`)
	err = claim(t.Context(), t.TempDir(), "lab-x", []string{"10.77.0.0"}, os.Getpid())
	assert.ErrorContains(t, err, `subnet "10.77.0.0": want a.b.c.d/len`)
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestClaimRelease installs and removes real routes in the root namespace
// (root only), on a subnet no lab uses, with a claim directory of its own:
// a route stays while any live claim names it, a dead claimant's routes go
// at the next Release, and the directory goes with the last claim.
func TestClaimRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it changes the root namespace's routes")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "claims")
	const a, b = "10.254.77.0/24", "10.254.78.0/24"
	routes := func() []string {
		have, err := unreachableRoutes(context.Background())
		require.NoError(t, err)
		var out []string
		for _, n := range []string{a, b} {
			if have[n] {
				out = append(out, n)
			}
		}
		return out
	}
	t.Cleanup(func() {
		for _, n := range routes() {
			_, _ = ipRoute(context.Background(), "del", "unreachable", n)
		}
	})
	require.Empty(t, routes(), "leftover test routes")

	require.NoError(t, claim(ctx, dir, "lab-one", []string{a, b}, os.Getpid()))
	require.NoError(t, claim(ctx, dir, "lab-two", []string{a}, os.Getpid()))
	assert.Equal(t, []string{a, b}, routes())
	out, _ := exec.Command("ip", "route", "get", "10.254.77.9").CombinedOutput()
	assert.Contains(t, string(out), "No route to host")

	require.NoError(t, release(ctx, dir, "lab-one"))
	assert.Equal(t, []string{a}, routes(), "lab-two still needs a")

	// A claimant that died (here: a finished child) no longer holds a.
	child := exec.Command("true")
	require.NoError(t, child.Run())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "lab-two"),
		[]byte(strconv.Itoa(child.Process.Pid)+" 1\n"+a+"\n"), 0o644))
	require.NoError(t, release(ctx, dir, "lab-nobody"))
	assert.Empty(t, routes(), "a dead claim's route is collected")
	_, err := os.Stat(dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "the claim directory goes with the last claim")

	// A subnet the machine routes some other way is refused, not shadowed.
	require.NoError(t, exec.Command("ip", "route", "add", "prohibit", b).Run())
	t.Cleanup(func() { _ = exec.Command("ip", "route", "del", "prohibit", b).Run() })
	err = claim(ctx, dir, "lab-three", []string{b}, os.Getpid())
	assert.ErrorContains(t, err, b+" is already routed on this machine")
	assert.Empty(t, routes())
}
