package evacuator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

func TestObserveDomains(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	before := now.Add(-time.Hour)
	const u1, u2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
	home := func(u, host string) map[string]store.DomainHome {
		return map[string]store.DomainHome{u: {UUID: u, Name: "vm", Host: host, Since: before}}
	}
	both := func(host1, host2 string) map[string]store.DomainHome {
		return map[string]store.DomainHome{u1: {UUID: u1, Name: "vm", Host: host1, Since: before}, u2: {UUID: u2, Name: "vm", Host: host2, Since: before}}
	}
	dom := func(u string, st hypervisor.DomainState, reason string) []heartbeat.Domain {
		return []heartbeat.Domain{{UUID: u, Name: "vm", State: st, Reason: reason}}
	}
	cases := []struct {
		name    string
		homes   map[string]store.DomainHome
		doms    []heartbeat.Domain
		put     []store.DomainHome
		remove  []string
		drained bool
	}{
		{"new running domain gets a home", nil, dom(u1, hypervisor.StateRunning, ""), []store.DomainHome{{UUID: u1, Name: "vm", Host: "h1", Since: now}}, nil, false},
		{"running where it lives: nothing to write", home(u1, "h1"), dom(u1, hypervisor.StateRunning, ""), nil, nil, false},
		{"paused counts as running", nil, dom(u1, hypervisor.StatePaused, ""), []store.DomainHome{{UUID: u1, Name: "vm", Host: "h1", Since: now}}, nil, false},
		{"running on a new host moves the home", home(u1, "h2"), dom(u1, hypervisor.StateRunning, ""), []store.DomainHome{{UUID: u1, Name: "vm", Host: "h1", Since: now}}, nil, false},
		{"QEMU died: keep", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "crashed"), nil, nil, false},
		{"crashed state: keep", home(u1, "h1"), dom(u1, hypervisor.StateCrashed, ""), nil, nil, false},
		{"host restarted: keep", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "unknown"), nil, nil, false},
		{"failed to start: keep", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "failed"), nil, nil, false},
		{"shut down by its owner: forget", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "shutdown"), nil, []string{u1}, false},
		{"destroyed by an operator: forget", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "destroyed"), nil, []string{u1}, false},
		{"migrated away: forget here", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "migrated"), nil, []string{u1}, false},
		{"stopped copy on a host it does not live on: ignore", home(u1, "h2"), dom(u1, hypervisor.StateShutoff, "destroyed"), nil, nil, false},
		{"undefined here: forget", home(u1, "h1"), nil, nil, []string{u1}, false},
		{"another host's domain missing here: keep", home(u1, "h2"), nil, nil, nil, false},
		{"stopped, never ran anywhere: nothing", nil, dom(u2, hypervisor.StateShutoff, "shutdown"), nil, nil, false},
		{"destroyed by the drain of its host: keep", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "destroyed"), nil, nil, true},
		{"shut down on a drained host: keep", home(u1, "h1"), dom(u1, hypervisor.StateShutoff, "shutdown"), nil, nil, true},
		{"undefined on a drained host: forget", home(u1, "h1"), nil, nil, []string{u1}, true},
		{"one of two homes missing: forget that one", both("h1", "h1"), dom(u1, hypervisor.StateRunning, ""), nil, []string{u2}, false},
		{"one of two homes missing, the other is another host's: forget mine", both("h1", "h2"), dom(u2, hypervisor.StateRunning, ""), []store.DomainHome{{UUID: u2, Name: "vm", Host: "h1", Since: now}}, []string{u1}, false},
		{"both homes listed: nothing", both("h1", "h1"), append(dom(u2, hypervisor.StateRunning, ""), dom(u1, hypervisor.StateShutoff, "crashed")...), nil, nil, false},
		{"running on a drained host it does not live on: moves the home", home(u1, "h2"), dom(u1, hypervisor.StateRunning, ""), []store.DomainHome{{UUID: u1, Name: "vm", Host: "h1", Since: now}}, nil, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mine := map[string]store.DomainHome{}
			for u, h := range c.homes {
				if h.Host == "h1" {
					mine[u] = h
				}
			}
			put, remove := ObserveDomains(c.homes, mine, "h1", c.doms, now, c.drained)
			assert.Equal(t, c.put, put)
			assert.Equal(t, c.remove, remove)
		})
	}
}

func TestHomesOf(t *testing.T) {
	mine := map[string]store.DomainHome{
		"b": {UUID: "b", Name: "web", Host: "h1"}, "a": {UUID: "a", Name: "db", Host: "h1"},
	}
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: "a", Name: "db"}, {UUID: "b", Name: "web"}}, HomesOf(mine))
	assert.Empty(t, HomesOf(nil))
}
