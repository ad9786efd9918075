package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func noEnv(string) (string, bool) { return "", false }

func TestExampleConfigLoadsAndResolves(t *testing.T) {
	c, err := Load("../examples/chime-fence.yaml")
	require.NoError(t, err)
	assert.Equal(t, "dc1-kvm", c.Cluster.Name)
	assert.Equal(t, ModeObserve, c.Mode)
	assert.Equal(t, 15*time.Second, c.Detection.Window())
	require.Len(t, c.Hosts, 6)

	r1n1, _ := c.Host("r1-node1")
	assert.Equal(t, "ipmi-first", r1n1.Effective.Name)
	assert.Equal(t, []Level{
		{Type: LevelIPMI, Timeout: 15 * time.Second, Retries: 2},
		{Type: LevelRedfish, Timeout: 15 * time.Second, Retries: 2},
	}, r1n1.Effective.Levels)
	ipmi, ok := r1n1.BMC(BMCIPMI)
	require.True(t, ok)
	assert.Equal(t, 623, ipmi.Port)
	assert.Equal(t, []int{3, 17}, ipmi.CipherSuites)
	assert.Equal(t, filepath.Join(absDir(t, "../examples"), "secrets/r1-ipmi"), ipmi.PasswordFile)
	rf, _ := r1n1.BMC(BMCRedfish)
	assert.Equal(t, 443, rf.Port)
	assert.Equal(t, "session", rf.Auth)
	assert.Equal(t, "192.0.2.11:16509", r1n1.Libvirt.Address)
	assert.Equal(t, "http://192.0.2.11:7481", r1n1.Agent.URL)

	r1n2, _ := c.Host("r1-node2")
	ipmi2, _ := r1n2.BMC(BMCIPMI)
	assert.Equal(t, []int{17, 3}, ipmi2.CipherSuites)

	r2n1, _ := c.Host("r2-node1")
	assert.Equal(t, []Level{
		{Type: LevelAgentDrain, Timeout: 20 * time.Second, Retries: 2},
		{Type: LevelRedfish, Timeout: 30 * time.Second, Retries: 1, SettleDelay: 2 * time.Second},
	}, r2n1.Effective.Levels)
	assert.Equal(t, 1, r2n1.Effective.MaxConcurrentFencesPerRack, "rack override")
	assert.Equal(t, 2, r2n1.Effective.MaxConcurrentFences, "defaults")
	assert.Equal(t, IsolationAlert, r2n1.Effective.OnIsolation)
	assert.Equal(t, "https://192.0.2.21:7481", r2n1.Agent.URL)

	r2n2, _ := c.Host("r2-node2")
	assert.Equal(t, IsolationFence, r2n2.Effective.OnIsolation, "host override")
	assert.Equal(t, 1, r2n2.Effective.MaxConcurrentFencesPerRack, "rack override kept under host override")

	r3n1, _ := c.Host("r3-node1")
	assert.False(t, r3n1.Effective.Evacuate)
	r3n2, _ := c.Host("r3-node2")
	assert.Equal(t, "ipmi-first", r3n2.Effective.Name, "host policy replaces rack policy")
	assert.True(t, r3n2.Effective.Evacuate)
}

func absDir(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	require.NoError(t, err)
	return a
}

// Each broken example states its expected messages in "# expect:" lines.
func TestBrokenExamplesAreRejectedWithTheirMessage(t *testing.T) {
	files, err := filepath.Glob("../examples/broken/*.yaml")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(files), 10)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			require.NoError(t, err)
			var expects, secrets []string
			for _, line := range strings.Split(string(data), "\n") {
				if e, ok := strings.CutPrefix(line, "# expect: "); ok {
					expects = append(expects, e)
				}
				if s, ok := strings.CutPrefix(line, "# secret: "); ok {
					secrets = append(secrets, s)
				}
			}
			require.NotEmpty(t, expects, "file states no expectation")
			_, err = Load(f)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "want *configs.Error, got %T", err)
			msg := err.Error()
			for _, e := range expects {
				assert.Contains(t, msg, e)
			}
			for _, s := range secrets {
				assert.NotContains(t, msg, s, "a secret leaked into the error")
			}
		})
	}
}

const minimal = `
cluster: {name: lab}
policies:
  - name: p
    levels: [ipmi]
racks:
  - {name: r1, policy: p}
hosts:
  - name: n1
    rack: r1
    address: 10.0.0.1
    bmcs:
      - {type: ipmi, address: 10.1.0.1, username: a, password_env: P1}
`

func TestDefaultsWhenOmitted(t *testing.T) {
	c, err := Parse("min.yaml", []byte(minimal), noEnv)
	require.NoError(t, err)
	assert.Equal(t, ModeObserve, c.Mode, "observe unless told otherwise")
	assert.Equal(t, "127.0.0.1:7480", c.Controller.Listen, "loopback by default")
	assert.Equal(t, 5*time.Second, c.Detection.HeartbeatInterval)
	assert.Equal(t, 3, c.Detection.MissedHeartbeats)
	assert.Equal(t, 3, c.Detection.RecoveryHeartbeats)
	assert.Equal(t, 30*time.Second, c.Detection.HeartbeatMaxClockSkew)
	assert.True(t, c.Storage.RBDShared)
	assert.Equal(t, 4.0, c.Scheduler.CPUOvercommit)
	p := c.Hosts[0].Effective
	assert.Equal(t, ActionOff, p.Action)
	assert.Equal(t, IsolationAlert, p.OnIsolation)
	assert.Equal(t, 0.5, p.StormGuard.MaxUnreachableFraction)
	assert.Equal(t, []Level{{Type: LevelIPMI, Timeout: 10 * time.Second, Retries: 2}}, p.Levels)
}

func TestExplicitZeroIsReportedNotDefaulted(t *testing.T) {
	_, err := Parse("z.yaml", []byte(minimal+"detection:\n  recovery_heartbeats: 0\n"), noEnv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "detection.recovery_heartbeats (line 15): must be at least 1, got 0")
}

func TestHeartbeatMaxClockSkew(t *testing.T) {
	c, err := Parse("s.yaml", []byte(minimal+"detection:\n  heartbeat_max_clock_skew: 2m\n"), noEnv)
	require.NoError(t, err)
	assert.Equal(t, 2*time.Minute, c.Detection.HeartbeatMaxClockSkew)
	for _, v := range []string{"0s", "500ms", "11m", "-1s"} {
		_, err := Parse("s.yaml", []byte(minimal+"detection:\n  heartbeat_max_clock_skew: "+v+"\n"), noEnv)
		require.Error(t, err, v)
		assert.Contains(t, err.Error(), "detection.heartbeat_max_clock_skew (line 15): ", v)
		assert.Contains(t, err.Error(), "out of range 1s..10m0s", v)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	env := map[string]string{
		"CHIME_FENCE_MODE":                         "enforce",
		"CHIME_FENCE_DETECTION_HEARTBEAT_INTERVAL": "750ms",
		"CHIME_FENCE_DEFAULTS_ON_ISOLATION":        "fence",
		"CHIME_FENCE_SCHEDULER_CPU_OVERCOMMIT":     "2.5",
	}
	c, err := Parse("min.yaml", []byte(minimal), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	require.NoError(t, err)
	assert.Equal(t, ModeEnforce, c.Mode)
	assert.Equal(t, 750*time.Millisecond, c.Detection.HeartbeatInterval)
	assert.Equal(t, IsolationFence, c.Hosts[0].Effective.OnIsolation)
	assert.Equal(t, 2.5, c.Scheduler.CPUOvercommit)

	env = map[string]string{"CHIME_FENCE_DETECTION_PROBE_TIMEOUT": "30"}
	_, err = Parse("min.yaml", []byte(minimal), func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	require.Error(t, err)
	assert.Contains(t, err.Error(), "detection.probe_timeout")
	assert.Contains(t, err.Error(), "not a duration")
}

func TestWrongTypesAreNamed(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"storage:\n  rbd_shared: yes please\n", `storage.rbd_shared (line 15): expected a boolean (true or false), got "yes please"`},
		{"detection:\n  missed_heartbeats: three\n", `detection.missed_heartbeats (line 15): expected a whole number, got "three"`},
		{"storage:\n  shared_paths: /mnt/nfs\n", `storage.shared_paths (line 15): expected a list, got a scalar str`},
		{"detection:\n  probe_timeout: soon\n", `detection.probe_timeout (line 15): "soon" is not a duration`},
		{"detection:\n  probe_timeout: 1m\n", `detection.probe_timeout (line 15): 1m0s is longer than the detection window (15s`},
		{"defaults:\n  levels: []\n", `defaults.levels (line 15): an empty list leaves the host with no way to be fenced`},
		{"defaults:\n  levels: [ipmi, ipmi]\n", `defaults.levels[1] (line 15): level ipmi is listed twice`},
		{"cluster: {name: x}\n", `cluster (line 14): duplicate key`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(minimal+tc.yaml), noEnv)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestResolvePolicyLayersInOrder(t *testing.T) {
	d := func(s string) *time.Duration { v, _ := time.ParseDuration(s); return &v }
	defaults := PolicySpec{LevelTimeout: d("20s"), OnIsolation: ptr(IsolationAlert)}
	named := PolicySpec{Levels: []FenceLevel{{Type: LevelAgentDrain}, {Type: LevelRedfish, Timeout: 40 * time.Second}}, LevelRetries: ptr(1)}
	rack := PolicySpec{OnIsolation: ptr(IsolationFence), StormGuard: StormGuardSpec{Window: d("5m")}}
	host := PolicySpec{Levels: []FenceLevel{{Type: LevelIPMI, Retries: ptr(0)}}}

	for _, tc := range []struct {
		name   string
		layers []PolicySpec
		check  func(t *testing.T, p Policy)
	}{
		{"builtin only", nil, func(t *testing.T, p Policy) {
			assert.Equal(t, []Level{{Type: LevelIPMI, Timeout: 10 * time.Second, Retries: 2}}, p.Levels)
			assert.Equal(t, IsolationAlert, p.OnIsolation)
		}},
		{"defaults then named", []PolicySpec{defaults, named}, func(t *testing.T, p Policy) {
			assert.Equal(t, []Level{
				{Type: LevelAgentDrain, Timeout: 20 * time.Second, Retries: 1},
				{Type: LevelRedfish, Timeout: 40 * time.Second, Retries: 1},
			}, p.Levels)
		}},
		{"rack overrides named", []PolicySpec{defaults, named, rack}, func(t *testing.T, p Policy) {
			assert.Equal(t, IsolationFence, p.OnIsolation)
			assert.Equal(t, 5*time.Minute, p.StormGuard.Window)
			assert.Equal(t, 0.5, p.StormGuard.MaxUnreachableFraction, "sibling field untouched")
			assert.Len(t, p.Levels, 2)
		}},
		{"host replaces the level list whole", []PolicySpec{defaults, named, rack, host}, func(t *testing.T, p Policy) {
			assert.Equal(t, []Level{{Type: LevelIPMI, Timeout: 20 * time.Second, Retries: 0}}, p.Levels)
			assert.Equal(t, IsolationFence, p.OnIsolation)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.check(t, ResolvePolicy("x", tc.layers...)) })
	}
}

func TestOverlayDoesNotAliasItsInputs(t *testing.T) {
	over := PolicySpec{Levels: []FenceLevel{{Type: LevelIPMI}}, LevelRetries: ptr(3)}
	out := Overlay(BuiltinPolicy(), over)
	out.Levels[0].Type = LevelRedfish
	*out.LevelRetries = 9
	assert.Equal(t, LevelIPMI, over.Levels[0].Type)
	assert.Equal(t, 3, *over.LevelRetries)
}

func TestSecretRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "pw")
	require.NoError(t, os.WriteFile(good, []byte("s3cret-value\n"), 0o600))
	open := filepath.Join(dir, "open")
	require.NoError(t, os.WriteFile(open, []byte("s3cret-value"), 0o644))
	group := filepath.Join(dir, "group")
	require.NoError(t, os.WriteFile(group, []byte("s3cret-value"), 0o600))
	require.NoError(t, os.Chmod(group, 0o640)) // past the umask
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	t.Setenv("CF_TEST_PW", "from-env")

	v, err := Secret{What: "bmc password", File: good}.Read()
	require.NoError(t, err)
	assert.Equal(t, "s3cret-value", v, "trailing newline dropped")
	v, err = Secret{What: "bmc password", Env: "CF_TEST_PW"}.Read()
	require.NoError(t, err)
	assert.Equal(t, "from-env", v)

	for _, tc := range []struct {
		s    Secret
		want string
	}{
		{Secret{What: "bmc password", File: open}, "readable by group or others (mode -rw-r--r--)"},
		{Secret{What: "bmc password", File: group}, "readable by group or others (mode -rw-r-----)"},
		{Secret{What: "bmc password", File: empty}, "is empty"},
		{Secret{What: "bmc password", File: filepath.Join(dir, "nope")}, "no such file"},
		{Secret{What: "bmc password", Env: "CF_TEST_UNSET_VAR"}, "CF_TEST_UNSET_VAR is not set"},
		{Secret{What: "bmc password"}, "no secret configured"},
	} {
		_, err := tc.s.Read()
		require.Error(t, err)
		assert.Contains(t, err.Error(), tc.want)
		assert.Contains(t, err.Error(), "bmc password")
		assert.NotContains(t, err.Error(), "s3cret-value")
	}
}

func TestRedactedMasksWebhookCredentials(t *testing.T) {
	c := &Config{Alerts: Alerts{Webhooks: []Webhook{{Name: "w", URL: "https://bot:tok3n@hooks.example.invalid/x?key=abc123&v=1"}}}}
	r := Redacted(c)
	assert.NotContains(t, r.Alerts.Webhooks[0].URL, "tok3n")
	assert.NotContains(t, r.Alerts.Webhooks[0].URL, "abc123")
	assert.Contains(t, r.Alerts.Webhooks[0].URL, "bot:REDACTED@hooks.example.invalid/x")
	assert.Contains(t, c.Alerts.Webhooks[0].URL, "tok3n", "original untouched")
}

func TestHostLookupByIndexAgreesWithTheList(t *testing.T) {
	c, err := Load("../examples/chime-fence.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, c.Hosts)
	for i := range c.Hosts {
		h, ok := c.Host(c.Hosts[i].Name)
		require.True(t, ok)
		assert.Same(t, &c.Hosts[i], h)
	}
	_, ok := c.Host("no-such-host")
	assert.False(t, ok)
	// A config changed after loading (tests do) is still answered right.
	c.Hosts[0], c.Hosts[len(c.Hosts)-1] = c.Hosts[len(c.Hosts)-1], c.Hosts[0]
	c.Hosts = append(c.Hosts, Host{Name: "added"})
	for i := range c.Hosts {
		h, ok := c.Host(c.Hosts[i].Name)
		require.True(t, ok, c.Hosts[i].Name)
		assert.Same(t, &c.Hosts[i], h)
	}
}

func TestOnIsolationValues(t *testing.T) {
	for _, c := range []struct {
		value string
		want  OnIsolation
		err   string
	}{
		{"alert", IsolationAlert, ""},
		{"fence", IsolationFence, ""},
		{"reboot", IsolationReboot, ""},
		{"kill", "", `"kill": must be alert, fence or reboot`},
	} {
		t.Run(c.value, func(t *testing.T) {
			cfg, err := Parse("i.yaml", []byte(minimal+"defaults:\n  on_isolation: "+c.value+"\n  isolation_grace: 45s\n"), noEnv)
			if c.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "defaults.on_isolation (line 15): "+c.err)
				return
			}
			require.NoError(t, err)
			p := cfg.Hosts[0].Effective
			assert.Equal(t, c.want, p.OnIsolation)
			assert.Equal(t, 45*time.Second, p.IsolationGrace)
			assert.Equal(t, c.want != IsolationAlert, p.OnIsolation.Fences())
		})
	}
}
