package api

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
)

// recorder is a Backend that passes heartbeats to the real daemon and
// keeps what it returned.
type recorder struct {
	Backend
	mu   sync.Mutex
	acks []heartbeat.Ack
}

func (r *recorder) Heartbeat(hb heartbeat.Heartbeat) (heartbeat.Ack, error) {
	ack, err := r.Backend.Heartbeat(hb)
	if err == nil {
		r.mu.Lock()
		r.acks = append(r.acks, ack)
		r.mu.Unlock()
	}
	return ack, err
}

func (r *recorder) last() heartbeat.Ack {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.acks[len(r.acks)-1]
}

// syncLog is a log sink safe for the readers' concurrent writes.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *syncLog) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, ln := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(ln, substr) {
			out = append(out, ln)
		}
	}
	return out
}

type udpEnv struct {
	t      *testing.T
	s      *Server
	rec    *recorder
	addr   *net.UDPAddr
	log    *syncLog
	sealer *heartbeat.Sealer
	cancel context.CancelFunc
	done   chan error
}

// newUDPEnv serves heartbeat datagrams on 127.0.0.1 for a daemon knowing
// h1 and h2. readers 1 handles datagrams in the order they were sent, so
// "no reply" is proven by the next datagram's reply coming first.
func newUDPEnv(t *testing.T, readers int, opts ...Option) *udpEnv {
	t.Helper()
	_, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	e := &udpEnv{t: t, rec: &recorder{Backend: d}, log: &syncLog{}, done: make(chan error, 1)}
	s, err := New(e.rec, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.New(e.log), opts...)
	require.NoError(t, err)
	s.readers = readers
	e.s = s
	e.sealer, err = heartbeat.NewSealer(credOf("h1"))
	require.NoError(t, err)
	conn, err := ListenHeartbeats("127.0.0.1:0")
	require.NoError(t, err)
	e.addr = conn.LocalAddr().(*net.UDPAddr)
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- s.ServeHeartbeats(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-e.done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("ServeHeartbeats did not return after its context ended")
		}
	})
	return e
}

// client is an agent's socket, connected to the daemon's.
func (e *udpEnv) client() *net.UDPConn {
	e.t.Helper()
	c, err := net.DialUDP("udp", nil, e.addr)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { c.Close() })
	return c
}

func hbOf(host string, seq uint64) heartbeat.Heartbeat {
	return heartbeat.Heartbeat{Host: host, BootID: "boot-1", Seq: seq, AgentStart: time.Unix(1, 0).UTC(),
		Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}}
}

func (e *udpEnv) seal(hb heartbeat.Heartbeat) []byte {
	e.t.Helper()
	b, err := sealerOf(hb.Host).SealHeartbeat(hb)
	require.NoError(e.t, err)
	return b
}

func send(t *testing.T, c *net.UDPConn, b []byte) {
	t.Helper()
	_, err := c.Write(b)
	require.NoError(t, err)
}

// reply reads the next reply on c, opened with the agent token.
func (e *udpEnv) reply(c *net.UDPConn) heartbeat.Reply {
	e.t.Helper()
	require.NoError(e.t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, err := c.Read(buf)
	require.NoError(e.t, err, "no reply")
	kind, payload, err := openDatagram(buf[:n])
	require.NoError(e.t, err)
	require.Equal(e.t, heartbeat.KindReply, kind)
	r, err := heartbeat.DecodeReply(payload)
	require.NoError(e.t, err)
	return r
}

// beatOK sends a valid beat and asserts its Ack comes back first: anything
// sent before it on this client got no reply.
func (e *udpEnv) beatOK(c *net.UDPConn, hb heartbeat.Heartbeat) heartbeat.Reply {
	e.t.Helper()
	send(e.t, c, e.seal(hb))
	r := e.reply(c)
	require.True(e.t, r.Answers(hb), "first reply %+v does not answer %s seq %d", r, hb.Host, hb.Seq)
	require.NotNil(e.t, r.Ack, "refused: %s", r.Refused)
	return r
}

func (e *udpEnv) count(result string) float64 {
	return testutil.ToFloat64(e.s.hbTotal.WithLabelValues(result, "udp"))
}

func TestUDPHeartbeatAcceptedGetsTheBackendsAck(t *testing.T) {
	e := newUDPEnv(t, 0)
	c := e.client()
	hb := hbOf("h1", 1)
	r := e.beatOK(c, hb)
	assert.Equal(t, e.rec.last(), *r.Ack)
	assert.Equal(t, node.Enabled, r.Ack.AdminState)
	assert.Equal(t, heartbeat.Duration(time.Second), r.Ack.HeartbeatInterval)
	assert.NotZero(t, r.Ack.AssignmentRevision)
	assert.Empty(t, r.Refused)
	assert.Equal(t, 1.0, e.count("accepted"))

	// The daemon took it: the host has a last heartbeat.
	h, err := e.rec.Backend.Host("h1")
	require.NoError(t, err)
	assert.False(t, h.LastHeartbeat.IsZero())

	// A replayed (stale) beat is answered with an Ack too, as over HTTP.
	r = e.beatOK(c, hb)
	assert.Equal(t, e.rec.last(), *r.Ack)
}

func TestUDPHeartbeatDroppedWithoutReply(t *testing.T) {
	e := newUDPEnv(t, 1)
	c := e.client()
	other, err := heartbeat.NewSealer("not-the-agent-token")
	require.NoError(t, err)
	forged, err := other.SealHeartbeat(hbOf("h1", 1))
	require.NoError(t, err)
	reply, err := e.sealer.SealReply(heartbeat.Reply{Host: "h1", Seq: 1, Refused: "x"})
	require.NoError(t, err)
	good := e.seal(hbOf("h1", 1))
	oldVersion := bytes.Clone(good)
	oldVersion[4] = 9
	cases := []struct {
		name, result string
		datagram     []byte
	}{
		{"wrong token", "unauthorized", forged},
		{"flipped MAC bit", "unauthorized", func() []byte { b := bytes.Clone(good); b[12] ^= 1; return b }()},
		{"garbage", "malformed", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"empty", "malformed", nil},
		{"other version", "malformed", oldVersion},
		{"a reply, not a heartbeat", "malformed", reply},
		{"no seq: the refusal could name no heartbeat", "malformed", e.sealer.Seal(nil, heartbeat.KindHeartbeat, heartbeat.AppendHeartbeatPayload(nil, heartbeat.Heartbeat{Host: "h1", BootID: "b"}))},
		{"not protobuf", "malformed", e.sealer.Seal(nil, heartbeat.KindHeartbeat, []byte(`{host: h1`))},
		{"oversize", "too_large", e.sealer.Seal(nil, heartbeat.KindHeartbeat, bytes.Repeat([]byte{' '}, heartbeat.MaxDatagram))},
	}
	seq := uint64(1)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.count(tc.result)
			send(t, c, tc.datagram)
			seq++
			e.beatOK(c, hbOf("h1", seq))
			assert.Equal(t, before+1, e.count(tc.result), "counted as %s", tc.result)
		})
	}
	assert.Equal(t, float64(len(cases)), e.count("accepted"), "only the good beats")
	for _, ln := range e.log.lines("") {
		assert.NotContains(t, ln, agentTok)
	}
}

func TestUDPHeartbeatRefusedNamesTheProblem(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	// A second passes between log lines: each refusal is logged.
	e := newUDPEnv(t, 1, func(s *Server) {
		s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(time.Second); return now }
	})
	c := e.client()
	invalid := hbOf("h1", 3)
	invalid.BootID = ""
	badUUID := hbOf("h2", 4)
	badUUID.Domains = []heartbeat.Domain{{UUID: "nope", Name: "web", State: 1}}
	for _, tc := range []struct {
		name   string
		hb     heartbeat.Heartbeat
		result string
		want   string
		logged string
	}{
		{"unknown host", hbOf("h9", 1), "unknown_host", `host "h9" is not in the daemon's configuration`, `"host":"h9"`},
		{"invalid heartbeat", invalid, "malformed", "invalid heartbeat: boot_id is empty", "boot_id is empty"},
		{"invalid domain", badUUID, "malformed", `domains[0].uuid "nope" is not a lower-case canonical UUID`, `"seq":4`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.count(tc.result)
			send(t, c, sealerOf(tc.hb.Host).Seal(nil, heartbeat.KindHeartbeat, heartbeat.AppendHeartbeatPayload(nil, tc.hb)))
			r := e.reply(c)
			assert.True(t, r.Answers(tc.hb), "the refusal names the heartbeat: %+v", r)
			assert.Nil(t, r.Ack)
			assert.Contains(t, r.Refused, tc.want)
			assert.Equal(t, before+1, e.count(tc.result))
			logged := e.log.lines(tc.logged)
			if assert.Len(t, logged, 1, "logged") {
				assert.Contains(t, logged[0], "refused heartbeat")
			}
		})
	}
	assert.Equal(t, 0.0, e.count("accepted"))

	// A reason longer than a datagram could carry is cut, not dropped.
	many := hbOf("h1", 5)
	for i := range 250 {
		many.Domains = append(many.Domains, heartbeat.Domain{UUID: fmt.Sprintf("bad-%d", i)})
	}
	b := heartbeat.AppendHeartbeatPayload(nil, many)
	require.Less(t, len(b)+heartbeat.DatagramHeaderLen, heartbeat.MaxDatagram)
	send(t, c, e.sealer.Seal(nil, heartbeat.KindHeartbeat, b))
	r := e.reply(c)
	assert.True(t, r.Answers(many))
	assert.Contains(t, r.Refused, `domains[0].uuid "bad-0"`)
	assert.LessOrEqual(t, len(r.Refused), maxRefusedText+len("…"))
}

func TestUDPReplyGoesToTheSender(t *testing.T) {
	e := newUDPEnv(t, 0)
	a, b := e.client(), e.client()
	// An unconnected socket too: the reply's source is the daemon's address.
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })

	send(t, a, e.seal(hbOf("h1", 1)))
	send(t, b, e.seal(hbOf("h2", 1)))
	_, err = u.WriteTo(e.seal(hbOf("h1", 2)), e.addr)
	require.NoError(t, err)
	assert.True(t, e.reply(a).Answers(hbOf("h1", 1)))
	assert.True(t, e.reply(b).Answers(hbOf("h2", 1)))
	require.NoError(t, u.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, from, err := u.ReadFrom(buf)
	require.NoError(t, err)
	assert.Equal(t, e.addr.String(), from.String())
	_, payload, err := openDatagram(buf[:n])
	require.NoError(t, err)
	r, err := heartbeat.DecodeReply(payload)
	require.NoError(t, err)
	assert.True(t, r.Answers(hbOf("h1", 2)))
}

// Many agents at once on several readers: every beat is answered, to its
// sender, and counted once.
func TestUDPConcurrentAgents(t *testing.T) {
	e := newUDPEnv(t, 4)
	const agents, beats = 8, 25
	var wg sync.WaitGroup
	for i := range agents {
		c := e.client()
		host := []string{"h1", "h2"}[i%2]
		start := time.Unix(int64(100+i), 0).UTC()
		wg.Go(func() {
			for seq := uint64(1); seq <= beats; seq++ {
				hb := hbOf(host, seq)
				hb.AgentStart = start
				if _, err := c.Write(e.seal(hb)); err != nil {
					t.Error(err)
					return
				}
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, heartbeat.MaxDatagram+1)
				n, err := c.Read(buf)
				if err != nil {
					t.Error(err)
					return
				}
				_, payload, err := openDatagram(buf[:n])
				if err != nil {
					t.Error(err)
					return
				}
				r, err := heartbeat.DecodeReply(payload)
				if err != nil || !r.Answers(hb) || r.Ack == nil {
					t.Errorf("agent %d seq %d: reply %+v, %v", i, seq, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Four agent processes per host interleave: the daemon takes only the
	// newest agent_start's beats and answers the others as stale.
	assert.Equal(t, float64(agents*beats), e.count("accepted")+e.count("ignored"))
	assert.Positive(t, e.count("ignored"))
}

func TestUDPFloodIsLoggedOnceASecond(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	e := newUDPEnv(t, 1, func(s *Server) { s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now } })
	c := e.client()
	for range 50 {
		send(t, c, []byte("junk"))
	}
	e.beatOK(c, hbOf("h1", 1)) // one reader, in order: the junk was handled
	assert.Equal(t, 50.0, e.count("malformed"))
	lines := e.log.lines("dropped heartbeat datagram")
	require.Len(t, lines, 1, "a flood is one line a second")
	assert.Contains(t, lines[0], `"suppressed":0`)

	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	send(t, c, []byte("junk"))
	e.beatOK(c, hbOf("h1", 2))
	lines = e.log.lines("dropped heartbeat datagram")
	require.Len(t, lines, 2)
	assert.Contains(t, lines[1], `"suppressed":49`, "the next line counts what was held back")
	assert.Contains(t, lines[1], `"result":"malformed"`)
	assert.Contains(t, lines[1], `"remote":"`+c.LocalAddr().String()+`"`)
}

func TestServeHeartbeatsStopsWithItsContext(t *testing.T) {
	_, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	conn, err := ListenHeartbeats("127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.ServeHeartbeats(ctx, conn) }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHeartbeats did not return after its context ended")
	}
	buf := make([]byte, 64)
	stacks := make([]byte, 1<<20)
	stacks = stacks[:runtime.Stack(stacks, true)]
	assert.NotContains(t, string(stacks), "readHeartbeats", "every reader stopped before ServeHeartbeats returned")
	_, _, err = conn.ReadFrom(buf)
	assert.ErrorIs(t, err, net.ErrClosed, "the socket is closed")
}

func TestServeHeartbeatsFailsWhenItsSocketCloses(t *testing.T) {
	_, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	conn, err := ListenHeartbeats("127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.ServeHeartbeats(context.Background(), conn) }()
	require.NoError(t, conn.Close())
	select {
	case err := <-done:
		require.Error(t, err)
		assert.True(t, errors.Is(err, net.ErrClosed))
		assert.Contains(t, err.Error(), "UDP heartbeats on 127.0.0.1:")
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHeartbeats kept running on a closed socket")
	}
}

func TestUDPHeartbeatMetrics(t *testing.T) {
	e := newUDPEnv(t, 1)
	c := e.client()
	send(t, c, []byte("junk"))
	e.beatOK(c, hbOf("h1", 1))
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, PathMetrics, nil)
	r.Header.Set("Authorization", "Bearer "+apiTok)
	e.s.ServeHTTP(w, r)
	require.Equal(t, 200, w.Code)
	m := w.Body.String()
	for _, want := range []string{
		`chime_fence_heartbeats_total{result="accepted",transport="udp"} 1`,
		`chime_fence_heartbeats_total{result="malformed",transport="udp"} 1`,
		`chime_fence_heartbeats_total{result="unauthorized",transport="udp"} 0`,
		`chime_fence_heartbeats_total{result="unknown_host",transport="udp"} 0`,
		`chime_fence_heartbeats_total{result="too_large",transport="udp"} 0`,
		`chime_fence_heartbeats_total{result="accepted",transport="http"} 0`,
	} {
		assert.Contains(t, m, want)
	}
}

// serveOn serves heartbeat datagrams on a socket listened on network and
// addr, for a daemon knowing h1 and h2, and returns the port and the sealer.
func serveOn(t *testing.T, network, addr string) (int, *heartbeat.Sealer) {
	t.Helper()
	_, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	pc, err := net.ListenPacket(network, addr)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeHeartbeats(ctx, pc) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("ServeHeartbeats did not return after its context ended")
		}
	})
	sealer, err := heartbeat.NewSealer(credOf("h1"))
	require.NoError(t, err)
	return pc.LocalAddr().(*net.UDPAddr).Port, sealer
}

// beatFrom sends one beat to target from an unconnected socket on local
// and returns where the reply came from, after checking it answers the beat.
func beatFrom(t *testing.T, sealer *heartbeat.Sealer, local string, target netip.AddrPort, seq uint64) netip.AddrPort {
	t.Helper()
	u, err := net.ListenPacket("udp", local)
	require.NoError(t, err)
	t.Cleanup(func() { u.Close() })
	uc := u.(*net.UDPConn)
	hb := hbOf("h1", seq)
	dg, err := sealerOf(hb.Host).SealHeartbeat(hb)
	require.NoError(t, err)
	_, err = uc.WriteToUDPAddrPort(dg, target)
	require.NoError(t, err)
	require.NoError(t, uc.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, from, err := uc.ReadFromUDPAddrPort(buf)
	require.NoError(t, err, "no reply to a beat sent to %s", target)
	_, payload, err := openDatagram(buf[:n])
	require.NoError(t, err)
	r, err := heartbeat.DecodeReply(payload)
	require.NoError(t, err)
	require.True(t, r.Answers(hb), "reply %+v", r)
	return netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// beatConnected is what the agent does: a socket connected to target,
// which takes only datagrams from target, gets the reply.
func beatConnected(t *testing.T, sealer *heartbeat.Sealer, target netip.AddrPort, seq uint64) {
	t.Helper()
	c, err := net.Dial("udp", target.String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	hb := hbOf("h2", seq)
	dg, err := sealerOf(hb.Host).SealHeartbeat(hb)
	require.NoError(t, err)
	_, err = c.Write(dg)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(2*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, err := c.Read(buf)
	require.NoError(t, err, "a socket connected to %s got no reply", target)
	_, payload, err := openDatagram(buf[:n])
	require.NoError(t, err)
	r, err := heartbeat.DecodeReply(payload)
	require.NoError(t, err)
	assert.True(t, r.Answers(hb), "reply %+v", r)
}

// A daemon on a wildcard address answers from the address each beat was
// sent to, not the one the route to the agent would pick (127.0.0.1 for
// every loopback peer): a multi-homed host's VIP or secondary address works
// for agents, whose connected sockets drop datagrams from anyone else.
func TestUDPReplyLeavesFromTheAddressTheBeatWasSentTo(t *testing.T) {
	for _, tc := range []struct {
		name, network, listen string
		targets               []string
		local                 string
	}{
		// What ListenHeartbeats makes of 0.0.0.0: Go opens a dual-stack
		// IPv6 socket, IPv4 peers arrive v4-mapped.
		{"0.0.0.0 dual-stack", "udp", "0.0.0.0:0", []string{"127.0.0.2", "127.0.0.1", "127.0.0.3"}, "127.0.0.1:0"},
		{"0.0.0.0 IPv4 socket", "udp4", "0.0.0.0:0", []string{"127.0.0.2", "127.0.0.1", "127.0.0.3"}, "127.0.0.1:0"},
		{"[::] dual-stack, IPv4 peers", "udp", "[::]:0", []string{"127.0.0.2", "127.0.0.1"}, "127.0.0.1:0"},
		{"[::] IPv6", "udp6", "[::]:0", []string{"::1"}, "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.listen, "::") || strings.Contains(tc.local, "::") {
				requireIPv6Loopback(t)
			}
			port, sealer := serveOn(t, tc.network, tc.listen)
			for i, target := range tc.targets {
				to := netip.AddrPortFrom(netip.MustParseAddr(target), uint16(port))
				from := beatFrom(t, sealer, tc.local, to, uint64(i+1))
				assert.Equal(t, to.String(), from.String(), "the source of the reply to a beat sent to %s", to)
				beatConnected(t, sealer, to, uint64(i+1))
			}
		})
	}
}

// requireIPv6Loopback skips when this machine cannot bind [::1].
func requireIPv6Loopback(t *testing.T) {
	t.Helper()
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback on this machine (binding [::1]: %v)", err)
	}
	c.Close()
}

// A socket bound to one address answers from it, as it always did.
func TestUDPReplyFromASpecificAddress(t *testing.T) {
	port, sealer := serveOn(t, "udp", "127.0.0.2:0")
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(port))
	assert.Equal(t, to.String(), beatFrom(t, sealer, "127.0.0.1:0", to, 1).String())
	beatConnected(t, sealer, to, 1)
}

// IPv6 loopback has one address, so the [::] case above cannot tell the
// route's source from the beat's destination. A network namespace of the
// test's own gives lo a second one (root and ip(8) needed, else skipped).
func TestUDPReplyFromASecondIPv6Address(t *testing.T) {
	ns := netnsWithLoopback(t, "fd63:6869:6d65::2/128")
	require.NoError(t, nsenter.Do(ns, func() error {
		port, sealer := serveOn(t, "udp", "[::]:0")
		for i, target := range []string{"fd63:6869:6d65::2", "::1", "127.0.0.1"} {
			to := netip.AddrPortFrom(netip.MustParseAddr(target), uint16(port))
			local := "[::1]:0"
			if to.Addr().Is4() {
				local = "127.0.0.1:0"
			}
			from := beatFrom(t, sealer, local, to, uint64(i+1))
			assert.Equal(t, to.String(), from.String(), "the source of the reply to a beat sent to %s", to)
			beatConnected(t, sealer, to, uint64(i+1))
		}
		return nil
	}))
}

// netnsWithLoopback makes a network namespace, removed at cleanup, whose lo
// is up with the extra addresses, and returns its name.
func netnsWithLoopback(t *testing.T, addrs ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	ipCmd, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("needs ip(8) to make a network namespace")
	}
	ns := fmt.Sprintf("chime-api-udp-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	ip := func(args ...string) {
		t.Helper()
		out, err := exec.Command(ipCmd, args...).CombinedOutput()
		require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
	}
	ip("netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command(ipCmd, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	ip("-n", ns, "link", "set", "lo", "up")
	for _, a := range addrs {
		ip("-n", ns, "addr", "add", a, "dev", "lo", "nodad")
	}
	return ns
}

// pktinfo4 is the IP_PKTINFO control message a datagram to dst arrives with.
func pktinfo4(dst [4]byte) []byte {
	b := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
	pi.Ifindex, pi.Spec_dst, pi.Addr = 1, dst, dst
	return b
}

// Control messages that name no usable source give no reply control
// message (the route picks), never a stale one, and never a crash.
func TestReplySourceControlMessages(t *testing.T) {
	r := newReplySource(false)
	want := (&ipv4.ControlMessage{Src: net.IPv4(127, 0, 0, 5)}).Marshal()
	got := r.from(pktinfo4([4]byte{127, 0, 0, 5}))
	assert.Equal(t, want, got)
	again := r.from(pktinfo4([4]byte{127, 0, 0, 5}))
	assert.Same(t, &got[0], &again[0], "the same destination reuses the reply's control message")
	assert.Equal(t, (&ipv4.ControlMessage{Src: net.IPv4(127, 0, 0, 6)}).Marshal(), r.from(pktinfo4([4]byte{127, 0, 0, 6})))

	for name, oob := range map[string][]byte{
		"none":              nil,
		"short":             {1, 2, 3},
		"truncated":         pktinfo4([4]byte{127, 0, 0, 5})[:unix.CmsgLen(0)+4],
		"multicast":         pktinfo4([4]byte{224, 0, 0, 1}),
		"limited broadcast": pktinfo4([4]byte{255, 255, 255, 255}),
		"unspecified":       pktinfo4([4]byte{}),
		"other level (IPv6 on v4)": func() []byte {
			b := pktinfo4([4]byte{127, 0, 0, 5})
			(*unix.Cmsghdr)(unsafe.Pointer(&b[0])).Level = unix.IPPROTO_IPV6
			return b
		}(),
	} {
		assert.Nil(t, r.from(oob), name)
	}
	// An IPv6 socket's reader reads only IPV6_PKTINFO.
	assert.Nil(t, newReplySource(true).from(pktinfo4([4]byte{127, 0, 0, 5})))
}

func TestEnablePktinfo(t *testing.T) {
	for _, tc := range []struct {
		network, addr string
		v6, on        bool
	}{
		{"udp4", "0.0.0.0:0", false, true},
		{"udp", "0.0.0.0:0", true, true}, // Go's dual-stack socket
		{"udp4", "127.0.0.1:0", false, false},
	} {
		pc, err := net.ListenPacket(tc.network, tc.addr)
		require.NoError(t, err)
		v6, on, err := enablePktinfo(pc.(*net.UDPConn))
		require.NoError(t, err)
		assert.Equal(t, tc.v6, v6, "%s %s", tc.network, tc.addr)
		assert.Equal(t, tc.on, on, "%s %s", tc.network, tc.addr)
		// Closed: the socket option cannot be set, and the error says where.
		require.NoError(t, pc.Close())
		_, on, err = enablePktinfo(pc.(*net.UDPConn))
		assert.False(t, on)
		if tc.on {
			assert.ErrorContains(t, err, "destination addresses on "+pc.LocalAddr().String())
		}
	}
	_, on, err := enablePktinfo(nil)
	assert.False(t, on)
	assert.NoError(t, err)
}
