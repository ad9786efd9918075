package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoScript runs `make demo`'s story (scripts/demo.sh) as it ships,
// on a fresh machine: scripts/fresh-machine.sh runs it in a private mount
// namespace where /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
// /var/log/libvirt and /run/libvirt do not exist (Debian's
// libvirt-daemon-system, which the lab does not install, creates them), so
// a lab that depends on them fails here and not on a new user's machine.
// The script checks its own promises (a verified fence, every shared-disk
// VM running exactly once elsewhere, the local-disk one reported, stale
// copies cleaned up, the host left drained, no fence for a dead agent, no
// password printed, signed alerts) and exits non-zero on any broken one;
// this test keeps it from drifting from the daemon's output.
func TestDemoScript(t *testing.T) {
	needLab(t)
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	build := exec.Command("go", "build", "-o", filepath.Join(root, "bin")+"/", "./cmd/...")
	build.Dir = root
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "fresh-machine.sh"), "bash", filepath.Join(root, "scripts", "demo.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "TERM=dumb")
	cmd.WaitDelay = 30 * time.Second // the script's own trap tears the lab down
	b, err := cmd.CombinedOutput()
	text := string(b)
	require.NoError(t, err, "demo.sh failed:\n%s", tail(text, 8000))
	for _, want := range []string{
		"fresh-machine: none of /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt exists here",
		"fencing → verified",
		"scratch: not evacuable",
		"no shared disk was named by two QEMU processes",
		"the password file's content appears nowhere in the output",
	} {
		assert.Contains(t, text, want)
	}
	assert.NotContains(t, strings.ToLower(text), "demo failed")
	t.Logf("demo timeline:\n%s", grepLines(text, "+", "measured"))
}

// grepLines keeps the lines of s that start with any prefix (after spaces).
func grepLines(s string, prefixes ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(strings.TrimSpace(l), p) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
