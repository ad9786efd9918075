package fencer

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Limits bound how many fences run at once and how often they start. They
// come from the host's effective policy, so two hosts may ask with
// different limits; each request is judged by its own.
type Limits struct {
	// MaxConcurrent is the most fences in flight in the whole cluster,
	// this one included; at least 1.
	MaxConcurrent int `json:"max_concurrent"`
	// MaxConcurrentPerRack is the most in flight in the host's rack, this
	// one included; at least 1.
	MaxConcurrentPerRack int `json:"max_concurrent_per_rack"`
	// MinInterval is the least time between two fence starts anywhere in
	// the cluster.
	MinInterval time.Duration `json:"min_interval"`
}

// Request asks to start fencing Host.
type Request struct {
	Host   string `json:"host"`
	Rack   string `json:"rack"`
	Limits Limits `json:"limits"`
}

// Admission is the gate's answer.
type Admission struct {
	// OK: the fence may start now, and the gate counts it in flight until
	// Done.
	OK bool `json:"ok"`
	// RetryAt is the earliest time a refused request could pass if nothing
	// else changes. Zero when it waits for a fence in flight to finish
	// (Done), or when the request itself is invalid.
	RetryAt time.Time `json:"retry_at,omitzero"`
	// Reason says every limit that refused it, joined by "; ".
	Reason string `json:"reason,omitempty"`
}

// Gate admits fences within the policy's limits. It is pure bookkeeping:
// the caller passes the time and must not use it from two goroutines at
// once (the caller's lock covers it).
type Gate struct {
	inFlight  map[string]Flight
	lastStart time.Time
	lastDone  time.Time
}

// Flight is one fence the gate counts as running.
type Flight struct {
	Host    string    `json:"host"`
	Rack    string    `json:"rack"`
	Started time.Time `json:"started"`
}

// NewGate is a gate with nothing in flight and no fence started yet.
func NewGate() *Gate { return &Gate{inFlight: map[string]Flight{}} }

// Admit decides whether req's fence may start at now. When it may, the
// fence counts as in flight from now until Done(req.Host).
func (g *Gate) Admit(req Request, now time.Time) Admission {
	if err := req.check(); err != "" {
		return Admission{Reason: err}
	}
	if _, busy := g.inFlight[req.Host]; busy {
		return Admission{Reason: fmt.Sprintf("host %s is already being fenced", req.Host)}
	}
	var why []string
	waitsForDone := false
	if n := len(g.inFlight); n >= req.Limits.MaxConcurrent {
		why = append(why, fmt.Sprintf("%s in flight, max %d", fences(n), req.Limits.MaxConcurrent))
		waitsForDone = true
	}
	inRack := 0
	for _, f := range g.inFlight {
		if f.Rack == req.Rack {
			inRack++
		}
	}
	if inRack >= req.Limits.MaxConcurrentPerRack {
		why = append(why, fmt.Sprintf("rack %s: %s in flight, max %d", req.Rack, fences(inRack), req.Limits.MaxConcurrentPerRack))
		waitsForDone = true
	}
	var retryAt time.Time
	if !g.lastStart.IsZero() {
		if next := g.lastStart.Add(req.Limits.MinInterval); now.Before(next) {
			retryAt = next
			ago := now.Sub(g.lastStart)
			if ago < 0 {
				why = append(why, fmt.Sprintf("last fence started at %s, after now (clock stepped back), min interval %s",
					g.lastStart.Format(time.RFC3339Nano), req.Limits.MinInterval))
			} else {
				why = append(why, fmt.Sprintf("last fence started %s ago, min interval %s", ago.Truncate(time.Millisecond), req.Limits.MinInterval))
			}
		}
	}
	if len(why) > 0 {
		if waitsForDone {
			retryAt = time.Time{}
		}
		return Admission{RetryAt: retryAt, Reason: strings.Join(why, "; ")}
	}
	g.inFlight[req.Host] = Flight{Host: req.Host, Rack: req.Rack, Started: now}
	g.lastStart = now
	return Admission{OK: true}
}

// Done ends host's fence, verified or not. A host not in flight is
// ignored, so Done is safe to repeat.
func (g *Gate) Done(host string, now time.Time) {
	if _, ok := g.inFlight[host]; ok {
		delete(g.inFlight, host)
		g.lastDone = now
	}
}

// Resume counts a fence as in flight without checking limits: for a daemon
// that restarts and finds a fence journaled as started but not finished.
// The fence already started, so refusing it here would protect nothing.
func (g *Gate) Resume(host, rack string, started time.Time) {
	g.inFlight[host] = Flight{Host: host, Rack: rack, Started: started}
	if started.After(g.lastStart) {
		g.lastStart = started
	}
}

// GateStatus is a snapshot for the API and logs.
type GateStatus struct {
	InFlight  []Flight  `json:"in_flight"` // by host name
	LastStart time.Time `json:"last_start,omitzero"`
	LastDone  time.Time `json:"last_done,omitzero"`
}

// Status is what the gate holds now.
func (g *Gate) Status() GateStatus {
	s := GateStatus{LastStart: g.lastStart, LastDone: g.lastDone, InFlight: make([]Flight, 0, len(g.inFlight))}
	for _, f := range g.inFlight {
		s.InFlight = append(s.InFlight, f)
	}
	slices.SortFunc(s.InFlight, func(a, b Flight) int { return strings.Compare(a.Host, b.Host) })
	return s
}

// check names what is wrong with a request; a bad request is refused, never
// admitted on a guess.
func (r Request) check() string {
	var bad []string
	if r.Host == "" {
		bad = append(bad, "no host")
	}
	if r.Rack == "" {
		bad = append(bad, "no rack")
	}
	if r.Limits.MaxConcurrent < 1 {
		bad = append(bad, fmt.Sprintf("max concurrent fences must be at least 1, got %d", r.Limits.MaxConcurrent))
	}
	if r.Limits.MaxConcurrentPerRack < 1 {
		bad = append(bad, fmt.Sprintf("max concurrent fences per rack must be at least 1, got %d", r.Limits.MaxConcurrentPerRack))
	}
	if r.Limits.MinInterval < 0 {
		bad = append(bad, fmt.Sprintf("min fence interval must not be negative, got %s", r.Limits.MinInterval))
	}
	if len(bad) == 0 {
		return ""
	}
	return fmt.Sprintf("invalid fence request for host %q: %s", r.Host, strings.Join(bad, "; "))
}

func fences(n int) string {
	if n == 1 {
		return "1 fence"
	}
	return fmt.Sprintf("%d fences", n)
}
