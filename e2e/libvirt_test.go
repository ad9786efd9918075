package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/hypervisor"
)

// TestLibvirtDriverOnLabHosts drives real libvirtds running real QEMU guests.
func TestLibvirtDriverOnLabHosts(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := startLab(t, ctx, lab.Config{Name: "chdrv", Hosts: 2})
	h1, h2 := l.Hosts()[0], l.Hosts()[1]
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)

	vm, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "drv1", Shared: true, NoStart: true})
	require.NoError(t, err)

	// Over the host's unix socket, from the root namespace.
	c1, err := libvirt.New(libvirt.Config{Host: h1.Name, Address: "unix:" + h1.LibvirtSocket}, log)
	require.NoError(t, err)
	defer c1.Close()

	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 20*time.Second) }
	cctx, ccancel := call()
	doms, err := c1.Domains(cctx, true)
	ccancel()
	require.NoError(t, err)
	require.Len(t, doms, 1)
	d := doms[0]
	assert.Equal(t, "drv1", d.Name)
	assert.Equal(t, hypervisor.StateShutoff, d.State)
	assert.True(t, d.Persistent)
	assert.Contains(t, d.XML, vm.Disk, "inactive XML carries the disk")

	evCtx, evCancel := context.WithCancel(ctx)
	defer evCancel()
	events := c1.Events(evCtx)
	first := <-events
	assert.True(t, first.Resubscribed, "the first event tells the consumer to re-list")

	cctx, ccancel = call()
	require.NoError(t, c1.Start(cctx, d.UUID))
	ccancel()
	assert.NotEmpty(t, l.QEMUPIDs(h1), "a real QEMU runs on host 1")
	waitEvent(t, events, d.UUID, hypervisor.EventStarted)
	st, err := c1.State(ctx, d.UUID)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.StateRunning, st)

	// The same disk on host 2 is refused by QEMU's lock: the split-brain
	// guard surfaces as a conflict.
	c2tcp, err := libvirt.New(libvirt.Config{Host: h2.Name, Address: "unix:" + h2.LibvirtSocket}, log)
	require.NoError(t, err)
	defer c2tcp.Close()
	uuid2, err := c2tcp.Define(ctx, d.XML) // the saved definition, as a rebuild does
	require.NoError(t, err)
	assert.Equal(t, d.UUID, uuid2)
	err = c2tcp.Start(ctx, uuid2)
	assert.ErrorIs(t, err, hypervisor.ErrConflict)
	assert.Contains(t, err.Error(), lab.LockErrorText)

	stats, err := c1.NodeStats(ctx)
	require.NoError(t, err)
	assert.Positive(t, stats.CPUs)
	assert.Positive(t, stats.MemoryKiB)
	assert.Positive(t, stats.BusyNs)
	assert.LessOrEqual(t, stats.FreeKiB, stats.MemoryKiB)

	require.NoError(t, c1.Destroy(ctx, d.UUID))
	waitEvent(t, events, d.UUID, hypervisor.EventStopped)
	assert.Empty(t, l.QEMUPIDs(h1))
	err = c1.Destroy(ctx, d.UUID)
	assert.ErrorIs(t, err, hypervisor.ErrInvalid, "destroying a stopped domain is an invalid operation, not a crash")
	require.NoError(t, c1.Undefine(ctx, d.UUID))
	waitEvent(t, events, d.UUID, hypervisor.EventUndefined)
	_, err = c1.Domain(ctx, d.UUID)
	assert.ErrorIs(t, err, hypervisor.ErrNotFound)

	// Over TCP from the controller's namespace, as the daemon will: a
	// healthy host answers, a cut-off host costs at most the deadline.
	require.NoError(t, lab.InNetns(l.Controller().Netns, func() error {
		c, err := libvirt.New(libvirt.Config{Host: h2.Name, Address: h2.MgmtAddr + ":16509"}, log)
		if err != nil {
			return err
		}
		defer c.Close()
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		defer pcancel()
		if err := c.Ping(pctx); err != nil {
			return err
		}
		require.NoError(t, l.CutNetwork(ctx, h2))
		defer func() { assert.NoError(t, l.RestoreNetwork(ctx, h2)) }()
		for _, op := range []func(context.Context) error{
			c.Ping, // on the existing connection
			func(ctx context.Context) error { _, err := c.Domains(ctx, false); return err },
		} {
			dctx, dcancel := context.WithTimeout(ctx, time.Second)
			start := time.Now()
			err := op(dctx)
			dcancel()
			assert.Error(t, err)
			assert.True(t, hypervisor.KindOf(err) == hypervisor.KindTimeout || hypervisor.KindOf(err) == hypervisor.KindUnreachable, "got %v", err)
			assert.Less(t, time.Since(start), 1500*time.Millisecond, "a call to a cut-off host returns at its deadline")
		}
		return nil
	}))
}

func waitEvent(t *testing.T, events <-chan hypervisor.Event, uuid string, kind hypervisor.EventKind) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			require.True(t, ok, "event stream closed")
			if ev.UUID == uuid && ev.Kind == kind {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event for %s", kind, uuid)
		}
	}
}
