package redfishsim

// Checks the simulator with Debian's stock Redfish clients (redfishtool and
// python3-sushy) over real TCP on 127.0.0.1, so it follows the standard and
// not just chime-fence's driver.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	redfishtoolBin = "/usr/bin/redfishtool"
	// Debian's python3-sushy is installed for the system interpreter only;
	// a python3 earlier on PATH (pyenv) does not see it.
	systemPython = "/usr/bin/python3"
)

// serveTCP serves s on a fresh 127.0.0.1 port and returns its base URL.
func serveTCP(t *testing.T, s *Sim) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	})
	return "http://" + ln.Addr().String()
}

func needBinary(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not installed (Debian package %s): %v", path, pkg, err)
	}
}

// redfishtool runs the Debian client; credentials go through its -c config
// file (0600), not argv.
type redfishtool struct {
	t       *testing.T
	host    string
	cfgFile string
}

func newRedfishtool(t *testing.T, baseURL, password string) *redfishtool {
	t.Helper()
	needBinary(t, redfishtoolBin, "redfishtool")
	cfg := filepath.Join(t.TempDir(), "redfishtool.json")
	b, err := json.Marshal(map[string]string{"user": testUser, "password": password})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cfg, b, 0o600))
	return &redfishtool{t: t, host: strings.TrimPrefix(baseURL, "http://"), cfgFile: cfg}
}

func (r *redfishtool) run(args ...string) (stdout, stderr string, code int) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// -S Never: plain HTTP to the test server (redfishtool defaults to https
	// for authenticated calls).
	full := append([]string{"-r", r.host, "-S", "Never", "-c", r.cfgFile, "-T", "10"}, args...)
	cmd := exec.CommandContext(ctx, redfishtoolBin, full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		r.t.Fatalf("redfishtool %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

func (r *redfishtool) powerState(auth string) string {
	r.t.Helper()
	out, errOut, code := r.run("-A", auth, "Systems", "-1", "get", "-P", "PowerState")
	require.Equal(r.t, 0, code, errOut)
	var v struct{ PowerState string }
	require.NoError(r.t, json.Unmarshal([]byte(out), &v), out)
	return v.PowerState
}

func TestRedfishtoolSessionsPowerAndQuirks(t *testing.T) {
	s, clk := newSim(t, Config{OffLag: 30 * time.Second})
	rt := newRedfishtool(t, serveTCP(t, s), testPass)

	out, errOut, code := rt.run("-A", "Session", "Systems")
	require.Equal(t, 0, code, errOut)
	var coll struct {
		Members []struct {
			ID string `json:"@odata.id"`
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &coll), out)
	require.Len(t, coll.Members, 1)
	assert.Equal(t, "/redfish/v1/Systems/1", coll.Members[0].ID)

	assert.Equal(t, "On", rt.powerState("Session"))
	assert.Equal(t, "On", rt.powerState("Basic"))

	_, errOut, code = rt.run("-A", "Session", "Systems", "-1", "reset", "ForceOff")
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, "PoweringOff", rt.powerState("Session"))
	clk.Advance(30 * time.Second)
	assert.Equal(t, "Off", rt.powerState("Session"))

	_, errOut, code = rt.run("-A", "Session", "Systems", "-1", "reset", "ForceOff")
	assert.NotEqual(t, 0, code, "ForceOff on an Off system must fail with the 409 quirk")
	assert.Contains(t, errOut, "409")

	st := s.Stats()
	assert.Equal(t, 0, st.Sessions, "redfishtool logs out of every session it opens")
	assert.Equal(t, st.Logins, st.Logouts)
	assert.GreaterOrEqual(t, st.Logins, 5)
	assert.Equal(t, map[string]int{"ForceOff": 1}, st.Resets)
}

func TestRedfishtoolWrongPassword(t *testing.T) {
	s, _ := newSim(t, Config{})
	rt := newRedfishtool(t, serveTCP(t, s), "not-the-password")
	_, errOut, code := rt.run("-A", "Session", "Systems")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "401")
	_, errOut, code = rt.run("-A", "Basic", "Systems")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "401")
	assert.Equal(t, 0, s.SessionCount())
	assert.Equal(t, 1, s.Stats().RefusedLogins)
}

// redfishtool checks ResetType against ActionInfo when AllowableValues is
// absent, so a disallowed type never reaches the simulator.
func TestRedfishtoolFollowsActionInfo(t *testing.T) {
	s, _ := newSim(t, Config{ResetTypesIn: PublishActionInfo, AllowedResetTypes: []string{"On", "ForceOff"}})
	rt := newRedfishtool(t, serveTCP(t, s), testPass)
	_, errOut, code := rt.run("-A", "Session", "Systems", "-1", "reset", "GracefulRestart")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "ActionInfo")
	assert.Equal(t, 0, s.Stats().ResetPosts)

	_, errOut, code = rt.run("-A", "Session", "Systems", "-1", "reset", "ForceOff")
	require.Equal(t, 0, code, errOut)
	assert.Equal(t, 1, s.Stats().ResetPosts)
	assert.Equal(t, "Off", rt.powerState("Session"))
}

// With nothing published redfishtool sends the request, and the simulator
// itself refuses a type outside its list.
func TestRedfishtoolUnpublishedTypeRefusedBySim(t *testing.T) {
	s, _ := newSim(t, Config{ResetTypesIn: PublishNone, AllowedResetTypes: []string{"On", "ForceOff"}})
	rt := newRedfishtool(t, serveTCP(t, s), testPass)
	_, errOut, code := rt.run("-A", "Session", "Systems", "-1", "reset", "GracefulRestart")
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "400")
	assert.Equal(t, 1, s.Stats().ResetPosts)
	assert.Empty(t, s.Stats().Resets)
	assert.Equal(t, "On", rt.powerState("Session"))
}

const sushyScript = `
import gc, json, sys
import sushy
from sushy import exceptions

url, user, pwfile, op = sys.argv[1:5]
with open(pwfile) as f:
    pw = f.read().rstrip("\n")
out = {}
root = sushy.Sushy(url, username=user, password=pw, verify=False)
try:
    system = root.get_system()
    out["identity"] = system.identity
    out["power_state"] = system.power_state.value
    out["allowed"] = sorted(v.value for v in system.get_allowed_reset_system_values())
    if op != "status":
        system.reset_system(sushy.ResetType(op))
        system.refresh()
        out["after"] = system.power_state.value
except exceptions.HTTPError as e:
    out["error"] = type(e).__name__
    out["status"] = e.status_code
except exceptions.SushyError as e:
    out["error"] = type(e).__name__
finally:
    # Sushy logs out (DELETE of the session) when the root is collected.
    del root
    gc.collect()
print(json.dumps(out))
`

type sushyResult struct {
	Identity   string   `json:"identity"`
	PowerState string   `json:"power_state"`
	Allowed    []string `json:"allowed"`
	After      string   `json:"after"`
	Error      string   `json:"error"`
	Status     int      `json:"status"`
}

func runSushy(t *testing.T, baseURL, password, op string) sushyResult {
	t.Helper()
	needBinary(t, systemPython, "python3")
	check := exec.Command(systemPython, "-c", "import sushy")
	if out, err := check.CombinedOutput(); err != nil {
		t.Skipf("python3-sushy not importable by %s: %v: %s", systemPython, err, out)
	}
	dir := t.TempDir()
	script, pwFile := filepath.Join(dir, "sushy_check.py"), filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(script, []byte(sushyScript), 0o600))
	require.NoError(t, os.WriteFile(pwFile, []byte(password+"\n"), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, systemPython, script, baseURL, testUser, pwFile, op)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	require.NoError(t, cmd.Run(), "sushy script: %s", e.String())
	var res sushyResult
	require.NoError(t, json.Unmarshal(o.Bytes(), &res), "stdout %q stderr %q", o.String(), e.String())
	return res
}

func TestSushyPowerAndQuirks(t *testing.T) {
	s, clk := newSim(t, Config{OffLag: 10 * time.Second, AllowedResetTypes: []string{"On", "ForceOff", "GracefulShutdown"}})
	url := serveTCP(t, s)

	res := runSushy(t, url, testPass, "status")
	assert.Equal(t, sushyResult{Identity: "1", PowerState: "On", Allowed: []string{"ForceOff", "GracefulShutdown", "On"}}, res)

	res = runSushy(t, url, testPass, "ForceOff")
	assert.Empty(t, res.Error)
	assert.Equal(t, "PoweringOff", res.After)
	clk.Advance(10 * time.Second)
	assert.Equal(t, "Off", runSushy(t, url, testPass, "status").PowerState)

	res = runSushy(t, url, testPass, "ForceOff")
	assert.Equal(t, 409, res.Status, "already-off quirk: %+v", res)

	// sushy checks AllowableValues before sending.
	res = runSushy(t, url, testPass, "ForceRestart")
	assert.Equal(t, "InvalidParameterValueError", res.Error)
	assert.Equal(t, 2, s.Stats().ResetPosts)

	res = runSushy(t, url, testPass, "On")
	assert.Equal(t, "On", res.After)

	st := s.Stats()
	assert.Equal(t, 0, st.Sessions, "sushy deletes its session on close")
	assert.Equal(t, st.Logins, st.Logouts)
	assert.Equal(t, 6, st.Logins)
}

func TestSushyAuthAndDefaultSystem(t *testing.T) {
	s, _ := newSim(t, Config{})
	res := runSushy(t, serveTCP(t, s), "wrong-password", "status")
	assert.Equal(t, "AccessError", res.Error, "%+v", res)
	assert.Equal(t, 0, s.SessionCount())

	multi, _ := newSim(t, Config{Systems: 2})
	res = runSushy(t, serveTCP(t, multi), testPass, "status")
	assert.Equal(t, "UnknownDefaultError", res.Error, "two systems: sushy must refuse to pick one")
	assert.Equal(t, 0, multi.SessionCount())
}
