package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{Dir: "/tmp/x", Hosts: 2, BMCTypes: []string{BMCRedfish}}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, DefaultName, c.Name)
	assert.Equal(t, "admin", c.BMCUser)
	assert.Len(t, c.BMCPassword, 16, "random password")
	assert.Equal(t, BMCRedfish, c.bmcType(0))
	assert.Equal(t, BMCIPMI, c.bmcType(1), "hosts past BMCTypes get IPMI")
	c3, err := Config{Dir: "/tmp/x", Hosts: 2, BMCTypes: []string{BMCBoth, BMCIPMI}}.withDefaults()
	require.NoError(t, err, "ipmi+redfish is a host type")
	assert.Equal(t, BMCBoth, c3.bmcType(0))
	c2, err := Config{Dir: "/tmp/x", Hosts: 1}.withDefaults()
	require.NoError(t, err)
	assert.NotEqual(t, c.BMCPassword, c2.BMCPassword)
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Name: "Bad-Name", Dir: "/tmp/x", Hosts: 1}, `Name "Bad-Name"`},
		{Config{Name: "averyverylongname", Dir: "/tmp/x", Hosts: 1}, "Name"},
		{Config{Hosts: 1}, "Dir is required"},
		{Config{Dir: "rel/dir", Hosts: 1}, `Dir "rel/dir" is not absolute`},
		{Config{Dir: "/var/lib/libvirt/lab", Hosts: 1}, "lies under /var/lib/libvirt"},
		{Config{Dir: "/run/lab", Hosts: 1}, "lies under /run"},
		{Config{Dir: "/tmp/a b", Hosts: 1}, "must not contain"},
		{Config{Dir: "/tmp/x", Hosts: 0}, "Hosts 0 out of range"},
		{Config{Dir: "/tmp/x", Hosts: MaxHosts + 1}, "out of range"},
		{Config{Dir: "/tmp/x", Hosts: 1, BMCTypes: []string{"ipmi", "ipmi"}}, "BMCTypes has 2 entries for 1 hosts"},
		{Config{Dir: "/tmp/x", Hosts: 2, BMCTypes: []string{"ipmi", "amt"}}, `BMCTypes[1] "amt": want "ipmi", "redfish" or "ipmi+redfish"`},
		{Config{Dir: "/tmp/x", Hosts: 1, BMCUser: "a b"}, "BMCUser"},
	} {
		_, err := tc.cfg.withDefaults()
		if assert.Error(t, err, "%+v", tc.cfg) {
			assert.Contains(t, err.Error(), tc.want)
		}
	}
	// Every problem at once.
	_, err := Config{Name: "X", Hosts: 0}.withDefaults()
	require.Error(t, err)
	for _, want := range []string{"Name", "Dir is required", "Hosts 0"} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestConfigPasswordNeverInErrors(t *testing.T) {
	const secret = "much too long secret password here"
	_, err := Config{Dir: "/tmp/x", Hosts: 1, BMCPassword: secret}.withDefaults()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "BMCPassword")
	assert.NotContains(t, err.Error(), secret)
}

// TestChassisControlScript runs the generated chassis_control program's
// read-only paths; power changes need root and run in TestLab.
func TestChassisControlScript(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	dir := t.TempDir()
	var b strings.Builder
	require.NoError(t, scripts.ExecuteTemplate(&b, "chassis-control.sh", map[string]string{
		"Host": "host1", "HostDir": dir, "Netns": "nosuch-h1"}))
	prog := filepath.Join(dir, "chassis-control")
	require.NoError(t, os.WriteFile(prog, []byte(b.String()), 0o755))
	runProg := func(args ...string) (string, error) {
		out, err := exec.Command(prog, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := runProg("get", "power")
	require.NoError(t, err)
	assert.Equal(t, "power:0", out)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "power_on"), nil, 0o644))
	out, err = runProg("0x20", "get", "power")
	require.NoError(t, err, "ipmi_sim's leading MC address is skipped")
	assert.Equal(t, "power:1", out)
	out, err = runProg("get", "power", "boot")
	require.NoError(t, err)
	assert.Equal(t, "power:1\nboot:default", out)
	for _, bad := range [][]string{{}, {"frob"}, {"get", "fan"}, {"set", "power"}, {"set", "power", "2"}, {"set", "fan", "1"}} {
		out, err := runProg(bad...)
		assert.Error(t, err, "%v accepted: %s", bad, out)
		assert.NotEmpty(t, out, "%v: error without a message", bad)
	}
	// Boot-device and identify requests are accepted and change nothing.
	_, err = runProg("0x20", "set", "boot", "default", "identify", "1 0")
	require.NoError(t, err)
	out, _ = runProg("get", "power")
	assert.Equal(t, "power:1", out)
}

func TestPrepareDirWipesOnlyLabDirs(t *testing.T) {
	dir := t.TempDir()
	foreign := filepath.Join(dir, "precious.txt")
	require.NoError(t, os.WriteFile(foreign, []byte("x"), 0o644))
	cfg, err := Config{Dir: dir, Hosts: 1}.withDefaults()
	require.NoError(t, err)
	err = prepareDir(cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not a lab directory")
	assert.FileExists(t, foreign, "a foreign directory is never wiped")

	require.NoError(t, os.Remove(foreign))
	require.NoError(t, prepareDir(cfg))
	old := filepath.Join(dir, "shared", "old.qcow2")
	require.NoError(t, os.WriteFile(old, []byte("x"), 0o644))
	require.NoError(t, prepareDir(cfg), "a previous lab's directory is reused")
	assert.NoFileExists(t, old, "and wiped")
	st, err := os.Stat(filepath.Join(dir, "bmc", "password"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	b, err := os.ReadFile(filepath.Join(dir, "etc", "passwd"))
	require.NoError(t, err)
	assert.Contains(t, string(b), "\nlibvirt-qemu:")
}

// TestHostInitRunsPrepareBootBeforeLibvirtd: with a PrepareBootCommand
// the host's init runs it (in the foreground) before libvirtd starts;
// without one, nothing is added.
func TestHostInitRunsPrepareBootBeforeLibvirtd(t *testing.T) {
	render := func(prepare string) string {
		var b strings.Builder
		require.NoError(t, scripts.ExecuteTemplate(&b, "host-init.sh", map[string]string{
			"Host": "host1", "HostDir": "/lab/h1", "Passwd": "/lab/passwd", "Group": "/lab/group", "HostAddr": "10.0.0.1", "CtlAddr": "10.0.0.2",
			"Agent": "'/bin/agent'", "PrepareBoot": prepare}))
		return b.String()
	}
	s := render("'/bin/chime-agent' 'prepare-boot'")
	pb, lv, ag := strings.Index(s, "'/bin/chime-agent' 'prepare-boot'"), strings.Index(s, "libvirtd --listen"), strings.Index(s, "'/bin/agent'")
	require.Positive(t, pb)
	assert.Less(t, pb, lv, "prepare-boot before libvirtd")
	assert.Less(t, lv, ag)
	assert.NotContains(t, s[pb:lv], "&\n", "prepare-boot runs in the foreground: libvirtd waits for it")
	assert.NotContains(t, render(""), "prepare-boot")
}
