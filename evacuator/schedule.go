package evacuator

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Limits are the capacity rules every target host obeys.
type Limits struct {
	// CPUOvercommit and MemoryOvercommit multiply a host's unreserved
	// CPUs and memory; 0 (or anything that is not a positive ratio) means
	// 1.0, no overcommit.
	CPUOvercommit    float64 `json:"cpu_overcommit"`
	MemoryOvercommit float64 `json:"memory_overcommit"`
	// ReservedCPUs and ReservedMemoryMiB are kept for the host itself.
	ReservedCPUs      int   `json:"reserved_cpus"`
	ReservedMemoryMiB int64 `json:"reserved_memory_mib"`
}

// Candidate is a host a VM might move to, as the caller saw it just
// before planning.
type Candidate struct {
	Name string `json:"name"`
	Rack string `json:"rack,omitempty"`
	// Eligible is the caller's verdict: admin enabled, monitor normal, not
	// the failed host. Why says why not ("admin disabled", "monitor
	// unreachable").
	Eligible bool   `json:"eligible"`
	Why      string `json:"why,omitempty"`
	// CPUs and MemoryMiB are the host's physical size.
	CPUs      int   `json:"cpus"`
	MemoryMiB int64 `json:"memory_mib"`
	// UsedVCPUs and UsedMemoryMiB are already allocated to domains there.
	UsedVCPUs     int   `json:"used_vcpus"`
	UsedMemoryMiB int64 `json:"used_memory_mib"`
	// FreeMemoryMiB is what the host itself reports free; negative means
	// unknown.
	FreeMemoryMiB int64 `json:"free_memory_mib"`
	// Load is the busy share of the host's CPUs, 0..1, from libvirt CPU
	// time deltas (hypervisor.CPULoad); negative means unknown.
	Load float64 `json:"load"`
	// Groups counts the VMs of each anti-affinity group already there.
	Groups map[string]int `json:"groups,omitempty"`
}

// PlaceRequest is everything Place needs: the failed host's VMs and the
// hosts that might take them.
type PlaceRequest struct {
	FailedHost string      `json:"failed_host"`
	VMs        []VM        `json:"vms"`
	Hosts      []Candidate `json:"hosts"`
	Limits     Limits      `json:"limits"`
}

// Assignment places one VM.
type Assignment struct {
	VM   VM     `json:"vm"`
	Host string `json:"host"`
	// Alternatives are the next best hosts that could also have taken the
	// VM when it was placed, best first, at most 3: where to retry if the
	// start on Host fails. They may have filled up since; the caller must
	// re-check capacity (re-plan) before using one.
	Alternatives []string `json:"alternatives,omitempty"`
	// Score is Host's estimated CPU load when it was chosen (its measured
	// load plus the vCPUs this plan already put there, per CPU); lower is
	// better. LoadKnown is false when the host's load was unknown: such
	// hosts rank after every host with a known load.
	Score     float64 `json:"score"`
	LoadKnown bool    `json:"load_known"`
}

// Unplaced is a VM that is not moved, and why.
type Unplaced struct {
	VM     VM     `json:"vm"`
	Reason string `json:"reason"`
	// NoRoom: the VM itself could move, but no host has room or is
	// eligible now (capacity, anti-affinity, eligibility): a plan on
	// another day may place it. False for a VM that can never move.
	NoRoom bool `json:"no_room,omitempty"`
}

// HostReport is one candidate host after planning.
type HostReport struct {
	Name     string `json:"name"`
	Eligible bool   `json:"eligible"`
	Why      string `json:"why,omitempty"` // why not eligible
	Placed   int    `json:"placed"`        // VMs this plan puts there
	// VCPUs and MemoryMiB are allocated there after the plan; the
	// capacities are what the limits allow.
	VCPUs             int     `json:"vcpus"`
	VCPUCapacity      int     `json:"vcpu_capacity"`
	MemoryMiB         int64   `json:"memory_mib"`
	MemoryCapacityMiB int64   `json:"memory_capacity_mib"`
	Load              float64 `json:"load"`           // as measured, negative when unknown
	EstimatedLoad     float64 `json:"estimated_load"` // Load plus the plan's vCPUs per CPU
}

// Placement is the plan for a whole failed host.
type Placement struct {
	// Assignments are in restart order: highest priority first.
	Assignments []Assignment `json:"assignments"`
	// Unplaced lists every VM that is not moved, in the same order.
	Unplaced []Unplaced `json:"unplaced"`
	// Hosts reports every candidate, in input order.
	Hosts []HostReport `json:"hosts"`
	// Notes name input Place corrected or ignored (a bad overcommit ratio,
	// a host listed twice).
	Notes []string `json:"notes,omitempty"`
}

// planHost is a candidate during planning; its usage includes the plan so far.
type planHost struct {
	idx       uint64 // position in the request, for the anti-affinity set
	name      string
	eligible  bool
	why       string
	cpus      int
	vcpuCap   int
	vcpuUsed  int
	memCap    int64
	memUsed   int64
	free      int64 // reported free memory minus the plan's, when freeKnown
	freeKnown bool
	load      float64
	loadKnown bool
	planned   int // vCPUs placed by this plan
	est       float64
	placed    int
}

// memRoom is the most memory a VM may still take on h.
func (h *planHost) memRoom() int64 {
	room := h.memCap - h.memUsed
	if h.freeKnown && h.free < room {
		room = h.free
	}
	return room
}

// rankBefore is the ranking: lowest estimated CPU load (the patent's rule),
// unknown load after known, then most memory room, then name.
func rankBefore(a, b *planHost) bool {
	if a.loadKnown != b.loadKnown {
		return a.loadKnown
	}
	if a.est != b.est {
		return a.est < b.est
	}
	if ra, rb := a.memRoom(), b.memRoom(); ra != rb {
		return ra > rb
	}
	return a.name < b.name
}

// maxCapacity keeps sums of sizes far from overflowing: no host or VM
// has 2^40 vCPUs or MiB, so larger numbers are bad input.
const maxCapacity = 1 << 40

// Place plans where each of a failed host's VMs restarts. It is pure and
// deterministic: the same request gives the same placement, whatever the
// order of its VMs and hosts (unless names or UUIDs repeat).
//
// VMs that opted out, are not evacuable, or are malformed go to Unplaced
// with their reason. The rest are placed one by one, highest Priority
// first (then larger memory, then UUID), each on the best host that passes
// every filter, cheapest first:
//
//  1. eligible, and not FailedHost whatever the caller said;
//  2. vCPUs: allocated + planned + the VM's <= (CPUs - reserved) × CPU overcommit;
//  3. memory: allocated + planned + the VM's <= (memory - reserved) × memory
//     overcommit, and, when the host reports free memory, the VM's <= free
//     minus planned;
//  4. anti-affinity: no VM of the VM's group there, already or planned.
//
// "Best" is the lowest estimated CPU load: measured load plus the vCPUs
// this plan added there per CPU, so one idle host does not take them all.
// A host of unknown load ranks after every known one; ties go to the most
// memory room, then the name. A VM with 0 vCPUs counts as 1 (libvirt's
// default).
func Place(req PlaceRequest) Placement {
	var p Placement
	cpuOC := overcommitRatio(req.Limits.CPUOvercommit, "cpu overcommit", &p.Notes)
	memOC := overcommitRatio(req.Limits.MemoryOvercommit, "memory overcommit", &p.Notes)
	resCPU, resMem := req.Limits.ReservedCPUs, req.Limits.ReservedMemoryMiB
	if resCPU < 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("reserved CPUs %d is negative; using 0", resCPU))
		resCPU = 0
	}
	if resMem < 0 {
		p.Notes = append(p.Notes, fmt.Sprintf("reserved memory %d MiB is negative; using 0", resMem))
		resMem = 0
	}
	lim := planLimits{cpuOC: cpuOC, memOC: memOC, resCPU: resCPU, resMem: resMem}

	hosts, pool := newHosts(req, lim, &p.Notes)
	vms := sortedVMs(req.VMs)

	// Groups are interned so the anti-affinity check is one map lookup.
	groupID := map[string]uint64{}
	for _, vm := range vms {
		if _, ok := groupID[vm.Group]; vm.Group != "" && !ok {
			groupID[vm.Group] = uint64(len(groupID))
		}
	}
	occupied := map[uint64]struct{}{} // host index << 32 | group id
	for i, c := range req.Hosts {
		for g, n := range c.Groups {
			if id, ok := groupID[g]; ok && n > 0 {
				occupied[uint64(i)<<32|id] = struct{}{}
			}
		}
	}
	seen := make(map[string]bool, len(vms))
	for _, vm := range vms {
		if reason := unplaceable(vm, seen); reason != "" {
			p.Unplaced = append(p.Unplaced, Unplaced{VM: vm, Reason: reason})
			continue
		}
		vcpus, mem := max(vm.VCPUs, 1), vm.MemoryMiB
		gid, grouped := groupID[vm.Group]

		// The best 4 feasible hosts, best first: the choice and its
		// alternatives. One pass over the pool; no sorting.
		var top [4]*planHost
		n := 0
		for _, h := range pool {
			if h.vcpuUsed+vcpus > h.vcpuCap || mem > h.memRoom() {
				continue
			}
			if grouped {
				if _, on := occupied[h.idx<<32|gid]; on {
					continue
				}
			}
			if n == len(top) && !rankBefore(h, top[n-1]) {
				continue
			}
			j := min(n, len(top)-1)
			for j > 0 && rankBefore(h, top[j-1]) {
				top[j] = top[j-1]
				j--
			}
			top[j] = h
			n = min(n+1, len(top))
		}
		if n == 0 {
			p.Unplaced = append(p.Unplaced, Unplaced{VM: vm, NoRoom: true, Reason: explainUnplaced(vm, vcpus, hosts, pool, lim, func(h *planHost) bool {
				_, on := occupied[h.idx<<32|gid]
				return grouped && on
			})})
			continue
		}

		h := top[0]
		a := Assignment{VM: vm, Host: h.name, Score: h.est, LoadKnown: h.loadKnown}
		for _, alt := range top[1:n] {
			a.Alternatives = append(a.Alternatives, alt.name)
		}
		p.Assignments = append(p.Assignments, a)
		h.vcpuUsed += vcpus
		h.memUsed += mem
		h.free -= mem
		h.planned += vcpus
		h.est = h.load + float64(h.planned)/float64(h.cpus)
		h.placed++
		if grouped {
			occupied[h.idx<<32|gid] = struct{}{}
		}
	}

	p.Hosts = make([]HostReport, len(hosts))
	for i := range hosts {
		h := &hosts[i]
		load := h.load
		if !h.loadKnown {
			load = -1
		}
		p.Hosts[i] = HostReport{
			Name: h.name, Eligible: h.eligible, Why: h.why, Placed: h.placed,
			VCPUs: h.vcpuUsed, VCPUCapacity: h.vcpuCap, MemoryMiB: h.memUsed, MemoryCapacityMiB: h.memCap,
			Load: load, EstimatedLoad: h.est,
		}
	}
	return p
}

type planLimits struct {
	cpuOC, memOC float64
	resCPU       int
	resMem       int64
}

// overcommitRatio is an overcommit ratio with its default; a value that is not a
// positive finite number becomes 1.0 with a note (0 is the quiet default).
func overcommitRatio(v float64, what string, notes *[]string) float64 {
	if v > 0 && !math.IsInf(v, 0) {
		return v
	}
	if v != 0 {
		*notes = append(*notes, fmt.Sprintf("%s %v is not a positive ratio; using 1.0", what, v))
	}
	return 1
}

// newHosts builds the planning state of every candidate, in input order,
// and the pool of those that may take VMs.
func newHosts(req PlaceRequest, lim planLimits, notes *[]string) ([]planHost, []*planHost) {
	hosts := make([]planHost, len(req.Hosts))
	pool := make([]*planHost, 0, len(req.Hosts))
	names := make(map[string]bool, len(req.Hosts))
	for i, c := range req.Hosts {
		h := &hosts[i]
		*h = planHost{
			idx: uint64(i), name: c.Name, cpus: c.CPUs,
			vcpuUsed: c.UsedVCPUs, memUsed: c.UsedMemoryMiB,
			free: c.FreeMemoryMiB, freeKnown: c.FreeMemoryMiB >= 0,
			load: c.Load, loadKnown: c.Load >= 0, // NaN is unknown too
		}
		if !h.loadKnown {
			h.load = 0
		}
		h.est = h.load
		h.vcpuCap = capacityOf(int64(c.CPUs-lim.resCPU), lim.cpuOC)
		h.memCap = int64(capacityOf(c.MemoryMiB-lim.resMem, lim.memOC))
		switch {
		case c.Name == "":
			h.why = "has no name"
		case names[c.Name]:
			h.why = "is listed more than once"
			*notes = append(*notes, fmt.Sprintf("host %s is listed more than once; only the first counts", c.Name))
		case c.Name == req.FailedHost:
			h.why = "is the failed host"
		case !c.Eligible:
			h.why = c.Why
			if h.why == "" {
				h.why = "not eligible"
			}
		case c.CPUs <= 0:
			h.why = fmt.Sprintf("reports %d CPUs", c.CPUs)
		case c.MemoryMiB <= 0:
			h.why = fmt.Sprintf("reports %d MiB of memory", c.MemoryMiB)
		case c.UsedVCPUs < 0 || c.UsedMemoryMiB < 0 || c.UsedVCPUs > maxCapacity || c.UsedMemoryMiB > maxCapacity:
			h.why = fmt.Sprintf("reports impossible usage (%d vCPUs, %d MiB)", c.UsedVCPUs, c.UsedMemoryMiB)
		default:
			h.eligible = true
			pool = append(pool, h)
		}
		names[c.Name] = true
		if h.cpus <= 0 {
			h.cpus = 1 // est divides by it; the host takes nothing anyway
		}
	}
	return hosts, pool
}

// capacityOf is floor(n × ratio), never negative; the epsilon keeps
// 10 × 1.1 from flooring to 10.
func capacityOf(n int64, ratio float64) int {
	if n <= 0 {
		return 0
	}
	c := math.Floor(float64(n)*ratio + 1e-9)
	if c > maxCapacity {
		return maxCapacity
	}
	return int(c)
}

// sortedVMs is the restart order: priority, then larger memory, then UUID
// (then name, then input order, so repeats stay deterministic).
func sortedVMs(in []VM) []VM {
	vms := slices.Clone(in)
	slices.SortStableFunc(vms, func(a, b VM) int {
		if c := cmp.Compare(b.Priority, a.Priority); c != 0 {
			return c
		}
		if c := cmp.Compare(b.MemoryMiB, a.MemoryMiB); c != 0 {
			return c
		}
		if c := strings.Compare(a.UUID, b.UUID); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return vms
}

// unplaceable is why vm is not scheduled at all, or "".
func unplaceable(vm VM, seen map[string]bool) string {
	switch {
	case vm.UUID == "":
		return fmt.Sprintf("invalid: VM %q has no UUID", vm.Name)
	case seen[vm.UUID]:
		return "duplicate: UUID " + vm.UUID + " is listed more than once; only the first is placed"
	}
	seen[vm.UUID] = true
	switch {
	case vm.OptOut:
		if vm.Reason != "" {
			return vm.Reason
		}
		return `opted out by metadata evacuate="false"`
	case !vm.Evacuable:
		if vm.Reason == "" {
			return "not evacuable"
		}
		return "not evacuable: " + vm.Reason
	case vm.VCPUs < 0 || vm.VCPUs > maxCapacity:
		return fmt.Sprintf("invalid: %d vCPUs", vm.VCPUs)
	case vm.MemoryMiB <= 0 || vm.MemoryMiB > maxCapacity:
		return fmt.Sprintf("invalid: %d MiB of memory", vm.MemoryMiB)
	}
	return ""
}

// maxListed caps host lists in reasons.
const maxListed = 5

// explainUnplaced says why no host took vm. It walks the pool again with counters,
// which the hot loop in Place does not pay for.
func explainUnplaced(vm VM, vcpus int, hosts []planHost, pool []*planHost, lim planLimits, grouped func(*planHost) bool) string {
	if len(pool) == 0 {
		if len(hosts) == 0 {
			return "no eligible host: no candidate hosts"
		}
		var list []string
		for i := range hosts {
			name := hosts[i].name
			if name == "" {
				name = fmt.Sprintf("host #%d", i+1)
			}
			list = append(list, name+" "+hosts[i].why)
		}
		slices.Sort(list)
		return "no eligible host: " + capList(list)
	}
	// "Best" is the most room left, then the name, so the reason does not
	// depend on the order of the hosts.
	var bestCPU, bestMem *planHost
	var nCPU, nMem int
	var inGroup []string
	for _, h := range pool {
		switch {
		case h.vcpuUsed+vcpus > h.vcpuCap:
			nCPU++
			if bestCPU == nil || roomier(h.vcpuCap-h.vcpuUsed, bestCPU.vcpuCap-bestCPU.vcpuUsed, h, bestCPU) {
				bestCPU = h
			}
		case vm.MemoryMiB > h.memRoom():
			nMem++
			if bestMem == nil || roomier(h.memRoom(), bestMem.memRoom(), h, bestMem) {
				bestMem = h
			}
		case grouped(h):
			inGroup = append(inGroup, h.name)
		}
	}
	slices.Sort(inGroup)
	cpuWhy := func() string {
		s := fmt.Sprintf("%s has %d vCPUs free (cpu overcommit %s", bestCPU.name, max(bestCPU.vcpuCap-bestCPU.vcpuUsed, 0), fmtRatio(lim.cpuOC))
		if lim.resCPU > 0 {
			s += fmt.Sprintf(", %d CPUs reserved", lim.resCPU)
		}
		return s + ")"
	}
	memWhy := func() string {
		s := fmt.Sprintf("%s has %d MiB free (memory overcommit %s", bestMem.name, max(bestMem.memRoom(), 0), fmtRatio(lim.memOC))
		if lim.resMem > 0 {
			s += fmt.Sprintf(", %d MiB reserved", lim.resMem)
		}
		if bestMem.freeKnown && bestMem.free < bestMem.memCap-bestMem.memUsed {
			s += ", limited by the memory the host reports free"
		}
		return s + ")"
	}
	switch {
	case nMem == 0 && len(inGroup) == 0:
		return fmt.Sprintf("no capacity: needs %d vCPUs; best host %s", vcpus, cpuWhy())
	case nCPU == 0 && len(inGroup) == 0:
		return fmt.Sprintf("no capacity: needs %d MiB; best host %s", vm.MemoryMiB, memWhy())
	case nCPU == 0 && nMem == 0:
		return fmt.Sprintf("anti-affinity group %s already on every feasible host (%s)", vm.Group, capList(inGroup))
	}
	parts := []string{fmt.Sprintf("no host fits: needs %d vCPUs and %d MiB", vcpus, vm.MemoryMiB)}
	if nCPU > 0 {
		parts = append(parts, fmt.Sprintf("%d host(s) lack vCPUs (best %s)", nCPU, cpuWhy()))
	}
	if nMem > 0 {
		parts = append(parts, fmt.Sprintf("%d host(s) lack memory (best %s)", nMem, memWhy()))
	}
	if len(inGroup) > 0 {
		parts = append(parts, fmt.Sprintf("anti-affinity group %s already on %s", vm.Group, capList(inGroup)))
	}
	return strings.Join(parts, "; ")
}

func roomier[N int | int64](ra, rb N, a, b *planHost) bool {
	return ra > rb || ra == rb && a.name < b.name
}

func capList(list []string) string {
	if len(list) <= maxListed {
		return strings.Join(list, ", ")
	}
	return strings.Join(list[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(list)-maxListed)
}

// fmtRatio prints 1 as "1.0" and 1.25 as "1.25".
func fmtRatio(r float64) string {
	if r == math.Trunc(r) {
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}
