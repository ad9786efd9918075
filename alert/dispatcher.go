package alert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/store"
)

// Outbox is the durable queue the dispatcher delivers from; *store.Store
// implements it.
type Outbox interface {
	EnqueueOutbox(entries ...store.OutboxEntry) ([]store.OutboxEntry, error)
	Outbox(webhook string, limit int) ([]store.OutboxEntry, error)
	UpdateOutbox(e store.OutboxEntry) error
	AckOutbox(ids ...uint64) error
	DropOutbox(webhook string) (int, error)
	OutboxStats() (store.OutboxStats, error)
}

// Backoff defaults.
const (
	DefaultBackoffInitial = 2 * time.Second
	DefaultBackoffMax     = 5 * time.Minute
	// DefaultMustDeliverFor is how long an event mustDeliver names is
	// retried before it is given up (counted as expired): a pager that is
	// down for an hour still learns that a host was fenced.
	DefaultMustDeliverFor = 12 * time.Hour
)

// Config configures a Dispatcher. Only Outbox is required.
type Config struct {
	Webhooks []Webhook
	Outbox   Outbox
	// Cluster fills Event.Cluster when the caller left it empty.
	Cluster string
	// Now and After are the clock; defaults time.Now and time.After. Only
	// backoff waits use After; HTTP timeouts use the real clock.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
	Log   zerolog.Logger
	// Registerer gets the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Failed attempt n (1-based) waits BackoffInitial·2^(n-1), at most
	// BackoffMax, before the next. Defaults 2s and 5m.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// MustDeliverFor is how long, from its creation, an event MustDeliver
	// names is retried whatever the webhook's Retries; default
	// DefaultMustDeliverFor.
	MustDeliverFor time.Duration
	// Transport for the POSTs; default a clone of http.DefaultTransport.
	Transport http.RoundTripper
}

// Dispatcher queues events durably and delivers them to webhooks. See the
// package doc for the contract.
type Dispatcher struct {
	out     Outbox
	cluster string
	now     func() time.Time
	after   func(time.Duration) <-chan time.Time
	log     zerolog.Logger
	boInit  time.Duration
	boMax   time.Duration
	mustFor time.Duration
	client  *http.Client
	m       metrics

	// reconf serialises Reconfigure and Run's start and end.
	reconf sync.Mutex
	// mu guards hooks, order and run. Send holds it shared across its
	// outbox write, so a webhook cannot be removed between matching and
	// queueing.
	mu    sync.RWMutex
	hooks map[string]*sender
	order []string        // config order, for Send
	run   context.Context // non-nil while Run runs
	wg    *sync.WaitGroup // senders started by the current Run
	stats atomic.Pointer[store.OutboxStats]
}

// sender is one webhook's queue. Its goroutine runs only under Run.
type sender struct {
	name   string
	wh     atomic.Pointer[Webhook] // replaced by Reconfigure
	wake   chan struct{}           // capacity 1: "the outbox has something new"
	cancel context.CancelFunc      // nil when not running
	done   chan struct{}           // closed when the goroutine ends
}

// New validates cfg and builds a Dispatcher. It does no I/O.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Outbox == nil {
		return nil, errors.New("alert: Config.Outbox is nil")
	}
	hooks, order, err := validate(cfg.Webhooks)
	if err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	switch {
	case cfg.BackoffInitial < 0 || cfg.BackoffMax < 0:
		return nil, fmt.Errorf("alert: backoff %s/%s is negative", cfg.BackoffInitial, cfg.BackoffMax)
	case cfg.BackoffInitial == 0:
		cfg.BackoffInitial = DefaultBackoffInitial
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffInitial)
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		return nil, fmt.Errorf("alert: BackoffMax %s is below BackoffInitial %s", cfg.BackoffMax, cfg.BackoffInitial)
	}
	switch {
	case cfg.MustDeliverFor < 0:
		return nil, fmt.Errorf("alert: MustDeliverFor %s is negative", cfg.MustDeliverFor)
	case cfg.MustDeliverFor == 0:
		cfg.MustDeliverFor = DefaultMustDeliverFor
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	d := &Dispatcher{
		out:     cfg.Outbox,
		cluster: cfg.Cluster,
		now:     cfg.Now,
		after:   cfg.After,
		log:     cfg.Log.With().Str("component", "alert").Logger(),
		boInit:  cfg.BackoffInitial,
		boMax:   cfg.BackoffMax,
		mustFor: cfg.MustDeliverFor,
		client: &http.Client{
			Transport: cfg.Transport,
			// A POST redirected becomes a GET; refuse, the URL is wrong.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		hooks: hooks,
		order: order,
	}
	d.stats.Store(&store.OutboxStats{})
	d.m = newMetrics(d)
	if cfg.Registerer != nil {
		if err := d.m.register(cfg.Registerer); err != nil {
			return nil, fmt.Errorf("alert: register metrics: %w", err)
		}
	}
	for _, name := range order {
		d.m.init(name)
	}
	return d, nil
}

func validate(whs []Webhook) (map[string]*sender, []string, error) {
	hooks := map[string]*sender{}
	var order []string
	for i := range whs {
		w := whs[i]
		w.Events = slices.Clone(w.Events)
		if err := w.normalize(); err != nil {
			return nil, nil, err
		}
		if hooks[w.Name] != nil {
			return nil, nil, fmt.Errorf("webhook %q is configured twice", w.Name)
		}
		s := &sender{name: w.Name, wake: make(chan struct{}, 1)}
		s.wh.Store(&w)
		hooks[w.Name] = s
		order = append(order, w.Name)
	}
	return hooks, order, nil
}

// Send queues ev durably for every webhook whose filter matches, then wakes
// their senders. It never waits on the network: its only wait is one outbox
// write. It fills ev's ID, At, Cluster and Severity when empty. It returns an
// error only when ev is invalid or the outbox write failed; the caller logs
// it and goes on (an alert must never hold up fencing).
func (d *Dispatcher) Send(ev Event) error {
	now := d.now()
	if err := ev.normalize(now, d.cluster); err != nil {
		return fmt.Errorf("alert: send: %w", err)
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("alert: send event %s (%s): encode: %w", ev.ID, ev.Type, err)
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var entries []store.OutboxEntry
	var wake []*sender
	for _, name := range d.order {
		s := d.hooks[name]
		if s.wh.Load().Wants(ev.Type) {
			entries = append(entries, store.OutboxEntry{Webhook: name, Event: raw, Created: now})
			wake = append(wake, s)
		}
	}
	if len(entries) == 0 {
		return nil
	}
	if _, err := d.out.EnqueueOutbox(entries...); err != nil {
		return fmt.Errorf("alert: send event %s (%s) to %d webhooks: %w", ev.ID, ev.Type, len(entries), err)
	}
	for _, s := range wake {
		select {
		case s.wake <- struct{}{}:
		default: // already awake
		}
	}
	d.refreshStats()
	return nil
}

// Run delivers until ctx is done, one goroutine per webhook, then waits for
// them and returns nil. On start it drops the outbox entries of webhooks
// that are no longer configured (with a log line) and delivers what the
// previous process left pending. Calling Run while it runs is an error.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.reconf.Lock()
	d.mu.Lock()
	if d.run != nil {
		d.mu.Unlock()
		d.reconf.Unlock()
		return errors.New("alert: Run is already running")
	}
	d.run = ctx
	wg := &sync.WaitGroup{}
	d.wg = wg
	configured := map[string]bool{}
	for name, s := range d.hooks {
		configured[name] = true
		d.start(s)
	}
	d.mu.Unlock()
	d.dropOrphans(configured)
	d.reconf.Unlock()

	<-ctx.Done()

	d.reconf.Lock()
	d.mu.Lock()
	d.run = nil
	d.wg = nil
	for _, s := range d.hooks {
		s.cancel = nil
	}
	d.mu.Unlock()
	d.reconf.Unlock()
	wg.Wait() // every sender's context derives from ctx
	return nil
}

// start runs s's goroutine; d.mu is held and Run is running.
func (d *Dispatcher) start(s *sender) {
	ctx, cancel := context.WithCancel(d.run)
	s.cancel = cancel
	s.done = make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(s.done)
		d.loop(ctx, s)
	}()
}

// dropOrphans drops the entries of webhooks not in configured.
func (d *Dispatcher) dropOrphans(configured map[string]bool) {
	st, err := d.out.OutboxStats()
	if err != nil {
		d.log.Error().Err(err).Msg("cannot read the alert outbox to drop entries of removed webhooks")
		return
	}
	for name := range st.Pending {
		if !configured[name] {
			d.drop(name, "webhook is no longer configured")
		}
	}
	d.refreshStats()
}

func (d *Dispatcher) drop(name, why string) {
	n, err := d.out.DropOutbox(name)
	if err != nil {
		d.log.Error().Err(err).Str("webhook", name).Msg("cannot drop the pending alerts of a removed webhook")
		return
	}
	if n > 0 {
		d.m.deliveries.WithLabelValues(name, resultDropped).Add(float64(n))
		d.log.Warn().Str("webhook", name).Int("dropped", n).Msg("dropped pending alerts: " + why)
	}
}

// Reconfigure replaces the webhooks (SIGHUP). A webhook whose Name stays
// keeps its queue and gets the new settings from its next attempt on. The
// pending entries of a removed webhook are dropped with a log line. On a
// validation error nothing changes.
func (d *Dispatcher) Reconfigure(webhooks []Webhook) error {
	next, order, err := validate(webhooks)
	if err != nil {
		return fmt.Errorf("alert: reconfigure: %w", err)
	}
	d.reconf.Lock()
	defer d.reconf.Unlock()

	d.mu.Lock()
	type gone struct {
		name string
		done chan struct{} // nil: its goroutine was not running
	}
	var removed []gone
	for name, s := range d.hooks {
		if n := next[name]; n != nil {
			s.wh.Store(n.wh.Load())
			next[name] = s // keep its goroutine and wake channel
			continue
		}
		g := gone{name: name}
		if s.cancel != nil {
			s.cancel()
			g.done = s.done
		}
		removed = append(removed, g)
	}
	d.hooks, d.order = next, order
	d.mu.Unlock()

	// Wait for removed senders (their POST is cancelled) so none writes
	// to the outbox after the drop.
	for _, g := range removed {
		if g.done != nil {
			<-g.done
		}
		d.drop(g.name, "webhook removed from the configuration")
	}

	d.mu.Lock()
	for _, name := range d.order {
		s := d.hooks[name]
		d.m.init(name)
		if d.run != nil && s.cancel == nil {
			d.start(s)
		}
	}
	d.mu.Unlock()
	d.refreshStats()
	return nil
}

// refreshStats re-reads the outbox counters behind the gauges.
func (d *Dispatcher) refreshStats() {
	st, err := d.out.OutboxStats()
	if err != nil {
		d.log.Warn().Err(err).Msg("cannot read alert outbox stats")
		return
	}
	d.stats.Store(&st)
}

// Pending returns the number of queued deliveries per webhook, as last read
// from the outbox.
func (d *Dispatcher) Pending() map[string]int {
	out := map[string]int{}
	for k, v := range d.stats.Load().Pending {
		out[k] = v
	}
	return out
}
