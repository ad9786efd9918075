package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

// FuzzDaemonAnswers feeds the agent's daemon client whatever answers at
// the daemon's URL: an assignment or an ack is an error, or one that names
// this host, carries an admin state, and never lists a domain as both
// assigned and evicted; never a panic, never the token in an error.
func FuzzDaemonAnswers(f *testing.F) {
	const token = "fuzz-agent-token-77aa-never-echoed"
	var body atomic.Pointer[[]byte]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write(*body.Load())
	}))
	f.Cleanup(srv.Close)
	c, err := NewDaemonClient(srv.URL, "h1", token)
	if err != nil {
		f.Fatal(err)
	}
	const u1, u2 = "6f1c3a52-8f0e-4c7b-9a51-0d2f5e6b7c81", "0b9f6a3e-1d2c-4e5f-8a7b-9c0d1e2f3a4b"
	f.Add([]byte(`{"host":"h1","admin_state":"enabled","revision":3,"heartbeat_interval":"5s","domains":[{"uuid":"` + u1 + `","name":"a"}],"evicted":[{"uuid":"` + u2 + `","name":"b"}]}`))
	f.Add([]byte(`{"host":"h1","admin_state":"drained","domains":[{"uuid":"` + u1 + `"}],"evicted":[{"uuid":"` + u1 + `"}]}`))
	f.Add([]byte(`{"host":"h2","admin_state":"enabled"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"host":"h1"}`))
	f.Add([]byte(`{"accepted":true,"admin_state":"enabled","revision":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		body.Store(&b)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a, err := c.Assignment(ctx)
		if err != nil {
			if strings.Contains(err.Error(), token) {
				t.Fatalf("token in error: %v", err)
			}
		} else {
			if a.Host != "h1" {
				t.Fatalf("assignment of host %q accepted", a.Host)
			}
			seen := map[string]bool{}
			for _, d := range a.Domains {
				seen[d.UUID] = true
			}
			for _, d := range a.Evicted {
				if seen[d.UUID] {
					t.Fatalf("domain %s both assigned and evicted", d.UUID)
				}
			}
		}
		_, err = c.Heartbeat(ctx, heartbeat.Heartbeat{Host: "h1", Seq: 1, BootID: "b", AgentStart: time.Unix(1, 0)})
		if err != nil && strings.Contains(err.Error(), token) {
			t.Fatalf("token in error: %v", err)
		}
	})
}
