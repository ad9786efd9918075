package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/hypervisor"
)

// abortSlack is how long a cancelled migration may take past its deadline
// (abort call plus the job winding down), generous for a loaded machine.
const abortSlack = 45 * time.Second

// migClient is a driver client over h's unix socket (works while h's
// network is cut).
func migClient(t *testing.T, h lab.Host) *libvirt.Client {
	t.Helper()
	c, err := libvirt.New(libvirt.Config{Host: h.Name, Address: "unix:" + h.LibvirtSocket}, zerolog.New(os.Stderr).Level(zerolog.WarnLevel))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func migDomain(t *testing.T, ctx context.Context, c *libvirt.Client, name string) (hypervisor.Domain, bool) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	doms, err := c.Domains(cctx, true)
	require.NoError(t, err)
	for _, d := range doms {
		if d.Name == name {
			return d, true
		}
	}
	return hypervisor.Domain{}, false
}

// TestLiveMigrationDriverOnLab migrates running QEMU guests between two
// lab libvirtds with the driver alone: a shared-disk VM, then a local-disk
// VM with its storage copied.
func TestLiveMigrationDriverOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := startLab(t, ctx, lab.Config{Name: "chmig", Hosts: 2})
	h1, h2 := l.Hosts()[0], l.Hosts()[1]
	c1, c2 := migClient(t, h1), migClient(t, h2)

	vm, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "mig-shared", Shared: true})
	require.NoError(t, err)
	d, ok := migDomain(t, ctx, c1, vm.Name)
	require.True(t, ok)
	before := l.QEMUPIDs(h1)
	require.Len(t, before, 1)

	dest := "qemu+tcp://" + h2.MgmtAddr + "/system"
	data := "tcp://" + h2.MgmtAddr

	// The lab's shared directory is on a local file system: libvirt's
	// own check refuses, and nothing moves.
	mctx, mcancel := context.WithTimeout(ctx, 90*time.Second)
	err = c1.Migrate(mctx, hypervisor.Migration{UUID: d.UUID, DestURI: dest, DataURI: data}, nil)
	mcancel()
	require.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.Contains(t, err.Error(), "Migration without shared storage is unsafe")
	assert.Equal(t, before, l.QEMUPIDs(h1), "the refused migration left the guest alone")
	assert.Empty(t, l.QEMUPIDs(h2))

	var progress []hypervisor.MigrationProgress
	mctx, mcancel = context.WithTimeout(ctx, 90*time.Second)
	err = c1.Migrate(mctx, hypervisor.Migration{UUID: d.UUID, DestURI: dest, DataURI: data, AllowUnsafe: true},
		func(p hypervisor.MigrationProgress) { progress = append(progress, p) })
	mcancel()
	require.NoError(t, err)
	t.Logf("progress samples: %d", len(progress))
	assert.Empty(t, l.QEMUPIDs(h1), "no QEMU left on host1")
	assert.Len(t, l.QEMUPIDs(h2), 1, "the guest's QEMU runs on host2")
	_, still := migDomain(t, ctx, c1, vm.Name)
	assert.False(t, still, "undefined on host1")
	d2, ok := migDomain(t, ctx, c2, vm.Name)
	require.True(t, ok)
	assert.Equal(t, hypervisor.StateRunning, d2.State)
	assert.True(t, d2.Persistent)
	assert.True(t, strings.Contains(d2.XML, vm.Disk), "same disk")

	// A local-disk VM, its storage copied.
	lvm, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "mig-local"})
	require.NoError(t, err)
	ld, ok := migDomain(t, ctx, c1, lvm.Name)
	require.True(t, ok)
	mctx, mcancel = context.WithTimeout(ctx, 90*time.Second)
	err = c1.Migrate(mctx, hypervisor.Migration{UUID: ld.UUID, DestURI: dest, DataURI: data, CopyDisks: []string{"vda"}}, nil)
	mcancel()
	t.Logf("copy without a pool on the destination: %v", err)
	release, err := c2.PrepareCopyTargets(ctx, []string{"/var/lib/libvirt/images"})
	require.NoError(t, err)
	mctx, mcancel = context.WithTimeout(ctx, 90*time.Second)
	err = c1.Migrate(mctx, hypervisor.Migration{UUID: ld.UUID, DestURI: dest, DataURI: data, CopyDisks: []string{"vda"}}, nil)
	mcancel()
	require.NoError(t, err)
	require.NoError(t, release(ctx))
	ld2, ok := migDomain(t, ctx, c2, lvm.Name)
	require.True(t, ok)
	assert.Equal(t, hypervisor.StateRunning, ld2.State)
	_, err = os.Stat(filepath.Join(h2.Dir, "lib", "images", "mig-local.qcow2"))
	assert.NoError(t, err, "the copy exists on host2's local storage")

	// A slow copy (128 MiB of random data, 1 MiB/s asked) cancelled by its
	// deadline: the job is aborted, the guest stays on host1.
	svm, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "mig-slow", NoStart: true})
	require.NoError(t, err)
	slowDisk := filepath.Join(h1.Dir, "lib", "images", "mig-slow.qcow2")
	raw := filepath.Join(t.TempDir(), "random.raw")
	out, err := exec.CommandContext(ctx, "dd", "if=/dev/urandom", "of="+raw, "bs=1M", "count=128", "status=none").CombinedOutput()
	require.NoError(t, err, "%s", out)
	out, err = exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, slowDisk).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, l.StartVM(ctx, h1, svm.Name))
	sd, ok := migDomain(t, ctx, c1, svm.Name)
	require.True(t, ok)
	release, err = c2.PrepareCopyTargets(ctx, []string{"/var/lib/libvirt/images"})
	require.NoError(t, err)
	defer func() { _ = release(ctx) }()
	progress = nil
	var mu sync.Mutex
	mctx, mcancel = context.WithTimeout(ctx, 3*time.Second)
	t0 := time.Now()
	err = c1.Migrate(mctx, hypervisor.Migration{UUID: sd.UUID, DestURI: dest, DataURI: data, CopyDisks: []string{"vda"}, BandwidthMiBs: 1},
		func(p hypervisor.MigrationProgress) { mu.Lock(); progress = append(progress, p); mu.Unlock() })
	mcancel()
	took := time.Since(t0)
	t.Logf("cancelled migration returned after %v: %v", took, err)
	require.ErrorIs(t, err, hypervisor.ErrTimeout)
	assert.Contains(t, err.Error(), "migration aborted")
	assert.Less(t, took, 3*time.Second+abortSlack, "returned within the deadline plus the abort's bound")
	mu.Lock()
	t.Logf("progress: %+v", progress)
	assert.NotEmpty(t, progress, "progress was reported while the copy ran")
	mu.Unlock()
	st, err := l.DomainState(ctx, h1, svm.Name)
	require.NoError(t, err)
	assert.Equal(t, "running", st, "the aborted migration left the guest running on host1")
	_, on2 := migDomain(t, ctx, c2, svm.Name)
	assert.False(t, on2, "nothing of it on host2")
}
