package heartbeatbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

// GenOptions configures the load generator.
type GenOptions struct {
	// BaseURL is the daemon, e.g. http://127.0.0.1:7480.
	BaseURL string
	// Token is the agent bearer token.
	Token string
	Hosts []string
	// Interval between one agent's heartbeats.
	Interval time.Duration
	// Domains listed (running) in every heartbeat of every agent.
	Domains int
	// Dial opens connections; nil dials from where we are. The bench
	// passes one that dials inside its network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Timeout bounds one request; default 5 s.
	Timeout time.Duration
	// Seed makes start offsets reproducible.
	Seed uint64
}

// Generator simulates agents: one goroutine and one keep-alive HTTP/1.1
// connection each, as real agents have, speaking the wire protocol by hand
// so that the generator costs far less CPU than the daemon it loads.
type Generator struct {
	o      GenOptions
	req    []byte // request line and fixed headers, up to Content-Length
	agents []*agent
	byHost map[string]*agent
	wg     sync.WaitGroup

	sent atomic.Int64
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

	conn net.Conn
	br   *bufio.Reader

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
	if o.Token == "" || len(o.Hosts) == 0 || o.Interval <= 0 {
		return nil, errors.New("generator: token, hosts and a positive interval are required")
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Dial == nil {
		var d net.Dialer
		o.Dial = d.DialContext
	}
	g := &Generator{o: o, byHost: make(map[string]*agent, len(o.Hosts)), errs: map[string]int64{}}
	g.req = fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nUser-Agent: chime-heartbeat-bench\r\nContent-Length: ",
		heartbeat.PathHeartbeat, u.Host, o.Token)
	rng := rand.New(rand.NewPCG(o.Seed, 0x6865617274))
	now := time.Now()
	for i, h := range o.Hosts {
		if _, dup := g.byHost[h]; dup {
			return nil, fmt.Errorf("generator: host %s listed twice", h)
		}
		a := &agent{g: g, host: h, bootID: fmt.Sprintf("%08x-bench-boot", i), started: now,
			offset: time.Duration(rng.Int64N(int64(o.Interval))),
			stop:   make(chan struct{}), done: make(chan struct{})}
		for d := range o.Domains {
			a.domains = append(a.domains, heartbeat.Domain{
				UUID:  fmt.Sprintf("%08x-0000-4000-8000-%012x", i, d),
				Name:  fmt.Sprintf("%s-vm%d", h, d),
				State: hypervisor.StateRunning,
			})
		}
		g.agents = append(g.agents, a)
		g.byHost[h] = a
	}
	return g, nil
}

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
// request already on the wire (so its outcome is known), sends nothing
// more and closes its connection. It returns, per host, the send time of
// its last acknowledged heartbeat (zero when none was acknowledged).
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

// Errors counts failed heartbeats by cause ("dial", "http 401", …).
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

func (a *agent) closeConn() {
	if a.conn != nil {
		a.conn.Close()
		a.conn, a.br = nil, nil
	}
}

// send posts one heartbeat and reads the Ack, reusing the connection.
func (a *agent) send(ctx context.Context, seq uint64, at time.Time) (time.Duration, error) {
	g := a.g
	g.sent.Add(1)
	body, err := json.Marshal(heartbeat.Heartbeat{
		Host: a.host, BootID: a.bootID, Seq: seq, AgentStart: a.started, AgentVersion: "heartbeat-bench",
		SentAt: at, Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirtd", OK: true}}, Domains: a.domains,
	})
	if err != nil {
		g.fail("encode")
		return 0, err
	}
	if a.conn == nil {
		dctx, cancel := context.WithTimeout(ctx, g.o.Timeout)
		c, err := g.o.Dial(dctx, "tcp", hostOf(g.o.BaseURL))
		cancel()
		if err != nil {
			g.fail("dial")
			return 0, err
		}
		a.conn, a.br = c, bufio.NewReaderSize(c, 1024)
	}
	_ = a.conn.SetDeadline(at.Add(g.o.Timeout))
	msg := make([]byte, 0, len(g.req)+len(body)+16)
	msg = append(msg, g.req...)
	msg = strconv.AppendInt(msg, int64(len(body)), 10)
	msg = append(msg, "\r\n\r\n"...)
	msg = append(msg, body...)
	if _, err := a.conn.Write(msg); err != nil {
		a.closeConn()
		g.fail("write")
		return 0, err
	}
	resp, err := http.ReadResponse(a.br, nil)
	if err != nil {
		a.closeConn()
		g.fail("read")
		return 0, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		a.closeConn()
		g.fail("read")
		return 0, err
	}
	if resp.Close {
		a.closeConn()
	}
	if resp.StatusCode != http.StatusOK {
		g.fail("http " + strconv.Itoa(resp.StatusCode))
		return 0, fmt.Errorf("heartbeat %s: HTTP %d: %s", a.host, resp.StatusCode, b)
	}
	var ack heartbeat.Ack
	if err := json.Unmarshal(b, &ack); err != nil || ack.HeartbeatInterval <= 0 {
		g.fail("bad ack")
		return 0, fmt.Errorf("heartbeat %s: not an ack: %q", a.host, b)
	}
	return time.Since(at), nil
}

func hostOf(base string) string {
	u, _ := url.Parse(base) // checked by NewGenerator
	return u.Host
}
