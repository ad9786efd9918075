package labconfig

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	fenceapi "github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/e2e/lab"
)

// fakeLab records a lab's state the way lab.Start does and attaches to it:
// host1 IPMI, host2 Redfish, host3 both (the first n of them, n=0: all).
// Nothing runs.
func fakeLab(t *testing.T, n int) *lab.Lab {
	t.Helper()
	dir := t.TempDir()
	pw := filepath.Join(dir, "bmc", "password")
	ca := filepath.Join(dir, "bmc", "cert.pem")
	ipmi := func(addr string) lab.BMC {
		return lab.BMC{Type: lab.BMCIPMI, Netns: "t-b", Addr: addr, Port: lab.IPMIPort, User: "admin", PasswordFile: pw}
	}
	rf := func(name, addr string) lab.BMC {
		return lab.BMC{Type: lab.BMCRedfish, Netns: "t-b", Addr: addr, Port: lab.RedfishPort, User: "admin",
			PasswordFile: pw, Endpoint: "https://" + addr + ":443", CAFile: ca, SystemID: name}
	}
	hosts := []lab.Host{
		{Name: "host1", Index: 1, MgmtAddr: "10.77.0.11", BMCs: []lab.BMC{ipmi("10.78.0.11")}},
		{Name: "host2", Index: 2, MgmtAddr: "10.77.0.12", BMCs: []lab.BMC{rf("host2", "10.78.0.12")}},
		{Name: "host3", Index: 3, MgmtAddr: "10.77.0.13", BMCs: []lab.BMC{ipmi("10.78.0.13"), rf("host3", "10.78.0.113")}},
	}
	for i := range hosts {
		hosts[i].BMC = hosts[i].BMCs[0]
	}
	if n > 0 {
		hosts = hosts[:n]
	}
	st := map[string]any{"name": "tlab", "dir": dir, "owner_pid": 1,
		"controller": lab.Controller{Netns: "tlab-ctl", MgmtAddr: lab.ControllerMgmtAddr, BMCAddr: "10.78.0.2"},
		"hosts":      hosts}
	b, err := json.Marshal(st)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "state.json"), b, 0o644))
	l, err := lab.Attach(dir)
	require.NoError(t, err)
	return l
}

func TestWriteBothBMCsAndPerTypePassword(t *testing.T) {
	l := fakeLab(t, 0)
	wrong := filepath.Join(t.TempDir(), "wrong")
	other := filepath.Join(t.TempDir(), "other")
	path, err := Write(l, filepath.Join(t.TempDir(), "c.yaml"), Options{
		BMCPasswordFiles: map[string]string{BMCKey("host3", lab.BMCIPMI): wrong},
		PasswordFiles:    map[string]string{"host2": other},
	})
	require.NoError(t, err)
	cfg, err := configs.Load(path)
	require.NoError(t, err, "the generated config must load")

	byName := map[string]*configs.Host{}
	for i := range cfg.Hosts {
		byName[cfg.Hosts[i].Name] = &cfg.Hosts[i]
	}
	require.Len(t, byName, 3)
	pw := l.Hosts()[0].BMC.PasswordFile

	h1 := byName["host1"]
	assert.Equal(t, RackIPMI, h1.Rack)
	require.Len(t, h1.BMCs, 1)
	assert.Equal(t, pw, h1.BMCs[0].PasswordFile)

	h2 := byName["host2"]
	assert.Equal(t, RackRedfish, h2.Rack)
	require.Len(t, h2.BMCs, 1)
	assert.Equal(t, other, h2.BMCs[0].PasswordFile, "PasswordFiles overrides by host")

	h3 := byName["host3"]
	assert.Equal(t, RackBoth, h3.Rack)
	assert.Equal(t, PolicyBoth, h3.Effective.Name)
	require.Len(t, h3.Effective.Levels, 2)
	assert.Equal(t, configs.LevelIPMI, h3.Effective.Levels[0].Type)
	assert.Equal(t, configs.LevelRedfish, h3.Effective.Levels[1].Type)
	assert.Zero(t, h3.Effective.Levels[0].Retries)
	require.Len(t, h3.BMCs, 2)
	ipmi, ok := h3.BMC(configs.BMCIPMI)
	require.True(t, ok)
	assert.Equal(t, "10.78.0.13", ipmi.Address)
	assert.Equal(t, lab.IPMIPort, ipmi.Port)
	assert.Equal(t, wrong, ipmi.PasswordFile, "only the IPMI BMC gets the override")
	assert.Equal(t, []int{3}, ipmi.CipherSuites)
	rf, ok := h3.BMC(configs.BMCRedfish)
	require.True(t, ok)
	assert.Equal(t, "10.78.0.113", rf.Address)
	assert.Equal(t, lab.RedfishPort, rf.Port)
	assert.Equal(t, pw, rf.PasswordFile, "the Redfish BMC keeps the right password")
	assert.Equal(t, "host3", rf.SystemID)
	assert.Equal(t, l.Hosts()[2].BMCs[1].CAFile, rf.CAFile)
}

func TestWriteRejectsUnknownOverrides(t *testing.T) {
	l := fakeLab(t, 0)
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{PasswordFiles: map[string]string{"host9": "x"}}, `PasswordFiles["host9"]: no such host`},
		{Options{BMCPasswordFiles: map[string]string{"host1/redfish": "x"}}, `BMCPasswordFiles["host1/redfish"]: no such BMC`},
		{Options{BMCPasswordFiles: map[string]string{"host3": "x"}}, `BMCPasswordFiles["host3"]: no such BMC`},
		{Options{HostLevels: map[string][]string{"host9": {LevelIPMI}}}, `HostLevels["host9"]: no such host`},
		{Options{HostLevels: map[string][]string{"host1": {}}}, `HostLevels["host1"]: empty`},
		{Options{HostLevels: map[string][]string{"host1": {"ipmi", "smoke-signal"}}}, `HostLevels["host1"][1]: unknown level "smoke-signal"`},
		{Options{HostLevels: map[string][]string{"host1": {LevelRedfish}}}, `HostLevels["host1"][0]: host1 has no redfish BMC`},
		{Options{HostLevels: map[string][]string{"host3": {LevelIPMI, LevelIPMI}}}, `HostLevels["host3"][1]: level "ipmi" listed twice`},
		{Options{HostIsolation: map[string]Isolation{"host9": {On: "fence"}}}, `HostIsolation["host9"]: no such host`},
		{Options{HostIsolation: map[string]Isolation{"host1": {On: "fence\nmode: enforce"}}}, `HostIsolation["host1"]: "fence\nmode: enforce" / "" is not a plain value`},
		{Options{APITokens: []APIToken{{Name: "viewer", File: "/x/ro", Role: "admin"}}}, `APITokens[0] (viewer): role "admin"`},
		{Options{APITokens: []APIToken{{Name: "viewer", File: "ro", Role: RoleReadOnly}}}, `APITokens[0] (viewer): file "ro" is not an absolute path`},
		{Options{APITokens: []APIToken{{File: "/x/ro", Role: RoleReadOnly}}}, `APITokens[0]: name "" is empty`},
	} {
		out := filepath.Join(t.TempDir(), "c.yaml")
		_, err := Write(l, out, tc.o)
		require.Error(t, err, "%+v", tc.o)
		assert.Contains(t, err.Error(), tc.want)
		_, statErr := os.Stat(out)
		assert.ErrorIs(t, statErr, os.ErrNotExist, "no config written on bad options")
	}
}

func TestRackOfAttachedOldState(t *testing.T) {
	// A Host value without BMCs (state from before BMCs existed, or built
	// by hand) still maps by its primary BMC.
	assert.Equal(t, RackRedfish, RackOf(lab.Host{BMC: lab.BMC{Type: lab.BMCRedfish}}))
	assert.Equal(t, RackIPMI, RackOf(lab.Host{BMC: lab.BMC{Type: lab.BMCIPMI}}))
	assert.Equal(t, RackBoth, RackOf(lab.Host{BMCs: []lab.BMC{{Type: lab.BMCIPMI}, {Type: lab.BMCRedfish}}}))
}

func TestWriteIPMIOnlyLabLoads(t *testing.T) {
	// Racks nobody is in (rack-redfish, rack-both) must not make the
	// config invalid.
	path, err := Write(fakeLab(t, 1), filepath.Join(t.TempDir(), "c.yaml"), Options{Mode: "enforce"})
	require.NoError(t, err)
	cfg, err := configs.Load(path)
	require.NoError(t, err)
	require.Len(t, cfg.Hosts, 1)
	assert.Equal(t, RackIPMI, cfg.Hosts[0].Rack)
	assert.Equal(t, PolicyIPMI, cfg.Hosts[0].Effective.Name)
}

func TestWriteHostLevels(t *testing.T) {
	// host3 (both BMCs) fences through IPMI, then its agent; its Redfish
	// BMC is no level but stays listed, so the detector can still read it.
	l := fakeLab(t, 0)
	path, err := Write(l, filepath.Join(t.TempDir(), "c.yaml"), Options{
		HostLevels: map[string][]string{"host3": {LevelIPMI, LevelAgentDrain}, "host2": {LevelRedfish, LevelAgentDrain}},
	})
	require.NoError(t, err)
	cfg, err := configs.Load(path)
	require.NoError(t, err, "the generated config must load")
	byName := map[string]*configs.Host{}
	for i := range cfg.Hosts {
		byName[cfg.Hosts[i].Name] = &cfg.Hosts[i]
	}
	types := func(h *configs.Host) []configs.FenceLevelType {
		var out []configs.FenceLevelType
		for _, lv := range h.Effective.Levels {
			out = append(out, lv.Type)
		}
		return out
	}

	h3 := byName["host3"]
	assert.Equal(t, RackBoth, h3.Rack, "the host keeps its rack")
	assert.Equal(t, PolicyBoth, h3.Effective.Name, "and its rack's policy")
	assert.Equal(t, []configs.FenceLevelType{configs.LevelIPMI, configs.LevelAgentDrain}, types(h3))
	for _, lv := range h3.Effective.Levels {
		assert.Equal(t, 5*time.Second, lv.Timeout, "%s: the rack policy's level_timeout still applies", lv.Type)
		assert.Zero(t, lv.Retries, "%s: the rack policy's level_retries still applies", lv.Type)
	}
	assert.Len(t, h3.BMCs, 2, "both BMCs stay listed")

	assert.Equal(t, []configs.FenceLevelType{configs.LevelRedfish, configs.LevelAgentDrain}, types(byName["host2"]))
	assert.Equal(t, []configs.FenceLevelType{configs.LevelIPMI}, types(byName["host1"]), "a host without an override keeps its rack's levels")
}

func TestWriteAPITokens(t *testing.T) {
	// A read-only token beside the operator's: the daemon config loads
	// with both roles, and each file holds a distinct token.
	l := fakeLab(t, 1)
	dir := t.TempDir()
	ro, op := filepath.Join(dir, "ro.token"), filepath.Join(dir, "op.token")
	tok, err := WriteToken(ro)
	require.NoError(t, err)
	assert.Len(t, tok, 32)
	_, err = WriteToken(op)
	require.NoError(t, err)
	path, err := Write(l, filepath.Join(t.TempDir(), "c.yaml"), Options{Tokens: true, TokenDir: dir,
		APITokens: []APIToken{{Name: "viewer", File: ro, Role: RoleReadOnly}, {Name: "ops2", File: op, Role: RoleOperator}}})
	require.NoError(t, err)
	cfg, err := configs.Load(path)
	require.NoError(t, err, "the generated config must load")
	assert.Equal(t, []configs.APIToken{{Name: "viewer", File: ro, Role: configs.RoleReadOnly}, {Name: "ops2", File: op, Role: configs.RoleOperator}},
		cfg.Controller.APITokens)
	secret, api := TokenFiles(dir)
	assert.Equal(t, api, cfg.Controller.APITokenFile, "the operator token stays")
	assert.Equal(t, secret, cfg.Controller.AgentSecretFile)
	// Each host's credentials are what the daemon derives from the secret.
	ring, err := fenceapi.ReadAgentSecrets(cfg.Controller)
	require.NoError(t, err)
	agentFile, daemonFile, err := HostCredentials(dir, "host1")
	require.NoError(t, err)
	agentCred, err := configs.Secret{What: "agent", File: agentFile}.Read()
	require.NoError(t, err)
	daemonCred, err := configs.Secret{What: "daemon", File: daemonFile}.Read()
	require.NoError(t, err)
	assert.True(t, ring.CheckAgent("host1", agentCred))
	assert.False(t, ring.CheckAgent("host2", agentCred), "host1's credential is not host2's")
	assert.Equal(t, ring.DaemonCredential("host1"), daemonCred)
	b, err := os.ReadFile(ro)
	require.NoError(t, err)
	assert.Equal(t, tok+"\n", string(b))
	other, err := WriteToken(ro)
	require.NoError(t, err)
	assert.NotEqual(t, tok, other, "random each time")
}

func TestWriteHostIsolation(t *testing.T) {
	l := fakeLab(t, 0)
	path, err := Write(l, filepath.Join(t.TempDir(), "c.yaml"), Options{
		HostLevels:    map[string][]string{"host3": {LevelRedfish, LevelIPMI}},
		HostIsolation: map[string]Isolation{"host1": {On: "fence", Grace: "2s"}, "host3": {On: "reboot"}},
	})
	require.NoError(t, err)
	cfg, err := configs.Load(path)
	require.NoError(t, err, "the generated config must load")
	h1, _ := cfg.Host("host1")
	assert.Equal(t, configs.IsolationFence, h1.Effective.OnIsolation)
	assert.Equal(t, 2*time.Second, h1.Effective.IsolationGrace)
	h2, _ := cfg.Host("host2")
	assert.Equal(t, configs.IsolationAlert, h2.Effective.OnIsolation, "the default")
	h3, _ := cfg.Host("host3")
	assert.Equal(t, configs.IsolationReboot, h3.Effective.OnIsolation)
	assert.Equal(t, 2*time.Minute, h3.Effective.IsolationGrace, "the policy's grace")
	require.Len(t, h3.Effective.Levels, 2)
	assert.Equal(t, configs.LevelRedfish, h3.Effective.Levels[0].Type, "levels and isolation share one override")
}
