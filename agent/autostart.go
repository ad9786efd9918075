package agent

import (
	"context"
	"sort"
	"strings"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

// The agent turns libvirt's autostart off for every domain defined on its
// host, assigned or not: the daemon may evacuate any domain of a host it
// fenced (it captures them all), and a copy libvirtd starts by itself
// when the host powers on again runs beside the rebuilt one. The agent
// itself starts what the daemon assigns (reconcile, after a current
// assignment arrived), so autostart adds nothing but that risk. Turning
// autostart off never starts or stops anything, so it is done whatever
// the admin state, from the first listing on.

// autostartOn lists the domains whose autostart must be turned off:
// persistent ones with autostart on (libvirt has no autostart for a
// transient domain), sorted by name for the log.
func autostartOn(doms []hypervisor.Domain) []hypervisor.Domain {
	var out []hypervisor.Domain
	for _, d := range doms {
		if d.Autostart && d.Persistent {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// evictedActive lists the evicted domains (rebuilt elsewhere while this
// host was fenced) that the listing shows active here: a copy that may run
// on two hosts at once. Sorted by name.
func evictedActive(evicted []heartbeat.AssignedDomain, doms []hypervisor.Domain) []hypervisor.Domain {
	if len(evicted) == 0 {
		return nil
	}
	ev := make(map[string]bool, len(evicted))
	for _, e := range evicted {
		ev[e.UUID] = true
	}
	var out []hypervisor.Domain
	for _, d := range doms {
		if ev[d.UUID] && d.State.Active() {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// listed sees every successful listing of the health checks (it runs
// under the checker's lock, so it only records and triggers): domains
// with autostart on go to autostartLoop, and an evicted domain active
// here makes reconcile run now, which destroys it.
func (a *Agent) listed(doms []hypervisor.Domain) {
	if on := autostartOn(doms); len(on) > 0 {
		a.autoMu.Lock()
		a.autoPending = on
		a.autoMu.Unlock()
		trigger(a.autostartNow)
	}
	var evicted []heartbeat.AssignedDomain
	if asg := a.held.current(); asg != nil {
		evicted = asg.Evicted
	}
	both := evictedActive(evicted, doms)
	names := make([]string, len(both))
	for i, d := range both {
		names[i] = d.Name + " " + d.UUID
	}
	key := strings.Join(names, ", ")
	a.autoMu.Lock()
	changed := key != a.splitSeen
	a.splitSeen = key
	a.autoMu.Unlock()
	if len(both) == 0 {
		return
	}
	if changed {
		log := a.logger("evict")
		log.Error().Strs("domains", names).
			Msg("split brain: domains rebuilt elsewhere (evicted from this host) are active here; destroying them now")
	}
	trigger(a.reconcileNow)
}

// autostartLoop turns autostart off for the domains the last listing
// showed with it on. A failure is logged (when it changes) and retried
// after the next listing, one heartbeat interval later.
func (a *Agent) autostartLoop(ctx context.Context) {
	log := a.logger("autostart")
	lastErr := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.autostartNow:
		}
		a.autoMu.Lock()
		todo := a.autoPending
		a.autoPending = nil
		a.autoMu.Unlock()
		off := 0
		for _, d := range todo {
			ev := log.With().Str("uuid", d.UUID).Str("domain", d.Name).Logger()
			err := a.call(ctx, func(ctx context.Context) error { return a.hv.SetAutostart(ctx, d.UUID, false) })
			switch {
			case err == nil:
				off++
				delete(lastErr, d.UUID)
				ev.Warn().Msg("libvirt autostart turned off: a host that powers on again must not start a VM the daemon may have rebuilt elsewhere; the agent starts assigned domains itself")
			case hypervisor.KindOf(err) == hypervisor.KindNotFound:
				delete(lastErr, d.UUID)
			case ctx.Err() != nil:
				return
			default:
				if msg := err.Error(); lastErr[d.UUID] != msg {
					ev.Error().Err(err).Msg("cannot turn libvirt autostart off; the daemon will not evacuate this VM while it is on; retrying after the next listing")
					lastErr[d.UUID] = msg
				}
			}
		}
		if off > 0 {
			a.checks.round(ctx) // the next heartbeat shows autostart off
		}
	}
}
