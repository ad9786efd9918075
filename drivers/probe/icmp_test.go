package probe

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// fakeConn is an ICMP socket whose peer is a function: each request
// written produces the packets respond returns, read back in order.
type fakeConn struct {
	raw     bool
	respond func(req []byte, dst netip.Addr) []fakePkt
	in      chan fakePkt
	done    chan struct{}
	once    sync.Once
	writes  atomic.Int64
}

type fakePkt struct {
	b    []byte
	from netip.Addr
}

func newFakeConn(raw bool, respond func([]byte, netip.Addr) []fakePkt) *fakeConn {
	return &fakeConn{raw: raw, respond: respond, in: make(chan fakePkt, 1<<16), done: make(chan struct{})}
}

func (c *fakeConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case p := <-c.in:
		var from net.Addr = &net.UDPAddr{IP: p.from.AsSlice()}
		if c.raw {
			from = &net.IPAddr{IP: p.from.AsSlice()}
		}
		return copy(b, p.b), from, nil
	case <-c.done:
		return 0, nil, net.ErrClosed
	}
}

func (c *fakeConn) WriteTo(b []byte, dst net.Addr) (int, error) {
	c.writes.Add(1)
	if c.raw {
		if _, ok := dst.(*net.IPAddr); !ok {
			return 0, fmt.Errorf("raw socket written with %T", dst)
		}
	} else if _, ok := dst.(*net.UDPAddr); !ok {
		return 0, fmt.Errorf("ping socket written with %T", dst)
	}
	for _, p := range c.respond(append([]byte(nil), b...), addrOf(dst)) {
		c.in <- p
	}
	return len(b), nil
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *fakeConn) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *fakeConn) LocalAddr() net.Addr              { return &net.IPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// withListen makes p's ICMPv4 and ICMPv6 echoers use l.
func withListen(p *Prober, l listenFunc) {
	p.icmp4 = newEchoer(p, false, l)
	p.icmp6 = newEchoer(p, true, l)
}

// only returns a listenFunc that hands out conn for one privilege level
// and refuses the other with err.
func only(privileged bool, conn func() net.PacketConn, err error) (listenFunc, *[]bool) {
	var mu sync.Mutex
	calls := &[]bool{}
	return func(_ bool, priv bool) (net.PacketConn, error) {
		mu.Lock()
		*calls = append(*calls, priv)
		mu.Unlock()
		if priv == privileged {
			return conn(), nil
		}
		return nil, err
	}, calls
}

func parseEcho(t testing.TB, v6 bool, b []byte) *icmp.Echo {
	proto := protoICMP
	if v6 {
		proto = protoICMPv6
	}
	m, err := icmp.ParseMessage(proto, b)
	require.NoError(t, err)
	e, ok := m.Body.(*icmp.Echo)
	require.True(t, ok, "request body %T", m.Body)
	return e
}

func echoReply(t testing.TB, v6 bool, e icmp.Echo) []byte {
	var typ icmp.Type = ipv4.ICMPTypeEchoReply
	if v6 {
		typ = ipv6.ICMPTypeEchoReply
	}
	b, err := (&icmp.Message{Type: typ, Body: &e}).Marshal(nil)
	require.NoError(t, err)
	return b
}

// echoing answers every request the way a live host does.
func echoing(t testing.TB, v6 bool) func([]byte, netip.Addr) []fakePkt {
	return func(req []byte, dst netip.Addr) []fakePkt {
		return []fakePkt{{echoReply(t, v6, *parseEcho(t, v6, req)), dst}}
	}
}

func TestICMPUnsupportedWhenNoSocketIsPermitted(t *testing.T) {
	var buf syncBuffer
	p := New(Options{Log: zerolog.New(&buf)})
	var calls []bool
	withListen(p, func(_ bool, priv bool) (net.PacketConn, error) {
		calls = append(calls, priv)
		if priv {
			return nil, fmt.Errorf("socket: %w", syscall.EPERM)
		}
		return nil, fmt.Errorf("socket: %w", syscall.EACCES)
	})
	res := p.Round(within(t, time.Second), []Target{{Kind: KindICMP, Addr: "192.0.2.1"}})
	a := res.Answers[0]
	assert.Equal(t, []bool{false, true}, calls, "ping socket first, then raw")
	assert.True(t, a.Unsupported)
	assert.False(t, a.Answered)
	assert.Contains(t, a.Err, "not permitted")
	assert.Contains(t, a.Err, "ping_group_range")
	assert.Contains(t, a.Err, "CAP_NET_RAW")
	assert.False(t, res.Silent(), "ICMP not allowed here must not read as a silent host")
	assert.Contains(t, buf.String(), "ICMP probes unavailable")
}

func TestICMPUnavailableIsNotCalledForbidden(t *testing.T) {
	p := newTestProber(t)
	withListen(p, func(_ bool, priv bool) (net.PacketConn, error) {
		if priv {
			return nil, fmt.Errorf("socket: %w", syscall.EMFILE)
		}
		return nil, fmt.Errorf("socket: %w", syscall.EACCES)
	})
	a := p.Round(within(t, time.Second), []Target{{Kind: KindICMP, Addr: "192.0.2.1"}}).Answers[0]
	assert.True(t, a.Unsupported)
	assert.Contains(t, a.Err, "socket unavailable")
	assert.Contains(t, a.Err, "too many open files")
	assert.NotContains(t, a.Err, "not permitted")
}

func TestModeLogIsRateLimited(t *testing.T) {
	var m modeLog
	t0 := time.Unix(1000, 0)
	assert.True(t, m.changed("raw socket", t0))
	assert.False(t, m.changed("raw socket", t0.Add(time.Hour)), "same mode: nothing new")
	assert.False(t, m.changed("unavailable", t0.Add(time.Second)), "a flap within 10 s stays quiet")
	assert.True(t, m.changed("unavailable", t0.Add(11*time.Second)))
	assert.False(t, m.changed("unavailable", t0.Add(30*time.Second)))
}

func TestICMPFallsBackToRaw(t *testing.T) {
	var buf syncBuffer
	p := New(Options{Log: zerolog.New(&buf)})
	var conn *fakeConn
	l, calls := only(true, func() net.PacketConn {
		conn = newFakeConn(true, echoing(t, false))
		return conn
	}, syscall.EACCES)
	withListen(p, l)

	res := p.Round(within(t, time.Second), []Target{{Kind: KindICMP, Addr: "192.0.2.1"}})
	a := res.Answers[0]
	assert.True(t, a.Answered, "err: %s", a.Err)
	assert.Positive(t, a.RTT)
	assert.Equal(t, []bool{false, true}, *calls)
	assert.Contains(t, buf.String(), `"mode":"raw socket"`)
	assert.True(t, conn.isClosed(), "the socket closes when the last probe finishes")
}

func TestICMPPingSocket(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			p := newTestProber(t)
			l, calls := only(false, func() net.PacketConn { return newFakeConn(false, echoing(t, v6)) }, syscall.EPERM)
			withListen(p, l)
			addr := "192.0.2.7"
			if v6 {
				addr = "2001:db8::7"
			}
			res := p.Round(within(t, time.Second), []Target{{Kind: KindICMP, Addr: addr}})
			assert.True(t, res.Answers[0].Answered, "err: %s", res.Answers[0].Err)
			assert.Equal(t, []bool{false}, *calls, "no raw socket when the ping socket opens")
		})
	}
}

// Each reply below is wrong in exactly one way; none may count.
func TestICMPMismatchedRepliesDoNotCount(t *testing.T) {
	target := netip.MustParseAddr("192.0.2.9")
	for _, tc := range []struct {
		name   string
		mangle func(e *icmp.Echo, from *netip.Addr)
	}{
		{"other seq", func(e *icmp.Echo, _ *netip.Addr) { e.Seq++ }},
		{"stale nonce", func(e *icmp.Echo, _ *netip.Addr) {
			binary.BigEndian.PutUint64(e.Data[8:], binary.BigEndian.Uint64(e.Data[8:])-1)
		}},
		{"other token", func(e *icmp.Echo, _ *netip.Addr) { e.Data[0] ^= 0xff }},
		{"short payload", func(e *icmp.Echo, _ *netip.Addr) { e.Data = e.Data[:8] }},
		{"other source", func(_ *icmp.Echo, from *netip.Addr) { *from = netip.MustParseAddr("192.0.2.10") }},
		{"other process's ID", func(e *icmp.Echo, _ *netip.Addr) { e.ID ^= 0x5a5a }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, good := range []bool{false, true} {
				p := newTestProber(t)
				l, _ := only(true, func() net.PacketConn {
					return newFakeConn(true, func(req []byte, dst netip.Addr) []fakePkt {
						e := *parseEcho(t, false, req)
						e.Data = append([]byte(nil), e.Data...)
						bad, from := e, dst
						bad.Data = append([]byte(nil), e.Data...)
						tc.mangle(&bad, &from)
						out := []fakePkt{{echoReply(t, false, bad), from}}
						if good {
							out = append(out, fakePkt{echoReply(t, false, e), dst})
						}
						return out
					})
				}, syscall.EACCES)
				withListen(p, l)
				res := p.Round(within(t, 200*time.Millisecond), []Target{{Kind: KindICMP, Addr: target.String()}})
				a := res.Answers[0]
				if good {
					assert.True(t, a.Answered, "the matching reply after the bad one counts; err: %s", a.Err)
				} else {
					assert.False(t, a.Answered)
					assert.False(t, a.Unsupported)
					assert.Contains(t, a.Err, "no answer within")
				}
			}
		})
	}
}

// unreachable quotes req the way a router does: its IPv4 header, then the
// first bytes of the echo request (quote = how many).
func unreachable(t testing.TB, req []byte, dst netip.Addr, quote int) []byte {
	hdr := make([]byte, 20)
	hdr[0] = 0x45
	hdr[9] = protoICMP
	copy(hdr[12:16], []byte{10, 0, 0, 1})
	d4 := dst.As4()
	copy(hdr[16:20], d4[:])
	b, err := (&icmp.Message{Type: ipv4.ICMPTypeDestinationUnreachable, Code: 1,
		Body: &icmp.DstUnreach{Data: append(hdr, req[:min(quote, len(req))]...)}}).Marshal(nil)
	require.NoError(t, err)
	return b
}

func TestICMPDestinationUnreachable(t *testing.T) {
	target := netip.MustParseAddr("192.0.2.20")
	router := netip.MustParseAddr("198.51.100.1")
	for _, tc := range []struct {
		name     string
		from     netip.Addr
		quote    int
		answered bool
	}{
		{"from a router, full quote", router, 64, false},
		{"from a router, 8-byte quote", router, 8, false},
		{"from the target itself", target, 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProber(t)
			l, _ := only(true, func() net.PacketConn {
				return newFakeConn(true, func(req []byte, dst netip.Addr) []fakePkt {
					return []fakePkt{{unreachable(t, req, dst, tc.quote), tc.from}}
				})
			}, syscall.EACCES)
			withListen(p, l)
			const deadline = 2 * time.Second
			start := time.Now()
			res := p.Round(within(t, deadline), []Target{{Kind: KindICMP, Addr: target.String()}})
			a := res.Answers[0]
			assert.Less(t, time.Since(start), deadline/2, "an ICMP error ends the probe at once")
			assert.Equal(t, tc.answered, a.Answered, "err: %s", a.Err)
			assert.False(t, a.Unsupported)
			if !tc.answered {
				assert.Contains(t, a.Err, "destination unreachable")
				assert.Contains(t, a.Err, "reported by "+router.String())
				assert.True(t, res.Silent())
			}
		})
	}
}

func TestICMPUnreachableForAnotherProbeIsIgnored(t *testing.T) {
	p := newTestProber(t)
	l, _ := only(true, func() net.PacketConn {
		return newFakeConn(true, func(req []byte, dst netip.Addr) []fakePkt {
			// quotes our request but names a different destination
			return []fakePkt{{unreachable(t, req, netip.MustParseAddr("192.0.2.99"), 64), netip.MustParseAddr("10.0.0.1")}}
		})
	}, syscall.EACCES)
	withListen(p, l)
	res := p.Round(within(t, 200*time.Millisecond), []Target{{Kind: KindICMP, Addr: "192.0.2.21"}})
	assert.Contains(t, res.Answers[0].Err, "no answer within")
}

// Many rounds at once share one socket; each reply reaches its own probe
// even when replies come back in another order.
func TestICMPConcurrentRoundsShareOneSocket(t *testing.T) {
	p := newTestProber(t)
	var opens atomic.Int64
	var mu sync.Mutex
	var held []fakePkt
	l, _ := only(true, func() net.PacketConn {
		opens.Add(1)
		var c *fakeConn
		c = newFakeConn(true, func(req []byte, dst netip.Addr) []fakePkt {
			// Hold replies and release them shuffled, a few at a time.
			mu.Lock()
			defer mu.Unlock()
			held = append(held, fakePkt{echoReply(t, false, *parseEcho(t, false, req)), dst})
			if len(held) < 16 {
				return nil
			}
			rand.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
			out := held
			held = nil
			return out
		})
		return c
	}, syscall.EACCES)
	withListen(p, l)

	const rounds, perRound = 20, 48 // 960 probes; 16 divides it
	var wg sync.WaitGroup
	results := make([]Result, rounds)
	for r := range rounds {
		targets := make([]Target, perRound)
		for i := range targets {
			targets[i] = Target{Kind: KindICMP, Addr: fmt.Sprintf("10.%d.%d.1", r, i)}
		}
		wg.Go(func() { results[r] = p.Round(within(t, 5*time.Second), targets) })
	}
	wg.Wait()
	for r, res := range results {
		for i, a := range res.Answers {
			assert.Equal(t, fmt.Sprintf("10.%d.%d.1", r, i), a.Target.Addr)
			assert.True(t, a.Answered, "round %d target %d: %s", r, i, a.Err)
		}
	}
	assert.LessOrEqual(t, opens.Load(), int64(rounds), "probes in flight share a socket")
}

// With no reply coming, at most cap(slots) requests are outstanding; the
// rest are never sent and must not read as silence.
func TestICMPInFlightBound(t *testing.T) {
	p := newTestProber(t)
	var conn *fakeConn
	l, _ := only(true, func() net.PacketConn {
		conn = newFakeConn(true, func([]byte, netip.Addr) []fakePkt { return nil })
		return conn
	}, syscall.EACCES)
	withListen(p, l)
	targets := make([]Target, minInFlight+36)
	for i := range targets {
		targets[i] = Target{Kind: KindICMP, Addr: fmt.Sprintf("10.0.%d.%d", i/200, i%200+1)}
	}
	res := p.Round(within(t, 300*time.Millisecond), targets)
	silentN, notSent := 0, 0
	for _, a := range res.Answers {
		switch {
		case a.Unsupported:
			notSent++
			assert.Contains(t, a.Err, "not sent within")
		case !a.Answered:
			silentN++
			assert.Contains(t, a.Err, "no answer within")
		}
	}
	assert.Equal(t, minInFlight, silentN)
	assert.Equal(t, 36, notSent)
	assert.Equal(t, int64(minInFlight), conn.writes.Load())
}

// A real socket on loopback: many concurrent probes through one socket.
func TestICMPLoopbackMany(t *testing.T) {
	p := newTestProber(t)
	targets := make([]Target, 300)
	for i := range targets {
		targets[i] = Target{Kind: KindICMP, Addr: fmt.Sprintf("127.0.%d.%d", i/250, i%250+1)}
	}
	res := p.Round(within(t, 3*time.Second), targets)
	if res.Answers[0].Unsupported {
		t.Skipf("ICMP unsupported here: %s", res.Answers[0].Err)
	}
	for _, a := range res.Answers {
		assert.True(t, a.Answered, "%s: %s", a.Target.Addr, a.Err)
	}
}

func TestParseQuotedRejectsGarbage(t *testing.T) {
	for _, d := range [][]byte{nil, make([]byte, 19), append([]byte{0x45}, make([]byte, 30)...), append([]byte{0x60}, make([]byte, 60)...)} {
		_, ok := parseQuoted(false, d)
		assert.False(t, ok)
		_, ok = parseQuoted(true, d)
		assert.False(t, ok)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}
