package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Fence states in the journal.
const (
	FenceInFlight  = "fencing"   // intent written, outcome unknown
	FenceVerified  = "verified"  // power read back off (or agent drained)
	FenceFailed    = "failed"    // no level verified
	FenceConfirmed = "confirmed" // an operator attested the host is down
)

// FenceRecord is the journal's latest fence of one host. It is written
// with State FenceInFlight before any BMC is touched, so a daemon that
// dies mid-fence knows on restart that the host's power state is unknown.
type FenceRecord struct {
	Host          string          `json:"host"`
	CorrelationID string          `json:"correlation_id"`
	State         string          `json:"state"`
	Action        string          `json:"action"`
	Started       time.Time       `json:"started"`
	Finished      time.Time       `json:"finished,omitzero"`
	Level         string          `json:"level,omitempty"` // the level that verified
	Reason        string          `json:"reason,omitempty"`
	Attempts      json.RawMessage `json:"attempts,omitempty"`
	// Evacuation is the id of the evacuation task started after it, if any.
	Evacuation string `json:"evacuation,omitempty"`
}

// Proven says whether the record lets the host's domains be rebuilt.
func (r FenceRecord) Proven() bool {
	return r.State == FenceVerified || r.State == FenceConfirmed
}

// PutFence replaces the host's fence record.
func (s *Store) PutFence(r FenceRecord) error {
	const step = "put fence record"
	if err := checkHost(r.Host); err != nil {
		return s.wrap(step, err)
	}
	switch r.State {
	case FenceInFlight, FenceVerified, FenceFailed, FenceConfirmed:
	default:
		return s.wrap(step, fmt.Errorf("%w: host %s: fence state %q", ErrInvalid, r.Host, r.State))
	}
	if r.Started.IsZero() {
		return s.wrap(step, fmt.Errorf("%w: host %s: fence has no start time", ErrInvalid, r.Host))
	}
	r.Started = r.Started.UTC().Round(0)
	r.Finished = r.Finished.UTC().Round(0)
	v, err := json.Marshal(r)
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode fence of host %q: %w", r.Host, err))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		return tx.Bucket(bFences).Put([]byte(r.Host), v)
	})
}

// Fences returns every host's latest fence record, keyed by host.
func (s *Store) Fences() (map[string]FenceRecord, error) {
	out := map[string]FenceRecord{}
	err := s.view("read fence records", func(tx *bolt.Tx) error {
		return tx.Bucket(bFences).ForEach(func(k, v []byte) error {
			var r FenceRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("%w: fence record of host %q does not decode: %v", ErrCorrupt, k, err)
			}
			out[string(k)] = r
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
