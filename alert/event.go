package alert

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// Event types. Webhook filters match them with path.Match globs ("fence.*").
const (
	HostUnreachable = "host.unreachable" // detection lost the host
	HostVerdict     = "host.verdict"     // a verdict on a host (Details: verdict, reason, evidence)
	HostRebooted    = "host.rebooted"    // the host came back with a new boot id
	HostReturned    = "host.returned"    // a fenced host's agent is back; stale copies are being cleaned up

	FenceReadiness = "fence.readiness" // a fence level cannot work (e.g. BMC auth fails) before it is needed
	FenceStarted   = "fence.started"
	FenceSucceeded = "fence.succeeded" // verified by reading back
	FenceFailed    = "fence.failed"    // Details: levels tried and why each failed

	EvacuationStarted  = "evacuation.started"
	EvacuationFinished = "evacuation.finished" // every evacuable domain runs elsewhere
	EvacuationPartial  = "evacuation.partial"  // Details: per-VM results, the ones not placed and why

	SplitBrainRefused = "split_brain.refused" // a rebuild's start refused: the domain already runs somewhere (the evacuator's guard)
	// SplitBrainDetected: a VM runs on two hosts. Either it was rebuilt
	// elsewhere and runs again on the host it was evacuated from (Details:
	// uuid, name, stale_host, home; that copy is destroyed at once), or it
	// runs on two hosts neither of which it was evacuated from for 30 s
	// (Details: uuid, name, hosts; nothing is destroyed).
	SplitBrainDetected = "split_brain.detected"

	StormEngaged = "storm.engaged"
	StormCleared = "storm.cleared"

	ConfigReloadFailed = "config.reload_failed"

	// HeartbeatRefused: a heartbeat older than one already taken from the
	// host, critical when sent after it (a beat forged in the host's name
	// got in first), a warning when sent before it (a replay, or a delayed
	// datagram), or dated outside the clock-skew window (a warning: fix the
	// host's clock). Details: verdict (heartbeat-stale, heartbeat-replayed,
	// heartbeat-skewed).
	HeartbeatRefused = "heartbeat.refused"
)

// Types lists every event type the daemon sends.
var Types = []string{HostUnreachable, HostVerdict, HostRebooted, HostReturned, FenceReadiness, FenceStarted, FenceSucceeded,
	FenceFailed, EvacuationStarted, EvacuationFinished, EvacuationPartial, SplitBrainRefused, SplitBrainDetected, StormEngaged, StormCleared,
	ConfigReloadFailed, HeartbeatRefused}

// CheckPattern refuses a webhook filter that is not a valid glob or that
// matches no event type: a misspelt filter ("storm_guard.*") would silence
// a webhook without a word.
func CheckPattern(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("pattern %q: %w", p, err)
	}
	for _, t := range Types {
		if ok, _ := path.Match(p, t); ok {
			return nil
		}
	}
	return fmt.Errorf("pattern %q matches no event type (they are %s)", p, strings.Join(Types, ", "))
}

// Severities.
const (
	Info     = "info"
	Warning  = "warning"
	Critical = "critical"
)

// defaultSeverity is used when an Event's Severity is empty; unknown types
// get Warning.
var defaultSeverity = map[string]string{
	HostUnreachable:    Warning,
	HostVerdict:        Warning,
	HostRebooted:       Info,
	HostReturned:       Info,
	FenceReadiness:     Warning,
	FenceStarted:       Warning,
	FenceSucceeded:     Warning,
	FenceFailed:        Critical,
	EvacuationStarted:  Info,
	EvacuationFinished: Info,
	EvacuationPartial:  Critical,
	SplitBrainRefused:  Critical,
	SplitBrainDetected: Critical,
	StormEngaged:       Critical,
	StormCleared:       Info,
	ConfigReloadFailed: Warning,
}

// resolving types end a condition: Alertmanager gets endsAt = At for them.
var resolving = map[string]bool{
	FenceSucceeded:     true,
	EvacuationFinished: true,
	StormCleared:       true,
}

// Event is one thing that happened, as sent to webhooks (the "chime" format
// is this struct's JSON).
type Event struct {
	// ID is unique per event; Send fills it (random hex) when empty. It is
	// the X-Chime-Delivery header, stable across retries and restarts, so a
	// receiver can drop duplicates (delivery is at least once).
	ID   string    `json:"id"`
	Type string    `json:"type"`
	At   time.Time `json:"at"` // Send fills it from the dispatcher's clock when zero
	// Cluster: Send fills it from Config.Cluster when empty.
	Cluster       string `json:"cluster,omitempty"`
	Host          string `json:"host,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
	// Severity is Info, Warning or Critical; empty means the type's default.
	Severity string         `json:"severity"`
	Summary  string         `json:"summary"`
	Details  map[string]any `json:"details,omitempty"`
}

// NewEventID returns a random 128-bit hex ID.
func NewEventID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// normalize fills defaults and checks ev.
func (ev *Event) normalize(now time.Time, cluster string) error {
	if ev.Type == "" {
		return fmt.Errorf("event type is empty (summary %q)", ev.Summary)
	}
	if ev.ID == "" {
		ev.ID = NewEventID()
	}
	if ev.At.IsZero() {
		ev.At = now
	}
	ev.At = ev.At.UTC().Round(0)
	if ev.Cluster == "" {
		ev.Cluster = cluster
	}
	if ev.Severity == "" {
		ev.Severity = defaultSeverity[ev.Type]
		if ev.Severity == "" {
			ev.Severity = Warning
		}
	}
	switch ev.Severity {
	case Info, Warning, Critical:
	default:
		return fmt.Errorf("event %s: severity %q is not info, warning or critical", ev.Type, ev.Severity)
	}
	return nil
}
