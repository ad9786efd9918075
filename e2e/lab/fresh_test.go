package lab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hidden are the directories a fresh Debian machine lacks until
// libvirt-daemon-system is installed (and /etc/libvirt, which other libvirt
// packages bring).
var hidden = []string{"/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", "/run/libvirt"}

// TestLabOnFreshMachine starts a lab, with a VM on a host's local disk
// (/var/lib/libvirt/images inside the host), in a private mount namespace
// where none of the hidden directories exists (scripts/fresh-machine.sh),
// and closes it cleanly there. The machine's own directories are the same
// before and after: the lab created nothing on its filesystems.
func TestLabOnFreshMachine(t *testing.T) {
	skipUnlessLab(t)
	exists := func() map[string]bool {
		m := map[string]bool{}
		for _, d := range hidden {
			_, err := os.Lstat(d)
			m[d] = err == nil
		}
		return m
	}
	before := exists()
	script, err := filepath.Abs("../../scripts/fresh-machine.sh")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, script, os.Args[0], "-test.run=^TestHelperFreshLab$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "CHIME_LAB_TEST_FRESH="+t.TempDir())
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	require.NoError(t, err)
	assert.Contains(t, string(out), "fresh-machine: none of /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt exists here")
	assert.Contains(t, string(out), "--- PASS: TestHelperFreshLab")
	assert.Equal(t, before, exists(), "the lab created or removed one of the machine's directories")
	assert.Empty(t, Leftovers("chlabn", ""))
}

// TestHelperFreshLab is the child of TestLabOnFreshMachine.
func TestHelperFreshLab(t *testing.T) {
	dir := os.Getenv("CHIME_LAB_TEST_FRESH")
	if dir == "" {
		t.Skip("helper process for TestLabOnFreshMachine")
	}
	for _, d := range hidden {
		_, err := os.Lstat(d)
		require.ErrorIs(t, err, os.ErrNotExist, "%s is not hidden", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := startLab(t, ctx, Config{Name: "chlabn", Dir: dir, Hosts: 1})
	h := l.Hosts()[0]
	_, err := l.CreateVM(ctx, h, VMSpec{Name: "fresh1"})
	require.NoError(t, err)
	out, err := l.Virsh(ctx, h, "domstate", "fresh1")
	require.NoError(t, err)
	assert.Contains(t, out, "running")
	console, err := os.ReadFile(filepath.Join(h.Dir, "console.log"))
	require.NoError(t, err)
	assert.Contains(t, string(console), "/var/lib/libvirt made in a tmpfs over /var/lib", "the host made its own mount point")
}
