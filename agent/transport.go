package agent

import (
	"fmt"
	"time"
)

// Transport is how heartbeats travel to the daemon (chime-agent
// --heartbeat-transport). The assignment always travels over HTTP.
type Transport int

const (
	// TransportAuto sends each heartbeat as a UDP datagram; one UDP does
	// not answer within half the interval (at most MaxUDPWait) goes over
	// HTTP in the rest of it. After StickyMisses such beats in a row that
	// HTTP answered, HTTP carries every beat for StickyFor, then UDP is
	// tried again.
	TransportAuto Transport = iota
	// TransportUDP sends heartbeats as datagrams only: no reply is a
	// heartbeat not delivered.
	TransportUDP
	// TransportHTTP posts every heartbeat (DaemonClient alone).
	TransportHTTP
)

// The auto mode's constants (the session's decision, shared with the
// daemon's documentation).
const (
	// MaxUDPWait bounds the wait for a UDP reply before the HTTP fallback.
	MaxUDPWait = time.Second
	// StickyMisses UDP misses in a row that HTTP answered make HTTP sticky.
	StickyMisses = 3
	// StickyFor is how long HTTP stays sticky before UDP is tried again.
	StickyFor = 10 * time.Minute
)

var transportNames = [...]string{TransportAuto: "auto", TransportUDP: "udp", TransportHTTP: "http"}

func (t Transport) String() string {
	if t >= 0 && int(t) < len(transportNames) {
		return transportNames[t]
	}
	return fmt.Sprintf("Transport(%d)", int(t))
}

// ParseTransport reads "auto", "udp" or "http".
func ParseTransport(s string) (Transport, error) {
	for i, n := range transportNames {
		if s == n {
			return Transport(i), nil
		}
	}
	return 0, fmt.Errorf("heartbeat transport %q: want auto, udp or http", s)
}

// route is how one heartbeat travels.
type route int

const (
	routeUDPThenHTTP route = iota // auto: UDP, HTTP when no reply
	routeUDPOnly                  // udp mode
	routeHTTP                     // auto while HTTP is sticky; http mode
)

// outcome is what became of a heartbeat sent over UDP.
type outcome int

const (
	// udpAnswered: a reply came (an ack or a refusal: the daemon heard).
	udpAnswered outcome = iota
	// udpMissHTTPAnswered: no UDP reply, and HTTP delivered the beat.
	udpMissHTTPAnswered
	// udpMissHTTPFailed: neither answered. The daemon is down or cut off,
	// which says nothing about UDP: the streak neither grows nor ends.
	udpMissHTTPFailed
)

// switchEvent is a change of transport worth one log line.
type switchEvent int

const (
	noSwitch switchEvent = iota
	switchToHTTP
	switchToUDP
)

// transportPolicy chooses each heartbeat's route. Pure: the caller passes
// the time; no I/O, no clock, no goroutines. Not safe for concurrent use.
type transportPolicy struct {
	mode      Transport
	misses    int       // UDP misses in a row that HTTP answered
	httpUntil time.Time // non-zero: HTTP is sticky until then
}

// route says how the heartbeat at now travels, and whether that is a
// switch back to UDP (the sticky time just ended).
func (p *transportPolicy) route(now time.Time) (route, switchEvent) {
	switch p.mode {
	case TransportHTTP:
		return routeHTTP, noSwitch
	case TransportUDP:
		return routeUDPOnly, noSwitch
	}
	if p.httpUntil.IsZero() {
		return routeUDPThenHTTP, noSwitch
	}
	if now.Before(p.httpUntil) {
		return routeHTTP, noSwitch
	}
	p.httpUntil = time.Time{}
	return routeUDPThenHTTP, switchToUDP
}

// record takes the outcome of a beat route sent over UDP at now, and says
// whether HTTP becomes sticky.
func (p *transportPolicy) record(now time.Time, o outcome) switchEvent {
	if p.mode != TransportAuto {
		return noSwitch
	}
	switch o {
	case udpAnswered:
		p.misses = 0
	case udpMissHTTPAnswered:
		p.misses++
		if p.misses >= StickyMisses {
			// The count starts over: after StickyFor, UDP gets as many
			// chances again.
			p.misses, p.httpUntil = 0, now.Add(StickyFor)
			return switchToHTTP
		}
	}
	return noSwitch
}

// udpDeadline is when a beat stops waiting for its UDP reply, given its
// context's deadline (one interval; ok false: none). Auto mode waits half
// the time left, at most MaxUDPWait, so HTTP has the rest; UDP only waits
// until the context's deadline (zero: no deadline, the context's end).
func udpDeadline(r route, now, deadline time.Time, ok bool) time.Time {
	if r == routeUDPOnly {
		if ok {
			return deadline
		}
		return time.Time{}
	}
	wait := MaxUDPWait
	if ok {
		wait = min(max(deadline.Sub(now)/2, 0), MaxUDPWait)
	}
	return now.Add(wait)
}
