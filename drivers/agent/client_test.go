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
	"github.com/chimestack/chime-fence/power"
)

const token = "agent-token-xyz"

func server(t *testing.T, h http.HandlerFunc) string {
	s := httptest.NewServer(h)
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
	c, err := New(Config{Host: "n1", URL: url, Token: token})
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

	bad, _ := New(Config{Host: "n1", URL: url, Token: "wrong-token"})
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
			c, err := New(Config{Host: "n1", URL: server(t, tc.h)})
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
	c, _ := New(Config{Host: "n1", URL: "http://" + addr})
	_, err = c.Status(context.Background())
	assert.ErrorIs(t, err, power.ErrUnreachable)

	slow := server(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	c, _ = New(Config{Host: "n1", URL: slow})
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
	c, err := New(Config{Host: "n1", URL: url, Token: token, Timeout: time.Nanosecond})
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

	bad, _ := New(Config{Host: "n1", URL: url, Token: "wrong-token"})
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
			c, err := New(Config{Host: "n1", URL: server(t, tc.h), Token: token})
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
	c, err := New(Config{Host: "n1", URL: url, Token: token})
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
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			c, err := New(Config{Host: "h1", URL: srv.URL, Token: "t"})
			require.NoError(t, err)
			_, err = c.Drain(context.Background())
			require.ErrorIs(t, err, tc.kind)
		})
	}
	for _, body := range []string{`{}`, `null`, `{"host":"h1"}`, `{"host":"h1","domains":null}`, `{"domains":[]}`} {
		t.Run("status "+body, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) }))
			defer srv.Close()
			c, err := New(Config{Host: "h1", URL: srv.URL, Token: "t"})
			require.NoError(t, err)
			_, err = c.Status(context.Background())
			require.Error(t, err, "a status with no host or no domain list is no proof that nothing runs")
		})
	}
}
