package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/store"
)

const aliceTok, roTok = "alice-secret-3", "grafana-secret-4"

var allTokens = Tokens{Agents: testRing, API: apiTok, Named: []Token{
	{Name: "alice", Role: configs.RoleOperator, Secret: aliceTok},
	{Name: "grafana", Role: configs.RoleReadOnly, Secret: roTok},
}}

func notHere(context.Context, operations.Task, operations.Report) (string, error) {
	return "", errors.New("not in this test")
}

type opsEnv struct {
	*env
	mgr     *operations.Manager
	release chan struct{}
	ready   func() []string
	client  *Client
}

// newOpsEnv serves a real daemon, store and operations.Manager; the
// disable executor blocks until release is closed.
func newOpsEnv(t *testing.T) *opsEnv {
	t.Helper()
	st, d := testDaemon(t, filepath.Join(t.TempDir(), "s.db"))
	e := &opsEnv{release: make(chan struct{})}
	t.Cleanup(e.unblock)
	var err error
	e.mgr, err = operations.New(operations.Config{}, operations.Deps{Store: st, View: operations.ClusterView(d, st, nil), Now: time.Now, Log: zerolog.Nop(),
		Executors: operations.Executors{
			Enable:      operations.AdminExecutor(d.SetAdminState, node.Enabled),
			ConfirmDown: notHere,
			Migrate:     notHere,
			Disable: func(ctx context.Context, tk operations.Task, report operations.Report) (string, error) {
				report(operations.VMProgress{Name: "web", State: operations.VMRunning})
				<-e.release
				return operations.AdminExecutor(d.SetAdminState, node.Disabled)(ctx, tk, report)
			},
		}})
	require.NoError(t, err)
	t.Cleanup(e.mgr.Close)
	s, err := New(d, allTokens, prometheus.NewRegistry(), zerolog.Nop(),
		WithOperations(e.mgr), WithFences(st), WithReadiness(func() []string {
			if e.ready != nil {
				return e.ready()
			}
			return nil
		}))
	require.NoError(t, err)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	e.env = &env{t: t, srv: srv, st: st}
	e.client = &Client{Base: srv.URL, Token: aliceTok}
	return e
}

func (e *opsEnv) unblock() {
	select {
	case <-e.release:
	default:
		close(e.release)
	}
}

// Every endpoint refuses a missing or unknown token (401) and a token of
// the wrong role (403), and says which.
func TestEveryEndpointRefusesTheWrongToken(t *testing.T) {
	e := newOpsEnv(t)
	type ep struct {
		method, path, body string
		agent, mutates     bool
	}
	eps := []ep{
		{"POST", heartbeat.PathHeartbeat, string(beat("h1", 1)), true, true},
		{"GET", heartbeat.PathAssignment + "?host=h1", "", true, false},
		{"GET", PathStatus, "", false, false},
		{"GET", PathHostList, "", false, false},
		{"GET", PathHosts + "h1", "", false, false},
		{"PUT", PathHosts + "h1/admin-state", `{"state":"disabled","reason":"x"}`, false, true},
		{"POST", PathHosts + "h1/operations/disable", `{}`, false, true},
		{"POST", PathHosts + "h1/operations/confirm-down", `{"reason":"x"}`, false, true},
		{"GET", PathTasks + "?host=h1", "", false, false},
		{"GET", PathTasks + "/op-1", "", false, false},
		{"POST", PathTasks + "/evac-h1-1/cancel", `{"reason":"x"}`, false, true},
		{"GET", PathHistory, "", false, false},
		{"GET", PathReadyz, "", false, false},
		{"GET", PathMetrics, "", false, false},
	}
	for _, x := range eps {
		t.Run(x.method+" "+x.path, func(t *testing.T) {
			code, body := e.do(x.method, x.path, "", []byte(x.body))
			assert.Equal(t, 401, code, "no token: %s", body)
			assert.Contains(t, body, "missing or wrong")
			code, body = e.do(x.method, x.path, "not-a-token", []byte(x.body))
			assert.Equal(t, 401, code, "wrong token: %s", body)
			if x.agent {
				for _, tok := range []string{apiTok, aliceTok, roTok} {
					code, body = e.do(x.method, x.path, tok, []byte(x.body))
					assert.Equal(t, 403, code, "API token on an agent endpoint: %s", body)
					assert.Contains(t, body, "agent endpoints accept only a host's agent credential")
				}
				return
			}
			code, body = e.do(x.method, x.path, agentTok, []byte(x.body))
			assert.Equal(t, 403, code, "agent token: %s", body)
			assert.Contains(t, body, "an agent credential is accepted only on agent endpoints")
			code, body = e.do(x.method, x.path, roTok, []byte(x.body))
			if x.mutates {
				assert.Equal(t, 403, code, "read-only token: %s", body)
				assert.Contains(t, body, `token "grafana" is read-only: it may GET, never `+x.method)
			} else {
				assert.NotEqual(t, 401, code, body)
				assert.NotEqual(t, 403, code, "read-only may GET: %s", body)
			}
		})
	}
	// None of those refusals started anything.
	ts, err := e.mgr.Tasks("")
	require.NoError(t, err)
	assert.Empty(t, ts)
	hs, err := e.client.ShowHost(context.Background(), "h1")
	require.NoError(t, err)
	assert.Equal(t, node.Enabled, hs.Admin)
	// Liveness needs no token.
	code, body := e.do("GET", PathHealthz, "", nil)
	assert.Equal(t, 200, code)
	assert.JSONEq(t, `{"status":"ok"}`, body)
	// A Bearer prefix of a real token is not a token.
	code, _ = e.do("GET", PathStatus, aliceTok[:5], nil)
	assert.Equal(t, 401, code)
}

func TestOperationLifecycleThroughTheClient(t *testing.T) {
	e := newOpsEnv(t)
	ctx := context.Background()
	tk, err := e.client.StartOperation(ctx, "h1", operations.OpDisable, operations.Request{Reason: "BIOS update"})
	require.NoError(t, err)
	assert.Equal(t, "alice", tk.Actor, "the actor is the token's name")
	assert.Equal(t, operations.TaskRunning, tk.State)
	assert.Equal(t, "BIOS update", tk.Reason)

	// Locked: a second operation is a 409 naming the task.
	_, err = e.client.StartOperation(ctx, "h1", operations.OpEnable, operations.Request{})
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "HTTP 409")
	assert.Contains(t, err.Error(), "task "+tk.ID+" (disable by alice)")
	// So is a direct admin-state change.
	code, body := e.do("PUT", PathHosts+"h1/admin-state", apiTok, []byte(`{"state":"drained","reason":"x"}`))
	assert.Equal(t, 409, code)
	assert.Contains(t, body, "locked by task "+tk.ID)

	// The host shows the lock, and the running task its progress.
	hi, err := e.client.ShowHost(ctx, "h1")
	require.NoError(t, err)
	require.NotNil(t, hi.Lock)
	assert.Equal(t, tk.ID, hi.Lock.TaskID)
	list, err := e.client.Hosts(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	assert.Equal(t, "h1", list[0].Name)
	assert.NotNil(t, list[0].Lock)
	assert.Nil(t, list[1].Lock)
	got, err := e.client.Task(ctx, tk.ID)
	require.NoError(t, err)
	require.Len(t, got.Progress, 1)
	assert.Equal(t, "web", got.Progress[0].Name)

	e.unblock()
	require.Eventually(t, func() bool {
		got, err = e.client.Task(ctx, tk.ID)
		return err == nil && got.State.Done()
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, operations.TaskSucceeded, got.State, got.Error)
	assert.Equal(t, "host h1 is disabled (was enabled)", got.Result)
	hi, err = e.client.ShowHost(ctx, "h1")
	require.NoError(t, err)
	assert.Equal(t, node.Disabled, hi.Admin)
	assert.Nil(t, hi.Lock)

	ts, err := e.client.Tasks(ctx, "h1")
	require.NoError(t, err)
	require.Len(t, ts, 1)
	ts, err = e.client.Tasks(ctx, "h2")
	require.NoError(t, err)
	assert.Empty(t, ts)
	ts, err = e.client.Tasks(ctx, "")
	require.NoError(t, err)
	assert.Len(t, ts, 1)

	// History names the actor and the reason.
	recs, err := e.client.History(ctx, store.Query{Host: "h1", Kind: operations.HistoryKind})
	require.NoError(t, err)
	require.Len(t, recs, 2)
	assert.Contains(t, recs[1].Reason, "disable h1 by alice succeeded")
	assert.Contains(t, recs[1].Reason, "BIOS update")
	admin, err := e.client.History(ctx, store.Query{Host: "h1", Kind: "admin"})
	require.NoError(t, err)
	require.Len(t, admin, 1)
	assert.Contains(t, admin[0].Reason, "disable by alice (task "+tk.ID+"): BIOS update")

	// The state machine's refusals are 409s with the reason.
	_, err = e.client.StartOperation(ctx, "h1", operations.OpDisable, operations.Request{})
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "only an enabled host can be disabled")
	_, err = e.client.StartOperation(ctx, "h1", operations.OpConfirmDown, operations.Request{Reason: "dead PDU"})
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "confirm-down is only for an unreachable host")
	// Operations without an executor are 501.
	_, err = e.client.StartOperation(ctx, "h1", operations.OpRebuild, operations.Request{})
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Contains(t, err.Error(), "HTTP 501")
}

func TestOperationRequestMistakes(t *testing.T) {
	e := newOpsEnv(t)
	for _, c := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"h1/operations/reboot", `{}`, 400, `unknown operation "reboot"`},
		{"h9/operations/enable", `{}`, 404, `host "h9" is not in the daemon's configuration`},
		{"h1/operations/drain", `{"target":"h2"}`, 400, "target is only for migrate and rebuild, not drain"},
		{"h1/operations/migrate", `{"target":"h1"}`, 400, "target h1 is the host itself"},
		{"h1/operations/migrate", `{"target":"h9"}`, 400, `target host "h9" is not in the daemon's configuration`},
		{"h1/operations/enable", `{"host":"h2"}`, 400, `unknown field "host" (allowed: target, migrate_local_disk_vms, reason)`},
		{"h1/operations/enable", `{"actor":"root"}`, 400, `unknown field "actor"`},
		{"h1/operations/enable", `{"reason": 5}`, 400, `field "reason" must be a string, got a JSON number`},
		{"h1/operations/enable", `{"reason":`, 400, "truncated JSON"},
		{"h1/operations/enable", `{"reason":"a"}{}`, 400, "trailing data"},
		{"h1/operations/enable", `[1]`, 400, "must be a operations.Request"},
		{"h1/operations/confirm-down", ``, 400, "confirm-down needs a reason"},
		{"h1/operations/enable", `{"reason":"` + strings.Repeat("x", MaxOperationBody) + `"}`, 413, "exceeds"},
		{"h1/operations/enable", ``, 409, "already enabled"},
	} {
		t.Run(c.path+" "+c.want, func(t *testing.T) {
			code, body := e.do("POST", PathHosts+c.path, aliceTok, []byte(c.body))
			assert.Equal(t, c.code, code, body)
			assert.Contains(t, body, c.want)
		})
	}
	_, err := e.client.Task(context.Background(), "op-nope")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = e.client.Tasks(context.Background(), "h9")
	require.ErrorIs(t, err, ErrNotFound)
	ts, err := e.mgr.Tasks("")
	require.NoError(t, err)
	assert.Empty(t, ts, "no refused request left a task")
}

func TestReadiness(t *testing.T) {
	e := newOpsEnv(t)
	r, err := e.client.Ready(context.Background())
	require.NoError(t, err)
	assert.True(t, r.Ready)
	e.ready = func() []string { return []string{"store closed", "detector not running"} }
	_, err = e.client.Ready(context.Background())
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Contains(t, err.Error(), "HTTP 503: not ready: store closed; detector not running")
}

// cancelOps is operations whose tasks can be cancelled.
type cancelOps struct {
	*operations.Manager
	got []string
}

func (c *cancelOps) Cancel(id, actor, reason string) (operations.Task, error) {
	c.got = append(c.got, id+" by "+actor+": "+reason)
	if id != "evac-h1-1" {
		return operations.Task{}, fmt.Errorf("task %q: %w", id, operations.ErrNotFound)
	}
	return operations.Task{ID: id, Host: "h1", State: operations.TaskInterrupted, Error: "cancelled by " + actor}, nil
}

// TestCancelTask: POST /v1/tasks/{id}/cancel reaches the Canceller with
// the token's name and the reason; operations without one answer 501.
func TestCancelTask(t *testing.T) {
	e := newOpsEnv(t)
	ctx := context.Background()
	_, err := e.client.CancelTask(ctx, "evac-h1-1", "x")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "task cancel is not enabled", "the Manager alone cannot cancel")

	st, d := testDaemon(t, filepath.Join(t.TempDir(), "s2.db"))
	c := &cancelOps{Manager: e.mgr}
	s, err := New(d, allTokens, prometheus.NewRegistry(), zerolog.Nop(), WithOperations(c), WithFences(st),
		WithEvacuability(func(h string) string { return "not yet evacuable: " + h }))
	require.NoError(t, err)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	cl := &Client{Base: srv.URL, Token: aliceTok}
	tk, err := cl.CancelTask(ctx, "evac-h1-1", "host retired")
	require.NoError(t, err)
	assert.Equal(t, operations.TaskInterrupted, tk.State)
	assert.Equal(t, []string{"evac-h1-1 by alice: host retired"}, c.got)
	_, err = cl.CancelTask(ctx, "evac-nope", "")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "404")

	// The status says why a host is not evacuable.
	status, err := cl.Status(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, status.Hosts)
	assert.Equal(t, "not yet evacuable: "+status.Hosts[0].Name, status.Hosts[0].NotEvacuable)
	h, err := cl.ShowHost(ctx, status.Hosts[0].Name)
	require.NoError(t, err)
	assert.Equal(t, "not yet evacuable: "+h.Name, h.NotEvacuable)
}

func TestServerWithoutOperations(t *testing.T) {
	e := newEnv(t, filepath.Join(t.TempDir(), "s.db"))
	for _, p := range []string{PathTasks, PathTasks + "/op-1"} {
		code, body := e.do("GET", p, apiTok, nil)
		assert.Equal(t, 501, code, body)
		assert.Contains(t, body, "operations are not enabled")
	}
	code, body := e.do("POST", PathHosts+"h1/operations/enable", apiTok, nil)
	assert.Equal(t, 501, code, body)
}

func TestNewRefusesAmbiguousTokens(t *testing.T) {
	for _, c := range []struct {
		tok  Tokens
		want string
	}{
		{Tokens{Agents: testRing, API: clusterSecret}, `tokens "cluster secret" and "api" have the same value`},
		{Tokens{Agents: testRing, Named: []Token{{Name: "x", Role: configs.RoleOperator, Secret: "s"}, {Name: "y", Role: configs.RoleReadOnly, Secret: "s"}}}, `tokens "x" and "y" have the same value`},
		{Tokens{Agents: testRing, API: "b", Named: []Token{{Name: "api", Role: configs.RoleOperator, Secret: "c"}}}, `token name "api" is used twice`},
		{Tokens{Agents: testRing, Named: []Token{{Name: "x", Role: "admin", Secret: "c"}}}, `role "admin" is not read-only or operator`},
		{Tokens{Agents: testRing, Named: []Token{{Role: configs.RoleOperator, Secret: "c"}}}, "token 1 has no name"},
		{Tokens{Agents: testRing, Named: []Token{{Name: "x", Role: configs.RoleOperator}}}, `token "x" is empty`},
	} {
		_, err := New(nil, c.tok, nil, zerolog.Nop())
		require.Error(t, err, c.want)
		assert.Contains(t, err.Error(), c.want)
		for _, secret := range []string{`"s"`, `"c"`} {
			assert.NotContains(t, err.Error(), "value "+secret)
		}
	}
	// Only named tokens, no api_token_file: fine.
	_, err := New(nil, Tokens{Agents: testRing, Named: []Token{{Name: "x", Role: configs.RoleReadOnly, Secret: "c"}}}, nil, zerolog.Nop())
	require.NoError(t, err)
}

func writeSecret(t *testing.T, dir, name, v string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(v+"\n"), mode))
	require.NoError(t, os.Chmod(p, mode))
	return p
}

func TestReadTokens(t *testing.T) {
	dir := t.TempDir()
	c := configs.Controller{
		AgentSecretFile: writeSecret(t, dir, "agent", clusterSecret, 0o600),
		APITokenFile:    writeSecret(t, dir, "api", "api-value-0123456789abcdef-0123456789", 0o600),
		APITokens: []configs.APIToken{
			{Name: "alice", File: writeSecret(t, dir, "alice", "alice-value-0123456789abcdef-0123456789", 0o600), Role: configs.RoleOperator},
			{Name: "ro", File: writeSecret(t, dir, "ro", "ro-value-0123456789abcdef-0123456789", 0o600), Role: configs.RoleReadOnly},
		},
	}
	tok, err := ReadTokens(c)
	require.NoError(t, err)
	assert.Equal(t, Tokens{Agents: testRing, API: "api-value-0123456789abcdef-0123456789", Named: []Token{
		{Name: "alice", Role: configs.RoleOperator, Secret: "alice-value-0123456789abcdef-0123456789"},
		{Name: "ro", Role: configs.RoleReadOnly, Secret: "ro-value-0123456789abcdef-0123456789"},
	}}, tok)

	bad := c
	bad.APITokens = append([]configs.APIToken{}, c.APITokens...)
	bad.APITokens[1].File = writeSecret(t, dir, "world", "world-value-0123456789abcdef-0123456789", 0o644)
	bad.APITokens = append(bad.APITokens, configs.APIToken{Name: "gone", File: filepath.Join(dir, "missing"), Role: configs.RoleReadOnly})
	_, err = ReadTokens(bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `api token "ro": file `+filepath.Join(dir, "world")+" is readable by group or others")
	assert.Contains(t, err.Error(), `api token "gone"`)
	assert.NotContains(t, err.Error(), "world-value-0123456789abcdef-0123456789")

	same := c
	same.APITokens = []configs.APIToken{{Name: "dup", File: writeSecret(t, dir, "dup", "api-value-0123456789abcdef-0123456789", 0o600), Role: configs.RoleReadOnly}}
	_, err = ReadTokens(same)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `tokens "api" and "dup" have the same value`)
	assert.NotContains(t, err.Error(), "api-value-0123456789abcdef-0123456789")

	short := c
	short.APITokenFile = writeSecret(t, dir, "short", "short-token", 0o600)
	_, err = ReadTokens(short)
	require.ErrorContains(t, err, "api token: file "+short.APITokenFile+" holds 11 bytes; at least 32 are needed")
	assert.NotContains(t, err.Error(), "short-token")

	_, err = ReadTokens(configs.Controller{AgentSecretFile: c.AgentSecretFile})
	require.ErrorContains(t, err, "neither controller.api_token_file nor controller.api_tokens is set")
	_, err = ReadTokens(configs.Controller{APITokenFile: c.APITokenFile})
	require.ErrorContains(t, err, "controller.agent_secret_file is not set")
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "chime-fence test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	cfg, err := TLSConfig(configs.Controller{TLSCertFile: certFile, TLSKeyFile: keyFile})
	require.NoError(t, err)
	require.NotNil(t, cfg)
	assert.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)

	e := newOpsEnv(t)
	srv := httptest.NewUnstartedServer(e.srv.Config.Handler)
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	require.True(t, strings.HasPrefix(srv.URL, "https://127.0.0.1:"))

	c := &Client{Base: srv.URL, Token: roTok, HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	hs, err := c.Hosts(context.Background())
	require.NoError(t, err)
	assert.Len(t, hs, 2)
	// A client that does not trust the certificate gets nothing.
	_, err = (&Client{Base: srv.URL, Token: roTok}).Hosts(context.Background())
	require.Error(t, err)
	var ue x509.UnknownAuthorityError
	assert.True(t, errors.As(err, &ue), "%v", err)
	// Plain HTTP to the TLS port is refused.
	_, err = (&Client{Base: strings.Replace(srv.URL, "https", "http", 1), Token: roTok}).Hosts(context.Background())
	require.Error(t, err)

	none, err := TLSConfig(configs.Controller{})
	require.NoError(t, err)
	assert.Nil(t, none, "no files: plain HTTP")
	_, err = TLSConfig(configs.Controller{TLSCertFile: certFile})
	require.ErrorContains(t, err, "TLS needs both")
	_, err = TLSConfig(configs.Controller{TLSCertFile: certFile, TLSKeyFile: filepath.Join(dir, "nope.pem")})
	require.ErrorContains(t, err, "nope.pem")
	_, err = TLSConfig(configs.Controller{TLSCertFile: keyFile, TLSKeyFile: certFile})
	require.Error(t, err)
	key, _ := os.ReadFile(keyFile)
	assert.NotContains(t, err.Error(), string(key[40:80]), "no key material in the error")
}

func TestShowHostListsItsDomains(t *testing.T) {
	e := newOpsEnv(t)
	const u = "0b8a2c4e-1111-4d5e-8f00-0123456789ab"
	code, body := e.do("POST", heartbeat.PathHeartbeat, agentTok,
		beat("h1", 1, heartbeat.Domain{UUID: u, Name: "web", State: hypervisor.StateRunning}))
	require.Equal(t, 200, code, body)
	hi, err := e.client.ShowHost(context.Background(), "h1")
	require.NoError(t, err)
	assert.Equal(t, []heartbeat.AssignedDomain{{UUID: u, Name: "web"}}, hi.Assigned)
	assert.Empty(t, hi.Evicted)
	list, err := e.client.Hosts(context.Background())
	require.NoError(t, err)
	for _, h := range list {
		assert.Empty(t, h.Assigned, "the list stays short: counts only")
	}
}

func TestBearerTokenParsing(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc": "abc", "bearer abc": "abc", "BEARER abc": "abc", "bEaReR a b": "a b",
	} {
		got, ok := heartbeat.BearerToken(h)
		assert.True(t, ok, h)
		assert.Equal(t, want, got, h)
	}
	for _, h := range []string{"", "Bearer ", "Bearer", "Basic abc", "Bearerabc", "Token abc"} {
		_, ok := heartbeat.BearerToken(h)
		assert.False(t, ok, "%q", h)
	}
}

// TestBearerSchemeIsCaseInsensitive: RFC 7235 schemes are case-insensitive;
// a client sending "bearer" was refused.
func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	e := newOpsEnv(t)
	for _, scheme := range []string{"bearer", "BEARER", "Bearer"} {
		req, err := http.NewRequest("GET", e.client.Base+PathStatus, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", scheme+" "+aliceTok)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, 200, resp.StatusCode, scheme)
	}
}
