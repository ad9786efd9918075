package heartbeat

import (
	"time"

	"github.com/chimestack/chime-fence/hypervisor"
)

// The agent's drain (POST /v1/drain on the agent, and chime-agent drain):
// the agent writes these, the daemon's agent driver reads them.

// DrainedDomain is one domain's part in a drain.
type DrainedDomain struct {
	UUID   string                 `json:"uuid"`
	Name   string                 `json:"name"`
	Before hypervisor.DomainState `json:"before"`
	// Action is "destroyed", "failed", "not running" (nothing to do), or
	// in a dry run "would destroy".
	Action string `json:"action"`
	Error  string `json:"error,omitempty"`
}

// DrainResult is what a drain did.
type DrainResult struct {
	Host string `json:"host"`
	// Marker is the drain marker's path; DrainedAt is in it.
	Marker    string          `json:"marker"`
	DrainedAt time.Time       `json:"drained_at"`
	Domains   []DrainedDomain `json:"domains"`
	// Running counts domains libvirt lists active after the drain; -1 when
	// the final listing failed.
	Running int `json:"running"`
}

// DrainResponse is POST /v1/drain's body: the result, and what went wrong
// if anything did ("" on success).
type DrainResponse struct {
	DrainResult
	Error string `json:"error,omitempty"`
}
