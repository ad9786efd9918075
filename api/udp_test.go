package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	s, err := New(e.rec, Tokens{Agent: agentTok, API: apiTok}, prometheus.NewRegistry(), zerolog.New(e.log), opts...)
	require.NoError(t, err)
	s.readers = readers
	e.s = s
	e.sealer, err = heartbeat.NewSealer(agentTok)
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
	b, err := e.sealer.SealHeartbeat(hb)
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
	kind, payload, err := e.sealer.Open(buf[:n])
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
		{"no seq: the refusal could name no heartbeat", "malformed", e.sealer.Seal(nil, heartbeat.KindHeartbeat, []byte(`{"host":"h1","boot_id":"b"}`))},
		{"not JSON", "malformed", e.sealer.Seal(nil, heartbeat.KindHeartbeat, []byte(`{host: h1`))},
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
			b, err := json.Marshal(tc.hb)
			require.NoError(t, err)
			send(t, c, e.sealer.Seal(nil, heartbeat.KindHeartbeat, b))
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
	b, err := json.Marshal(many)
	require.NoError(t, err)
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
	_, payload, err := e.sealer.Open(buf[:n])
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
				_, payload, err := e.sealer.Open(buf[:n])
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
	assert.Equal(t, float64(agents*beats), e.count("accepted"))
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
	s, err := New(d, Tokens{Agent: agentTok, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
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
	s, err := New(d, Tokens{Agent: agentTok, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
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
