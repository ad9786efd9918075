package lab

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/nsenter"
)

// skipUnlessLab skips when the lab cannot run here: only when not root or
// a required program is missing.
func skipUnlessLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("lab tests need root (network namespaces, mounts); run as root to include them")
	}
	if err := checkTools(); err != nil {
		t.Skipf("lab tests skipped: %v", err)
	}
}

func startLab(t *testing.T, ctx context.Context, cfg Config) *Lab {
	t.Helper()
	t0 := time.Now()
	l, err := Start(ctx, cfg)
	require.NoError(t, err)
	t.Logf("lab %s: start took %v", cfg.Name, time.Since(t0))
	t.Cleanup(func() {
		t0 := time.Now()
		assert.NoError(t, l.Close())
		t.Logf("lab %s: close took %v", cfg.Name, time.Since(t0))
		assert.Empty(t, Leftovers(l.Name(), l.Dir()), "nothing of the lab may be left behind")
	})
	return l
}

// ipmitool runs a real IPMI client in the controller namespace.
func ipmitool(ctx context.Context, l *Lab, h Host, args ...string) (string, error) {
	b := h.BMC
	argv := append([]string{"-I", "lanplus", "-C", "3", "-N", "1", "-R", "2", "-H", b.Addr, "-p", strconv.Itoa(b.Port),
		"-U", b.User, "-f", b.PasswordFile}, args...)
	out, err := l.Controller().Command(ctx, "ipmitool", argv...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// reachable reports whether the controller gets an answer from h: a ping
// and a TCP connection to libvirt.
func reachable(ctx context.Context, l *Lab, h Host) (ping, tcp bool) {
	ping = l.Controller().Command(ctx, "ping", "-c", "1", "-W", "1", h.MgmtAddr).Run() == nil
	tcp = tcpProbe(ctx, l.Controller().Netns, h.MgmtAddr, LibvirtPort, time.Second) == nil
	return ping, tcp
}

func TestLab(t *testing.T) {
	skipUnlessLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	l := startLab(t, ctx, Config{
		Name: "chlabt", Dir: t.TempDir(), Hosts: 3,
		BMCTypes: []string{BMCIPMI, BMCIPMI, BMCRedfish},
		AgentCommand: func(h Host) []string {
			return []string{"sh", "-c", "echo agent on $(hostname) boot $(cat " + BootIDPath + ") ctl $CHIME_LAB_CONTROLLER_ADDR; exec sleep infinity"}
		},
	})
	hosts := l.Hosts()
	require.Len(t, hosts, 3)
	h1, h2, h3 := hosts[0], hosts[1], hosts[2]

	pw, err := os.ReadFile(h1.BMC.PasswordFile)
	require.NoError(t, err)
	st, err := os.Stat(h1.BMC.PasswordFile)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	for _, p := range labProcs(l.Name()) {
		assert.NotContains(t, cmdline(p), strings.TrimSpace(string(pw)), "password on the command line of pid %d", p)
	}

	// The boot id is visible inside the host and is the lab's.
	boot1, err := l.BootID(h1)
	require.NoError(t, err)
	cmd, err := l.HostCommand(ctx, h1, "cat", BootIDPath)
	require.NoError(t, err)
	out, err := cmd.Output()
	require.NoError(t, err)
	assert.Equal(t, boot1, strings.TrimSpace(string(out)))
	cmd, err = l.HostCommand(ctx, h1, "hostname")
	require.NoError(t, err)
	out, err = cmd.Output()
	require.NoError(t, err)
	assert.Equal(t, "host1", strings.TrimSpace(string(out)))
	require.NotZero(t, l.AgentPID(h1), "agent runs on host1")
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(h1.AgentLog)
		return strings.Contains(string(b), "agent on host1 boot "+boot1+" ctl "+l.Controller().MgmtAddr)
	}, 5*time.Second, 20*time.Millisecond, "the agent's output reaches AgentLog and it sees the lab boot id")

	vm, err := l.CreateVM(ctx, h1, VMSpec{Name: "vm1", Shared: true})
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(l.SharedDir(), "vm1.qcow2"), vm.Disk)
	state, err := l.DomainState(ctx, h1, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "running", state)
	qemus := l.QEMUPIDs(h1)
	require.Len(t, qemus, 1, "one QEMU on host1")
	libvirtds := l.HostPIDs(h1)

	// A real IPMI client powers host1 off through its BMC.
	out1, err := ipmitool(ctx, l, h1, "chassis", "power", "status")
	require.NoError(t, err, out1)
	assert.Equal(t, "Chassis Power is on", out1)
	t0 := time.Now()
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "off")
	took := time.Since(t0)
	require.NoError(t, err, out1)
	t.Logf("ipmitool chassis power off took %v", took)
	// The chassis program kills before the BMC answers: nothing may be
	// left the moment the client has its reply.
	for _, p := range append(qemus, libvirtds...) {
		assert.False(t, alive(p), "process %d of host1 survived power off", p)
	}
	assert.Empty(t, l.HostPIDs(h1))
	assert.False(t, l.HostPowered(h1))
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "status")
	require.NoError(t, err, out1)
	assert.Equal(t, "Chassis Power is off", out1)
	ping, tcp := reachable(ctx, l, h1)
	assert.False(t, ping, "powered-off host answers ping")
	assert.False(t, tcp, "powered-off host accepts TCP")

	// The same VM, same disk, starts on host2 ...
	require.NoError(t, l.DefineVM(ctx, h2, vm))
	require.NoError(t, l.StartVM(ctx, h2, "vm1"))
	state, err = l.DomainState(ctx, h2, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "running", state)
	// ... and QEMU's image lock refuses a second start on host3.
	require.NoError(t, l.DefineVM(ctx, h3, vm))
	err = l.StartVM(ctx, h3, "vm1")
	require.Error(t, err)
	assert.Contains(t, err.Error(), LockErrorText)

	// Power host1 on again: new boot, libvirtd answers over TCP with the
	// VM still defined and shut off.
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "on")
	require.NoError(t, err, out1)
	require.NoError(t, l.WaitReady(ctx, h1))
	boot2, err := l.BootID(h1)
	require.NoError(t, err)
	assert.NotEqual(t, boot1, boot2, "power cycle changes the boot id")
	vout, err := l.Controller().Command(ctx, "virsh", "-c", h1.LibvirtURI, "domstate", "vm1").CombinedOutput()
	require.NoError(t, err, string(vout))
	assert.Equal(t, "shut off", strings.TrimSpace(string(vout)))

	// The agent came back with the host; KillAgent kills only it.
	agent := l.AgentPID(h1)
	require.NotZero(t, agent)
	require.NoError(t, l.KillAgent(ctx, h1))
	assert.False(t, alive(agent))
	assert.Zero(t, l.AgentPID(h1))
	assert.NoError(t, l.WaitReady(ctx, h1), "libvirtd survives KillAgent")

	// Network cut: host1 is unreachable, its BMC still answers.
	ping, tcp = reachable(ctx, l, h1)
	require.True(t, ping && tcp, "host1 reachable before the cut")
	require.NoError(t, l.CutNetwork(ctx, h1))
	ping, tcp = reachable(ctx, l, h1)
	assert.False(t, ping, "ping through a cut network")
	assert.False(t, tcp, "TCP through a cut network")
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "status")
	require.NoError(t, err, out1)
	assert.Equal(t, "Chassis Power is on", out1)
	_, err = l.Virsh(ctx, h1, "uri")
	assert.NoError(t, err, "host1 keeps running behind the cut")
	// A power cycle does not plug the cable back in.
	require.NoError(t, l.PowerLoss(ctx, h1))
	require.NoError(t, l.PowerOn(ctx, h1))
	ping, tcp = reachable(ctx, l, h1)
	assert.False(t, ping || tcp, "rebooted host reachable through a cut network")
	require.NoError(t, l.RestoreNetwork(ctx, h1))
	ping, tcp = reachable(ctx, l, h1)
	assert.True(t, ping && tcp, "host1 reachable after restore")

	// Hang: host2 silent, BMC says on; unhang and its VM still runs.
	require.NoError(t, l.Hang(ctx, h2))
	ping, tcp = reachable(ctx, l, h2)
	assert.False(t, ping || tcp, "hung host answers")
	out1, err = ipmitool(ctx, l, h2, "chassis", "power", "status")
	require.NoError(t, err, out1)
	assert.Equal(t, "Chassis Power is on", out1)
	require.NoError(t, l.Unhang(ctx, h2))
	require.NoError(t, l.WaitReady(ctx, h2))
	state, err = l.DomainState(ctx, h2, "vm1")
	require.NoError(t, err)
	assert.Equal(t, "running", state)

	// BMC blocked: no answer; unblocked: answers.
	require.NoError(t, l.BlockBMC(ctx, h1))
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "status")
	assert.Error(t, err, "blocked BMC answered: %s", out1)
	_, err = l.BMCPower(ctx, h1)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), strings.TrimSpace(string(pw)), "password in an error")
	require.NoError(t, l.UnblockBMC(ctx, h1))
	out1, err = ipmitool(ctx, l, h1, "chassis", "power", "status")
	require.NoError(t, err, out1)

	// PowerLoss goes through the same chassis path the BMC reports from.
	require.NoError(t, l.PowerLoss(ctx, h2))
	on, err := l.BMCPower(ctx, h2)
	require.NoError(t, err)
	assert.False(t, on, "BMC reports off after PowerLoss")
	assert.Empty(t, l.QEMUPIDs(h2))
	require.NoError(t, l.PowerOn(ctx, h2))
	on, err = l.BMCPower(ctx, h2)
	require.NoError(t, err)
	assert.True(t, on)

	t.Run("redfish", func(t *testing.T) { testRedfishBMC(t, ctx, l, h3) })
}

// testRedfishBMC drives h's Redfish BMC over HTTPS from the controller.
func testRedfishBMC(t *testing.T, ctx context.Context, l *Lab, h Host) {
	require.Equal(t, BMCRedfish, h.BMC.Type)
	do := redfishDo(t, ctx, l, h.BMC)
	sys := h.BMC.Endpoint + "/redfish/v1/Systems/" + h.BMC.SystemID
	powerState := func() string {
		code, b := do("GET", sys, "")
		require.Equal(t, 200, code, string(b))
		var s struct{ PowerState string }
		require.NoError(t, json.Unmarshal(b, &s))
		return s.PowerState
	}
	assert.Equal(t, "On", powerState())
	libvirtds := l.HostPIDs(h)
	require.NotEmpty(t, libvirtds)
	code, b := do("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"ForceOff"}`)
	require.Equal(t, 204, code, string(b))
	for _, p := range libvirtds {
		assert.False(t, alive(p), "process %d survived Redfish ForceOff", p)
	}
	assert.False(t, l.HostPowered(h))
	assert.Equal(t, "Off", powerState())
	code, b = do("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`)
	require.Equal(t, 204, code, string(b))
	require.NoError(t, l.WaitReady(ctx, h))
	assert.Equal(t, "On", powerState())
}

// TestSweepAfterOwnerKilled starts a lab in a child process, SIGKILLs it and
// checks that Sweep leaves nothing behind.
func TestSweepAfterOwnerKilled(t *testing.T) {
	skipUnlessLab(t)
	const name = "chlabk"
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperLabOwner$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "CHIME_LAB_TEST_OWNER="+dir)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		_ = Sweep(name)
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "LAB ") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	select {
	case line, ok := <-ready:
		require.True(t, ok, "owner exited before the lab was up")
		require.Equal(t, "LAB READY", line)
	case <-time.After(90 * time.Second):
		t.Fatal("owner did not bring the lab up")
	}
	before := Leftovers(name, dir)
	require.NotEmpty(t, before, "a running lab must be visible to Leftovers")
	require.NoError(t, cmd.Process.Kill())
	killed = true
	_ = cmd.Wait()
	left := Leftovers(name, dir)
	t.Logf("left by the killed owner before Sweep: %q", left)
	assert.NotEmpty(t, netnsFiles(name+"-"), "namespaces outlive a killed owner until swept")
	assert.Contains(t, strings.Join(left, "\n"), "sleep 1000", "the controller's process outlives a killed owner until swept")
	require.NoError(t, Sweep(name))
	assert.Empty(t, Leftovers(name, dir))
}

// TestHelperLabOwner is the child of TestSweepAfterOwnerKilled.
func TestHelperLabOwner(t *testing.T) {
	dir := os.Getenv("CHIME_LAB_TEST_OWNER")
	if dir == "" {
		t.Skip("helper process for TestSweepAfterOwnerKilled")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := Start(ctx, Config{Name: "chlabk", Dir: dir, Hosts: 2,
		AgentCommand: func(Host) []string { return []string{"sleep", "infinity"} }})
	if err != nil {
		fmt.Println("LAB FAILED", err)
		return
	}
	if _, err := l.CreateVM(ctx, l.Hosts()[0], VMSpec{Name: "k1"}); err != nil {
		fmt.Println("LAB FAILED", err)
		return
	}
	// A daemon under test in the controller does not die with the owner.
	stray := l.Controller().Command(context.Background(), "sleep", "1000")
	if err := stray.Start(); err != nil {
		fmt.Println("LAB FAILED", err)
		return
	}
	fmt.Println("LAB READY")
	time.Sleep(5 * time.Minute)
}

// redfishDo returns a function sending one authenticated HTTPS request to
// Redfish BMC b from the controller namespace, trusting only b's CAFile.
func redfishDo(t *testing.T, ctx context.Context, l *Lab, b BMC) func(method, url, body string) (int, []byte) {
	t.Helper()
	require.Equal(t, BMCRedfish, b.Type)
	ca, err := os.ReadFile(b.CAFile)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca))
	pw, err := os.ReadFile(b.PasswordFile)
	require.NoError(t, err)
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := nsenter.Do(l.Controller().Netns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	return func(method, url, body string) (int, []byte) {
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		require.NoError(t, err)
		req.SetBasicAuth(b.User, strings.TrimSpace(string(pw)))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, out
	}
}
