package evacuator

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// evm is an evacuable VM named after its UUID.
func evm(uuid string, vcpus int, mem int64) VM {
	return VM{UUID: uuid, Name: uuid, VCPUs: vcpus, MemoryMiB: mem, Evacuable: true, Reason: "all disks on shared storage"}
}

// cand is an eligible, idle host that does not report free memory.
func cand(name string, cpus int, mem int64) Candidate {
	return Candidate{Name: name, Eligible: true, CPUs: cpus, MemoryMiB: mem, FreeMemoryMiB: -1}
}

// placedOn maps each placed VM's UUID to its host.
func placedOn(p Placement) map[string]string {
	m := map[string]string{}
	for _, a := range p.Assignments {
		m[a.VM.UUID] = a.Host
	}
	return m
}

func unplacedWhy(p Placement) map[string]string {
	m := map[string]string{}
	for _, u := range p.Unplaced {
		m[u.VM.UUID] = u.Reason
	}
	return m
}

func withCand(c Candidate, f func(*Candidate)) Candidate { f(&c); return c }

func TestPlaceFilters(t *testing.T) {
	big := cand("big", 64, 262144)
	for _, tc := range []struct {
		name     string
		hosts    []Candidate
		vms      []VM
		limits   Limits
		failed   string
		placed   map[string]string
		unplaced map[string]string
	}{
		{
			name: "ineligible hosts are skipped",
			hosts: []Candidate{
				withCand(cand("h1", 8, 8192), func(c *Candidate) { c.Eligible, c.Why = false, "admin disabled" }),
				cand("h2", 8, 8192),
			},
			vms:    []VM{evm("a", 1, 512)},
			placed: map[string]string{"a": "h2"},
		},
		{
			name:   "the failed host is refused even when marked eligible",
			hosts:  []Candidate{cand("dead", 64, 65536), cand("h2", 2, 2048)},
			failed: "dead",
			vms:    []VM{evm("a", 1, 512)},
			placed: map[string]string{"a": "h2"},
		},
		{
			name: "no eligible host names every host and why",
			hosts: []Candidate{
				withCand(cand("h1", 8, 8192), func(c *Candidate) { c.Eligible, c.Why = false, "admin disabled" }),
				withCand(cand("h2", 8, 8192), func(c *Candidate) { c.Eligible, c.Why = false, "monitor unreachable" }),
				cand("h3", 8, 8192),
				withCand(cand("h4", 0, 8192), func(c *Candidate) {}),
				withCand(cand("h5", 8, 8192), func(c *Candidate) { c.Eligible = false }),
				withCand(cand("h6", 8, 8192), func(c *Candidate) { c.UsedVCPUs = math.MaxInt }),
				withCand(cand("h7", 8, 0), func(c *Candidate) {}),
			},
			failed: "h3",
			vms:    []VM{evm("a", 1, 512)},
			unplaced: map[string]string{"a": "no eligible host: h1 admin disabled, h2 monitor unreachable, h3 is the failed host, h4 reports 0 CPUs, h5 not eligible" +
				" and 2 more"},
		},
		{
			name:     "no hosts at all",
			vms:      []VM{evm("a", 1, 512)},
			unplaced: map[string]string{"a": "no eligible host: no candidate hosts"},
		},
		{
			name:     "vCPUs: allocated plus the VM must fit the CPUs",
			hosts:    []Candidate{withCand(cand("h1", 8, 65536), func(c *Candidate) { c.UsedVCPUs = 6 })},
			vms:      []VM{evm("a", 4, 512)},
			unplaced: map[string]string{"a": "no capacity: needs 4 vCPUs; best host h1 has 2 vCPUs free (cpu overcommit 1.0)"},
		},
		{
			name:   "vCPUs: overcommit multiplies",
			hosts:  []Candidate{withCand(cand("h1", 8, 65536), func(c *Candidate) { c.UsedVCPUs = 6 })},
			limits: Limits{CPUOvercommit: 1.5},
			vms:    []VM{evm("a", 4, 512), evm("b", 2, 256)},
			placed: map[string]string{"a": "h1", "b": "h1"}, // 6+4+2 = 12 = 8 × 1.5
		},
		{
			name:     "vCPUs: overcommit applies after the reservation",
			hosts:    []Candidate{withCand(cand("h1", 8, 65536), func(c *Candidate) { c.UsedVCPUs = 6 })},
			limits:   Limits{CPUOvercommit: 1.5, ReservedCPUs: 2}, // (8-2) × 1.5 = 9
			vms:      []VM{evm("a", 4, 512)},
			unplaced: map[string]string{"a": "no capacity: needs 4 vCPUs; best host h1 has 3 vCPUs free (cpu overcommit 1.5, 2 CPUs reserved)"},
		},
		{
			name:   "vCPUs: a VM without a vcpu element counts as 1",
			hosts:  []Candidate{withCand(cand("h1", 2, 65536), func(c *Candidate) { c.UsedVCPUs = 1 })},
			vms:    []VM{evm("a", 0, 512), evm("b", 0, 256)},
			placed: map[string]string{"a": "h1"},
			unplaced: map[string]string{
				"b": "no capacity: needs 1 vCPUs; best host h1 has 0 vCPUs free (cpu overcommit 1.0)",
			},
		},
		{
			name:     "memory: allocated plus the VM must fit",
			hosts:    []Candidate{withCand(cand("h1", 8, 4096), func(c *Candidate) { c.UsedMemoryMiB = 3072 }), withCand(cand("h2", 8, 2048), func(c *Candidate) { c.UsedMemoryMiB = 2048 })},
			vms:      []VM{evm("a", 1, 2048)},
			unplaced: map[string]string{"a": "no capacity: needs 2048 MiB; best host h1 has 1024 MiB free (memory overcommit 1.0)"},
		},
		{
			name:   "memory: overcommit and reservation",
			hosts:  []Candidate{withCand(cand("h1", 8, 4096), func(c *Candidate) { c.UsedMemoryMiB = 3072 })},
			limits: Limits{MemoryOvercommit: 1.5, ReservedMemoryMiB: 1024}, // (4096-1024) × 1.5 = 4608
			vms:    []VM{evm("a", 1, 1536), evm("b", 1, 1)},
			placed: map[string]string{"a": "h1"},
			unplaced: map[string]string{
				"b": "no capacity: needs 1 MiB; best host h1 has 0 MiB free (memory overcommit 1.5, 1024 MiB reserved)",
			},
		},
		{
			name: "memory: the host's reported free memory counts, minus the plan",
			hosts: []Candidate{
				withCand(cand("h1", 8, 65536), func(c *Candidate) { c.FreeMemoryMiB = 1500 }),
			},
			vms:    []VM{evm("a", 1, 1024), evm("b", 1, 1000)},
			placed: map[string]string{"a": "h1"},
			unplaced: map[string]string{
				"b": "no capacity: needs 1000 MiB; best host h1 has 476 MiB free (memory overcommit 1.0, limited by the memory the host reports free)",
			},
		},
		{
			name: "memory: reported free memory of 0 is known, not unknown",
			hosts: []Candidate{
				withCand(cand("h1", 8, 65536), func(c *Candidate) { c.FreeMemoryMiB = 0 }),
				withCand(cand("h2", 8, 65536), func(c *Candidate) { c.Load = 0.9 }),
			},
			vms:    []VM{evm("a", 1, 1)},
			placed: map[string]string{"a": "h2"},
		},
		{
			name: "anti-affinity: a group already on a host",
			hosts: []Candidate{
				withCand(cand("h1", 8, 8192), func(c *Candidate) { c.Groups = map[string]int{"db": 1} }),
				withCand(cand("h2", 8, 8192), func(c *Candidate) { c.Load = 0.9; c.Groups = map[string]int{"web": 3, "db": 0} }),
			},
			vms:    []VM{with2(evm("a", 1, 512), "db")},
			placed: map[string]string{"a": "h2"},
		},
		{
			name:   "anti-affinity: the plan in progress counts",
			hosts:  []Candidate{cand("h1", 8, 8192), cand("h2", 8, 8192)},
			vms:    []VM{with2(evm("a", 1, 512), "db"), with2(evm("b", 1, 512), "db"), with2(evm("c", 1, 512), "db"), evm("d", 1, 512)},
			placed: map[string]string{"a": "h1", "b": "h2", "d": "h1"},
			unplaced: map[string]string{
				"c": "anti-affinity group db already on every feasible host (h1, h2)",
			},
		},
		{
			name: "mixed reasons are all named",
			hosts: []Candidate{
				withCand(cand("h1", 1, 8192), func(c *Candidate) {}),
				withCand(cand("h2", 8, 1024), func(c *Candidate) {}),
				withCand(cand("h3", 8, 8192), func(c *Candidate) { c.Groups = map[string]int{"db": 1} }),
			},
			vms: []VM{with2(evm("a", 2, 2048), "db")},
			unplaced: map[string]string{
				"a": "no host fits: needs 2 vCPUs and 2048 MiB; 1 host(s) lack vCPUs (best h1 has 1 vCPUs free (cpu overcommit 1.0)); 1 host(s) lack memory (best h2 has 1024 MiB free (memory overcommit 1.0)); anti-affinity group db already on h3",
			},
		},
		{
			name:  "VMs that cannot move are reported with their own reason",
			hosts: []Candidate{big},
			vms: []VM{
				{UUID: "opt", VCPUs: 1, MemoryMiB: 1, OptOut: true, Reason: `opted out by metadata evacuate="false"`},
				{UUID: "opt2", VCPUs: 1, MemoryMiB: 1, OptOut: true},
				{UUID: "local", VCPUs: 1, MemoryMiB: 1, Reason: "disk vdb is on local storage (/var/lib/libvirt/images/x.qcow2)"},
				{UUID: "noreason", VCPUs: 1, MemoryMiB: 1},
				{Name: "nameless", VCPUs: 1, MemoryMiB: 1, Evacuable: true},
				evm("nomem", 1, 0),
				evm("negcpu", -1, 1),
				evm("hugecpu", math.MaxInt, 1),
				evm("hugemem", 1, math.MaxInt64),
				evm("dup", 1, 10),
				evm("dup", 1, 10),
			},
			placed: map[string]string{"dup": "big"},
			unplaced: map[string]string{
				"opt":      `opted out by metadata evacuate="false"`,
				"opt2":     `opted out by metadata evacuate="false"`,
				"local":    "not evacuable: disk vdb is on local storage (/var/lib/libvirt/images/x.qcow2)",
				"noreason": "not evacuable",
				"":         `invalid: VM "nameless" has no UUID`,
				"nomem":    "invalid: 0 MiB of memory",
				"negcpu":   "invalid: -1 vCPUs",
				"hugecpu":  "invalid: 9223372036854775807 vCPUs",
				"hugemem":  "invalid: 9223372036854775807 MiB of memory",
				"dup":      "duplicate: UUID dup is listed more than once; only the first is placed",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Place(PlaceRequest{FailedHost: tc.failed, VMs: tc.vms, Hosts: tc.hosts, Limits: tc.limits})
			if tc.placed == nil {
				tc.placed = map[string]string{}
			}
			if tc.unplaced == nil {
				tc.unplaced = map[string]string{}
			}
			assert.Equal(t, tc.placed, placedOn(p))
			assert.Equal(t, tc.unplaced, unplacedWhy(p))
			assert.Equal(t, len(tc.vms), len(p.Assignments)+len(p.Unplaced))
		})
	}
}

func with2(vm VM, group string) VM { vm.Group = group; return vm }

func TestPlaceRanking(t *testing.T) {
	load := func(c Candidate, l float64) Candidate { c.Load = l; return c }
	for _, tc := range []struct {
		name  string
		hosts []Candidate
		vms   []VM
		want  []string // hosts in assignment order
	}{
		{
			name:  "lowest CPU load wins, whatever the input order",
			hosts: []Candidate{load(cand("h1", 8, 8192), 0.7), load(cand("h2", 8, 8192), 0.2), load(cand("h3", 8, 8192), 0.5)},
			vms:   []VM{evm("a", 1, 512)},
			want:  []string{"h2"},
		},
		{
			name:  "unknown load ranks after any known load",
			hosts: []Candidate{load(cand("h1", 64, 65536), -1), load(cand("h2", 8, 8192), 0.95), load(cand("h3", 64, 65536), math.NaN())},
			vms:   []VM{evm("a", 1, 512)},
			want:  []string{"h2"},
		},
		{
			name:  "among unknown loads the plan's share decides",
			hosts: []Candidate{load(cand("h1", 4, 65536), -1), load(cand("h2", 8, 8192), -1)},
			vms:   []VM{evm("a", 2, 512), evm("b", 2, 512), evm("c", 2, 512)},
			// h1 wins a on memory; then h1 0.5 vs h2 0 → h2; then h1 0.5 vs h2 0.25 → h2
			want: []string{"h1", "h2", "h2"},
		},
		{
			name:  "equal load: most memory room, then name",
			hosts: []Candidate{cand("h3", 8, 8192), cand("h2", 8, 16384), cand("h1", 8, 16384)},
			vms:   []VM{evm("a", 1, 8192)},
			want:  []string{"h1"},
		},
		{
			name:  "memory room counts the host's reported free memory",
			hosts: []Candidate{withCand(cand("h1", 8, 16384), func(c *Candidate) { c.FreeMemoryMiB = 2048 }), cand("h2", 8, 8192)},
			vms:   []VM{evm("a", 1, 1024)},
			want:  []string{"h2"},
		},
		{
			name: "the estimated load grows with the plan, so one idle host does not take all",
			// h1 idle with 4 CPUs, h2 at 0.5: h1 takes 2 VMs (0 → 0.25 → 0.5), then
			// they tie at 0.5 and h1 has more room... until it does not.
			hosts: []Candidate{load(cand("h1", 4, 8192), 0), load(cand("h2", 4, 4096), 0.5)},
			vms:   []VM{evm("a", 1, 1024), evm("b", 1, 1024), evm("c", 1, 1024), evm("d", 1, 1024)},
			// a: h1 (0<0.5); b: h1 (0.25<0.5); c: tie 0.5, room h1 6144 > h2 4096 → h1;
			// d: h1 0.75 > h2 0.5 → h2.
			want: []string{"h1", "h1", "h1", "h2"},
		},
		{
			name:  "spread over equal hosts",
			hosts: []Candidate{cand("h1", 4, 8192), cand("h2", 4, 8192)},
			vms:   []VM{evm("a", 1, 1024), evm("b", 1, 1024), evm("c", 1, 1024), evm("d", 1, 1024)},
			want:  []string{"h1", "h2", "h1", "h2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Place(PlaceRequest{VMs: tc.vms, Hosts: tc.hosts})
			require.Empty(t, p.Unplaced)
			var got []string
			for _, a := range p.Assignments {
				got = append(got, a.Host)
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestPlaceOrder(t *testing.T) {
	prio := func(vm VM, p int) VM { vm.Priority = p; return vm }
	// Room for exactly two of the 1024 MiB VMs.
	hosts := []Candidate{cand("h1", 16, 2048)}
	vms := []VM{
		evm("c-small", 1, 512),
		prio(evm("b-low", 1, 1024), -5),
		prio(evm("z-high", 1, 1024), 10),
		evm("a-big", 1, 1024),
		evm("b-big", 1, 1024),
	}
	p := Place(PlaceRequest{VMs: vms, Hosts: hosts})
	var order []string
	for _, a := range p.Assignments {
		order = append(order, a.VM.UUID)
	}
	assert.Equal(t, []string{"z-high", "a-big"}, order, "priority first, then larger memory, then UUID")
	var rest []string
	for _, u := range p.Unplaced {
		rest = append(rest, u.VM.UUID)
	}
	assert.Equal(t, []string{"b-big", "c-small", "b-low"}, rest, "unplaced are reported in the same order")
}

func TestPlaceAlternatives(t *testing.T) {
	hosts := []Candidate{
		withCand(cand("h1", 8, 8192), func(c *Candidate) { c.Load = 0.1 }),
		withCand(cand("h2", 8, 8192), func(c *Candidate) { c.Load = 0.2 }),
		withCand(cand("full", 8, 8192), func(c *Candidate) { c.Load = 0.0; c.UsedMemoryMiB = 8192 }),
		withCand(cand("h3", 8, 8192), func(c *Candidate) { c.Load = 0.3 }),
		withCand(cand("h4", 8, 8192), func(c *Candidate) { c.Load = 0.4 }),
		withCand(cand("h5", 8, 8192), func(c *Candidate) { c.Load = 0.5 }),
		withCand(cand("off", 8, 8192), func(c *Candidate) { c.Eligible = false }),
	}
	p := Place(PlaceRequest{VMs: []VM{evm("a", 4, 1024), evm("b", 4, 1024)}, Hosts: hosts})
	require.Len(t, p.Assignments, 2)
	a, b := p.Assignments[0], p.Assignments[1]
	assert.Equal(t, "h1", a.Host)
	assert.Equal(t, []string{"h2", "h3", "h4"}, a.Alternatives)
	assert.InDelta(t, 0.1, a.Score, 1e-12)
	assert.True(t, a.LoadKnown)
	// h1 now estimates 0.1 + 4/8 = 0.6: last.
	assert.Equal(t, "h2", b.Host)
	assert.Equal(t, []string{"h3", "h4", "h5"}, b.Alternatives)

	one := Place(PlaceRequest{VMs: []VM{evm("a", 1, 1)}, Hosts: hosts[:1]})
	assert.Empty(t, one.Assignments[0].Alternatives)
}

func TestPlaceHostReport(t *testing.T) {
	hosts := []Candidate{
		withCand(cand("h1", 8, 8192), func(c *Candidate) { c.Load = 0.25; c.UsedVCPUs = 2; c.UsedMemoryMiB = 1024 }),
		withCand(cand("h2", 8, 8192), func(c *Candidate) { c.Eligible, c.Why = false, "admin drained" }),
		withCand(cand("h1", 64, 65536), func(c *Candidate) {}),
		withCand(cand("h3", 8, 8192), func(c *Candidate) { c.UsedMemoryMiB = -1 }),
	}
	p := Place(PlaceRequest{VMs: []VM{evm("a", 4, 2048)}, Hosts: hosts, Limits: Limits{CPUOvercommit: 2}})
	assert.Equal(t, []HostReport{
		{Name: "h1", Eligible: true, Placed: 1, VCPUs: 6, VCPUCapacity: 16, MemoryMiB: 3072, MemoryCapacityMiB: 8192, Load: 0.25, EstimatedLoad: 0.75},
		{Name: "h2", Why: "admin drained", VCPUCapacity: 16, MemoryCapacityMiB: 8192, Load: 0},
		{Name: "h1", Why: "is listed more than once", VCPUCapacity: 128, MemoryCapacityMiB: 65536, Load: 0},
		{Name: "h3", Why: "reports impossible usage (0 vCPUs, -1 MiB)", VCPUCapacity: 16, MemoryMiB: -1, MemoryCapacityMiB: 8192, Load: 0},
	}, p.Hosts)
	assert.Equal(t, []string{"host h1 is listed more than once; only the first counts"}, p.Notes)
}

func TestPlaceLimitDefaults(t *testing.T) {
	hosts := []Candidate{cand("h1", 10, 10000)}
	for _, tc := range []struct {
		limits          Limits
		vcpuCap, memCap int
		notes           []string
	}{
		{Limits{}, 10, 10000, nil},
		{Limits{CPUOvercommit: 1.1, MemoryOvercommit: 0.5}, 11, 5000, nil},
		{Limits{CPUOvercommit: -2, MemoryOvercommit: math.NaN()}, 10, 10000, []string{
			"cpu overcommit -2 is not a positive ratio; using 1.0", "memory overcommit NaN is not a positive ratio; using 1.0"}},
		{Limits{CPUOvercommit: math.Inf(1), ReservedCPUs: -1, ReservedMemoryMiB: -5}, 10, 10000, []string{
			"cpu overcommit +Inf is not a positive ratio; using 1.0", "reserved CPUs -1 is negative; using 0", "reserved memory -5 MiB is negative; using 0"}},
		{Limits{CPUOvercommit: 1e300}, maxCapacity, 10000, nil},
		{Limits{ReservedCPUs: 12, ReservedMemoryMiB: 1000}, 0, 9000, nil}, // reserved above the host's size leaves nothing
	} {
		t.Run(fmt.Sprintf("%+v", tc.limits), func(t *testing.T) {
			p := Place(PlaceRequest{Hosts: hosts, Limits: tc.limits})
			require.Len(t, p.Hosts, 1)
			assert.Equal(t, tc.notes, p.Notes)
			assert.Equal(t, tc.vcpuCap, p.Hosts[0].VCPUCapacity)
			assert.Equal(t, int64(tc.memCap), p.Hosts[0].MemoryCapacityMiB)
		})
	}
}

func TestFmtRatio(t *testing.T) {
	for r, want := range map[float64]string{1: "1.0", 2: "2.0", 1.25: "1.25", 0.5: "0.5", 16: "16.0"} {
		assert.Equal(t, want, fmtRatio(r))
	}
}
