package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseTransport(t *testing.T) {
	for _, tr := range []Transport{TransportAuto, TransportUDP, TransportHTTP} {
		got, err := ParseTransport(tr.String())
		require.NoError(t, err)
		assert.Equal(t, tr, got)
	}
	for _, bad := range []string{"", "UDP", "tcp", "auto "} {
		_, err := ParseTransport(bad)
		assert.ErrorContains(t, err, fmt.Sprintf("heartbeat transport %q: want auto, udp or http", bad))
	}
	assert.Equal(t, "Transport(7)", Transport(7).String())
}

// TestTransportPolicy runs the policy through scripts of beats. Each step
// is "at OFFSET OUTCOME": the route the policy picks at that time, then the
// outcome recorded (u = UDP answered, m = UDP missed and HTTP answered, f =
// both failed; "-" records nothing: the beat went over HTTP). want lists
// the route and any switch per step: U (UDP then HTTP), O (UDP only), H
// (HTTP), with "+h" for a switch to HTTP and "+u" for one to UDP.
func TestTransportPolicy(t *testing.T) {
	type step struct {
		at   time.Duration
		out  string
		want string
	}
	s := func(at time.Duration, out, want string) step { return step{at, out, want} }
	for _, tc := range []struct {
		name  string
		mode  Transport
		steps []step
	}{
		{"udp answers", TransportAuto, []step{s(0, "u", "U"), s(1, "u", "U"), s(2, "u", "U")}},
		{"three misses make HTTP sticky", TransportAuto, []step{
			s(0, "m", "U"), s(1, "m", "U"), s(2, "m", "U+h"), s(3, "-", "H"), s(4, "-", "H")}},
		{"an answer ends the streak", TransportAuto, []step{
			s(0, "m", "U"), s(1, "m", "U"), s(2, "u", "U"), s(3, "m", "U"), s(4, "m", "U"), s(5, "m", "U+h")}},
		{"both failing neither counts nor resets", TransportAuto, []step{
			s(0, "m", "U"), s(1, "f", "U"), s(2, "f", "U"), s(3, "m", "U"), s(4, "f", "U"), s(5, "m", "U+h")}},
		{"daemon down: never sticky", TransportAuto, []step{
			s(0, "f", "U"), s(1, "f", "U"), s(2, "f", "U"), s(3, "f", "U"), s(4, "f", "U")}},
		{"sticky for ten minutes, then UDP with a fresh count", TransportAuto, []step{
			s(0, "m", "U"), s(1, "m", "U"), s(2, "m", "U+h"),
			s(2+StickyFor-1, "-", "H"),
			s(2+StickyFor, "m", "U+u"), // exactly at the end: UDP again
			s(2+StickyFor+1, "m", "U"),
			s(2+StickyFor+2, "m", "U+h"),
			s(2+2*StickyFor+1, "-", "H"),
			s(2+2*StickyFor+2, "u", "U+u"),
			s(2+2*StickyFor+3, "m", "U"),
		}},
		{"udp mode never falls back", TransportUDP, []step{
			s(0, "m", "O"), s(1, "m", "O"), s(2, "m", "O"), s(3, "m", "O"), s(4, "f", "O")}},
		{"http mode", TransportHTTP, []step{s(0, "-", "H"), s(1, "-", "H")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
			p := transportPolicy{mode: tc.mode}
			var got, want []string
			for _, st := range tc.steps {
				now := t0.Add(st.at)
				r, ev := p.route(now)
				g := map[route]string{routeUDPThenHTTP: "U", routeUDPOnly: "O", routeHTTP: "H"}[r]
				switch st.out {
				case "u":
					ev2 := p.record(now, udpAnswered)
					assert.Equal(t, noSwitch, ev2)
				case "m":
					if e := p.record(now, udpMissHTTPAnswered); e != noSwitch {
						ev = e
					}
				case "f":
					assert.Equal(t, noSwitch, p.record(now, udpMissHTTPFailed))
				}
				g += map[switchEvent]string{noSwitch: "", switchToHTTP: "+h", switchToUDP: "+u"}[ev]
				got = append(got, fmt.Sprintf("%s %s", st.at, g))
				want = append(want, fmt.Sprintf("%s %s", st.at, st.want))
			}
			assert.Equal(t, strings.Join(want, "\n"), strings.Join(got, "\n"))
		})
	}
}

func TestUDPDeadline(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		r    route
		left time.Duration
		ok   bool
		want time.Duration // after now; -1: no deadline
	}{
		{"auto: half a short interval", routeUDPThenHTTP, 500 * time.Millisecond, true, 250 * time.Millisecond},
		{"auto: at most a second", routeUDPThenHTTP, 5 * time.Second, true, time.Second},
		{"auto: two seconds left", routeUDPThenHTTP, 2 * time.Second, true, time.Second},
		{"auto: deadline passed", routeUDPThenHTTP, -time.Second, true, 0},
		{"auto: no deadline", routeUDPThenHTTP, 0, false, time.Second},
		{"udp only: the whole interval", routeUDPOnly, 5 * time.Second, true, 5 * time.Second},
		{"udp only: no deadline", routeUDPOnly, 0, false, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := udpDeadline(tc.r, now, now.Add(tc.left), tc.ok)
			if tc.want < 0 {
				assert.True(t, got.IsZero(), "no deadline but the context's")
				return
			}
			assert.Equal(t, tc.want, got.Sub(now))
		})
	}
}
