package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// BenchmarkHeartbeatHandler is the daemon's cost of one heartbeat with four
// domains, HTTP parsing excluded: decode, validate, detector, domain homes,
// ack. At 10,000 hosts × 1/s this is the heart of the scale budget.
func BenchmarkHeartbeatHandler(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "s.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	const hosts = 1000
	var hc []detector.HostConfig
	for i := range hosts {
		hc = append(hc, detector.HostConfig{Name: fmt.Sprintf("h%d", i), Rack: "r1"})
	}
	eng, err := detector.NewEngine(detector.EngineConfig{Hosts: hc,
		Monitor: detector.MonitorConfig{Thresholds: detector.Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second},
			RecoveryHeartbeats: 3, Settle: time.Second},
		Storm: detector.StormGuard{MaxFraction: 0.5, Window: time.Minute},
	}, detector.Deps{Prober: quiet{}, Power: quiet{}, Readiness: quiet{}, History: st, Memos: st, Alerter: quiet{}, Log: zerolog.Nop()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	d, err := daemon.New(st, eng, func() time.Duration { return time.Second }, nil, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(d, Tokens{Agent: agentTok, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	bodies := make([][]byte, hosts)
	for i := range hosts {
		var doms []heartbeat.Domain
		for j := range 4 {
			doms = append(doms, heartbeat.Domain{UUID: fmt.Sprintf("%08x-0000-4000-8000-%012x", i, j), Name: fmt.Sprintf("vm-%d-%d", i, j), State: hypervisor.StateRunning})
		}
		bodies[i], _ = json.Marshal(heartbeat.Heartbeat{Host: fmt.Sprintf("h%d", i), BootID: "boot", Seq: 1, AgentStart: time.Unix(1, 0),
			AgentVersion: "v1", SentAt: time.Now(), Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true},
				Storage: []heartbeat.Check{{Name: "/mnt/shared", OK: true}}}, Domains: doms})
	}
	seqs := make([]int, hosts)
	beat := func(n int) {
		i := n % hosts
		seqs[i]++
		body := bytes.Replace(bodies[i], []byte(`"seq":1,`), fmt.Appendf(nil, `"seq":%d,`, seqs[i]), 1)
		req := httptest.NewRequest(http.MethodPost, heartbeat.PathHeartbeat, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+agentTok)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("HTTP %d: %s", w.Code, w.Body)
		}
	}
	// Warm up: each host's first heartbeat writes its domain homes once.
	for n := range hosts {
		beat(n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		beat(n)
	}
}
