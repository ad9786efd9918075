package heartbeat

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"sync"
	"time"
)

// The UDP heartbeat transport. HTTP costs the daemon a goroutine, two bufio
// buffers and a TCP write per agent and beat; at 10,000 hosts a second that
// alone is half a core and a third of a GiB. A datagram costs one read and
// one write on a few shared sockets. HTTP stays for everything else (the
// assignment, operations) and for heartbeats too large for a datagram.
//
// A datagram is
//
//	"CFHB" | version (1) | kind (1) | 2 zero bytes | HMAC-SHA256 (32) | payload
//
// and the payload is protobuf wire format (wire.go).
//
// The MAC covers the first 8 bytes and the payload, keyed by a key derived
// from the sending host's agent credential (package identity), so only that
// host's agent (or the daemon) can write one: the daemon reads the host
// (payload field 1, DatagramHost) before the MAC and checks the MAC with
// that host's key, so a datagram for host G sealed with H's key is refused. It
// gives authenticity, not secrecy: heartbeats carry nothing secret. Replays
// are the detector's business as for HTTP: it accepts a heartbeat only when
// (agent start, seq) is newer than the last one it accepted from the host.
// The daemon answers only authenticated datagrams, so it never reflects
// traffic to a forged source address.

// Datagram kinds.
const (
	// KindHeartbeat carries a Heartbeat (agent → daemon).
	KindHeartbeat byte = 1
	// KindReply carries a Reply (daemon → agent).
	KindReply byte = 2
)

const (
	datagramMagic   = "CFHB"
	datagramVersion = 1
	// DatagramHeaderLen is the bytes before the payload.
	DatagramHeaderLen = 8 + sha256.Size
	// MaxDatagram bounds a sealed datagram. It fits ~250 domains, keeps
	// the IP fragments few, and is what the daemon reads; an agent sends a
	// larger heartbeat over HTTP.
	MaxDatagram = 16 << 10
)

// Errors of Open, so the receiver can count refusals by cause.
var (
	ErrDatagramMalformed = errors.New("not a chime-fence datagram")
	ErrDatagramVersion   = errors.New("unsupported datagram version")
	ErrDatagramAuth      = errors.New("datagram MAC does not match the host's credential")
	ErrDatagramTooLarge  = fmt.Errorf("datagram exceeds %d bytes", MaxDatagram)
)

// Sealer seals and opens datagrams with a key derived from one host's agent
// credential. Safe for concurrent use.
type Sealer struct {
	macs sync.Pool // hash.Hash keyed with the derived key
}

// NewSealer derives the datagram key from a host's agent credential. The
// credential itself never keys a MAC: it stays a bearer credential for
// HTTP only.
func NewSealer(token string) (*Sealer, error) {
	if token == "" {
		return nil, errors.New("datagram sealer: agent credential is empty")
	}
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("chime-fence heartbeat datagram v1"))
	key := m.Sum(nil)
	s := &Sealer{}
	s.macs.New = func() any { return hmac.New(sha256.New, key) }
	return s, nil
}

// Seal appends the datagram of kind with payload to dst.
func (s *Sealer) Seal(dst []byte, kind byte, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, datagramMagic...)
	dst = append(dst, datagramVersion, kind, 0, 0)
	dst = append(dst, make([]byte, sha256.Size)...)
	dst = append(dst, payload...)
	mac := s.mac(dst[start:start+8], dst[start+DatagramHeaderLen:])
	copy(dst[start+8:start+DatagramHeaderLen], mac[:])
	return dst
}

// Open checks b and returns its kind and payload (a sub-slice of b).
func (s *Sealer) Open(b []byte) (kind byte, payload []byte, err error) {
	switch {
	case len(b) > MaxDatagram:
		return 0, nil, ErrDatagramTooLarge
	case len(b) < DatagramHeaderLen || string(b[:4]) != datagramMagic:
		return 0, nil, ErrDatagramMalformed
	case b[4] != datagramVersion:
		return 0, nil, fmt.Errorf("%w %d (this build speaks %d)", ErrDatagramVersion, b[4], datagramVersion)
	}
	want := s.mac(b[:8], b[DatagramHeaderLen:])
	if !hmac.Equal(want[:], b[8:DatagramHeaderLen]) {
		return 0, nil, ErrDatagramAuth
	}
	return b[5], b[DatagramHeaderLen:], nil
}

// DatagramHost is the host a heartbeat datagram names (payload field 1),
// read before any MAC check so the daemon knows which host's key to check
// it with. It checks only the framing; the MAC decides the rest.
func DatagramHost(b []byte) (string, error) {
	switch {
	case len(b) > MaxDatagram:
		return "", ErrDatagramTooLarge
	case len(b) < DatagramHeaderLen || string(b[:4]) != datagramMagic:
		return "", ErrDatagramMalformed
	case b[4] != datagramVersion:
		return "", fmt.Errorf("%w %d (this build speaks %d)", ErrDatagramVersion, b[4], datagramVersion)
	}
	host := ReplyToPayload(b[DatagramHeaderLen:]).Host
	if host == "" {
		return "", fmt.Errorf("%w: no host field", ErrDatagramMalformed)
	}
	return host, nil
}

func (s *Sealer) mac(header, payload []byte) (sum [sha256.Size]byte) {
	m := s.macs.Get().(hash.Hash)
	m.Reset()
	m.Write(header)
	m.Write(payload)
	m.Sum(sum[:0])
	s.macs.Put(m)
	return sum
}

// SealHeartbeat encodes hb as a heartbeat datagram (payload: wire.go). A
// heartbeat that does not fit MaxDatagram is ErrDatagramTooLarge: send it
// over HTTP.
func (s *Sealer) SealHeartbeat(hb Heartbeat) ([]byte, error) {
	b := make([]byte, DatagramHeaderLen, 1024)
	b = appendHeartbeat(b, hb)
	if len(b) > MaxDatagram {
		return nil, fmt.Errorf("heartbeat of %d bytes: %w", len(b)-DatagramHeaderLen, ErrDatagramTooLarge)
	}
	return s.sealInPlace(b, KindHeartbeat), nil
}

// AppendHeartbeatPayload appends hb's datagram payload to b (for callers
// that seal with Seal, e.g. into a reused buffer).
func AppendHeartbeatPayload(b []byte, hb Heartbeat) []byte { return appendHeartbeat(b, hb) }

// sealInPlace fills the header of b, whose payload follows the header's
// room.
func (s *Sealer) sealInPlace(b []byte, kind byte) []byte {
	copy(b, datagramMagic)
	b[4], b[5], b[6], b[7] = datagramVersion, kind, 0, 0
	mac := s.mac(b[:8], b[DatagramHeaderLen:])
	copy(b[8:DatagramHeaderLen], mac[:])
	return b
}

// DecodeHeartbeatPayload reads and validates a heartbeat datagram's
// payload. Errors name the field.
func DecodeHeartbeatPayload(b []byte) (Heartbeat, error) {
	h, err := decodeHeartbeat(b)
	if err != nil {
		return Heartbeat{}, fmt.Errorf("malformed heartbeat: %w", err)
	}
	if err := h.Validate(); err != nil {
		return Heartbeat{}, fmt.Errorf("invalid heartbeat: %w", err)
	}
	return h, nil
}

// Reply is the daemon's answer to a heartbeat datagram: the Ack, or why
// the heartbeat was refused. Host, AgentStart and Seq repeat the
// heartbeat's, so an agent takes only the answer to the beat it waits for.
type Reply struct {
	Host       string    `json:"host"`
	AgentStart time.Time `json:"agent_start"`
	Seq        uint64    `json:"seq"`
	// Ack is set when the heartbeat was taken (accepted or ignored as
	// stale, as over HTTP).
	Ack *Ack `json:"ack,omitempty"`
	// Refused says why not ("unknown host …", "invalid heartbeat: …"):
	// what HTTP says with a 4xx.
	Refused string `json:"refused,omitempty"`
}

// ReplyTo is the reply skeleton for hb.
func ReplyTo(hb Heartbeat) Reply {
	return Reply{Host: hb.Host, AgentStart: hb.AgentStart, Seq: hb.Seq}
}

// Answers reports whether r answers hb.
func (r Reply) Answers(hb Heartbeat) bool {
	return r.Host == hb.Host && r.Seq == hb.Seq && r.AgentStart.Equal(hb.AgentStart)
}

// SealReply encodes r as a reply datagram.
func (s *Sealer) SealReply(r Reply) ([]byte, error) {
	b := appendReply(make([]byte, DatagramHeaderLen, 256), r)
	if len(b) > MaxDatagram {
		return nil, fmt.Errorf("reply of %d bytes: %w", len(b)-DatagramHeaderLen, ErrDatagramTooLarge)
	}
	return s.sealInPlace(b, KindReply), nil
}

// DecodeReply reads a reply payload. An ack without admin_state is refused:
// its zero value is "enabled" and must never be assumed.
func DecodeReply(b []byte) (Reply, error) {
	r, err := decodeReply(b)
	if err != nil {
		return Reply{}, fmt.Errorf("malformed reply: %w", err)
	}
	switch {
	case r.Host == "" || r.Seq == 0:
		return Reply{}, errors.New("reply names no heartbeat (host, seq)")
	case (r.Ack == nil) == (r.Refused == ""):
		return Reply{}, errors.New("reply must carry exactly one of ack and refused")
	}
	return r, nil
}

// jsonError names the offset or field of a JSON error.
func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err)
	case errors.As(err, &te):
		return fmt.Errorf("field %q: %s is not a %s", te.Field, te.Value, te.Type)
	}
	return fmt.Errorf("malformed JSON: %w", err)
}
