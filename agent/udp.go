package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/heartbeat"
)

// UDPConfig is how a UDPClient reaches the daemon.
type UDPConfig struct {
	// Address is the daemon's UDP heartbeat address, HOST:PORT. "" means
	// the host and port of the DaemonClient's URL (the daemon's default:
	// UDP on the port of its HTTP listener).
	Address string
	// Transport is TransportAuto (default) or TransportUDP. TransportHTTP
	// needs no UDPClient: use the DaemonClient.
	Transport Transport
	// Now is the clock of the auto mode's sticky HTTP. Default time.Now.
	Now func() time.Time
}

// UDPClient is a Daemon that sends heartbeats as UDP datagrams
// (heartbeat.Sealer, keyed from this host's agent credential) over one connected
// socket, and everything else through the DaemonClient it wraps: the
// assignment, heartbeats too large for a datagram, and in auto mode the
// heartbeats UDP does not answer in time (see Transport). A reply is taken
// only when it opens with the credential's key and answers the beat sent;
// anything else on the socket is dropped without a word. Heartbeats are
// sent one at a time (a second caller waits). Close it when done.
type UDPClient struct {
	http   *DaemonClient
	addr   string
	sealer *heartbeat.Sealer
	now    func() time.Time
	log    zerolog.Logger

	mu       sync.Mutex
	policy   transportPolicy
	conn     net.Conn // nil until the first UDP beat, and after a redial is due
	buf      []byte
	tooLarge bool // the last beat did not fit a datagram (logged on change)
}

// NewUDPClient checks cfg; no I/O (the socket is dialed at the first
// heartbeat, so a daemon name that does not resolve yet is retried).
func NewUDPClient(dc *DaemonClient, cfg UDPConfig, log zerolog.Logger) (*UDPClient, error) {
	if dc == nil {
		return nil, errors.New("UDP heartbeat client: no daemon client")
	}
	if cfg.Transport != TransportAuto && cfg.Transport != TransportUDP {
		return nil, fmt.Errorf("UDP heartbeat client: transport %s sends no datagram (use the daemon client alone)", cfg.Transport)
	}
	addr := cfg.Address
	if addr == "" {
		addr = defaultUDPAddress(dc)
	}
	if err := CheckUDPAddress(addr); err != nil {
		return nil, err
	}
	s, err := heartbeat.NewSealer(dc.token)
	if err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &UDPClient{
		http: dc, addr: addr, sealer: s, now: cfg.Now,
		log:    log.With().Str("component", "heartbeat").Str("host", dc.host).Str("udp", addr).Logger(),
		policy: transportPolicy{mode: cfg.Transport},
		buf:    make([]byte, heartbeat.MaxDatagram+1), // +1: a larger one reads as too large
	}, nil
}

// defaultUDPAddress is the daemon URL's host and port (the scheme's port
// when the URL names none).
func defaultUDPAddress(dc *DaemonClient) string {
	port := dc.base.Port()
	if port == "" {
		port = "80"
		if dc.base.Scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(dc.base.Hostname(), port)
}

// CheckUDPAddress checks a HOST:PORT for the daemon's UDP heartbeats: a
// host (name or IP) and a numeric port.
func CheckUDPAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("UDP address %q is not HOST:PORT like 10.0.0.2:7480", addr)
	}
	if host == "" {
		return fmt.Errorf("UDP address %q names no host (the daemon's address, like 10.0.0.2:7480)", addr)
	}
	if strings.ContainsAny(host, " \t\r\n/") {
		return fmt.Errorf("UDP address %q: %q is not a host name or IP address", addr, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("UDP address %q: port %q is not a number in 1..65535", addr, port)
	}
	return nil
}

// Address is the daemon's UDP address this client sends to.
func (c *UDPClient) Address() string { return c.addr }

// Assignment fetches the assignment over HTTP.
func (c *UDPClient) Assignment(ctx context.Context) (heartbeat.Assignment, error) {
	return c.http.Assignment(ctx)
}

// Close closes the UDP socket. A later heartbeat dials a new one.
func (c *UDPClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropConn()
}

func (c *UDPClient) dropConn() error {
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

// Heartbeat sends hb by the route the transport policy picks, under ctx,
// and returns the daemon's ack. A refusal in a reply is an error naming
// the daemon's reason, as an HTTP 4xx is.
func (c *UDPClient) Heartbeat(ctx context.Context, hb heartbeat.Heartbeat) (heartbeat.Ack, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dgram, err := c.sealer.SealHeartbeat(hb)
	if errors.Is(err, heartbeat.ErrDatagramTooLarge) {
		if !c.tooLarge {
			c.log.Info().Int("domains", len(hb.Domains)).
				Msg("heartbeat too large for a datagram: sent over HTTP while it stays so")
			c.tooLarge = true
		}
		return c.http.Heartbeat(ctx, hb)
	}
	if err != nil {
		return heartbeat.Ack{}, c.http.fail("heartbeat", err)
	}
	if c.tooLarge {
		c.log.Info().Msg("heartbeat fits a datagram again")
		c.tooLarge = false
	}

	rt, ev := c.policy.route(c.now())
	if ev == switchToUDP {
		_ = c.dropConn() // dial afresh: the daemon's name may resolve anew
		c.log.Info().Msg("heartbeats over UDP again (HTTP was used for " + StickyFor.String() + ")")
	}
	if rt == routeHTTP {
		return c.http.Heartbeat(ctx, hb)
	}
	deadline, ok := ctx.Deadline()
	ack, err := c.exchange(ctx, dgram, hb, udpDeadline(rt, time.Now(), deadline, ok))
	var refused *refusedError
	switch {
	case err == nil:
		c.policy.record(c.now(), udpAnswered)
		return ack, nil
	case errors.As(err, &refused):
		c.policy.record(c.now(), udpAnswered)
		return heartbeat.Ack{}, c.http.fail("heartbeat", err)
	case ctx.Err() != nil || rt == routeUDPOnly:
		var miss *udpMiss
		switch {
		case !errors.As(err, &miss):
		case ctx.Err() != nil:
			miss.errs = append(miss.errs, ctx.Err()) // errors.Is, same text
		case ok && !time.Now().Before(deadline):
			// The socket's deadline is the context's: its timer may
			// not have fired yet.
			miss.errs = append(miss.errs, context.DeadlineExceeded)
		}
		return heartbeat.Ack{}, c.http.fail("heartbeat", err)
	}
	// Auto: the same heartbeat over HTTP in the rest of the interval.
	ack, herr := c.http.Heartbeat(ctx, hb)
	if herr != nil {
		c.policy.record(c.now(), udpMissHTTPFailed)
		// Both causes stay in the text, without durations: the caller
		// logs an error only when its text changes.
		return heartbeat.Ack{}, fmt.Errorf("%w; over UDP before: %v", herr, err)
	}
	if c.policy.record(c.now(), udpMissHTTPAnswered) == switchToHTTP {
		c.log.Warn().Err(err).Str("for", StickyFor.String()).Int("misses", StickyMisses).
			Msg("heartbeats over HTTP: UDP did not answer several beats in a row that HTTP delivered")
	}
	return ack, nil
}

// refusedError is a reply's refusal.
type refusedError struct{ reason string }

func (e *refusedError) Error() string { return "the daemon refused it (UDP): " + e.reason }

// exchange writes the datagram and reads until the reply that answers hb
// arrives, until deadline (zero: none) or ctx's end. Errors say why no
// reply was taken; their text has no durations.
func (c *UDPClient) exchange(ctx context.Context, dgram []byte, hb heartbeat.Heartbeat, deadline time.Time) (heartbeat.Ack, error) {
	if c.conn == nil {
		conn, err := (&net.Dialer{}).DialContext(ctx, "udp", c.addr)
		if err != nil {
			return heartbeat.Ack{}, udpError(c.addr, err)
		}
		c.conn = conn
	}
	conn := c.conn
	// A read deadline only: a UDP write does not block, and one already
	// late must still go out.
	if err := conn.SetReadDeadline(deadline); err != nil {
		return heartbeat.Ack{}, udpError(c.addr, err)
	}
	// ctx's end interrupts the read. stop() false means the func runs or
	// ran: wait for it, so it cannot move the next beat's deadline.
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetReadDeadline(time.Now())
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
	}()

	_, err := conn.Write(dgram)
	if errors.Is(err, syscall.ECONNREFUSED) {
		// A port-unreachable answer to an earlier beat, reported now
		// (connected UDP sockets keep it): this datagram was not sent.
		_, err = conn.Write(dgram)
	}
	if err != nil {
		return heartbeat.Ack{}, udpError(c.addr, err)
	}
	for {
		n, err := conn.Read(c.buf)
		if err != nil {
			return heartbeat.Ack{}, udpError(c.addr, err)
		}
		kind, payload, err := c.sealer.Open(c.buf[:n])
		if err != nil || kind != heartbeat.KindReply {
			continue // another key's, garbage, or not a reply
		}
		r, err := heartbeat.DecodeReply(payload)
		if err != nil || !r.Answers(hb) {
			continue // malformed, or late: the answer to an older beat
		}
		if r.Refused != "" {
			return heartbeat.Ack{}, &refusedError{reason: strings.ReplaceAll(snippet([]byte(r.Refused)), c.http.token, "[token]")}
		}
		return *r.Ack, nil
	}
}

// udpMiss is why no reply was taken. Its text has no durations and stays
// the same from one beat to the next (the caller logs changes only).
type udpMiss struct {
	msg  string
	errs []error
}

func (e *udpMiss) Error() string   { return e.msg }
func (e *udpMiss) Unwrap() []error { return e.errs }

func udpError(addr string, err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return &udpMiss{msg: "no UDP reply from " + addr, errs: []error{err}}
	case errors.Is(err, syscall.ECONNREFUSED):
		return &udpMiss{msg: "UDP to " + addr + ": connection refused (nothing listens for heartbeats there)", errs: []error{err}}
	}
	return &udpMiss{msg: fmt.Sprintf("UDP to %s: %v", addr, err), errs: []error{err}}
}
