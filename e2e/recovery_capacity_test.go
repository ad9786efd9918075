package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

// TestLabVMSpecXML checks that a lab VM's sizes and chime-fence metadata
// read back through the evacuator's parser as set, and that a zero spec is
// the plain DomainXML existing lab tests use.
func TestLabVMSpecXML(t *testing.T) {
	const disk = "/srv/shared/x.qcow2"
	rules := evacuator.StorageRules{SharedPaths: []string{"/srv/shared"}}
	x, err := lab.SpecXML(lab.VMSpec{Name: "db1", MemoryMiB: 192, VCPUs: 2, Priority: 40, Group: `db "a"&'b'`}, disk)
	require.NoError(t, err)
	x = strings.Replace(x, "<name>", "<uuid>8d3b1b5e-2f4a-4c1e-9a55-1c7b2e0f6a11</uuid>\n  <name>", 1)
	vm, err := evacuator.ParseVM(x, rules)
	require.NoError(t, err, x)
	assert.Equal(t, int64(192), vm.MemoryMiB)
	assert.Equal(t, 2, vm.VCPUs)
	assert.Equal(t, 40, vm.Priority)
	assert.Equal(t, `db "a"&'b'`, vm.Group, "the group survives XML escaping")
	assert.False(t, vm.OptOut)
	assert.True(t, vm.Evacuable, vm.Reason)

	x, err = lab.SpecXML(lab.VMSpec{Name: "opt", NoEvacuate: true, Priority: -3}, disk)
	require.NoError(t, err)
	x = strings.Replace(x, "<name>", "<uuid>8d3b1b5e-2f4a-4c1e-9a55-1c7b2e0f6a12</uuid>\n  <name>", 1)
	vm, err = evacuator.ParseVM(x, rules)
	require.NoError(t, err, x)
	assert.True(t, vm.OptOut)
	assert.False(t, vm.Evacuable)
	assert.Equal(t, -3, vm.Priority)
	assert.Equal(t, int64(64), vm.MemoryMiB, "0 MiB means the lab default")
	assert.Equal(t, 1, vm.VCPUs, "0 vCPUs means the lab default")

	plain, err := lab.SpecXML(lab.VMSpec{Name: "p", Shared: true, NoStart: true}, disk)
	require.NoError(t, err)
	assert.Equal(t, lab.DomainXML("p", disk), plain)
	assert.NotContains(t, plain, "metadata", "no metadata element unless asked for")

	for _, bad := range []struct {
		spec lab.VMSpec
		want string
	}{
		{lab.VMSpec{Name: "m", MemoryMiB: -1}, "MemoryMiB -1"},
		{lab.VMSpec{Name: "m", MemoryMiB: 1 << 30}, "MemoryMiB 1073741824"},
		{lab.VMSpec{Name: "c", VCPUs: -2}, "VCPUs -2"},
		{lab.VMSpec{Name: "c", VCPUs: 1000}, "VCPUs 1000"},
	} {
		_, err := lab.SpecXML(bad.spec, disk)
		require.Error(t, err, "%+v", bad.spec)
		assert.Contains(t, err.Error(), bad.want)
		assert.Contains(t, err.Error(), "VM "+bad.spec.Name)
	}
}

// capTarget is a host that may take the failed host's VMs, sized the way
// the daemon sizes it: libvirt's node info (NodeGetInfo: `virsh nodeinfo`)
// and the sum of its running domains' <memory> and <vcpu>.
type capTarget struct {
	name      string
	memMiB    int64 // node memory in KiB / 1024, as the capture computes it
	cpus      int
	usedMiB   int64
	usedVCPUs int
}

// capLimits are the scheduler settings the test gives the daemon.
type capLimits struct {
	memOC, cpuOC float64
	reservedMiB  int64
}

// memCap and vcpuCap are evacuator.Place's capacity formulas:
// floor((size - reserved) × overcommit), never negative.
func (l capLimits) memCap(h capTarget) int64 {
	return int64(math.Max(0, math.Floor(float64(h.memMiB-l.reservedMiB)*l.memOC+1e-9)))
}

func (l capLimits) vcpuCap(h capTarget) int {
	return int(math.Floor(float64(h.cpus)*l.cpuOC + 1e-9))
}

// slots is how many VMs of vmMiB and one vCPU h can still take.
func (l capLimits) slots(h capTarget, vmMiB int64) int {
	mem := (l.memCap(h) - h.usedMiB) / vmMiB
	cpu := int64(l.vcpuCap(h) - h.usedVCPUs)
	return int(max(0, min(mem, cpu)))
}

// reserveFor is the reserved memory at which the targets together take
// exactly k VMs of vmMiB: the middle of the range of reserves that give k,
// so neither edge decides. ok is false when no reserve gives k.
func reserveFor(targets []capTarget, l capLimits, vmMiB int64, k int) (int64, bool) {
	var top int64
	for _, h := range targets {
		top = max(top, h.memMiB)
	}
	lo, hi := int64(-1), int64(-1)
	for r := int64(0); r <= top; r++ {
		l.reservedMiB = r
		n := 0
		for _, h := range targets {
			n += l.slots(h, vmMiB)
		}
		if n == k {
			if lo < 0 {
				lo = r
			}
			hi = r
		}
	}
	if lo < 0 {
		return 0, false
	}
	return (lo + hi) / 2, true
}

// TestCapacityArithmetic pins the lab test's arithmetic on the sizes the
// lab showed (7002 MiB, 2 CPUs): capacity floor((7002 - R) × 1.5) must be
// in [256, 320) for 2 VMs of 128 MiB to fit with 192 MiB in use on one
// host, i.e. R in [6789, 6831]; the middle is chosen.
func TestCapacityArithmetic(t *testing.T) {
	targets := []capTarget{
		{name: "host2", memMiB: 7002, cpus: 2, usedMiB: 192, usedVCPUs: 1},
		{name: "host3", memMiB: 7002, cpus: 2},
	}
	lim := capLimits{memOC: 1.5, cpuOC: 8}
	r, ok := reserveFor(targets, lim, 128, 2)
	require.True(t, ok)
	assert.Equal(t, int64((6789+6831)/2), r)
	lim.reservedMiB = r
	assert.Equal(t, int64(288), lim.memCap(targets[0]))
	assert.Equal(t, 0, lim.slots(targets[0], 128), "192 of 288 MiB in use leaves 96")
	assert.Equal(t, 2, lim.slots(targets[1], 128))
	assert.Equal(t, 16, lim.vcpuCap(targets[0]))

	lim.cpuOC = 1 // 2 vCPUs: vCPUs bind before memory on host3
	lim.reservedMiB = 0
	assert.Equal(t, 1, lim.slots(targets[0], 128))
	assert.Equal(t, 2, lim.slots(targets[1], 128))
	_, ok = reserveFor(targets, lim, 128, 4)
	assert.False(t, ok, "no reserve fits 4 VMs into 3 free vCPUs")
}

// sizeTarget reads h's capacity from libvirt and what its running domains
// take, parsing each one's XML with the evacuator (as the capture does).
func sizeTarget(t *testing.T, ctx context.Context, l *lab.Lab, h lab.Host) capTarget {
	t.Helper()
	out, err := l.Virsh(ctx, h, "nodeinfo")
	require.NoError(t, err)
	c := capTarget{name: h.Name}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch strings.TrimSpace(k) {
		case "CPU(s)":
			c.cpus, err = strconv.Atoi(f[0])
			require.NoError(t, err, "nodeinfo CPU(s): %s", out)
		case "Memory size":
			require.Equal(t, "KiB", f[1], "nodeinfo memory unit: %s", out)
			kib, err := strconv.ParseInt(f[0], 10, 64)
			require.NoError(t, err, "nodeinfo memory: %s", out)
			c.memMiB = kib / 1024
		}
	}
	require.Positive(t, c.cpus, "nodeinfo of %s: %s", h.Name, out)
	require.Positive(t, c.memMiB, "nodeinfo of %s: %s", h.Name, out)
	doms, err := l.Domains(ctx, h)
	require.NoError(t, err)
	for name, st := range doms {
		if st != "running" {
			continue
		}
		x, err := l.Virsh(ctx, h, "dumpxml", "--inactive", name)
		require.NoError(t, err)
		vm, err := evacuator.ParseVM(x, evacuator.StorageRules{})
		require.NoError(t, err)
		c.usedMiB += vm.MemoryMiB
		c.usedVCPUs += max(vm.VCPUs, 1)
	}
	return c
}

// libvirtFreeMiB is the memory h's libvirt reports free (NodeGetFreeMemory:
// `virsh freecell`), the figure Place caps a VM at. It is the NUMA nodes'
// free memory, which can be far below /proc/meminfo's MemFree.
func libvirtFreeMiB(t *testing.T, ctx context.Context, l *lab.Lab, h lab.Host) int64 {
	t.Helper()
	out, err := l.Virsh(ctx, h, "freecell")
	require.NoError(t, err)
	f := strings.Fields(out) // "Total: 5246604 KiB"
	require.True(t, len(f) >= 2 && f[len(f)-1] == "KiB", "virsh freecell on %s: %q", h.Name, out)
	kib, err := strconv.ParseInt(f[len(f)-2], 10, 64)
	require.NoError(t, err, "virsh freecell on %s: %q", h.Name, out)
	return kib / 1024
}

// TestRecoveryCapacity is issue 5's "done when" 7: a host with four
// shared-disk VMs of different priorities and one that opted out loses
// power; the other hosts' capacity (their real node memory, minus a
// reserve the test computes, times the overcommit, minus what already runs
// there) holds exactly two of them. The two highest priorities run
// elsewhere exactly once; the other two run nowhere and the evacuation
// record and the evacuation.partial alert name each with a capacity
// reason; the opted-out VM, though of the highest priority, is reported as
// not moved by policy.
//
// Issue 12's "done when" 3: the evacuation does not end there. Its task
// waits, and `task show` names each waiting VM with its reason; a fourth
// host, disabled until then, is enabled, and the two waiting VMs start on
// it within one retry interval; the task then finishes (partial: the
// opted-out VM never moves), evacuation.partial having fired once and
// evacuation.finished at the end.
func TestRecoveryCapacity(t *testing.T) {
	ctx := context.Background()
	const (
		vmMiB   = 128 // every candidate VM: one size, so capacity counts VMs
		baseMiB = 192 // already running on the first target
		k       = 2   // VMs that must fit
	)
	// memOC is not a whole number, so %v prints it as the reasons do.
	lim := capLimits{memOC: 1.5, cpuOC: 8}
	var (
		hook    *webhook
		targets []capTarget
	)
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chcap", Hosts: 4}, func(l *lab.Lab) labconfig.Options {
		hook = startWebhook(t, l)
		hs := l.Hosts()
		// Before the daemon starts (its reserve is fixed at start): a VM
		// runs on host2 and must be counted against it.
		_, err := l.CreateVM(ctx, hs[1], lab.VMSpec{Name: "capbase", Shared: true, MemoryMiB: baseMiB})
		require.NoError(t, err)
		for _, h := range hs[1:3] { // host4 is disabled until the task waits
			targets = append(targets, sizeTarget(t, ctx, l, h))
		}
		r, ok := reserveFor(targets, lim, vmMiB, k)
		require.True(t, ok, "no reserve makes exactly %d VMs of %d MiB fit on %+v", k, vmMiB, targets)
		lim.reservedMiB = r
		return labconfig.Options{Mode: "enforce", Extra: hook.configBlock() + fmt.Sprintf(
			"scheduler:\n  memory_overcommit: %v\n  cpu_overcommit: %v\n  reserved_memory_mib: %d\n  reserved_cpus: 0\n",
			lim.memOC, lim.cpuOC, lim.reservedMiB)}
	}, recoveryEnv)
	hs := d.l.Hosts()
	h1, spare := hs[0], hs[3]
	_, err := d.client.SetAdminState(ctx, spare.Name, api.AdminRequest{State: node.Disabled, Reason: "e2e: the spare, enabled once the task waits"})
	require.NoError(t, err)
	d.waitHost(spare.Name, "disabled", 5*time.Second, func(s daemon.HostStatus) bool { return s.Admin == node.Disabled })
	for _, c := range targets {
		t.Logf("target %s: %d MiB, %d CPUs, %d MiB and %d vCPUs in use; capacity %d MiB (reserve %d MiB, overcommit %v), %d vCPUs: room for %d VM(s) of %d MiB",
			c.name, c.memMiB, c.cpus, c.usedMiB, c.usedVCPUs, lim.memCap(c), lim.reservedMiB, lim.memOC, lim.vcpuCap(c), lim.slots(c, vmMiB), vmMiB)
		// Memory, not vCPUs, is what runs out, so the reasons are about memory.
		memSlots := (lim.memCap(c) - c.usedMiB) / vmMiB
		require.Less(t, memSlots, int64(lim.vcpuCap(c)-c.usedVCPUs), "vCPUs must not be the binding limit on %s", c.name)
	}
	// Place also caps a VM at the memory the host reports free; that must
	// not be what binds either.
	for _, h := range hs[1:] {
		free := libvirtFreeMiB(t, ctx, d.l, h)
		t.Logf("%s: libvirt reports %d MiB free", h.Name, free)
		require.Greater(t, free, int64(1024+k*vmMiB), "%s needs free memory beyond the computed capacity", h.Name)
	}

	// Priorities: the opted-out VM outranks everything, and is still not moved.
	specs := []lab.VMSpec{
		{Name: "capopt", Priority: 100, NoEvacuate: true},
		{Name: "cap1", Priority: 40},
		{Name: "cap2", Priority: 30},
		{Name: "cap3", Priority: 20},
		{Name: "cap4", Priority: 10},
	}
	placed, left := []string{"cap1", "cap2"}, []string{"cap3", "cap4"}
	var disks []string
	uuids := map[string]string{}
	for _, s := range specs {
		s.Shared, s.MemoryMiB = true, vmMiB
		vm, err := d.l.CreateVM(ctx, h1, s)
		require.NoError(t, err)
		disks = append(disks, vm.Disk)
		uuids[s.Name] = domainUUID(t, ctx, d.l, h1, s.Name)
		// libvirt keeps the metadata: what the daemon will read back.
		x, err := d.l.Virsh(ctx, h1, "dumpxml", "--inactive", s.Name)
		require.NoError(t, err)
		pv, err := evacuator.ParseVM(x, evacuator.StorageRules{SharedPaths: []string{d.l.SharedDir()}})
		require.NoError(t, err)
		require.Equal(t, s.Priority, pv.Priority, "%s priority after libvirt's round trip:\n%s", s.Name, x)
		require.Equal(t, s.NoEvacuate, pv.OptOut, "%s evacuate after libvirt's round trip:\n%s", s.Name, x)
		require.Equal(t, int64(vmMiB), pv.MemoryMiB)
	}
	uuids["capbase"] = domainUUID(t, ctx, d.l, hs[1], "capbase")
	d.waitHost(h1.Name, "reporting its 5 VMs", 10*time.Second, func(s daemon.HostStatus) bool { return s.Domains == len(specs) })
	// The capture that writes a host's mirror also counts what runs there.
	mirror := filepath.Join(d.l.SharedDir(), "chime-fence", "domains")
	require.Eventually(t, func() bool {
		for name, u := range uuids {
			host := h1.Name
			if name == "capbase" {
				host = hs[1].Name
			}
			if _, err := os.Stat(filepath.Join(mirror, host, u+".xml")); err != nil {
				return false
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "the inventory mirror holds every domain's XML")
	time.Sleep(1500 * time.Millisecond) // two load samples of every target after its last change

	watch := watchDisks(d.l, disks)
	t0 := time.Now()
	require.NoError(t, d.l.PowerLoss(ctx, h1))
	var evac store.Record
	require.Eventually(t, func() bool {
		recs := d.history(store.Query{Host: h1.Name, Kind: "evacuation"})
		if len(recs) == 0 {
			return false
		}
		evac = recs[len(recs)-1]
		return true
	}, 60*time.Second, 100*time.Millisecond, "an evacuation record for %s; daemon log:\n%s", h1.Name, tail(d.log(), 40))
	evacDone := time.Since(t0)

	fences := d.history(store.Query{Host: h1.Name, Kind: "fence"})
	require.NotEmpty(t, fences)
	assert.Equal(t, "verified", fences[len(fences)-1].To, fences[len(fences)-1].Reason)

	// The record: waiting (the task goes on: what did not fit is re-planned
	// when capacity changes), counts, and every VM left behind named with
	// its reason.
	assert.Equal(t, "waiting", evac.To, evac.Reason)
	assert.Contains(t, evac.Reason, fmt.Sprintf("%d running elsewhere, 0 failed, %d not moved", len(placed), len(left)+1))
	var rep recovery.EvacuationReport
	require.NoError(t, json.Unmarshal(evac.Evidence, &rep), "evacuation evidence: %s", evac.Evidence)
	assert.Equal(t, "waiting", rep.State)
	assert.Empty(t, rep.Failed)
	runningOn := map[string]string{}
	for _, r := range rep.Running {
		runningOn[r.Name] = r.Host
	}
	assert.ElementsMatch(t, placed, sortedKeys(runningOn), "the %d highest evacuable priorities are placed", k)
	unplaced := map[string]string{}
	for _, u := range rep.Unplaced {
		unplaced[u.Name] = u.Reason
		assert.Equal(t, uuids[u.Name], u.UUID, "%s's UUID in the report", u.Name)
	}
	assert.ElementsMatch(t, append([]string{"capopt"}, left...), sortedKeys(unplaced))
	assert.Equal(t, `opted out by metadata evacuate="false"`, unplaced["capopt"], "the opted-out VM is not moved by policy")
	assert.Contains(t, evac.Reason, `capopt: opted out by metadata evacuate="false"`)

	// No target went over its capacity, and the best remaining room (the
	// reason quotes it) is what the arithmetic says.
	perHost := map[string]int{}
	for _, h := range runningOn {
		perHost[h]++
	}
	bestName, bestRoom := "", int64(-1)
	for _, c := range targets {
		assert.LessOrEqual(t, perHost[c.name], lim.slots(c, vmMiB), "%s took more than its capacity", c.name)
		room := lim.memCap(c) - c.usedMiB - int64(perHost[c.name])*vmMiB
		if room > bestRoom || room == bestRoom && c.name < bestName {
			bestName, bestRoom = c.name, room
		}
	}
	require.Less(t, bestRoom, int64(vmMiB), "the test's arithmetic leaves room for another VM")
	for _, n := range left {
		why := unplaced[n]
		assert.Contains(t, why, fmt.Sprintf("no capacity: needs %d MiB", vmMiB), "%s", n)
		assert.Contains(t, why, fmt.Sprintf("best host %s has %d MiB free", bestName, bestRoom), "%s: %s", n, why)
		assert.Contains(t, why, fmt.Sprintf("memory overcommit %v, %d MiB reserved", lim.memOC, lim.reservedMiB), "%s: %s", n, why)
		assert.Contains(t, evac.Reason, n+" waits: "+why, "the record's summary names %s with its reason", n)
	}

	// Reality matches the report: the placed VMs run exactly once, where the
	// report says, the others nowhere.
	for _, n := range placed {
		w := where(ctx, d.l, n)
		require.Len(t, w, 1, "%s runs exactly once", n)
		assert.NotEqual(t, h1.Name, w[0])
		assert.Equal(t, runningOn[n], w[0], "%s runs where the report says", n)
	}
	for _, n := range append([]string{"capopt"}, left...) {
		assert.Empty(t, where(ctx, d.l, n), "%s runs nowhere", n)
	}
	assert.Equal(t, []string{hs[1].Name}, where(ctx, d.l, "capbase"), "the target's own VM is untouched")
	violations, samples := watch.finish()
	assert.Empty(t, violations, "two QEMU processes held one disk")
	assert.Greater(t, samples, 10)

	// The alert carries the same report, signed.
	var ev alert.Event
	require.Eventually(t, func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		for _, e := range hook.events {
			if e.Host == h1.Name && e.Type == alert.EvacuationPartial {
				ev = e
				return true
			}
		}
		return false
	}, 15*time.Second, 50*time.Millisecond, "an %s alert for %s; got %v", alert.EvacuationPartial, h1.Name, hook.types(h1.Name))
	assert.Equal(t, evac.Reason, ev.Summary)
	assert.Equal(t, "critical", ev.Severity)
	raw, err := json.Marshal(ev.Details["report"])
	require.NoError(t, err)
	var arep recovery.EvacuationReport
	require.NoError(t, json.Unmarshal(raw, &arep))
	assert.Equal(t, rep.Unplaced, arep.Unplaced, "the alert names every VM left behind, with its reason")
	assert.Equal(t, rep.Running, arep.Running)
	assert.NotContains(t, hook.types(h1.Name), alert.EvacuationFinished)
	hook.mu.Lock()
	assert.Empty(t, hook.bad, "every delivery carries a valid signature")
	hook.mu.Unlock()
	// task show says what each pending VM waits for.
	taskID := recovery.TaskID(store.FenceRecord{Host: h1.Name, CorrelationID: fences[len(fences)-1].CorrelationID})
	task, err := d.client.Task(ctx, taskID)
	require.NoError(t, err)
	assert.Equal(t, "running", string(task.State), "a waiting evacuation is not over")
	pending := map[string]string{}
	for _, p := range task.Progress {
		if p.State == "pending" {
			pending[p.Name] = p.Detail
		}
	}
	assert.ElementsMatch(t, left, sortedKeys(pending), "task show lists the waiting VMs: %+v", task.Progress)
	for _, n := range left {
		assert.Contains(t, pending[n], "waits: no capacity: needs", n)
	}

	// Room appears: the spare is enabled, and what waited starts there.
	watch = watchDisks(d.l, disks)
	enabled := time.Now()
	_, err = d.client.SetAdminState(ctx, spare.Name, api.AdminRequest{State: node.Enabled, Reason: "e2e: capacity for the waiting VMs"})
	require.NoError(t, err)
	var final store.Record
	require.Eventually(t, func() bool {
		for _, r := range d.history(store.Query{Host: h1.Name, Kind: "evacuation"}) {
			if r.To != "waiting" {
				final = r
				return true
			}
		}
		return false
	}, recovery.DefaultRetryMax+40*time.Second, 100*time.Millisecond, "the task finishes once the spare is enabled; daemon log:\n%s", tail(d.log(), 40))
	finished := time.Since(enabled)
	assert.Equal(t, "partial", final.To, "only the opted-out VM is not moved: %s", final.Reason)
	assert.Contains(t, final.Reason, fmt.Sprintf("%d running elsewhere, 0 failed, 1 not moved", len(placed)+len(left)))
	for _, n := range left {
		assert.Equal(t, []string{spare.Name}, where(ctx, d.l, n), "%s runs exactly once, on the spare", n)
	}
	for _, n := range placed {
		assert.Len(t, where(ctx, d.l, n), 1, "%s still runs exactly once", n)
	}
	assert.Empty(t, where(ctx, d.l, "capopt"))
	require.Eventually(t, func() bool { return slices.Contains(hook.types(h1.Name), alert.EvacuationFinished) },
		15*time.Second, 50*time.Millisecond, "evacuation.finished when the last VM runs; got %v", hook.types(h1.Name))
	partials := 0
	for _, ty := range hook.types(h1.Name) {
		if ty == alert.EvacuationPartial {
			partials++
		}
	}
	assert.Equal(t, 1, partials, "evacuation.partial fires once")
	task, err = d.client.Task(ctx, taskID)
	require.NoError(t, err)
	assert.Equal(t, "failed", string(task.State), "partial shows as failed in the task list: %s", task.Result)
	_, err = d.client.CancelTask(ctx, taskID, "too late")
	assert.ErrorContains(t, err, "already ended", "an ended task cannot be cancelled")
	violations, _ = watch.finish()
	assert.Empty(t, violations, "two QEMU processes held one disk after the spare was enabled")
	t.Logf("spare enabled → the waiting VMs run and the task finishes in %s (retry interval at most %s)",
		finished.Round(time.Millisecond), recovery.DefaultRetryMax)
	assert.Less(t, finished, recovery.DefaultRetryMax+recovery.DefaultRetryMin+20*time.Second,
		"within one retry interval (plus the VMs' start)")
	t.Logf("power loss → evacuation recorded (%d of %d evacuable VMs placed) in %s",
		len(placed), len(placed)+len(left), evacDone.Round(time.Millisecond))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
