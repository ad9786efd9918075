package probe

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const (
	protoICMP   = 1  // IANA protocol number of ICMPv4
	protoICMPv6 = 58 // and of ICMPv6

	// payloadLen is the echo payload: the session token, then the
	// probe's nonce. A reply must carry both back to count.
	payloadLen = 16

	// wantRcvBuf is the receive buffer asked for the shared socket, so a
	// burst of replies (thousands of hosts probed at once) is not dropped
	// by the kernel, which would look like silence.
	wantRcvBuf = 8 << 20
	// replyTruesize is a pessimistic kernel cost of one queued reply
	// (some NICs hand up a page per packet).
	replyTruesize = 4096
	minInFlight   = 64
	maxInFlight   = 4096
)

// listenFunc opens an ICMP socket: unprivileged (a ping socket, "udp4" /
// "udp6") or privileged (raw, "ip4:icmp" / "ip6:ipv6-icmp").
type listenFunc func(v6, privileged bool) (net.PacketConn, error)

// listenICMP is the real listenFunc. The unprivileged socket is made like
// golang.org/x/net/icmp.ListenPacket("udp4") does, but returned as the
// *net.UDPConn itself so the receive buffer can be sized.
func listenICMP(v6, privileged bool) (net.PacketConn, error) {
	if privileged {
		if v6 {
			return net.ListenPacket("ip6:ipv6-icmp", "::")
		}
		return net.ListenPacket("ip4:icmp", "0.0.0.0")
	}
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if v6 {
		family, proto, sa = unix.AF_INET6, unix.IPPROTO_ICMPV6, &unix.SockaddrInet6{}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	f := os.NewFile(uintptr(fd), "icmp")
	defer f.Close()
	return net.FilePacketConn(f)
}

// echoer owns the ICMP socket of one address family. The socket is opened
// by the first probe that needs it and closed when the last in-flight
// probe finishes, so an idle Prober holds no socket and needs no Close.
type echoer struct {
	p      *Prober
	v6     bool
	listen listenFunc
	mode   modeLog

	mu    sync.Mutex
	cur   *session
	users int
}

func newEchoer(p *Prober, v6 bool, l listenFunc) *echoer {
	return &echoer{p: p, v6: v6, listen: l}
}

func (e *echoer) family() string {
	if e.v6 {
		return "icmpv6"
	}
	return "icmpv4"
}

func (e *echoer) acquire() (*session, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur == nil {
		s, err := e.open()
		if err != nil {
			if e.mode.changed("unavailable", e.p.clock()) {
				e.p.log.Warn().Str("family", e.family()).Err(err).Msg("ICMP probes unavailable; they count as neither answered nor silent")
			}
			return nil, err
		}
		e.cur = s
	}
	e.users++
	return e.cur, nil
}

func (e *echoer) release(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users--
	if e.users == 0 && e.cur == s {
		e.cur = nil
		s.close()
	}
}

// open tries a ping socket first (no privilege needed where
// net.ipv4.ping_group_range admits our group), then a raw socket.
func (e *echoer) open() (*session, error) {
	raw := false
	conn, uerr := e.listen(e.v6, false)
	if uerr != nil {
		var rerr error
		conn, rerr = e.listen(e.v6, true)
		if rerr != nil {
			if permission(uerr) && permission(rerr) {
				return nil, fmt.Errorf("%s not permitted here: unprivileged ping socket: %v (see net.ipv4.ping_group_range); raw socket: %v (needs CAP_NET_RAW)", e.family(), uerr, rerr)
			}
			return nil, fmt.Errorf("%s socket unavailable: unprivileged ping socket: %v; raw socket: %v", e.family(), uerr, rerr)
		}
		raw = true
	}
	s := &session{e: e, conn: conn, raw: raw, pending: map[uint16]*waiter{}}
	if _, err := rand.Read(s.token[:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%s: random token: %w", e.family(), err)
	}
	s.id = binary.BigEndian.Uint16(s.token[:2])
	s.slots = make(chan struct{}, inFlightLimit(conn))
	if raw {
		s.filter()
	}
	mode := "unprivileged ping socket"
	if raw {
		mode = "raw socket"
	}
	if e.mode.changed(mode, e.p.clock()) {
		e.p.log.Info().Str("family", e.family()).Str("mode", mode).Int("max_in_flight", cap(s.slots)).Msg("ICMP probes available")
	}
	go s.read()
	return s, nil
}

func permission(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES)
}

// inFlightLimit bounds the echo requests outstanding on one socket by what
// its receive buffer can queue, after trying to enlarge it.
func inFlightLimit(c net.PacketConn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return minInFlight
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return minInFlight
	}
	got := 0
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, wantRcvBuf) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, wantRcvBuf)
		}
		got, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	})
	return min(max(got/replyTruesize, minInFlight), maxInFlight)
}

// session is one open socket with its reader and the probes waiting on it.
type session struct {
	e    *echoer
	conn net.PacketConn
	// raw sockets see every ICMP packet of the host, so the echo ID must
	// be checked; ping sockets get their ID from the kernel, which demuxes
	// by it and rewrites it on the way out.
	raw    bool
	id     uint16
	token  [8]byte
	slots  chan struct{}
	closed atomic.Bool

	mu      sync.Mutex
	pending map[uint16]*waiter
	seq     uint16
	nonce   uint64
}

type waiter struct {
	dst   netip.Addr
	nonce uint64
	ch    chan reply // buffered 1: the reader never blocks
}

type reply struct {
	at time.Time
	// unreach is set when an ICMP error about our request came back
	// instead of an echo reply; byTarget when the target itself sent it.
	unreach  string
	byTarget bool
}

func (s *session) close() {
	s.closed.Store(true)
	s.conn.Close()
}

// filter makes the kernel drop, on a raw socket, the ICMP types we never
// look at (other processes' echo requests, neighbour discovery).
func (s *session) filter() {
	if _, ok := s.conn.(net.Conn); !ok {
		return // x/net's option setters need a real socket
	}
	var err error
	if s.e.v6 {
		var f ipv6.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv6.ICMPType{ipv6.ICMPTypeEchoReply, ipv6.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		err = ipv6.NewPacketConn(s.conn).SetICMPFilter(&f)
	} else {
		var f ipv4.ICMPFilter
		f.SetAll(true)
		for _, t := range []ipv4.ICMPType{ipv4.ICMPTypeEchoReply, ipv4.ICMPTypeDestinationUnreachable, ipv4.ICMPTypeTimeExceeded} {
			f.Accept(t)
		}
		err = ipv4.NewPacketConn(s.conn).SetICMPFilter(&f)
	}
	if err != nil {
		s.e.p.log.Debug().Err(err).Msg("ICMP filter not set; unrelated packets are parsed and dropped")
	}
}

func (s *session) read() {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			s.e.p.log.Warn().Err(err).Str("family", s.e.family()).Msg("ICMP read")
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.handle(buf[:n], addrOf(from), s.e.p.clock())
	}
}

func addrOf(a net.Addr) netip.Addr {
	var ip net.IP
	switch a := a.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	}
	addr, _ := netip.AddrFromSlice(ip)
	return addr.Unmap()
}

func (s *session) handle(b []byte, from netip.Addr, at time.Time) {
	proto := protoICMP
	if s.e.v6 {
		proto = protoICMPv6
	}
	m, err := icmp.ParseMessage(proto, b)
	if err != nil {
		return
	}
	switch m.Type {
	case ipv4.ICMPTypeEchoReply, ipv6.ICMPTypeEchoReply:
		e, ok := m.Body.(*icmp.Echo)
		if !ok || (s.raw && uint16(e.ID) != s.id) {
			return
		}
		nonce, ok := s.ours(e.Data)
		if !ok {
			return
		}
		s.deliver(uint16(e.Seq), from, nonce, true, reply{at: at})
	case ipv4.ICMPTypeDestinationUnreachable, ipv6.ICMPTypeDestinationUnreachable,
		ipv4.ICMPTypeTimeExceeded, ipv6.ICMPTypeTimeExceeded:
		var quoted []byte
		switch body := m.Body.(type) {
		case *icmp.DstUnreach:
			quoted = body.Data
		case *icmp.TimeExceeded:
			quoted = body.Data
		default:
			return
		}
		q, ok := parseQuoted(s.e.v6, quoted)
		if !ok || (s.raw && q.id != s.id) {
			return
		}
		// Routers may quote only 8 bytes of our ICMP header; check the
		// payload when they quote it.
		nonce, full := s.ours(q.payload)
		if len(q.payload) >= payloadLen && !full {
			return
		}
		why := fmt.Sprintf("%v (code %d) reported by %s", m.Type, m.Code, from)
		s.deliver(q.seq, q.dst, nonce, full, reply{at: at, unreach: why, byTarget: from == q.dst})
	}
}

// ours returns the nonce of a payload carrying this session's token.
func (s *session) ours(p []byte) (uint64, bool) {
	if len(p) < payloadLen || !bytes.Equal(p[:8], s.token[:]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(p[8:16]), true
}

type quotedEcho struct {
	dst     netip.Addr
	id, seq uint16
	payload []byte
}

// parseQuoted reads the original echo request quoted in an ICMP error.
func parseQuoted(v6 bool, d []byte) (quotedEcho, bool) {
	var q quotedEcho
	var rest []byte
	if v6 {
		if len(d) < 48 || d[0]>>4 != 6 || d[6] != protoICMPv6 {
			return q, false
		}
		q.dst, _ = netip.AddrFromSlice(d[24:40])
		rest = d[40:]
		if ipv6.ICMPType(rest[0]) != ipv6.ICMPTypeEchoRequest {
			return q, false
		}
	} else {
		if len(d) < 20 || d[0]>>4 != 4 {
			return q, false
		}
		ihl := int(d[0]&0x0f) * 4
		if ihl < 20 || len(d) < ihl+8 || d[9] != protoICMP {
			return q, false
		}
		q.dst, _ = netip.AddrFromSlice(d[16:20])
		rest = d[ihl:]
		if ipv4.ICMPType(rest[0]) != ipv4.ICMPTypeEcho {
			return q, false
		}
	}
	q.id = binary.BigEndian.Uint16(rest[4:6])
	q.seq = binary.BigEndian.Uint16(rest[6:8])
	q.payload = rest[8:]
	q.dst = q.dst.Unmap()
	return q, true
}

func (s *session) deliver(seq uint16, addr netip.Addr, nonce uint64, checkNonce bool, r reply) {
	s.mu.Lock()
	w, ok := s.pending[seq]
	if !ok || w.dst.WithZone("") != addr.WithZone("") || (checkNonce && w.nonce != nonce) {
		s.mu.Unlock()
		return
	}
	delete(s.pending, seq)
	s.mu.Unlock()
	w.ch <- r
}

// register gives w a free sequence number and a fresh nonce. The slots
// bound (≤ maxInFlight) keeps free numbers plentiful.
func (s *session) register(w *waiter) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		s.seq++
		if _, busy := s.pending[s.seq]; !busy {
			break
		}
	}
	s.nonce++
	w.nonce = s.nonce
	s.pending[s.seq] = w
	return s.seq
}

func (s *session) unregister(seq uint16, w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[seq] == w {
		delete(s.pending, seq)
	}
}

func (s *session) dstAddr(a netip.Addr) net.Addr {
	ip := net.IP(a.AsSlice())
	if s.raw {
		return &net.IPAddr{IP: ip, Zone: a.Zone()}
	}
	return &net.UDPAddr{IP: ip, Zone: a.Zone()}
}

func (s *session) echo(ctx context.Context, a *attempt, dst netip.Addr) Answer {
	t := a.t
	got := false
	select {
	case s.slots <- struct{}{}:
		got = true
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		// A slot freed by the deadline itself may win the select above;
		// sending now would be after the deadline.
		if got {
			<-s.slots
		}
		if errors.Is(ctx.Err(), context.Canceled) {
			return unsupported(t, "probe cancelled before an answer")
		}
		// Never sent, so the silence would be ours, not the host's.
		return unsupported(t, fmt.Sprintf("%s echo not sent within %v: %d requests already in flight", s.e.family(), a.budget, cap(s.slots)))
	}
	defer func() { <-s.slots }()

	w := &waiter{dst: dst, ch: make(chan reply, 1)}
	seq := s.register(w)
	payload := make([]byte, payloadLen)
	copy(payload, s.token[:])
	binary.BigEndian.PutUint64(payload[8:], w.nonce)
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if s.e.v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	// ICMPv6 checksums are filled in by the kernel (raw and ping sockets).
	b, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(s.id), Seq: int(seq), Data: payload}}).Marshal(nil)
	if err != nil {
		s.unregister(seq, w)
		return unsupported(t, fmt.Sprintf("%s: build echo request: %v", s.e.family(), err))
	}
	a.sent.Store(true)
	sent := s.e.p.clock()
	if _, err := s.conn.WriteTo(b, s.dstAddr(dst)); err != nil {
		s.unregister(seq, w)
		return classifyErr(ctx, a, err, 0)
	}
	select {
	case r := <-w.ch:
		if r.unreach != "" && !r.byTarget {
			return silent(t, r.unreach)
		}
		// An echo reply, or the target's own stack refusing the echo:
		// either way its kernel is alive.
		return answered(t, r.at.Sub(sent))
	case <-ctx.Done():
		s.unregister(seq, w)
		// A reply that raced the deadline still counts.
		select {
		case r := <-w.ch:
			if r.unreach == "" || r.byTarget {
				return answered(t, r.at.Sub(sent))
			}
			return silent(t, r.unreach)
		default:
		}
		return expired(ctx, a)
	}
}

func (p *Prober) probeICMP(ctx context.Context, a *attempt) Answer {
	t := a.t
	dst, err := p.resolveHost(ctx, t.Addr)
	if err != nil {
		return unsupported(t, err.Error())
	}
	e := p.icmp4
	if dst.Is6() {
		e = p.icmp6
	}
	s, err := e.acquire()
	if err != nil {
		return unsupported(t, err.Error())
	}
	defer e.release(s)
	return s.echo(ctx, a, dst)
}
