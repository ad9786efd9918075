package main

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// /dev/null is a character device but no terminal: a script run with
// </dev/null must not be asked to confirm.
func TestTerminalIsNotJustACharacterDevice(t *testing.T) {
	null, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer null.Close()
	st, err := null.Stat()
	require.NoError(t, err)
	require.NotZero(t, st.Mode()&os.ModeCharDevice, "the premise: /dev/null is a character device")
	assert.False(t, terminal(null))
	f, err := os.CreateTemp(t.TempDir(), "x")
	require.NoError(t, err)
	defer f.Close()
	assert.False(t, terminal(f))
	assert.True(t, terminal(ttyReader{}))

	if pt, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err == nil {
		defer pt.Close()
		assert.True(t, terminal(pt), "a pseudo-terminal is a terminal")
	}
}
