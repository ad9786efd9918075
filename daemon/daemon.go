// Package daemon composes the detector engine with the state the daemon
// owns besides it: each host's admin state and where each domain should run
// (the agents' assignments). It is what the HTTP API serves.
//
// Caller contract: New loads admin states, domain homes and evictions from
// the store; the engine must already be built on the same store. Every
// method is safe for concurrent use. Heartbeat is the hot path (every host,
// every interval): it takes one short lock and writes to the store only
// when a host's domains changed where they live.
//
// Evictions: Relocate moves a domain's home to another host and tells the
// old host (in its assignment's Evicted list) to destroy and undefine its
// copy. Until the old host's agent reports the domain gone, that host's
// reports of the domain are ignored (they never move its home back), and
// the eviction stays in the store across restarts. A report that lists
// such a domain active is a stale copy (splitbrain.go): OnStaleCopy's
// function is told at every such heartbeat, with whether the VM's home
// runs it too; a domain whose home is the reporting host never is one. A
// domain reported running (not paused) on two hosts neither of which it
// was evacuated from, both reports recent (3 heartbeat intervals), is a
// DoubleRun, told to OnDoubleRun's function.
package daemon

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"
	"strings"
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

// ErrHeartbeatRefused: the heartbeat cannot be dated (sent_at missing, or
// outside detection.heartbeat_max_clock_skew of the daemon's clock, or
// agent_start after sent_at). The error names the reason, for the agent's
// log: its clock needs fixing, or the beat is a replay.
var ErrHeartbeatRefused = errors.New("heartbeat refused")

// State is what Daemon needs from the store; *store.Store satisfies it.
type State interface {
	AdminStates() (map[string]node.AdminState, error)
	SetAdminState(host string, st node.AdminState, rec store.Record) (store.Record, error)
	DomainHomes() (map[string]store.DomainHome, error)
	UpdateDomainHomes(put []store.DomainHome, remove []string) error
	History(q store.Query) ([]store.Record, error)
	Append(recs ...store.Record) ([]store.Record, error)
	Relocate(home store.DomainHome, from string) error
	Evictions(host string) ([]store.Eviction, error)
	ClearEvictions(host string, uuids ...string) error
}

// EvictedKind is the history kind of "host X destroyed and undefined its
// copy of a domain that was rebuilt elsewhere".
const EvictedKind = "evicted"

// Engine is what Daemon needs from the detector; *detector.Engine satisfies it.
type Engine interface {
	Heartbeat(hb heartbeat.Heartbeat) (detector.Outcome, error)
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

	// homesMu orders store writes of homes and evictions: heartbeats share
	// it (their writes do not conflict), Relocate takes it alone, so a
	// heartbeat computed before a relocation cannot write its stale home
	// after it.
	homesMu sync.RWMutex

	mu         sync.Mutex
	admin      map[string]node.AdminState
	adminSince map[string]time.Time                   // when admin was set, zero if unknown
	homes      map[string]store.DomainHome            // by UUID
	byHost     map[string]map[string]store.DomainHome // host → UUID → home
	// active is how many domains each host's last accepted heartbeat
	// reported active (running, paused, ...); absent when unknown.
	active map[string]int
	// migSeen: per host, the local-migration IDs already recorded.
	migSeen map[string]map[string]bool
	evict   map[string]map[string]store.Eviction // host → UUID → eviction
	rev     map[string]uint64
	// listing is each host's last accepted domain listing (splitbrain.go:
	// stale copies, autostart).
	listing  map[string]Listing
	onStale  func(StaleCopy)
	onDouble func(DoubleRun)
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
	evs, err := st.Evictions("")
	if err != nil {
		return nil, fmt.Errorf("daemon: load evictions: %w", err)
	}
	// The admin state's time is its latest "admin" history record; a
	// pruned one leaves it zero, which only ever keeps an agent's local
	// drain marker longer.
	since := make(map[string]time.Time, len(admin))
	for host := range admin {
		recs, err := st.History(store.Query{Host: host, Kind: store.AdminKind, Limit: 1})
		if err != nil {
			return nil, fmt.Errorf("daemon: load admin state time of %s: %w", host, err)
		}
		if len(recs) == 1 {
			since[host] = recs[0].At
		}
	}
	if clock == nil {
		clock = time.Now
	}
	d := &Daemon{st: st, eng: eng, clock: clock, interval: interval, log: log.With().Str("component", "daemon").Logger(),
		admin: admin, adminSince: since, homes: map[string]store.DomainHome{}, byHost: map[string]map[string]store.DomainHome{}, active: map[string]int{},
		migSeen: map[string]map[string]bool{},
		evict:   map[string]map[string]store.Eviction{}, rev: map[string]uint64{}, listing: map[string]Listing{}}
	for _, h := range homes {
		d.index(h)
	}
	for _, e := range evs {
		d.addEviction(e)
	}
	return d, nil
}

// Heartbeat passes a validated heartbeat to the detector, learns where the
// host's domains live, and answers with the host's admin state and
// assignment revision. A change of domain homes is applied to the cache
// under the lock and written to the store outside it, so hosts never queue
// behind each other's disk writes (the store batches concurrent writes).
func (d *Daemon) Heartbeat(hb heartbeat.Heartbeat) (heartbeat.Ack, error) {
	o, err := d.eng.Heartbeat(hb)
	if err != nil {
		return heartbeat.Ack{}, err
	}
	if o.Intake == detector.IntakeSkewed {
		return heartbeat.Ack{}, fmt.Errorf("%w: %s", ErrHeartbeatRefused, o.Reason)
	}
	accepted := o.Accepted()
	var put []store.DomainHome
	var remove []string
	var undo []store.DomainHome
	var gone []store.Eviction
	var stale []StaleCopy
	var double []DoubleRun
	var onStale func(StaleCopy)
	var onDouble func(DoubleRun)
	d.homesMu.RLock()
	defer d.homesMu.RUnlock()
	d.mu.Lock()
	// domains is null when the agent could not list them: unknown, not
	// "nothing runs here", which would forget every domain of the host. A
	// heartbeat the detector did not accept (replayed, late) describes the
	// past: a dead host's last word must not move a domain back to it.
	if accepted && hb.Health.Libvirt.OK && hb.Domains != nil {
		// Before ObserveDomains: a domain running here moves its home here.
		now, maxAge := d.clock(), 3*d.interval()
		stale = StaleCopies(hb.Host, hb.Domains, d.evict[hb.Host], d.homes, d.listing, now, maxAge)
		double = DoubleRuns(hb.Host, hb.Domains, d.evict[hb.Host], d.homes, d.listing, now, maxAge)
		onStale, onDouble = d.onStale, d.onDouble
		d.listing[hb.Host] = Listing{At: now, Domains: hb.Domains}
		var doms []heartbeat.Domain
		doms, gone = splitEvicted(hb.Domains, d.evict[hb.Host])
		put, remove = evacuator.ObserveDomains(d.homes, d.byHost[hb.Host], hb.Host, doms, d.clock(), d.admin[hb.Host] == node.Drained)
		undo = d.applyHomes(put, remove)
		n := 0
		for _, dom := range hb.Domains {
			if dom.State.Active() {
				n++
			}
		}
		d.active[hb.Host] = n
	}
	d.mu.Unlock()
	if onStale != nil {
		for _, sc := range stale {
			onStale(sc)
		}
	}
	if onDouble != nil {
		for _, dr := range double {
			onDouble(dr)
		}
	}
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
	if len(gone) > 0 {
		d.clearEvictions(hb.Host, gone)
	}
	var seen []string
	if accepted && len(hb.LocalMigrations) > 0 {
		seen = d.localMigrations(hb)
	}
	if accepted && hb.LocalDrain != nil {
		d.adoptLocalDrain(hb.Host, *hb.LocalDrain)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return heartbeat.Ack{AdminState: d.admin[hb.Host], AssignmentRevision: d.revision(hb.Host),
		HeartbeatInterval: heartbeat.Duration(d.interval()), LocalMigrationsSeen: seen,
		Outcome: o.Intake.String(), OutcomeDetail: o.Reason}, nil
}

// adoptLocalDrain makes the daemon's admin state agree with a drain the
// agent did by itself (chime-agent drain, while the control plane could not
// reach it): the host becomes drained, with a history record, unless an
// admin state was set after the drain (which the agent also obeys: that is
// what lifts its marker). A marker with no time (unreadable) counts as new.
func (d *Daemon) adoptLocalDrain(host string, ld heartbeat.LocalDrain) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.admin[host] == node.Drained {
		return
	}
	if since := d.adminSince[host]; !ld.Since.IsZero() && !since.IsZero() && !since.Before(ld.Since) {
		return
	}
	reason := fmt.Sprintf("drained locally by chime-agent on %s (%s) at %s, reported by its heartbeat", host, ld.By, ld.Since.Format(time.RFC3339))
	if _, err := d.setAdminLocked(host, node.Drained, reason); err != nil {
		d.log.Error().Err(err).Str("host", host).Msg("the agent drained its host, but the admin state could not be recorded; next heartbeat retries")
	}
}

// LocalMigrationKind is the history kind of a migration an agent ran by
// itself (chime-agent migrate, while the daemon could not reach it).
const LocalMigrationKind = "local-migration"

// localMigrations records the agent's own migrations in the history, once
// each, and returns the IDs to acknowledge: only those recorded, so a
// failed write is sent again. The new home needs no action here: the
// destination's agent reports the domain running and the home follows.
func (d *Daemon) localMigrations(hb heartbeat.Heartbeat) []string {
	d.mu.Lock()
	known := d.migSeen[hb.Host]
	d.mu.Unlock()
	var recs []store.Record
	var ids []string
	for _, m := range hb.LocalMigrations {
		ids = append(ids, m.ID)
		if known[m.ID] {
			continue
		}
		r := store.Record{At: d.clock(), Host: hb.Host, Kind: LocalMigrationKind, To: "moved",
			Reason: fmt.Sprintf("chime-agent on %s migrated %s (%s) to %s over %s at %s", hb.Host, m.Name, m.UUID, m.Dest, m.Interface,
				m.At.Format(time.RFC3339))}
		if !m.Moved {
			r.To, r.Reason = "failed", fmt.Sprintf("chime-agent on %s could not migrate %s (%s) to %s over %s: %s", hb.Host, m.Name, m.UUID,
				m.Dest, m.Interface, m.Error)
		}
		recs = append(recs, r)
	}
	if len(recs) > 0 {
		if _, err := d.st.Append(recs...); err != nil {
			d.log.Error().Err(err).Str("host", hb.Host).Msg("agent's local migrations not recorded; not acknowledged, it sends them again")
			return nil
		}
		for _, r := range recs {
			d.log.Warn().Str("host", hb.Host).Str("result", r.To).Msg(r.Reason)
		}
	}
	// The agent resends until acknowledged: the IDs of this heartbeat are
	// all that can come again, so the set never outgrows the agent's list.
	now := make(map[string]bool, len(ids))
	for _, id := range ids {
		now[id] = true
	}
	d.mu.Lock()
	d.migSeen[hb.Host] = now
	d.mu.Unlock()
	return ids
}

// splitEvicted drops the domains host must get rid of from its report (they
// run elsewhere now: a copy still listed here must not move its home back)
// and returns the evictions whose domain the report no longer lists.
func splitEvicted(doms []heartbeat.Domain, evicted map[string]store.Eviction) (kept []heartbeat.Domain, gone []store.Eviction) {
	if len(evicted) == 0 {
		return doms, nil
	}
	listed := make(map[string]bool, len(evicted))
	kept = make([]heartbeat.Domain, 0, len(doms))
	for _, d := range doms {
		if _, ok := evicted[d.UUID]; ok {
			listed[d.UUID] = true
			continue
		}
		kept = append(kept, d)
	}
	for u, e := range evicted {
		if !listed[u] {
			gone = append(gone, e)
		}
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].UUID < gone[j].UUID })
	return kept, gone
}

// clearEvictions forgets evictions host's agent carried out, in the store
// first; a failed write is retried at the next heartbeat. Called with
// homesMu read-locked (Relocate cannot interleave).
func (d *Daemon) clearEvictions(host string, gone []store.Eviction) {
	uuids := make([]string, len(gone))
	for i, e := range gone {
		uuids[i] = e.UUID
	}
	if err := d.st.ClearEvictions(host, uuids...); err != nil {
		d.log.Error().Err(err).Str("host", host).Strs("uuids", uuids).Msg("evictions carried out but not cleared: write failed; will retry on the next heartbeat")
		return
	}
	d.mu.Lock()
	for _, e := range gone {
		delete(d.evict[host], e.UUID)
	}
	if len(d.evict[host]) == 0 {
		delete(d.evict, host)
	}
	delete(d.rev, host)
	d.mu.Unlock()
	now := d.clock()
	recs := make([]store.Record, len(gone))
	for i, e := range gone {
		recs[i] = store.Record{At: now, Host: host, Kind: EvictedKind, To: e.UUID,
			Reason: fmt.Sprintf("agent destroyed and undefined domain %s (%s), rebuilt elsewhere at %s", e.Name, e.UUID, e.Since.UTC().Format(time.RFC3339))}
		d.log.Info().Str("host", host).Str("domain", e.Name).Str("uuid", e.UUID).Msg("evicted domain is gone from the host")
	}
	if _, err := d.st.Append(recs...); err != nil {
		d.log.Error().Err(err).Str("host", host).Strs("uuids", uuids).Msg("evictions cleared, history record not written")
	}
}

func (d *Daemon) addEviction(e store.Eviction) {
	m := d.evict[e.Host]
	if m == nil {
		m = map[string]store.Eviction{}
		d.evict[e.Host] = m
	}
	m[e.UUID] = e
	delete(d.rev, e.Host)
}

// Relocate records that domain uuid now lives on host to and that host
// from must destroy and undefine its copy: persisted first (home and
// eviction in one transaction), then applied. Both hosts' assignment
// revisions change. Call it once the domain is defined on to: a heartbeat
// from to that does not list the domain forgets its home again.
func (d *Daemon) Relocate(uuid, name, from, to string, at time.Time) error {
	var errs []error
	if !heartbeat.ValidUUID(uuid) {
		errs = append(errs, fmt.Errorf("domain UUID %q is not a lower-case canonical UUID", uuid))
	}
	for _, h := range []struct{ role, name string }{{"source", from}, {"target", to}} {
		if _, ok := d.eng.Host(h.name); !ok {
			errs = append(errs, fmt.Errorf("%s host %q: %w", h.role, h.name, ErrUnknownHost))
		}
	}
	if from == to {
		errs = append(errs, fmt.Errorf("source and target are both host %q", from))
	}
	if at.IsZero() {
		errs = append(errs, errors.New("time is zero"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("relocate domain %s (%s) from %s to %s: %w", name, uuid, from, to, err)
	}
	home := store.DomainHome{UUID: uuid, Name: name, Host: to, Since: at.UTC().Round(0)}
	d.homesMu.Lock()
	defer d.homesMu.Unlock()
	if err := d.st.Relocate(home, from); err != nil {
		return fmt.Errorf("relocate domain %s (%s) from %s to %s: %w", name, uuid, from, to, err)
	}
	d.mu.Lock()
	if old, ok := d.homes[uuid]; ok {
		d.unindex(old)
	}
	d.index(home)
	d.addEviction(store.Eviction{Host: from, UUID: uuid, Name: name, Since: home.Since})
	if m := d.evict[to]; m != nil {
		delete(m, uuid)
		if len(m) == 0 {
			delete(d.evict, to)
		}
		delete(d.rev, to)
	}
	d.mu.Unlock()
	d.log.Warn().Str("host", from).Str("to", to).Str("domain", name).Str("uuid", uuid).
		Msg("domain relocated; the old host must destroy and undefine its copy")
	return nil
}

// Homes lists the domains whose home is host, sorted by name then UUID.
func (d *Daemon) Homes(host string) []store.DomainHome {
	d.mu.Lock()
	defer d.mu.Unlock()
	return byNameThenUUID(d.byHost[host], func(h store.DomainHome) (string, string) { return h.Name, h.UUID })
}

// Evictions lists host's domains that run elsewhere and that its agent
// has not yet reported gone, sorted by name.
func (d *Daemon) Evictions(host string) []store.Eviction {
	d.mu.Lock()
	defer d.mu.Unlock()
	return byNameThenUUID(d.evict[host], func(e store.Eviction) (string, string) { return e.Name, e.UUID })
}

// byNameThenUUID lists m's values sorted by domain name, then UUID.
func byNameThenUUID[T any](m map[string]T, key func(T) (name, uuid string)) []T {
	out := slices.Collect(maps.Values(m))
	slices.SortFunc(out, func(a, b T) int {
		an, au := key(a)
		bn, bu := key(b)
		return cmp.Or(strings.Compare(an, bn), strings.Compare(au, bu))
	})
	return out
}

// evictedOf is host's Evicted list, leaving out any domain whose home is
// host (the store never has both; a UUID in both lists would make the
// agent refuse the assignment). Called with d.mu held.
func (d *Daemon) evictedOf(host string) []heartbeat.AssignedDomain {
	out := make([]heartbeat.AssignedDomain, 0, len(d.evict[host]))
	for u, e := range d.evict[host] {
		if _, home := d.byHost[host][u]; home {
			continue
		}
		out = append(out, heartbeat.AssignedDomain{UUID: u, Name: e.Name})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].UUID < out[j].UUID
	})
	return out
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
	if s := d.adminSince[host]; !s.IsZero() {
		fmt.Fprintf(h, "since\x00%d\x00", s.UnixNano())
	}
	for _, a := range evacuator.HomesOf(d.byHost[host]) {
		fmt.Fprintf(h, "%s\x00%s\x00", a.UUID, a.Name)
	}
	for _, a := range d.evictedOf(host) {
		fmt.Fprintf(h, "evicted\x00%s\x00%s\x00", a.UUID, a.Name)
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
	return heartbeat.Assignment{Host: host, AdminState: d.admin[host], AdminSince: d.adminSince[host], Revision: d.revision(host),
		HeartbeatInterval: heartbeat.Duration(d.interval()), Domains: doms, Evicted: d.evictedOf(host)}, nil
}

// HostStatus is the detector's view of a host plus its admin state.
type HostStatus struct {
	detector.HostStatus
	Admin node.AdminState `json:"admin"`
	// Domains is how many domains have this host as their home (running
	// there, or stopped there and not moved).
	Domains int `json:"domains"`
	// Active is how many domains the host's last heartbeat reported
	// active (running, paused, starting); -1 before one listed them.
	Active int `json:"active"`
	// NotEvacuable, when set, says why some of the host's domains could
	// not be rebuilt elsewhere if it failed now (e.g. no saved XML yet:
	// not captured since the daemon started, and not in the mirror). The
	// API fills it; the daemon itself leaves it empty.
	NotEvacuable string `json:"not_evacuable,omitempty"`
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
		out.Hosts = append(out.Hosts, d.hostStatus(h))
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
	return d.hostStatus(h), nil
}

// hostStatus adds the daemon's part to the detector's; d.mu held.
func (d *Daemon) hostStatus(h detector.HostStatus) HostStatus {
	active, ok := d.active[h.Name]
	if !ok {
		active = -1
	}
	return HostStatus{HostStatus: h, Admin: d.admin[h.Name], Domains: len(d.byHost[h.Name]), Active: active}
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
	return d.setAdminLocked(host, st, reason)
}

// setAdminLocked persists host's admin state with its history record and
// updates the cache; d.mu held.
func (d *Daemon) setAdminLocked(host string, st node.AdminState, reason string) (store.Record, error) {
	from := d.admin[host]
	rec, err := d.st.SetAdminState(host, st, store.Record{At: d.clock(), Host: host, Kind: "admin", From: from.String(), To: st.String(), Reason: reason})
	if err != nil {
		return store.Record{}, fmt.Errorf("set admin state of %s: %w", host, err)
	}
	d.admin[host] = st
	d.adminSince[host] = rec.At
	delete(d.rev, host)
	d.log.Warn().Str("host", host).Str("from", from.String()).Str("to", st.String()).Msg("admin state changed: " + reason)
	return rec, nil
}
