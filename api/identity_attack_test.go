package api

import (
	"encoding/json"
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

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/identity"
)

// TestAHostSpeaksOnlyForItself is item 1's attack over HTTP: a compromised
// h1 holds its own credential and uses it in h2's name: h2's heartbeat
// (with a local drain and a migration report that would move a VM's home),
// h2's assignment. Each is refused with 403 naming both hosts; h2's state
// is untouched; h1's credential presented as h2's is 401.
func TestAHostSpeaksOnlyForItself(t *testing.T) {
	e := newEnv(t, filepath.Join(t.TempDir(), "s.db"))
	vm := heartbeat.Domain{UUID: u1, Name: "web", State: hypervisor.StateRunning}
	code, body := e.do("POST", heartbeat.PathHeartbeat, agentFor("h2"), beat("h2", 1, vm))
	require.Equal(t, 200, code, body)

	forged, err := json.Marshal(heartbeat.Heartbeat{Host: "h2", BootID: "boot-1", Seq: 2, AgentStart: time.Unix(1, 0),
		Health:     heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}},
		LocalDrain: &heartbeat.LocalDrain{Since: time.Unix(2, 0), By: "cli"},
		LocalMigrations: []heartbeat.LocalMigration{{ID: "m1", At: time.Unix(2, 0), UUID: u1, Name: "web",
			Dest: "10.0.0.1", Interface: "eth0", Moved: true}}})
	require.NoError(t, err)
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		want               string
	}{
		{"h2's heartbeat with a local drain and a migration report", "POST", heartbeat.PathHeartbeat, forged,
			`heartbeat for host "h2" refused: the credential is host "h1"'s`},
		{"h2's assignment", "GET", heartbeat.PathAssignment + "?host=h2", nil,
			`assignment read for host "h2" refused: the credential is host "h1"'s`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := e.do(tc.method, tc.path, agentTok, tc.body)
			assert.Equal(t, http.StatusForbidden, code, body)
			assert.Contains(t, body, tc.want)
			assert.NotContains(t, body, credOf("h1"))
		})
	}
	// h1's credential presented as h2's is no credential at all.
	req := httptest.NewRequest("POST", heartbeat.PathHeartbeat, strings.NewReader(string(forged)))
	req.Header.Set(identity.HeaderHost, "h2")
	req.Header.Set("Authorization", "Bearer "+credOf("h1"))
	w := httptest.NewRecorder()
	e.srv.Config.Handler.ServeHTTP(w, req)
	assert.Equal(t, http.StatusUnauthorized, w.Code, w.Body.String())
	// Nor is the cluster secret itself, nor h1's credential without a host.
	for _, r := range []*http.Request{
		func() *http.Request {
			r := httptest.NewRequest("GET", heartbeat.PathAssignment+"?host=h1", nil)
			r.Header.Set("Authorization", "Bearer "+clusterSecret)
			return r
		}(),
		func() *http.Request {
			r := httptest.NewRequest("GET", heartbeat.PathAssignment+"?host=h1", nil)
			r.Header.Set("Authorization", "Bearer "+credOf("h1"))
			return r
		}(),
	} {
		w := httptest.NewRecorder()
		e.srv.Config.Handler.ServeHTTP(w, r)
		assert.Equal(t, http.StatusUnauthorized, w.Code, w.Body.String())
	}

	// h2 is as its own agent left it: not drained, the VM still its own.
	code, body = e.do("GET", PathHosts+"h2", apiTok, nil)
	require.Equal(t, 200, code, body)
	assert.Contains(t, body, `"admin":"enabled"`, "not drained by the forged local drain")
	code, body = e.do("GET", heartbeat.PathAssignment+"?host=h2", agentFor("h2"), nil)
	require.Equal(t, 200, code, body)
	a, err := heartbeat.DecodeAssignment(strings.NewReader(body))
	require.NoError(t, err)
	require.Len(t, a.Domains, 1)
	assert.Equal(t, u1, a.Domains[0].UUID)
	_, metrics := e.do("GET", PathMetrics, apiTok, nil)
	assert.Contains(t, metrics, `chime_fence_heartbeats_total{result="unauthorized",transport="http"} 2`, "the forged beat and the beat under another host's name")
}

// TestUDPDatagramSealedWithAnotherHostsKey is item 1's attack over UDP: a
// datagram for h2 sealed with h1's key (h1 holds only its own) is dropped
// without a reply and counted unauthorized; h2's own datagram is answered.
func TestUDPDatagramSealedWithAnotherHostsKey(t *testing.T) {
	e := newUDPEnv(t, 1)
	c := e.client()
	forged := sealerOf("h1").Seal(nil, heartbeat.KindHeartbeat, heartbeat.AppendHeartbeatPayload(nil, hbOf("h2", 1)))
	before := e.count("unauthorized")
	send(t, c, forged)
	r := e.beatOK(c, hbOf("h2", 2)) // the next reply answers the next beat: none was sent to the forged one
	assert.True(t, r.Answers(hbOf("h2", 2)))
	assert.Equal(t, before+1, e.count("unauthorized"))
	assert.Equal(t, float64(1), e.count("accepted"))
	assert.Contains(t, strings.Join(e.log.lines(""), "\n"), `does not match the host's credential (host \"h2\")`)
}

// TestRotationAcceptsThePreviousSecretUntilRemoved: with
// agent_previous_secret_file set, an agent still holding the previous
// secret's credential is accepted over HTTP and UDP; once the previous
// secret is removed (a restart with only the new one) it is refused.
func TestRotationAcceptsThePreviousSecretUntilRemoved(t *testing.T) {
	const newSecret = "NEW-test-cluster-secret-0123456789abcdef-xyz"
	_, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	serve := func(ring identity.Ring) *httptest.Server {
		s, err := New(d, Tokens{Agents: ring, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
		require.NoError(t, err)
		srv := httptest.NewServer(s)
		t.Cleanup(srv.Close)
		return srv
	}
	during, err := identity.NewRing(newSecret, clusterSecret)
	require.NoError(t, err)
	after, err := identity.NewRing(newSecret, "")
	require.NoError(t, err)
	beatWith := func(srv *httptest.Server, cred string, seq uint64) int {
		req, err := http.NewRequest("POST", srv.URL+heartbeat.PathHeartbeat, strings.NewReader(string(beat("h1", seq))))
		require.NoError(t, err)
		req.Header.Set(identity.HeaderHost, "h1")
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	old, fresh := identity.AgentCredential(clusterSecret, "h1"), identity.AgentCredential(newSecret, "h1")
	srv := serve(during)
	assert.Equal(t, 200, beatWith(srv, old, 1), "not yet given its new credential")
	assert.Equal(t, 200, beatWith(srv, fresh, 2), "given it")
	srv = serve(after)
	assert.Equal(t, 401, beatWith(srv, old, 3), "the previous secret removed")
	assert.Equal(t, 200, beatWith(srv, fresh, 4))

	// The same over UDP: the datagram key derives from the credential.
	s, err := New(d, Tokens{Agents: during, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	oldSealer, err := heartbeat.NewSealer(old)
	require.NoError(t, err)
	dg, err := oldSealer.SealHeartbeat(hbOf("h1", 5))
	require.NoError(t, err)
	out := s.heartbeatDatagram(dg, peer{})
	require.NotNil(t, out, "answered during the rotation")
	_, _, err = oldSealer.Open(out)
	require.NoError(t, err, "sealed with the key the agent holds")
	s, err = New(d, Tokens{Agents: after, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	dg, err = oldSealer.SealHeartbeat(hbOf("h1", 6))
	require.NoError(t, err)
	assert.Nil(t, s.heartbeatDatagram(dg, peer{}), "dropped after it")
}
