package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/store"
)

// Operations runs host operations as tasks; *operations.Manager satisfies it.
type Operations interface {
	Start(req operations.Request) (operations.Task, error)
	Task(id string) (operations.Task, error)
	Tasks(host string) ([]operations.Task, error)
	Lock(host string) (operations.Holder, bool)
}

// Canceller ends a task by hand (POST /v1/tasks/{id}/cancel). Operations
// that also implement it serve that endpoint; others answer 501.
type Canceller interface {
	Cancel(id, actor, reason string) (operations.Task, error)
}

// Fences reads the fence journal; *store.Store satisfies it.
type Fences interface {
	Fences() (map[string]store.FenceRecord, error)
}

// Option adds an optional part to the Server.
type Option func(*Server)

// WithOperations serves POST /v1/hosts/{host}/operations/{op} and the
// tasks endpoints, and shows each host's lock. Without it those answer 501.
func WithOperations(o Operations) Option { return func(s *Server) { s.ops = o } }

// WithFences shows each host's latest fence in the hosts endpoints.
func WithFences(f Fences) Option { return func(s *Server) { s.fences = f } }

// WithEvacuability fills each host's NotEvacuable in the status and hosts
// endpoints: why its domains could not all be rebuilt if it failed now.
func WithEvacuability(f func(host string) string) Option {
	return func(s *Server) { s.notEvacuable = f }
}

// WithReadiness makes GET /v1/readyz report check's problems (none: ready).
func WithReadiness(check func() []string) Option { return func(s *Server) { s.ready = check } }

// MaxOperationBody bounds an operation request's body.
const MaxOperationBody = 64 << 10

// info adds the fence and the lock to each host's status.
func (s *Server) info(hs []daemon.HostStatus) ([]HostInfo, error) {
	var fences map[string]store.FenceRecord
	if s.fences != nil {
		var err error
		if fences, err = s.fences.Fences(); err != nil {
			return nil, fmt.Errorf("read fence journal: %w", err)
		}
	}
	out := make([]HostInfo, len(hs))
	for i, h := range hs {
		s.addEvacuability(&h)
		out[i] = HostInfo{HostStatus: h}
		if r, ok := fences[h.Name]; ok {
			out[i].Fence = &FenceSummary{State: r.State, CorrelationID: r.CorrelationID, Level: r.Level, Reason: r.Reason,
				Proven: operations.FenceProven(r, h.LastHeartbeat), Started: r.Started, Finished: r.Finished}
		}
		if s.ops != nil {
			if l, ok := s.ops.Lock(h.Name); ok {
				out[i].Lock = &l
			}
		}
	}
	return out, nil
}

func (s *Server) hosts(w http.ResponseWriter, _ *http.Request, _ principal) {
	st := s.b.Status()
	info, err := s.info(st.Hosts)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, HostsBody{Storm: st.Storm, Hosts: info})
}

// opErr writes an operations error with its status code.
func opErr(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, operations.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, operations.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, operations.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, operations.ErrUnavailable):
		code = http.StatusNotImplemented
	}
	writeErr(w, code, "%v", err)
}

// DecodeOperation reads an operation request body: a JSON object with only
// target, migrate_local_disk_vms and reason, or nothing at all. Host, op and
// actor come from the path and the token, never from the body.
func DecodeOperation(body io.Reader) (operations.Request, error) {
	var req operations.Request
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return operations.Request{}, nil // no body: no options
		}
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return operations.Request{}, fmt.Errorf("operation body exceeds %d bytes", mbe.Limit)
		}
		return operations.Request{}, fmt.Errorf("operation body: %v", describeJSON(err))
	}
	if dec.More() {
		return operations.Request{}, errors.New("operation body: trailing data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return operations.Request{}, errors.New("operation body: trailing data after the JSON object")
	}
	return req, nil
}

// describeJSON words a decoding error for the operator.
func describeJSON(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be a %s, got a JSON %s", te.Field, te.Type, te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ") + " (allowed: target, migrate_local_disk_vms, reason)"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	return err.Error()
}

func (s *Server) startOp(w http.ResponseWriter, r *http.Request, p principal) {
	if s.ops == nil {
		writeErr(w, http.StatusNotImplemented, "operations are not enabled in this daemon")
		return
	}
	op, err := operations.ParseOp(r.PathValue("op"))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	if r.ContentLength > MaxOperationBody {
		writeErr(w, http.StatusRequestEntityTooLarge, "operation body of %d bytes exceeds %d", r.ContentLength, MaxOperationBody)
		return
	}
	req, err := DecodeOperation(http.MaxBytesReader(w, r.Body, MaxOperationBody))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	req.Host, req.Op, req.Actor = r.PathValue("host"), op, p.name
	t, err := s.ops.Start(req)
	if err != nil {
		s.log.Warn().Str("host", req.Host).Str("op", string(op)).Str("actor", p.name).Err(err).Msg("operation refused")
		opErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, t)
}

func (s *Server) tasks(w http.ResponseWriter, r *http.Request, _ principal) {
	if s.ops == nil {
		writeErr(w, http.StatusNotImplemented, "operations are not enabled in this daemon")
		return
	}
	host := r.URL.Query().Get("host")
	if host != "" {
		if _, err := s.b.Host(host); s.notFound(w, err) {
			return
		}
	}
	ts, err := s.ops.Tasks(host)
	if err != nil {
		opErr(w, err)
		return
	}
	if ts == nil {
		ts = []operations.Task{}
	}
	writeJSON(w, http.StatusOK, TasksBody{Tasks: ts})
}

func (s *Server) task(w http.ResponseWriter, r *http.Request, _ principal) {
	if s.ops == nil {
		writeErr(w, http.StatusNotImplemented, "operations are not enabled in this daemon")
		return
	}
	t, err := s.ops.Task(r.PathValue("id"))
	if err != nil {
		opErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// cancelTask ends a task by hand; the body is {"reason": "..."} or empty.
func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request, p principal) {
	c, ok := s.ops.(Canceller)
	if s.ops == nil || !ok {
		writeErr(w, http.StatusNotImplemented, "task cancel is not enabled in this daemon")
		return
	}
	req, err := DecodeOperation(http.MaxBytesReader(w, r.Body, MaxOperationBody))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "%v", err)
		return
	}
	t, err := c.Cancel(r.PathValue("id"), p.name, req.Reason)
	if err != nil {
		s.log.Warn().Str("task", r.PathValue("id")).Str("actor", p.name).Err(err).Msg("task cancel refused")
		opErr(w, err)
		return
	}
	s.log.Warn().Str("task", t.ID).Str("host", t.Host).Str("actor", p.name).Msg("task cancelled by an operator")
	writeJSON(w, http.StatusOK, t)
}

// healthz is liveness: the process serves HTTP. No token, no state.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyBody is ReadyBody plus the error text clients show on a 503.
type readyBody struct {
	ReadyBody
	Error string `json:"error,omitempty"`
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request, _ principal) {
	var problems []string
	if s.ready != nil {
		problems = s.ready()
	}
	if len(problems) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, readyBody{ReadyBody: ReadyBody{Problems: problems},
			Error: "not ready: " + strings.Join(problems, "; ")})
		return
	}
	writeJSON(w, http.StatusOK, ReadyBody{Ready: true})
}
