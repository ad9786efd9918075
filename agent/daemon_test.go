package agent

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	agentclient "github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
)

// testSecret is the tests' cluster secret; testToken is host n1's agent
// credential, testDaemonCred what the daemon presents to n1's agent.
const testSecret = "agent-test-cluster-secret-0123456789abcdef"

var (
	testToken      = identity.AgentCredential(testSecret, "n1")
	testDaemonCred = identity.DaemonCredential(testSecret, "n1")
	testCreds      = []agentclient.Credential{{Daemon: testDaemonCred, Agent: testToken}}
)

func httpServer(t testing.TB, h http.HandlerFunc) string {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

func TestDaemonClientAssignment(t *testing.T) {
	url := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "Bearer "+testToken, r.Header.Get("Authorization"))
		assert.Equal(t, http.MethodGet, r.Method)
		assert.Equal(t, heartbeat.PathAssignment, r.URL.Path)
		host := r.URL.Query().Get("host")
		_ = json.NewEncoder(w).Encode(heartbeat.Assignment{Host: host, AdminState: node.Disabled, Revision: 9,
			HeartbeatInterval: heartbeat.Duration(time.Second), Domains: []heartbeat.AssignedDomain{{UUID: u1, Name: "vm1"}}})
	})
	c, err := NewDaemonClient(url, "n1", testToken)
	require.NoError(t, err)
	a, err := c.Assignment(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "n1", a.Host, "the host name went in the query")
	assert.Equal(t, node.Disabled, a.AdminState)
	assert.Equal(t, uint64(9), a.Revision)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "vm1"}}, a.Domains)
}

func TestDaemonClientHeartbeat(t *testing.T) {
	var got heartbeat.Heartbeat
	url := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "Bearer "+testToken, r.Header.Get("Authorization"))
		assert.Equal(t, http.MethodPost, r.Method)
		assert.Equal(t, heartbeat.PathHeartbeat, r.URL.Path)
		var err error
		got, err = heartbeat.Decode(r.Body) // the daemon's own strict decoder
		assert.NoError(t, err)
		_, _ = w.Write([]byte(`{"admin_state":"drained","assignment_revision":12,"heartbeat_interval":"750ms"}`))
	})
	c, err := NewDaemonClient(url, "n1", testToken)
	require.NoError(t, err)
	hb := heartbeat.Heartbeat{Host: "n1", BootID: "b", Seq: 3, Domains: []heartbeat.Domain{{UUID: u1, Name: "vm1", State: hypervisor.StateShutoff, Reason: "crashed"}}}
	ack, err := c.Heartbeat(context.Background(), hb)
	require.NoError(t, err)
	assert.Equal(t, heartbeat.Ack{AdminState: node.Drained, AssignmentRevision: 12, HeartbeatInterval: heartbeat.Duration(750 * time.Millisecond)}, ack)
	assert.Equal(t, uint64(3), got.Seq)
	assert.Equal(t, "crashed", got.Domains[0].Reason)
}

func TestDaemonClientErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		hb   bool
		msg  string
	}{
		{"token rejected", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(401) }, false, "HTTP 401: the daemon rejected the agent token"},
		{"server error echoes token", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(500)
			_, _ = w.Write([]byte("bad request with header " + r.Header.Get("Authorization")))
		}, true, "HTTP 500: bad request with header Bearer [token]"},
		{"4xx reason", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(400)
			_, _ = w.Write([]byte("invalid heartbeat: boot_id is empty\n"))
		}, true, "HTTP 400: invalid heartbeat: boot_id is empty"},
		{"other host's assignment", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"host":"n2","admin_state":"enabled"}`))
		}, false, `the daemon sent the assignment of host "n2"`},
		{"bad assignment", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"host":"n1","admin_state":"sleeping"}`))
		}, false, `unknown admin state "sleeping"`},
		{"malformed ack", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"admin_state":`)) }, true, "malformed ack"},
		{"ack without admin state", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"assignment_revision":3}`))
		}, true, "answer has no admin_state"},
		{"assignment without admin state", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"host":"n1","revision":3,"domains":[]}`))
		}, false, "answer has no admin_state"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewDaemonClient(httpServer(t, tc.h), "n1", testToken)
			require.NoError(t, err)
			if tc.hb {
				_, err = c.Heartbeat(context.Background(), heartbeat.Heartbeat{Host: "n1", BootID: "b", Seq: 1})
			} else {
				_, err = c.Assignment(context.Background())
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Contains(t, err.Error(), "host n1")
			assert.NotContains(t, err.Error(), testToken)
		})
	}
}

func TestDaemonClientUnreachableAndDeadline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	c, err := NewDaemonClient("http://"+addr, "n1", testToken)
	require.NoError(t, err)
	_, err = c.Assignment(context.Background())
	assert.ErrorContains(t, err, "connection refused")
	assert.ErrorContains(t, err, "fetch assignment")

	block := make(chan struct{})
	defer close(block)
	c, _ = NewDaemonClient(httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}), "n1", testToken)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Heartbeat(ctx, heartbeat.Heartbeat{Host: "n1", BootID: "b", Seq: 1})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 2*time.Second, "returned at the deadline, not when the daemon answered")
}

func TestNewDaemonClientRejects(t *testing.T) {
	for in, msg := range map[string]string{
		"ftp://x:1":             `"ftp://x:1" is not an http(s) URL`,
		"10.0.0.2:7480":         `is not an http(s) URL`,
		"http://u:p@10.0.0.2/":  `without credentials`,
		"http://":               `"http://" is not an http(s) URL`,
		"http://10.0.0.2:7480/": "",
	} {
		_, err := NewDaemonClient(in, "n1", testToken)
		if msg == "" {
			assert.NoError(t, err, in)
		} else {
			assert.ErrorContains(t, err, msg, in)
		}
	}
	_, err := NewDaemonClient("http://a:1", "n1", "")
	assert.ErrorContains(t, err, "token is empty")
}
