package daemon

import (
	"sort"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// Listing is one host's last accepted domain listing and when it arrived
// (the daemon's clock).
type Listing struct {
	At      time.Time
	Domains []heartbeat.Domain
}

// state is uuid's state in the listing if the listing is at most maxAge
// old at now and lists it: a host that went silent (a dead one) proves
// nothing about what runs there now.
func (l Listing) state(uuid string, now time.Time, maxAge time.Duration) (hypervisor.DomainState, bool) {
	if l.At.IsZero() || now.Sub(l.At) > maxAge {
		return 0, false
	}
	for _, d := range l.Domains {
		if d.UUID == uuid {
			return d.State, true
		}
	}
	return 0, false
}

// DoubleRun is a VM reported running (not paused) on two hosts, neither
// of which it was evacuated from: Host (this report) and Home (its home,
// whose recent report also has it running). Which copy is stale is not
// known, so nothing is destroyed; it is alerted. A live migration never
// shows two running copies (the destination is paused until the switch,
// the source paused after it).
type DoubleRun struct {
	UUID, Name string
	Host, Home string
}

// DoubleRuns lists the VMs host's report shows running that its home
// (another host) also reported running within maxAge at now, leaving out
// domains evicted from host (StaleCopies has those). Pure; sorted by UUID.
func DoubleRuns(host string, doms []heartbeat.Domain, evicted map[string]store.Eviction, homes map[string]store.DomainHome,
	listings map[string]Listing, now time.Time, maxAge time.Duration) []DoubleRun {
	var out []DoubleRun
	for _, d := range doms {
		if d.State != hypervisor.StateRunning {
			continue
		}
		home, ok := homes[d.UUID]
		if !ok || home.Host == host {
			continue
		}
		if _, ev := evicted[d.UUID]; ev {
			continue
		}
		if st, ok := listings[home.Host].state(d.UUID, now, maxAge); ok && st == hypervisor.StateRunning {
			out = append(out, DoubleRun{UUID: d.UUID, Name: d.Name, Host: host, Home: home.Host})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UUID < out[j].UUID })
	return out
}

// OnDoubleRun sets the function told of every DoubleRun a heartbeat
// shows, under the same contract as OnStaleCopy.
func (d *Daemon) OnDoubleRun(fn func(DoubleRun)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.onDouble = fn
}

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
// are the hosts' last accepted domain listings; HomeActive needs one of
// the home at most maxAge old at now. Pure; sorted by UUID.
func StaleCopies(host string, doms []heartbeat.Domain, evicted map[string]store.Eviction, homes map[string]store.DomainHome,
	listings map[string]Listing, now time.Time, maxAge time.Duration) []StaleCopy {
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
		st, ok := listings[home.Host].state(d.UUID, now, maxAge)
		out = append(out, StaleCopy{UUID: d.UUID, Name: d.Name, Host: host, Home: home.Host, HomeActive: ok && st.Active()})
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
	l, known := d.listing[host]
	on = map[string]bool{}
	for _, dom := range l.Domains {
		if dom.Autostart {
			on[dom.UUID] = true
		}
	}
	return on, known
}
