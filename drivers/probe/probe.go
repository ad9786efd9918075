package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Kind is how a target is probed.
type Kind string

const (
	// KindTCP connects to Addr ("host:port") and closes at once.
	KindTCP Kind = "tcp"
	// KindICMP sends one ICMP echo request to Addr (a host: IPv4 or IPv6
	// literal, or a name).
	KindICMP Kind = "icmp"
)

// Target is one thing to probe.
type Target struct {
	Kind Kind   `json:"kind"`
	Addr string `json:"addr"`
}

func (t Target) String() string { return string(t.Kind) + " " + t.Addr }

// Answer is what one target did in one round. Exactly one of three holds:
//
//   - Answered: the host's kernel answered (see the package doc);
//   - Unsupported: the probe could not be performed here (ICMP not
//     permitted, a local resource or name-resolution failure, an invalid
//     target, a cancelled round); it is evidence of nothing;
//   - neither: silence. Err says how (timeout, no route, unreachable).
type Answer struct {
	Target   Target `json:"target"`
	Answered bool   `json:"answered"`
	// RTT is the time from sending to the answer; 0 when not answered.
	RTT time.Duration `json:"rtt"`
	// Err says why there was no answer; "" when answered.
	Err         string `json:"err,omitempty"`
	Unsupported bool   `json:"unsupported,omitempty"`
}

// Silent reports whether the answer is evidence of silence: not answered
// and not unsupported.
func (a Answer) Silent() bool { return !a.Answered && !a.Unsupported }

// Result is one round over a host's targets.
type Result struct {
	// At is when the round started (Options.Clock).
	At time.Time `json:"at"`
	// Answered is true when any target answered.
	Answered bool     `json:"answered"`
	Answers  []Answer `json:"answers"`
}

// Silent reports whether the round is evidence that the host is silent:
// no target answered and at least one target was silent. A round whose
// every answer is Unsupported (or that had no targets) proves nothing.
func (r Result) Silent() bool {
	if r.Answered {
		return false
	}
	for _, a := range r.Answers {
		if a.Silent() {
			return true
		}
	}
	return false
}

// DefaultTimeout bounds a round whose ctx has no deadline.
const DefaultTimeout = time.Second

// Options configures a Prober.
type Options struct {
	// Clock reads the time for Result.At and RTTs; default time.Now.
	Clock func() time.Time
	// Log receives the ICMP socket mode (once per change) and
	// per-answer debug lines.
	Log zerolog.Logger
	// DefaultTimeout bounds a round whose ctx has no deadline; default
	// DefaultTimeout.
	DefaultTimeout time.Duration
}

// Prober runs probe rounds. It is safe for concurrent use by many
// goroutines; ICMP probes of all rounds share one socket per address
// family, open while any ICMP probe is in flight.
type Prober struct {
	clock          func() time.Time
	log            zerolog.Logger
	defaultTimeout time.Duration
	resolver       *net.Resolver
	icmp4, icmp6   *echoer
}

// New returns a Prober. It opens nothing: sockets are made per probe.
func New(opts Options) *Prober {
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = DefaultTimeout
	}
	p := &Prober{
		clock:          opts.Clock,
		log:            opts.Log.With().Str("component", "probe").Logger(),
		defaultTimeout: opts.DefaultTimeout,
		resolver:       net.DefaultResolver,
	}
	p.icmp4 = newEchoer(p, false, listenICMP)
	p.icmp6 = newEchoer(p, true, listenICMP)
	return p
}

type indexed struct {
	i int
	a Answer
}

// attempt is one probe of one round. sent flips once the packet (SYN or
// echo request) is about to leave: a probe cut off by the deadline before
// that is no evidence of silence.
type attempt struct {
	t      Target
	budget time.Duration
	sent   atomic.Bool
}

// Round probes every target in parallel and returns when all have an
// answer or ctx is done, whichever is first; it never waits past ctx's
// deadline (or DefaultTimeout when ctx has none). A target still pending
// when the deadline passes is silent ("no answer within …"); one still
// pending when ctx is cancelled is Unsupported: a cancelled round is not
// evidence.
func (p *Prober) Round(ctx context.Context, targets []Target) Result {
	start := p.clock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.defaultTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	budget := deadline.Sub(start).Round(time.Millisecond)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	res := Result{At: start, Answers: make([]Answer, len(targets))}
	got := make([]bool, len(targets))
	attempts := make([]attempt, len(targets))
	// Buffered so probes that finish after Round returned exit at once.
	ch := make(chan indexed, len(targets))
	for i, t := range targets {
		a := &attempts[i]
		a.t, a.budget = t, budget
		go func() { ch <- indexed{i, p.probe(ctx, a)} }()
	}
	collect := func(r indexed) {
		res.Answers[r.i] = r.a
		got[r.i] = true
	}
	n := 0
wait:
	for n < len(targets) {
		select {
		case r := <-ch:
			collect(r)
			n++
		case <-ctx.Done():
			break wait
		}
	}
	// Answers that raced the deadline still count.
	for n < len(targets) {
		select {
		case r := <-ch:
			collect(r)
			n++
			continue
		default:
		}
		break
	}
	for i, ok := range got {
		if !ok {
			res.Answers[i] = expired(ctx, &attempts[i])
		}
	}
	for _, a := range res.Answers {
		if a.Answered {
			res.Answered = true
		}
		p.log.Debug().Str("target", a.Target.String()).Bool("answered", a.Answered).
			Bool("unsupported", a.Unsupported).Dur("rtt", a.RTT).Str("err", a.Err).Msg("probe")
	}
	return res
}

func (p *Prober) probe(ctx context.Context, a *attempt) Answer {
	switch a.t.Kind {
	case KindTCP:
		return p.probeTCP(ctx, a)
	case KindICMP:
		return p.probeICMP(ctx, a)
	}
	return unsupported(a.t, fmt.Sprintf("invalid target: kind %q is not tcp or icmp", a.t.Kind))
}

// expired is the answer of a probe that did not finish before ctx ended.
func expired(ctx context.Context, a *attempt) Answer {
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		return unsupported(a.t, "probe cancelled before an answer")
	case !a.sent.Load():
		return unsupported(a.t, fmt.Sprintf("probe not sent within %v", a.budget))
	}
	return silent(a.t, fmt.Sprintf("no answer within %v", a.budget))
}

func answered(t Target, rtt time.Duration) Answer {
	if rtt <= 0 {
		rtt = time.Nanosecond // answered always has a positive RTT
	}
	return Answer{Target: t, Answered: true, RTT: rtt}
}

func silent(t Target, why string) Answer { return Answer{Target: t, Err: why} }

func unsupported(t Target, why string) Answer {
	return Answer{Target: t, Err: why, Unsupported: true}
}

// resolveHost turns an ICMP target into one address: a literal as is,
// a name through the resolver (first address returned).
func (p *Prober) resolveHost(ctx context.Context, host string) (netip.Addr, error) {
	h := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap(), nil
	}
	if _, _, err := net.SplitHostPort(host); err == nil {
		return netip.Addr{}, fmt.Errorf("invalid target: icmp wants a host, not host:port %q", host)
	}
	if h == "" {
		return netip.Addr{}, fmt.Errorf("invalid target: empty icmp address")
	}
	addrs, err := p.resolver.LookupNetIP(ctx, "ip", h)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", h, err)
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("resolve %s: no address", h)
	}
	return addrs[0].Unmap(), nil
}

// modeLogEvery spaces the ICMP mode log lines of one family.
const modeLogEvery = 10 * time.Second

// modeLog decides when the ICMP socket mode is worth a log line: when it
// differs from the last one logged, at most once per modeLogEvery, so a
// socket that flaps (descriptors exhausted in a storm) cannot flood the log.
type modeLog struct {
	mu   sync.Mutex
	last string
	at   time.Time
}

func (m *modeLog) changed(mode string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.last == mode || (!m.at.IsZero() && now.Sub(m.at) < modeLogEvery) {
		return false
	}
	m.last, m.at = mode, now
	return true
}
