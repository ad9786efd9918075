package recovery

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

type daemonHost = daemon.HostStatus

func (r *rig) set(host string, f func(h *daemonHost)) {
	r.cl.mu.Lock()
	defer r.cl.mu.Unlock()
	h := r.cl.hosts[host]
	f(&h)
	r.cl.hosts[host] = h
}

func TestFenceNowFencesDrainsAndEvacuatesNothing(t *testing.T) {
	r := newRig(t, true)
	r.set("a", func(h *daemonHost) { h.Monitor, h.Verdict = node.Normal, 0 })
	out, err := r.c.FenceNow(context.Background(), "a", "T1", "alice", "PSU smoking")
	require.NoError(t, err)
	assert.Contains(t, out, "ipmi verified power off")
	assert.Equal(t, []string{"a"}, r.fences, "fenced even though the detector sees it normal: the operator asked")
	h, _ := r.cl.Host("a")
	assert.Equal(t, node.Drained, h.Admin)
	assert.Empty(t, r.ev.reqs, "an operator's fence evacuates nothing; rebuild does")
	f, err := r.st.Fences()
	require.NoError(t, err)
	assert.Equal(t, store.FenceVerified, f["a"].State)
	assert.Equal(t, "T1", f["a"].CorrelationID)
	recs, err := r.st.History(store.Query{Host: "a", Kind: "fence"})
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.Contains(t, recs[0].Reason, "operator alice asked (task T1): PSU smoking")

	r2 := newRig(t, false)
	_, err = r2.c.FenceNow(context.Background(), "a", "T2", "alice", "")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "authentication refused")
	h, _ = r2.cl.Host("a")
	assert.NotEqual(t, node.Drained, h.Admin, "nothing proven, nothing drained")
}

func TestConfirmDown(t *testing.T) {
	r := newRig(t, false) // no fence level works: the case confirm-down is for
	_, err := r.c.ConfirmDown(context.Background(), "a", "T1", "alice", "", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "needs a reason")

	r.set("b", func(h *daemonHost) { h.Monitor = node.Normal })
	_, err = r.c.ConfirmDown(context.Background(), "b", "T1", "alice", "I pulled its plugs", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "not unreachable")
	assert.Empty(t, r.ev.reqs)

	var seen []evacuator.Task
	out, err := r.c.ConfirmDown(context.Background(), "a", "T2", "alice", "BMC dead; I pulled its plugs", func(t evacuator.Task) { seen = append(seen, t) })
	require.NoError(t, err)
	assert.Contains(t, out, "a confirmed down by alice: BMC dead; I pulled its plugs")
	assert.Contains(t, out, "evacuation of a done")
	assert.Empty(t, r.fences, "no fence level is run")
	f, err := r.st.Fences()
	require.NoError(t, err)
	assert.Equal(t, store.FenceConfirmed, f["a"].State)
	assert.True(t, f["a"].Proven())
	assert.Equal(t, "evac-a-T2", f["a"].Evacuation)
	h, _ := r.cl.Host("a")
	assert.Equal(t, node.Drained, h.Admin)
	require.Len(t, r.ev.reqs, 1, "the confirmation unlocks the evacuation")
	assert.Contains(t, r.ev.reqs[0].Fence, "confirmed down by an operator")
	assert.NotNil(t, r.ev.reqs[0].Progress)
	recs, err := r.st.History(store.Query{Host: "a", Kind: "fence"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "confirmed", recs[0].To)
	assert.Contains(t, recs[0].Reason, "alice")
	assert.Contains(t, r.alerts, "a:"+alert.FenceSucceeded)
}

func TestRebuildNeedsADrainedHostThatRunsNothing(t *testing.T) {
	r := newRig(t, true)
	ctx := context.Background()
	r.set("a", func(h *daemonHost) { h.Monitor, h.Admin, h.Active = node.Normal, node.Enabled, 0 })
	_, err := r.c.Rebuild(ctx, "a", "", "T1", "alice", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "rebuild only from drained")

	r.set("a", func(h *daemonHost) { h.Admin, h.Active = node.Drained, 2 })
	_, err = r.c.Rebuild(ctx, "a", "", "T1", "alice", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "still reports 2 running domain(s)")

	r.set("a", func(h *daemonHost) { h.Monitor = node.Unreachable })
	_, err = r.c.Rebuild(ctx, "a", "", "T1", "alice", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "fence or confirm-down first")

	// Gone silent: its last "nothing active" is no proof any more.
	r.set("a", func(h *daemonHost) { h.Monitor, h.Active = node.Suspect, 0 })
	_, err = r.c.Rebuild(ctx, "a", "", "T1", "alice", nil)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "a is suspect and no fence proves it off")
	assert.Empty(t, r.ev.reqs)

	// Drained by an operator, agent reports nothing running: rebuild.
	r.set("a", func(h *daemonHost) { h.Monitor, h.Active, h.LastHeartbeat = node.Normal, 0, t0 })
	out, err := r.c.Rebuild(ctx, "a", "c", "T1", "alice", nil)
	require.NoError(t, err)
	assert.Contains(t, out, "evacuation of a done")
	require.Len(t, r.ev.reqs, 1)
	assert.Equal(t, "rebuild-a-T1", r.ev.reqs[0].TaskID)
	assert.Equal(t, "c", r.ev.reqs[0].Target)
	assert.Contains(t, r.ev.reqs[0].Fence, "drained, and its agent reported no running domain")

	// Unreachable but proven off by a fence since its last heartbeat.
	r.set("b", func(h *daemonHost) { h.Admin, h.LastHeartbeat = node.Drained, t0.Add(-time.Minute) })
	require.NoError(t, r.st.PutFence(store.FenceRecord{Host: "b", CorrelationID: "x", State: store.FenceVerified, Level: "ipmi",
		Started: t0, Finished: t0}))
	_, err = r.c.Rebuild(ctx, "b", "", "T2", "alice", nil)
	require.NoError(t, err)
	require.Len(t, r.ev.reqs, 2)
	assert.Contains(t, r.ev.reqs[1].Fence, "ipmi verified power off")
}
