package ipmisim

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const testPassword = "pw-Zq81xK"

func needSim(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Skipf("skipping: %s not installed (Debian package openipmi): %v", Binary, err)
	}
}

func startSim(t *testing.T) *Sim {
	t.Helper()
	needSim(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{Addr: "127.0.0.1", User: "admin", Password: testPassword, StateDir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

func ipmitool(t *testing.T, s *Sim, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Skip("skipping: ipmitool not installed")
	}
	base := []string{"-I", "lanplus", "-C", "3", "-H", s.Addr(), "-p", strconv.Itoa(s.Port()), "-U", "admin", "-f", s.PasswordFile(), "-N", "1", "-R", "2"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ipmitool", append(base, args...)...).CombinedOutput()
	require.NoError(t, err, "ipmitool %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

func TestIpmitoolDrivesFilePower(t *testing.T) {
	s := startSim(t)
	require.NotZero(t, s.Port())
	dir := s.PowerDir()
	require.NotEmpty(t, dir)

	assert.Equal(t, "Chassis Power is on", ipmitool(t, s, "chassis", "power", "status"))
	assert.Equal(t, "Chassis Power Control: Down/Off", ipmitool(t, s, "chassis", "power", "off"))
	on, err := FilePower(dir)
	require.NoError(t, err)
	assert.False(t, on, "file state after power off")
	assert.Equal(t, "Chassis Power is off", ipmitool(t, s, "chassis", "power", "status"))

	assert.Equal(t, "Chassis Power Control: Up/On", ipmitool(t, s, "chassis", "power", "on"))
	on, err = FilePower(dir)
	require.NoError(t, err)
	assert.True(t, on, "file state after power on")

	// A state change behind the BMC's back is what the BMC reports.
	require.NoError(t, SetFilePower(dir, false))
	assert.Equal(t, "Chassis Power is off", ipmitool(t, s, "chassis", "power", "status"))

	// Soft off reaches the program as "set shutdown 1"; the simulated OS obeys.
	require.NoError(t, SetFilePower(dir, true))
	ipmitool(t, s, "chassis", "power", "soft")
	on, err = FilePower(dir)
	require.NoError(t, err)
	assert.False(t, on, "file state after soft off")
}

func TestStopLeavesNoProcess(t *testing.T) {
	s := startSim(t)
	pid := s.PID()
	require.NoError(t, syscall.Kill(pid, 0), "simulator should be running")

	require.NoError(t, s.Stop())
	select {
	case <-s.Exited():
	default:
		t.Fatal("Stop returned before the process exited")
	}
	assert.ErrorIs(t, syscall.Kill(pid, 0), syscall.ESRCH, "pid %d still exists", pid)
	require.NoError(t, s.Stop(), "second Stop")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	assert.Error(t, Probe(ctx, "", s.Addr(), s.Port()), "a stopped BMC must not answer")
}

func TestSecretsStayOutOfArgvAndAreFileProtected(t *testing.T) {
	s := startSim(t)
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(s.PID()) + "/cmdline")
	require.NoError(t, err)
	assert.NotContains(t, string(cmdline), testPassword)
	assert.Contains(t, string(cmdline), "ipmi_sim")

	for _, name := range []string{"lan.conf", "password"} {
		fi, err := os.Stat(filepath.Join(filepath.Dir(s.PasswordFile()), name))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), name)
	}
	b, err := os.ReadFile(s.PasswordFile())
	require.NoError(t, err)
	assert.Equal(t, testPassword+"\n", string(b))
}

func TestStartFailsWithLogTailWhenPortTaken(t *testing.T) {
	needSim(t)
	busy, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	port := busy.LocalAddr().(*net.UDPAddr).Port

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = Start(ctx, Config{Addr: "127.0.0.1", Port: port, User: "admin", Password: testPassword, StateDir: t.TempDir()})
	require.Error(t, err)
	assert.ErrorIs(t, err, errExitedEarly)
	assert.Contains(t, err.Error(), "log:")
	assert.NotContains(t, err.Error(), testPassword)
}

func TestConfigValidation(t *testing.T) {
	good := Config{Addr: "127.0.0.1", User: "admin", Password: testPassword, StateDir: t.TempDir()}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"bad addr", func(c *Config) { c.Addr = "localhost" }, `Addr "localhost" is not an IPv4 address`},
		{"bad port", func(c *Config) { c.Port = 70000 }, "Port 70000 out of range"},
		{"no state dir", func(c *Config) { c.StateDir = "" }, "StateDir is required"},
		{"no user", func(c *Config) { c.User = "" }, "User is required"},
		{"long password", func(c *Config) { c.Password = strings.Repeat("x", 21) }, "Password is 21 bytes, IPMI allows at most 20"},
		{"quote in password", func(c *Config) { c.Password = `a"` + testPassword[:5] }, "Password must not contain quotes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			_, err := Start(context.Background(), c)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.NotContains(t, err.Error(), testPassword[:5])
		})
	}
}

func TestFilePowerScriptContract(t *testing.T) {
	dir := t.TempDir()
	prog, err := WriteFilePowerControl(dir)
	require.NoError(t, err)
	run := func(args ...string) (string, error) {
		out, err := exec.Command(prog, args...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := run("get", "power")
	require.NoError(t, err)
	assert.Equal(t, "power:1", out, "initial state is on")

	_, err = run("set", "power", "0")
	require.NoError(t, err)
	out, err = run("0x20", "get", "power") // stock device-first convention
	require.NoError(t, err)
	assert.Equal(t, "power:0", out)

	_, err = run("set", "power", "2")
	assert.Error(t, err, "invalid power value must fail")
	_, err = run("frobnicate")
	assert.Error(t, err, "unknown operation must fail")

	// Rewriting the program keeps the existing state.
	_, err = WriteFilePowerControl(dir)
	require.NoError(t, err)
	on, err := FilePower(dir)
	require.NoError(t, err)
	assert.False(t, on)
}

func TestStartInsideNetns(t *testing.T) {
	needSim(t)
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating a network namespace needs root")
	}
	ns := "chime-ipmisim-" + strconv.Itoa(os.Getpid())
	out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
	require.NoError(t, err, "%s", out)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	out, err = exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput()
	require.NoError(t, err, "%s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := Start(ctx, Config{Addr: "127.0.0.1", User: "admin", Password: testPassword, StateDir: t.TempDir(), Netns: ns})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Stop() })

	// Reachable inside the namespace, not on the host's loopback.
	pctx, pcancel := context.WithTimeout(context.Background(), time.Second)
	defer pcancel()
	require.NoError(t, Probe(pctx, ns, s.Addr(), s.Port()))
	hctx, hcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer hcancel()
	assert.Error(t, Probe(hctx, "", s.Addr(), s.Port()), "BMC in a namespace answered on the host")

	require.NoError(t, s.Stop())
	assert.ErrorIs(t, syscall.Kill(s.PID(), 0), syscall.ESRCH)
}
