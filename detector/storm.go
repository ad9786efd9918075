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
	type count struct{ total, recent, silent int }
	all := count{}
	racks := map[string]*count{}
	for _, h := range hosts {
		rc := racks[h.Rack]
		if rc == nil {
			rc = &count{}
			racks[h.Rack] = rc
		}
		all.total++
		rc.total++
		if !h.Silent {
			continue
		}
		all.silent++
		rc.silent++
		if !h.SilentSince.After(now) && now.Sub(h.SilentSince) <= g.Window {
			all.recent++
			rc.recent++
		}
	}
	var why []string
	over := func(n, total int, limit float64, what string) {
		if total > 0 && float64(n)/float64(total) > limit {
			why = append(why, fmt.Sprintf("%s: %d of %d hosts silent (limit %.0f%%)", what, n, total, limit*100))
		}
	}
	pick := func(c count) int {
		if wasPaused {
			return c.silent
		}
		return c.recent
	}
	over(pick(all), all.total, g.MaxFraction, "cluster")
	names := make([]string, 0, len(racks))
	for r := range racks {
		names = append(names, r)
	}
	sort.Strings(names)
	for _, r := range names {
		limit, ok := g.MaxRackFraction[r]
		if !ok {
			continue
		}
		over(pick(*racks[r]), racks[r].total, limit, "rack "+r)
	}
	if refs.Configured > 0 && !refs.At.IsZero() && !refs.Answered {
		why = append(why, fmt.Sprintf("none of the daemon's %d reference addresses answers", refs.Configured))
	}
	if len(why) == 0 {
		return StormState{}
	}
	return StormState{Paused: true, Reason: strings.Join(why, "; ")}
}
