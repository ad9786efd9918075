package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// TestInventoryCaptureOnLab captures a real libvirtd's domains into the
// journal and the shared-storage mirror, then proves the mirror file is a
// definition another host accepts and runs, as an operator rebuilding by
// hand would use it.
func TestInventoryCaptureOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := startLab(t, ctx, lab.Config{Name: "chinv", Hosts: 2})
	h1, h2 := l.Hosts()[0], l.Hosts()[1]
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)

	st, err := store.Open(filepath.Join(t.TempDir(), store.FileName), store.Options{})
	require.NoError(t, err)
	defer st.Close()
	clients := map[string]*libvirt.Client{}
	for _, h := range l.Hosts() {
		c, err := libvirt.New(libvirt.Config{Host: h.Name, Address: "unix:" + h.LibvirtSocket}, log)
		require.NoError(t, err)
		defer c.Close()
		clients[h.Name] = c
	}
	mirror := filepath.Join(l.SharedDir(), "chime-fence", "domains")
	capt, err := evacuator.NewCapture(evacuator.CaptureConfig{
		Interval:  time.Hour, // only the start and events capture in this test
		MirrorDir: mirror,
		Storage:   evacuator.StorageRules{SharedPaths: []string{l.SharedDir()}},
	}, evacuator.CaptureDeps{
		Store:      st,
		Hypervisor: func(host string) (evacuator.Hypervisor, error) { return clients[host], nil },
		Healthy:    func(host string) bool { return host == h1.Name },
		Log:        log,
	})
	require.NoError(t, err)
	require.NoError(t, capt.SetHosts([]string{h1.Name, h2.Name}))

	vm, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "inv1", Shared: true})
	require.NoError(t, err)
	require.NoError(t, capt.CaptureNow(ctx, h1.Name))
	recs, err := st.Inventory(h1.Name)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	rec := recs[0]
	assert.Equal(t, "inv1", rec.Name)
	assert.True(t, rec.Active)
	assert.Contains(t, rec.XML, vm.Disk)
	assert.NotContains(t, rec.XML, "<domain type='qemu' id=", "the inactive definition, not the live one")

	file := filepath.Join(mirror, h1.Name, rec.UUID+".xml")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, rec.XML, string(b), "the mirror holds exactly what the journal holds")

	load, ok := capt.HostLoad(h1.Name)
	require.True(t, ok)
	assert.Positive(t, load.CPUs)
	assert.Equal(t, 1, load.UsedVCPUs)
	assert.Equal(t, int64(64), load.UsedMemoryMiB)
	assert.Equal(t, -1.0, load.Load, "one sample")

	// h2 is not healthy here: never captured.
	require.ErrorIs(t, capt.CaptureNow(ctx, h2.Name), evacuator.ErrCaptureUnhealthy)

	// Lifecycle events drive captures while Run runs.
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- capt.Run(runCtx) }()
	defer func() {
		stop()
		assert.NoError(t, <-done)
	}()
	vm2, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "inv2", Shared: true, NoStart: true})
	require.NoError(t, err)
	var uuid2 string
	waitInventory(t, 30*time.Second, "inv2 captured after its defined event", func() bool {
		recs, err := st.Inventory(h1.Name)
		require.NoError(t, err)
		for _, r := range recs {
			if r.Name == vm2.Name {
				uuid2 = r.UUID
				return true
			}
		}
		return false
	})
	_, err = l.Virsh(ctx, h1, "undefine", vm2.Name)
	require.NoError(t, err)
	waitInventory(t, 30*time.Second, "inv2 removed after its undefined event", func() bool {
		recs, err := st.Inventory(h1.Name)
		require.NoError(t, err)
		_, statErr := os.Stat(filepath.Join(mirror, h1.Name, uuid2+".xml"))
		return len(recs) == 1 && os.IsNotExist(statErr)
	})

	// The host "dies" (the VM stops); an operator defines the mirrored XML
	// on h2 with virsh and starts it there, on the same shared disk.
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	require.NoError(t, clients[h1.Name].Destroy(cctx, rec.UUID))
	ccancel()
	_, err = l.Virsh(ctx, h2, "define", file)
	require.NoError(t, err)
	out, err := l.Virsh(ctx, h2, "domuuid", "inv1")
	require.NoError(t, err)
	assert.Equal(t, rec.UUID, strings.TrimSpace(out))
	require.NoError(t, l.StartVM(ctx, h2, "inv1"))
	state, err := l.DomainState(ctx, h2, "inv1")
	require.NoError(t, err)
	assert.Equal(t, "running", state)
	assert.NotEmpty(t, l.QEMUPIDs(h2), "a real QEMU runs the rebuilt VM on h2")
	cctx, ccancel = context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	d, err := clients[h2.Name].Domain(cctx, rec.UUID)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.StateRunning, d.State)
}

func waitInventory(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
