package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/store"
)

type quiet struct{}

func (quiet) ProbeHost(context.Context, string) (bool, bool, string) { return false, true, "" }
func (quiet) ReadPower(context.Context, string) (power.State, error) { return power.On, nil }
func (quiet) CheckReadiness(context.Context, string) detector.Readiness {
	return detector.Readiness{Ready: true}
}
func (quiet) Alert(context.Context, detector.Alert) {}

const apiTok = "api-secret-2"

type env struct {
	t   testing.TB
	srv *httptest.Server
	st  *store.Store
}

// testDaemon is a daemon over a store at path, knowing hosts h1 and h2 of
// rack r1, whose probes and BMCs never answer anything.
func testDaemon(t testing.TB, path string) (*store.Store, *daemon.Daemon) {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	eng, err := detector.NewEngine(detector.EngineConfig{
		Hosts: []detector.HostConfig{{Name: "h1", Rack: "r1"}, {Name: "h2", Rack: "r1"}},
		Monitor: detector.MonitorConfig{Thresholds: detector.Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second},
			RecoveryHeartbeats: 3, Settle: time.Second},
		Storm: detector.StormGuard{MaxFraction: 0.5, Window: time.Minute},
	}, detector.Deps{Prober: quiet{}, Power: quiet{}, Readiness: quiet{}, History: st, Memos: st, Alerter: quiet{}, Log: zerolog.Nop()}, nil)
	require.NoError(t, err)
	d, err := daemon.New(st, eng, func() time.Duration { return time.Second }, nil, zerolog.Nop())
	require.NoError(t, err)
	return st, d
}

func newEnv(t testing.TB, path string) *env {
	t.Helper()
	st, d := testDaemon(t, path)
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, st: st}
}

func (e *env) do(method, path, token string, body []byte) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	require.NoError(e.t, err)
	if token != "" {
		setAuth(req, token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb ErrorBody
	if resp.StatusCode >= 400 && json.Unmarshal(b, &eb) == nil && eb.Error != "" {
		return resp.StatusCode, eb.Error
	}
	return resp.StatusCode, string(b)
}

const u1 = "6f1c2a9e-0000-4000-8000-000000000001"

func beat(host string, seq uint64, doms ...heartbeat.Domain) []byte {
	b, _ := json.Marshal(heartbeat.Heartbeat{Host: host, BootID: "boot-1", Seq: seq, AgentStart: time.Unix(1, 0),
		Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}, Domains: doms})
	return b
}

func TestHeartbeatRefusals(t *testing.T) {
	e := newEnv(t, filepath.Join(t.TempDir(), "s.db"))
	cases := []struct {
		name  string
		token string
		body  string
		code  int
		want  string
	}{
		{"no token", "", string(beat("h1", 1)), 401, "missing or wrong agent credential"},
		{"API token is not an agent token", apiTok, string(beat("h1", 1)), 403, "agent endpoints accept only a host's agent credential"},
		{"not JSON", agentTok, "{host: h1", 400, "malformed JSON at byte"},
		{"wrong type", agentTok, `{"host":"h1","boot_id":"b","seq":"one"}`, 400, `field "seq"`},
		{"missing boot id", agentTok, `{"host":"h1","seq":1}`, 400, "boot_id is empty"},
		{"bad uuid", agentTok, `{"host":"h1","boot_id":"b","seq":1,"domains":[{"uuid":"nope","state":"running"}]}`, 400, `domains[0].uuid "nope"`},
		{"bad domain state", agentTok, `{"host":"h1","boot_id":"b","seq":1,"domains":[{"uuid":"` + u1 + `","state":"flying"}]}`, 400, "flying"},
		{"empty body", agentTok, "", 400, "empty body"},
		{"trailing garbage", agentTok, string(beat("h1", 1)) + "{}", 400, "trailing data"},
		{"unknown host", agentFor("h9"), string(beat("h9", 1)), 404, `host "h9" is not in the daemon's configuration`},
		{"too large", agentTok, `{"host":"h1","boot_id":"` + strings.Repeat("x", heartbeat.MaxBodyBytes) + `"}`, 413, "exceeds"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := e.do("POST", heartbeat.PathHeartbeat, c.token, []byte(c.body))
			assert.Equal(t, c.code, code, body)
			assert.Contains(t, body, c.want)
		})
	}
	code, _ := e.do("GET", PathStatus, apiTok, nil)
	require.Equal(t, 200, code, "the daemon still serves after every refusal")
	code, _ = e.do("GET", PathMetrics, "", nil)
	assert.Equal(t, 401, code, "/metrics needs a token")
	code, _ = e.do("GET", PathMetrics, agentTok, nil)
	assert.Equal(t, 403, code, "not the agent's")
	_, metrics := e.do("GET", PathMetrics, apiTok, nil)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="unauthorized",transport="http"} 2`)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="malformed",transport="http"} 7`)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="unknown_host",transport="http"} 1`)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="too_large",transport="http"} 1`)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="accepted",transport="http"} 0`)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="malformed",transport="udp"} 0`, "HTTP refusals are not counted as UDP")
	for _, tok := range []string{credOf("h1"), clusterSecret, apiTok} {
		assert.NotContains(t, metrics, tok)
	}
}

func TestAssignmentFollowsHeartbeatsAndAdminState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	e := newEnv(t, path)
	code, body := e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 1))
	require.Equal(t, 200, code, body)
	var ack heartbeat.Ack
	require.NoError(t, json.Unmarshal([]byte(body), &ack))
	assert.Equal(t, node.Enabled, ack.AdminState)
	assert.Equal(t, heartbeat.Duration(time.Second), ack.HeartbeatInterval)
	rev0 := ack.AssignmentRevision
	assert.NotZero(t, rev0)

	vm := heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateRunning}
	_, body = e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 2, vm))
	require.NoError(t, json.Unmarshal([]byte(body), &ack))
	assert.NotEqual(t, rev0, ack.AssignmentRevision, "a new domain changes the assignment")
	rev1 := ack.AssignmentRevision

	code, body = e.do("GET", heartbeat.PathAssignment+"?host=h1", agentTok, nil)
	require.Equal(t, 200, code, body)
	a, err := heartbeat.DecodeAssignment(strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u1, Name: "web"}}, a.Domains)
	assert.Equal(t, rev1, a.Revision)

	// QEMU died: still assigned, revision unchanged.
	vm.State, vm.Reason = hypervisor.StateShutoff, "crashed"
	_, body = e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 3, vm))
	require.NoError(t, json.Unmarshal([]byte(body), &ack))
	assert.Equal(t, rev1, ack.AssignmentRevision)

	// A heartbeat whose domain list is null (the agent could not list them)
	// forgets nothing.
	_, body = e.do("POST", heartbeat.PathHeartbeat, agentTok,
		[]byte(`{"host":"h1","boot_id":"boot-1","seq":4,"agent_start":"1970-01-01T00:00:01Z","health":{"libvirt":{"name":"libvirt","ok":true}},"domains":null}`))
	require.NoError(t, json.Unmarshal([]byte(body), &ack))
	assert.Equal(t, rev1, ack.AssignmentRevision, "unknown domains are not an empty host")

	// Drain: the ack says so, the revision changes.
	code, body = e.do("PUT", PathHosts+"h1/admin-state", apiTok, []byte(`{"state":"drained","reason":"test"}`))
	require.Equal(t, 200, code, body)
	_, body = e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 5, vm))
	require.NoError(t, json.Unmarshal([]byte(body), &ack))
	assert.Equal(t, node.Drained, ack.AdminState)
	assert.NotEqual(t, rev1, ack.AssignmentRevision)

	for _, bad := range []struct{ body, want string }{
		{`{"state":"drained"}`, "reason is required"},
		{`{"state":"asleep","reason":"x"}`, "unknown admin state"},
		{`{"state":"drained","reason":"x","force":true}`, "unknown field"},
	} {
		code, body = e.do("PUT", PathHosts+"h1/admin-state", apiTok, []byte(bad.body))
		assert.Equal(t, 400, code, body)
		assert.Contains(t, body, bad.want)
	}
	code, _ = e.do("PUT", PathHosts+"h9/admin-state", apiTok, []byte(`{"state":"drained","reason":"x"}`))
	assert.Equal(t, 404, code)
	code, _ = e.do("PUT", PathHosts+"h1/admin-state", agentTok, []byte(`{"state":"enabled","reason":"x"}`))
	assert.Equal(t, 403, code, "an agent cannot change admin states")

	// Restart on the same store: drained and the domain survive.
	e.srv.Close()
	require.NoError(t, e.st.Close())
	e2 := newEnv(t, path)
	_, body = e2.do("GET", heartbeat.PathAssignment+"?host=h1", agentTok, nil)
	a, err = heartbeat.DecodeAssignment(strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, node.Drained, a.AdminState)
	assert.Len(t, a.Domains, 1)

	c := &Client{Base: e2.srv.URL, Token: apiTok}
	recs, err := c.History(context.Background(), store.Query{Host: "h1", Kind: "admin"})
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Equal(t, "drained", recs[0].To)
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	require.Len(t, st.Hosts, 2)
	assert.Equal(t, node.Drained, st.Hosts[0].Admin)
	assert.Equal(t, 1, st.Hosts[0].Domains)
	_, err = c.Host(context.Background(), "h9")
	assert.ErrorIs(t, err, ErrNotFound)
	bad := &Client{Base: e2.srv.URL, Token: "wrong"}
	_, err = bad.Status(context.Background())
	assert.ErrorContains(t, err, "HTTP 401: missing or wrong API token")
}

func TestNewRequiresTokens(t *testing.T) {
	_, err := New(nil, Tokens{Agents: testRing}, nil, zerolog.Nop())
	assert.ErrorContains(t, err, "the API token (or at least one named API token) is required")
	_, err = New(nil, Tokens{API: "b"}, nil, zerolog.Nop())
	assert.ErrorContains(t, err, "the cluster secret (agent credentials) is required")
}

// A replayed or late heartbeat describes the past: the last word of a host
// whose VM has since been started elsewhere must not move the VM back.
func TestReplayedHeartbeatMovesNoDomain(t *testing.T) {
	e := newEnv(t, filepath.Join(t.TempDir(), "s.db"))
	vm := heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateRunning}
	assignment := func(host string) []heartbeat.AssignedDomain {
		code, body := e.do("GET", heartbeat.PathAssignment+"?host="+host, agentFor(host), nil)
		require.Equal(t, 200, code, body)
		a, err := heartbeat.DecodeAssignment(strings.NewReader(body))
		require.NoError(t, err)
		return a.Domains
	}
	code, body := e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 1, vm))
	require.Equal(t, 200, code, body)
	code, body = e.do("POST", heartbeat.PathHeartbeat, agentFor("h2"), beat("h2", 1, vm))
	require.Equal(t, 200, code, body)
	require.Len(t, assignment("h2"), 1, "running on h2 now")
	code, body = e.do("POST", heartbeat.PathHeartbeat, agentTok, beat("h1", 1, vm))
	require.Equal(t, 200, code, body, "a replay is answered, not refused")
	assert.Len(t, assignment("h2"), 1, "the replayed heartbeat did not move the domain back")
	assert.Empty(t, assignment("h1"))
}
