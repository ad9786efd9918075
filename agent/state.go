package agent

import (
	"sync"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
)

// Bounds on the heartbeat interval the daemon may set: a typo in its
// config must neither flood it nor make the host look dead.
const (
	minInterval = 10 * time.Millisecond
	maxInterval = 10 * time.Minute
)

// held is what the agent knows from the daemon: the last assignment it
// fetched and the last word on the admin state (an ack or an assignment,
// whichever came later). Safe for concurrent use.
type held struct {
	mu       sync.Mutex
	asg      *heartbeat.Assignment
	ack      *heartbeat.Ack // last ack, nil before the first
	admin    node.AdminState
	known    bool // admin is the daemon's word, not a default
	interval time.Duration
}

func newHeld(interval time.Duration) *held { return &held{interval: interval} }

// setAssignment stores a fetched assignment. It reports whether it changed
// anything reconcile cares about (first one, revision, admin state).
func (h *held) setAssignment(a heartbeat.Assignment) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed = h.asg == nil || h.asg.Revision != a.Revision || !h.known || h.admin != a.AdminState
	h.asg = &a
	h.admin, h.known = a.AdminState, true
	h.setInterval(time.Duration(a.HeartbeatInterval))
	return changed
}

// setAck stores a heartbeat's ack. It reports whether the assignment must
// be fetched (none held, or a different revision).
func (h *held) setAck(ack heartbeat.Ack) (refetch bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ack = &ack
	h.admin, h.known = ack.AdminState, true
	h.setInterval(time.Duration(ack.HeartbeatInterval))
	return h.asg == nil || h.asg.Revision != ack.AssignmentRevision
}

func (h *held) setInterval(d time.Duration) {
	if d <= 0 {
		return // not set by this daemon: keep what we have
	}
	h.interval = min(max(d, minInterval), maxInterval)
}

// current is the assignment reconcile may act on, with the latest admin
// state, or nil: when none was fetched yet, or when the last ack named
// another revision (the domain list may be stale: a domain rebuilt
// elsewhere must not be restarted here while the new list is on its way).
func (h *held) current() *heartbeat.Assignment {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.asg == nil || (h.ack != nil && h.ack.AssignmentRevision != h.asg.Revision) {
		return nil
	}
	a := *h.asg
	a.Domains = append([]heartbeat.AssignedDomain(nil), h.asg.Domains...)
	a.Evicted = append([]heartbeat.AssignedDomain(nil), h.asg.Evicted...)
	a.AdminState = h.admin
	return &a
}

// last is the assignment last fetched, stale or not; nil before the first.
func (h *held) last() *heartbeat.Assignment {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.asg == nil {
		return nil
	}
	a := *h.asg
	a.Domains = append([]heartbeat.AssignedDomain(nil), h.asg.Domains...)
	a.Evicted = append([]heartbeat.AssignedDomain(nil), h.asg.Evicted...)
	return &a
}

// adminState is the admin state as the agent knows it, "unknown" before
// the daemon said anything.
func (h *held) adminState() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.known {
		return "unknown"
	}
	return h.admin.String()
}

// revision is the held assignment's revision; ok is false when none is
// held.
func (h *held) revision() (rev uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.asg == nil {
		return 0, false
	}
	return h.asg.Revision, true
}

func (h *held) heartbeatInterval() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.interval
}
