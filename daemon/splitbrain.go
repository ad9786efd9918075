package daemon

import (
	"sort"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/store"
)

// StaleCopy is a domain active on a host it was evicted from: rebuilt on
// Home after Host was fenced, and running (or paused, holding its disks)
// on Host again, e.g. started by libvirt's autostart when Host powered
// on. HomeActive: Home's last accepted heartbeat lists it active too, so
// the VM runs on two hosts at once (a split brain).
type StaleCopy struct {
	UUID, Name string
	// Host is where the stale copy runs: the old home, the one to destroy.
	Host string
	// Home is where the domain lives now (never destroyed here).
	Home       string
	HomeActive bool
}

// StaleCopies lists the stale copies one host's report shows: domains
// active on host that host must get rid of (evicted, the daemon's
// eviction list for host) and whose home is another host. A domain whose
// home is host is never one, whatever the eviction list says. listings
// are the hosts' last accepted domain listings (for HomeActive). Pure;
// sorted by UUID.
func StaleCopies(host string, doms []heartbeat.Domain, evicted map[string]store.Eviction, homes map[string]store.DomainHome,
	listings map[string][]heartbeat.Domain) []StaleCopy {
	if len(evicted) == 0 {
		return nil
	}
	var out []StaleCopy
	for _, d := range doms {
		if !d.State.Active() {
			continue
		}
		if _, ok := evicted[d.UUID]; !ok {
			continue
		}
		home, ok := homes[d.UUID]
		if !ok || home.Host == host {
			continue
		}
		sc := StaleCopy{UUID: d.UUID, Name: d.Name, Host: host, Home: home.Host}
		for _, o := range listings[home.Host] {
			if o.UUID == d.UUID {
				sc.HomeActive = o.State.Active()
				break
			}
		}
		out = append(out, sc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out
}

// OnStaleCopy sets the function told of every stale copy a heartbeat
// shows (every heartbeat while it runs). It is called outside the
// daemon's locks, on the heartbeat's goroutine: it must return at once
// (cmd/chime-fence destroys the copy and alerts in the background). Set
// it before heartbeats arrive.
func (d *Daemon) OnStaleCopy(fn func(StaleCopy)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.onStale = fn
}

// AutostartOn lists the domains host's last accepted heartbeat reported
// with libvirt autostart on; known is false before a heartbeat listed
// the host's domains (since the daemon started).
func (d *Daemon) AutostartOn(host string) (on map[string]bool, known bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	doms, known := d.listing[host]
	on = map[string]bool{}
	for _, dom := range doms {
		if dom.Autostart {
			on[dom.UUID] = true
		}
	}
	return on, known
}
