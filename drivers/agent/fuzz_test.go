package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chimestack/chime-fence/identity"
)

var fuzzToken = identity.DaemonCredential(secret, "h1")

// fuzzAgent serves whatever the current fuzz input says, as an agent (or
// something answering at its URL) could.
func fuzzAgent(f *testing.F) (*Client, *atomic.Pointer[fuzzReply]) {
	var reply atomic.Pointer[fuzzReply]
	// Signed as h1's agent: the fuzzed body reaches the parser (an
	// unsigned one never does; TestFakeResponderNeverProvesADrain).
	srv := httptest.NewServer(signedAs(secret, "h1", func(w http.ResponseWriter, _ *http.Request) {
		r := reply.Load()
		w.WriteHeader(r.code)
		_, _ = w.Write(r.body)
	}))
	f.Cleanup(srv.Close)
	c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: creds("h1"), Timeout: 2 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	return c, &reply
}

type fuzzReply struct {
	code int
	body []byte
}

func fuzzCode(c uint16) int { return 200 + int(c)%400 }

// FuzzDrainReply: whatever an agent's URL answers to a drain, the client
// returns an error or a result that proves the drain (nothing running, our
// host), never a panic, and never the token in an error.
func FuzzDrainReply(f *testing.F) {
	c, reply := fuzzAgent(f)
	f.Add(uint16(0), []byte(`{"host":"h1","marker":"/x","drained_at":"2026-01-01T00:00:00Z","domains":[],"running":0}`))
	f.Add(uint16(0), []byte(`{"host":"h1","running":3}`))
	f.Add(uint16(0), []byte(`{"host":"h2","running":0}`))
	f.Add(uint16(300), []byte(`{"host":"h1","running":1,"error":"`+fuzzToken+` failed"}`))
	f.Add(uint16(0), []byte(`{}`))
	f.Add(uint16(0), []byte(`null`))
	f.Fuzz(func(t *testing.T, code uint16, body []byte) {
		reply.Store(&fuzzReply{fuzzCode(code), body})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		res, err := c.Drain(ctx)
		if err != nil {
			if strings.Contains(err.Error(), fuzzToken) {
				t.Fatalf("token in error: %v", err)
			}
			return
		}
		if res.Running != 0 {
			t.Fatalf("a drain with %d domains still running returned no error", res.Running)
		}
		if res.Host != "h1" {
			t.Fatalf("a drain answered for host %q returned no error", res.Host)
		}
	})
}

// FuzzStatusReply: a status answer is an error or a status of our host.
func FuzzStatusReply(f *testing.F) {
	c, reply := fuzzAgent(f)
	f.Add(uint16(0), []byte(`{"host":"h1","boot_id":"b","admin_state":"enabled","domains":[{"uuid":"u","name":"n","active":true}]}`))
	f.Add(uint16(0), []byte(`{"host":"h9"}`))
	f.Add(uint16(1), []byte(`{`))
	f.Fuzz(func(t *testing.T, code uint16, body []byte) {
		reply.Store(&fuzzReply{fuzzCode(code), body})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := c.Status(ctx)
		if err != nil {
			if strings.Contains(err.Error(), fuzzToken) {
				t.Fatalf("token in error: %v", err)
			}
			return
		}
		if st.Host != "h1" || st.Domains == nil {
			t.Fatalf("status of host %q accepted", st.Host)
		}
	})
}
