package api

import (
	"errors"
	"time"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/operations"
)

// Paths added with operations.
const (
	PathHostList = "/v1/hosts"
	PathTasks    = "/v1/tasks"
	PathHealthz  = "/v1/healthz"
	PathReadyz   = "/v1/readyz"
)

// Errors a Client returns, by HTTP status, testable with errors.Is.
var (
	// ErrConflict is a 409: the host's state or a running task refuses the
	// operation now.
	ErrConflict = errors.New("conflict")
	// ErrBadRequest is a 400 (or 413): the request is wrong.
	ErrBadRequest = errors.New("bad request")
	// ErrUnauthorized is a 401: no token, or a token the daemon does not know.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden is a 403: the token is known but its role may not do this
	// (a read-only token on an operation, an agent token on an operator
	// endpoint, an operator token on an agent endpoint).
	ErrForbidden = errors.New("forbidden")
	// ErrUnavailable is a 501 (no executor for the operation) or a 503
	// (not ready).
	ErrUnavailable = errors.New("unavailable")
)

// FenceSummary is a host's latest fence in the journal.
type FenceSummary struct {
	State         string `json:"state"` // store.FenceInFlight, FenceVerified, FenceFailed, FenceConfirmed
	CorrelationID string `json:"correlation_id,omitempty"`
	Level         string `json:"level,omitempty"`
	Reason        string `json:"reason,omitempty"`
	// Proven: the fence lets the host's VMs be rebuilt (verified or
	// confirmed, and newer than the host's last heartbeat).
	Proven   bool      `json:"proven"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// HostInfo is GET /v1/hosts/{host} and each entry of GET /v1/hosts: the
// daemon's view of the host (monitor and admin state, last heartbeat and
// verdict, fence readiness in Readiness) plus its latest fence and the
// operation holding its lock, if any.
type HostInfo struct {
	daemon.HostStatus
	Fence *FenceSummary      `json:"fence,omitempty"`
	Lock  *operations.Holder `json:"lock,omitempty"`
	// Assigned (show only) are the domains whose home is the host, and
	// Evicted those it must destroy and undefine (they run elsewhere).
	Assigned []heartbeat.AssignedDomain `json:"assigned,omitempty"`
	Evicted  []heartbeat.AssignedDomain `json:"evicted,omitempty"`
}

// HostsBody is GET /v1/hosts.
type HostsBody struct {
	Storm detector.StormStatus `json:"storm"`
	Hosts []HostInfo           `json:"hosts"`
}

// TasksBody is GET /v1/tasks.
type TasksBody struct {
	Tasks []operations.Task `json:"tasks"`
}

// ReadyBody is GET /v1/readyz.
type ReadyBody struct {
	Ready    bool     `json:"ready"`
	Problems []string `json:"problems,omitempty"`
}
