package detector

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestStorm(t *testing.T) {
	now := t0.Add(time.Hour)
	g := StormGuard{MaxFraction: 0.5, MaxRackFraction: map[string]float64{"r2": 0.5}, Window: time.Minute}
	recent, old := now.Add(-10*time.Second), now.Add(-10*time.Minute)
	h := func(rack string, silent bool, since time.Time) StormHost {
		return StormHost{Rack: rack, Silent: silent, SilentSince: since}
	}
	ok := References{}
	cases := []struct {
		name   string
		hosts  []StormHost
		refs   References
		was    bool
		paused bool
		reason string
	}{
		{"nobody silent", []StormHost{h("r1", false, time.Time{}), h("r1", false, time.Time{})}, ok, false, false, ""},
		{"one of two is not more than half", []StormHost{h("r1", true, recent), h("r1", false, time.Time{})}, ok, false, false, ""},
		{"two of three at once", []StormHost{h("r1", true, recent), h("r1", true, recent), h("r1", false, time.Time{})}, ok, false, true, "cluster: 2 of 3 hosts silent (limit 50%)"},
		{"two of three but one long ago is no storm", []StormHost{h("r1", true, recent), h("r1", true, old), h("r1", false, time.Time{})}, ok, false, false, ""},
		{"paused stays while they are still silent", []StormHost{h("r1", true, old), h("r1", true, old), h("r1", false, time.Time{})}, ok, true, true, "cluster: 2 of 3 hosts silent"},
		{"paused resumes when one is back", []StormHost{h("r1", true, old), h("r1", false, time.Time{}), h("r1", false, time.Time{})}, ok, true, false, ""},
		{"rack limit", []StormHost{h("r2", true, recent), h("r2", true, recent), h("r2", false, time.Time{}), h("r1", false, time.Time{}), h("r1", false, time.Time{})}, ok, false, true, "rack r2: 2 of 3 hosts silent"},
		{"rack without a limit only counts in the total", []StormHost{h("r1", true, recent), h("r1", true, recent), h("r1", false, time.Time{}), h("r3", false, time.Time{}), h("r3", false, time.Time{})}, ok, false, false, ""},
		{"references unreachable", []StormHost{h("r1", false, time.Time{})}, References{Configured: 2, At: now}, false, true, "none of the daemon's 2 reference addresses answers"},
		{"references not yet probed", []StormHost{h("r1", false, time.Time{})}, References{Configured: 2}, false, false, ""},
		{"references answer", []StormHost{h("r1", false, time.Time{})}, References{Configured: 2, Answered: true, At: now}, false, false, ""},
		{"silence dated in the future is not recent", []StormHost{h("r1", true, now.Add(time.Hour)), h("r1", true, now.Add(time.Hour)), h("r1", false, time.Time{})}, ok, false, false, ""},
		{"no hosts", nil, ok, false, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := Storm(c.hosts, c.refs, g, c.was, now)
			assert.Equal(t, c.paused, s.Paused, s.Reason)
			if c.reason != "" {
				assert.Contains(t, s.Reason, c.reason)
			} else {
				assert.Empty(t, s.Reason)
			}
		})
	}
}
