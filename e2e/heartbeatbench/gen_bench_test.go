package heartbeatbench

import (
	"context"
	"testing"
	"time"
)

// BenchmarkAgentBeat is one simulated agent's heartbeat and its ack, over
// loopback to the fake daemon: the generator's own cost per beat (the fake's
// is in it too).
func BenchmarkAgentBeat(b *testing.B) {
	for _, tr := range []string{TransportUDP, TransportHTTP} {
		b.Run(tr, func(b *testing.B) {
			f := startFake(b, "tok")
			g, err := NewGenerator(GenOptions{BaseURL: f.url, Secret: "tok", Hosts: hostsN(1), Interval: time.Second,
				Domains: 4, Transport: tr, ReplyTimeout: 5 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			a := g.agents[0]
			defer a.closeConn()
			ctx := context.Background()
			b.ReportAllocs()
			seq := uint64(0)
			for b.Loop() {
				seq++
				if _, err := a.send(ctx, seq, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
