package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/identity"
)

func TestAgentCredentialCommand(t *testing.T) {
	dir := t.TempDir()
	file := daemonConfig(t, dir, freePort(t))

	code, out, errOut := runCLI("agent-credential", "h1", "-c", file)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, identity.AgentCredential(testClusterSecret, "h1")+"\n", out)

	code, out, errOut = runCLI("agent-credential", "h1", "--daemon-side", "-c", file)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, identity.DaemonCredential(testClusterSecret, "h1")+"\n", out)

	dest := filepath.Join(dir, "h2.credential")
	code, out, errOut = runCLI("agent-credential", "h2", "--out", dest, "-c", file)
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, out, "written to the file, not stdout")
	st, err := os.Stat(dest)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	b, err := os.ReadFile(dest)
	require.NoError(t, err)
	assert.Equal(t, identity.AgentCredential(testClusterSecret, "h2")+"\n", string(b))

	code, out, errOut = runCLI("agent-credential", "h9", "-c", file)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, `host "h9" is not in`)

	// A cluster secret shorter than 32 bytes is refused, not used.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.secret"), []byte("short-secret\n"), 0o600))
	code, out, errOut = runCLI("agent-credential", "h1", "-c", file)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "at least 32")
	assert.False(t, strings.Contains(errOut, "short-secret"), "the secret is never echoed")
}
