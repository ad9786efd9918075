package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

func runOnce(t *testing.T, j *job) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return j.run(ctx)
}

func TestInterfaceCheck(t *testing.T) {
	sys := t.TempDir()
	for name, state := range map[string]string{"eth0": "up\n", "eth1": "down\n", "lo": "unknown\n"} {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, name), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(sys, name, "operstate"), []byte(state), 0o644))
	}
	assert.NoError(t, runOnce(t, interfaceJob(sys, "eth0")).err)
	assert.EqualError(t, runOnce(t, interfaceJob(sys, "eth1")).err, `interface eth1 operstate is "down"`)
	assert.EqualError(t, runOnce(t, interfaceJob(sys, "lo")).err, `interface lo operstate is "unknown"`)
	assert.EqualError(t, runOnce(t, interfaceJob(sys, "bond7")).err, "interface bond7 does not exist")
}

func TestStorageCheck(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, runOnce(t, storageJob(dir, "n1")).err)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left, "the probe file is removed")

	missing := filepath.Join(dir, "not-mounted")
	err = runOnce(t, storageJob(missing, "n1")).err
	require.Error(t, err)
	assert.Contains(t, err.Error(), filepath.Join(missing, ".chime-agent-probe-n1"), "the error names the file")

	if os.Geteuid() != 0 { // root writes anywhere
		ro := filepath.Join(dir, "ro")
		require.NoError(t, os.Mkdir(ro, 0o555))
		assert.ErrorIs(t, runOnce(t, storageJob(ro, "n1")).err, os.ErrPermission)
	}
}

// TestCheckerTimesOutAndNeverBlocks: a check stuck in a syscall (it ignores
// its context, like an NFS write) reports "timed out" at its deadline,
// snapshot never waits for it, and it is not started again while stuck.
func TestCheckerTimesOutAndNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	var runs atomic.Int32
	stuckJob := func() *job {
		return &job{name: "/mnt/nfs", kind: jobStorage, run: func(context.Context) result {
			runs.Add(1)
			<-release // ignores ctx on purpose
			return result{}
		}}
	}
	stuck := stuckJob()
	sys := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(sys, "eth0"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, "eth0", "operstate"), []byte("up\n"), 0o644))
	c := newChecker([]*job{interfaceJob(sys, "eth0"), stuck}, 50*time.Millisecond, nil)

	h, _ := c.snapshot()
	assert.Equal(t, []heartbeat.Check{{Name: "/mnt/nfs", OK: false, Detail: "not checked yet"}}, h.Storage)

	// With a deadline far away, round and snapshot return while the check
	// is stuck: neither waits for a check.
	patient := newChecker([]*job{stuckJob()}, time.Hour, nil)
	patient.round(context.Background())
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 5*time.Second, time.Millisecond)
	h, _ = patient.snapshot()
	assert.Equal(t, "not checked yet", h.Storage[0].Detail)
	select {
	case <-patient.ready:
		t.Fatal("ready before the check returned or timed out")
	default:
	}

	ctx := context.Background()
	runs.Store(0)
	c.round(ctx)
	select {
	case <-c.ready:
	case <-time.After(5 * time.Second):
		t.Fatal("the first round never settled")
	}
	h, _ = c.snapshot()
	assert.Equal(t, []heartbeat.Check{{Name: "eth0", OK: true}}, h.Interfaces)
	require.Len(t, h.Storage, 1)
	assert.False(t, h.Storage[0].OK)
	assert.Equal(t, "timed out after 50ms", h.Storage[0].Detail)
	assert.Equal(t, 1, h.IOErrors, "a storage probe that timed out counts as an I/O error")
	assert.Contains(t, h.IODetail, "storage /mnt/nfs: timed out")

	c.round(ctx)
	c.round(ctx)
	assert.Equal(t, int32(1), runs.Load(), "a stuck check is not started again")

	// The daemon got the count: the next heartbeat reports only new ones.
	c.sent(1)
	h, _ = c.snapshot()
	assert.Zero(t, h.IOErrors)
	assert.Empty(t, h.IODetail)

	close(release)
	require.Eventually(t, func() bool {
		c.round(ctx)
		return runs.Load() == 2
	}, 5*time.Second, 10*time.Millisecond, "started again once it returned")
	require.Eventually(t, func() bool { h, _ = c.snapshot(); return h.Storage[0].OK }, 5*time.Second, 10*time.Millisecond)
}

type pingHV struct {
	pingErr error
	doms    []hypervisor.Domain
}

func (p pingHV) Ping(context.Context) error { return p.pingErr }
func (p pingHV) Domains(context.Context, bool) ([]hypervisor.Domain, error) {
	return p.doms, nil
}
func (p pingHV) Start(context.Context, string) error { return nil }

func TestCheckerLibvirtDomains(t *testing.T) {
	var observed [][]hypervisor.Domain
	doms := []hypervisor.Domain{{UUID: u1, Name: "vm1", State: hypervisor.StateShutoff, Reason: "crashed"}}
	c := newChecker([]*job{libvirtJob(pingHV{doms: doms})}, time.Second, func(d []hypervisor.Domain) { observed = append(observed, d) })
	c.round(context.Background())
	<-c.ready
	h, got := c.snapshot()
	assert.Equal(t, heartbeat.Check{Name: "libvirtd", OK: true}, h.Libvirt)
	assert.Equal(t, []heartbeat.Domain{{UUID: u1, Name: "vm1", State: hypervisor.StateShutoff, Reason: "crashed"}}, got)
	assert.Equal(t, [][]hypervisor.Domain{doms}, observed)

	empty := newChecker([]*job{libvirtJob(pingHV{})}, time.Second, nil)
	empty.round(context.Background())
	<-empty.ready
	_, got = empty.snapshot()
	assert.NotNil(t, got, "no domains is an empty list, not unknown")
	assert.Empty(t, got)

	down := newChecker([]*job{libvirtJob(pingHV{pingErr: errors.New("host n1: libvirt: connect: host-unreachable")})}, time.Second, nil)
	down.round(context.Background())
	<-down.ready
	h, got = down.snapshot()
	assert.Nil(t, got, "libvirtd down: domains unknown (null), never an empty list")
	assert.False(t, h.Libvirt.OK)
	assert.Contains(t, h.Libvirt.Detail, "host-unreachable")
}
