package heartbeatbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
)

// Transports the generator speaks.
const (
	// TransportUDP sends sealed datagrams (heartbeat.Sealer), one UDP
	// socket per agent, as chime-agent does by default.
	TransportUDP = "udp"
	// TransportHTTP posts heartbeats on one keep-alive HTTP/1.1
	// connection per agent.
	TransportHTTP = "http"
)

// checkTransport names what is wrong with t; "" is not accepted here.
func checkTransport(t string) error {
	switch t {
	case TransportUDP, TransportHTTP:
		return nil
	}
	return fmt.Errorf("transport %q: want %s or %s", t, TransportUDP, TransportHTTP)
}

// GenOptions configures the load generator.
type GenOptions struct {
	// BaseURL is the daemon, e.g. http://127.0.0.1:7480.
	BaseURL string
	// Secret is the cluster secret: each simulated agent presents its own
	// host's credential derived from it (identity.AgentCredential), as
	// the HTTP bearer token and as the key of its datagrams' MAC.
	Secret string
	Hosts  []string
	// Interval between one agent's heartbeats.
	Interval time.Duration
	// Domains listed (running) in every heartbeat of every agent.
	Domains int
	// Transport is TransportUDP (default) or TransportHTTP.
	Transport string
	// UDPAddr is the daemon's UDP heartbeat address; default the host and
	// port of BaseURL, as the daemon's controller.heartbeat_udp_listen
	// default.
	UDPAddr string
	// Dial opens connections and UDP sockets; nil dials from where we are.
	// The bench passes one that dials inside its network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one HTTP request and one dial; default 5 s.
	Timeout time.Duration
	// ReplyTimeout bounds the wait for a UDP heartbeat's reply; default
	// half the interval, at most 1 s: when chime-agent (auto) would send
	// the same heartbeat over HTTP instead.
	ReplyTimeout time.Duration
	// Seed makes start offsets reproducible.
	Seed uint64
}

// Generator simulates agents: one goroutine and one socket each (a UDP
// socket, or a keep-alive HTTP/1.1 connection), as real agents have. It
// reuses each agent's buffers and speaks HTTP by hand, so that it costs far
// less CPU than the daemon it loads.
type Generator struct {
	o       GenOptions
	req     []byte // HTTP request line and fixed headers, up to Content-Length
	udpAddr string
	agents  []*agent
	byHost  map[string]*agent
	wg      sync.WaitGroup

	sent atomic.Int64
	late atomic.Int64 // UDP replies to a beat already counted as "udp timeout"
	mu   sync.Mutex
	errs map[string]int64
}

type agent struct {
	g       *Generator
	host    string
	bootID  string
	started time.Time
	domains []heartbeat.Domain
	offset  time.Duration
	stop    chan struct{}
	once    sync.Once
	done    chan struct{}

	// Owned by the agent's goroutine.
	conn net.Conn
	br   *bufio.Reader // HTTP responses
	// sealer and req carry this host's own credential.
	sealer *heartbeat.Sealer
	req    []byte // the HTTP request up to Content-Length's value
	tmpl   template
	json   []byte // the current heartbeat's JSON (HTTP)
	wire   []byte // the current heartbeat's datagram payload (UDP)
	out    []byte // the datagram or request on the wire

	mu      sync.Mutex
	lastAck time.Time // send time of the last acknowledged heartbeat
	samples []sample
}

// sample is one acknowledged heartbeat.
type sample struct {
	at   time.Time     // when it was sent
	lat  time.Duration // send → ack parsed
	late time.Duration // how far behind its schedule the generator sent it
}

// NewGenerator checks the options; nothing starts yet.
func NewGenerator(o GenOptions) (*Generator, error) {
	u, err := url.Parse(o.BaseURL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("generator: base URL %q is not http://host:port", o.BaseURL)
	}
	if o.Secret == "" || len(o.Hosts) == 0 || o.Interval <= 0 {
		return nil, errors.New("generator: secret, hosts and a positive interval are required")
	}
	if o.Transport == "" {
		o.Transport = TransportUDP
	}
	if err := checkTransport(o.Transport); err != nil {
		return nil, fmt.Errorf("generator: %w", err)
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.ReplyTimeout <= 0 {
		o.ReplyTimeout = min(o.Interval/2, time.Second)
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	g := &Generator{o: o, udpAddr: o.UDPAddr, byHost: make(map[string]*agent, len(o.Hosts)), errs: map[string]int64{}}
	if g.udpAddr == "" {
		g.udpAddr = u.Host
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x6865617274))
	now := time.Now()
	var longest *agent
	for i, h := range o.Hosts {
		if _, dup := g.byHost[h]; dup {
			return nil, fmt.Errorf("generator: host %s listed twice", h)
		}
		a := &agent{g: g, host: h, bootID: fmt.Sprintf("%08x-bench-boot", i), started: now,
			offset: time.Duration(rng.Int64N(int64(o.Interval))),
			stop:   make(chan struct{}), done: make(chan struct{})}
		cred := identity.AgentCredential(o.Secret, h)
		if a.sealer, err = heartbeat.NewSealer(cred); err != nil {
			return nil, fmt.Errorf("generator: %w", err)
		}
		a.req = fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n%s: %s\r\nContent-Type: application/json\r\nUser-Agent: chime-heartbeat-bench\r\nContent-Length: ",
			heartbeat.PathHeartbeat, u.Host, cred, identity.HeaderHost, h)
		for d := range o.Domains {
			a.domains = append(a.domains, heartbeat.Domain{
				UUID:  fmt.Sprintf("%08x-0000-4000-8000-%012x", i, d),
				Name:  fmt.Sprintf("%s-vm%d", h, d),
				State: hypervisor.StateRunning,
			})
		}
		if a.tmpl, err = newTemplate(a); err != nil {
			return nil, fmt.Errorf("generator: %w", err)
		}
		g.agents = append(g.agents, a)
		g.byHost[h] = a
		if longest == nil || len(h) > len(longest.host) {
			longest = a
		}
	}
	// The template must write what the agent's encoder would.
	a := g.agents[0]
	if want, err := json.Marshal(a.heartbeat(1, now)); err != nil || !bytes.Equal(a.encode(1, now), want) {
		return nil, fmt.Errorf("generator: the heartbeat template of %s does not write what json.Marshal does (%v): %s", a.host, err, want)
	}
	if o.Transport == TransportUDP {
		// chime-agent sends a heartbeat too large for a datagram over
		// HTTP; a UDP bench of such heartbeats would measure nothing.
		p := heartbeat.AppendHeartbeatPayload(nil, longest.heartbeat(math.MaxUint64, now))
		if n := heartbeat.DatagramHeaderLen + len(p); n > heartbeat.MaxDatagram {
			return nil, fmt.Errorf("generator: a heartbeat with %d domains is a %d-byte datagram, over the %d-byte limit "+
				"(chime-agent sends it over HTTP): use fewer domains or the http transport", o.Domains, n, heartbeat.MaxDatagram)
		}
	}
	return g, nil
}

// Transport is the transport the agents speak.
func (g *Generator) Transport() string { return g.o.Transport }

// Start launches every agent; each sends its first heartbeat at a random
// offset within one interval, then one per interval. Agents run until
// Stop, Close or ctx ends.
func (g *Generator) Start(ctx context.Context) {
	start := time.Now()
	for _, a := range g.agents {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			a.run(ctx, start.Add(a.offset))
		}()
	}
}

// Stop stops the named agents, as if their process died: each finishes a
// heartbeat already on the wire (so its outcome is known), sends nothing
// more and closes its socket. It returns, per host, the send time of its
// last acknowledged heartbeat (zero when none was acknowledged).
func (g *Generator) Stop(hosts []string) (map[string]time.Time, error) {
	var as []*agent
	for _, h := range hosts {
		a, ok := g.byHost[h]
		if !ok {
			return nil, fmt.Errorf("generator: no agent for host %s", h)
		}
		as = append(as, a)
	}
	for _, a := range as {
		a.halt()
	}
	last := make(map[string]time.Time, len(as))
	for _, a := range as {
		<-a.done
		a.mu.Lock()
		last[a.host] = a.lastAck
		a.mu.Unlock()
	}
	return last, nil
}

// Close stops every agent and waits for them.
func (g *Generator) Close() {
	for _, a := range g.agents {
		a.halt()
	}
	g.wg.Wait()
}

func (a *agent) halt() { a.once.Do(func() { close(a.stop) }) }

// Window is what the generator saw of heartbeats sent in [from, to).
type Window struct {
	Acked   int
	Latency []time.Duration // send → ack, per acknowledged heartbeat
	Late    []time.Duration // how far behind schedule each was sent
}

// Window collects the acknowledged heartbeats sent in [from, to). Safe
// while agents run.
func (g *Generator) Window(from, to time.Time) Window {
	var w Window
	for _, a := range g.agents {
		a.mu.Lock()
		for _, s := range a.samples {
			if !s.at.Before(from) && s.at.Before(to) {
				w.Acked++
				w.Latency = append(w.Latency, s.lat)
				w.Late = append(w.Late, s.late)
			}
		}
		a.mu.Unlock()
	}
	return w
}

// Sent is how many heartbeats were attempted.
func (g *Generator) Sent() int64 { return g.sent.Load() }

// LateReplies counts UDP replies that came after their heartbeat was
// counted as "udp timeout" (the agent was waiting for a later one): a
// slow daemon rather than a lost datagram.
func (g *Generator) LateReplies() int64 { return g.late.Load() }

// Errors counts failed heartbeats by cause ("udp timeout", "refused: …",
// "malformed reply", "http 401", "dial", …).
func (g *Generator) Errors() map[string]int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]int64, len(g.errs))
	for k, v := range g.errs {
		out[k] = v
	}
	return out
}

func (g *Generator) fail(cause string) {
	g.mu.Lock()
	g.errs[cause]++
	g.mu.Unlock()
}

func (a *agent) run(ctx context.Context, first time.Time) {
	defer close(a.done)
	defer a.closeConn()
	interval := a.g.o.Interval
	next := first
	timer := time.NewTimer(time.Until(next))
	defer timer.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-a.stop:
			return
		case <-timer.C:
		}
		select {
		case <-a.stop:
			return
		default:
		}
		at := time.Now()
		if lat, err := a.send(ctx, seq, at); err == nil {
			a.mu.Lock()
			a.lastAck = at
			a.samples = append(a.samples, sample{at: at, lat: lat, late: at.Sub(next)})
			a.mu.Unlock()
		}
		// Like a ticker, skip beats the generator was too late for.
		now := time.Now()
		for next = next.Add(interval); !next.After(now); next = next.Add(interval) {
		}
		timer.Reset(next.Sub(now))
	}
}

// send sends one heartbeat and waits for its acknowledgement; a failure is
// counted by cause before it returns.
func (a *agent) send(ctx context.Context, seq uint64, at time.Time) (time.Duration, error) {
	a.g.sent.Add(1)
	if a.g.o.Transport == TransportHTTP {
		return a.sendHTTP(ctx, seq, at)
	}
	return a.sendUDP(ctx, seq, at)
}

func (a *agent) dial(ctx context.Context, network, addr string) error {
	dctx, cancel := context.WithTimeout(ctx, a.g.o.Timeout)
	defer cancel()
	c, err := a.g.o.Dial(dctx, network, addr)
	if err != nil {
		return err
	}
	a.conn = c
	return nil
}

func (a *agent) closeConn() {
	if a.conn != nil {
		a.conn.Close()
		a.conn, a.br = nil, nil
	}
}

// refusal is a Refused reply as an error cause: the host's name is taken
// out so that 10,000 hosts refused alike count as one cause.
func refusal(host, why string) string {
	why = strings.ReplaceAll(why, host, "HOST")
	if r := []rune(why); len(r) > 100 {
		why = string(r[:100]) + "…"
	}
	return "refused: " + why
}
