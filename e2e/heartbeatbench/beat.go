package heartbeatbench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

// heartbeat is the agent's beat seq, sent at at.
func (a *agent) heartbeat(seq uint64, at time.Time) heartbeat.Heartbeat {
	return heartbeat.Heartbeat{
		Host: a.host, BootID: a.bootID, Seq: seq, AgentStart: a.started, AgentVersion: "heartbeat-bench",
		SentAt: at, Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirtd", OK: true}}, Domains: a.domains,
	}
}

// Sentinels marshalled where a beat's own seq and sent_at go, then cut out.
var (
	seqSentinel    = strconv.FormatUint(math.MaxUint64, 10)
	sentAtSentinel = time.Date(1999, 1, 2, 3, 4, 5, 6, time.UTC)
)

// template is an agent's heartbeat JSON around the two values that change
// from beat to beat: json.Marshal's bytes for a fraction of its CPU, which
// the generator shares with the daemon it measures.
type template struct{ head, mid, tail []byte }

func newTemplate(a *agent) (template, error) {
	b, err := json.Marshal(a.heartbeat(math.MaxUint64, sentAtSentinel))
	if err != nil {
		return template{}, fmt.Errorf("encode heartbeat of %s: %w", a.host, err)
	}
	const seqKey, atKey = `"seq":`, `"sent_at":"`
	seq := []byte(seqKey + seqSentinel)
	at := []byte(atKey + sentAtSentinel.Format(time.RFC3339Nano))
	i, j := bytes.Index(b, seq), bytes.Index(b, at)
	if i < 0 || j < i+len(seq) || bytes.Count(b, seq) != 1 || bytes.Count(b, at) != 1 {
		return template{}, fmt.Errorf("heartbeat JSON of %s: want seq, then sent_at, once each: %s", a.host, b)
	}
	return template{head: b[:i+len(seqKey)], mid: b[i+len(seq) : j+len(atKey)], tail: b[j+len(at):]}, nil
}

// encode is the JSON of heartbeat seq sent at at, in the agent's reused
// buffer (valid until the next encode).
func (a *agent) encode(seq uint64, at time.Time) []byte {
	b := append(a.json[:0], a.tmpl.head...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, a.tmpl.mid...)
	b = at.AppendFormat(b, time.RFC3339Nano) // what time.Time's MarshalJSON writes
	b = append(b, a.tmpl.tail...)
	a.json = b
	return b
}
