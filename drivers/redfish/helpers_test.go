package redfish

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/redfishsim"
)

const (
	simUser = "fence"
	simPass = "Pw-must-never-leak-42"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer collects log output written from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// recorder wraps the simulator: it logs every request, remembers every
// session token handed out, and lets a test intercept requests.
type recorder struct {
	next http.Handler

	mu        sync.Mutex
	requests  []string // "METHOD /path"
	tokens    []string
	intercept func(w http.ResponseWriter, r *http.Request) bool // true: handled
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.requests = append(rec.requests, r.Method+" "+r.URL.Path)
	icpt := rec.intercept
	rec.mu.Unlock()
	if icpt != nil && icpt(w, r) {
		return
	}
	tw := &tokenWriter{ResponseWriter: w, rec: rec}
	rec.next.ServeHTTP(tw, r)
}

func (rec *recorder) setIntercept(f func(w http.ResponseWriter, r *http.Request) bool) {
	rec.mu.Lock()
	rec.intercept = f
	rec.mu.Unlock()
}

// count returns how many requests had this method and a path containing sub.
func (rec *recorder) count(method, sub string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.requests {
		m, p, _ := strings.Cut(r, " ")
		if m == method && strings.Contains(p, sub) {
			n++
		}
	}
	return n
}

func (rec *recorder) allTokens() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.tokens...)
}

type tokenWriter struct {
	http.ResponseWriter
	rec *recorder
}

func (tw *tokenWriter) WriteHeader(code int) {
	if tok := tw.Header().Get("X-Auth-Token"); tok != "" {
		tw.rec.mu.Lock()
		tw.rec.tokens = append(tw.rec.tokens, tok)
		tw.rec.mu.Unlock()
	}
	tw.ResponseWriter.WriteHeader(code)
}

// bmc is a simulator served on 127.0.0.1 over real TCP.
type bmc struct {
	sim   *redfishsim.Sim
	clock *fakeClock
	rec   *recorder
	srv   *httptest.Server
	stop  chan struct{} // closed at cleanup: hung handlers give up
}

// hang blocks a handler until the client goes away (or the test ends). The
// body is drained first: net/http notices a client closing the connection
// only once the request body has been read.
func hang(b *bmc, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	select {
	case <-r.Context().Done():
	case <-b.stop:
	}
}

func startBMC(t *testing.T, cfg redfishsim.Config, useTLS bool) *bmc {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Username, cfg.Password = simUser, simPass
	cfg.Now = clk.Now
	cfg.Logf = t.Logf
	sim, err := redfishsim.New(cfg)
	require.NoError(t, err)
	rec := &recorder{next: sim}
	var srv *httptest.Server
	if useTLS {
		srv = httptest.NewTLSServer(rec)
	} else {
		srv = httptest.NewServer(rec)
	}
	t.Cleanup(srv.Close)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // runs before srv.Close
	require.True(t, strings.HasPrefix(srv.Listener.Addr().String(), "127.0.0.1:"))
	return &bmc{sim: sim, clock: clk, rec: rec, srv: srv, stop: stop}
}

func (b *bmc) config() Config {
	return Config{Host: "node1", Endpoint: b.srv.URL, Username: simUser, Password: simPass, Timeout: 5 * time.Second}
}

func newClient(t *testing.T, cfg Config) (*Client, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	c, err := New(cfg, zerolog.New(logs).Level(zerolog.DebugLevel))
	require.NoError(t, err)
	return c, logs
}

// requireNoSessions waits for background logouts, then checks the BMC has
// no session left and every login was matched by a logout.
func requireNoSessions(t *testing.T, c *Client, b *bmc) {
	t.Helper()
	c.logouts.Wait()
	st := b.sim.Stats()
	require.Equal(t, 0, st.Sessions, "sessions left open: %+v", st)
	require.Equal(t, st.Logins, st.Logouts, "%+v", st)
}

func newBenchServer(h http.Handler, useTLS bool) *httptest.Server {
	if useTLS {
		return httptest.NewTLSServer(h)
	}
	return httptest.NewServer(h)
}
