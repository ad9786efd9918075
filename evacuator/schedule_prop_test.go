package evacuator

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Property tests: random clusters with fixed seeds, checked against the
// invariants the recovery relies on and against a naive reference
// scheduler (the spec written as plainly as possible).

const propRuns = 400

// randomRequest is a small, tight cluster so every filter fires often.
// messy adds input Place must survive: repeated names and UUIDs, negative
// usage, bad limits, hosts with no CPUs.
func randomRequest(r *rand.Rand, messy bool) PlaceRequest {
	groups := []string{"", "", "", "db", "web", "cache"}
	ratios := []float64{0, 1, 1.5, 2, 4, 0.8}
	req := PlaceRequest{Limits: Limits{
		CPUOvercommit:     ratios[r.IntN(len(ratios))],
		MemoryOvercommit:  ratios[r.IntN(len(ratios))],
		ReservedCPUs:      r.IntN(3),
		ReservedMemoryMiB: int64(r.IntN(3)) * 512,
	}}
	nHosts := r.IntN(12)
	for i := range nHosts {
		c := Candidate{
			Name:          fmt.Sprintf("h%02d", i),
			Eligible:      r.IntN(100) < 85,
			Why:           "admin disabled",
			CPUs:          1 + r.IntN(16),
			MemoryMiB:     int64(1+r.IntN(16)) * 1024,
			FreeMemoryMiB: -1,
			Load:          float64(r.IntN(20)) * 0.05, // coarse, so ties happen
		}
		c.UsedVCPUs = r.IntN(c.CPUs + 1)
		c.UsedMemoryMiB = r.Int64N(c.MemoryMiB + 1)
		if r.IntN(100) < 70 {
			c.FreeMemoryMiB = r.Int64N(c.MemoryMiB + 1)
		}
		if r.IntN(100) < 25 {
			c.Load = -1
		}
		if r.IntN(100) < 30 {
			c.Groups = map[string]int{groups[3+r.IntN(3)]: 1 + r.IntN(2), groups[3+r.IntN(3)]: r.IntN(2)}
		}
		req.Hosts = append(req.Hosts, c)
	}
	if nHosts > 0 && r.IntN(100) < 60 {
		req.FailedHost = req.Hosts[r.IntN(nHosts)].Name // often still marked eligible: the safety net
	}
	nVMs := r.IntN(60)
	for i := range nVMs {
		vm := evm(fmt.Sprintf("%08x-vm%02d", r.Uint32(), i), r.IntN(9), 128*int64(1+r.IntN(64)))
		vm.Priority = r.IntN(4)
		vm.Group = groups[r.IntN(len(groups))]
		switch n := r.IntN(100); {
		case n < 8:
			vm.OptOut, vm.Evacuable, vm.Reason = true, false, `opted out by metadata evacuate="false"`
		case n < 16:
			vm.Evacuable, vm.Reason = false, "disk vda is on local storage (/var/lib/libvirt/images/x.qcow2)"
		}
		req.VMs = append(req.VMs, vm)
	}
	if !messy {
		return req
	}
	if nHosts > 1 && r.IntN(2) == 0 {
		dup := req.Hosts[r.IntN(nHosts)]
		dup.Eligible, dup.CPUs, dup.MemoryMiB, dup.UsedVCPUs, dup.UsedMemoryMiB = true, 64, 1<<20, 0, 0
		req.Hosts = append(req.Hosts, dup)
	}
	if nHosts > 0 && r.IntN(2) == 0 {
		req.Hosts[r.IntN(nHosts)].UsedVCPUs = -4
	}
	if nHosts > 0 && r.IntN(2) == 0 {
		req.Hosts[r.IntN(nHosts)].CPUs = 0
	}
	if nVMs > 1 && r.IntN(2) == 0 {
		req.VMs = append(req.VMs, req.VMs[r.IntN(nVMs)])
	}
	if nVMs > 0 && r.IntN(2) == 0 {
		req.VMs[r.IntN(nVMs)].MemoryMiB = 0
	}
	if r.IntN(3) == 0 {
		req.Limits.CPUOvercommit, req.Limits.ReservedMemoryMiB = math.NaN(), -1
	}
	return req
}

// effRatio is the ratio Place must use.
func effRatio(v float64) float64 {
	if v > 0 && !math.IsInf(v, 0) {
		return v
	}
	return 1
}

// checkInvariants is what must hold for any input.
func checkInvariants(t *testing.T, req PlaceRequest, p Placement) {
	t.Helper()
	cpuOC, memOC := effRatio(req.Limits.CPUOvercommit), effRatio(req.Limits.MemoryOvercommit)
	resCPU, resMem := max(req.Limits.ReservedCPUs, 0), max(req.Limits.ReservedMemoryMiB, 0)

	// Every VM exactly once, with a reason when not placed.
	want := map[string]int{}
	for _, vm := range req.VMs {
		want[vm.UUID]++
	}
	got := map[string]int{}
	for _, a := range p.Assignments {
		got[a.VM.UUID]++
		require.Equal(t, 1, got[a.VM.UUID], "VM %s placed twice", a.VM.UUID)
	}
	for _, u := range p.Unplaced {
		got[u.VM.UUID]++
		require.NotEmpty(t, u.Reason, "VM %s unplaced without a reason", u.VM.UUID)
	}
	require.Equal(t, want, got, "every VM is placed or explained exactly once")

	// Only the first candidate of a name counts; it must be really usable.
	first := map[string]Candidate{}
	for _, c := range req.Hosts {
		if _, ok := first[c.Name]; !ok {
			first[c.Name] = c
		}
	}
	type use struct {
		vcpus  int
		mem    int64
		groups map[string]int
		n      int
	}
	used := map[string]*use{}
	for i, a := range p.Assignments {
		require.False(t, a.VM.OptOut || !a.VM.Evacuable, "VM %s cannot move but was placed", a.VM.UUID)
		require.Positive(t, a.VM.MemoryMiB)
		require.NotEqual(t, req.FailedHost, a.Host, "VM %s placed on the failed host", a.VM.UUID)
		c, ok := first[a.Host]
		require.True(t, ok, "VM %s placed on unknown host %s", a.VM.UUID, a.Host)
		require.True(t, c.Eligible && c.CPUs > 0 && c.UsedVCPUs >= 0 && c.UsedMemoryMiB >= 0, "VM %s placed on unusable host %+v", a.VM.UUID, c)
		require.LessOrEqual(t, len(a.Alternatives), 3)
		seenAlt := map[string]bool{a.Host: true}
		for _, alt := range a.Alternatives {
			require.False(t, seenAlt[alt], "alternative %s repeated for %s", alt, a.VM.UUID)
			seenAlt[alt] = true
			ac := first[alt]
			require.True(t, ac.Eligible && alt != req.FailedHost, "alternative %s is not usable", alt)
		}
		if i > 0 {
			require.GreaterOrEqual(t, p.Assignments[i-1].VM.Priority, a.VM.Priority, "restart order follows priority")
		}
		u := used[a.Host]
		if u == nil {
			u = &use{groups: map[string]int{}}
			used[a.Host] = u
		}
		u.vcpus += max(a.VM.VCPUs, 1)
		u.mem += a.VM.MemoryMiB
		u.n++
		if a.VM.Group != "" {
			u.groups[a.VM.Group]++
		}
	}
	for name, u := range used {
		c := first[name]
		require.LessOrEqual(t, float64(c.UsedVCPUs+u.vcpus), float64(c.CPUs-resCPU)*cpuOC+1e-9, "host %s over vCPU capacity", name)
		require.LessOrEqual(t, float64(c.UsedMemoryMiB+u.mem), float64(c.MemoryMiB-resMem)*memOC+1e-9, "host %s over memory capacity", name)
		if c.FreeMemoryMiB >= 0 {
			require.LessOrEqual(t, u.mem, c.FreeMemoryMiB, "host %s over its reported free memory", name)
		}
		for g, n := range u.groups {
			require.Equal(t, 1, n+min(c.Groups[g], 1), "group %s twice on host %s", g, name)
		}
	}
	// Host reports agree with the assignments.
	for _, hr := range p.Hosts {
		if hr.Eligible {
			u := used[hr.Name]
			if u == nil {
				u = &use{}
			}
			c := first[hr.Name]
			require.Equal(t, u.n, hr.Placed, "host %s placed count", hr.Name)
			require.Equal(t, c.UsedVCPUs+u.vcpus, hr.VCPUs)
			require.Equal(t, c.UsedMemoryMiB+u.mem, hr.MemoryMiB)
		} else {
			require.Zero(t, hr.Placed)
			require.NotEmpty(t, hr.Why)
		}
	}

	// A higher priority VM is never left out while a lower priority one
	// that is at least as big, and no more constrained, got a host.
	for _, u := range p.Unplaced {
		if !u.VM.Evacuable || u.VM.OptOut || u.VM.MemoryMiB <= 0 || u.VM.VCPUs < 0 || want[u.VM.UUID] > 1 {
			continue
		}
		for _, a := range p.Assignments {
			if a.VM.Priority < u.VM.Priority && max(a.VM.VCPUs, 1) >= max(u.VM.VCPUs, 1) && a.VM.MemoryMiB >= u.VM.MemoryMiB &&
				(u.VM.Group == "" || u.VM.Group == a.VM.Group) {
				t.Fatalf("priority %d VM %s (%d vCPUs, %d MiB) unplaced (%s) while priority %d VM %s (%d vCPUs, %d MiB) was placed",
					u.VM.Priority, u.VM.UUID, u.VM.VCPUs, u.VM.MemoryMiB, u.Reason, a.VM.Priority, a.VM.UUID, a.VM.VCPUs, a.VM.MemoryMiB)
			}
		}
	}
}

func TestPlaceProperties(t *testing.T) {
	for seed := range uint64(propRuns) {
		for _, messy := range []bool{false, true} {
			req := randomRequest(rand.New(rand.NewPCG(seed, 7)), messy)
			t.Run(fmt.Sprintf("seed=%d/messy=%v", seed, messy), func(t *testing.T) {
				p := Place(req)
				checkInvariants(t, req, p)
				assert.Equal(t, p, Place(req), "deterministic")
			})
		}
	}
}

// TestPlaceMatchesReference cross-checks Place against a naive scheduler
// that filters and fully sorts every host for every VM.
func TestPlaceMatchesReference(t *testing.T) {
	placed, unplaced := 0, 0
	for seed := range uint64(propRuns) {
		req := randomRequest(rand.New(rand.NewPCG(seed, 11)), false)
		p := Place(req)
		ref := referencePlace(req)
		require.Len(t, p.Assignments, len(ref), "seed %d", seed)
		for i, a := range p.Assignments {
			assert.Equal(t, ref[i], refAssignment{a.VM.UUID, a.Host, a.Alternatives}, "seed %d assignment %d", seed, i)
		}
		placed += len(p.Assignments)
		unplaced += len(p.Unplaced)
	}
	// The generator must exercise both outcomes, or this test proves little.
	assert.Greater(t, placed, 1000)
	assert.Greater(t, unplaced, 1000)
}

type refAssignment struct {
	uuid, host string
	alts       []string
}

func referencePlace(req PlaceRequest) []refAssignment {
	cpuOC, memOC := effRatio(req.Limits.CPUOvercommit), effRatio(req.Limits.MemoryOvercommit)
	type st struct {
		c       Candidate
		vcpus   int
		mem     int64
		planned int
		groups  map[string]bool
	}
	var hosts []*st
	for _, c := range req.Hosts {
		if c.Eligible && c.Name != req.FailedHost {
			s := &st{c: c, vcpus: c.UsedVCPUs, mem: c.UsedMemoryMiB, groups: map[string]bool{}}
			for g, n := range c.Groups {
				s.groups[g] = n > 0
			}
			hosts = append(hosts, s)
		}
	}
	room := func(s *st) int64 {
		r := int64(math.Floor(float64(s.c.MemoryMiB-req.Limits.ReservedMemoryMiB)*memOC+1e-9)) - s.mem
		if s.c.FreeMemoryMiB >= 0 {
			r = min(r, s.c.FreeMemoryMiB-(s.mem-s.c.UsedMemoryMiB))
		}
		return r
	}
	est := func(s *st) float64 { return max(s.c.Load, 0) + float64(s.planned)/float64(s.c.CPUs) }
	vms := append([]VM(nil), req.VMs...)
	sort.SliceStable(vms, func(i, j int) bool {
		a, b := vms[i], vms[j]
		if a.Priority != b.Priority {
			return a.Priority > b.Priority
		}
		if a.MemoryMiB != b.MemoryMiB {
			return a.MemoryMiB > b.MemoryMiB
		}
		return a.UUID < b.UUID
	})
	var out []refAssignment
	for _, vm := range vms {
		if vm.OptOut || !vm.Evacuable {
			continue
		}
		v := max(vm.VCPUs, 1)
		var ok []*st
		for _, s := range hosts {
			if float64(s.vcpus+v) <= float64(s.c.CPUs-req.Limits.ReservedCPUs)*cpuOC+1e-9 &&
				vm.MemoryMiB <= room(s) && (vm.Group == "" || !s.groups[vm.Group]) {
				ok = append(ok, s)
			}
		}
		if len(ok) == 0 {
			continue
		}
		sort.Slice(ok, func(i, j int) bool {
			a, b := ok[i], ok[j]
			if ka, kb := a.c.Load >= 0, b.c.Load >= 0; ka != kb {
				return ka
			}
			if ea, eb := est(a), est(b); ea != eb {
				return ea < eb
			}
			if ra, rb := room(a), room(b); ra != rb {
				return ra > rb
			}
			return a.c.Name < b.c.Name
		})
		ra := refAssignment{uuid: vm.UUID, host: ok[0].c.Name}
		for _, s := range ok[1:min(len(ok), 4)] {
			ra.alts = append(ra.alts, s.c.Name)
		}
		out = append(out, ra)
		s := ok[0]
		s.vcpus += v
		s.mem += vm.MemoryMiB
		s.planned += v
		if vm.Group != "" {
			s.groups[vm.Group] = true
		}
	}
	return out
}

// TestPlaceIgnoresInputOrder: shuffling hosts and VMs changes nothing but
// the order of the host report.
func TestPlaceIgnoresInputOrder(t *testing.T) {
	for seed := range uint64(propRuns / 4) {
		r := rand.New(rand.NewPCG(seed, 13))
		req := randomRequest(r, false)
		p := Place(req)
		shuffled := req
		shuffled.Hosts = append([]Candidate(nil), req.Hosts...)
		shuffled.VMs = append([]VM(nil), req.VMs...)
		r.Shuffle(len(shuffled.Hosts), func(i, j int) { shuffled.Hosts[i], shuffled.Hosts[j] = shuffled.Hosts[j], shuffled.Hosts[i] })
		r.Shuffle(len(shuffled.VMs), func(i, j int) { shuffled.VMs[i], shuffled.VMs[j] = shuffled.VMs[j], shuffled.VMs[i] })
		q := Place(shuffled)
		assert.Equal(t, p.Assignments, q.Assignments, "seed %d", seed)
		assert.Equal(t, p.Unplaced, q.Unplaced, "seed %d", seed)
		assert.ElementsMatch(t, p.Hosts, q.Hosts, "seed %d", seed)
	}
}
