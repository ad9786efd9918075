package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

func evicting(asg heartbeat.Assignment, uuids ...string) heartbeat.Assignment {
	for _, u := range uuids {
		asg.Evicted = append(asg.Evicted, heartbeat.AssignedDomain{UUID: u, Name: "vm-" + u[len(u)-1:]})
	}
	return asg
}

func uuids(doms []heartbeat.Domain) []string {
	var out []string
	for _, d := range doms {
		out = append(out, d.UUID)
	}
	return out
}

// TestEvictedCleanedUpBeforeTheFirstHeartbeat: a fenced host comes back
// drained with the stale copy of u2 running (it started before the agent)
// and u3 defined; the agent fetches its assignment, destroys u2, undefines
// both, and only then sends its first heartbeat, which lists neither.
func TestEvictedCleanedUpBeforeTheFirstHeartbeat(t *testing.T) {
	rec := &recorder{}
	u3shut := crashedVM(u3)
	u3shut.Reason = "unknown" // after a power cycle
	hv := &fakeHV{rec: rec, doms: []hypervisor.Domain{crashedVM(u1), runningVM(u2), u3shut}}
	asg := evicting(enabledWith(1, u1), u2, u3)
	asg.AdminState = node.Drained
	d := &fakeDaemon{asg: asg, rec: rec}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 3 }, wait, 5*time.Millisecond)
	r.stop(t)
	calls := rec.calls()
	first := slices.Index(calls, "heartbeat 1")
	require.GreaterOrEqual(t, first, 0)
	assert.Equal(t, []string{"assignment", "destroy " + u2, "undefine " + u2, "undefine " + u3}, calls[:first],
		"the assignment first, then the cleanup, then the first heartbeat")
	assert.Equal(t, []string{u1}, uuids(d.heartbeats()[0].Domains), "the first report already lacks the evicted domains")
	assert.Empty(t, d.heartbeats()[0].Health.Evictions)
	assert.Empty(t, d.heartbeats()[0].Health.Fault())
	assert.Equal(t, 1, countPrefix(calls, "destroy "), "done once; later rounds find nothing left")
	assert.Empty(t, hv.started(), "drained: nothing started")
	assert.Len(t, r.logs.lines(map[string]string{"component": "evict", "uuid": u2, "message": "evicted domain destroyed: it runs on another host now"}), 1)
	assert.Len(t, r.logs.lines(map[string]string{"component": "evict", "uuid": u3, "message": "evicted domain undefined"}), 1)
}

func countPrefix(calls []string, p string) int {
	n := 0
	for _, c := range calls {
		if strings.HasPrefix(c, p) {
			n++
		}
	}
	return n
}

// TestEvictionFailureIsAHealthFault: libvirtd refuses the destroy; the agent
// heartbeats anyway, names the domain and the error in its health (so the
// daemon shows error), retries every round, and never undefines a domain
// it could not stop. Once libvirtd cooperates the fault clears.
func TestEvictionFailureIsAHealthFault(t *testing.T) {
	rec := &recorder{}
	down := &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "n1", Step: "libvirt: destroy " + u2, Err: errors.New("connection refused")}
	hv := &fakeHV{rec: rec, doms: []hypervisor.Domain{runningVM(u2), runningVM(u3)}, destroyErr: map[string]error{"": down}}
	asg := evicting(heartbeat.Assignment{Host: "n1", AdminState: node.Drained, Revision: 1}, u2, u3)
	d := &fakeDaemon{asg: asg, rec: rec}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 1 }, wait, 5*time.Millisecond)
	hb := d.heartbeats()[0]
	require.Len(t, hb.Health.Evictions, 2)
	assert.Equal(t, heartbeat.Check{Name: "vm-2 " + u2, Detail: "destroy: " + down.Error()}, hb.Health.Evictions[0])
	assert.Equal(t, "vm-3 "+u3, hb.Health.Evictions[1].Name)
	assert.Contains(t, hb.Health.Evictions[1].Detail, "connection refused", "libvirtd down: the rest are not tried, the same cause is reported")
	assert.Contains(t, hb.Health.Fault(), "evicted domain vm-2 "+u2+" not cleaned up")
	assert.Equal(t, []string{"assignment", "destroy " + u2}, rec.calls()[:2], "u3 not tried while libvirtd is down")

	n := countPrefix(rec.calls(), "destroy ")
	require.Eventually(t, func() bool { return countPrefix(rec.calls(), "destroy ") >= n+3 }, wait, 5*time.Millisecond, "retried every round")
	assert.Zero(t, countPrefix(rec.calls(), "undefine "), "never undefined while it may still run")

	hv.set(func(f *fakeHV) { f.destroyErr = nil })
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		if len(hbs) == 0 {
			return false
		}
		last := hbs[len(hbs)-1]
		return len(last.Health.Evictions) == 0 && last.Domains != nil && len(last.Domains) == 0
	}, wait, 5*time.Millisecond, "cleaned up: fault gone, domains gone")
	assert.Empty(t, hv.domains())
	r.stop(t)
}

func TestEvictionListingFailureIsAFault(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u2)}, listErr: errors.New("libvirt: list: timeout")}
	d := &fakeDaemon{asg: evicting(heartbeat.Assignment{Host: "n1", AdminState: node.Drained, Revision: 1}, u2)}
	newRig(t, hv, d, nil)
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 1 }, wait, 5*time.Millisecond)
	hb := d.heartbeats()[0]
	require.Len(t, hb.Health.Evictions, 1)
	assert.Equal(t, "cannot list domains: libvirt: list: timeout", hb.Health.Evictions[0].Detail)
}

// TestEvictedByALaterAssignment: a domain running here is relocated while
// the agent runs (rev 2 evicts it); it is destroyed and undefined, and a
// later crash-like state never brings it back.
func TestEvictedByALaterAssignment(t *testing.T) {
	rec := &recorder{}
	hv := &fakeHV{rec: rec, doms: []hypervisor.Domain{runningVM(u1), runningVM(u2)}}
	d := &fakeDaemon{asg: enabledWith(1, u1, u2), rec: rec}
	r := newRig(t, hv, d, nil)
	require.Eventually(t, func() bool { return d.fetchCount() >= 1 && len(d.heartbeats()) >= 2 }, wait, 5*time.Millisecond)

	d.set(func(d *fakeDaemon) { d.asg = evicting(enabledWith(2, u2), u1) })
	require.Eventually(t, func() bool { return len(hv.domains()) == 1 }, wait, 5*time.Millisecond)
	assert.Equal(t, u2, hv.domains()[0].UUID)
	calls := rec.calls()
	assert.Less(t, slices.Index(calls, "destroy "+u1), slices.Index(calls, "undefine "+u1))
	hv.crash(u2)
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
	r.stop(t)
	assert.Equal(t, []string{u2}, hv.started(), "only the domain still assigned here")
}

func TestPlanNeverStartsEvicted(t *testing.T) {
	a := enabledWith(1, u1, u2)
	a = evicting(a, u2) // a daemon bug: both lists
	acts := Plan(&a, []hypervisor.Domain{crashedVM(u1), crashedVM(u2)})
	require.Len(t, acts, 1)
	assert.Equal(t, Action{Kind: Start, UUID: u1, Name: "vm-1", Reason: "shut off (crashed): QEMU died or the host restarted"}, acts[0])
}

func TestEvictionHealth(t *testing.T) {
	evicted := []heartbeat.AssignedDomain{{UUID: u1, Name: "vm-1"}, {UUID: u2, Name: "vm-2"}}
	failed := []heartbeat.Check{{Name: "vm-1 " + u1, Detail: "destroy: timeout"}}
	listed := []heartbeat.Domain{{UUID: u1, Name: "vm-1"}, {UUID: u2, Name: "vm-2"}, {UUID: u3, Name: "vm-3"}}

	assert.Equal(t, []heartbeat.Check{
		{Name: "vm-1 " + u1, Detail: "destroy: timeout"},
		{Name: "vm-2 " + u2, Detail: "still defined here; cleanup pending"},
	}, evictionHealth(failed, evicted, listed), "a listed evicted domain is a fault even before its cleanup ran; one per domain")
	assert.Empty(t, evictionHealth(nil, evicted, []heartbeat.Domain{{UUID: u3}}), "gone: no fault")
	assert.Equal(t, failed, evictionHealth(failed, evicted, nil), "listing unknown: the cleanup's own failures")
	assert.Empty(t, evictionHealth(nil, nil, listed), "nothing evicted")
}

// TestEvictedListedByChecksIsAFault: the reconcile connection cannot list
// (the cleanup fails) while the health check's connection lists the stale
// copy: the heartbeat lists it with exactly one fault naming it.
func TestEvictedListedByChecksIsAFault(t *testing.T) {
	checks := &fakeHV{doms: []hypervisor.Domain{runningVM(u2)}}
	hv := &fakeHV{listErr: errors.New("libvirt: list: timeout")}
	d := &fakeDaemon{asg: evicting(heartbeat.Assignment{Host: "n1", AdminState: node.Drained, Revision: 1}, u2)}
	newRig(t, hv, d, func(c *Config) { c.Checks = checks })
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 2 }, wait, 5*time.Millisecond)
	for _, hb := range d.heartbeats() {
		assert.Equal(t, []string{u2}, uuids(hb.Domains))
		require.Len(t, hb.Health.Evictions, 1, "seq %d", hb.Seq)
		assert.Equal(t, "vm-2 "+u2, hb.Health.Evictions[0].Name)
		assert.Contains(t, hb.Health.Fault(), "evicted domain vm-2 "+u2+" not cleaned up")
	}
}
