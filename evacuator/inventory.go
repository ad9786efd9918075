package evacuator

import (
	"sort"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/store"
)

// deliberateStops are shut-off reasons that say somebody meant the domain
// to stop; anything else (crashed, failed, unknown after a host restart,
// daemon) means it should come back.
var deliberateStops = map[string]bool{
	"shutdown": true, "destroyed": true, "saved": true, "migrated": true, "from-snapshot": true,
}

// ObserveDomains updates where each domain should run from one host's
// report of its domains. It is pure: it returns the homes to write and the
// UUIDs to forget, and changes nothing itself.
//
//   - A domain active on the host now lives there (the latest host seen
//     running it wins, so after a rebuild elsewhere the old host stops
//     claiming it).
//   - A domain whose home is this host and that was stopped on purpose, or
//     that is no longer defined here, is forgotten: it should not run.
//   - A domain that stopped because QEMU died, or because the host
//     restarted, keeps its home: the agent may start it again.
//   - On a drained host (drained is true) a stop is the drain's, not the
//     owner's: the domain keeps its home, so a rebuild recreates it
//     elsewhere. Enabling the host again starts nothing (the agent never
//     restarts a deliberate stop), and its next report forgets them.
//
// The caller must only pass a report in which libvirtd answered; an empty
// list from an unreachable libvirtd would otherwise forget every domain.
// homes is every domain's home, keyed by UUID; mine is the subset living on
// host (so the cost is the host's domains, not the cluster's).
func ObserveDomains(homes, mine map[string]store.DomainHome, host string, doms []heartbeat.Domain, now time.Time, drained bool) (put []store.DomainHome, remove []string) {
	// mine first: it is small and hot, homes is the whole cluster's.
	// Every listed domain found in mine is counted; when all of mine were
	// listed (the steady state) nothing needs a set of the listed UUIDs.
	inMine := 0
	for _, d := range doms {
		h, known := mine[d.UUID]
		if known {
			inMine++
		} else {
			h, known = homes[d.UUID]
		}
		switch {
		case d.State.Active():
			if !known || h.Host != host || h.Name != d.Name {
				since := now
				if known && h.Host == host {
					since = h.Since
				}
				put = append(put, store.DomainHome{UUID: d.UUID, Name: d.Name, Host: host, Since: since})
			}
		case known && h.Host == host && deliberateStops[d.Reason] && !drained:
			remove = append(remove, d.UUID)
		}
	}
	if inMine < len(mine) {
		listed := make(map[string]bool, len(doms))
		for _, d := range doms {
			listed[d.UUID] = true
		}
		for uuid := range mine {
			if !listed[uuid] {
				remove = append(remove, uuid)
			}
		}
	}
	if len(remove) > 1 {
		sort.Strings(remove)
	}
	if len(put) > 1 {
		sort.Slice(put, func(i, j int) bool { return put[i].UUID < put[j].UUID })
	}
	return put, remove
}

// HomesOf lists the domains of mine (one host's homes), sorted by name.
func HomesOf(mine map[string]store.DomainHome) []heartbeat.AssignedDomain {
	out := make([]heartbeat.AssignedDomain, 0, len(mine))
	for _, h := range mine {
		out = append(out, heartbeat.AssignedDomain{UUID: h.UUID, Name: h.Name})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].UUID < out[j].UUID
	})
	return out
}
