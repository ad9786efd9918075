package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/redfishsim"
)

// The test binary doubles as the simulator when this variable is set, so
// tests exercise the real main without a separate build.
const beMain = "CHIME_REDFISH_SIM_BE_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(beMain) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func writePassword(t *testing.T, pw string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pw")
	require.NoError(t, os.WriteFile(p, []byte(pw+"\n"), 0o600))
	return p
}

func TestBadInvocations(t *testing.T) {
	pw := writePassword(t, "pw")
	empty := writePassword(t, "")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{}, "--password-file is required"},
		{[]string{"--password-file", pw, "hunter2"}, "unexpected arguments"},
		{[]string{"--password-file", "/nonexistent/pw"}, "no such file"},
		{[]string{"--password-file", empty}, "is empty"},
		{[]string{"--password-file", pw, "--tls-cert", "c.pem"}, "go together"},
		{[]string{"--password-file", pw, "--already-off-status", "500"}, "want 409, 400 or 200"},
		{[]string{"--password-file", pw, "--allowed-reset-types", "On,Off"}, `unknown reset type "Off"`},
		{[]string{"--password-file", pw, "--chassis-control", "/nonexistent/prog"}, "--chassis-control"},
		{[]string{"--password-file", pw, "--listen", "127.0.0.1:notaport"}, "--listen"},
		{[]string{"--password", "x"}, "flag provided but not defined: -password"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(c.args, &out, &errb)
		assert.Equal(t, 2, code, "%v", c.args)
		assert.Contains(t, errb.String(), c.want, "%v", c.args)
		assert.Empty(t, out.String())
	}
}

// startMain runs the simulator as a child process and returns its base URL.
func startMain(t *testing.T, args ...string) string {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), beMain+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("simulator stderr:\n%s", stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	select {
	case l := <-lines:
		const prefix = "chime-redfish-sim: listening on "
		require.True(t, strings.HasPrefix(l, prefix), l)
		return strings.TrimPrefix(l, prefix)
	case <-exited:
		t.Fatalf("simulator exited: %s", stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("simulator did not report its address: %s", stderr.String())
	}
	return ""
}

func TestServesHTTPSWithPasswordFromFile(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := redfishsim.WriteSelfSignedCert(dir, "127.0.0.1")
	require.NoError(t, err)
	const password = "file-only-pass"
	url := startMain(t, "--listen", "127.0.0.1:0", "--user", "root", "--password-file", writePassword(t, password),
		"--tls-cert", cert, "--tls-key", key, "--systems", "2", "--system-id", "10", "--max-sessions", "1")
	require.True(t, strings.HasPrefix(url, "https://127.0.0.1:"), url)

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed test cert
	}}
	login := func() (*http.Response, error) {
		return client.Post(url+"/redfish/v1/SessionService/Sessions", "application/json",
			strings.NewReader(`{"UserName":"root","Password":"`+password+`"}`))
	}
	res, err := login()
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode)
	token, loc := res.Header.Get("X-Auth-Token"), res.Header.Get("Location")

	res, err = login()
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode, "--max-sessions 1")

	req, _ := http.NewRequest(http.MethodGet, url+"/redfish/v1/Systems", nil)
	req.Header.Set("X-Auth-Token", token)
	res, err = client.Do(req)
	require.NoError(t, err)
	var coll struct {
		Members []map[string]string
	}
	require.NoError(t, json.NewDecoder(res.Body).Decode(&coll))
	res.Body.Close()
	assert.Equal(t, []map[string]string{{"@odata.id": "/redfish/v1/Systems/10"}, {"@odata.id": "/redfish/v1/Systems/11"}}, coll.Members)

	req, _ = http.NewRequest(http.MethodDelete, url+loc, nil)
	req.Header.Set("X-Auth-Token", token)
	res, err = client.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusNoContent, res.StatusCode)

	res, err = client.Get(url + redfishsim.StatsPath)
	require.NoError(t, err)
	var st redfishsim.Stats
	require.NoError(t, json.NewDecoder(res.Body).Decode(&st))
	res.Body.Close()
	assert.Equal(t, 0, st.Sessions)
	assert.Equal(t, 1, st.LimitRefusals)
}

// redfishtool over HTTPS against the real binary, with a chassis-control
// program owning the power.
func TestRedfishtoolAgainstBinaryWithChassisControl(t *testing.T) {
	const rt = "/usr/bin/redfishtool"
	if _, err := os.Stat(rt); err != nil {
		t.Skipf("%s not installed (Debian package redfishtool): %v", rt, err)
	}
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	prog := filepath.Join(dir, "chassis")
	require.NoError(t, os.WriteFile(state, []byte("1\n"), 0o600))
	require.NoError(t, os.WriteFile(prog, []byte(`#!/bin/sh
case "$1 $2" in
"get power") echo "power:$(cat "`+state+`")" ;;
"set power") echo "$3" > "`+state+`" ;;
*) exit 1 ;;
esac
`), 0o700))
	cert, key, err := redfishsim.WriteSelfSignedCert(dir, "127.0.0.1")
	require.NoError(t, err)
	url := startMain(t, "--listen", "127.0.0.1:0", "--password-file", writePassword(t, "rt-pass"),
		"--tls-cert", cert, "--tls-key", key, "--chassis-control", prog)
	cfg := filepath.Join(dir, "rt.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{"user":"admin","password":"rt-pass"}`), 0o600))

	runRT := func(args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		full := append([]string{"-r", strings.TrimPrefix(url, "https://"), "-S", "Always", "-c", cfg, "-A", "Session"}, args...)
		cmd := exec.CommandContext(ctx, rt, full...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}
	out, errOut, err := runRT("Systems", "-1", "get", "-P", "PowerState")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, `"PowerState": "On"`)
	_, errOut, err = runRT("Systems", "-1", "reset", "ForceOff")
	require.NoError(t, err, errOut)
	b, err := os.ReadFile(state)
	require.NoError(t, err)
	assert.Equal(t, "0", strings.TrimSpace(string(b)), "ForceOff must run 'set power 0'")
	out, errOut, err = runRT("Systems", "-1", "get", "-P", "PowerState")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, `"PowerState": "Off"`)
}
