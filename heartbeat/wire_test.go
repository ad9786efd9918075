package heartbeat

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

func fullHeartbeat() Heartbeat {
	at := time.Date(2026, 11, 22, 1, 2, 3, 456789, time.UTC)
	return Heartbeat{Host: "h1", BootID: "boot", Seq: 1 << 40, AgentStart: at, AgentVersion: "v1.2", SentAt: at.Add(time.Second),
		Health: Health{Libvirt: Check{Name: "libvirt", OK: true, Detail: "9.0"},
			Interfaces: []Check{{Name: "eth0", OK: true}, {Name: "eth1", Detail: "no carrier"}},
			Storage:    []Check{{Name: "/var/lib/nova", OK: true}}, IOErrors: 3, IODetail: "vda: EIO",
			Evictions: []Check{{Name: "web 6f1c2a9e-0000-4000-8000-000000000009", Detail: "undefine: busy"}}},
		Domains: []Domain{{UUID: "6f1c2a9e-0000-4000-8000-000000000001", Name: "web", State: hypervisor.StateRunning, Autostart: true},
			{UUID: "6f1c2a9e-0000-4000-8000-000000000002", Name: "db", State: hypervisor.StateShutoff, Reason: "crashed"}},
		LocalDrain: &LocalDrain{Since: at.Add(-time.Hour), By: "cli"},
		LocalMigrations: []LocalMigration{{ID: "m1", At: at, UUID: "6f1c2a9e-0000-4000-8000-000000000003", Name: "app",
			Dest: "10.0.0.9", Interface: "eth1", Moved: true}, {ID: "m2", UUID: "6f1c2a9e-0000-4000-8000-000000000004", Dest: "x", Error: "refused"}},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for name, hb := range map[string]Heartbeat{
		"every field":          fullHeartbeat(),
		"domains not listed":   {Host: "h", BootID: "b", Seq: 1},
		"no domains":           {Host: "h", BootID: "b", Seq: 1, Domains: []Domain{}},
		"empty local drain":    {Host: "h", BootID: "b", Seq: 1, LocalDrain: &LocalDrain{}},
		"time before 1970":     {Host: "h", BootID: "b", Seq: 1, AgentStart: time.Date(1969, 7, 20, 20, 17, 40, 5, time.UTC)},
		"negative io errors":   {Host: "h", BootID: "b", Seq: 1, Health: Health{IOErrors: -4}},
		"message of 127 bytes": {Host: "h", BootID: "b", Seq: 1, Health: Health{Libvirt: Check{Detail: strings.Repeat("x", 125)}}},
		"message of 128 bytes": {Host: "h", BootID: "b", Seq: 1, Health: Health{Libvirt: Check{Detail: strings.Repeat("x", 126)}}},
		"message of 2^14":      {Host: "h", BootID: "b", Seq: 1, Health: Health{Libvirt: Check{Detail: strings.Repeat("x", 1<<14)}}},
		"message of 2^21":      {Host: "h", BootID: "b", Seq: 1, Health: Health{Libvirt: Check{Detail: strings.Repeat("x", 1<<21)}}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeHeartbeat(appendHeartbeat(nil, hb))
			require.NoError(t, err)
			assert.Equal(t, hb, got)
		})
	}
	// A time in another zone comes back as the same instant in UTC.
	hb := Heartbeat{Host: "h", BootID: "b", Seq: 1, SentAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))}
	got, err := decodeHeartbeat(appendHeartbeat(nil, hb))
	require.NoError(t, err)
	assert.True(t, got.SentAt.Equal(hb.SentAt))
}

func randomHeartbeat(r *rand.Rand) Heartbeat {
	str := func() string {
		if r.IntN(3) == 0 {
			return ""
		}
		return strings.Repeat(string(rune('a'+r.IntN(26))), r.IntN(300))
	}
	tm := func() time.Time {
		if r.IntN(3) == 0 {
			return time.Time{}
		}
		return time.Unix(r.Int64N(1<<40)-1<<39, r.Int64N(1e9)).UTC()
	}
	checks := func() []Check {
		if r.IntN(2) == 0 {
			return nil
		}
		c := make([]Check, 1+r.IntN(3))
		for i := range c {
			c[i] = Check{Name: str(), OK: r.IntN(2) == 0, Detail: str()}
		}
		return c
	}
	hb := Heartbeat{Host: str(), BootID: str(), Seq: r.Uint64(), AgentStart: tm(), AgentVersion: str(), SentAt: tm(),
		Health: Health{Libvirt: Check{Name: str(), OK: r.IntN(2) == 0, Detail: str()}, Interfaces: checks(), Storage: checks(),
			IOErrors: r.IntN(200) - 100, IODetail: str(), Evictions: checks()}}
	switch r.IntN(3) {
	case 1:
		hb.Domains = []Domain{}
	case 2:
		for range 1 + r.IntN(5) {
			hb.Domains = append(hb.Domains, Domain{UUID: str(), Name: str(), State: hypervisor.DomainState(r.IntN(int(hypervisor.StateUnknown) + 1)), Reason: str(),
				Autostart: r.IntN(2) == 0})
		}
	}
	if r.IntN(2) == 0 {
		hb.LocalDrain = &LocalDrain{Since: tm(), By: str()}
	}
	for range r.IntN(3) {
		hb.LocalMigrations = append(hb.LocalMigrations, LocalMigration{ID: str(), At: tm(), UUID: str(), Name: str(),
			Dest: str(), Interface: str(), Moved: r.IntN(2) == 0, Error: str()})
	}
	return hb
}

func TestWireRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		hb := randomHeartbeat(r)
		got, err := decodeHeartbeat(appendHeartbeat(nil, hb))
		require.NoError(t, err)
		if !reflect.DeepEqual(hb, got) {
			t.Fatalf("heartbeat %d changed:\n%+v\n%+v", i, hb, got)
		}
	}
}

func TestWireSkipsUnknownFields(t *testing.T) {
	hb := fullHeartbeat()
	b := appendHeartbeat(nil, hb)
	// A newer agent's fields of every wire type, before and after.
	extra := protowire.AppendTag(nil, 99, protowire.VarintType)
	extra = protowire.AppendVarint(extra, 7)
	extra = protowire.AppendTag(extra, 100, protowire.BytesType)
	extra = protowire.AppendString(extra, "future")
	extra = protowire.AppendTag(extra, 101, protowire.Fixed32Type)
	extra = protowire.AppendFixed32(extra, 1)
	extra = protowire.AppendTag(extra, 102, protowire.Fixed64Type)
	extra = protowire.AppendFixed64(extra, 1)
	got, err := decodeHeartbeat(append(append(append([]byte(nil), extra...), b...), extra...))
	require.NoError(t, err)
	assert.Equal(t, hb, got)
}

func TestWireErrorsNameTheField(t *testing.T) {
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	hostAsVarint := protowire.AppendVarint(tag(nil, 1, protowire.VarintType), 5)
	badState := appendMessage(nil, 8, func(b []byte) []byte {
		b = appendString(b, 1, "6f1c2a9e-0000-4000-8000-000000000001")
		return appendString(b, 3, "exploded")
	})
	badNanos := appendMessage(nil, 4, func(b []byte) []byte { return appendUint(b, 2, 2e9) })
	truncated := appendHeartbeat(nil, fullHeartbeat())
	truncated = truncated[:len(truncated)/2]
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"wrong wire type", hostAsVarint, "malformed heartbeat: host: wire type 0, want 2"},
		{"unknown state", append(appendHeartbeat(nil, Heartbeat{Host: "h", BootID: "b", Seq: 1}), badState...), `malformed heartbeat: domains[0]: state: unknown domain state "exploded"`},
		{"nanos", badNanos, "malformed heartbeat: agent_start.nanos: 2000000000 is not below 1e9"},
		{"truncated", truncated, "malformed heartbeat:"},
		{"not protobuf", []byte(`{"host":"h1"}`), "malformed heartbeat:"},
		{"valid wire, invalid heartbeat", appendHeartbeat(nil, Heartbeat{Host: "h", Seq: 1}), "invalid heartbeat: boot_id is empty"},
		{"negative io errors", appendHeartbeat(nil, Heartbeat{Host: "h", BootID: "b", Seq: 1, Health: Health{IOErrors: -1}}), "health.io_errors must be >= 0, got -1"},
		{"empty", nil, "invalid heartbeat: host is empty"},
	}
	for _, c := range cases {
		_, err := DecodeHeartbeatPayload(c.b)
		assert.ErrorContains(t, err, c.want, c.name)
	}
}

func TestWireReply(t *testing.T) {
	hb := fullHeartbeat()
	r := ReplyTo(hb)
	r.Ack = &Ack{AdminState: node.Disabled, AssignmentRevision: 1<<63 + 5, HeartbeatInterval: Duration(1500 * time.Millisecond),
		LocalMigrationsSeen: []string{"m1", "m2"}, Outcome: OutcomeStale, OutcomeDetail: "seq 3 is not after 9"}
	got, err := DecodeReply(appendReply(nil, r))
	require.NoError(t, err)
	assert.Equal(t, r, got)
	assert.True(t, got.Ack.Stale())
	assert.False(t, got.Ack.Accepted())

	// A reply from a daemon that predates Outcome reads as accepted, and
	// an outcome field an older agent does not know is skipped.
	r.Ack = &Ack{AdminState: node.Enabled, AssignmentRevision: 2}
	got, err = DecodeReply(appendReply(nil, r))
	require.NoError(t, err)
	assert.True(t, got.Ack.Accepted())
	assert.False(t, got.Ack.Stale())
	future := appendString(nil, 1, "h1")
	future = appendUint(future, 3, 7)
	future = appendMessage(future, 4, func(b []byte) []byte {
		b = appendString(b, 1, "enabled")
		b = appendString(b, 5, OutcomeDuplicate)
		return appendString(b, 99, "a field from the future")
	})
	got, err = DecodeReply(future)
	require.NoError(t, err)
	assert.Equal(t, OutcomeDuplicate, got.Ack.Outcome)
	assert.False(t, got.Ack.Accepted())
	assert.False(t, got.Ack.Stale(), "a duplicate is no reason to start over")

	// The zero admin state (enabled) is written, not left out.
	r.Ack = &Ack{}
	got, err = DecodeReply(appendReply(nil, r))
	require.NoError(t, err)
	assert.Equal(t, node.Enabled, got.Ack.AdminState)

	noAdmin := appendString(nil, 1, "h1")
	noAdmin = appendUint(noAdmin, 3, 7)
	noAdmin = appendMessage(noAdmin, 4, func(b []byte) []byte { return appendUint(b, 2, 1) })
	badAdmin := appendString(nil, 1, "h1")
	badAdmin = appendUint(badAdmin, 3, 7)
	badAdmin = appendMessage(badAdmin, 4, func(b []byte) []byte { return appendString(b, 1, "sleepy") })
	both := appendReply(nil, Reply{Host: "h1", Seq: 7, Ack: &Ack{}, Refused: "x"})
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"ack without admin_state", noAdmin, "reply's ack has no admin_state"},
		{"unknown admin state", badAdmin, "ack.admin_state:"},
		{"neither", appendReply(nil, Reply{Host: "h1", Seq: 7}), "exactly one of ack and refused"},
		{"both", both, "exactly one of ack and refused"},
		{"no heartbeat named", appendReply(nil, Reply{Seq: 7, Refused: "x"}), "names no heartbeat"},
		{"not protobuf", []byte("{}}"), "malformed reply"},
	} {
		_, err := DecodeReply(c.b)
		assert.ErrorContains(t, err, c.want, c.name)
	}
}

func FuzzWireHeartbeat(f *testing.F) {
	f.Add(appendHeartbeat(nil, fullHeartbeat()))
	f.Add(appendReply(nil, Reply{Host: "h", Seq: 1, Ack: &Ack{}}))
	f.Add([]byte{0x0a, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		hb, err := decodeHeartbeat(b)
		if err == nil {
			// What decodes re-encodes to something that decodes the same.
			again, err := decodeHeartbeat(appendHeartbeat(nil, hb))
			if err != nil || !reflect.DeepEqual(hb, again) {
				t.Fatalf("round trip: %v\n%+v\n%+v", err, hb, again)
			}
		}
		_, _ = DecodeReply(b)
	})
}

func BenchmarkWireHeartbeat(b *testing.B) {
	hb := sampleHeartbeat()
	for i := 0; i < 3; i++ {
		d := hb.Domains[0]
		d.UUID = d.UUID[:35] + string(rune('2'+i))
		hb.Domains = append(hb.Domains, d)
	}
	p := appendHeartbeat(nil, hb)
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeHeartbeatPayload(p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			buf = appendHeartbeat(buf[:0], hb)
		}
	})
}

func TestReplyToPayload(t *testing.T) {
	hb := fullHeartbeat()
	hb.BootID = "" // invalid, still answerable
	r := ReplyToPayload(appendHeartbeat(nil, hb))
	assert.True(t, r.Answers(hb))
	// Damage after the naming fields still names the beat.
	b := appendHeartbeat(nil, Heartbeat{Host: "h1", Seq: 9, AgentStart: hb.AgentStart})
	b = append(b, 0x42, 0x80) // field 8, bytes, truncated length
	r = ReplyToPayload(b)
	assert.Equal(t, "h1", r.Host)
	assert.Equal(t, uint64(9), r.Seq)
	assert.True(t, r.AgentStart.Equal(hb.AgentStart))
	assert.Equal(t, Reply{}, ReplyToPayload([]byte("garbage")))
}

// TestWireDomainAutostart pins the autostart field: domain field 5, a
// varint, written only when on, so a beat from an agent that predates it
// (no field 5) reads as off and an older daemon skips it as unknown.
func TestWireDomainAutostart(t *testing.T) {
	const u = "6f1c2a9e-0000-4000-8000-000000000001"
	for _, c := range []struct {
		name string
		dom  []byte
		want bool
	}{
		{"on", protowire.AppendVarint(protowire.AppendTag(appendString(nil, 1, u), 5, protowire.VarintType), 1), true},
		{"absent (older agent)", appendString(nil, 1, u), false},
		{"explicit zero", protowire.AppendVarint(protowire.AppendTag(appendString(nil, 1, u), 5, protowire.VarintType), 0), false},
	} {
		b := appendHeartbeat(nil, Heartbeat{Host: "h", BootID: "b", Seq: 1})
		b = appendMessage(b, 8, func(b []byte) []byte { return append(b, c.dom...) })
		hb, err := DecodeHeartbeatPayload(b)
		require.NoError(t, err, c.name)
		require.Len(t, hb.Domains, 1, c.name)
		assert.Equal(t, c.want, hb.Domains[0].Autostart, c.name)
	}
	on := appendMessage(nil, 8, func(b []byte) []byte {
		b = appendString(appendString(b, 1, u), 3, "running")
		return protowire.AppendVarint(protowire.AppendTag(b, 5, protowire.VarintType), 1)
	})
	assert.True(t, bytes.Contains(appendHeartbeat(nil, Heartbeat{Domains: []Domain{{UUID: u, State: hypervisor.StateRunning, Autostart: true}}}), on),
		"encoded as domain field 5")
	asString := appendMessage(appendHeartbeat(nil, Heartbeat{Host: "h", BootID: "b", Seq: 1}), 8, func(b []byte) []byte {
		return appendString(appendString(b, 1, u), 5, "yes")
	})
	_, err := DecodeHeartbeatPayload(asString)
	assert.ErrorContains(t, err, "autostart", "a wrong wire type is named")
}
