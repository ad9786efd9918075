package fencer

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// gstep is something that happened at the gate before the request under
// test: an admission (expected to pass or not), a Done, or a Resume.
type gstep struct {
	at     time.Duration
	host   string
	rack   string
	done   bool
	resume bool
	lim    *Limits // nil: loose
	ok     bool
}

func TestGateAdmit(t *testing.T) {
	s := time.Second
	lim := Limits{MaxConcurrent: 2, MaxConcurrentPerRack: 1, MinInterval: 30 * s}
	loose := Limits{MaxConcurrent: 100, MaxConcurrentPerRack: 100}
	with := func(f func(*Limits)) Limits { l := lim; f(&l); return l }
	admit := func(at time.Duration, host, rack string) gstep {
		return gstep{at: at, host: host, rack: rack, ok: true}
	}
	done := func(at time.Duration, host string) gstep { return gstep{at: at, host: host, done: true} }

	for _, tc := range []struct {
		name  string
		steps []gstep
		req   Request
		at    time.Duration
		want  Admission
	}{
		{name: "first fence ever",
			req: Request{"h1", "r1", lim}, want: Admission{OK: true}},
		{name: "no host",
			req:  Request{"", "r1", lim},
			want: Admission{Reason: `invalid fence request for host "": no host`}},
		{name: "no rack",
			req:  Request{"h1", "", lim},
			want: Admission{Reason: `invalid fence request for host "h1": no rack`}},
		{name: "zero max concurrent is refused, not unlimited",
			req:  Request{"h1", "r1", with(func(l *Limits) { l.MaxConcurrent = 0 })},
			want: Admission{Reason: `invalid fence request for host "h1": max concurrent fences must be at least 1, got 0`}},
		{name: "zero per-rack is refused, not unlimited",
			req:  Request{"h1", "r1", with(func(l *Limits) { l.MaxConcurrentPerRack = 0 })},
			want: Admission{Reason: `invalid fence request for host "h1": max concurrent fences per rack must be at least 1, got 0`}},
		{name: "negative interval",
			req:  Request{"h1", "r1", with(func(l *Limits) { l.MinInterval = -s })},
			want: Admission{Reason: `invalid fence request for host "h1": min fence interval must not be negative, got -1s`}},
		{name: "every problem at once",
			req: Request{"", "", Limits{MaxConcurrent: -1, MaxConcurrentPerRack: 0, MinInterval: -s}},
			want: Admission{Reason: `invalid fence request for host "": no host; no rack; max concurrent fences must be at least 1, got -1; ` +
				`max concurrent fences per rack must be at least 1, got 0; min fence interval must not be negative, got -1s`}},
		{name: "host already in flight",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h1", "r1", loose}, at: time.Hour,
			want: Admission{Reason: "host h1 is already being fenced"}},
		{name: "host already in flight wins over other limits",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h1", "r1", lim}, at: s,
			want: Admission{Reason: "host h1 is already being fenced"}},
		{name: "cluster full",
			steps: []gstep{admit(0, "h1", "r1"), admit(0, "h2", "r2")},
			req:   Request{"h3", "r3", lim}, at: time.Minute,
			want: Admission{Reason: "2 fences in flight, max 2"}},
		{name: "rack full",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h2", "r1", lim}, at: time.Minute,
			want: Admission{Reason: "rack r1: 1 fence in flight, max 1"}},
		{name: "another rack has room",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h2", "r2", lim}, at: time.Minute,
			want: Admission{OK: true}},
		{name: "min interval from the last start",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h1")},
			req:   Request{"h2", "r2", lim}, at: 4 * s,
			want: Admission{RetryAt: t0.Add(30 * s), Reason: "last fence started 4s ago, min interval 30s"}},
		{name: "min interval: ages are truncated to the millisecond",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h1")},
			req:   Request{"h2", "r2", lim}, at: 4*s + 123456*time.Microsecond,
			want: Admission{RetryAt: t0.Add(30 * s), Reason: "last fence started 4.123s ago, min interval 30s"}},
		{name: "min interval just short",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h1")},
			req:   Request{"h2", "r2", lim}, at: 30*s - time.Nanosecond,
			want: Admission{RetryAt: t0.Add(30 * s), Reason: "last fence started 29.999s ago, min interval 30s"}},
		{name: "min interval exactly elapsed",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h1")},
			req:   Request{"h2", "r2", lim}, at: 30 * s,
			want: Admission{OK: true}},
		{name: "min interval counts from start, not from done",
			steps: []gstep{admit(0, "h1", "r1"), done(29*s, "h1")},
			req:   Request{"h2", "r1", lim}, at: 30 * s,
			want: Admission{OK: true}},
		{name: "min interval counts across racks, from the latest start",
			steps: []gstep{admit(0, "h1", "r1"), admit(20*s, "h2", "r2"), done(21*s, "h1"), done(22*s, "h2")},
			req:   Request{"h3", "r3", lim}, at: 40 * s,
			want: Admission{RetryAt: t0.Add(50 * s), Reason: "last fence started 20s ago, min interval 30s"}},
		{name: "zero min interval allows back-to-back starts",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h2", "r2", with(func(l *Limits) { l.MinInterval = 0 })}, at: 0,
			want: Admission{OK: true}},
		{name: "cluster full and interval: waits for Done, every reason named",
			steps: []gstep{admit(0, "h1", "r1"), admit(0, "h2", "r2")},
			req:   Request{"h3", "r3", lim}, at: 5 * s,
			want: Admission{Reason: "2 fences in flight, max 2; last fence started 5s ago, min interval 30s"}},
		{name: "cluster and rack full",
			steps: []gstep{admit(0, "h1", "r1"), admit(0, "h2", "r2")},
			req:   Request{"h3", "r1", lim}, at: time.Minute,
			want: Admission{Reason: "2 fences in flight, max 2; rack r1: 1 fence in flight, max 1"}},
		{name: "rack full and interval",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h2", "r1", lim}, at: 2 * s,
			want: Admission{Reason: "rack r1: 1 fence in flight, max 1; last fence started 2s ago, min interval 30s"}},
		{name: "rack counts only that rack",
			steps: []gstep{admit(0, "h1", "r1"), admit(0, "h2", "r1"), admit(0, "h3", "r2")},
			req:   Request{"h4", "r1", Limits{MaxConcurrent: 10, MaxConcurrentPerRack: 2}}, at: time.Minute,
			want: Admission{Reason: "rack r1: 2 fences in flight, max 2"}},
		{name: "Done frees the slot",
			steps: []gstep{admit(0, "h1", "r1"), done(10*s, "h1")},
			req:   Request{"h2", "r1", lim}, at: time.Minute,
			want: Admission{OK: true}},
		{name: "a host may be fenced again after Done",
			steps: []gstep{admit(0, "h1", "r1"), done(10*s, "h1")},
			req:   Request{"h1", "r1", lim}, at: time.Minute,
			want: Admission{OK: true}},
		{name: "Done of an unknown host changes nothing",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h9"), done(s, "h9")},
			req:   Request{"h2", "r1", lim}, at: time.Minute,
			want: Admission{Reason: "rack r1: 1 fence in flight, max 1"}},
		{name: "limits are the request's own",
			steps: []gstep{admit(0, "h1", "r1")},
			req:   Request{"h2", "r2", with(func(l *Limits) { l.MaxConcurrent = 1 })}, at: time.Minute,
			want: Admission{Reason: "1 fence in flight, max 1"}},
		{name: "a refused request is not counted: neither in flight nor as a start",
			steps: []gstep{admit(0, "h1", "r1"), done(s, "h1"), {at: 10 * s, host: "h2", rack: "r2", lim: &lim, ok: false}},
			req:   Request{"h3", "r2", lim}, at: 30 * s,
			want: Admission{OK: true}},
		{name: "clock stepped back",
			steps: []gstep{admit(10*s, "h1", "r1"), done(11*s, "h1")},
			req:   Request{"h2", "r2", lim}, at: 5 * s,
			want: Admission{RetryAt: t0.Add(40 * s), Reason: "last fence started at 2026-11-21T12:00:10Z, after now (clock stepped back), min interval 30s"}},
		{name: "a resumed fence counts in flight and as a start",
			steps: []gstep{{at: -5 * s, host: "h1", rack: "r1", resume: true}},
			req:   Request{"h2", "r2", lim}, at: 0,
			want: Admission{RetryAt: t0.Add(25 * s), Reason: "last fence started 5s ago, min interval 30s"}},
		{name: "a resumed fence fills its rack",
			steps: []gstep{{at: -time.Hour, host: "h1", rack: "r1", resume: true}},
			req:   Request{"h2", "r1", lim}, at: 0,
			want: Admission{Reason: "rack r1: 1 fence in flight, max 1"}},
		{name: "resume is not limited: the fence already runs",
			steps: []gstep{{at: 0, host: "h1", rack: "r1", lim: &lim, ok: true}, {at: s, host: "h2", rack: "r1", resume: true}},
			req:   Request{"h3", "r1", with(func(l *Limits) { l.MaxConcurrent = 3; l.MaxConcurrentPerRack = 2 })}, at: time.Minute,
			want: Admission{Reason: "rack r1: 2 fences in flight, max 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGate()
			for i, st := range tc.steps {
				now := t0.Add(st.at)
				switch {
				case st.done:
					g.Done(st.host, now)
				case st.resume:
					g.Resume(st.host, st.rack, now)
				default:
					l := loose
					if st.lim != nil {
						l = *st.lim
					}
					a := g.Admit(Request{st.host, st.rack, l}, now)
					require.Equal(t, st.ok, a.OK, "step %d: %s", i, a.Reason)
				}
			}
			before := g.Status()
			got := g.Admit(tc.req, t0.Add(tc.at))
			assert.Equal(t, tc.want, got)

			after := g.Status()
			if got.OK {
				assert.Contains(t, after.InFlight, Flight{Host: tc.req.Host, Rack: tc.req.Rack, Started: t0.Add(tc.at)})
				assert.Len(t, after.InFlight, len(before.InFlight)+1)
				assert.Equal(t, t0.Add(tc.at), after.LastStart)
			} else {
				assert.Equal(t, before, after, "a refusal changes nothing")
			}
		})
	}
}

func TestGateStatus(t *testing.T) {
	g := NewGate()
	lim := Limits{MaxConcurrent: 5, MaxConcurrentPerRack: 5}
	assert.Equal(t, GateStatus{InFlight: []Flight{}}, g.Status())
	require.True(t, g.Admit(Request{"h2", "r1", lim}, t0).OK)
	require.True(t, g.Admit(Request{"h1", "r2", lim}, t0.Add(time.Second)).OK)
	require.True(t, g.Admit(Request{"h3", "r1", lim}, t0.Add(2*time.Second)).OK)
	g.Done("h3", t0.Add(3*time.Second))
	assert.Equal(t, GateStatus{
		InFlight:  []Flight{{"h1", "r2", t0.Add(time.Second)}, {"h2", "r1", t0}},
		LastStart: t0.Add(2 * time.Second),
		LastDone:  t0.Add(3 * time.Second),
	}, g.Status())

	// Resume with an older start does not move LastStart back.
	g.Resume("h4", "r3", t0.Add(-time.Hour))
	assert.Equal(t, t0.Add(2*time.Second), g.Status().LastStart)
	assert.Len(t, g.Status().InFlight, 3)
}
