package fencebench

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/ipmisim"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestSummarize(t *testing.T) {
	assert.Equal(t, Stats{}, Summarize(nil))
	assert.Equal(t, Stats{N: 1, Min: ms(5), Median: ms(5), P90: ms(5), Max: ms(5)}, Summarize([]time.Duration{ms(5)}))

	var ds []time.Duration
	for i := 20; i >= 1; i-- { // unsorted input
		ds = append(ds, ms(i))
	}
	s := Summarize(ds)
	assert.Equal(t, 20, s.N)
	assert.Equal(t, ms(1), s.Min)
	assert.Equal(t, ms(20), s.Max)
	assert.Equal(t, ms(10)+ms(1)/2, s.Median, "mean of 10 and 11")
	assert.Equal(t, ms(18), s.P90, "nearest rank ceil(0.9*20)=18")
	assert.Equal(t, ms(20), ds[0], "input left unsorted")
}

func TestCheckAndPrint(t *testing.T) {
	r := Report{Runs: 2, BMC: "127.0.0.1:1", Ratio: 0.31,
		Chime: Result{Name: "chime-fence ipmi"}, Agent: Result{Name: "fence_ipmilan"}}
	assert.ErrorIs(t, Check(r, 0.3), ErrGoalMissed)
	assert.NoError(t, Check(r, 0), "0 disables the goal")
	r.Ratio = 0.1
	assert.NoError(t, Check(r, 0.3))

	var buf bytes.Buffer
	require.NoError(t, Print(&buf, r, 0.3))
	assert.Contains(t, buf.String(), "ratio (median chime-fence / median fence_ipmilan): 0.100 (goal <= 0.30: PASS)")
}

func TestRunAgainstIPMISim(t *testing.T) {
	for _, bin := range []string{ipmisim.Binary, DefaultFenceAgent, "/usr/bin/ipmitool"} {
		if _, err := os.Stat(bin); err != nil {
			t.Skipf("skipping: %s not installed (Debian packages openipmi, fence-agents, ipmitool)", bin)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := Run(ctx, Options{Runs: 2, StateDir: t.TempDir(), Log: zerolog.Nop()})
	require.NoError(t, err)
	assert.Len(t, r.Chime.Durations, 2)
	assert.Len(t, r.Agent.Durations, 2)
	assert.Greater(t, r.Ratio, 0.0)
	assert.Equal(t, r.Chime.Stats.Median, Summarize(r.Chime.Durations).Median)
}
