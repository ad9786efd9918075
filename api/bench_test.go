package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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
	"github.com/chimestack/chime-fence/node"
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
			RecoveryHeartbeats: 3, Settle: time.Second, MaxClockSkew: 30 * time.Second},
		Storm: detector.StormGuard{MaxFraction: 0.5, Window: time.Minute},
	}, detector.Deps{Prober: quiet{}, Power: quiet{}, Readiness: quiet{}, History: st, Memos: st, Alerter: quiet{}, Log: zerolog.Nop()}, nil)
	if err != nil {
		b.Fatal(err)
	}
	d, err := daemon.New(st, eng, func() time.Duration { return time.Second }, nil, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
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
		setAuth(req, agentTok)
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

// trivialBackend answers every heartbeat with the same Ack, so the
// datagram benchmarks measure the transport, not the detector.
type trivialBackend struct{ Backend }

func (trivialBackend) Heartbeat(heartbeat.Heartbeat) (heartbeat.Ack, error) {
	return heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 7, HeartbeatInterval: heartbeat.Duration(time.Second)}, nil
}

// benchBeat is a sealed heartbeat with four domains, as an agent sends it.
func benchBeat(b *testing.B) (*heartbeat.Sealer, []byte) {
	sealer, err := heartbeat.NewSealer(credOf("h1"))
	if err != nil {
		b.Fatal(err)
	}
	var doms []heartbeat.Domain
	for j := range 4 {
		doms = append(doms, heartbeat.Domain{UUID: fmt.Sprintf("00000001-0000-4000-8000-%012x", j), Name: fmt.Sprintf("vm-%d", j), State: hypervisor.StateRunning})
	}
	dg, err := sealer.SealHeartbeat(heartbeat.Heartbeat{Host: "h1", BootID: "boot", Seq: 1, AgentStart: time.Unix(1, 0),
		AgentVersion: "v1", SentAt: time.Now(), Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true},
			Storage: []heartbeat.Check{{Name: "/mnt/shared", OK: true}}}, Domains: doms})
	if err != nil {
		b.Fatal(err)
	}
	return sealer, dg
}

// BenchmarkHeartbeatDatagram is one heartbeat round trip over loopback UDP
// (agent write, daemon read, open, decode, ack, seal, write, agent read)
// against a trivial backend. allocs/op are the daemon's: the agent's
// connected socket reads and writes allocate nothing.
func BenchmarkHeartbeatDatagram(b *testing.B) { benchRoundTrip(b, "127.0.0.1:0") }

// BenchmarkHeartbeatDatagramWildcard is the same with the daemon on
// 0.0.0.0 (a dual-stack socket, as ListenHeartbeats opens it), where each
// reply's source address is set from the beat's.
func BenchmarkHeartbeatDatagramWildcard(b *testing.B) { benchRoundTrip(b, "0.0.0.0:0") }

// benchRoundTrip runs the round trip against a daemon socket on listen; the
// agent sends to 127.0.0.1 on its port.
func benchRoundTrip(b *testing.B, listen string) {
	s, err := New(trivialBackend{}, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	conn, err := ListenHeartbeats(listen)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeHeartbeats(ctx, conn) }()
	defer func() { cancel(); <-done }()
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: conn.LocalAddr().(*net.UDPAddr).Port})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	_, dg := benchBeat(b)
	buf := make([]byte, heartbeat.MaxDatagram+1)
	if err := c.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		if _, err := c.Write(dg); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHeartbeatDatagramHandler is the daemon's work on one datagram
// without the sockets: open, decode, backend, seal the reply.
func BenchmarkHeartbeatDatagramHandler(b *testing.B) {
	s, err := New(trivialBackend{}, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	_, dg := benchBeat(b)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		if s.heartbeatDatagram(dg, peer{}) == nil {
			b.Fatal("no reply")
		}
	}
}
