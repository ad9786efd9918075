package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/chimestack/chime-fence/node"
)

// AdminKind is the history kind SetAdminState uses when the record has none.
const AdminKind = "admin"

// AdminStates returns every host's persisted admin state. A host that is
// not in the map was never set and is node.Enabled (the zero value).
func (s *Store) AdminStates() (map[string]node.AdminState, error) {
	out := map[string]node.AdminState{}
	err := s.view("read admin states", func(tx *bolt.Tx) error {
		return tx.Bucket(bAdmin).ForEach(func(k, v []byte) error {
			var st node.AdminState
			if err := st.UnmarshalText(v); err != nil {
				return fmt.Errorf("%w: admin state of host %q: %v", ErrCorrupt, k, err)
			}
			out[string(k)] = st
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetAdminState persists host's admin state and appends rec to the history
// in one transaction: both are written or neither. rec needs At; empty
// fields are filled in: Host with host, Kind with "admin", From with the
// previous state ("enabled" if never set), To with st. A rec.Host other than
// host is refused. It returns the record as stored.
func (s *Store) SetAdminState(host string, st node.AdminState, rec Record) (Record, error) {
	const step = "set admin state"
	if err := checkHost(host); err != nil {
		return Record{}, s.wrap(step, err)
	}
	text, err := st.MarshalText()
	if err != nil {
		return Record{}, s.wrap(step, fmt.Errorf("%w: host %q: %v", ErrInvalid, host, err))
	}
	switch rec.Host {
	case "":
		rec.Host = host
	case host:
	default:
		return Record{}, s.wrap(step, fmt.Errorf("%w: record is for host %q, state is for host %q", ErrInvalid, rec.Host, host))
	}
	if rec.Kind == "" {
		rec.Kind = AdminKind
	}
	if rec.To == "" {
		rec.To = st.String()
	}
	if err := normalizeRecord(&rec); err != nil {
		return Record{}, s.wrap(step, fmt.Errorf("host %q: %w", host, err))
	}
	var stored [1]Record
	err = s.write(step, func(tx *bolt.Tx) error {
		stored[0] = rec // fresh on every run: see write
		admin := tx.Bucket(bAdmin)
		if stored[0].From == "" {
			stored[0].From = node.Enabled.String()
			if prev := admin.Get([]byte(host)); prev != nil {
				stored[0].From = string(prev)
			}
		}
		if err := admin.Put([]byte(host), text); err != nil {
			return fmt.Errorf("put admin state of host %q: %w", host, err)
		}
		return s.appendTx(tx, stored[:])
	})
	if err != nil {
		return Record{}, err
	}
	return stored[0], nil
}

// DomainHome says which host a domain should run on.
type DomainHome struct {
	UUID  string    `json:"uuid"`
	Name  string    `json:"name"`
	Host  string    `json:"host"`
	Since time.Time `json:"since"`
}

// DomainHomes returns every domain's home, keyed by UUID.
func (s *Store) DomainHomes() (map[string]DomainHome, error) {
	out := map[string]DomainHome{}
	err := s.view("read domain homes", func(tx *bolt.Tx) error {
		return tx.Bucket(bHomes).ForEach(func(k, v []byte) error {
			var h DomainHome
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("%w: domain home %q does not decode: %v", ErrCorrupt, k, err)
			}
			if h.UUID != string(k) {
				return fmt.Errorf("%w: domain home under key %q says it is %q", ErrCorrupt, k, h.UUID)
			}
			out[h.UUID] = h
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UpdateDomainHomes writes put (replacing any home with the same UUID) and
// deletes the homes whose UUIDs are in remove, in one transaction. Removing
// an unknown UUID is not an error; naming a UUID twice is.
func (s *Store) UpdateDomainHomes(put []DomainHome, remove []string) error {
	const step = "update domain homes"
	seen := map[string]string{}
	vals := make([][]byte, len(put))
	for i, h := range put {
		switch {
		case h.UUID == "":
			return s.wrap(step, fmt.Errorf("%w: home %d of %d (name %q): UUID is empty", ErrInvalid, i+1, len(put), h.Name))
		case len(h.UUID) > 1024:
			return s.wrap(step, fmt.Errorf("%w: home %d of %d: UUID is %d bytes", ErrInvalid, i+1, len(put), len(h.UUID)))
		case h.Host == "":
			return s.wrap(step, fmt.Errorf("%w: home of domain %s (name %q): Host is empty", ErrInvalid, h.UUID, h.Name))
		case seen[h.UUID] != "":
			return s.wrap(step, fmt.Errorf("%w: domain %s appears twice in put", ErrInvalid, h.UUID))
		}
		seen[h.UUID] = "put"
		h.Since = h.Since.UTC().Round(0)
		v, err := json.Marshal(h)
		if err != nil {
			return s.wrap(step, fmt.Errorf("encode home of domain %s: %w", h.UUID, err))
		}
		vals[i] = v
	}
	for _, id := range remove {
		switch seen[id] {
		case "put":
			return s.wrap(step, fmt.Errorf("%w: domain %s is both put and removed", ErrInvalid, id))
		case "remove":
			return s.wrap(step, fmt.Errorf("%w: domain %s appears twice in remove", ErrInvalid, id))
		}
		if id == "" {
			return s.wrap(step, fmt.Errorf("%w: empty UUID in remove", ErrInvalid))
		}
		seen[id] = "remove"
	}
	if len(put) == 0 && len(remove) == 0 {
		return nil
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bHomes)
		for i, h := range put {
			if err := b.Put([]byte(h.UUID), vals[i]); err != nil {
				return fmt.Errorf("put home of domain %s: %w", h.UUID, err)
			}
		}
		for _, id := range remove {
			if err := b.Delete([]byte(id)); err != nil {
				return fmt.Errorf("delete home of domain %s: %w", id, err)
			}
		}
		return nil
	})
}

// HostMemo holds small per-host facts that must survive a daemon restart.
type HostMemo struct {
	BootID        string    `json:"boot_id"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	LastVerdict   string    `json:"last_verdict"`
	LastVerdictAt time.Time `json:"last_verdict_at"`
	Monitor       string    `json:"monitor"`
	// AgentStart and Seq are the newest heartbeat taken from the host (its
	// agent process and sequence number): after a restart the daemon takes
	// only newer ones, so a beat captured before it cannot be replayed.
	// Written with the rest of the memo (every few seconds), not per beat:
	// see detector.Order for what a crash between two writes allows.
	AgentStart time.Time `json:"agent_start,omitzero"`
	Seq        uint64    `json:"seq,omitempty"`
}

// HostMemos returns every host's memo.
func (s *Store) HostMemos() (map[string]HostMemo, error) {
	out := map[string]HostMemo{}
	err := s.view("read host memos", func(tx *bolt.Tx) error {
		return tx.Bucket(bMemos).ForEach(func(k, v []byte) error {
			var m HostMemo
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("%w: memo of host %q does not decode: %v", ErrCorrupt, k, err)
			}
			out[string(k)] = m
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutHostMemos replaces the memos of the hosts in m, in one transaction.
// Hosts not in m keep theirs.
func (s *Store) PutHostMemos(m map[string]HostMemo) error {
	const step = "put host memos"
	vals := make(map[string][]byte, len(m))
	for host, memo := range m {
		if err := checkHost(host); err != nil {
			return s.wrap(step, err)
		}
		memo.LastHeartbeat = memo.LastHeartbeat.UTC().Round(0)
		memo.LastVerdictAt = memo.LastVerdictAt.UTC().Round(0)
		memo.AgentStart = memo.AgentStart.UTC().Round(0)
		v, err := json.Marshal(memo)
		if err != nil {
			return s.wrap(step, fmt.Errorf("encode memo of host %q: %w", host, err))
		}
		vals[host] = v
	}
	if len(vals) == 0 {
		return nil
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bMemos)
		for host, v := range vals {
			if err := b.Put([]byte(host), v); err != nil {
				return fmt.Errorf("put memo of host %q: %w", host, err)
			}
		}
		return nil
	})
}

// RemoveHostMemos deletes the memos of hosts (e.g. hosts removed from the
// configuration), in one transaction. Unknown hosts are not an error.
func (s *Store) RemoveHostMemos(hosts ...string) error {
	const step = "remove host memos"
	for _, h := range hosts {
		if err := checkHost(h); err != nil {
			return s.wrap(step, err)
		}
	}
	if len(hosts) == 0 {
		return nil
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bMemos)
		for _, h := range hosts {
			if err := b.Delete([]byte(h)); err != nil {
				return fmt.Errorf("delete memo of host %q: %w", h, err)
			}
		}
		return nil
	})
}

func checkHost(host string) error {
	if host == "" {
		return fmt.Errorf("%w: host is empty", ErrInvalid)
	}
	return checkIndexable("host", host)
}
