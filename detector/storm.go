package detector

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// StormGuard says when many hosts going silent together means the daemon
// itself is cut off, not that many hosts died.
type StormGuard struct {
	// MaxFraction of all hosts may go silent within Window before the guard
	// pauses every decision (more than this pauses).
	MaxFraction float64
	// MaxRackFraction is the same per rack; a rack without an entry is
	// only counted in the cluster total.
	MaxRackFraction map[string]float64
	Window          time.Duration
}

// StormHost is one host as the storm guard sees it.
type StormHost struct {
	Rack string
	// Silent: heartbeat stale and no probe showed the host alive.
	Silent      bool
	SilentSince time.Time
}

// References is the daemon's view of its own reference addresses.
type References struct {
	Configured int
	// Answered: at least one reference address answered the latest round.
	Answered bool
	// At is when that round concluded; zero means none yet.
	At time.Time
}

// StormState is the guard's conclusion.
type StormState struct {
	Paused bool
	Reason string
}

// Storm decides whether the storm guard holds. It pauses when, within the
// window, more than the allowed share of all hosts (or of one rack) went
// silent, or when none of the daemon's reference addresses answers. Once
// paused it resumes only when the share of hosts silent now, however long
// they have been, is back within the limits and the references answer: a
// partition of the daemon that lasts longer than the window must not look
// like its end.
func Storm(hosts []StormHost, refs References, g StormGuard, wasPaused bool, now time.Time) StormState {
	all := stormCount{}
	racks := map[string]*stormCount{}
	for _, h := range hosts {
		rc := racks[h.Rack]
		if rc == nil {
			rc = &stormCount{}
			racks[h.Rack] = rc
		}
		all.total++
		rc.total++
		if !h.Silent {
			continue
		}
		all.addSilent(h.SilentSince, g, now)
		rc.addSilent(h.SilentSince, g, now)
	}
	names := make([]string, 0, len(racks))
	for r := range racks {
		names = append(names, r)
	}
	sort.Strings(names)
	byName := make([]rackCount, 0, len(names))
	for _, r := range names {
		byName = append(byName, rackCount{name: r, stormCount: *racks[r]})
	}
	return decideStorm(all, byName, refs, g, wasPaused)
}

// stormCount is the guard's tally of one population of hosts: all of them,
// or one rack.
type stormCount struct{ total, recent, silent int }

// addSilent counts one silent host; it is recent when its silence began
// within the window and not in the future.
func (c *stormCount) addSilent(since time.Time, g StormGuard, now time.Time) {
	c.silent++
	if !since.After(now) && now.Sub(since) <= g.Window {
		c.recent++
	}
}

type rackCount struct {
	name string
	stormCount
}

// decideStorm is Storm over counts already taken; racks are the racks that
// have hosts, sorted by name. The engine feeds it from a tally kept on every
// host's transitions instead of a snapshot of every host.
func decideStorm(all stormCount, racks []rackCount, refs References, g StormGuard, wasPaused bool) StormState {
	var why []string
	over := func(n, total int, limit float64, what string) {
		if total > 0 && float64(n)/float64(total) > limit {
			why = append(why, fmt.Sprintf("%s: %d of %d hosts silent (limit %.0f%%)", what, n, total, limit*100))
		}
	}
	pick := func(c stormCount) int {
		if wasPaused {
			return c.silent
		}
		return c.recent
	}
	over(pick(all), all.total, g.MaxFraction, "cluster")
	for _, r := range racks {
		limit, ok := g.MaxRackFraction[r.name]
		if !ok {
			continue
		}
		over(pick(r.stormCount), r.total, limit, "rack "+r.name)
	}
	if refs.Configured > 0 && !refs.At.IsZero() && !refs.Answered {
		why = append(why, fmt.Sprintf("none of the daemon's %d reference addresses answers", refs.Configured))
	}
	if len(why) == 0 {
		return StormState{}
	}
	return StormState{Paused: true, Reason: strings.Join(why, "; ")}
}
