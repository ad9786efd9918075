package heartbeatbench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

// sendHTTP posts one heartbeat and reads the Ack, reusing the connection.
func (a *agent) sendHTTP(ctx context.Context, seq uint64, at time.Time) (time.Duration, error) {
	g := a.g
	body := a.encode(seq, at)
	if a.conn == nil {
		if err := a.dial(ctx, "tcp", hostOf(g.o.BaseURL)); err != nil {
			g.fail("dial")
			return 0, err
		}
		a.br = bufio.NewReaderSize(a.conn, 1024)
	}
	_ = a.conn.SetDeadline(at.Add(g.o.Timeout))
	msg := append(a.out[:0], a.req...)
	msg = strconv.AppendInt(msg, int64(len(body)), 10)
	msg = append(msg, "\r\n\r\n"...)
	msg = append(msg, body...)
	a.out = msg
	if _, err := a.conn.Write(msg); err != nil {
		a.closeConn()
		g.fail("write")
		return 0, err
	}
	resp, err := http.ReadResponse(a.br, nil)
	if err != nil {
		a.closeConn()
		g.fail("read")
		return 0, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		a.closeConn()
		g.fail("read")
		return 0, err
	}
	if resp.Close {
		a.closeConn()
	}
	if resp.StatusCode != http.StatusOK {
		g.fail("http " + strconv.Itoa(resp.StatusCode))
		return 0, fmt.Errorf("heartbeat %s: HTTP %d: %s", a.host, resp.StatusCode, b)
	}
	var ack heartbeat.Ack
	if err := json.Unmarshal(b, &ack); err != nil || ack.HeartbeatInterval <= 0 {
		g.fail("bad ack")
		return 0, fmt.Errorf("heartbeat %s: not an ack: %q", a.host, b)
	}
	return time.Since(at), nil
}

func hostOf(base string) string {
	u, _ := url.Parse(base) // checked by NewGenerator
	return u.Host
}
