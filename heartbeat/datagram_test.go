package heartbeat

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

func sampleHeartbeat() Heartbeat {
	return Heartbeat{Host: "h1", BootID: "b1", Seq: 7, AgentStart: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC),
		AgentVersion: "v1", Health: Health{Libvirt: Check{Name: "libvirt", OK: true}},
		Domains: []Domain{{UUID: "6f1c2a9e-0000-4000-8000-000000000001", Name: "web", State: hypervisor.StateRunning}}}
}

func TestSealOpenRoundTrip(t *testing.T) {
	s, err := NewSealer("agent-token")
	require.NoError(t, err)
	hb := sampleHeartbeat()
	d, err := s.SealHeartbeat(hb)
	require.NoError(t, err)
	assert.Equal(t, "CFHB", string(d[:4]))
	kind, payload, err := s.Open(d)
	require.NoError(t, err)
	assert.Equal(t, KindHeartbeat, kind)
	got, err := DecodeHeartbeatPayload(payload)
	require.NoError(t, err)
	assert.Equal(t, hb.Host, got.Host)
	assert.Equal(t, hb.Seq, got.Seq)
	assert.True(t, hb.AgentStart.Equal(got.AgentStart))
	assert.Equal(t, hb.Domains, got.Domains)
}

func TestOpenRefuses(t *testing.T) {
	s, err := NewSealer("agent-token")
	require.NoError(t, err)
	other, err := NewSealer("another-token")
	require.NoError(t, err)
	good, err := s.SealHeartbeat(sampleHeartbeat())
	require.NoError(t, err)

	flip := func(i int) []byte {
		b := append([]byte(nil), good...)
		b[i] ^= 1
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrDatagramMalformed},
		{"short", good[:DatagramHeaderLen-1], ErrDatagramMalformed},
		{"magic", flip(0), ErrDatagramMalformed},
		{"version", flip(4), ErrDatagramVersion},
		{"kind changed", flip(5), ErrDatagramAuth},
		{"payload changed", flip(len(good) - 3), ErrDatagramAuth},
		{"mac changed", flip(8), ErrDatagramAuth},
		{"payload cut", good[:len(good)-1], ErrDatagramAuth},
		{"too large", make([]byte, MaxDatagram+1), ErrDatagramTooLarge},
	}
	for _, c := range cases {
		_, _, err := s.Open(c.b)
		assert.ErrorIs(t, err, c.want, c.name)
	}
	_, _, err = other.Open(good)
	assert.ErrorIs(t, err, ErrDatagramAuth, "another token's key")
	_, _, err = s.Open(flip(4))
	assert.ErrorContains(t, err, "unsupported datagram version 0 (this build speaks 1)")
}

func TestSealerNeedsToken(t *testing.T) {
	_, err := NewSealer("")
	assert.ErrorContains(t, err, "agent credential is empty")
}

func TestSealHeartbeatTooLarge(t *testing.T) {
	s, err := NewSealer("t")
	require.NoError(t, err)
	hb := sampleHeartbeat()
	hb.Health.IODetail = strings.Repeat("x", MaxDatagram)
	_, err = s.SealHeartbeat(hb)
	assert.ErrorIs(t, err, ErrDatagramTooLarge)
}

func TestReply(t *testing.T) {
	s, err := NewSealer("t")
	require.NoError(t, err)
	hb := sampleHeartbeat()
	r := ReplyTo(hb)
	r.Ack = &Ack{AdminState: node.Drained, AssignmentRevision: 3, HeartbeatInterval: Duration(time.Second)}
	d, err := s.SealReply(r)
	require.NoError(t, err)
	kind, payload, err := s.Open(d)
	require.NoError(t, err)
	assert.Equal(t, KindReply, kind)
	got, err := DecodeReply(payload)
	require.NoError(t, err)
	assert.True(t, got.Answers(hb))
	require.NotNil(t, got.Ack)
	assert.Equal(t, node.Drained, got.Ack.AdminState)
	assert.Equal(t, uint64(3), got.Ack.AssignmentRevision)

	next := hb
	next.Seq++
	assert.False(t, got.Answers(next), "an answer to another beat")
	restarted := hb
	restarted.AgentStart = hb.AgentStart.Add(time.Second)
	assert.False(t, got.Answers(restarted), "an answer to the previous agent process")

	ref := ReplyTo(hb)
	ref.Refused = "unknown host h1"
	d, err = s.SealReply(ref)
	require.NoError(t, err)
	_, payload, err = s.Open(d)
	require.NoError(t, err)
	got, err = DecodeReply(payload)
	require.NoError(t, err)
	assert.Equal(t, "unknown host h1", got.Refused)
	assert.Nil(t, got.Ack)
}

func BenchmarkOpenDecode(b *testing.B) {
	s, err := NewSealer("agent-token")
	require.NoError(b, err)
	hb := sampleHeartbeat()
	for i := 0; i < 3; i++ {
		d := hb.Domains[0]
		d.UUID = d.UUID[:35] + string(rune('2'+i))
		hb.Domains = append(hb.Domains, d)
	}
	d, err := s.SealHeartbeat(hb)
	require.NoError(b, err)
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		_, p, err := s.Open(d)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := DecodeHeartbeatPayload(p); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDatagramHost: the daemon picks the key by the host a datagram names,
// before its MAC is checked; framing errors are named, never a host.
func TestDatagramHost(t *testing.T) {
	s, err := NewSealer("h1-credential")
	require.NoError(t, err)
	dg, err := s.SealHeartbeat(Heartbeat{Host: "h1", BootID: "b", Seq: 1})
	require.NoError(t, err)
	host, err := DatagramHost(dg)
	require.NoError(t, err)
	assert.Equal(t, "h1", host)
	for name, b := range map[string][]byte{
		"garbage":  []byte("not a datagram at all, not even close to one"),
		"no host":  s.Seal(nil, KindHeartbeat, AppendHeartbeatPayload(nil, Heartbeat{BootID: "b", Seq: 1})),
		"too long": append(bytes.Clone(dg), make([]byte, MaxDatagram)...),
	} {
		_, err := DatagramHost(b)
		assert.Error(t, err, name)
	}
}
