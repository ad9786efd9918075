package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// SplitBrainKind is the history kind of a stale copy the daemon destroyed.
const SplitBrainKind = "split-brain"

// staleCopies destroys a VM's copy on the host it was evacuated from as
// soon as a heartbeat shows it active there (daemon.StaleCopy), through
// the daemon's own libvirt connection to that host, and raises a critical
// split_brain.detected when the VM's home runs it too.
//
// Why the daemon's libvirt connection and not the agent's eviction path:
// the agent already destroys evicted domains, but only once it holds a
// current assignment and only at its reconcile pace, and its libvirt calls
// queue behind libvirtd's own start-up work; the daemon acts on the first
// heartbeat that shows the copy, in one call. Both paths only ever touch a
// domain evicted from that host whose home is elsewhere, so they cannot
// disagree; the agent's path then undefines it. The copy on the VM's home
// is never touched (daemon.StaleCopies never names the home).
type staleCopies struct {
	hv      func(host string) (evacuator.Hypervisor, error)
	send    func(alert.Event)
	record  func(store.Record)
	cluster string
	timeout time.Duration
	now     func() time.Time
	log     zerolog.Logger

	mu       sync.Mutex
	inflight map[string]bool        // host/uuid being destroyed
	alerted  map[string]bool        // host/uuid alerted, until destroyed
	doubles  map[string]*doubleSeen // uuid/hostA/hostB
	wg       sync.WaitGroup
}

// doubleConfirm is how long sightings of one VM running on the same two
// hosts must span before it is alerted (a gap this long starts over), and
// doubleRealert how often it is alerted again while it goes on.
const (
	doubleConfirm = 30 * time.Second
	doubleRealert = 10 * time.Minute
)

func newStaleCopies(hv func(string) (evacuator.Hypervisor, error), send func(alert.Event), record func(store.Record),
	cluster string, log zerolog.Logger) *staleCopies {
	return &staleCopies{hv: hv, send: send, record: record, cluster: cluster, timeout: 10 * time.Second, now: time.Now,
		log: log.With().Str("component", "split-brain").Logger(), inflight: map[string]bool{}, alerted: map[string]bool{},
		doubles: map[string]*doubleSeen{}}
}

// seen is daemon.Daemon's OnStaleCopy: it returns at once; the destroy
// runs in the background, one at a time per copy (the next heartbeat
// retries a failed one).
func (s *staleCopies) seen(sc daemon.StaleCopy) {
	key := sc.Host + "/" + sc.UUID
	s.mu.Lock()
	if s.inflight[key] {
		s.mu.Unlock()
		return
	}
	s.inflight[key] = true
	first := !s.alerted[key]
	s.alerted[key] = true
	s.mu.Unlock()
	if first {
		ev := s.log.Error().Str("host", sc.Host).Str("home", sc.Home).Str("domain", sc.Name).Str("uuid", sc.UUID).Bool("home_active", sc.HomeActive)
		if sc.HomeActive {
			ev.Msg("split brain: VM active on two hosts; destroying the copy on the host it was evacuated from")
			s.send(alert.Event{Type: alert.SplitBrainDetected, Severity: alert.Critical, At: s.now(), Cluster: s.cluster, Host: sc.Host,
				Summary: fmt.Sprintf("VM %s (%s) is active on %s, the host it was evacuated from, and on its home %s; destroying the copy on %s",
					sc.Name, sc.UUID, sc.Host, sc.Home, sc.Host),
				Details: map[string]any{"uuid": sc.UUID, "name": sc.Name, "stale_host": sc.Host, "home": sc.Home}})
		} else {
			ev.Msg("stale copy: VM rebuilt elsewhere is active on the host it was evacuated from; destroying it")
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.destroy(sc, key)
	}()
}

func (s *staleCopies) destroy(sc daemon.StaleCopy, key string) {
	defer func() {
		s.mu.Lock()
		delete(s.inflight, key)
		s.mu.Unlock()
	}()
	log := s.log.With().Str("host", sc.Host).Str("home", sc.Home).Str("domain", sc.Name).Str("uuid", sc.UUID).Logger()
	hv, err := s.hv(sc.Host)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		err = hv.Destroy(ctx, sc.UUID)
		cancel()
	}
	switch k := hypervisor.KindOf(err); {
	case err == nil, k == hypervisor.KindNotFound, k == hypervisor.KindInvalid:
		s.mu.Lock()
		delete(s.alerted, key)
		s.mu.Unlock()
		to, how := "destroyed", "destroyed by the daemon"
		if err != nil { // gone or already stopped: the agent's eviction path got there first
			to, how = "already-stopped", "already stopped or undefined (by the host's agent)"
		}
		log.Warn().Err(err).Str("result", to).Msg("stale copy " + how)
		s.record(store.Record{At: s.now(), Host: sc.Host, Kind: SplitBrainKind, To: to,
			Reason: fmt.Sprintf("VM %s (%s), rebuilt on %s, was active on %s (home active: %v); its copy on %s was %s",
				sc.Name, sc.UUID, sc.Home, sc.Host, sc.HomeActive, sc.Host, how)})
	default:
		log.Error().Err(err).Msg("stale copy NOT destroyed; retrying at the host's next heartbeat")
	}
}

// double is daemon.Daemon's OnDoubleRun: a VM running on two hosts
// neither of which it was evacuated from. Which copy is stale is not known
// (an operator started one by hand, a migration tool misbehaved), so
// nothing is destroyed: a critical split_brain.detected names both hosts
// once the sightings span doubleConfirm (heartbeat listings are snapshots
// taken up to an interval apart, so the two ends of a live migration can
// both read "running" for a few heartbeats; a real double run lasts), and
// again every doubleRealert while it goes on.
func (s *staleCopies) double(dr daemon.DoubleRun) {
	a, b := min(dr.Host, dr.Home), max(dr.Host, dr.Home)
	key := dr.UUID + "/" + a + "/" + b
	now := s.now()
	s.mu.Lock()
	for k, st := range s.doubles { // forget ended ones
		if now.Sub(st.last) > doubleConfirm {
			delete(s.doubles, k)
		}
	}
	st, ok := s.doubles[key]
	if !ok {
		st = &doubleSeen{first: now}
		s.doubles[key] = st
	}
	st.last = now
	due := now.Sub(st.first) >= doubleConfirm && (st.alerted.IsZero() || now.Sub(st.alerted) >= doubleRealert)
	if due {
		st.alerted = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	s.log.Error().Str("host", dr.Host).Str("other_host", dr.Home).Str("domain", dr.Name).Str("uuid", dr.UUID).
		Msg("split brain: VM running on two hosts, neither evacuated from; nothing destroyed, an operator must stop one")
	s.send(alert.Event{Type: alert.SplitBrainDetected, Severity: alert.Critical, At: now, Cluster: s.cluster, Host: dr.Host,
		Summary: fmt.Sprintf("VM %s (%s) is running on %s and on %s; chime-fence cannot tell which copy is stale and destroys neither: stop one now",
			dr.Name, dr.UUID, a, b),
		Details: map[string]any{"uuid": dr.UUID, "name": dr.Name, "hosts": []string{a, b}}})
}

// doubleSeen is one VM seen running on the same two hosts.
type doubleSeen struct{ first, last, alerted time.Time }

// wait waits for the destroys in flight (shutdown, tests).
func (s *staleCopies) wait() { s.wg.Wait() }
