package store

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

const (
	waitLong  = 10 * time.Second
	pollEvery = time.Millisecond
)

func benchRecord(i int) Record {
	return Record{
		At: t0.Add(time.Duration(i) * time.Millisecond), Host: fmt.Sprintf("host-%04d", i%1000),
		Kind: "monitor", From: "normal", To: "suspect", Reason: "heartbeat stale",
		CorrelationID: fmt.Sprintf("inc-%d", i/10),
		Evidence:      json.RawMessage(`{"heartbeat_age_ms":15021,"probes":{"tcp_agent":"timeout","icmp":"timeout"},"bmc":{"reachable":true,"power":"on"}}`),
	}
}

// BenchmarkAppend measures durable (fsynced) appends; ns/op is per Append
// call, records/s counts records.
func BenchmarkAppend(b *testing.B) {
	for _, batch := range []int{1, 100} {
		name := "single"
		if batch > 1 {
			name = fmt.Sprintf("batch%d", batch)
		}
		b.Run(name, func(b *testing.B) {
			s, err := Open(Path(b.TempDir()), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			recs := make([]Record, batch)
			n := 0
			b.ResetTimer()
			for b.Loop() {
				for j := range recs {
					recs[j] = benchRecord(n)
					n++
				}
				if _, err := s.Append(recs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
		})
	}
	// Many goroutines appending one record each: group commit shares fsyncs.
	b.Run("parallel-single", func(b *testing.B) {
		s, err := Open(Path(b.TempDir()), Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.SetParallelism(25) // 50 goroutines on 2 cores, like many hosts at once
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := s.Append(benchRecord(i)); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
