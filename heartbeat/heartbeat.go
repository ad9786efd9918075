// Package heartbeat is the wire format between chime-agent and the daemon:
// the heartbeat an agent pushes, the daemon's acknowledgement, and the
// assignment (admin state and the domains that should run on the host) an
// agent fetches on start and whenever the acknowledgement says it changed.
//
// Decoding is strict about what is there (types, required fields, UUID
// syntax, sizes) and tolerant of what is not known (unknown fields), so a
// rolling upgrade with newer agents does not make heartbeats bounce.
package heartbeat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

// Paths of the daemon's agent-facing endpoints.
const (
	PathHeartbeat  = "/v1/agent/heartbeat"
	PathAssignment = "/v1/agent/assignment" // ?host=NAME
)

// MaxBodyBytes bounds a heartbeat or assignment body; a host with thousands
// of domains still fits.
const MaxBodyBytes = 1 << 20

// MaxDomains bounds the domains one heartbeat may list.
const MaxDomains = 4096

// Heartbeat is what an agent sends every heartbeat interval.
type Heartbeat struct {
	Host   string `json:"host"`
	BootID string `json:"boot_id"`
	// Seq increases by one per heartbeat from one agent process; it starts
	// again at 1 when the agent restarts (AgentStart tells restarts apart).
	Seq          uint64    `json:"seq"`
	AgentStart   time.Time `json:"agent_start"`
	AgentVersion string    `json:"agent_version"`
	// SentAt is the agent's clock. The daemon uses its own receive time for
	// every decision about the host; it refuses a heartbeat whose SentAt is
	// missing or further from its clock than its
	// detection.heartbeat_max_clock_skew (replay protection), or earlier
	// than AgentStart, and reports the skew.
	SentAt  time.Time `json:"sent_at"`
	Health  Health    `json:"health"`
	Domains []Domain  `json:"domains"`
	// LocalDrain is set while the host carries the agent's local drain
	// marker (chime-agent drain, or the agent's POST /v1/drain): the agent
	// starts no domain, whatever the assignment says. Absent otherwise and
	// from agents that predate it.
	LocalDrain *LocalDrain `json:"local_drain,omitempty"`
	// LocalMigrations are migrations an operator ran on the host with
	// chime-agent migrate (the control plane could not reach it), sent
	// until the daemon lists their IDs in Ack.LocalMigrationsSeen.
	LocalMigrations []LocalMigration `json:"local_migrations,omitempty"`
}

// MaxLocalMigrations bounds the local migrations one heartbeat reports.
const MaxLocalMigrations = 256

// LocalMigration is one VM's migration run on the host by its agent.
type LocalMigration struct {
	// ID is unique per record; the daemon acknowledges it.
	ID string `json:"id"`
	// At is when the migration ended, by the agent's clock.
	At   time.Time `json:"at"`
	UUID string    `json:"uuid"`
	Name string    `json:"name"`
	// Dest is the destination address the operator gave (--dest), and
	// Interface the local interface the data left by.
	Dest      string `json:"dest"`
	Interface string `json:"interface"`
	// Moved: the VM read back running on Dest and gone from this host;
	// the daemon should record its new home. Otherwise Error says why it
	// stayed (or that the outcome is unknown).
	Moved bool   `json:"moved"`
	Error string `json:"error,omitempty"`
}

// LocalDrain describes a host drained by its own agent.
type LocalDrain struct {
	// Since is when the marker was written, by the agent's clock.
	Since time.Time `json:"since"`
	// By is "api" (the daemon's fencer or an operator over the agent's
	// API) or "cli" (chime-agent drain on the host).
	By string `json:"by"`
}

// Health is the agent's local view: each check that failed makes the host's
// monitor state `error` (heartbeats arrive, but the host is not fit).
type Health struct {
	Libvirt    Check   `json:"libvirt"`
	Interfaces []Check `json:"interfaces,omitempty"`
	Storage    []Check `json:"storage,omitempty"`
	// IOErrors counts disk I/O errors the agent saw since its last
	// heartbeat (domains paused on EIO, failed storage writes).
	IOErrors int    `json:"io_errors"`
	IODetail string `json:"io_detail,omitempty"`
	// Evictions lists evicted domains (Assignment.Evicted) the agent
	// failed to destroy or undefine, one failed check per domain, named
	// "<name> <uuid>". A copy that may still run is a fault.
	Evictions []Check `json:"evictions,omitempty"`
}

// Check is one local health check.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Domain is one domain the host's libvirtd knows.
type Domain struct {
	UUID  string                 `json:"uuid"`
	Name  string                 `json:"name"`
	State hypervisor.DomainState `json:"state"`
	// Reason is libvirt's reason for the state ("crashed", "shutdown",
	// "destroyed", "unknown", ...); it tells a QEMU that died from a VM
	// somebody stopped on purpose.
	Reason string `json:"reason,omitempty"`
	// Autostart: libvirt's autostart is on for the domain (the agent
	// turns it off; the daemon evacuates no VM while it is on). Absent
	// from agents that predate it, which read as off.
	Autostart bool `json:"autostart,omitempty"`
}

// ValidUUID reports whether s is a lower-case canonical UUID, the form
// libvirt prints and the daemon keys domains by. (Hand-written: it runs for
// every domain of every heartbeat.)
func ValidUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < 36; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return true
}

// Validate names every field that makes the heartbeat unusable.
func (h Heartbeat) Validate() error {
	var errs []error
	if h.Host == "" {
		errs = append(errs, errors.New("host is empty"))
	}
	if h.BootID == "" {
		errs = append(errs, errors.New("boot_id is empty"))
	}
	if h.Seq == 0 {
		errs = append(errs, errors.New("seq must be >= 1"))
	}
	if len(h.Domains) > MaxDomains {
		errs = append(errs, fmt.Errorf("%d domains listed, at most %d allowed", len(h.Domains), MaxDomains))
	} else {
		seen := make(map[string]bool, len(h.Domains))
		for i, d := range h.Domains {
			switch {
			case !ValidUUID(d.UUID):
				errs = append(errs, fmt.Errorf("domains[%d].uuid %q is not a lower-case canonical UUID", i, d.UUID))
			case seen[d.UUID]:
				errs = append(errs, fmt.Errorf("domains[%d].uuid %s is listed twice", i, d.UUID))
			}
			seen[d.UUID] = true
		}
	}
	if len(h.LocalMigrations) > MaxLocalMigrations {
		errs = append(errs, fmt.Errorf("%d local migrations listed, at most %d allowed", len(h.LocalMigrations), MaxLocalMigrations))
	} else {
		ids := make(map[string]bool, len(h.LocalMigrations))
		for i, m := range h.LocalMigrations {
			switch {
			case m.ID == "" || len(m.ID) > 64:
				errs = append(errs, fmt.Errorf("local_migrations[%d].id must be 1 to 64 bytes", i))
			case ids[m.ID]:
				errs = append(errs, fmt.Errorf("local_migrations[%d].id %q is listed twice", i, m.ID))
			case !ValidUUID(m.UUID):
				errs = append(errs, fmt.Errorf("local_migrations[%d].uuid %q is not a lower-case canonical UUID", i, m.UUID))
			case m.Dest == "":
				errs = append(errs, fmt.Errorf("local_migrations[%d].dest is empty", i))
			}
			ids[m.ID] = true
		}
	}
	if h.Health.IOErrors < 0 {
		errs = append(errs, fmt.Errorf("health.io_errors must be >= 0, got %d", h.Health.IOErrors))
	}
	return errors.Join(errs...)
}

// Fault summarises every failed health check, or "" when the host is fit.
func (h Health) Fault() string {
	var f []string
	if !h.Libvirt.OK {
		f = append(f, "libvirtd unreachable"+detail(h.Libvirt.Detail))
	}
	for _, c := range h.Interfaces {
		if !c.OK {
			f = append(f, "interface "+c.Name+" down"+detail(c.Detail))
		}
	}
	for _, c := range h.Storage {
		if !c.OK {
			f = append(f, "storage "+c.Name+" not writable"+detail(c.Detail))
		}
	}
	if h.IOErrors > 0 {
		f = append(f, fmt.Sprintf("%d I/O errors", h.IOErrors)+detail(h.IODetail))
	}
	for _, c := range h.Evictions {
		if !c.OK {
			f = append(f, "evicted domain "+c.Name+" not cleaned up"+detail(c.Detail))
		}
	}
	return strings.Join(f, "; ")
}

func detail(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// Decode reads one heartbeat and validates it. Errors say what is wrong
// precisely enough to fix the agent: the JSON offset or the field.
func Decode(r io.Reader) (Heartbeat, error) {
	var h Heartbeat
	if err := decodeJSON(r, &h, true); err != nil {
		return Heartbeat{}, err
	}
	if err := h.Validate(); err != nil {
		return Heartbeat{}, fmt.Errorf("invalid heartbeat: %w", err)
	}
	return h, nil
}

// decodeJSON reads one JSON object into v. Duplicate keys are refused
// (encoding/json keeps the last, so a body could say two things and a
// reviewer read the first); strict also refuses unknown fields.
func decodeJSON(r io.Reader, v any, strict bool) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body")
		}
		return jsonError(err)
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return checkDuplicateKeys(data)
}

// checkDuplicateKeys walks the JSON value in data (already decoded once, so
// well-formed) and names the first object key that appears twice.
func checkDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	var walk func(path string) error
	walk = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k, _ := kt.(string)
				if seen[k] {
					return fmt.Errorf("field %q appears twice", path+k)
				}
				seen[k] = true
				if err := walk(path + k + "."); err != nil {
					return err
				}
			}
			_, err = dec.Token() // '}'
			return err
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s%d.", path, i)); err != nil {
					return err
				}
			}
			_, err = dec.Token() // ']'
			return err
		}
		return nil
	}
	return walk("")
}

// Ack is the daemon's answer to a heartbeat.
type Ack struct {
	AdminState node.AdminState `json:"admin_state"`
	// AssignmentRevision changes whenever the host's assignment does; the
	// agent fetches the assignment again when it differs from the one it
	// holds.
	AssignmentRevision uint64 `json:"assignment_revision"`
	// HeartbeatInterval is the daemon's configured interval, so agents
	// follow a config reload without their own restart.
	HeartbeatInterval Duration `json:"heartbeat_interval"`
	// LocalMigrationsSeen lists the IDs of Heartbeat.LocalMigrations the
	// daemon has recorded; the agent stops sending those.
	LocalMigrationsSeen []string `json:"local_migrations_seen,omitempty"`
	// Outcome is what the daemon did with the heartbeat: OutcomeAccepted,
	// or why it took it without acting on it (OutcomeDuplicate,
	// OutcomeStale, OutcomeLate); OutcomeDetail says more. Empty from a
	// daemon that predates it, which reads as accepted. An agent told
	// OutcomeStale starts a new sequence (see Ack.Stale).
	Outcome       string `json:"outcome,omitempty"`
	OutcomeDetail string `json:"outcome_detail,omitempty"`
}

// Outcomes of a heartbeat the daemon answered with an Ack. A heartbeat it
// refused outright (unknown host, invalid, sent_at outside the daemon's
// clock-skew window) gets a 4xx or a refused reply instead.
const (
	OutcomeAccepted  = "accepted"
	OutcomeDuplicate = "duplicate" // a retransmission of the newest beat taken
	OutcomeStale     = "stale"     // older than a beat already taken from the host
	OutcomeLate      = "late"      // sent long before it arrived
)

// Accepted reports whether the daemon acted on the heartbeat.
func (a Ack) Accepted() bool { return a.Outcome == "" || a.Outcome == OutcomeAccepted }

// Stale reports whether the daemon has taken a newer heartbeat in this
// host's name than the one answered: the agent's sequence was overtaken (a
// forged beat, or a replay of a later agent process) and every further beat
// of it would be refused too.
func (a Ack) Stale() bool { return a.Outcome == OutcomeStale }

// Assignment is what should be true on one host.
type Assignment struct {
	Host       string          `json:"host"`
	AdminState node.AdminState `json:"admin_state"`
	// AdminSince is when AdminState was set, by the daemon's clock (zero
	// when the daemon does not know: never set, or its record was pruned).
	// The agent keeps its local drain marker unless the admin state was
	// set after the drain.
	AdminSince        time.Time `json:"admin_since,omitzero"`
	Revision          uint64    `json:"revision"`
	HeartbeatInterval Duration  `json:"heartbeat_interval"`
	// Domains should run on the host. The agent restarts one whose QEMU
	// died only when AdminState allows starting domains.
	Domains []AssignedDomain `json:"domains"`
	// Evicted are domains that now run elsewhere (rebuilt while this host
	// was fenced). The agent destroys and undefines each before anything
	// else and never starts one. A UUID is never in both lists.
	Evicted []AssignedDomain `json:"evicted"`
}

// AssignedDomain is one domain that should run on the host.
type AssignedDomain struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
}

// DecodeAssignment reads and checks an assignment.
func DecodeAssignment(r io.Reader) (Assignment, error) {
	var a Assignment
	if err := decodeJSON(r, &a, false); err != nil {
		return Assignment{}, err
	}
	if err := a.Validate(); err != nil {
		return Assignment{}, fmt.Errorf("invalid assignment: %w", err)
	}
	return a, nil
}

// Validate names every field that makes the assignment unusable: an empty
// host, a UUID that is not canonical, a domain listed twice in evicted,
// or one that is both assigned and evicted (the agent must not guess which
// one the daemon meant).
func (a Assignment) Validate() error {
	var errs []error
	if a.Host == "" {
		errs = append(errs, errors.New("host is empty"))
	}
	assigned := make(map[string]bool, len(a.Domains))
	for i, d := range a.Domains {
		if !ValidUUID(d.UUID) {
			errs = append(errs, fmt.Errorf("domains[%d].uuid %q is not a canonical UUID", i, d.UUID))
		}
		assigned[d.UUID] = true
	}
	evicted := make(map[string]bool, len(a.Evicted))
	for i, d := range a.Evicted {
		switch {
		case !ValidUUID(d.UUID):
			errs = append(errs, fmt.Errorf("evicted[%d].uuid %q is not a canonical UUID", i, d.UUID))
		case evicted[d.UUID]:
			errs = append(errs, fmt.Errorf("evicted[%d].uuid %s is listed twice", i, d.UUID))
		case assigned[d.UUID]:
			errs = append(errs, fmt.Errorf("evicted[%d].uuid %s is also in domains", i, d.UUID))
		}
		evicted[d.UUID] = true
	}
	return errors.Join(errs...)
}

// Duration marshals as "1.5s" rather than nanoseconds.
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}
