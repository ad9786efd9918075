package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

// udpDaemon is the daemon's side of the UDP transport on a real socket on
// 127.0.0.1, speaking the codec (heartbeat.Sealer), which is the contract.
// answer gives the datagrams sent back to a heartbeat, in order.
type udpDaemon struct {
	pc     net.PacketConn
	sealer *heartbeat.Sealer
	mu     sync.Mutex
	got    []heartbeat.Heartbeat
	from   []string // each heartbeat's source address
	answer func(hb heartbeat.Heartbeat) [][]byte
}

func newUDPDaemon(t testing.TB, answer func(hb heartbeat.Heartbeat) [][]byte) *udpDaemon {
	return newUDPDaemonAt(t, "127.0.0.1:0", answer)
}

func newUDPDaemonAt(t testing.TB, addr string, answer func(hb heartbeat.Heartbeat) [][]byte) *udpDaemon {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	require.NoError(t, err)
	s, err := heartbeat.NewSealer(testToken)
	require.NoError(t, err)
	d := &udpDaemon{pc: pc, sealer: s, answer: answer}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			kind, payload, err := s.Open(buf[:n])
			if !assert.NoError(t, err, "the agent's datagram opens with the token's key") || !assert.Equal(t, heartbeat.KindHeartbeat, kind) {
				continue
			}
			hb, err := heartbeat.DecodeHeartbeatPayload(payload)
			if !assert.NoError(t, err) {
				continue
			}
			d.mu.Lock()
			d.got = append(d.got, hb)
			d.from = append(d.from, from.String())
			answer := d.answer
			d.mu.Unlock()
			for _, b := range answer(hb) {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-done })
	return d
}

func (d *udpDaemon) addr() string { return d.pc.LocalAddr().String() }

func (d *udpDaemon) heartbeats() []heartbeat.Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]heartbeat.Heartbeat(nil), d.got...)
}

func (d *udpDaemon) sources() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.from...)
}

func (d *udpDaemon) setAnswer(f func(hb heartbeat.Heartbeat) [][]byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.answer = f
}

// sealReply seals r with token's key.
func sealReply(t testing.TB, token string, r heartbeat.Reply) []byte {
	t.Helper()
	s, err := heartbeat.NewSealer(token)
	require.NoError(t, err)
	b, err := s.SealReply(r)
	require.NoError(t, err)
	return b
}

func ackReply(t testing.TB, hb heartbeat.Heartbeat, ack heartbeat.Ack) []byte {
	r := heartbeat.ReplyTo(hb)
	r.Ack = &ack
	return sealReply(t, testToken, r)
}

func silent(heartbeat.Heartbeat) [][]byte { return nil }

// httpAck is the HTTP fallback's ack, told apart from UDP's by its revision.
var (
	httpAck = heartbeat.Ack{AdminState: node.Disabled, AssignmentRevision: 200, HeartbeatInterval: heartbeat.Duration(time.Second)}
	udpAck  = heartbeat.Ack{AdminState: node.Drained, AssignmentRevision: 100, HeartbeatInterval: heartbeat.Duration(750 * time.Millisecond),
		LocalMigrationsSeen: []string{"m1"}}
)

// httpDaemon answers heartbeats over HTTP with httpAck and keeps them.
type httpDaemon struct {
	url string
	mu  sync.Mutex
	got []heartbeat.Heartbeat
}

func newHTTPDaemon(t testing.TB) *httpDaemon {
	d := &httpDaemon{}
	d.url = httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken || r.URL.Path != heartbeat.PathHeartbeat {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		hb, err := heartbeat.Decode(r.Body)
		if !assert.NoError(t, err) {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		d.mu.Lock()
		d.got = append(d.got, hb)
		d.mu.Unlock()
		_ = json.NewEncoder(w).Encode(httpAck)
	})
	return d
}

func (d *httpDaemon) heartbeats() []heartbeat.Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]heartbeat.Heartbeat(nil), d.got...)
}

type udpRig struct {
	c     *UDPClient
	udp   *udpDaemon
	http  *httpDaemon
	logs  *syncBuf
	clock *testClock
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newUDPRig(t *testing.T, mode Transport, answer func(hb heartbeat.Heartbeat) [][]byte) *udpRig {
	t.Helper()
	r := &udpRig{udp: newUDPDaemon(t, answer), http: newHTTPDaemon(t), logs: &syncBuf{},
		clock: &testClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}}
	dc, err := NewDaemonClient(r.http.url, "n1", testToken)
	require.NoError(t, err)
	r.c, err = NewUDPClient(dc, UDPConfig{Address: r.udp.addr(), Transport: mode, Now: r.clock.Now}, zerolog.New(r.logs))
	require.NoError(t, err)
	t.Cleanup(func() {
		assert.NoError(t, r.c.Close())
		assert.NotContains(t, r.logs.String(), testToken)
	})
	return r
}

var agentStart = time.Date(2030, 1, 1, 0, 0, 0, 123456789, time.UTC)

func testBeat(seq uint64) heartbeat.Heartbeat {
	return heartbeat.Heartbeat{Host: "n1", BootID: "b", Seq: seq, AgentStart: agentStart, SentAt: agentStart.Add(time.Duration(seq) * time.Second),
		Domains: []heartbeat.Domain{{UUID: u1, Name: "vm1", State: hypervisor.StateRunning}}}
}

// beat sends one heartbeat under a deadline of one "interval".
func (r *udpRig) beat(interval time.Duration, seq uint64) (heartbeat.Ack, error) {
	ctx, cancel := context.WithTimeout(context.Background(), interval)
	defer cancel()
	return r.c.Heartbeat(ctx, testBeat(seq))
}

func TestUDPClientAck(t *testing.T) {
	r := newUDPRig(t, TransportAuto, func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
	for seq := uint64(1); seq <= 3; seq++ {
		ack, err := r.beat(5*time.Second, seq)
		require.NoError(t, err)
		assert.Equal(t, udpAck, ack, "the reply's ack, every field")
	}
	got := r.udp.heartbeats()
	require.Len(t, got, 3, "one datagram per beat")
	assert.Equal(t, testBeat(2).SentAt, got[1].SentAt.UTC())
	assert.Equal(t, testBeat(2).Domains, got[1].Domains)
	assert.Empty(t, r.http.heartbeats(), "nothing over HTTP")
	assert.Empty(t, r.logs.String(), "nothing logged while UDP answers")
}

// TestUDPClientTakesOnlyTheAnswer: before the answer, the socket gets
// garbage, a reply sealed with another agent token, a heartbeat-kind
// datagram, replies to an older beat, to another agent process and to
// another host, and a malformed reply: all are dropped, the answer taken.
func TestUDPClientTakesOnlyTheAnswer(t *testing.T) {
	other := func(hb heartbeat.Heartbeat, f func(*heartbeat.Reply)) []byte {
		r := heartbeat.ReplyTo(hb)
		a := heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 666}
		r.Ack = &a
		f(&r)
		return sealReply(t, testToken, r)
	}
	rig := newUDPRig(t, TransportAuto, func(hb heartbeat.Heartbeat) [][]byte {
		s, _ := heartbeat.NewSealer(testToken)
		foreign := heartbeat.ReplyTo(hb)
		foreign.Ack = &heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 667}
		hbDgram, _ := s.SealHeartbeat(hb)
		return [][]byte{
			[]byte("garbage"),
			sealReply(t, "another-agent-token", foreign),
			hbDgram,
			other(hb, func(r *heartbeat.Reply) { r.Seq-- }),
			other(hb, func(r *heartbeat.Reply) { r.AgentStart = r.AgentStart.Add(-time.Hour) }),
			other(hb, func(r *heartbeat.Reply) { r.Host = "n2" }),
			s.Seal(nil, heartbeat.KindReply, []byte(`{"host":"n1","seq":`+fmt.Sprint(hb.Seq)+`,"agent_start":"`+agentStart.Format(time.RFC3339Nano)+`","ack":{"assignment_revision":5}}`)), // no admin_state
			ackReply(t, hb, udpAck),
		}
	})
	ack, err := rig.beat(5*time.Second, 7)
	require.NoError(t, err)
	assert.Equal(t, udpAck, ack)
	assert.Empty(t, rig.http.heartbeats())
	assert.Empty(t, rig.logs.String(), "nothing logged per packet")
}

// TestUDPClientLateReplyIsDropped: the answer to beat 1 arrives only after
// beat 1 fell back to HTTP; beat 2 takes its own answer, not that one.
func TestUDPClientLateReplyIsDropped(t *testing.T) {
	rig := newUDPRig(t, TransportAuto, silent)
	ack, err := rig.beat(time.Second, 1)
	require.NoError(t, err)
	assert.Equal(t, httpAck, ack, "no UDP reply: HTTP's ack")
	late := heartbeat.ReplyTo(testBeat(1))
	late.Ack = &heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 1}
	_, err = rig.udp.pc.WriteTo(sealReply(t, testToken, late), localAddrOf(t, rig.c))
	require.NoError(t, err)

	rig.udp.setAnswer(func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
	ack, err = rig.beat(5*time.Second, 2)
	require.NoError(t, err)
	assert.Equal(t, udpAck, ack, "beat 2's answer, not beat 1's late one")
}

func localAddrOf(t *testing.T, c *UDPClient) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	require.NotNil(t, c.conn)
	return c.conn.LocalAddr()
}

// TestUDPClientForeignReplyFallsBackToHTTP: the only reply is sealed with
// another token, so none is taken; in auto mode the same heartbeat goes
// over HTTP within the interval, in udp mode it is not delivered.
func TestUDPClientForeignReplyFallsBackToHTTP(t *testing.T) {
	foreign := func(hb heartbeat.Heartbeat) [][]byte {
		r := heartbeat.ReplyTo(hb)
		r.Ack = &heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 667}
		return [][]byte{sealReply(t, "another-agent-token", r)}
	}
	t.Run("auto", func(t *testing.T) {
		rig := newUDPRig(t, TransportAuto, foreign)
		start := time.Now()
		ack, err := rig.beat(time.Second, 5)
		require.NoError(t, err)
		assert.Less(t, time.Since(start), 2*time.Second, "within the interval (+ slack)")
		assert.Equal(t, httpAck, ack)
		require.Len(t, rig.udp.heartbeats(), 1, "UDP first")
		got := rig.http.heartbeats()
		require.Len(t, got, 1)
		assert.Equal(t, rig.udp.heartbeats()[0], got[0], "the same heartbeat")
		assert.Equal(t, uint64(5), got[0].Seq)
		assert.Empty(t, rig.logs.String(), "one miss is no switch")
	})
	t.Run("udp", func(t *testing.T) {
		rig := newUDPRig(t, TransportUDP, foreign)
		start := time.Now()
		_, err := rig.beat(300*time.Millisecond, 5)
		assert.Less(t, time.Since(start), 300*time.Millisecond+time.Second, "returned at the deadline (+ slack)")
		require.Error(t, err)
		assert.ErrorContains(t, err, "host n1: heartbeat: no UDP reply from "+rig.udp.addr())
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Len(t, rig.udp.heartbeats(), 1)
		assert.Empty(t, rig.http.heartbeats(), "udp mode never posts")
	})
}

func TestUDPClientRefused(t *testing.T) {
	for _, mode := range []Transport{TransportAuto, TransportUDP} {
		t.Run(mode.String(), func(t *testing.T) {
			rig := newUDPRig(t, mode, func(hb heartbeat.Heartbeat) [][]byte {
				r := heartbeat.ReplyTo(hb)
				r.Refused = `unknown host "n1" (token ` + testToken + `)`
				return [][]byte{sealReply(t, testToken, r)}
			})
			_, err := rig.beat(5*time.Second, 1)
			require.Error(t, err)
			assert.ErrorContains(t, err, `host n1: heartbeat: the daemon refused it (UDP): unknown host "n1" (token [token])`)
			assert.NotContains(t, err.Error(), testToken)
			assert.Empty(t, rig.http.heartbeats(), "a refusal is the daemon's answer: no HTTP retry")
		})
	}
}

// TestUDPClientTooLargeGoesOverHTTP: a heartbeat that does not fit a
// datagram is posted, in either mode; logged once, not per beat.
func TestUDPClientTooLargeGoesOverHTTP(t *testing.T) {
	big := func(seq uint64) heartbeat.Heartbeat {
		hb := testBeat(seq)
		hb.Domains = nil
		for i := range 300 {
			hb.Domains = append(hb.Domains, heartbeat.Domain{UUID: fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
				Name: strings.Repeat("x", 40), State: hypervisor.StateRunning})
		}
		return hb
	}
	s, err := heartbeat.NewSealer(testToken)
	require.NoError(t, err)
	_, err = s.SealHeartbeat(big(1))
	require.ErrorIs(t, err, heartbeat.ErrDatagramTooLarge, "the test's heartbeat is too large")
	for _, mode := range []Transport{TransportAuto, TransportUDP} {
		t.Run(mode.String(), func(t *testing.T) {
			rig := newUDPRig(t, mode, func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
			for seq := uint64(1); seq <= 2; seq++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				ack, err := rig.c.Heartbeat(ctx, big(seq))
				cancel()
				require.NoError(t, err)
				assert.Equal(t, httpAck, ack)
			}
			require.Len(t, rig.http.heartbeats(), 2)
			assert.Len(t, rig.http.heartbeats()[1].Domains, 300)
			assert.Len(t, rig.logs.lines(map[string]string{"component": "heartbeat"}), 1, "logged once")

			ack, err := rig.beat(5*time.Second, 3)
			require.NoError(t, err)
			assert.Equal(t, udpAck, ack, "a small one goes over UDP again")
			assert.Len(t, rig.udp.heartbeats(), 1, "only the small one came by UDP")
			assert.Len(t, rig.logs.lines(map[string]string{"component": "heartbeat"}), 2, "and that change is logged")
		})
	}
}

// TestUDPClientStickyHTTP: three beats UDP does not answer and HTTP does
// make HTTP sticky for StickyFor (by the injected clock), even after UDP
// would answer again; then UDP is used again. One log line per switch.
func TestUDPClientStickyHTTP(t *testing.T) {
	rig := newUDPRig(t, TransportAuto, silent)
	const interval = time.Second // HTTP gets the half UDP leaves, even under load
	for seq := uint64(1); seq <= StickyMisses; seq++ {
		ack, err := rig.beat(interval, seq)
		require.NoError(t, err)
		assert.Equal(t, httpAck, ack)
		rig.clock.advance(time.Second)
	}
	assert.Len(t, rig.udp.heartbeats(), StickyMisses)
	toHTTP := rig.logs.lines(map[string]string{"component": "heartbeat", "level": "warn"})
	require.Len(t, toHTTP, 1, "one line for the switch")
	assert.Contains(t, toHTTP[0]["message"], "heartbeats over HTTP")
	assert.Equal(t, "no UDP reply from "+rig.udp.addr(), toHTTP[0]["error"])
	assert.Equal(t, "10m0s", toHTTP[0]["for"])

	rig.udp.setAnswer(func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
	ack, err := rig.beat(interval, 4)
	require.NoError(t, err)
	assert.Equal(t, httpAck, ack, "sticky: HTTP although UDP would answer now")
	switched := time.Date(2030, 1, 1, 0, 0, StickyMisses-1, 0, time.UTC) // the third beat's time
	rig.clock.advance(switched.Add(StickyFor).Sub(rig.clock.Now()) - time.Nanosecond)
	ack, err = rig.beat(interval, 5)
	require.NoError(t, err)
	assert.Equal(t, httpAck, ack, "still sticky just before the end")
	assert.Len(t, rig.http.heartbeats(), 5)

	rig.clock.advance(time.Nanosecond)
	ack, err = rig.beat(interval, 6)
	require.NoError(t, err)
	assert.Equal(t, udpAck, ack, "UDP again after StickyFor")
	assert.Len(t, rig.http.heartbeats(), 5)
	assert.Equal(t, uint64(6), rig.udp.heartbeats()[len(rig.udp.heartbeats())-1].Seq)
	from := rig.udp.sources()
	assert.Equal(t, from[0], from[StickyMisses-1], "one socket while UDP is used")
	assert.NotEqual(t, from[0], from[StickyMisses], "a new socket (and name lookup) when UDP is tried again")
	for seq := uint64(7); seq <= 9; seq++ {
		_, err = rig.beat(interval, seq)
		require.NoError(t, err)
	}
	assert.Len(t, rig.http.heartbeats(), 5, "UDP stays")
	lines := rig.logs.lines(map[string]string{"component": "heartbeat"})
	require.Len(t, lines, 2, "one line per switch, none per beat")
	assert.Contains(t, lines[1]["message"], "heartbeats over UDP again")
}

// TestUDPClientNoListener: nothing listens on the UDP port (the daemon runs
// with UDP off): auto mode delivers over HTTP; udp mode names the cause.
func TestUDPClientNoListener(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := pc.LocalAddr().String()
	require.NoError(t, pc.Close())
	hd := newHTTPDaemon(t)
	dc, err := NewDaemonClient(hd.url, "n1", testToken)
	require.NoError(t, err)
	for _, mode := range []Transport{TransportAuto, TransportUDP} {
		c, err := NewUDPClient(dc, UDPConfig{Address: addr, Transport: mode}, zerolog.Nop())
		require.NoError(t, err)
		for seq := uint64(1); seq <= 2; seq++ { // the second write meets the first one's ICMP
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ack, err := c.Heartbeat(ctx, testBeat(seq))
			cancel()
			if mode == TransportAuto {
				require.NoError(t, err)
				assert.Equal(t, httpAck, ack)
				continue
			}
			require.Error(t, err)
			assert.ErrorContains(t, err, "UDP to "+addr+": connection refused (nothing listens for heartbeats there)")
		}
		require.NoError(t, c.Close())
	}
	assert.Len(t, hd.heartbeats(), 2, "auto mode's two, none from udp mode")
}

// TestUDPClientStaleRefusalIsNotABeat: a port-unreachable answer to a beat
// that stopped waiting before it came stays on the connected socket and
// fails the next write; that write is retried, so the beat still goes out
// once the daemon listens again.
func TestUDPClientStaleRefusalIsNotABeat(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := pc.LocalAddr().String()
	require.NoError(t, pc.Close())
	hd := newHTTPDaemon(t)
	dc, err := NewDaemonClient(hd.url, "n1", testToken)
	require.NoError(t, err)
	c, err := NewUDPClient(dc, UDPConfig{Address: addr, Transport: TransportUDP}, zerolog.Nop())
	require.NoError(t, err)
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = c.Heartbeat(ctx, testBeat(1)) // dials; the refusal is read
	cancel()
	require.ErrorContains(t, err, "connection refused")
	// A deadline already past: the datagram goes, nothing is read, and
	// the refusal it earns stays pending on the socket.
	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	_, err = c.Heartbeat(ctx, testBeat(2))
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded)
	time.Sleep(50 * time.Millisecond) // for the ICMP on loopback; no timing is asserted

	d := newUDPDaemonAt(t, addr, func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
	ack, err := (&udpRig{c: c}).beat(5*time.Second, 3)
	require.NoError(t, err)
	assert.Equal(t, udpAck, ack)
	require.Len(t, d.heartbeats(), 1)
	assert.Equal(t, uint64(3), d.heartbeats()[0].Seq)
}

// TestUDPClientBothFail: neither UDP nor HTTP answers; the error names
// both causes, in the same words every beat.
func TestUDPClientBothFail(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tcpAddr := ln.Addr().String()
	require.NoError(t, ln.Close())
	d := newUDPDaemon(t, silent)
	dc, err := NewDaemonClient("http://"+tcpAddr, "n1", testToken)
	require.NoError(t, err)
	c, err := NewUDPClient(dc, UDPConfig{Address: d.addr()}, zerolog.Nop())
	require.NoError(t, err)
	defer c.Close()
	var msgs []string
	for seq := uint64(1); seq <= 2; seq++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.Heartbeat(ctx, testBeat(seq))
		cancel()
		require.Error(t, err)
		msgs = append(msgs, err.Error())
	}
	assert.Contains(t, msgs[0], "connection refused; over UDP before: no UDP reply from "+d.addr())
	assert.Equal(t, msgs[0], msgs[1], "the same text every beat: logged once")
}

// TestUDPClientCancel: a cancelled context ends the wait at once.
func TestUDPClientCancel(t *testing.T) {
	rig := newUDPRig(t, TransportUDP, silent)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := rig.c.Heartbeat(ctx, testBeat(1))
	assert.ErrorIs(t, err, context.Canceled)
	assert.Less(t, time.Since(start), 5*time.Second, "no deadline: only the cancel ended it")
	// The next beat is not cut short by the cancelled one.
	rig.udp.setAnswer(func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, udpAck)} })
	ack, err := rig.beat(5*time.Second, 2)
	require.NoError(t, err)
	assert.Equal(t, udpAck, ack)
}

func TestNewUDPClient(t *testing.T) {
	for _, tc := range []struct{ url, addr, want string }{
		{"http://10.0.0.2:7480", "", "10.0.0.2:7480"},
		{"https://chime.example:8443/", "", "chime.example:8443"},
		{"http://10.0.0.2", "", "10.0.0.2:80"},
		{"https://10.0.0.2", "", "10.0.0.2:443"},
		{"http://[fd00::2]:7480", "", "[fd00::2]:7480"},
		{"http://10.0.0.2:7480", "10.0.0.3:9999", "10.0.0.3:9999"},
	} {
		dc, err := NewDaemonClient(tc.url, "n1", testToken)
		require.NoError(t, err)
		c, err := NewUDPClient(dc, UDPConfig{Address: tc.addr}, zerolog.Nop())
		require.NoError(t, err, tc.url)
		assert.Equal(t, tc.want, c.Address(), tc.url)
	}
	dc, err := NewDaemonClient("http://10.0.0.2:7480", "n1", testToken)
	require.NoError(t, err)
	for addr, msg := range map[string]string{
		"10.0.0.2":         `UDP address "10.0.0.2" is not HOST:PORT like 10.0.0.2:7480`,
		"10.0.0.2:":        `port "" is not a number in 1..65535`,
		"10.0.0.2:0":       `port "0" is not a number in 1..65535`,
		"10.0.0.2:65536":   `port "65536" is not a number in 1..65535`,
		"10.0.0.2:http":    `port "http" is not a number`,
		":7480":            `UDP address ":7480" names no host`,
		"fd00::2:7480":     `is not HOST:PORT`,
		"http://h:7480":    `is not HOST:PORT`,
		"a b:7480":         `"a b" is not a host name or IP address`,
		"udp://[::1]:7480": `is not HOST:PORT`,
	} {
		_, err := NewUDPClient(dc, UDPConfig{Address: addr}, zerolog.Nop())
		assert.ErrorContains(t, err, msg, addr)
	}
	_, err = NewUDPClient(dc, UDPConfig{Transport: TransportHTTP}, zerolog.Nop())
	assert.ErrorContains(t, err, "transport http sends no datagram")
	_, err = NewUDPClient(nil, UDPConfig{}, zerolog.Nop())
	assert.ErrorContains(t, err, "no daemon client")
}

// TestAgentOverUDP: the agent's heartbeats go over UDP and the reply's ack
// is applied as an HTTP ack is (admin state, assignment refetch on a new
// revision); HTTP carries only the assignment.
func TestAgentOverUDP(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	fd := &fakeDaemon{asg: enabledWith(1, u1)}
	fd.asg.HeartbeatInterval = heartbeat.Duration(fastInterval)
	srv := httpServer(t, fd.ServeHTTP)
	var mu sync.Mutex
	reply := heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 1, HeartbeatInterval: heartbeat.Duration(fastInterval)}
	ud := newUDPDaemon(t, func(hb heartbeat.Heartbeat) [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return [][]byte{ackReply(t, hb, reply)}
	})
	dc, err := NewDaemonClient(srv, "n1", testToken)
	require.NoError(t, err)
	logs := &syncBuf{}
	c, err := NewUDPClient(dc, UDPConfig{Address: ud.addr()}, zerolog.New(logs))
	require.NoError(t, err)
	defer c.Close()
	a, err := New(Config{Host: "n1", BootID: "boot-1", HeartbeatInterval: fastInterval, ReconcileInterval: fastInterval,
		CheckTimeout: time.Second, RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}, hv, c, zerolog.New(logs))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); assert.NoError(t, a.Run(ctx)) }()
	defer func() { cancel(); <-done }()

	require.Eventually(t, func() bool { return len(ud.heartbeats()) >= 3 }, wait, 5*time.Millisecond)
	mu.Lock()
	reply.AdminState, reply.AssignmentRevision = node.Drained, 2
	mu.Unlock()
	fd.set(func(d *fakeDaemon) { d.asg.AdminState, d.asg.Revision = node.Drained, 2 })
	require.Eventually(t, func() bool {
		st, err := a.Status(context.Background())
		return err == nil && st.AdminState == "drained"
	}, wait, 5*time.Millisecond, "the UDP ack drained the host")
	require.Eventually(t, func() bool { return fd.fetchCount() >= 2 }, wait, 5*time.Millisecond, "and its revision made the agent fetch the assignment")
	assert.Empty(t, fd.heartbeats(), "no heartbeat over HTTP")
	assert.NotEmpty(t, lines(logs, "heartbeat", "admin state changed (heartbeat ack)"))
	assert.NotContains(t, logs.String(), testToken)
}

func lines(l *syncBuf, component, msg string) []map[string]any {
	return l.lines(map[string]string{"component": component, "message": msg})
}

// BenchmarkUDPClientHeartbeat is one beat's round trip on loopback (seal,
// write, the fake daemon's open/decode/reply, read, open, decode).
func BenchmarkUDPClientHeartbeat(b *testing.B) {
	d := newUDPDaemon(b, func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(b, hb, udpAck)} })
	dc, err := NewDaemonClient("http://127.0.0.1:1", "n1", testToken)
	require.NoError(b, err)
	c, err := NewUDPClient(dc, UDPConfig{Address: d.addr(), Transport: TransportUDP}, zerolog.Nop())
	require.NoError(b, err)
	defer c.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for i := range b.N {
		if _, err := c.Heartbeat(ctx, testBeat(uint64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTPClientHeartbeat is the same beat posted (keep-alive), for
// comparison.
func BenchmarkHTTPClientHeartbeat(b *testing.B) {
	d := newHTTPDaemon(b)
	dc, err := NewDaemonClient(d.url, "n1", testToken)
	require.NoError(b, err)
	ctx := context.Background()
	b.ReportAllocs()
	for i := range b.N {
		if _, err := dc.Heartbeat(ctx, testBeat(uint64(i+1))); err != nil {
			b.Fatal(err)
		}
	}
}

// The ack's outcome crosses the datagram: an agent told "stale" over UDP
// knows it as over HTTP.
func TestUDPClientAckOutcome(t *testing.T) {
	stale := udpAck
	stale.Outcome, stale.OutcomeDetail = heartbeat.OutcomeStale, "seq 3 is not after 1000000000000"
	r := newUDPRig(t, TransportAuto, func(hb heartbeat.Heartbeat) [][]byte { return [][]byte{ackReply(t, hb, stale)} })
	ack, err := r.beat(5*time.Second, 3)
	require.NoError(t, err)
	assert.True(t, ack.Stale())
	assert.Equal(t, stale, ack)
}
