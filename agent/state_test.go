package agent

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/node"
)

func TestHeldCurrent(t *testing.T) {
	h := newHeld(5 * time.Second)
	assert.Nil(t, h.current(), "nothing fetched: unknown")
	assert.Equal(t, "unknown", h.adminState())
	_, ok := h.revision()
	assert.False(t, ok)

	// An ack before any assignment: the admin state is known, but there is
	// no domain list to act on.
	assert.True(t, h.setAck(heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 3}), "no assignment held: fetch")
	assert.Equal(t, "enabled", h.adminState())
	assert.Nil(t, h.current())

	asg := heartbeat.Assignment{Host: "n1", AdminState: node.Enabled, Revision: 3,
		Domains: []heartbeat.AssignedDomain{{UUID: u1, Name: "vm1"}}}
	assert.True(t, h.setAssignment(asg), "first assignment")
	cur := h.current()
	require.NotNil(t, cur)
	assert.Equal(t, node.Enabled, cur.AdminState)
	cur.Domains[0].UUID = u2
	assert.Equal(t, u1, h.current().Domains[0].UUID, "current returns a copy")
	assert.False(t, h.setAssignment(asg), "same revision and admin state: nothing changed")

	// Same revision acked: nothing to fetch.
	assert.False(t, h.setAck(heartbeat.Ack{AdminState: node.Enabled, AssignmentRevision: 3}))
	require.NotNil(t, h.current())

	// The daemon drained the host (new revision): from that ack on, nothing
	// may start, although the drained assignment has not arrived yet.
	assert.True(t, h.setAck(heartbeat.Ack{AdminState: node.Drained, AssignmentRevision: 4}))
	assert.Nil(t, h.current(), "stale assignment counts as unknown")
	assert.Equal(t, "drained", h.adminState())

	// An older fetch completing late does not make the stale list current.
	assert.True(t, h.setAssignment(asg))
	assert.Nil(t, h.current())

	asg4 := heartbeat.Assignment{Host: "n1", AdminState: node.Drained, Revision: 4}
	h.setAssignment(asg4)
	cur = h.current()
	require.NotNil(t, cur)
	assert.Equal(t, node.Drained, cur.AdminState)
	rev, ok := h.revision()
	assert.True(t, ok)
	assert.Equal(t, uint64(4), rev)
}

func TestHeldInterval(t *testing.T) {
	h := newHeld(5 * time.Second)
	assert.Equal(t, 5*time.Second, h.heartbeatInterval(), "flag value before the daemon answers")
	h.setAck(heartbeat.Ack{HeartbeatInterval: heartbeat.Duration(2 * time.Second)})
	assert.Equal(t, 2*time.Second, h.heartbeatInterval())
	h.setAck(heartbeat.Ack{}) // daemon does not say: keep
	assert.Equal(t, 2*time.Second, h.heartbeatInterval())
	h.setAssignment(heartbeat.Assignment{Host: "n1", HeartbeatInterval: heartbeat.Duration(time.Millisecond)})
	assert.Equal(t, minInterval, h.heartbeatInterval(), "clamped")
	h.setAck(heartbeat.Ack{HeartbeatInterval: heartbeat.Duration(24 * time.Hour)})
	assert.Equal(t, maxInterval, h.heartbeatInterval(), "clamped")
}

func ackFor(s node.AdminState, rev uint64) heartbeat.Ack {
	return heartbeat.Ack{AdminState: s, AssignmentRevision: rev}
}
