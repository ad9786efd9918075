package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/chimestack/chime-fence/e2e/blackhole"
	"github.com/chimestack/chime-fence/e2e/lab"
)

// TestChimeLabCLI drives bin/chime-lab as an operator does: up started
// while holding a lock (as under flock(1)) leaves no descriptor of it in the
// keeper; the lab's addresses are unreachable from the root namespace;
// exec and env reach the controller namespace with the lab's chime-fence
// config; down removes the routes and the index entry.
func TestChimeLabCLI(t *testing.T) {
	needLab(t)
	require.Empty(t, blackhole.Live(), "another lab or bench is up; run lab tests one at a time (flock)")
	bin := filepath.Join(t.TempDir(), "chime-lab")
	b, err := exec.Command("go", "build", "-o", bin, "github.com/chimestack/chime-fence/cmd/chime-lab").CombinedOutput()
	require.NoError(t, err, "go build: %s", b)
	cf := buildChimeFence(t)
	dir := t.TempDir()
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(bin, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	t.Cleanup(func() {
		out, err := cli("down", "--dir", dir)
		assert.NoError(t, err, "down: %s", out)
	})

	// The lock is held on an inheritable descriptor, as flock(1) passes it.
	lockPath := filepath.Join(t.TempDir(), "held.lock")
	lockf, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	require.NoError(t, err)
	require.NoError(t, unix.Flock(int(lockf.Fd()), unix.LOCK_EX))
	up := exec.Command(bin, "up", "--dir", dir, "--name", "chlabc", "--hosts", "1", "--vms", "1")
	up.ExtraFiles = []*os.File{lockf}
	upOut, err := up.CombinedOutput()
	require.NoError(t, err, "up: %s", upOut)
	require.NoError(t, lockf.Close())

	pb, err := os.ReadFile(filepath.Join(dir, "keeper.pid"))
	require.NoError(t, err)
	keeper, err := strconv.Atoi(strings.TrimSpace(string(pb)))
	require.NoError(t, err)
	fds, err := os.ReadDir("/proc/" + strconv.Itoa(keeper) + "/fd")
	require.NoError(t, err)
	require.NotEmpty(t, fds)
	for _, fd := range fds {
		target, _ := os.Readlink("/proc/" + strconv.Itoa(keeper) + "/fd/" + fd.Name())
		assert.NotEqual(t, lockPath, target, "keeper %d holds the caller's lock as fd %s", keeper, fd.Name())
	}
	again, err := os.Open(lockPath)
	require.NoError(t, err)
	defer again.Close()
	assert.NoError(t, unix.Flock(int(again.Fd()), unix.LOCK_EX|unix.LOCK_NB), "the lock is free once up has returned")

	// The root namespace cannot reach the lab.
	for _, a := range []string{"10.77.0.2", "10.77.0.11", "10.78.0.11"} {
		got, _ := exec.Command("ip", "route", "get", a).CombinedOutput()
		assert.Contains(t, string(got), "No route to host", "ip route get %s", a)
	}

	out, err := cli("config", "--dir", dir)
	require.NoError(t, err, out)
	cfgPath := filepath.Join(dir, "chime-fence.yaml")
	assert.Equal(t, cfgPath, out, "config writes D/chime-fence.yaml by default")
	out, err = cli("env", "--lab", "chlabc")
	require.NoError(t, err, out)
	assert.Equal(t, "ip netns exec chlabc-ctl env CHIME_LAB=chlabc CHIME_FENCE_CONFIG="+cfgPath+
		" CHIME_FENCE_API_TOKEN_FILE="+filepath.Join(dir, "tokens", "api.token")+
		" CHIME_LAB_AGENT_SECRET_FILE="+filepath.Join(dir, "tokens", "agent.secret"), out)

	out, err = cli("exec", "--lab", "chlabc", "--", "sh", "-c", `echo "config=$CHIME_FENCE_CONFIG"; ip -4 -o addr show dev eth0`)
	require.NoError(t, err, out)
	assert.Contains(t, out, "config="+cfgPath)
	assert.Contains(t, out, "inet 10.77.0.2/24", "runs in the controller namespace")
	// chime-fence finds the lab's config through CHIME_FENCE_CONFIG, and
	// reaches a lab address from there.
	out, err = cli("exec", "--lab", "chlabc", "--", cf, "config", "show", "--host", "host1")
	require.NoError(t, err, out)
	assert.Contains(t, out, "10.77.0.11")
	out, err = cli("exec", "--lab", "chlabc", "--", "ping", "-c", "1", "-W", "2", "10.77.0.11")
	assert.NoError(t, err, "ping host1 from the controller: %s", out)
	if len(lab.Running()) == 1 {
		out, err = cli("exec", "--", "true")
		assert.NoError(t, err, "exec without --lab finds the only lab up: %s", out)
	}
	out, err = cli("exec", "--lab", "nosuchlab", "--", "true")
	assert.Error(t, err)
	assert.Contains(t, out, `no lab "nosuchlab" is up`)

	out, err = cli("down", "--dir", dir)
	require.NoError(t, err, "down: %s", out)
	got, _ := exec.Command("ip", "route", "get", "10.77.0.2").CombinedOutput()
	assert.NotContains(t, string(got), "No route to host", "the route went with the lab")
	_, err = os.Lstat(filepath.Join(lab.IndexDir, "chlabc"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	assert.Empty(t, lab.Leftovers("chlabc", filepath.Join(dir, "lab")))
}
