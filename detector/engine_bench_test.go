package detector

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// discard is a History and MemoStore that keeps nothing, so the benchmark
// measures the engine and not the store.
type discard struct{}

func (discard) Append(recs ...store.Record) ([]store.Record, error) { return recs, nil }
func (discard) PutHostMemos(map[string]store.HostMemo) error        { return nil }

// BenchmarkEngineStep is one 50 ms tick of a 10,000-host engine whose agents
// heartbeat every second, staggered over the second as real agents are.
// Heartbeat intake is outside the timer: only Step is measured.
func BenchmarkEngineStep(b *testing.B) {
	for _, silentPct := range []int{0, 1} {
		b.Run(fmt.Sprintf("hosts=10000/silent=%d%%", silentPct), func(b *testing.B) {
			benchEngineStep(b, 10000, 10000*silentPct/100)
		})
	}
}

func benchEngineStep(b *testing.B, n, silent int) {
	clk := &fakeClock{now: t0}
	w := newWorld()
	names := make([]string, n)
	var hc []HostConfig
	quiet := map[int]bool{} // these stop heartbeating: they lost power
	for i := range names {
		names[i] = fmt.Sprintf("host-%05d", i)
		hc = append(hc, HostConfig{Name: names[i], Rack: fmt.Sprintf("r%02d", i%40), ReadinessInterval: 10 * time.Minute})
		w.ready[names[i]] = true
		if silent > 0 && i%(n/silent) == 0 {
			quiet[i] = true
			w.power[names[i]] = power.Off
		}
	}
	mc := mcfg()
	cfg := EngineConfig{Hosts: hc, Monitor: mc, Storm: StormGuard{MaxFraction: 0.5, Window: time.Minute}, Tick: 50 * time.Millisecond}
	e, err := NewEngine(cfg, Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w,
		History: discard{}, Memos: discard{}, Alerter: w, Log: zerolog.Nop(), Seed: 1}, nil)
	if err != nil {
		b.Fatal(err)
	}
	seq := make([]uint64, n)
	ctx := context.Background()
	tick, slots := 50*time.Millisecond, int(time.Second/(50*time.Millisecond))
	step := 0
	// beat heartbeats the hosts whose slot in the second is now: every host
	// once a second, 1/20 of them per tick.
	beat := func(all bool) {
		for i := step % slots; i < n; i += slots {
			if quiet[i] && !all {
				continue
			}
			seq[i]++
			if _, err := e.Heartbeat(heartbeat.Heartbeat{Host: names[i], BootID: "boot", Seq: seq[i], AgentStart: t0}); err != nil {
				b.Fatal(err)
			}
		}
	}
	one := func(all bool) {
		now := clk.Add(tick)
		beat(all)
		step++
		e.Step(ctx, now)
	}
	// Warm up: everybody heartbeats for 2 s, then the silent ones stop and
	// are judged (probes, BMC reads, would-fence) before the timer starts.
	for range 2 * slots {
		one(true)
		e.Wait()
	}
	for range 30 * slots {
		one(false)
		e.Wait()
	}
	for i := range quiet {
		if s, _ := e.Host(names[i]); s.Verdict != HostDown {
			b.Fatalf("%s: verdict %s after warm-up, want host-down", names[i], s.Verdict)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		now := clk.Add(tick)
		beat(false)
		step++
		b.StartTimer()
		e.Step(ctx, now)
		b.StopTimer()
		e.Wait()
		b.StartTimer()
	}
}

// BenchmarkEngineHeartbeat is one heartbeat taken by a 10,000-host engine
// whose agents heartbeat every second, with the engine ticking every 50 ms
// (outside the timer) so that hosts sleep between heartbeats as they do in
// the daemon.
func BenchmarkEngineHeartbeat(b *testing.B) {
	const n = 10000
	clk := &fakeClock{now: t0}
	w := newWorld()
	var hc []HostConfig
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("host-%05d", i)
		hc = append(hc, HostConfig{Name: names[i], Rack: fmt.Sprintf("r%02d", i%40)})
	}
	e, err := NewEngine(EngineConfig{Hosts: hc, Monitor: mcfg(), Storm: StormGuard{MaxFraction: 0.5, Window: time.Minute}},
		Deps{Clock: clk, Prober: w, Refs: w, Power: w, Readiness: w, History: discard{}, Memos: discard{}, Alerter: w, Log: zerolog.Nop(), Seed: 1}, nil)
	if err != nil {
		b.Fatal(err)
	}
	seq := make([]uint64, n)
	ctx := context.Background()
	beat := func(i int) {
		seq[i]++
		if o, err := e.Heartbeat(heartbeat.Heartbeat{Host: names[i], BootID: "boot", Seq: seq[i], AgentStart: t0}); err != nil || !o.Accepted() {
			b.Fatal(o, err)
		}
	}
	// 10,000 heartbeats a second: 100 µs apart, a tick every 500.
	for i := range 3 * n {
		now := clk.Add(100 * time.Microsecond)
		beat(i % n)
		if i%500 == 499 {
			e.Step(ctx, now)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		now := clk.Add(100 * time.Microsecond)
		beat(i % n)
		if i%500 == 499 {
			b.StopTimer()
			e.Step(ctx, now)
			b.StartTimer()
		}
	}
}
