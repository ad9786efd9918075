// Package daemon composes the detector engine with the state the daemon
// owns besides it: each host's admin state and where each domain should run
// (the agents' assignments). It is what the HTTP API serves.
//
// Caller contract: New loads admin states and domain homes from the store;
// the engine must already be built on the same store. Every method is safe
// for concurrent use. Heartbeat is the hot path (every host, every
// interval): it takes one short lock and writes to the store only when a
// host's domains changed where they live.
package daemon

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// ErrUnknownHost: the host is not in the configuration.
var ErrUnknownHost = detector.ErrUnknownHost

// State is what Daemon needs from the store; *store.Store satisfies it.
type State interface {
	AdminStates() (map[string]node.AdminState, error)
	SetAdminState(host string, st node.AdminState, rec store.Record) (store.Record, error)
	DomainHomes() (map[string]store.DomainHome, error)
	UpdateDomainHomes(put []store.DomainHome, remove []string) error
	History(q store.Query) ([]store.Record, error)
}

// Engine is what Daemon needs from the detector; *detector.Engine satisfies it.
type Engine interface {
	Heartbeat(hb heartbeat.Heartbeat) (accepted bool, err error)
	Status() ([]detector.HostStatus, detector.StormStatus)
	Host(name string) (detector.HostStatus, bool)
}

// Daemon answers agents and operators.
type Daemon struct {
	st       State
	eng      Engine
	clock    func() time.Time
	interval func() time.Duration
	log      zerolog.Logger

	mu     sync.Mutex
	admin  map[string]node.AdminState
	homes  map[string]store.DomainHome            // by UUID
	byHost map[string]map[string]store.DomainHome // host → UUID → home
	rev    map[string]uint64
}

// New loads the persisted state. interval returns the configured heartbeat
// interval, read at every call so a config reload reaches the agents.
func New(st State, eng Engine, interval func() time.Duration, clock func() time.Time, log zerolog.Logger) (*Daemon, error) {
	admin, err := st.AdminStates()
	if err != nil {
		return nil, fmt.Errorf("daemon: load admin states: %w", err)
	}
	homes, err := st.DomainHomes()
	if err != nil {
		return nil, fmt.Errorf("daemon: load domain homes: %w", err)
	}
	if clock == nil {
		clock = time.Now
	}
	d := &Daemon{st: st, eng: eng, clock: clock, interval: interval, log: log.With().Str("component", "daemon").Logger(),
		admin: admin, homes: map[string]store.DomainHome{}, byHost: map[string]map[string]store.DomainHome{}, rev: map[string]uint64{}}
	for _, h := range homes {
		d.index(h)
	}
	return d, nil
}

// Heartbeat passes a validated heartbeat to the detector, learns where the
// host's domains live, and answers with the host's admin state and
// assignment revision. A change of domain homes is applied to the cache
// under the lock and written to the store outside it, so hosts never queue
// behind each other's disk writes (the store batches concurrent writes).
func (d *Daemon) Heartbeat(hb heartbeat.Heartbeat) (heartbeat.Ack, error) {
	accepted, err := d.eng.Heartbeat(hb)
	if err != nil {
		return heartbeat.Ack{}, err
	}
	var put []store.DomainHome
	var remove []string
	var undo []store.DomainHome
	d.mu.Lock()
	// domains is null when the agent could not list them: unknown, not
	// "nothing runs here", which would forget every domain of the host. A
	// heartbeat the detector did not accept (replayed, late) describes the
	// past: a dead host's last word must not move a domain back to it.
	if accepted && hb.Health.Libvirt.OK && hb.Domains != nil {
		put, remove = evacuator.ObserveDomains(d.homes, d.byHost[hb.Host], hb.Host, hb.Domains, d.clock())
		undo = d.applyHomes(put, remove)
	}
	d.mu.Unlock()
	if len(put)+len(remove) > 0 {
		if err := d.st.UpdateDomainHomes(put, remove); err != nil {
			// Roll the cache back so the next heartbeat tries again; the
			// heartbeat itself counted.
			d.log.Error().Err(err).Str("host", hb.Host).Msg("domain homes: write failed; will retry on the next heartbeat")
			d.mu.Lock()
			d.revert(put, undo)
			d.mu.Unlock()
		} else {
			for _, h := range put {
				d.log.Info().Str("host", h.Host).Str("domain", h.Name).Str("uuid", h.UUID).Msg("domain lives here now")
			}
			for _, u := range remove {
				d.log.Info().Str("host", hb.Host).Str("uuid", u).Msg("domain no longer assigned")
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return heartbeat.Ack{AdminState: d.admin[hb.Host], AssignmentRevision: d.revision(hb.Host),
		HeartbeatInterval: heartbeat.Duration(d.interval())}, nil
}

// applyHomes updates the cache and invalidates the revisions it touches; it
// returns what it replaced or removed, for revert. Called with d.mu held.
func (d *Daemon) applyHomes(put []store.DomainHome, remove []string) (undo []store.DomainHome) {
	for _, u := range remove {
		if old, ok := d.homes[u]; ok {
			undo = append(undo, old)
			d.unindex(old)
		}
	}
	for _, h := range put {
		if old, ok := d.homes[h.UUID]; ok {
			undo = append(undo, old)
			d.unindex(old)
		}
		d.index(h)
	}
	return undo
}

// revert undoes applyHomes where nobody changed the entry since.
// Called with d.mu held.
func (d *Daemon) revert(put, undo []store.DomainHome) {
	for _, h := range put {
		if cur, ok := d.homes[h.UUID]; ok && cur == h {
			d.unindex(cur)
		}
	}
	for _, old := range undo {
		if _, ok := d.homes[old.UUID]; !ok {
			d.index(old)
		}
	}
}

func (d *Daemon) index(h store.DomainHome) {
	d.homes[h.UUID] = h
	m := d.byHost[h.Host]
	if m == nil {
		m = map[string]store.DomainHome{}
		d.byHost[h.Host] = m
	}
	m[h.UUID] = h
	delete(d.rev, h.Host)
}

func (d *Daemon) unindex(h store.DomainHome) {
	delete(d.homes, h.UUID)
	delete(d.byHost[h.Host], h.UUID)
	delete(d.rev, h.Host)
}

// revision is a hash of the host's assignment, so it changes exactly when
// the assignment does and needs no counter to persist. Called with d.mu held.
func (d *Daemon) revision(host string) uint64 {
	if r, ok := d.rev[host]; ok {
		return r
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00", d.admin[host])
	for _, a := range evacuator.HomesOf(d.byHost[host]) {
		fmt.Fprintf(h, "%s\x00%s\x00", a.UUID, a.Name)
	}
	r := h.Sum64()
	if r == 0 {
		r = 1 // 0 means "none held" to an agent
	}
	d.rev[host] = r
	return r
}

// Assignment is what should be true on host.
func (d *Daemon) Assignment(host string) (heartbeat.Assignment, error) {
	if _, ok := d.eng.Host(host); !ok {
		return heartbeat.Assignment{}, fmt.Errorf("assignment for %q: %w", host, ErrUnknownHost)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	doms := evacuator.HomesOf(d.byHost[host])
	return heartbeat.Assignment{Host: host, AdminState: d.admin[host], Revision: d.revision(host),
		HeartbeatInterval: heartbeat.Duration(d.interval()), Domains: doms}, nil
}

// HostStatus is the detector's view of a host plus its admin state.
type HostStatus struct {
	detector.HostStatus
	Admin   node.AdminState `json:"admin"`
	Domains int             `json:"domains"`
}

// Status is the whole cluster.
type Status struct {
	Storm detector.StormStatus `json:"storm"`
	Hosts []HostStatus         `json:"hosts"`
}

// Status reports every host.
func (d *Daemon) Status() Status {
	hs, storm := d.eng.Status()
	d.mu.Lock()
	defer d.mu.Unlock()
	out := Status{Storm: storm, Hosts: make([]HostStatus, 0, len(hs))}
	for _, h := range hs {
		out.Hosts = append(out.Hosts, HostStatus{HostStatus: h, Admin: d.admin[h.Name], Domains: len(d.byHost[h.Name])})
	}
	return out
}

// Host reports one host.
func (d *Daemon) Host(name string) (HostStatus, error) {
	h, ok := d.eng.Host(name)
	if !ok {
		return HostStatus{}, fmt.Errorf("host %q: %w", name, ErrUnknownHost)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return HostStatus{HostStatus: h, Admin: d.admin[name], Domains: len(d.byHost[name])}, nil
}

// History reads recorded transitions and verdicts.
func (d *Daemon) History(q store.Query) ([]store.Record, error) { return d.st.History(q) }

// SetAdminState changes a host's admin state, persisting it together with a
// history record. Agents learn it from their next heartbeat's ack.
func (d *Daemon) SetAdminState(host string, st node.AdminState, reason string) (store.Record, error) {
	if _, ok := d.eng.Host(host); !ok {
		return store.Record{}, fmt.Errorf("set admin state of %q: %w", host, ErrUnknownHost)
	}
	if reason == "" {
		return store.Record{}, errors.New("set admin state: a reason is required, it goes into the history")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	from := d.admin[host]
	rec, err := d.st.SetAdminState(host, st, store.Record{At: d.clock(), Host: host, Kind: "admin", From: from.String(), To: st.String(), Reason: reason})
	if err != nil {
		return store.Record{}, fmt.Errorf("set admin state of %s: %w", host, err)
	}
	d.admin[host] = st
	delete(d.rev, host)
	d.log.Warn().Str("host", host).Str("from", from.String()).Str("to", st.String()).Msg("admin state changed: " + reason)
	return rec, nil
}
