package alert

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/store"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// waitFor bounds how long a test waits for an asynchronous delivery.
const waitFor = 10 * time.Second

// logBuf collects zerolog output from several goroutines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fakeClock: After advances time by d and fires at once, recording d, so
// backoff waits cost nothing and can be asserted.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
	hold  bool // After never fires: a retry waits forever
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waits = append(c.waits, d)
	ch := make(chan time.Time, 1)
	if !c.hold {
		ch <- c.now
	}
	return ch
}

func (c *fakeClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// request is what a receiver got.
type request struct {
	Body   []byte
	Header http.Header
}

// receiver is an httptest webhook receiver. respond decides the status of
// request n (0-based); nil answers 200.
type receiver struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []request
	respond func(n int, w http.ResponseWriter, r *http.Request) int
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	t.Helper()
	rc := &receiver{respond: respond}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.reqs)
		rc.reqs = append(rc.reqs, request{Body: body, Header: r.Header.Clone()})
		rc.mu.Unlock()
		code := http.StatusOK
		if rc.respond != nil {
			code = rc.respond(n, w, r)
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) Requests() []request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]request(nil), rc.reqs...)
}

func (rc *receiver) waitRequests(t *testing.T, n int) []request {
	t.Helper()
	require.Eventually(t, func() bool { return len(rc.Requests()) >= n }, waitFor, time.Millisecond,
		"receiver %s never got %d requests", rc.URL, n)
	return rc.Requests()
}

type harness struct {
	d     *Dispatcher
	st    *store.Store
	path  string
	clock *fakeClock
	logs  *logBuf
	reg   *prometheus.Registry
}

func openStore(t testing.TB, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newHarness builds a dispatcher over a fresh store (or the one at path,
// when given) with a fake clock and captured logs.
func newHarness(t testing.TB, whs []Webhook, path string) *harness {
	t.Helper()
	return newHarnessWith(t, whs, path, nil)
}

// newHarnessWith is newHarness with mod applied to the Config before New.
func newHarnessWith(t testing.TB, whs []Webhook, path string, mod func(*Config)) *harness {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), store.FileName)
	}
	h := &harness{
		st:    openStore(t, path),
		path:  path,
		clock: &fakeClock{now: t0},
		logs:  &logBuf{},
		reg:   prometheus.NewRegistry(),
	}
	cfg := Config{
		Webhooks:       whs,
		Outbox:         h.st,
		Cluster:        "lab",
		Now:            h.clock.Now,
		After:          h.clock.After,
		Log:            zerolog.New(h.logs),
		Registerer:     h.reg,
		BackoffInitial: time.Second,
		BackoffMax:     10 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	require.NoError(t, err)
	h.d = d
	return h
}

// run starts Run; the returned stop cancels it and waits for it to return.
func (h *harness) run(t *testing.T) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.d.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(waitFor):
				t.Errorf("Run did not return within %s of cancel", waitFor)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// counter returns chime_fence_alert_deliveries_total{webhook,result}.
func (h *harness) counter(t *testing.T, webhook, result string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "chime_fence_alert_deliveries_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["webhook"] == webhook && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// gauge returns the value of a metric without labels.
func (h *harness) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func (h *harness) pending(t *testing.T) int {
	t.Helper()
	st, err := h.st.OutboxStats()
	require.NoError(t, err)
	return st.Total
}
