package e2e

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/migration"
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
	// libvirt creates the copy only inside a storage pool of the
	// destination; the lab's hosts define none.
	require.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.Contains(t, err.Error(), "no storage pool with matching target path '/var/lib/libvirt/images'")
	st, err := l.DomainState(ctx, h1, lvm.Name)
	require.NoError(t, err)
	assert.Equal(t, "running", st, "the refused copy left the guest on host1")
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
	st, err = l.DomainState(ctx, h1, svm.Name)
	require.NoError(t, err)
	assert.Equal(t, "running", st, "the aborted migration left the guest running on host1")
	_, on2 := migDomain(t, ctx, c2, svm.Name)
	assert.False(t, on2, "nothing of it on host2")
	_, serr := os.Stat(filepath.Join(h2.Dir, "lib", "images", "mig-slow.qcow2"))
	t.Logf("partial copy left on host2 after the abort: %v", serr == nil)
}

// migStorageNet links two lab hosts directly with a second network
// (10.79.0.0/24 on "stor0", like a storage network), which the lab does
// not build: its hosts have one NIC, eth0 on the management switch, and
// CutNetwork takes that down. Lab libvirtds listen on their management
// address only (listen_addr), so a DNAT in the destination's namespace
// lets its libvirtd answer on the storage address too, as one listening on
// every address would. Everything lives in the lab's namespaces and goes
// with them; the link is also deleted at cleanup.
func migStorageNet(t *testing.T, ctx context.Context, l *lab.Lab, a, b lab.Host) (addrA, addrB string) {
	t.Helper()
	addrA, addrB = "10.79.0.1"+a.Name[len(a.Name)-1:], "10.79.0.1"+b.Name[len(b.Name)-1:]
	peerA, peerB := l.Name()+"s"+a.Name[len(a.Name)-1:], l.Name()+"s"+b.Name[len(b.Name)-1:]
	run := func(args ...string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		require.NoError(t, err, "%v: %s", args, out)
	}
	run("ip", "link", "add", peerA, "type", "veth", "peer", "name", peerB)
	t.Cleanup(func() { _ = exec.Command("ip", "-n", a.Netns, "link", "del", "stor0").Run() })
	run("ip", "link", "set", peerA, "netns", a.Netns, "name", "stor0")
	run("ip", "link", "set", peerB, "netns", b.Netns, "name", "stor0")
	for _, x := range []struct{ ns, addr string }{{a.Netns, addrA}, {b.Netns, addrB}} {
		run("ip", "-n", x.ns, "addr", "add", x.addr+"/24", "dev", "stor0")
		run("ip", "-n", x.ns, "link", "set", "stor0", "up")
	}
	rules := fmt.Sprintf(`table ip chimemig {
	chain pre { type nat hook prerouting priority -100; ip daddr %s tcp dport %d dnat to %s; }
}
`, addrB, lab.LibvirtPort, b.MgmtAddr)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", b.Netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "nft: %s", out)
	return addrA, addrB
}

// TestAgentMigrateOnLab: host1's management network is cut; chime-agent
// migrate, run on host1, refuses the dead interface, validates and prints
// the plan over the storage network without moving anything, then with
// --confirm live-migrates a shared-disk VM and a local-disk VM (its disk
// copied) to host2 over that network, and records both for the daemon.
func TestAgentMigrateOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bin := buildChimeAgent(t)
	l := startLab(t, ctx, lab.Config{Name: "chmga", Hosts: 2})
	h1, h2 := l.Hosts()[0], l.Hosts()[1]
	_, dest := migStorageNet(t, ctx, l, h1, h2)

	shared, err := l.CreateVM(ctx, h1, lab.VMSpec{Name: "agm-shared", Shared: true})
	require.NoError(t, err)
	_, err = l.CreateVM(ctx, h1, lab.VMSpec{Name: "agm-local"})
	require.NoError(t, err)
	require.Len(t, l.QEMUPIDs(h1), 2)
	c1, c2 := migClient(t, h1), migClient(t, h2)
	sd, ok := migDomain(t, ctx, c1, "agm-shared")
	require.True(t, ok)
	ld, ok := migDomain(t, ctx, c1, "agm-local")
	require.True(t, ok)

	require.NoError(t, l.CutNetwork(ctx, h1))
	stateDir := "/var/lib/libvirt/chime-agent" // h1.Dir/lib/chime-agent from here
	migrateCLI := func(args ...string) (string, string, int) {
		t.Helper()
		cmd, err := l.HostCommand(ctx, h1, bin, append([]string{"migrate", "--host", h1.Name, "--state-dir", stateDir,
			"--shared-path", l.SharedDir()}, args...)...)
		require.NoError(t, err)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		t.Logf("chime-agent migrate %v: exit %d\n%s%s", args, code, stdout.String(), stderr.String())
		return stdout.String(), stderr.String(), code
	}

	// The management interface is dead: refused before anything else.
	out, errOut, code := migrateCLI("--interface", "eth0", "--dest", h2.MgmtAddr, "--all")
	assert.Equal(t, 1, code)
	assert.Regexp(t, `cannot migrate over eth0: interface eth0 has no link \(operstate [a-z]+\)`, out+errOut)

	// Dry run over the storage network: the plan, nothing moved.
	out, _, code = migrateCLI("--interface", "stor0", "--dest", dest, "--all")
	require.Equal(t, 0, code)
	assert.Contains(t, out, "path: stor0 10.79.0.11 -> "+dest)
	assert.Regexp(t, `would migrate\s+agm-shared\s+`+sd.UUID, out)
	assert.Regexp(t, `not moved\s+agm-local\s+`+ld.UUID+`\s+has local disks`, out)
	assert.Len(t, l.QEMUPIDs(h1), 2, "a dry run moves nothing")
	assert.Empty(t, l.QEMUPIDs(h2))

	// For real, local-disk VMs included. The lab's shared directory is on
	// a local file system, which libvirt's own check refuses without
	// --allow-unsafe (measured: "Migration without shared storage is
	// unsafe"); on NFS or Ceph it is not needed.
	out, _, code = migrateCLI("--interface", "stor0", "--dest", dest, "--all", "--migrate-local-disk-vms", "--allow-unsafe", "--confirm")
	require.Equal(t, 0, code)
	assert.Regexp(t, `migrated\s+agm-shared\s+`+sd.UUID+`\s+running on `+dest, out)
	assert.Regexp(t, `migrated\s+agm-local\s+`+ld.UUID+`\s+running on `+dest, out)
	assert.Empty(t, l.QEMUPIDs(h1), "no QEMU left on host1")
	assert.Len(t, l.QEMUPIDs(h2), 2, "both guests run on host2")
	doms1, err := l.Domains(ctx, h1)
	require.NoError(t, err)
	assert.Empty(t, doms1, "both undefined on host1")
	for _, name := range []string{"agm-shared", "agm-local"} {
		d, ok := migDomain(t, ctx, c2, name)
		require.True(t, ok, name)
		assert.Equal(t, hypervisor.StateRunning, d.State, name)
		assert.True(t, d.Persistent, name)
	}
	d, _ := migDomain(t, ctx, c2, "agm-shared")
	assert.Contains(t, d.XML, shared.Disk, "the same shared disk")
	_, err = os.Stat(filepath.Join(h2.Dir, "lib", "images", "agm-local.qcow2"))
	assert.NoError(t, err, "the local disk was copied to host2")

	recs, err := agent.PendingMigrations(filepath.Join(h1.Dir, "lib", "chime-agent"))
	require.NoError(t, err)
	require.Len(t, recs, 2, "both migrations recorded for the daemon")
	for _, r := range recs {
		assert.True(t, r.Moved)
		assert.Equal(t, dest, r.Dest)
		assert.Equal(t, "stor0", r.Interface)
	}
}

// TestHostMigrateOnLab runs the daemon's path on real lab hosts: plan the
// whole of host1 (capacity first) and execute it with the real driver,
// the scheduler spreading the VMs over host2 and host3, each move read
// back and handed to the Moved hook.
func TestHostMigrateOnLab(t *testing.T) {
	needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := startLab(t, ctx, lab.Config{Name: "chmgh", Hosts: 3})
	hs := l.Hosts()
	clients := map[string]*libvirt.Client{}
	for _, h := range hs {
		clients[h.Name] = migClient(t, h)
	}
	for _, n := range []string{"hm-a", "hm-b"} {
		_, err := l.CreateVM(ctx, hs[0], lab.VMSpec{Name: n, Shared: true})
		require.NoError(t, err)
	}
	_, err := l.CreateVM(ctx, hs[0], lab.VMSpec{Name: "hm-local"})
	require.NoError(t, err)
	require.Len(t, l.QEMUPIDs(hs[0]), 3)

	doms, err := clients[hs[0].Name].Domains(ctx, true)
	require.NoError(t, err)
	var req migration.Request
	req.Source = hs[0].Name
	req.Storage = evacuator.StorageRules{SharedPaths: []string{l.SharedDir()}}
	for _, d := range doms {
		req.Domains = append(req.Domains, migration.Domain{XML: d.XML, State: d.State})
	}
	for _, h := range hs {
		st, err := clients[h.Name].NodeStats(ctx)
		require.NoError(t, err)
		req.Hosts = append(req.Hosts, evacuator.Candidate{Name: h.Name, Eligible: true, CPUs: st.CPUs,
			MemoryMiB: int64(st.MemoryKiB / 1024), FreeMemoryMiB: -1, Load: -1})
	}

	// One vCPU per target host (reserve the rest): two shared VMs cannot
	// both go to host2, so the operator's target fails whole.
	req.Limits.ReservedCPUs = req.Hosts[1].CPUs - 1
	req.Target = hs[1].Name
	_, err = migration.NewPlan(req)
	require.ErrorIs(t, err, migration.ErrNoCapacity)
	assert.Contains(t, err.Error(), "1 of 2 VMs to move do not fit on host2, so nothing is moved")
	assert.Len(t, l.QEMUPIDs(hs[0]), 3)

	req.Target = ""
	plan, err := migration.NewPlan(req)
	require.NoError(t, err)
	require.Len(t, plan.Moves, 2)
	require.Len(t, plan.Skipped, 1, "the local-disk VM stays without the flag")
	assert.Equal(t, "hm-local", plan.Skipped[0].Name)
	assert.NotEqual(t, plan.Moves[0].Target, plan.Moves[1].Target, "one vCPU per host: spread")

	addr := map[string]string{}
	for _, h := range hs {
		addr[h.Name] = h.MgmtAddr
	}
	var mu sync.Mutex
	var moved []string
	var lines []migration.Progress
	res, err := migration.Execute(ctx, plan, migration.Config{
		Hosts: func(h string) (migration.Hypervisor, error) { return clients[h], nil },
		Endpoint: func(h string) (migration.Endpoint, error) {
			return migration.Endpoint{DestURI: "qemu+tcp://" + addr[h] + "/system", DataURI: "tcp://" + addr[h]}, nil
		},
		AllowUnsafe: true, VMTimeout: 2 * time.Minute,
		Moved: func(_ context.Context, m migration.Move) error {
			mu.Lock()
			defer mu.Unlock()
			moved = append(moved, m.VM.Name+"->"+m.Target)
			return nil
		},
		Report: func(ps ...migration.Progress) { mu.Lock(); lines = append(lines, ps...); mu.Unlock() },
	})
	require.NoError(t, err)
	assert.Equal(t, 2, res.Moved())
	assert.Len(t, moved, 2)
	assert.Len(t, l.QEMUPIDs(hs[0]), 1, "only the local-disk VM stays on host1")
	assert.Len(t, l.QEMUPIDs(hs[1]), 1)
	assert.Len(t, l.QEMUPIDs(hs[2]), 1)
	for _, m := range plan.Moves {
		d, ok := migDomain(t, ctx, clients[m.Target], m.VM.Name)
		require.True(t, ok)
		assert.Equal(t, hypervisor.StateRunning, d.State)
		assert.True(t, d.Persistent)
	}
	var skippedLine bool
	for _, p := range lines {
		if p.Name == "hm-local" && p.State == migration.VMSkipped {
			skippedLine = true
		}
	}
	assert.True(t, skippedLine, "the local-disk VM is reported as not moved")
}
