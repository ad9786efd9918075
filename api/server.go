// Package api is the daemon's HTTP interface: the agent endpoints
// (heartbeat, assignment) under each host's own agent credential (package
// identity), for that host only; the operator endpoints
// (status, hosts, operations, tasks, history, admin state, readiness) under
// API tokens with roles (read-only suffices for /metrics); /v1/healthz without a token.
//
// Authentication: a request's bearer token is compared in constant time
// with every configured token; an agent's credential is compared with the
// credential derived for the host it names (identity.HeaderHost). No or an
// unknown token is 401. A known token with the wrong role is 403: an agent
// credential outside agent endpoints or about another host than its own,
// an API token on an agent endpoint, a read-only token on anything but GET.
// The operator's token name is the actor recorded for what it starts.
//
// Every refusal is a 4xx with a JSON body {"error": "..."} that says what
// was wrong; nothing a client sends can crash the daemon or change state
// half-way. Operation requests map operations' errors: ErrInvalid 400,
// ErrNotFound 404, ErrConflict 409, ErrUnavailable 501.
//
// Heartbeats also arrive as UDP datagrams (ServeHeartbeats, udp.go): sealed
// with a key derived from the credential of the host they name, answered
// only when authentic, to
// the datagram's source, with the Ack or the reason HTTP would give in a 4xx.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// Backend is what the API serves; *daemon.Daemon satisfies it.
type Backend interface {
	Heartbeat(hb heartbeat.Heartbeat) (heartbeat.Ack, error)
	Assignment(host string) (heartbeat.Assignment, error)
	Status() daemon.Status
	Host(name string) (daemon.HostStatus, error)
	History(q store.Query) ([]store.Record, error)
	SetAdminState(host string, st node.AdminState, reason string) (store.Record, error)
}

// Paths of the operator endpoints.
const (
	PathStatus  = "/v1/status"
	PathHosts   = "/v1/hosts/"
	PathHistory = "/v1/history"
	PathMetrics = "/metrics"
)

// Server is the daemon's HTTP handler.
type Server struct {
	b       Backend
	creds   []credential
	log     zerolog.Logger
	mux     *http.ServeMux
	hbTotal *prometheus.CounterVec
	hbHTTP  hbCounts
	hbUDP   hbCounts
	reg     *prometheus.Registry

	// agents are the cluster secrets host credentials derive from.
	agents identity.Ring
	// sealers caches each host's datagram sealers (one per secret of
	// agents, current first), filled once a datagram authenticates, so
	// forged host names never grow it.
	sealers sync.Map // host → []*heartbeat.Sealer
	// now is the clock of the datagram logs' rate limits.
	now                               func() time.Time
	udpDropped, udpRefused, udpFailed everySecond
	// readers overrides ServeHeartbeats' reader count (tests: 1 keeps order).
	readers int

	ops    Operations
	fences Fences
	ready  func() []string
	// notEvacuable says why a host's domains could not all be rebuilt if
	// it failed now ("" when they could); see WithEvacuability.
	notEvacuable func(host string) string
}

// New builds the handler. The cluster secret (agent credentials) and at
// least one API token must be set, all different: an API without
// authentication is never served.
func New(b Backend, tok Tokens, reg *prometheus.Registry, log zerolog.Logger, opts ...Option) (*Server, error) {
	creds, err := tok.credentials()
	if err != nil {
		return nil, err
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{b: b, creds: creds, log: log.With().Str("component", "api").Logger(), mux: http.NewServeMux(), reg: reg,
		agents: tok.Agents, now: time.Now,
		udpDropped: newEverySecond(), udpRefused: newEverySecond(), udpFailed: newEverySecond()}
	for _, o := range opts {
		o(s)
	}
	s.hbTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chime_fence_heartbeats_total",
		Help: "Heartbeats received, by transport (http, udp) and result: accepted, ignored (answered but not acted on: duplicate, stale or late, see the ack's outcome), refused (sent_at outside the clock-skew window), malformed, unauthorized, unknown_host, too_large.",
	}, []string{"result", "transport"})
	s.hbHTTP, s.hbUDP = newHBCounts(s.hbTotal, "http"), newHBCounts(s.hbTotal, "udp")
	if err := reg.Register(s.hbTotal); err != nil {
		return nil, fmt.Errorf("api: register metrics: %w", err)
	}
	if err := reg.Register(statusCollector{b}); err != nil {
		return nil, fmt.Errorf("api: register metrics: %w", err)
	}
	s.mux.HandleFunc("POST "+heartbeat.PathHeartbeat, s.agent(s.heartbeat))
	s.mux.HandleFunc("GET "+heartbeat.PathAssignment, s.agent(s.assignment))
	s.mux.HandleFunc("GET "+PathStatus, s.reader(s.status))
	s.mux.HandleFunc("GET "+PathHostList, s.reader(s.hosts))
	s.mux.HandleFunc("GET "+PathHosts+"{host}", s.reader(s.host))
	s.mux.HandleFunc("PUT "+PathHosts+"{host}/admin-state", s.operator(s.setAdmin))
	s.mux.HandleFunc("POST "+PathHosts+"{host}/operations/{op}", s.operator(s.startOp))
	s.mux.HandleFunc("GET "+PathTasks, s.reader(s.tasks))
	s.mux.HandleFunc("GET "+PathTasks+"/{id}", s.reader(s.task))
	s.mux.HandleFunc("POST "+PathTasks+"/{id}/cancel", s.operator(s.cancelTask))
	s.mux.HandleFunc("GET "+PathHistory, s.reader(s.history))
	s.mux.HandleFunc("GET "+PathHealthz, s.healthz)
	s.mux.HandleFunc("GET "+PathReadyz, s.reader(s.readyz))
	// Prometheus sends a bearer token (authorization: credentials_file);
	// a read-only one is enough. Host names and states are not public.
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	s.mux.HandleFunc("GET "+PathMetrics, s.reader(func(w http.ResponseWriter, r *http.Request, _ principal) { metrics.ServeHTTP(w, r) }))
	// Anything else is a JSON 404 too (a wrong method included), so every
	// refusal has the same shape.
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no endpoint %s %s", r.Method, r.URL.Path)
	})
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// hbCounts are one transport's heartbeat counters, resolved once: the
// datagram path runs 10,000 times a second.
type hbCounts struct {
	accepted, malformed, unauthorized, unknownHost, tooLarge prometheus.Counter
	ignored, refused                                         prometheus.Counter
}

// taken counts an answered heartbeat by what the daemon did with it.
func (c hbCounts) taken(ack heartbeat.Ack) {
	if ack.Accepted() {
		c.accepted.Inc()
	} else {
		c.ignored.Inc()
	}
}

func newHBCounts(v *prometheus.CounterVec, transport string) hbCounts {
	return hbCounts{
		accepted:     v.WithLabelValues("accepted", transport),
		malformed:    v.WithLabelValues("malformed", transport),
		unauthorized: v.WithLabelValues("unauthorized", transport),
		unknownHost:  v.WithLabelValues("unknown_host", transport),
		tooLarge:     v.WithLabelValues("too_large", transport),
		ignored:      v.WithLabelValues("ignored", transport),
		refused:      v.WithLabelValues("refused", transport),
	}
}

// everySecond lets a log line through at most once a second and counts the
// ones it held back, so a flood of bad datagrams cannot flood the log.
type everySecond struct {
	lim        *rate.Limiter
	suppressed *atomic.Uint64
}

func newEverySecond() everySecond {
	return everySecond{lim: rate.NewLimiter(rate.Every(time.Second), 1), suppressed: new(atomic.Uint64)}
}

// allow reports whether to log now and how many lines were held back since
// the last one logged.
func (e everySecond) allow(now time.Time) (ok bool, suppressed uint64) {
	if e.lim.AllowN(now, 1) {
		return true, e.suppressed.Swap(0)
	}
	e.suppressed.Add(1)
	return false, 0
}

// ErrorBody is every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// unknownHost is why a heartbeat from a host not configured is refused,
// over HTTP and UDP alike.
func unknownHost(host string) string {
	return fmt.Sprintf("host %q is not in the daemon's configuration", host)
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request, caller string) {
	if r.ContentLength > heartbeat.MaxBodyBytes {
		s.hbHTTP.tooLarge.Inc()
		writeErr(w, http.StatusRequestEntityTooLarge, "heartbeat of %d bytes exceeds %d", r.ContentLength, heartbeat.MaxBodyBytes)
		return
	}
	hb, err := heartbeat.Decode(http.MaxBytesReader(w, r.Body, heartbeat.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.hbHTTP.tooLarge.Inc()
			writeErr(w, http.StatusRequestEntityTooLarge, "heartbeat exceeds %d bytes", heartbeat.MaxBodyBytes)
			return
		}
		s.hbHTTP.malformed.Inc()
		s.log.Warn().Str("remote", r.RemoteAddr).Err(err).Msg("refused malformed heartbeat")
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	if hb.Host != caller {
		// Its local_drain, migration reports and domain list would be
		// taken as the other host's.
		s.forbidden(w, r, caller, hb.Host, "heartbeat")
		return
	}
	ack, err := s.b.Heartbeat(hb)
	if errors.Is(err, daemon.ErrUnknownHost) {
		s.hbHTTP.unknownHost.Inc()
		s.log.Warn().Str("remote", r.RemoteAddr).Str("host", hb.Host).Msg("refused heartbeat from a host not in the configuration")
		writeErr(w, http.StatusNotFound, "%s", unknownHost(hb.Host))
		return
	}
	if errors.Is(err, daemon.ErrHeartbeatRefused) {
		// 422: the heartbeat is well-formed but cannot be dated.
		s.hbHTTP.refused.Inc()
		writeErr(w, http.StatusUnprocessableEntity, "%v", err)
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.hbHTTP.taken(ack)
	writeJSON(w, http.StatusOK, ack)
}

func (s *Server) assignment(w http.ResponseWriter, r *http.Request, caller string) {
	host := r.URL.Query().Get("host")
	if host == "" {
		writeErr(w, http.StatusBadRequest, "query parameter host is required")
		return
	}
	if host != caller {
		s.forbidden(w, r, caller, host, "assignment read")
		return
	}
	a, err := s.b.Assignment(host)
	if s.notFound(w, err) {
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (s *Server) notFound(w http.ResponseWriter, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, daemon.ErrUnknownHost):
		writeErr(w, http.StatusNotFound, "%v", err)
	default:
		writeErr(w, http.StatusInternalServerError, "%v", err)
	}
	return true
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request, _ principal) {
	st := s.b.Status()
	for i := range st.Hosts {
		s.addEvacuability(&st.Hosts[i])
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) addEvacuability(h *daemon.HostStatus) {
	if s.notEvacuable != nil {
		h.NotEvacuable = s.notEvacuable(h.Name)
	}
}

func (s *Server) host(w http.ResponseWriter, r *http.Request, _ principal) {
	h, err := s.b.Host(r.PathValue("host"))
	if s.notFound(w, err) {
		return
	}
	info, err := s.info([]daemon.HostStatus{h})
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if a, err := s.b.Assignment(h.Name); err == nil {
		info[0].Assigned, info[0].Evicted = a.Domains, a.Evicted
	}
	writeJSON(w, http.StatusOK, info[0])
}

// AdminRequest is the body of PUT /v1/hosts/{host}/admin-state.
type AdminRequest struct {
	State  node.AdminState `json:"state"`
	Reason string          `json:"reason"`
}

func (s *Server) setAdmin(w http.ResponseWriter, r *http.Request, p principal) {
	var req AdminRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "admin-state body: %v", err)
		return
	}
	host := r.PathValue("host")
	// Not beside a running operation: it may be draining or rebuilding
	// this host on the strength of its current admin state.
	if s.ops != nil {
		if h, held := s.ops.Lock(host); held {
			writeErr(w, http.StatusConflict, "admin state of %s refused: host is locked by %s; wait for it to finish", host, h)
			return
		}
	}
	reason := req.Reason
	if reason != "" {
		reason += " (by " + p.name + ")"
	}
	rec, err := s.b.SetAdminState(host, req.State, reason)
	if err != nil && !errors.Is(err, daemon.ErrUnknownHost) && strings.Contains(err.Error(), "reason is required") {
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	if s.notFound(w, err) {
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

// HistoryBody is the answer of GET /v1/history.
type HistoryBody struct {
	Records []store.Record `json:"records"`
}

func (s *Server) history(w http.ResponseWriter, r *http.Request, _ principal) {
	q := r.URL.Query()
	hq := store.Query{Host: q.Get("host"), Kind: q.Get("kind"), CorrelationID: q.Get("correlation_id")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeErr(w, http.StatusBadRequest, "limit %q must be a positive integer", v)
			return
		}
		hq.Limit = n
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeErr(w, http.StatusBadRequest, "since %q must be an RFC 3339 time", v)
			return
		}
		hq.Since = t
	}
	recs, err := s.b.History(hq)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if recs == nil {
		recs = []store.Record{}
	}
	writeJSON(w, http.StatusOK, HistoryBody{Records: recs})
}

// statusCollector exports per-state host counts at scrape time.
type statusCollector struct{ b Backend }

var (
	descMonitor = prometheus.NewDesc("chime_fence_hosts_by_monitor_state", "Hosts per monitor state.", []string{"state"}, nil)
	descVerdict = prometheus.NewDesc("chime_fence_hosts_by_verdict", "Hosts per current verdict.", []string{"verdict"}, nil)
	descStorm   = prometheus.NewDesc("chime_fence_storm_paused", "1 while the storm guard pauses every decision.", nil, nil)
	descAge     = prometheus.NewDesc("chime_fence_heartbeat_age_seconds", "Age of each host's last heartbeat.", []string{"host"}, nil)
)

func (statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descMonitor
	ch <- descVerdict
	ch <- descStorm
	ch <- descAge
}

func (c statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.b.Status()
	mon, ver := map[string]int{}, map[string]int{}
	for _, h := range st.Hosts {
		mon[h.Monitor.String()]++
		ver[h.Verdict.String()]++
		if !h.LastHeartbeat.IsZero() {
			ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, time.Duration(h.HeartbeatAge).Seconds(), h.Name)
		}
	}
	for k, n := range mon {
		ch <- prometheus.MustNewConstMetric(descMonitor, prometheus.GaugeValue, float64(n), k)
	}
	for k, n := range ver {
		ch <- prometheus.MustNewConstMetric(descVerdict, prometheus.GaugeValue, float64(n), k)
	}
	paused := 0.0
	if st.Storm.Paused {
		paused = 1
	}
	ch <- prometheus.MustNewConstMetric(descStorm, prometheus.GaugeValue, paused)
}
