package blackhole

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOrphans(t *testing.T) {
	for _, tc := range []struct {
		name string
		have []string
		live [][]string
		want []string
	}{
		{"nothing installed", nil, [][]string{{"10.77.0.0/24"}}, nil},
		{"last claim gone", []string{"10.77.0.0/24", "10.78.0.0/24"}, nil, []string{"10.77.0.0/24", "10.78.0.0/24"}},
		{"another lab keeps them", []string{"10.77.0.0/24", "10.78.0.0/24"}, [][]string{{"10.77.0.0/24", "10.78.0.0/24"}}, nil},
		{"the bench's go, the lab's stay", []string{"10.77.0.0/24", "10.200.0.0/16"}, [][]string{{"10.77.0.0/24"}}, []string{"10.200.0.0/16"}},
	} {
		have := map[string]bool{}
		for _, n := range tc.have {
			have[n] = true
		}
		assert.Equal(t, tc.want, Orphans(have, tc.live), tc.name)
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
