package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// openInheritable opens a file without close-on-exec, as flock(1) leaves
// its lock descriptor for the command it runs.
func openInheritable(t *testing.T) int {
	t.Helper()
	fd, err := unix.Open(filepath.Join(t.TempDir(), "lock"), unix.O_CREAT|unix.O_RDWR, 0o600)
	require.NoError(t, err)
	return fd
}

func TestInheritedDescriptorsAreMarkedThenClosed(t *testing.T) {
	fd := openInheritable(t)
	f, err := os.Open(os.DevNull) // Go's own: close-on-exec
	require.NoError(t, err)
	defer f.Close()
	assert.Contains(t, inheritedFDs(), fd)
	assert.NotContains(t, inheritedFDs(), int(f.Fd()))

	noInheritance()
	assert.NotContains(t, inheritedFDs(), fd, "marked close-on-exec")
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	require.NoError(t, err, "still open in this process")
	assert.NotZero(t, flags&unix.FD_CLOEXEC)
	require.NoError(t, unix.Close(fd))

	fd = openInheritable(t)
	closeInherited()
	_, err = unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	assert.ErrorIs(t, err, unix.EBADF, "closed")
	_, err = f.Stat()
	assert.NoError(t, err, "Go's own descriptors stay open")
	assert.False(t, slices.Contains(inheritedFDs(), fd))
}
