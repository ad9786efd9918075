package heartbeatbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

// replyBufs hold UDP replies being read. An agent holds one only while it
// waits for a reply, so a few dozen serve 10,000 agents; one each would be
// 160 MiB.
var replyBufs = sync.Pool{New: func() any {
	b := make([]byte, heartbeat.MaxDatagram+1) // +1: a longer reply is seen as too large, not cut
	return &b
}}

// sendUDP sends one heartbeat datagram on the agent's own connected UDP
// socket and waits up to ReplyTimeout for the Reply that answers it, as
// chime-agent does. Replies to earlier beats (late ones) are skipped.
func (a *agent) sendUDP(ctx context.Context, seq uint64, at time.Time) (time.Duration, error) {
	g := a.g
	hb := a.heartbeat(seq, at) // what the Reply must answer
	payload := heartbeat.AppendHeartbeatPayload(a.wire[:0], hb)
	a.wire = payload
	if n := heartbeat.DatagramHeaderLen + len(payload); n > heartbeat.MaxDatagram {
		g.fail("too large for a datagram")
		return 0, fmt.Errorf("heartbeat %s: %d-byte datagram: %w", a.host, n, heartbeat.ErrDatagramTooLarge)
	}
	if a.conn == nil {
		if err := a.dial(ctx, "udp", g.udpAddr); err != nil {
			g.fail("dial")
			return 0, err
		}
	}
	a.out = a.sealer.Seal(a.out[:0], heartbeat.KindHeartbeat, payload)
	if _, err := a.conn.Write(a.out); err != nil {
		g.fail(udpCause(err, "udp write"))
		return 0, err
	}
	_ = a.conn.SetReadDeadline(at.Add(g.o.ReplyTimeout))
	bp := replyBufs.Get().(*[]byte)
	defer replyBufs.Put(bp)
	for {
		n, err := a.conn.Read(*bp)
		if err != nil {
			g.fail(udpCause(err, "udp read"))
			return 0, err
		}
		kind, p, err := a.sealer.Open((*bp)[:n])
		if err == nil && kind != heartbeat.KindReply {
			err = fmt.Errorf("datagram kind %d, not a reply", kind)
		}
		var r heartbeat.Reply
		if err == nil {
			r, err = heartbeat.DecodeReply(p)
		}
		if err != nil {
			g.fail("malformed reply")
			return 0, fmt.Errorf("heartbeat %s seq %d: reply: %w", a.host, seq, err)
		}
		switch {
		case r.Answers(hb):
		case r.Host == a.host && r.AgentStart.Equal(a.started) && r.Seq < seq:
			g.late.Add(1) // answers an earlier beat of ours: keep waiting
			continue
		default:
			g.fail("misaddressed reply")
			return 0, fmt.Errorf("heartbeat %s seq %d: got the reply for %s seq %d", a.host, seq, r.Host, r.Seq)
		}
		if r.Refused != "" {
			g.fail(refusal(a.host, r.Refused))
			return 0, fmt.Errorf("heartbeat %s seq %d refused: %s", a.host, seq, r.Refused)
		}
		if r.Ack.HeartbeatInterval <= 0 {
			g.fail("bad ack")
			return 0, fmt.Errorf("heartbeat %s seq %d: ack without a heartbeat interval", a.host, seq)
		}
		return time.Since(at), nil
	}
}

// udpCause names a socket error: a deadline is a lost or slow reply; a
// refused connection is an ICMP port unreachable (nothing listens).
func udpCause(err error, other string) string {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "udp timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "udp port unreachable"
	}
	return other
}
