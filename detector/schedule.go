package detector

import (
	"slices"
	"sort"
	"sync"
	"time"
)

// Step's cost at 10,000 hosts. Ticking every host every 50 ms, each under
// its lock, plus a snapshot of every host for the storm guard, cost the
// daemon ~8 % of a core. Two summaries kept on every host's changes replace
// both passes, and neither may change a decision:
//
//   - The silent tally: the hosts whose Monitor.Silent holds, with their
//     SilentSince and rack. Storm's counts are the rack totals plus one pass
//     over the tally, which is small unless a storm is under way.
//   - The schedule: a host that Monitor.Quiet says is healthy and fresh, and
//     whose fence-readiness check is not due, sleeps until the earliest time
//     that can change (its heartbeat going overdue, or its readiness check
//     falling due). Step visits only the awake hosts and those whose time
//     has come. Anything that changes a sleeping host (touched) wakes it when
//     its time moved earlier or it is no longer quiet.
//
// Quiet's span has a lower end too: a heartbeat dated more than a window
// after now reads as clock skew. A sleeping host is therefore woken as well
// when a heartbeat moves that end past the Step time it went to sleep at,
// and Step visits every host when now goes backwards or the host set was
// reconfigured.

// summary is what touched keeps for Step, under its own lock so the
// heartbeat path never waits for a tick.
type summary struct {
	mu     sync.Mutex
	silent []silentHost
	// wakeups are sleeping hosts that must be visited at the next Step.
	wakeups []*hostEntry
}

type silentHost struct {
	h     *hostEntry
	since time.Time
	rack  int
}

// schedule is Step's own state; only Step and Reconfigure touch it, under
// stepMu.
type schedule struct {
	full    bool // visit every host at the next Step
	prevNow time.Time
	awake   []int32 // visited at every Step until they fall quiet
	sleep   wakeHeap
	// wakeAt is, per host index, the sleep entry that is current; entries
	// left in the heap by a host woken early are skipped.
	wakeAt []time.Time
	seen   []uint32
	epoch  uint32
	due    []int32
	racks  []rackCount
	woken  []*hostEntry
	// visits and early counts what Step did, for tests: hosts visited, and
	// hosts visited because touched woke them.
	visits, early int
}

// setRoster indexes the hosts for Step: order by name, racks by name. Called
// with stepMu and hostsMu held for writing.
func (e *Engine) setRoster(hosts map[string]*hostEntry) {
	order := make([]*hostEntry, 0, len(hosts))
	for _, h := range hosts {
		order = append(order, h)
	}
	sort.Slice(order, func(i, j int) bool { return order[i].cfg.Name < order[j].cfg.Name })
	var names []string
	for _, h := range order {
		names = append(names, h.cfg.Rack)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	totals := make([]int, len(names))
	for i, h := range order {
		r, _ := slices.BinarySearch(names, h.cfg.Rack)
		totals[r]++
		h.mu.Lock()
		h.idx, h.rack = int32(i), r
		e.touched(h)
		h.mu.Unlock()
	}
	e.order, e.rackNames, e.rackTotals = order, names, totals
	e.sched.full = true
}

// forget drops a host that a reconfiguration removed from the summaries;
// calls still in flight on it change nothing there.
func (e *Engine) forget(h *hostEntry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	if h.tallied {
		e.sum.mu.Lock()
		e.untally(h)
		e.sum.mu.Unlock()
		h.tallied = false
	}
}

// touched brings the summaries up to date after anything changed h's
// monitor or readiness bookkeeping. Called with h.mu held.
func (e *Engine) touched(h *hostEntry) {
	if h.gone {
		return
	}
	m := h.m
	silent := m.Silent()
	retally := silent != h.tallied || silent && (!m.SilentSince.Equal(h.talliedSince) || h.rack != h.talliedRack)
	wake := false
	if h.asleep {
		from, w, ok := h.wakeTime(h.sleepCfg)
		wake = !ok || w.Before(h.wakeAt) || from.After(h.sleptAt)
		h.asleep = !wake
	}
	if !retally && !wake {
		return
	}
	e.sum.mu.Lock()
	if retally {
		if h.tallied {
			e.untally(h)
		}
		if silent {
			h.silentPos = len(e.sum.silent)
			e.sum.silent = append(e.sum.silent, silentHost{h: h, since: m.SilentSince, rack: h.rack})
		}
		h.tallied, h.talliedSince, h.talliedRack = silent, m.SilentSince, h.rack
	}
	if wake {
		e.sum.wakeups = append(e.sum.wakeups, h)
	}
	e.sum.mu.Unlock()
}

// untally removes h from the silent tally. Called with e.sum.mu held.
func (e *Engine) untally(h *hostEntry) {
	last := len(e.sum.silent) - 1
	moved := e.sum.silent[last]
	e.sum.silent[h.silentPos] = moved
	moved.h.silentPos = h.silentPos
	e.sum.silent = e.sum.silent[:last]
	h.silentPos = -1
}

// wakeTime is when a quiet host needs its next visit: when its heartbeat
// goes overdue, or its readiness check falls due if that comes first; it
// needs one before from too (Monitor.Quiet). ok is false when the host is
// not quiet. Called with h.mu held.
func (h *hostEntry) wakeTime(mc MonitorConfig) (from, wake time.Time, ok bool) {
	from, until, ok := h.m.Quiet(mc)
	if !ok {
		return time.Time{}, time.Time{}, false
	}
	wake = until.Add(1) // Tick's fast path still holds at until itself
	if h.readinessPending() && h.nextCheck.Before(wake) {
		wake = h.nextCheck
	}
	return from, wake, true
}

// idleUntil reports whether Step at now would change nothing for h and
// start nothing (Tick takes its fast path, no readiness check is due), and
// until when that holds. Called with h.mu held.
func (h *hostEntry) idleUntil(now time.Time, mc MonitorConfig) (time.Time, bool) {
	from, until, ok := h.m.Quiet(mc)
	if !ok || now.Before(from) || now.After(until) {
		return time.Time{}, false
	}
	if h.readinessPending() && !now.Before(h.nextCheck) {
		return time.Time{}, false
	}
	_, wake, _ := h.wakeTime(mc)
	return wake, true
}

// readinessPending: a readiness check will be due at nextCheck (not
// disabled, none in flight). Called with h.mu held.
func (h *hostEntry) readinessPending() bool {
	return h.cfg.ReadinessInterval > 0 && !h.checking
}

// dueHosts lists, by index in name order, the hosts Step must visit at now.
// Called with stepMu held.
func (e *Engine) dueHosts(now time.Time, n int) []int32 {
	s := &e.sched
	// A sleeping host's span was checked against the Step it went to sleep
	// at; time going backwards voids that.
	full := s.full || len(s.wakeAt) != n || now.Before(s.prevNow)
	e.sum.mu.Lock()
	if !full {
		s.woken = append(s.woken, e.sum.wakeups...)
	}
	clear(e.sum.wakeups)
	e.sum.wakeups = e.sum.wakeups[:0]
	e.sum.mu.Unlock()
	s.prevNow = now
	s.due = s.due[:0]
	if full {
		s.full = false
		s.awake, s.sleep = s.awake[:0], s.sleep[:0]
		s.wakeAt = slices.Grow(s.wakeAt[:0], n)[:n]
		clear(s.wakeAt)
		s.seen = slices.Grow(s.seen[:0], n)[:n]
		clear(s.seen)
		for i := range n {
			s.due = append(s.due, int32(i))
		}
		s.visits += n
		return s.due
	}
	s.epoch++
	add := func(i int32) {
		if s.seen[i] != s.epoch {
			s.seen[i] = s.epoch
			s.due = append(s.due, i)
		}
	}
	for _, i := range s.awake {
		add(i)
	}
	s.awake = s.awake[:0]
	for _, h := range s.woken {
		if int(h.idx) < n && e.order[h.idx] == h {
			s.early++
			add(h.idx)
		}
	}
	clear(s.woken)
	s.woken = s.woken[:0]
	for len(s.sleep) > 0 && !now.Before(s.sleep[0].at) {
		w := s.sleep.pop()
		if s.wakeAt[w.idx].Equal(w.at) && !w.at.IsZero() {
			add(w.idx)
		}
	}
	slices.Sort(s.due)
	s.visits += len(s.due)
	return s.due
}

// settle puts a visited host to sleep until w when it is idle (idleUntil),
// or keeps it awake. Called with stepMu and h.mu held.
func (e *Engine) settle(h *hostEntry, now time.Time, mc MonitorConfig, w time.Time, idle bool) {
	s := &e.sched
	h.asleep = idle
	if !idle {
		s.wakeAt[h.idx] = time.Time{}
		s.awake = append(s.awake, h.idx)
		return
	}
	h.wakeAt, h.sleptAt, h.sleepCfg = w, now, mc
	s.wakeAt[h.idx] = w
	s.sleep.push(wakeEntry{at: w, idx: h.idx})
}

// stormCounts is Storm's input taken from the tally. Called with stepMu
// held.
func (e *Engine) stormCounts(g StormGuard, now time.Time) (stormCount, []rackCount) {
	s := &e.sched
	all := stormCount{total: len(e.order)}
	s.racks = s.racks[:0]
	for i, name := range e.rackNames {
		s.racks = append(s.racks, rackCount{name: name, stormCount: stormCount{total: e.rackTotals[i]}})
	}
	e.sum.mu.Lock()
	for _, sh := range e.sum.silent {
		all.addSilent(sh.since, g, now)
		s.racks[sh.rack].addSilent(sh.since, g, now)
	}
	e.sum.mu.Unlock()
	return all, s.racks
}

type wakeEntry struct {
	at  time.Time
	idx int32
}

// wakeHeap is a min-heap by time; container/heap would box every entry.
type wakeHeap []wakeEntry

func (q *wakeHeap) push(w wakeEntry) {
	*q = append(*q, w)
	h := *q
	for i := len(h) - 1; i > 0; {
		p := (i - 1) / 2
		if !h[i].at.Before(h[p].at) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (q *wakeHeap) pop() wakeEntry {
	h := *q
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		l, small := 2*i+1, i
		if l < len(h) && h[l].at.Before(h[small].at) {
			small = l
		}
		if r := l + 1; r < len(h) && h[r].at.Before(h[small].at) {
			small = r
		}
		if small == i {
			break
		}
		h[i], h[small] = h[small], h[i]
		i = small
	}
	*q = h
	return top
}
