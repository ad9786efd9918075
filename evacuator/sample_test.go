package evacuator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
)

// TestSampleMeasuresWithoutAHealthyVerdict: a plan-time sample needs no
// normal monitor state (a restarted daemon has judged nobody yet) and
// writes no inventory; it fills HostLoad.
func TestSampleMeasuresWithoutAHealthyVerdict(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "h1")
	e.healthy.Store("h1", false)
	e.doms["h1"].set(capDom(cu1, "web", hypervisor.StateRunning, 2, 1024), capDom(cu3, "off", hypervisor.StateShutoff, 8, 8192))
	_, ok := e.c.HostLoad("h1")
	require.False(t, ok)

	hl, err := e.c.Sample(context.Background(), "h1")
	require.NoError(t, err)
	assert.Equal(t, HostLoad{CPUs: 4, MemoryMiB: 8 << 10, FreeMemoryMiB: 4 << 10, Load: -1, UsedVCPUs: 2, UsedMemoryMiB: 1024, At: e.clock.Now()}, hl,
		"one sample: capacity known, load unknown (ranked after known loads, still eligible)")
	got, ok := e.c.HostLoad("h1")
	require.True(t, ok)
	assert.Equal(t, hl, got)
	assert.Empty(t, e.records("h1"), "a sample writes no inventory")

	_, err = e.c.Sample(context.Background(), "nope")
	assert.ErrorIs(t, err, ErrCaptureUnknownHost)
	e.hv["h1"].stats = func(context.Context) (hypervisor.NodeStats, error) {
		return hypervisor.NodeStats{}, errors.New("connection refused")
	}
	_, err = e.c.Sample(context.Background(), "h1")
	assert.ErrorContains(t, err, "sample host h1: node stats: connection refused")
}

// TestSampleStaleSamplesOnlyWhatIsMissingOrOld: fresh samples are reused;
// missing, old, or forced ones are taken now, and a failure is reported
// per host.
func TestSampleStaleSamplesOnlyWhatIsMissingOrOld(t *testing.T) {
	e := newCapEnv(t, CaptureConfig{Interval: time.Minute}, "fresh", "old", "missing", "forced", "down")
	ctx := context.Background()
	for _, h := range []string{"fresh", "old", "forced"} {
		_, err := e.c.Sample(ctx, h)
		require.NoError(t, err)
	}
	e.clock.Advance(20 * time.Second)
	_, err := e.c.Sample(ctx, "fresh")
	require.NoError(t, err)
	e.clock.Advance(time.Second)
	e.hv["down"].stats = func(context.Context) (hypervisor.NodeStats, error) {
		return hypervisor.NodeStats{}, errors.New("no route to host")
	}
	calls := map[string]int32{}
	for h, hv := range e.hv {
		calls[h] = hv.domainCalls.Load()
	}

	got := e.c.SampleStale(ctx, []string{"fresh", "old", "missing", "forced", "down"}, 15*time.Second,
		func(h string) bool { return h == "forced" })
	require.Len(t, got, 5)
	assert.True(t, got["fresh"].OK)
	assert.False(t, got["fresh"].Sampled, "1 s old: reused")
	assert.Equal(t, calls["fresh"], e.hv["fresh"].domainCalls.Load(), "libvirt not asked")
	for _, h := range []string{"old", "missing", "forced"} {
		assert.True(t, got[h].OK, h)
		assert.True(t, got[h].Sampled, h)
		assert.Equal(t, e.clock.Now(), got[h].Load.At, h)
	}
	assert.False(t, got["down"].OK)
	assert.True(t, got["down"].Sampled)
	assert.ErrorContains(t, got["down"].Err, "no route to host")
}

func TestReadMirror(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "h1"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "h1", cu1+".xml"), []byte("<domain/>"), 0o600))
	xml, at, ok, err := ReadMirror(dir, "h1", cu1)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "<domain/>", xml)
	assert.False(t, at.IsZero())

	_, _, ok, err = ReadMirror(dir, "h1", cu2)
	require.NoError(t, err)
	assert.False(t, ok, "no file: not found, no error")
	_, _, ok, err = ReadMirror("", "h1", cu1)
	require.NoError(t, err)
	assert.False(t, ok, "no mirror configured")
	for _, bad := range [][2]string{{"..", cu1}, {"h1", "../x"}, {"h/1", cu1}, {"h1", ""}} {
		_, _, _, err := ReadMirror(dir, bad[0], bad[1])
		assert.Error(t, err, "%q", bad)
	}
}
