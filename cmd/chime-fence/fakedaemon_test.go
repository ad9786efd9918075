package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/operations"
)

// fakeDaemon serves the operator API's routes (paths, status codes, error
// bodies and JSON shapes of api/) from a script, so the CLI is tested
// through the real api.Client over HTTP. Each GET of a task returns the
// task's next scripted snapshot, the last one forever.
type fakeDaemon struct {
	t     *testing.T
	srv   *httptest.Server
	file  string // the CLI's configuration, pointing at srv
	token string

	mu      sync.Mutex
	hosts   []api.HostInfo
	script  map[operations.Op][]operations.Task // snapshots of the task an op starts
	refuse  map[operations.Op]refusal
	tasks   map[string]*scripted
	order   []string
	started []startCall
	auth    []string // every Authorization header seen
	drop    int      // the next task reads (after a task's first) get their connection closed
	dropID  string   // if set, only reads of this task are dropped (a finished wait may still have a read in flight)
}

type refusal struct {
	code int
	msg  string
}

type startCall struct {
	host string
	op   operations.Op
	req  operations.Request
	raw  string
}

type scripted struct {
	snaps []operations.Task
	gets  int // answered reads
}

// newFakeDaemon listens on loopback and writes a config (hosts h1, h2, h3)
// whose controller.listen and api_token_file point at it.
func newFakeDaemon(t *testing.T) *fakeDaemon { return newFakeDaemonTLS(t, "", "") }

// newFakeDaemonTLS serves HTTPS with the certificate, if one is given.
func newFakeDaemonTLS(t *testing.T, certFile, keyFile string) *fakeDaemon {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dir := t.TempDir()
	f := &fakeDaemon{t: t, token: "api.token-secret-0123456789abcdef", script: map[operations.Op][]operations.Task{},
		refuse: map[operations.Op]refusal{}, tasks: map[string]*scripted{}}
	f.file = daemonConfig(t, dir, l.Addr().(*net.TCPAddr).Port)
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathHostList, f.authed(f.listHosts))
	mux.HandleFunc("GET "+api.PathHosts+"{host}", f.authed(f.showHost))
	mux.HandleFunc("POST "+api.PathHosts+"{host}/operations/{op}", f.authed(f.start))
	mux.HandleFunc("GET "+api.PathTasks, f.authed(f.listTasks))
	mux.HandleFunc("GET "+api.PathTasks+"/{id}", f.authed(f.getTask))
	f.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: mux}}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		require.NoError(t, err)
		f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

// withTLS makes the CLI's configuration say the daemon serves TLS with
// this certificate.
func withTLS(t *testing.T, file, certFile, keyFile string) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	var keep []string
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if !strings.HasPrefix(l, "  tls_") {
			keep = append(keep, l)
		}
	}
	s := strings.Replace(strings.Join(keep, ""), "controller:\n", "controller:\n  tls_cert_file: "+certFile+"\n  tls_key_file: "+keyFile+"\n", 1)
	require.NoError(t, os.WriteFile(file, []byte(s), 0o644))
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	return certFile, keyFile
}

func writeJSONResp(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeDaemon) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		tok := f.token
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+tok {
			writeJSONResp(w, http.StatusUnauthorized, api.ErrorBody{Error: "missing or wrong API token (Authorization: Bearer)"})
			return
		}
		h(w, r)
	}
}

func (f *fakeDaemon) listHosts(w http.ResponseWriter, _ *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	writeJSONResp(w, http.StatusOK, api.HostsBody{Hosts: f.hosts})
}

func (f *fakeDaemon) showHost(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, h := range f.hosts {
		if h.Name == r.PathValue("host") {
			writeJSONResp(w, http.StatusOK, h)
			return
		}
	}
	writeJSONResp(w, http.StatusNotFound, api.ErrorBody{Error: fmt.Sprintf("host %q: unknown host", r.PathValue("host"))})
}

func (f *fakeDaemon) start(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var req operations.Request
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSONResp(w, http.StatusBadRequest, api.ErrorBody{Error: "operation body: " + err.Error()})
		return
	}
	op := operations.Op(r.PathValue("op"))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.started = append(f.started, startCall{host: r.PathValue("host"), op: op, req: req, raw: string(raw)})
	if rf, ok := f.refuse[op]; ok {
		writeJSONResp(w, rf.code, api.ErrorBody{Error: rf.msg})
		return
	}
	snaps := f.script[op]
	if len(snaps) == 0 {
		writeJSONResp(w, http.StatusNotImplemented, api.ErrorBody{Error: "no script for " + string(op)})
		return
	}
	id := snaps[0].ID
	f.tasks[id] = &scripted{snaps: snaps}
	f.order = append(f.order, id)
	writeJSONResp(w, http.StatusAccepted, snaps[0])
}

// addTask makes a task known without an operation starting it.
func (f *fakeDaemon) addTask(snaps ...operations.Task) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[snaps[0].ID] = &scripted{snaps: snaps}
	f.order = append(f.order, snaps[0].ID)
}

func (f *fakeDaemon) getTask(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.tasks[r.PathValue("id")]
	if !ok {
		writeJSONResp(w, http.StatusNotFound, api.ErrorBody{Error: fmt.Sprintf("task %q: not found", r.PathValue("id"))})
		return
	}
	if f.drop > 0 && s.gets > 0 && (f.dropID == "" || f.dropID == r.PathValue("id")) { // the first read answers: the daemon was up
		f.drop--
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
		return
	}
	writeJSONResp(w, http.StatusOK, s.snaps[min(s.gets, len(s.snaps)-1)])
	s.gets++
}

func (f *fakeDaemon) listTasks(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []operations.Task{}
	for _, id := range f.order {
		s := f.tasks[id]
		last := s.snaps[len(s.snaps)-1]
		if h := r.URL.Query().Get("host"); h == "" || last.Host == h {
			out = append(out, last)
		}
	}
	writeJSONResp(w, http.StatusOK, api.TasksBody{Tasks: out})
}

func (f *fakeDaemon) calls() []startCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]startCall(nil), f.started...)
}

func (f *fakeDaemon) gets(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.tasks[id]; ok {
		return s.gets
	}
	return 0
}

// tty is a stream that says it is a terminal.
type ttyReader struct{ io.Reader }

func (ttyReader) IsTerminal() bool { return true }

type ttyWriter struct{ *bytes.Buffer }

func (ttyWriter) IsTerminal() bool { return true }

// runCLIIO runs one command line with the given stdin and stdout, mapping
// the error to an exit code as run does.
func runCLIIO(in io.Reader, stdout io.Writer, args ...string) (code int, stderr string) {
	var e bytes.Buffer
	root := newRoot(stdout, &e)
	root.SetIn(in)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK, e.String()
	}
	fmt.Fprintln(&e, "error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code, e.String()
	}
	return exitUsage, e.String()
}

// runOp runs a command with a non-terminal stdin holding in.
func runOp(in string, args ...string) (code int, stdout, stderr string) {
	var o bytes.Buffer
	code, stderr = runCLIIO(strings.NewReader(in), &o, args...)
	return code, o.String(), stderr
}
