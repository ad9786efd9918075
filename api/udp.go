package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/heartbeat"
)

// The UDP heartbeat intake: a few reader goroutines share one socket, so
// 10,000 agents cost the daemon no goroutine, buffer or TCP write each.

// udpWriteTimeout bounds a reply's write: a full send buffer must not hold
// a reader that the next datagrams wait for.
const udpWriteTimeout = 100 * time.Millisecond

// maxRefusedText bounds a reply's reason: a heartbeat listing thousands of
// bad domains must not make a reply larger than a datagram.
const maxRefusedText = 1024

// udpReadBuffer is the receive buffer ListenHeartbeats asks for: room for a
// second's burst of 10,000 beats while the readers are busy. The kernel
// caps it at net.core.rmem_max.
const udpReadBuffer = 4 << 20

// udpReaders is ServeHeartbeats' reader count. Reads on one socket are
// serialised anyway; the readers are there for the handling, which can wait
// on the store: a host's first heartbeat records where its domains live,
// and the store batches concurrent writes into one fsync. With a reader per
// core, 10,000 hosts starting at once got ~750 heartbeats a second through,
// the socket overflowed and every host looked silent. A parked reader costs
// a small stack.
const udpReaders = 64

// ListenHeartbeats opens the UDP socket for ServeHeartbeats on addr
// (host:port) and asks for a large receive buffer (best effort).
func ListenHeartbeats(addr string) (*net.UDPConn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	uc := pc.(*net.UDPConn)
	_ = uc.SetReadBuffer(udpReadBuffer)
	return uc, nil
}

// ServeHeartbeats reads heartbeat datagrams from conn until ctx ends, then
// closes conn and returns nil once every reader stopped. It returns an
// error when conn fails for another reason (closed by someone else).
//
// Each datagram is opened with the key of the host it names (payload field
// 1), derived from that host's agent credential; one that is not
// authentic (a datagram for host G sealed with H's key included), not a heartbeat, malformed or too large is counted and
// dropped without a reply, so a forged source address is never sent
// anything. An authentic heartbeat goes to the Backend like an HTTP one and
// is answered, to the datagram's source, with the Ack, or with Refused
// saying why (unknown host, invalid heartbeat) when the reply can name the
// heartbeat it answers.
func (s *Server) ServeHeartbeats(ctx context.Context, conn net.PacketConn) error {
	n := s.readers
	if n <= 0 {
		n = udpReaders
	}
	uc, _ := conn.(*net.UDPConn)
	v6, pktinfo, err := enablePktinfo(uc)
	if err != nil {
		s.log.Warn().Err(err).Str("transport", "udp").Str("listen", conn.LocalAddr().String()).
			Msg("heartbeat replies leave from the address the route picks: an agent that sends to another of this host's addresses hears no reply and falls back to HTTP")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the socket is what unblocks the readers.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			var src *replySource
			if pktinfo {
				src = newReplySource(v6)
			}
			if err := s.readHeartbeats(ctx, conn, src); err != nil {
				errs <- err
				cancel()
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// peer is a datagram's source: ap on a *net.UDPConn (no allocation),
// addr on any other PacketConn.
type peer struct {
	ap   netip.AddrPort
	addr net.Addr
}

func (p peer) String() string {
	if p.addr != nil {
		return p.addr.String()
	}
	return netip.AddrPortFrom(p.ap.Addr().Unmap(), p.ap.Port()).String()
}

// readHeartbeats is one reader. src is nil unless the socket delivers each
// datagram's destination address (a wildcard-bound *net.UDPConn).
func (s *Server) readHeartbeats(ctx context.Context, conn net.PacketConn, src *replySource) error {
	// One byte more than a datagram may have: a read that fills it was
	// too large (the kernel truncated it).
	buf := make([]byte, heartbeat.MaxDatagram+1)
	uc, _ := conn.(*net.UDPConn)
	for {
		var (
			n, oobn int
			p       peer
			err     error
		)
		switch {
		case src != nil:
			n, oobn, _, p.ap, err = uc.ReadMsgUDPAddrPort(buf, src.oob)
		case uc != nil:
			n, p.ap, err = uc.ReadFromUDPAddrPort(buf)
		default:
			n, p.addr, err = conn.ReadFrom(buf)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("UDP heartbeats on %s: socket closed: %w", conn.LocalAddr(), err)
			}
			s.failed(err, "reading a heartbeat datagram failed")
			// A failing socket must not spin a core.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		reply := s.heartbeatDatagram(buf[:n], p)
		if reply == nil {
			continue
		}
		_ = conn.SetWriteDeadline(time.Now().Add(udpWriteTimeout))
		switch {
		case src != nil:
			// No usable destination in the datagram's control
			// message: nil, and the route picks the source as before.
			_, _, err = uc.WriteMsgUDPAddrPort(reply, src.from(src.oob[:oobn]), p.ap)
		case uc != nil:
			_, err = uc.WriteToUDPAddrPort(reply, p.ap)
		default:
			_, err = conn.WriteTo(reply, p.addr)
		}
		if err != nil && ctx.Err() == nil {
			s.failed(err, "heartbeat reply to "+p.String()+" not sent")
		}
	}
}

// enablePktinfo asks a wildcard-bound socket for each datagram's
// destination address (IP_PKTINFO, IPV6_RECVPKTINFO), so a reply can leave
// from it: the route's choice of source on a multi-homed host is often
// another address, which the agent's connected socket (and a stateful
// firewall) drops. v6 says which control messages the socket speaks. A
// socket bound to one address answers from it anyway: pktinfo is false.
func enablePktinfo(uc *net.UDPConn) (v6, pktinfo bool, err error) {
	if uc == nil {
		return false, false, nil
	}
	local, ok := uc.LocalAddr().(*net.UDPAddr)
	if !ok || !local.IP.IsUnspecified() {
		return false, false, nil
	}
	// Go opens 0.0.0.0 on "udp" as a dual-stack IPv6 socket and reports
	// it as [::]; only an IPv4 socket says 0.0.0.0.
	if local.IP.To4() != nil {
		err = ipv4.NewPacketConn(uc).SetControlMessage(ipv4.FlagDst, true)
	} else {
		v6 = true
		err = ipv6.NewPacketConn(uc).SetControlMessage(ipv6.FlagDst, true)
	}
	if err != nil {
		return false, false, fmt.Errorf("asking for datagrams' destination addresses on %s: %w", local, err)
	}
	return v6, true, nil
}

// replySource is one reader's control-message state: the receive buffer
// and the last reply control message, reused while beats keep arriving at
// the same address (the usual case), so it is marshalled once per address,
// not per beat. (Parse still allocates one small slice a datagram.)
type replySource struct {
	v6   bool
	oob  []byte
	cm4  ipv4.ControlMessage
	cm6  ipv6.ControlMessage
	addr netip.Addr // the source out says
	out  []byte
}

// limitedBroadcast is 255.255.255.255, never a source address.
var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

func newReplySource(v6 bool) *replySource {
	// Room for more than the one packet-info message asked for: a
	// truncated buffer would lose it.
	return &replySource{v6: v6, oob: make([]byte, 256)}
}

// from returns the control message that makes a reply leave from the
// address the datagram with control message oob was sent to, or nil when
// oob names none usable (multicast, broadcast: the route picks).
func (r *replySource) from(oob []byte) []byte {
	var dst net.IP
	// A message without packet info must not leave the last one's
	// address in place: Parse keeps the buffer, zeroed means none.
	if r.v6 {
		clear(r.cm6.Dst)
		if r.cm6.Parse(oob) != nil {
			return nil
		}
		dst = r.cm6.Dst
	} else {
		clear(r.cm4.Dst)
		if r.cm4.Parse(oob) != nil {
			return nil
		}
		dst = r.cm4.Dst
	}
	a, ok := netip.AddrFromSlice(dst)
	// A dual-stack socket reports an IPv4 destination v4-mapped.
	a = a.Unmap()
	if !ok || a.IsUnspecified() || a.IsMulticast() || a == limitedBroadcast {
		return nil
	}
	if a != r.addr {
		// An IPv4 source goes in IP_PKTINFO on an IPv6 socket too: the
		// kernel takes it for a v4-mapped peer, and ipv6.ControlMessage
		// does not marshal a v4-mapped source.
		if a.Is4() {
			r.out = (&ipv4.ControlMessage{Src: a.AsSlice()}).Marshal()
		} else {
			r.out = (&ipv6.ControlMessage{Src: a.AsSlice()}).Marshal()
		}
		r.addr = a
	}
	return r.out
}

// heartbeatDatagram handles one datagram from p and returns the sealed
// reply to send, or nil for none.
func (s *Server) heartbeatDatagram(b []byte, p peer) []byte {
	sealer, keyHost, kind, payload, err := s.open(b)
	switch {
	case errors.Is(err, heartbeat.ErrDatagramTooLarge):
		s.hbUDP.tooLarge.Inc()
		s.dropped(p, "too_large", err)
		return nil
	case errors.Is(err, heartbeat.ErrDatagramAuth):
		s.hbUDP.unauthorized.Inc()
		s.dropped(p, "unauthorized", err)
		return nil
	case err != nil:
		s.hbUDP.malformed.Inc()
		s.dropped(p, "malformed", err)
		return nil
	case kind != heartbeat.KindHeartbeat:
		// Never answer a reply: two daemons (or a forged reflection) must
		// not ping-pong.
		s.hbUDP.malformed.Inc()
		s.dropped(p, "malformed", fmt.Errorf("datagram of kind %d; the daemon reads only heartbeats (kind %d)", kind, heartbeat.KindHeartbeat))
		return nil
	}
	hb, err := heartbeat.DecodeHeartbeatPayload(payload)
	if err == nil && hb.Host != keyHost {
		// The field the key was chosen by must be the one decoded.
		s.hbUDP.unauthorized.Inc()
		s.dropped(p, "unauthorized", fmt.Errorf("%w: sealed for host %q, names host %q", heartbeat.ErrDatagramAuth, trim(keyHost), trim(hb.Host)))
		return nil
	}
	if err != nil {
		s.hbUDP.malformed.Inc()
		return s.refused(sealer, p, heartbeat.ReplyToPayload(payload), err.Error())
	}
	ack, err := s.b.Heartbeat(hb)
	switch {
	case errors.Is(err, daemon.ErrUnknownHost):
		s.hbUDP.unknownHost.Inc()
		return s.refused(sealer, p, heartbeat.ReplyTo(hb), unknownHost(hb.Host))
	case errors.Is(err, daemon.ErrHeartbeatRefused):
		s.hbUDP.refused.Inc()
		return s.refused(sealer, p, heartbeat.ReplyTo(hb), err.Error())
	case err != nil:
		// What HTTP answers with a 500: no reply, so the agent tries HTTP.
		s.failed(err, "heartbeat datagram from "+p.String()+" not taken")
		return nil
	}
	s.hbUDP.taken(ack)
	r := heartbeat.ReplyTo(hb)
	r.Ack = &ack
	return s.seal(sealer, p, r)
}

// open reads the host a datagram names and opens it with that host's keys
// (current secret first). The sealer returned is the one that opened it:
// the reply is sealed with the key the agent holds.
func (s *Server) open(b []byte) (sealer *heartbeat.Sealer, host string, kind byte, payload []byte, err error) {
	host, err = heartbeat.DatagramHost(b)
	if err != nil {
		return nil, "", 0, nil, err
	}
	cached, hit := s.sealers.Load(host)
	var sealers []*heartbeat.Sealer
	if hit {
		sealers = cached.([]*heartbeat.Sealer)
	} else {
		for _, cred := range s.agents.AgentCredentials(host) {
			sl, err := heartbeat.NewSealer(cred)
			if err != nil {
				return nil, "", 0, nil, err
			}
			sealers = append(sealers, sl)
		}
	}
	for _, sl := range sealers {
		kind, payload, err := sl.Open(b)
		if errors.Is(err, heartbeat.ErrDatagramAuth) {
			continue
		}
		if err == nil && !hit {
			s.sealers.Store(host, sealers)
		}
		return sl, host, kind, payload, err
	}
	return nil, "", 0, nil, fmt.Errorf("%w (host %q)", heartbeat.ErrDatagramAuth, trim(host))
}

// refused logs why a heartbeat was refused and returns the reply saying so.
// A reply that cannot name its heartbeat (no host or seq) is not sent: the
// agent could not match it, and its HTTP retry gets the same reason.
func (s *Server) refused(sealer *heartbeat.Sealer, p peer, r heartbeat.Reply, why string) []byte {
	if len(why) > maxRefusedText {
		why = why[:maxRefusedText] + "…"
	}
	r.Refused = why
	answer := r.Host != "" && r.Seq != 0
	if ok, n := s.udpRefused.allow(s.now()); ok {
		s.log.Warn().Str("remote", p.String()).Str("transport", "udp").Str("host", trim(r.Host)).Uint64("seq", r.Seq).
			Bool("answered", answer).Uint64("suppressed", n).Msg("refused heartbeat: " + why)
	}
	if !answer {
		return nil
	}
	return s.seal(sealer, p, r)
}

func (s *Server) seal(sealer *heartbeat.Sealer, p peer, r heartbeat.Reply) []byte {
	out, err := sealer.SealReply(r)
	if err == nil && len(out) > heartbeat.MaxDatagram {
		err = fmt.Errorf("reply of %d bytes exceeds %d", len(out), heartbeat.MaxDatagram)
	}
	if err != nil {
		// The agent hears nothing and sends the beat over HTTP.
		s.failed(err, "heartbeat reply to "+p.String()+" not sent")
		return nil
	}
	return out
}

// dropped logs a datagram that gets no reply, at most once a second.
func (s *Server) dropped(p peer, result string, err error) {
	if ok, n := s.udpDropped.allow(s.now()); ok {
		s.log.Warn().Str("remote", p.String()).Str("transport", "udp").Str("result", result).Err(err).
			Uint64("suppressed", n).Msg("dropped heartbeat datagram")
	}
}

func (s *Server) failed(err error, msg string) {
	if ok, n := s.udpFailed.allow(s.now()); ok {
		s.log.Error().Err(err).Str("transport", "udp").Uint64("suppressed", n).Msg(msg)
	}
}

// trim bounds a client-supplied string in a log line.
func trim(v string) string {
	if len(v) > 256 {
		return v[:256] + "…"
	}
	return v
}
