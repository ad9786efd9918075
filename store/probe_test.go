package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestProbeReportsAFullDisk fills a small tmpfs under the state file: the
// history stops being writable, and Probe must say so although a tiny
// write of its own would still succeed on a freed page. Freeing space and
// one successful write make it ready again.
func TestProbeReportsAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	require.NoError(t, unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m,mode=0700"))
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	s, err := Open(filepath.Join(dir, FileName), Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Probe(t0))

	fill := filepath.Join(dir, "fill")
	f, err := os.Create(fill)
	require.NoError(t, err)
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			require.ErrorIs(t, err, unix.ENOSPC)
			break
		}
	}
	require.NoError(t, f.Close())

	var appendErr error
	for i := range 10000 {
		if _, appendErr = s.Append(rec("a", "monitor", t0.Add(time.Duration(i)*time.Second))); appendErr != nil {
			break
		}
	}
	require.Error(t, appendErr, "the full disk refuses history at some point")
	err = s.Probe(t0)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the last write failed")
	assert.Contains(t, err.Error(), "no space left on device")
	assert.Error(t, s.Probe(t0), "a probe alone never clears the failure")

	require.NoError(t, os.Remove(fill))
	_, err = s.Append(rec("a", "monitor", t0))
	require.NoError(t, err)
	assert.NoError(t, s.Probe(t0), "one real write that succeeds clears it")
}

func TestProbeOnAClosedStore(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.Probe(t0))
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Probe(t0), ErrClosed)
}
