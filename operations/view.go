package operations

import (
	"errors"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

// Cluster is what ClusterView reads about hosts; *daemon.Daemon satisfies it.
type Cluster interface {
	Host(name string) (daemon.HostStatus, error)
	Status() daemon.Status
}

// Fences reads the fence journal; *store.Store satisfies it.
type Fences interface {
	Fences() (map[string]store.FenceRecord, error)
}

// FenceProven says whether r proves the host is stopped now: verified or
// confirmed, and started after the host's last heartbeat (a host that
// heartbeated since is a new incident; the same rule as recovery's).
func FenceProven(r store.FenceRecord, lastHeartbeat time.Time) bool {
	return r.Proven() && (lastHeartbeat.IsZero() || lastHeartbeat.Before(r.Started))
}

// ClusterView builds Deps.View from the daemon and the fence journal;
// observe says whether the daemon is in observe mode now (nil: enforce).
// Running is the number of domains the host's last heartbeat reported
// active; before one listed them, the domains whose home is the host
// (the cautious count: a drained host's stopped domains keep their home).
func ClusterView(c Cluster, f Fences, observe func() bool) func(host string) (HostView, error) {
	return func(host string) (HostView, error) {
		st, err := c.Host(host)
		if errors.Is(err, daemon.ErrUnknownHost) {
			return HostView{Name: host}, nil
		}
		if err != nil {
			return HostView{}, err
		}
		fences, err := f.Fences()
		if err != nil {
			return HostView{}, fmt.Errorf("read fence journal: %w", err)
		}
		running := st.Active
		if running < 0 {
			running = st.Domains
		}
		v := HostView{Name: host, Known: true, Admin: st.Admin, Monitor: st.Monitor, Running: running,
			StormPaused: c.Status().Storm.Paused}
		if r, ok := fences[host]; ok {
			v.FenceState = r.State
			v.FenceProven = FenceProven(r, st.LastHeartbeat)
		}
		if b := st.BMC; b != nil && b.Reachable && b.Err == "" && b.Power == power.On &&
			!st.SilentSince.IsZero() && !b.At.Before(st.SilentSince) {
			v.BMCOnAt = b.At
		}
		if observe != nil {
			v.Observe = observe()
		}
		return v, nil
	}
}
