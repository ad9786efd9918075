package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	agentclient "github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
)

// apiRig serves a real Agent's API; the daemon's own client talks to it.
func apiRig(t *testing.T, hv *fakeHV) (*Agent, string, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	a, err := New(Config{Host: "n1", BootID: "boot-1"}, hv, &fakeDaemonNoop{}, zerolog.New(logs))
	require.NoError(t, err)
	h, err := NewHandler(a, testDaemonCred, testToken, zerolog.New(logs))
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { assert.NotContains(t, logs.String(), testToken) })
	return a, srv.URL, logs
}

type fakeDaemonNoop struct{ Daemon }

func TestStatusWithTheDaemonsClient(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1), crashedVM(u2)}}
	a, url, _ := apiRig(t, hv)
	c, err := agentclient.New(agentclient.Config{Host: "n1", URL: url, Credentials: testCreds})
	require.NoError(t, err)

	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "n1", st.Host)
	assert.Equal(t, "boot-1", st.BootID)
	assert.Equal(t, "unknown", st.AdminState, "before the daemon answered")
	assert.Equal(t, []agentclient.DomainStatus{
		{UUID: u1, Name: "vm-1", State: hypervisor.StateRunning},
		{UUID: u2, Name: "vm-2", State: hypervisor.StateShutoff},
	}, st.Domains)
	assert.Equal(t, 1, st.Running())

	a.held.setAssignment(enabledWith(4, u1))
	a.held.setAck(ackFor(node.Drained, 5))
	st, err = c.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "drained", st.AdminState, "the latest word, from the ack")

	ps, err := c.Check(context.Background())
	require.NoError(t, err)
	assert.Equal(t, power.On, ps)
}

func TestStatusRefusesWrongOrMissingToken(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	_, url, logs := apiRig(t, hv)
	for _, tok := range []string{"wrong-token", testDaemonCred + "x", testDaemonCred[:len(testDaemonCred)-1], testToken, identity.DaemonCredential(testSecret, "n2")} {
		c, err := agentclient.New(agentclient.Config{Host: "n1", URL: url, Credentials: []agentclient.Credential{{Daemon: tok, Agent: testToken}}})
		require.NoError(t, err)
		_, err = c.Status(context.Background())
		assert.ErrorIs(t, err, power.ErrAuth, tok)
		assert.NotContains(t, err.Error(), tok)
	}
	for _, hdr := range []string{"", testToken, "Basic " + testToken, "Bearer  " + testToken, "Bearer x" + testToken} {
		req, _ := http.NewRequest(http.MethodGet, url+PathStatus, nil)
		if hdr != "" {
			req.Header.Set("Authorization", hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "header %q", hdr)
		assert.Equal(t, `Bearer realm="chime-agent"`, resp.Header.Get("WWW-Authenticate"))
		assert.JSONEq(t, `{"error":"missing or wrong bearer token"}`, string(body))
	}
	assert.NotEmpty(t, logs.lines(map[string]string{"component": "api", "message": "request refused: bad or missing token"}))

	// The scheme is case-insensitive (RFC 7235).
	for _, scheme := range []string{"bearer", "BEARER"} {
		req, _ := http.NewRequest(http.MethodGet, url+PathStatus, nil)
		req.Header.Set("Authorization", scheme+" "+testDaemonCred)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusOK, resp.StatusCode, scheme)
	}
}

// TestStatusWhenLibvirtFails: the agent cannot list domains, so it must not
// answer with an empty list the daemon could take as "nothing runs".
func TestStatusWhenLibvirtFails(t *testing.T) {
	hv := &fakeHV{listErr: &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "n1", Step: "libvirt: list domains", Err: errors.New("connection refused")}}
	_, url, _ := apiRig(t, hv)
	c, err := agentclient.New(agentclient.Config{Host: "n1", URL: url, Credentials: testCreds})
	require.NoError(t, err)
	_, err = c.Status(context.Background())
	assert.ErrorIs(t, err, power.ErrProtocol)
	assert.ErrorContains(t, err, "HTTP 503")
	_, err = c.Check(context.Background())
	assert.Error(t, err, "a fence level cannot verify through an agent that cannot see libvirt")
}

func TestHealthzAndRoutes(t *testing.T) {
	_, url, _ := apiRig(t, &fakeHV{})
	resp, err := http.Get(url + "/healthz")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "ok\n", string(body))

	resp, err = http.Post(url+PathStatus, "application/json", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	resp, err = http.Get(url + "/v1/nothing")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestNewHandlerNeedsToken(t *testing.T) {
	_, err := NewHandler(nil, "", testToken, zerolog.Nop())
	assert.EqualError(t, err, "agent API: empty daemon credential")
	_, err = NewHandler(nil, testDaemonCred, "", zerolog.Nop())
	assert.EqualError(t, err, "agent API: empty agent credential")
	_, err = NewHandler(nil, testToken, testToken, zerolog.Nop())
	assert.ErrorContains(t, err, "the daemon credential equals the agent credential")
}

func TestServeShutsDownCleanly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	h, err := NewHandler(nil, testDaemonCred, testToken, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, h, zerolog.Nop()) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + ln.Addr().String() + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	_, err = http.Get("http://" + ln.Addr().String() + "/healthz")
	assert.Error(t, err, "the listener is closed")
}

// TestAnotherHostCannotCallThisDrain is item 1's attack from a compromised
// host: it holds its own agent and daemon→agent credentials and calls
// n1's drain with each. n1's agent refuses both and destroys nothing; the
// daemon's credential for n1 is accepted and its answer carries n1's reply
// MAC.
func TestAnotherHostCannotCallThisDrain(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	r := newRig(t, hv, &fakeDaemon{asg: enabledWith(1, u1)}, func(c *Config) { c.StateDir = t.TempDir() })
	h, err := NewHandler(r.agent, testDaemonCred, testToken, zerolog.Nop())
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	url := srv.URL
	for name, cred := range map[string]string{
		"n2's agent credential":     identity.AgentCredential(testSecret, "n2"),
		"n2's daemon credential":    identity.DaemonCredential(testSecret, "n2"),
		"n1's own agent credential": testToken,
	} {
		req, err := http.NewRequest(http.MethodPost, url+PathDrain, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, name)
	}
	assert.Equal(t, hypervisor.StateRunning, hv.domains()[0].State, "nothing destroyed")
	req, err := http.NewRequest(http.MethodPost, url+PathDrain, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testDaemonCred)
	req.Header.Set(identity.HeaderNonce, "n-1")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	assert.NoError(t, identity.VerifyReply(testToken, http.MethodPost, PathDrain, "n-1", body, resp.Header.Get(identity.HeaderReplyMAC)))
	assert.Error(t, identity.VerifyReply(identity.AgentCredential(testSecret, "n2"), http.MethodPost, PathDrain, "n-1", body, resp.Header.Get(identity.HeaderReplyMAC)), "bound to n1")
}
