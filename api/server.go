// Package api is the daemon's HTTP interface: the agent endpoints
// (heartbeat, assignment) under the agent token, the operator endpoints
// (status, host, history, admin state) under the API token, and /metrics.
//
// Every refusal is a 4xx with a JSON body {"error": "..."} that says what
// was wrong, and is counted; nothing a client sends can crash the daemon or
// change state half-way.
package api

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/heartbeat"
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

// Tokens are the two bearer tokens, already read from their files.
type Tokens struct {
	Agent string
	API   string
}

// Server is the daemon's HTTP handler.
type Server struct {
	b       Backend
	tok     Tokens
	log     zerolog.Logger
	mux     *http.ServeMux
	hbTotal *prometheus.CounterVec
	reg     *prometheus.Registry
}

// New builds the handler. Both tokens must be set: an API without
// authentication is never served.
func New(b Backend, tok Tokens, reg *prometheus.Registry, log zerolog.Logger) (*Server, error) {
	if tok.Agent == "" || tok.API == "" {
		return nil, errors.New("api: both the agent token and the API token are required")
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{b: b, tok: tok, log: log.With().Str("component", "api").Logger(), mux: http.NewServeMux(), reg: reg}
	s.hbTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chime_fence_heartbeats_total",
		Help: "Heartbeats received, by result: accepted, malformed, unauthorized, unknown_host, too_large.",
	}, []string{"result"})
	for _, r := range []string{"accepted", "malformed", "unauthorized", "unknown_host", "too_large"} {
		s.hbTotal.WithLabelValues(r)
	}
	if err := reg.Register(s.hbTotal); err != nil {
		return nil, fmt.Errorf("api: register metrics: %w", err)
	}
	if err := reg.Register(statusCollector{b}); err != nil {
		return nil, fmt.Errorf("api: register metrics: %w", err)
	}
	s.mux.HandleFunc("POST "+heartbeat.PathHeartbeat, s.agent(s.heartbeat))
	s.mux.HandleFunc("GET "+heartbeat.PathAssignment, s.agent(s.assignment))
	s.mux.HandleFunc("GET "+PathStatus, s.operator(s.status))
	s.mux.HandleFunc("GET "+PathHosts+"{host}", s.operator(s.host))
	s.mux.HandleFunc("PUT "+PathHosts+"{host}/admin-state", s.operator(s.setAdmin))
	s.mux.HandleFunc("GET "+PathHistory, s.operator(s.history))
	s.mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return s, nil
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

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

func bearerOK(r *http.Request, want string) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

func (s *Server) agent(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !bearerOK(r, s.tok.Agent) {
			if r.URL.Path == heartbeat.PathHeartbeat {
				s.hbTotal.WithLabelValues("unauthorized").Inc()
			}
			s.log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Msg("refused: missing or wrong agent token")
			writeErr(w, http.StatusUnauthorized, "missing or wrong agent token (Authorization: Bearer)")
			return
		}
		h(w, r)
	}
}

func (s *Server) operator(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !bearerOK(r, s.tok.API) {
			s.log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Msg("refused: missing or wrong API token")
			writeErr(w, http.StatusUnauthorized, "missing or wrong API token (Authorization: Bearer)")
			return
		}
		h(w, r)
	}
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > heartbeat.MaxBodyBytes {
		s.hbTotal.WithLabelValues("too_large").Inc()
		writeErr(w, http.StatusRequestEntityTooLarge, "heartbeat of %d bytes exceeds %d", r.ContentLength, heartbeat.MaxBodyBytes)
		return
	}
	hb, err := heartbeat.Decode(http.MaxBytesReader(w, r.Body, heartbeat.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.hbTotal.WithLabelValues("too_large").Inc()
			writeErr(w, http.StatusRequestEntityTooLarge, "heartbeat exceeds %d bytes", heartbeat.MaxBodyBytes)
			return
		}
		s.hbTotal.WithLabelValues("malformed").Inc()
		s.log.Warn().Str("remote", r.RemoteAddr).Err(err).Msg("refused malformed heartbeat")
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	ack, err := s.b.Heartbeat(hb)
	if errors.Is(err, daemon.ErrUnknownHost) {
		s.hbTotal.WithLabelValues("unknown_host").Inc()
		s.log.Warn().Str("remote", r.RemoteAddr).Str("host", hb.Host).Msg("refused heartbeat from a host not in the configuration")
		writeErr(w, http.StatusNotFound, "host %q is not in the daemon's configuration", hb.Host)
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.hbTotal.WithLabelValues("accepted").Inc()
	writeJSON(w, http.StatusOK, ack)
}

func (s *Server) assignment(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	if host == "" {
		writeErr(w, http.StatusBadRequest, "query parameter host is required")
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

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.b.Status())
}

func (s *Server) host(w http.ResponseWriter, r *http.Request) {
	h, err := s.b.Host(r.PathValue("host"))
	if s.notFound(w, err) {
		return
	}
	writeJSON(w, http.StatusOK, h)
}

// AdminRequest is the body of PUT /v1/hosts/{host}/admin-state.
type AdminRequest struct {
	State  node.AdminState `json:"state"`
	Reason string          `json:"reason"`
}

func (s *Server) setAdmin(w http.ResponseWriter, r *http.Request) {
	var req AdminRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, "admin-state body: %v", err)
		return
	}
	rec, err := s.b.SetAdminState(r.PathValue("host"), req.State, req.Reason)
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

func (s *Server) history(w http.ResponseWriter, r *http.Request) {
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
