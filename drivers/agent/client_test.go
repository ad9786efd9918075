package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/power"
)

// secret is the tests' cluster secret.
const secret = "drivers-agent-test-cluster-secret-0123456789"

// token is what the daemon presents to n1's agent.
var token = identity.DaemonCredential(secret, "n1")

func ringOf(t testing.TB, cur, prev string) identity.Ring {
	r, err := identity.NewRing(cur, prev)
	require.NoError(t, err)
	return r
}

// creds are host's credentials under secret.
func creds(host string) []Credential {
	r, _ := identity.NewRing(secret, "")
	return Credentials(r, host)
}

// signedAs answers as host's agent under secret: h's answer gets the reply
// MAC of that host's agent credential.
func signedAs(sec, host string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set(identity.HeaderReplyMAC, identity.ReplyMAC(identity.AgentCredential(sec, host), r.Method, r.URL.Path, r.Header.Get(identity.HeaderNonce), rec.Body.Bytes()))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}
}

// server is n1's agent answering with h (signed).
func server(t *testing.T, h http.HandlerFunc) string {
	s := httptest.NewServer(signedAs(secret, "n1", h))
	t.Cleanup(s.Close)
	return s.URL
}

func TestStatus(t *testing.T) {
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		assert.Equal(t, "/v1/status", r.URL.Path)
		_, _ = w.Write([]byte(`{"host":"n1","boot_id":"b1","admin_state":"enabled","domains":[{"uuid":"u1","name":"vm1","state":"running"},{"uuid":"u2","name":"vm2","state":"shutoff"}]}`))
	})
	c, err := New(Config{Host: "n1", URL: url, Credentials: creds("n1")})
	require.NoError(t, err)
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "b1", st.BootID)
	require.Len(t, st.Domains, 2)
	assert.Equal(t, hypervisor.StateRunning, st.Domains[0].State)
	assert.Equal(t, 1, st.Running())
	ps, err := c.Check(context.Background())
	require.NoError(t, err)
	assert.Equal(t, power.On, ps)

	bad, _ := New(Config{Host: "n1", URL: url, Credentials: []Credential{{Daemon: "wrong-token", Agent: "wrong-agent"}}})
	_, err = bad.Status(context.Background())
	assert.ErrorIs(t, err, power.ErrAuth)
	assert.NotContains(t, err.Error(), "wrong-token")
}

func TestStatusErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want error
		msg  string
	}{
		{"malformed", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"host":`)) }, power.ErrProtocol, "malformed status"},
		{"bad state", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"host":"n1","domains":[{"uuid":"u","state":"zombie"}]}`))
		}, power.ErrProtocol, `unknown domain state "zombie"`},
		{"500", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }, power.ErrProtocol, "HTTP 500"},
		{"wrong host", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"host":"n7"}`)) }, power.ErrConfig, `says it runs on host "n7"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{Host: "n1", URL: server(t, tc.h), Credentials: creds("n1")})
			require.NoError(t, err)
			_, err = c.Status(context.Background())
			assert.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Contains(t, err.Error(), "host n1: agent: status")
		})
	}
}

func TestUnreachableAndTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	c, _ := New(Config{Host: "n1", URL: "http://" + addr, Credentials: creds("n1")})
	_, err = c.Status(context.Background())
	assert.ErrorIs(t, err, power.ErrUnreachable)

	slow := server(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c, _ = New(Config{Host: "n1", URL: slow, Credentials: creds("n1")})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Status(ctx)
	assert.ErrorIs(t, err, power.ErrTimeout)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestNewRejectsBadURL(t *testing.T) {
	_, err := New(Config{Host: "n1", URL: "ftp://x"})
	assert.ErrorContains(t, err, `"ftp://x" is not an http(s) URL`)
}

func TestDrain(t *testing.T) {
	var calls int
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		calls++
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		assert.Equal(t, http.MethodPost, r.Method)
		assert.Equal(t, "/v1/drain", r.URL.Path)
		_, _ = w.Write([]byte(`{"host":"n1","marker":"/s/drained.json","drained_at":"2030-01-02T03:04:05Z","running":0,
			"domains":[{"uuid":"u1","name":"vm1","before":"running","action":"destroyed"},{"uuid":"u2","name":"vm2","before":"shutoff","action":"not running"}]}`))
	})
	c, err := New(Config{Host: "n1", URL: url, Credentials: creds("n1"), Timeout: time.Nanosecond})
	require.NoError(t, err)
	res, err := c.Drain(context.Background())
	require.NoError(t, err, "the status timeout does not apply to a drain")
	assert.Equal(t, 0, res.Running)
	assert.Equal(t, "/s/drained.json", res.Marker)
	assert.Equal(t, time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), res.DrainedAt)
	assert.Equal(t, []DrainedDomain{
		{UUID: "u1", Name: "vm1", Before: hypervisor.StateRunning, Action: "destroyed"},
		{UUID: "u2", Name: "vm2", Before: hypervisor.StateShutoff, Action: "not running"},
	}, res.Domains)

	bad, _ := New(Config{Host: "n1", URL: url, Credentials: []Credential{{Daemon: "wrong-token", Agent: "wrong-agent"}}})
	_, err = bad.Drain(context.Background())
	assert.ErrorIs(t, err, power.ErrAuth)
	assert.NotContains(t, err.Error(), "wrong-token")
	assert.Equal(t, 2, calls)
}

func TestDrainErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       http.HandlerFunc
		want    error
		msg     string
		running int
	}{
		{"partial", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"host":"n1","running":1,"domains":[{"uuid":"u1","name":"vm1","before":"running","action":"failed","error":"boom"}],
				"error":"drain: vm1 (u1): boom; 1 domains still active after the drain; token ` + token + `"}`))
		}, power.ErrRefused, "HTTP 500: drain: vm1 (u1): boom; 1 domains still active", 1},
		{"old agent", func(w http.ResponseWriter, _ *http.Request) { http.NotFound(w, nil) }, power.ErrConfig, "no drain endpoint", 0},
		{"malformed", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"host":`)) }, power.ErrProtocol, "malformed drain result", 0},
		{"teapot", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) }, power.ErrProtocol, "HTTP 418", 0},
		{"other host", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"host":"n2"}`)) }, power.ErrConfig, `says it runs on host "n2"`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{Host: "n1", URL: server(t, tc.h), Credentials: creds("n1")})
			require.NoError(t, err)
			res, err := c.Drain(context.Background())
			require.ErrorIs(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Contains(t, err.Error(), "host n1")
			assert.NotContains(t, err.Error(), token)
			assert.Equal(t, tc.running, res.Running)
		})
	}
}

func TestDrainHonoursTheCallersDeadline(t *testing.T) {
	release := make(chan struct{})
	url := server(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	c, err := New(Config{Host: "n1", URL: url, Credentials: creds("n1")})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Drain(ctx)
	require.ErrorIs(t, err, power.ErrTimeout)
	assert.Less(t, time.Since(start), 100*time.Millisecond+5*time.Second, "returns at the deadline, not later")
}

// TestAnswersThatAreNotTheAgentsNeverProveADrain is the attack of a fake
// responder at an agent's URL: "{}" or "running: 0" without the host's
// name, or a 200 with domains still running, must never read as a drain
// done or as a host with nothing running.
func TestAnswersThatAreNotTheAgentsNeverProveADrain(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		kind       error
	}{
		{"empty object", `{}`, power.ErrConfig},
		{"null", `null`, power.ErrConfig},
		{"running 0, no host", `{"running":0,"domains":[]}`, power.ErrConfig},
		{"another host", `{"host":"h2","running":0,"domains":[]}`, power.ErrConfig},
		{"200 but running", `{"host":"h1","running":2,"domains":[]}`, power.ErrRefused},
	} {
		t.Run("drain "+tc.name, func(t *testing.T) {
			srv := httptest.NewServer(signedAs(secret, "h1", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: creds("h1")})
			require.NoError(t, err)
			_, err = c.Drain(context.Background())
			require.ErrorIs(t, err, tc.kind)
		})
	}
	for _, body := range []string{`{}`, `null`, `{"host":"h1"}`, `{"host":"h1","domains":null}`, `{"domains":[]}`} {
		t.Run("status "+body, func(t *testing.T) {
			srv := httptest.NewServer(signedAs(secret, "h1", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) }))
			defer srv.Close()
			c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: creds("h1")})
			require.NoError(t, err)
			_, err = c.Status(context.Background())
			require.Error(t, err, "a status with no host or no domain list is no proof that nothing runs")
		})
	}
}

// TestFakeResponderNeverProvesADrain is item 5's attack: a responder at an
// agent's URL answering "running: 0" in the host's name, but without the
// host's reply MAC (none, another host's, a replay of an answer to another
// request, or one made with a secret the daemon does not hold), fails the
// drain and the status as an authentication error, never as a result.
func TestFakeResponderNeverProvesADrain(t *testing.T) {
	drained := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/status" {
			_, _ = w.Write([]byte(`{"host":"h1","boot_id":"b","domains":[]}`))
			return
		}
		_, _ = w.Write([]byte(`{"host":"h1","marker":"/m","running":0,"domains":[]}`))
	}
	var recorded http.Header
	replay := func(w http.ResponseWriter, r *http.Request) {
		if recorded == nil {
			rec := httptest.NewRecorder()
			signedAs(secret, "h1", drained)(rec, r)
			recorded = rec.Header()
		}
		w.Header().Set(identity.HeaderReplyMAC, recorded.Get(identity.HeaderReplyMAC))
		drained(w, r)
	}
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"no MAC", drained},
		{"another host's MAC", signedAs(secret, "h2", drained)},
		{"a MAC under another cluster secret", signedAs("another-cluster-secret-0123456789abcdef", "h1", drained)},
		{"a MAC replayed from an earlier answer", replay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.h)
			defer srv.Close()
			c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: creds("h1")})
			require.NoError(t, err)
			if tc.name == "a MAC replayed from an earlier answer" {
				_, _ = c.Drain(context.Background()) // the one recorded
			}
			res, err := c.Drain(context.Background())
			require.ErrorIs(t, err, power.ErrAuth)
			assert.Contains(t, err.Error(), "not host h1's agent")
			assert.Zero(t, res)
			_, err = c.Status(context.Background())
			require.ErrorIs(t, err, power.ErrAuth)
			_, err = c.Check(context.Background())
			require.ErrorIs(t, err, power.ErrAuth)
		})
	}
	// The same answer with the right MAC is a drain: the refusals above
	// are the MAC's doing.
	srv := httptest.NewServer(signedAs(secret, "h1", drained))
	defer srv.Close()
	c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: creds("h1")})
	require.NoError(t, err)
	_, err = c.Drain(context.Background())
	require.NoError(t, err)
}

// TestRotationTriesThePreviousCredential: during a rotation an agent still
// holding the previous secret's daemon credential refuses the current one
// (401, nothing done); the client then presents the previous one and checks
// the answer with the previous secret's agent credential. Once the previous
// secret is gone, that agent is refused.
func TestRotationTriesThePreviousCredential(t *testing.T) {
	const newSecret = "drivers-agent-test-NEW-cluster-secret-9876543210"
	var presented []string
	old := func(w http.ResponseWriter, r *http.Request) {
		presented = append(presented, r.Header.Get("Authorization"))
		if r.Header.Get("Authorization") != "Bearer "+identity.DaemonCredential(secret, "h1") {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"host":"h1","boot_id":"b","domains":[]}`))
	}
	srv := httptest.NewServer(signedAs(secret, "h1", old))
	defer srv.Close()
	c, err := New(Config{Host: "h1", URL: srv.URL, Credentials: Credentials(ringOf(t, newSecret, secret), "h1")})
	require.NoError(t, err)
	_, err = c.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"Bearer " + identity.DaemonCredential(newSecret, "h1"), "Bearer " + identity.DaemonCredential(secret, "h1")}, presented, "current first, then previous")

	after, err := New(Config{Host: "h1", URL: srv.URL, Credentials: Credentials(ringOf(t, newSecret, ""), "h1")})
	require.NoError(t, err)
	_, err = after.Status(context.Background())
	require.ErrorIs(t, err, power.ErrAuth, "the previous secret removed: the old agent is refused")
}
