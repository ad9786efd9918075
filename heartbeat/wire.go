package heartbeat

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chimestack/chime-fence/node"
)

// A datagram's payload is protobuf wire format, written and read by hand
// with protowire (no generated code, no schema compiler in the build).
// encoding/json took ~6 µs per heartbeat, most of the daemon's CPU at
// 10,000 hosts a second; this takes well under one. Like JSON it skips
// fields it does not know, so a newer agent's heartbeat still reads.
// Field numbers are the contract: never reuse one.
//
//	Heartbeat: 1 host, 2 boot_id, 3 seq, 4 agent_start, 5 agent_version,
//	           6 sent_at, 7 health, 8 domains (repeated), 9 local_drain,
//	           10 local_migrations (repeated), 11 domains_listed (bool:
//	           Domains is a list, possibly empty, not "could not list")
//	Health:    1 libvirt, 2 interfaces, 3 storage, 4 io_errors (sint64),
//	           5 io_detail, 6 evictions
//	Check:     1 name, 2 ok, 3 detail
//	Domain:    1 uuid, 2 name, 3 state (text), 4 reason, 5 autostart (bool)
//	LocalDrain: 1 since, 2 by
//	LocalMigration: 1 id, 2 at, 3 uuid, 4 name, 5 dest, 6 interface,
//	           7 moved, 8 error
//	Reply:     1 host, 2 agent_start, 3 seq, 4 ack, 5 refused
//	Ack:       1 admin_state (text, always written), 2 assignment_revision,
//	           3 heartbeat_interval (sint64 ns), 4 local_migrations_seen,
//	           5 outcome, 6 outcome_detail
//	Timestamp: 1 seconds (sint64), 2 nanos; a zero time is left out.

// appendHeartbeat appends hb's wire form to b.
func appendHeartbeat(b []byte, hb Heartbeat) []byte {
	b = appendString(b, 1, hb.Host)
	b = appendString(b, 2, hb.BootID)
	b = appendUint(b, 3, hb.Seq)
	b = appendTime(b, 4, hb.AgentStart)
	b = appendString(b, 5, hb.AgentVersion)
	b = appendTime(b, 6, hb.SentAt)
	b = appendMessage(b, 7, func(b []byte) []byte { return appendHealth(b, hb.Health) })
	for _, d := range hb.Domains {
		b = appendMessage(b, 8, func(b []byte) []byte {
			b = appendString(b, 1, d.UUID)
			b = appendString(b, 2, d.Name)
			b = appendString(b, 3, d.State.String())
			b = appendString(b, 4, d.Reason)
			return appendBool(b, 5, d.Autostart)
		})
	}
	if ld := hb.LocalDrain; ld != nil {
		b = appendMessage(b, 9, func(b []byte) []byte {
			b = appendTime(b, 1, ld.Since)
			return appendString(b, 2, ld.By)
		})
	}
	for _, m := range hb.LocalMigrations {
		b = appendMessage(b, 10, func(b []byte) []byte {
			b = appendString(b, 1, m.ID)
			b = appendTime(b, 2, m.At)
			b = appendString(b, 3, m.UUID)
			b = appendString(b, 4, m.Name)
			b = appendString(b, 5, m.Dest)
			b = appendString(b, 6, m.Interface)
			b = appendBool(b, 7, m.Moved)
			return appendString(b, 8, m.Error)
		})
	}
	return appendBool(b, 11, hb.Domains != nil)
}

func appendHealth(b []byte, h Health) []byte {
	b = appendMessage(b, 1, func(b []byte) []byte { return appendCheck(b, h.Libvirt) })
	for _, c := range h.Interfaces {
		b = appendMessage(b, 2, func(b []byte) []byte { return appendCheck(b, c) })
	}
	for _, c := range h.Storage {
		b = appendMessage(b, 3, func(b []byte) []byte { return appendCheck(b, c) })
	}
	if h.IOErrors != 0 {
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(h.IOErrors)))
	}
	b = appendString(b, 5, h.IODetail)
	for _, c := range h.Evictions {
		b = appendMessage(b, 6, func(b []byte) []byte { return appendCheck(b, c) })
	}
	return b
}

func appendCheck(b []byte, c Check) []byte {
	b = appendString(b, 1, c.Name)
	b = appendBool(b, 2, c.OK)
	return appendString(b, 3, c.Detail)
}

func appendReply(b []byte, r Reply) []byte {
	b = appendString(b, 1, r.Host)
	b = appendTime(b, 2, r.AgentStart)
	b = appendUint(b, 3, r.Seq)
	if a := r.Ack; a != nil {
		b = appendMessage(b, 4, func(b []byte) []byte {
			// Always written: the zero admin state is "enabled", and an
			// ack that does not say it must not be read as such.
			b = protowire.AppendTag(b, 1, protowire.BytesType)
			b = protowire.AppendString(b, a.AdminState.String())
			b = appendUint(b, 2, a.AssignmentRevision)
			if a.HeartbeatInterval != 0 {
				b = protowire.AppendTag(b, 3, protowire.VarintType)
				b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(a.HeartbeatInterval)))
			}
			for _, id := range a.LocalMigrationsSeen {
				b = protowire.AppendTag(b, 4, protowire.BytesType)
				b = protowire.AppendString(b, id)
			}
			b = appendString(b, 5, a.Outcome)
			return appendString(b, 6, a.OutcomeDetail)
		})
	}
	return appendString(b, 5, r.Refused)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, 1)
}

func appendTime(b []byte, num protowire.Number, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return appendMessage(b, num, func(b []byte) []byte {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeZigZag(t.Unix()))
		return appendUint(b, 2, uint64(t.Nanosecond()))
	})
}

// appendMessage appends a length-delimited sub-message written by body.
// The length is a varint before the body: write the body after room for
// the longest length a datagram needs (2 bytes), then close the gap.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	start := len(b)
	b = append(b, 0, 0)
	b = body(b)
	n := len(b) - start - 2
	size := protowire.SizeVarint(uint64(n))
	switch {
	case size == 2:
		protowire.AppendVarint(b[start:start], uint64(n))
	case size < 2:
		protowire.AppendVarint(b[start:start], uint64(n))
		copy(b[start+size:], b[start+2:])
		b = b[:len(b)-(2-size)]
	default:
		b = append(b, make([]byte, size-2)...)
		copy(b[start+size:], b[start+2:len(b)-(size-2)])
		protowire.AppendVarint(b[start:start], uint64(n))
	}
	return b
}

// field is one decoded field: v for varints, raw for length-delimited.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	raw []byte
}

// eachField calls fn for every field of msg; fields of other wire types
// (fixed32/64, groups) are skipped as unknown.
func eachField(msg []byte, path string, fn func(f field) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return fmt.Errorf("%s: %w", orTop(path), protowire.ParseError(n))
		}
		msg = msg[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(msg)
		case protowire.BytesType:
			f.raw, n = protowire.ConsumeBytes(msg)
		default:
			n = protowire.ConsumeFieldValue(num, typ, msg)
		}
		if n < 0 {
			return fmt.Errorf("%s field %d: %w", orTop(path), num, protowire.ParseError(n))
		}
		msg = msg[n:]
		if typ != protowire.VarintType && typ != protowire.BytesType {
			continue
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

func orTop(path string) string {
	if path == "" {
		return "payload"
	}
	return path
}

// errWireType names a field sent with the wrong wire type.
func (f field) want(name string, typ protowire.Type) error {
	if f.typ != typ {
		return fmt.Errorf("%s: wire type %d, want %d", name, f.typ, typ)
	}
	return nil
}

func (f field) str(name string, dst *string) error {
	if err := f.want(name, protowire.BytesType); err != nil {
		return err
	}
	*dst = string(f.raw)
	return nil
}

func (f field) uint(name string, dst *uint64) error {
	if err := f.want(name, protowire.VarintType); err != nil {
		return err
	}
	*dst = f.v
	return nil
}

func (f field) boolean(name string, dst *bool) error {
	if err := f.want(name, protowire.VarintType); err != nil {
		return err
	}
	*dst = f.v != 0
	return nil
}

func (f field) sint(name string, dst *int64) error {
	if err := f.want(name, protowire.VarintType); err != nil {
		return err
	}
	*dst = protowire.DecodeZigZag(f.v)
	return nil
}

func (f field) time(name string, dst *time.Time) error {
	if err := f.want(name, protowire.BytesType); err != nil {
		return err
	}
	var sec int64
	var nsec uint64
	err := eachField(f.raw, name, func(g field) error {
		switch g.num {
		case 1:
			return g.sint("seconds", &sec)
		case 2:
			return g.uint("nanos", &nsec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if nsec >= uint64(time.Second) {
		return fmt.Errorf("%s.nanos: %d is not below 1e9", name, nsec)
	}
	*dst = time.Unix(sec, int64(nsec)).UTC()
	return nil
}

func (f field) message(name string, fn func(g field) error) error {
	if err := f.want(name, protowire.BytesType); err != nil {
		return err
	}
	return eachField(f.raw, name, fn)
}

// decodeHeartbeat reads a heartbeat's wire form (not validated).
func decodeHeartbeat(b []byte) (Heartbeat, error) {
	var hb Heartbeat
	listed := false
	var doms []Domain
	err := eachField(b, "", func(f field) error {
		switch f.num {
		case 1:
			return f.str("host", &hb.Host)
		case 2:
			return f.str("boot_id", &hb.BootID)
		case 3:
			return f.uint("seq", &hb.Seq)
		case 4:
			return f.time("agent_start", &hb.AgentStart)
		case 5:
			return f.str("agent_version", &hb.AgentVersion)
		case 6:
			return f.time("sent_at", &hb.SentAt)
		case 7:
			return f.message("health", func(g field) error { return healthField(&hb.Health, g) })
		case 8:
			const name = "state"
			var d Domain
			err := f.message("domain", func(g field) error {
				switch g.num {
				case 1:
					return g.str("uuid", &d.UUID)
				case 2:
					return g.str("name", &d.Name)
				case 3:
					if err := g.want(name, protowire.BytesType); err != nil {
						return err
					}
					if err := d.State.UnmarshalText(g.raw); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
				case 4:
					return g.str("reason", &d.Reason)
				case 5:
					return g.boolean("autostart", &d.Autostart)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("domains[%d]: %w", len(doms), err)
			}
			doms = append(doms, d)
			return nil
		case 9:
			ld := &LocalDrain{}
			hb.LocalDrain = ld
			return f.message("local_drain", func(g field) error {
				switch g.num {
				case 1:
					return g.time("local_drain.since", &ld.Since)
				case 2:
					return g.str("local_drain.by", &ld.By)
				}
				return nil
			})
		case 10:
			var m LocalMigration
			err := f.message("local migration", func(g field) error {
				switch g.num {
				case 1:
					return g.str("id", &m.ID)
				case 2:
					return g.time("at", &m.At)
				case 3:
					return g.str("uuid", &m.UUID)
				case 4:
					return g.str("name", &m.Name)
				case 5:
					return g.str("dest", &m.Dest)
				case 6:
					return g.str("interface", &m.Interface)
				case 7:
					return g.boolean("moved", &m.Moved)
				case 8:
					return g.str("error", &m.Error)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("local_migrations[%d]: %w", len(hb.LocalMigrations), err)
			}
			hb.LocalMigrations = append(hb.LocalMigrations, m)
			return nil
		case 11:
			return f.boolean("domains_listed", &listed)
		}
		return nil
	})
	if err != nil {
		return Heartbeat{}, err
	}
	switch {
	case len(doms) > 0:
		hb.Domains = doms
	case listed:
		hb.Domains = []Domain{}
	}
	return hb, nil
}

func healthField(h *Health, f field) error {
	check := func(name string, list *[]Check) error {
		var c Check
		if err := f.message("check", func(g field) error { return checkField(&c, g) }); err != nil {
			return fmt.Errorf("%s[%d]: %w", name, len(*list), err)
		}
		*list = append(*list, c)
		return nil
	}
	switch f.num {
	case 1:
		if err := f.message("check", func(g field) error { return checkField(&h.Libvirt, g) }); err != nil {
			return fmt.Errorf("health.libvirt: %w", err)
		}
	case 2:
		return check("health.interfaces", &h.Interfaces)
	case 3:
		return check("health.storage", &h.Storage)
	case 4:
		var v int64
		if err := f.sint("health.io_errors", &v); err != nil {
			return err
		}
		h.IOErrors = int(v)
		if int64(h.IOErrors) != v {
			return fmt.Errorf("health.io_errors: %d does not fit an int", v)
		}
	case 5:
		return f.str("health.io_detail", &h.IODetail)
	case 6:
		return check("health.evictions", &h.Evictions)
	}
	return nil
}

func checkField(c *Check, g field) error {
	switch g.num {
	case 1:
		return g.str("name", &c.Name)
	case 2:
		return g.boolean("ok", &c.OK)
	case 3:
		return g.str("detail", &c.Detail)
	}
	return nil
}

// decodeReply reads a reply's wire form.
func decodeReply(b []byte) (Reply, error) {
	var r Reply
	err := eachField(b, "", func(f field) error {
		switch f.num {
		case 1:
			return f.str("host", &r.Host)
		case 2:
			return f.time("agent_start", &r.AgentStart)
		case 3:
			return f.uint("seq", &r.Seq)
		case 4:
			a := &Ack{}
			r.Ack = a
			hasAdmin := false
			err := f.message("ack", func(g field) error {
				switch g.num {
				case 1:
					if err := g.want("ack.admin_state", protowire.BytesType); err != nil {
						return err
					}
					hasAdmin = true
					st, err := node.ParseAdminState(string(g.raw))
					if err != nil {
						return fmt.Errorf("ack.admin_state: %w", err)
					}
					a.AdminState = st
				case 2:
					return g.uint("ack.assignment_revision", &a.AssignmentRevision)
				case 3:
					var v int64
					if err := g.sint("ack.heartbeat_interval", &v); err != nil {
						return err
					}
					a.HeartbeatInterval = Duration(v)
				case 4:
					var id string
					if err := g.str("ack.local_migrations_seen", &id); err != nil {
						return err
					}
					a.LocalMigrationsSeen = append(a.LocalMigrationsSeen, id)
				case 5:
					return g.str("ack.outcome", &a.Outcome)
				case 6:
					return g.str("ack.outcome_detail", &a.OutcomeDetail)
				}
				return nil
			})
			if err == nil && !hasAdmin {
				err = errors.New("reply's ack has no admin_state")
			}
			return err
		case 5:
			return f.str("refused", &r.Refused)
		}
		return nil
	})
	return r, err
}

// ReplyToPayload is the reply skeleton for a heartbeat payload that did not
// decode or validate: whatever of host, agent_start and seq it has, read
// up to the first damage.
func ReplyToPayload(b []byte) Reply {
	var r Reply
	_ = eachField(b, "", func(f field) error {
		switch f.num {
		case 1:
			_ = f.str("host", &r.Host)
		case 3:
			_ = f.uint("seq", &r.Seq)
		case 4:
			_ = f.time("agent_start", &r.AgentStart)
		}
		return nil
	})
	return r
}
