package redfishsim

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	testUser = "admin"
	testPass = "s3cret-sim-pass"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newSim(t *testing.T, cfg Config) (*Sim, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	if cfg.Username == "" {
		cfg.Username, cfg.Password = testUser, testPass
	}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	cfg.Logf = t.Logf
	s, err := New(cfg)
	require.NoError(t, err)
	return s, clk
}

type resp struct {
	code int
	hdr  http.Header
	body map[string]any
	raw  string
}

func do(t *testing.T, h http.Handler, method, path, body string, hdr map[string]string) resp {
	t.Helper()
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	out := resp{code: w.Code, hdr: w.Header(), raw: w.Body.String()}
	if w.Body.Len() > 0 {
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &out.body), "body of %s %s: %s", method, path, w.Body.String())
	}
	return out
}

func login(t *testing.T, h http.Handler) (token, location string) {
	t.Helper()
	r := do(t, h, http.MethodPost, sessionsPath, `{"UserName":"admin","Password":"`+testPass+`"}`, nil)
	require.Equal(t, http.StatusCreated, r.code, r.raw)
	token, location = r.hdr.Get("X-Auth-Token"), r.hdr.Get("Location")
	require.NotEmpty(t, token)
	require.True(t, strings.HasPrefix(location, sessionsPath+"/"), location)
	return token, location
}

func tok(token string) map[string]string { return map[string]string{"X-Auth-Token": token} }

// errorID returns the first ExtendedInfo MessageId of a Redfish error body.
func errorID(t *testing.T, r resp) string {
	t.Helper()
	e, ok := r.body["error"].(map[string]any)
	require.True(t, ok, "no error object in %s", r.raw)
	infos, ok := e["@Message.ExtendedInfo"].([]any)
	require.True(t, ok && len(infos) > 0, "no ExtendedInfo in %s", r.raw)
	return infos[0].(map[string]any)["MessageId"].(string)
}

func powerState(t *testing.T, h http.Handler, token, id string) string {
	t.Helper()
	r := do(t, h, http.MethodGet, systemsPath+"/"+id, "", tok(token))
	require.Equal(t, http.StatusOK, r.code, r.raw)
	return r.body["PowerState"].(string)
}

func reset(t *testing.T, h http.Handler, token, id, rt string) resp {
	t.Helper()
	return do(t, h, http.MethodPost, systemsPath+"/"+id+resetActionPath, `{"ResetType":"`+rt+`"}`, tok(token))
}

func TestServiceRootIsPublicAndLinksSessions(t *testing.T) {
	s, _ := newSim(t, Config{})
	r := do(t, s, http.MethodGet, "/redfish", "", nil)
	require.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "/redfish/v1/", r.body["v1"])

	for _, p := range []string{"/redfish/v1/", "/redfish/v1"} {
		r = do(t, s, http.MethodGet, p, "", nil)
		require.Equal(t, http.StatusOK, r.code, p)
		assert.Equal(t, "#ServiceRoot.v1_5_0.ServiceRoot", r.body["@odata.type"])
		assert.Equal(t, "4.0", r.hdr.Get("OData-Version"))
		assert.Equal(t, map[string]any{"@odata.id": systemsPath}, r.body["Systems"])
		assert.Equal(t, map[string]any{"Sessions": map[string]any{"@odata.id": sessionsPath}}, r.body["Links"])
	}
}

func TestProtectedResourcesNeedAuth(t *testing.T) {
	s, _ := newSim(t, Config{})
	for _, p := range []string{systemsPath, systemsPath + "/1", sessionsPath, sessSvcPath} {
		r := do(t, s, http.MethodGet, p, "", nil)
		assert.Equal(t, http.StatusUnauthorized, r.code, p)
		assert.Equal(t, "Base.1.8.NoValidSession", errorID(t, r), p)
		assert.NotEmpty(t, r.hdr.Get("WWW-Authenticate"))
	}
	r := do(t, s, http.MethodGet, systemsPath, "", tok("not-a-token"))
	assert.Equal(t, http.StatusUnauthorized, r.code)
	assert.Equal(t, 5, s.Stats().AuthFailures)
}

func TestSessionLifecycle(t *testing.T) {
	s, _ := newSim(t, Config{})
	r := do(t, s, http.MethodPost, sessionsPath, `{"UserName":"admin","Password":"wrong"}`, nil)
	assert.Equal(t, http.StatusUnauthorized, r.code)
	assert.NotContains(t, r.raw, testPass)
	assert.Empty(t, r.hdr.Get("X-Auth-Token"))
	assert.Equal(t, 0, s.SessionCount())

	r = do(t, s, http.MethodPost, sessionsPath, `{"UserName":"admin"}`, nil)
	assert.Equal(t, http.StatusBadRequest, r.code)
	assert.Equal(t, "Base.1.8.PropertyMissing", errorID(t, r))

	token, loc := login(t, s)
	assert.Equal(t, 1, s.SessionCount())
	r = do(t, s, http.MethodGet, loc, "", tok(token))
	require.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "admin", r.body["UserName"])
	assert.Equal(t, loc, r.body["@odata.id"])

	r = do(t, s, http.MethodGet, sessionsPath, "", tok(token))
	assert.EqualValues(t, 1, r.body["Members@odata.count"])

	r = do(t, s, http.MethodDelete, loc, "", tok(token))
	assert.Equal(t, http.StatusNoContent, r.code)
	assert.Equal(t, 0, s.SessionCount())
	r = do(t, s, http.MethodGet, systemsPath, "", tok(token))
	assert.Equal(t, http.StatusUnauthorized, r.code, "a logged-out token must stop working")

	st := s.Stats()
	assert.Equal(t, 1, st.Logins)
	assert.Equal(t, 1, st.Logouts)
	assert.Equal(t, 1, st.RefusedLogins)
}

func TestMaxSessions(t *testing.T) {
	s, _ := newSim(t, Config{MaxSessions: 2})
	t1, l1 := login(t, s)
	login(t, s)
	r := do(t, s, http.MethodPost, sessionsPath, `{"UserName":"admin","Password":"`+testPass+`"}`, nil)
	assert.Equal(t, http.StatusServiceUnavailable, r.code)
	assert.Equal(t, "Base.1.8.SessionLimitExceeded", errorID(t, r))
	assert.Equal(t, 2, s.SessionCount())
	assert.Equal(t, 1, s.Stats().LimitRefusals)

	require.Equal(t, http.StatusNoContent, do(t, s, http.MethodDelete, l1, "", tok(t1)).code)
	login(t, s)
	assert.Equal(t, 2, s.SessionCount())
}

func TestSessionsExpire(t *testing.T) {
	s, clk := newSim(t, Config{SessionTimeout: time.Minute})
	token, _ := login(t, s)
	clk.Advance(59 * time.Second)
	require.Equal(t, http.StatusOK, do(t, s, http.MethodGet, systemsPath, "", tok(token)).code)
	clk.Advance(59 * time.Second) // use above refreshed it
	assert.Equal(t, 1, s.SessionCount())
	clk.Advance(time.Second)
	assert.Equal(t, 0, s.SessionCount())
	assert.Equal(t, http.StatusUnauthorized, do(t, s, http.MethodGet, systemsPath, "", tok(token)).code)
	assert.Equal(t, 1, s.Stats().Expired)
}

func TestBasicAuthOpensNoSession(t *testing.T) {
	s, _ := newSim(t, Config{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+systemsPath+"/1", nil)
	req.SetBasicAuth(testUser, testPass)
	res, err := srv.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)

	req.SetBasicAuth(testUser, "nope")
	res, err = srv.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, res.StatusCode)
	assert.Equal(t, 0, s.SessionCount())
}

func TestForceOffLagAndAlreadyOff(t *testing.T) {
	s, clk := newSim(t, Config{OffLag: 5 * time.Second, OnLag: 2 * time.Second})
	token, _ := login(t, s)
	assert.Equal(t, "On", powerState(t, s, token, "1"))

	r := reset(t, s, token, "1", "ForceOff")
	require.Equal(t, http.StatusNoContent, r.code, r.raw)
	assert.Equal(t, "PoweringOff", powerState(t, s, token, "1"))
	clk.Advance(4 * time.Second)
	assert.Equal(t, "PoweringOff", powerState(t, s, token, "1"))
	// ForceOff while powering off is accepted, not the already-off quirk.
	assert.Equal(t, http.StatusNoContent, reset(t, s, token, "1", "ForceOff").code)
	clk.Advance(time.Second)
	assert.Equal(t, "Off", powerState(t, s, token, "1"))

	r = reset(t, s, token, "1", "ForceOff")
	assert.Equal(t, http.StatusConflict, r.code)
	assert.Contains(t, r.body["error"].(map[string]any)["message"], "already powered off")
	r = reset(t, s, token, "1", "GracefulShutdown")
	assert.Equal(t, http.StatusConflict, r.code)

	require.Equal(t, http.StatusNoContent, reset(t, s, token, "1", "On").code)
	assert.Equal(t, "PoweringOn", powerState(t, s, token, "1"))
	clk.Advance(2 * time.Second)
	assert.Equal(t, "On", powerState(t, s, token, "1"))
	assert.Equal(t, map[string]int{"ForceOff": 2, "On": 1}, s.Stats().Resets)
	assert.Equal(t, 5, s.Stats().ResetPosts)
}

func TestAlreadyOffStatusChoices(t *testing.T) {
	for _, status := range []int{http.StatusBadRequest, http.StatusOK} {
		s, _ := newSim(t, Config{AlreadyOffStatus: status, InitiallyOff: true})
		token, _ := login(t, s)
		r := reset(t, s, token, "1", "ForceOff")
		assert.Equal(t, status, r.code, r.raw)
		assert.Equal(t, "Off", powerState(t, s, token, "1"))
	}
}

func TestResetTypeValidation(t *testing.T) {
	s, _ := newSim(t, Config{AllowedResetTypes: []string{"On", "GracefulShutdown"}})
	token, _ := login(t, s)
	r := reset(t, s, token, "1", "ForceOff")
	assert.Equal(t, http.StatusBadRequest, r.code)
	assert.Equal(t, "Base.1.8.ActionParameterValueNotInList", errorID(t, r))
	r = reset(t, s, token, "1", "Bogus")
	assert.Equal(t, http.StatusBadRequest, r.code)
	r = do(t, s, http.MethodPost, systemsPath+"/1"+resetActionPath, `{}`, tok(token))
	assert.Equal(t, "Base.1.8.ActionParameterMissing", errorID(t, r))
	r = do(t, s, http.MethodPost, systemsPath+"/1"+resetActionPath, `{"ResetType":`, tok(token))
	assert.Equal(t, "Base.1.8.MalformedJSON", errorID(t, r))
	assert.Equal(t, "On", powerState(t, s, token, "1"), "refused resets must not change power")
	assert.Equal(t, 4, s.Stats().ResetPosts)
	assert.Empty(t, s.Stats().Resets)

	r = do(t, s, http.MethodGet, systemsPath+"/1"+resetActionPath, "", tok(token))
	assert.Equal(t, http.StatusMethodNotAllowed, r.code)
	assert.Equal(t, "POST", r.hdr.Get("Allow"))
}

func resetActionOf(t *testing.T, s http.Handler, token string) map[string]any {
	t.Helper()
	r := do(t, s, http.MethodGet, systemsPath+"/1", "", tok(token))
	return r.body["Actions"].(map[string]any)[resetAction].(map[string]any)
}

func TestResetTypesPublication(t *testing.T) {
	allowed := []any{"On", "ForceOff"}
	cases := []struct {
		in             string
		inline, actInf bool
	}{{PublishBoth, true, true}, {PublishInline, true, false}, {PublishActionInfo, false, true}, {PublishNone, false, false}}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			s, _ := newSim(t, Config{ResetTypesIn: c.in, AllowedResetTypes: []string{"On", "ForceOff"}})
			token, _ := login(t, s)
			act := resetActionOf(t, s, token)
			assert.Equal(t, systemsPath+"/1"+resetActionPath, act["target"])
			if c.inline {
				assert.Equal(t, allowed, act["ResetType@Redfish.AllowableValues"])
			} else {
				assert.NotContains(t, act, "ResetType@Redfish.AllowableValues")
			}
			r := do(t, s, http.MethodGet, systemsPath+"/1"+resetInfoPath, "", tok(token))
			if !c.actInf {
				assert.NotContains(t, act, "@Redfish.ActionInfo")
				assert.Equal(t, http.StatusNotFound, r.code)
				return
			}
			assert.Equal(t, systemsPath+"/1"+resetInfoPath, act["@Redfish.ActionInfo"])
			require.Equal(t, http.StatusOK, r.code)
			params := r.body["Parameters"].([]any)[0].(map[string]any)
			assert.Equal(t, "ResetType", params["Name"])
			assert.Equal(t, "String", params["DataType"])
			assert.Equal(t, allowed, params["AllowableValues"])
		})
	}
}

func TestMultipleSystems(t *testing.T) {
	s, _ := newSim(t, Config{Systems: 3, SystemID: "7"})
	token, _ := login(t, s)
	r := do(t, s, http.MethodGet, systemsPath, "", tok(token))
	assert.EqualValues(t, 3, r.body["Members@odata.count"])
	assert.Equal(t, []any{
		map[string]any{"@odata.id": systemsPath + "/7"},
		map[string]any{"@odata.id": systemsPath + "/8"},
		map[string]any{"@odata.id": systemsPath + "/9"},
	}, r.body["Members"])
	require.Equal(t, http.StatusNoContent, reset(t, s, token, "8", "ForceOff").code)
	assert.Equal(t, "Off", powerState(t, s, token, "8"))
	assert.Equal(t, "On", powerState(t, s, token, "7"))
	assert.Equal(t, http.StatusNotFound, do(t, s, http.MethodGet, systemsPath+"/1", "", tok(token)).code)

	s2, _ := newSim(t, Config{Systems: 2, SystemID: "node"})
	assert.Equal(t, []string{"node", "node-2"}, s2.SystemIDs())
}

// writeChassis writes a chassis-control program keeping power in a file and
// logging every call, as the lab's programs do.
func writeChassis(t *testing.T, initial string) (prog, state, calls string) {
	t.Helper()
	dir := t.TempDir()
	prog, state, calls = filepath.Join(dir, "chassis"), filepath.Join(dir, "state"), filepath.Join(dir, "calls")
	script := `#!/bin/sh
echo "$*" >> "` + calls + `"
case "$1 $2" in
"get power") echo "power:$(cat "` + state + `")" ;;
"set power") echo "$3" > "` + state + `" ;;
*) echo "bad call: $*" >&2; exit 1 ;;
esac
`
	require.NoError(t, os.WriteFile(prog, []byte(script), 0o755))
	require.NoError(t, os.WriteFile(state, []byte(initial+"\n"), 0o644))
	return prog, state, calls
}

func readTrim(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

func TestChassisControl(t *testing.T) {
	prog, state, calls := writeChassis(t, "0")
	s, clk := newSim(t, Config{ChassisControl: prog, OffLag: time.Second})
	token, _ := login(t, s)
	assert.Equal(t, "Off", powerState(t, s, token, "1"), "power comes from the program, not the model")
	require.NoError(t, os.WriteFile(state, []byte("1\n"), 0o644))
	assert.Equal(t, "On", powerState(t, s, token, "1"))

	require.NoError(t, os.Truncate(calls, 0))
	require.Equal(t, http.StatusNoContent, reset(t, s, token, "1", "ForceOff").code)
	assert.Equal(t, "0", readTrim(t, state))
	assert.Equal(t, "PoweringOff", powerState(t, s, token, "1"))
	clk.Advance(time.Second)
	assert.Equal(t, "Off", powerState(t, s, token, "1"))
	assert.Equal(t, "get power\nset power 0\nget power", readTrim(t, calls))

	require.NoError(t, os.Truncate(calls, 0))
	require.Equal(t, http.StatusNoContent, reset(t, s, token, "1", "ForceRestart").code)
	assert.Equal(t, "1", readTrim(t, state))
	assert.Equal(t, "get power\nset power 0\nset power 1", readTrim(t, calls))
	assert.Error(t, s.SetPower("1", false), "a program-driven system cannot be set directly")

	require.NoError(t, os.WriteFile(state, []byte("garbage\n"), 0o644))
	r := do(t, s, http.MethodGet, systemsPath+"/1", "", tok(token))
	assert.Equal(t, http.StatusInternalServerError, r.code)
	assert.Equal(t, "Base.1.8.InternalError", errorID(t, r))
}

func TestStatsEndpoint(t *testing.T) {
	s, _ := newSim(t, Config{})
	login(t, s)
	r := do(t, s, http.MethodPost, StatsPath, "", nil)
	assert.Equal(t, http.StatusMethodNotAllowed, r.code)
	r = do(t, s, http.MethodGet, StatsPath, "", nil)
	require.Equal(t, http.StatusOK, r.code)
	assert.EqualValues(t, 1, r.body["sessions"])
	assert.Equal(t, map[string]any{"1": "On"}, r.body["power_states"])
}

func TestConfigValidation(t *testing.T) {
	bad := []struct {
		cfg  Config
		want string
	}{
		{Config{Password: "x"}, "username and password"},
		{Config{Username: "u", Password: "p", AlreadyOffStatus: 404}, "want 409, 400 or 200"},
		{Config{Username: "u", Password: "p", AllowedResetTypes: []string{"ForceOf"}}, `unknown reset type "ForceOf"`},
		{Config{Username: "u", Password: "p", ResetTypesIn: "header"}, "want both, inline"},
		{Config{Username: "u", Password: "p", SystemID: "a/b"}, "must not contain"},
		{Config{Username: "u", Password: "p", Systems: -1}, "out of range"},
		{Config{Username: "u", Password: "p", OffLag: -time.Second}, "negative"},
	}
	for _, b := range bad {
		_, err := New(b.cfg)
		require.Error(t, err)
		assert.Contains(t, err.Error(), b.want)
	}
}
