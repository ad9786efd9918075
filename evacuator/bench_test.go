package evacuator

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchRequest is a cluster of n hosts and v VMs to move. fill is the
// share of the cluster's spare capacity the VMs ask for: below 1 nearly
// all fit; above 1 the tail is unplaced, the slow path (every unplaced VM
// scans every host twice: once to place, once to explain).
func benchRequest(v, n int, fill float64) PlaceRequest {
	r := rand.New(rand.NewPCG(uint64(v), uint64(n)))
	req := PlaceRequest{FailedHost: "h-dead", Limits: Limits{CPUOvercommit: 4, MemoryOvercommit: 1, ReservedCPUs: 2, ReservedMemoryMiB: 8192}}
	var spareCPU, spareMem int64
	for i := range n {
		c := Candidate{
			Name: fmt.Sprintf("h%04d", i), Rack: fmt.Sprintf("r%02d", i/20), Eligible: r.IntN(100) < 95, Why: "admin disabled",
			CPUs: 32 << r.IntN(3), MemoryMiB: 262144 << r.IntN(3), FreeMemoryMiB: -1, Load: r.Float64(),
		}
		c.UsedVCPUs = int(float64((c.CPUs-2)*4) * (0.3 + 0.4*r.Float64()))
		c.UsedMemoryMiB = int64(float64(c.MemoryMiB-8192) * (0.3 + 0.4*r.Float64()))
		if r.IntN(100) < 80 {
			c.FreeMemoryMiB = c.MemoryMiB - c.UsedMemoryMiB
		}
		if r.IntN(100) < 10 {
			c.Load = -1
		}
		if r.IntN(100) < 30 {
			c.Groups = map[string]int{fmt.Sprintf("g%d", r.IntN(50)): 1}
		}
		if c.Eligible {
			spareCPU += int64((c.CPUs-2)*4 - c.UsedVCPUs)
			spareMem += c.MemoryMiB - 8192 - c.UsedMemoryMiB
		}
		req.Hosts = append(req.Hosts, c)
	}
	// Sizes are scaled so the VMs' total is fill × the spare capacity.
	memPer, cpuPer := float64(spareMem)*fill/float64(v), float64(spareCPU)*fill/float64(v)
	for i := range v {
		vm := evm(fmt.Sprintf("%08x-0000-4000-8000-%012d", r.Uint32(), i), max(1, int(cpuPer*2*r.Float64())), max(256, int64(memPer*2*r.Float64())))
		vm.Priority = r.IntN(6)
		if r.IntN(100) < 10 {
			vm.Group = fmt.Sprintf("g%d", r.IntN(50))
		}
		req.VMs = append(req.VMs, vm)
	}
	return req
}

// BenchmarkPlace: goals are ≤ 50 ms for 1,000 VMs onto 100 hosts and ≤ 1 s
// for 10,000 onto 1,000.
func BenchmarkPlace(b *testing.B) {
	for _, tc := range []struct {
		vms, hosts int
		fill       float64
	}{
		{1000, 100, 0.8}, {1000, 100, 1.5}, {10000, 1000, 0.8}, {10000, 1000, 1.5},
	} {
		req := benchRequest(tc.vms, tc.hosts, tc.fill)
		b.Run(fmt.Sprintf("vms=%d/hosts=%d/fill=%.1f", tc.vms, tc.hosts, tc.fill), func(b *testing.B) {
			var p Placement
			for b.Loop() {
				p = Place(req)
			}
			b.ReportMetric(float64(len(p.Unplaced)), "unplaced")
		})
	}
}
