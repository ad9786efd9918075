package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/store"
)

// Issue 6's "done when (lab)" through the CLI: every operation is run as an
// operator would, `chime-fence host OP HOST -c CONFIG`, inside the
// controller namespace against the lab daemon, and judged by the CLI's exit
// code and output and by the lab's real state (QEMU processes, libvirt
// domain states, the daemon's history).

// cliRun is one CLI invocation's outcome.
type cliRun struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r cliRun) String() string {
	return fmt.Sprintf("chime-fence %s → exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// cli runs the chime-fence CLI (the daemon's own binary) in the controller
// namespace with the lab's config; env is added to its environment (e.g.
// CHIME_FENCE_API_TOKEN_FILE). A CLI that does not exit within 3 minutes
// fails the test. CHIME_E2E_CLI_LOG=1 logs every run with its output.
func (d *detectionLab) cli(t *testing.T, ctx context.Context, env []string, args ...string) cliRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	args = append(args, "-c", d.cfg)
	cmd := d.l.Controller().Command(ctx, d.bin, args...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader("") // never a terminal: destructive ops need --yes
	err := cmd.Run()
	r := cliRun{args: args, stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("chime-fence %v: %v", args, err)
	}
	require.NoError(t, ctx.Err(), "chime-fence %v did not exit in time; %s", args, r)
	if os.Getenv("CHIME_E2E_CLI_LOG") != "" {
		t.Logf("%s", r)
	}
	return r
}

// op runs `host OP HOST` with --yes (if destructive), --wait and a fast
// poll, so the CLI follows the task to its end and exits by its outcome.
func (d *detectionLab) op(t *testing.T, ctx context.Context, op operations.Op, host string, extra ...string) cliRun {
	t.Helper()
	args := []string{"host", string(op), host, "--wait", "--poll-interval", "200ms"}
	if op != operations.OpEnable && op != operations.OpDisable {
		args = append(args, "--yes")
	}
	return d.cli(t, ctx, nil, append(args, extra...)...)
}

// showHost is `host show HOST -o json`.
func (d *detectionLab) showHost(t *testing.T, ctx context.Context, host string) api.HostInfo {
	t.Helper()
	r := d.cli(t, ctx, nil, "host", "show", host, "-o", "json")
	require.Equal(t, 0, r.code, "%s", r)
	var h api.HostInfo
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &h), "%s", r)
	return h
}

// taskOf reads the task id from the CLI's first progress line ("task ID: …")
// and fetches the task from the API.
func (d *detectionLab) taskOf(t *testing.T, ctx context.Context, r cliRun) operations.Task {
	t.Helper()
	line, _, _ := strings.Cut(r.stdout, "\n")
	id, ok := strings.CutPrefix(line, "task ")
	require.True(t, ok, "no task header in %s", r)
	id, _, _ = strings.Cut(id, ":")
	task, err := d.client.Task(ctx, id)
	require.NoError(t, err, "task %q of %s", id, r)
	return task
}

// vmLine is the CLI's progress line for VM name (the last one printed).
func vmLine(out, name string) string {
	var last string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// "  15:04:05 NAME  STATE ..." or "  NAME  STATE ..."
		if len(f) >= 2 && (f[0] == name || f[1] == name) {
			last = sc.Text()
		}
	}
	return last
}

// runningOn is where each named domain runs (virsh on every host).
func runningOn(ctx context.Context, l *lab.Lab, names ...string) map[string][]string {
	out := map[string][]string{}
	for _, n := range names {
		out[n] = where(ctx, l, n)
	}
	return out
}

// qemuOf is the PID of the QEMU process running domain name on h, 0 if
// none: libvirt names the guest on QEMU's command line (-name guest=NAME).
func qemuOf(l *lab.Lab, h lab.Host, name string) int {
	for _, p := range l.QEMUPIDs(h) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
		if err == nil && slices.ContainsFunc(strings.Split(string(b), "\x00"), func(a string) bool {
			return strings.HasPrefix(a, "guest="+name+",") || a == "guest="+name
		}) {
			return p
		}
	}
	return 0
}

// waitActive waits until the daemon's view of host shows its last
// heartbeat listing active domains (rebuild and migrate check it), then
// until the inventory has sampled every host since (placement uses them).
func (d *detectionLab) waitActive(t *testing.T, name string, active int) {
	t.Helper()
	var last daemon.HostStatus
	require.Eventually(t, func() bool {
		s, err := d.client.Host(context.Background(), name)
		last = s
		return err == nil && s.Active == active
	}, 20*time.Second, 20*time.Millisecond, "%s: last heartbeat never listed %d active domain(s) (last: %d)", name, active, last.Active)
	time.Sleep(1500 * time.Millisecond) // two load samples (inventory_interval 500ms) of every host
}

// scrapeMetrics reads the daemon's /metrics in the controller namespace
// and returns each sample line's value by its series ("name{labels}").
func (d *detectionLab) scrapeMetrics(t *testing.T, ctx context.Context) map[string]float64 {
	t.Helper()
	cl := nsHTTP(d.l.Controller().Netns)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.l.Controller().MgmtAddr+":7480/metrics", nil)
	require.NoError(t, err)
	// /metrics takes an API token, as Prometheus' credentials_file sends.
	req.Header.Set("Authorization", "Bearer "+d.client.Token)
	resp, err := cl.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return parseMetrics(string(b))
}

// metric is one series' value; the series must be exposed (a counter
// the daemon never registered reads as absent, not as 0).
func metric(t *testing.T, m map[string]float64, series string) float64 {
	t.Helper()
	v, ok := m[series]
	if !ok {
		t.Errorf("/metrics has no series %s", series)
	}
	return v
}

// parseMetrics parses Prometheus text exposition sample lines.
func parseMetrics(text string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

// opsEnv: fast inventory samples, a generous start timeout for a loaded
// machine, and live migration on the lab's ext4 "shared" directory.
var opsEnv = append(append([]string{}, recoveryEnv...), "CHIME_FENCE_SCHEDULER_MIGRATION_ALLOW_UNSAFE=true")

// TestOperationsCLI is issue 6's "done when (lab)" for drain, rebuild,
// enable/disable, migrate and the read-only token, plus the host lock, all
// through the CLI on one lab of three hosts in enforce mode. Every host's memory capacity is
// cut to 1024 MiB (scheduler.reserved_memory_mib) so a plan can be made
// not to fit:
//
//	host1: ma, mb (shared, 64 MiB), ml (local disk, 64 MiB)
//	host2: mc, md (shared, 450 MiB each)
//	host3: empty
func TestOperationsCLI(t *testing.T) {
	ctx := context.Background()
	var roFile, badFile string
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chops", Hosts: 3}, func(l *lab.Lab) labconfig.Options {
		dir := t.TempDir()
		roFile, badFile = filepath.Join(dir, "viewer.token"), filepath.Join(dir, "wrong.token")
		_, err := labconfig.WriteToken(roFile)
		require.NoError(t, err)
		_, err = labconfig.WriteToken(badFile) // a token the daemon does not know
		require.NoError(t, err)
		mem := sizeTarget(t, ctx, l, l.Hosts()[0]).memMiB
		require.Greater(t, mem, int64(2048))
		return labconfig.Options{Mode: "enforce",
			APITokens: []labconfig.APIToken{{Name: "viewer", File: roFile, Role: labconfig.RoleReadOnly}},
			Extra:     fmt.Sprintf("scheduler:\n  reserved_memory_mib: %d\n", mem-1024)}
	}, opsEnv)
	hs := d.l.Hosts()
	h1, h2, h3 := hs[0], hs[1], hs[2]

	for _, s := range []struct {
		h    lab.Host
		spec lab.VMSpec
	}{
		{h1, lab.VMSpec{Name: "ma", Shared: true}}, {h1, lab.VMSpec{Name: "mb", Shared: true}}, {h1, lab.VMSpec{Name: "ml"}},
		{h2, lab.VMSpec{Name: "mc", Shared: true, MemoryMiB: 450}}, {h2, lab.VMSpec{Name: "md", Shared: true, MemoryMiB: 450}},
	} {
		_, err := d.l.CreateVM(ctx, s.h, s.spec)
		require.NoError(t, err)
	}
	d.waitActive(t, h1.Name, 3)
	d.waitActive(t, h2.Name, 2)
	// The rebuild needs host1's saved XML on the shared storage.
	mirror := filepath.Join(d.l.SharedDir(), "chime-fence", "domains", h1.Name)
	for _, n := range []string{"ma", "mb"} {
		u := domainUUID(t, ctx, d.l, h1, n)
		require.Eventually(t, func() bool { _, err := os.Stat(filepath.Join(mirror, u+".xml")); return err == nil },
			10*time.Second, 50*time.Millisecond, "the inventory mirror holds %s", n)
	}

	t.Run("7 tokens: read-only lists but may not drain; unknown token refused", func(t *testing.T) {
		ro := []string{"CHIME_FENCE_API_TOKEN_FILE=" + roFile}
		r := d.cli(t, ctx, ro, "host", "list", "-o", "json")
		require.Equal(t, 0, r.code, "%s", r)
		var list []api.HostInfo
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &list), "%s", r)
		var names []string
		for _, h := range list {
			names = append(names, h.Name)
		}
		assert.Equal(t, []string{h1.Name, h2.Name, h3.Name}, names)

		before := d.l.QEMUPIDs(h2)
		r = d.cli(t, ctx, ro, "host", "drain", h2.Name, "--yes", "--no-wait")
		assert.Equal(t, 2, r.code, "a read-only token on an operation is refused (403 → exit 2): %s", r)
		assert.Contains(t, r.stderr, "read-only", "%s", r)
		assert.Contains(t, r.stderr, "viewer", "the refusal names the token: %s", r)
		assert.Empty(t, r.stdout, "no task id printed: %s", r)
		assert.Equal(t, node.Enabled, d.status(h2.Name).Admin)
		assert.ElementsMatch(t, before, d.l.QEMUPIDs(h2), "nothing was stopped")
		ts, err := d.client.Tasks(ctx, h2.Name)
		require.NoError(t, err)
		assert.Empty(t, ts, "a refused operation creates no task")

		r = d.cli(t, ctx, []string{"CHIME_FENCE_API_TOKEN_FILE=" + badFile}, "host", "list")
		assert.Equal(t, 2, r.code, "an unknown token is refused (401 → exit 2): %s", r)
		assert.Contains(t, r.stderr, "401", "%s", r)
		assert.NotContains(t, r.stdout, h1.Name, "%s", r)
	})

	t.Run("3+4 disable keeps migrations off host3; a plan that does not fit moves nothing", func(t *testing.T) {
		r := d.op(t, ctx, operations.OpDisable, h3.Name)
		require.Equal(t, 0, r.code, "%s", r)
		assert.Equal(t, node.Disabled, d.showHost(t, ctx, h3.Name).Admin)

		pids := map[string]int{"mc": qemuOf(d.l, h2, "mc"), "md": qemuOf(d.l, h2, "md")}
		require.NotZero(t, pids["mc"])
		require.NotZero(t, pids["md"])

		r = d.op(t, ctx, operations.OpMigrate, h2.Name, "--target", h3.Name)
		assert.Equal(t, 2, r.code, "a disabled target is refused: %s", r)
		assert.Contains(t, r.stderr, "disabled", "%s", r)

		// 900 MiB onto host1's 832 free: does not fit, whole plan refused.
		r = d.op(t, ctx, operations.OpMigrate, h2.Name, "--target", h1.Name)
		assert.Equal(t, 1, r.code, "%s", r)
		assert.Contains(t, r.stdout+r.stderr, "do not fit on "+h1.Name, "%s", r)
		assert.Contains(t, r.stdout+r.stderr, "nothing is moved", "%s", r)
		// The scheduler, host3 disabled, has only host1: same answer.
		r = d.op(t, ctx, operations.OpMigrate, h2.Name)
		assert.Equal(t, 1, r.code, "%s", r)
		assert.Contains(t, r.stdout+r.stderr, "do not fit", "%s", r)
		task := d.taskOf(t, ctx, r)
		assert.Equal(t, operations.TaskFailed, task.State)
		// task wait on a finished task reports it at once, by its outcome.
		rw := d.cli(t, ctx, nil, "task", "wait", task.ID, "--poll-interval", "200ms")
		assert.Equal(t, 1, rw.code, "%s", rw)
		assert.Contains(t, rw.stdout, "task "+task.ID+" failed", "%s", rw)
		for _, v := range task.Progress {
			assert.NotEqual(t, h3.Name, v.Target, "a disabled host is never planned: %+v", v)
			assert.NotEqual(t, operations.VMDone, v.State, "nothing moved: %+v", v)
		}

		for n, p := range pids {
			assert.Equal(t, p, qemuOf(d.l, h2, n), "%s: the same QEMU still runs on %s", n, h2.Name)
		}
		assert.Empty(t, d.l.QEMUPIDs(h3), "nothing landed on the disabled host")
		assert.Len(t, d.l.QEMUPIDs(h1), 3, "nothing landed on host1")
	})

	t.Run("3+4 enable host3, then migrate --target moves running VMs live", func(t *testing.T) {
		r := d.op(t, ctx, operations.OpEnable, h3.Name)
		require.Equal(t, 0, r.code, "%s", r)
		assert.Equal(t, node.Enabled, d.showHost(t, ctx, h3.Name).Admin)
		d.waitActive(t, h3.Name, 0) // fresh samples with host3 eligible

		r = d.op(t, ctx, operations.OpMigrate, h2.Name, "--target", h3.Name)
		require.Equal(t, 0, r.code, "%s\ndaemon log:\n%s", r, tail(d.log(), 40))
		for _, n := range []string{"mc", "md"} {
			assert.Contains(t, vmLine(r.stdout, n), "done", "%s: %s", n, r)
			assert.Contains(t, vmLine(r.stdout, n), h3.Name, "%s: %s", n, r)
			assert.NotZero(t, qemuOf(d.l, h3, n), "%s: QEMU runs on the target", n)
			assert.Zero(t, qemuOf(d.l, h2, n), "%s: and not on the source", n)
			// Live: the guest arrived running, never booted on host3.
			st, err := d.l.Virsh(ctx, h3, "domstate", "--reason", n)
			require.NoError(t, err)
			assert.Equal(t, "running (migrated)", strings.TrimSpace(st), n)
		}
		assert.Empty(t, d.l.QEMUPIDs(h2))
		doms, err := d.l.Domains(ctx, h2)
		require.NoError(t, err)
		assert.NotContains(t, doms, "mc", "the source's definition is removed (undefine source)")
		assert.Equal(t, map[string][]string{"mc": {h3.Name}, "md": {h3.Name}}, runningOn(ctx, d.l, "mc", "md"))
		// The agents' assignments follow: host3's agent keeps them.
		d.waitActive(t, h3.Name, 2)
		d.waitActive(t, h2.Name, 0)
	})

	t.Run("1 drain stops every QEMU of host1 and its agent restarts none", func(t *testing.T) {
		require.Len(t, d.l.QEMUPIDs(h1), 3)
		r := d.op(t, ctx, operations.OpDrain, h1.Name, "--reason", "disk firmware upgrade")
		require.Equal(t, 0, r.code, "%s", r)
		assert.Contains(t, r.stdout, "succeeded", "%s", r)
		assert.Contains(t, r.stdout, "drained", "%s", r)
		for _, n := range []string{"ma", "mb", "ml"} {
			assert.Contains(t, vmLine(r.stdout, n), "done", "%s: %s", n, r)
		}
		assert.Empty(t, d.l.QEMUPIDs(h1), "every QEMU of host1 stopped")
		// Longer than several reconcile intervals (300ms): an enabled
		// host's agent would have restarted them by now.
		time.Sleep(3 * time.Second)
		assert.Empty(t, d.l.QEMUPIDs(h1), "the agent of a drained host starts nothing")
		for _, n := range []string{"ma", "mb", "ml"} {
			st, err := d.l.DomainState(ctx, h1, n)
			require.NoError(t, err)
			assert.Equal(t, "shut off", st, n)
		}
		h := d.showHost(t, ctx, h1.Name)
		assert.Equal(t, node.Drained, h.Admin)
		assert.Nil(t, h.Lock, "the finished task released the host")
		recs := d.history(store.Query{Host: h1.Name, Kind: operations.HistoryKind})
		require.NotEmpty(t, recs)
		assert.Contains(t, recs[len(recs)-1].Reason, "disk firmware upgrade")
	})

	t.Run("2 rebuild: refused on a host not drained; drained host1's shared VMs run elsewhere once, local one reported", func(t *testing.T) {
		r := d.op(t, ctx, operations.OpRebuild, h2.Name)
		assert.Equal(t, 2, r.code, "%s", r)
		assert.Contains(t, r.stderr, "rebuild runs only on a drained host", "%s", r)
		assert.Contains(t, r.stderr, "enabled", "the reason names the host's state: %s", r)

		// 3: host3 disabled again, so the rebuild can only use host2.
		r = d.op(t, ctx, operations.OpDisable, h3.Name)
		require.Equal(t, 0, r.code, "%s", r)
		onH3 := d.l.QEMUPIDs(h3)
		assert.Len(t, onH3, 2, "disable leaves host3's VMs running")
		d.waitActive(t, h1.Name, 0)

		r = d.op(t, ctx, operations.OpRebuild, h1.Name)
		require.Equal(t, 0, r.code, "%s\ndaemon log:\n%s", r, tail(d.log(), 40))
		for _, n := range []string{"ma", "mb"} {
			assert.Contains(t, vmLine(r.stdout, n), "done", "%s: %s", n, r)
			assert.Contains(t, vmLine(r.stdout, n), h2.Name, "%s: %s", n, r)
		}
		assert.Contains(t, vmLine(r.stdout, "ml"), "skipped", "%s", r)
		assert.Contains(t, vmLine(r.stdout, "ml"), "local", "the local-disk VM is reported: %s", r)
		task := d.taskOf(t, ctx, r)
		rs := d.cli(t, ctx, nil, "task", "show", task.ID, "-o", "json")
		require.Equal(t, 0, rs.code, "%s", rs)
		var shown operations.Task
		require.NoError(t, json.Unmarshal([]byte(rs.stdout), &shown), "%s", rs)
		assert.Equal(t, task.ID, shown.ID)
		assert.Equal(t, operations.TaskSucceeded, shown.State)
		assert.Equal(t, "api", shown.Actor, "the operator token's name")
		assert.Contains(t, shown.Result, "1 not moved", "%+v", shown)
		assert.Len(t, shown.Progress, 3, "a line per VM: %+v", shown.Progress)

		assert.Equal(t, map[string][]string{"ma": {h2.Name}, "mb": {h2.Name}, "ml": nil}, runningOn(ctx, d.l, "ma", "mb", "ml"),
			"each shared-disk VM runs exactly once, on the only eligible host; the local one nowhere")
		assert.ElementsMatch(t, onH3, d.l.QEMUPIDs(h3), "nothing new on the disabled host3")
		assert.Empty(t, d.l.QEMUPIDs(h1))
		time.Sleep(time.Second) // a rebuilt VM stays single: host1's agent restarts nothing
		assert.Equal(t, map[string][]string{"ma": {h2.Name}, "mb": {h2.Name}}, runningOn(ctx, d.l, "ma", "mb"))

		r = d.op(t, ctx, operations.OpEnable, h3.Name)
		require.Equal(t, 0, r.code, "%s", r)
		assert.Equal(t, node.Enabled, d.showHost(t, ctx, h3.Name).Admin)

		// host1 back in service: its agent must not start its stale
		// copies of the rebuilt VMs (they would run twice).
		r = d.op(t, ctx, operations.OpEnable, h1.Name)
		require.Equal(t, 0, r.code, "%s", r)
		time.Sleep(3 * time.Second) // many reconcile intervals
		doms, err := d.l.Domains(ctx, h1)
		require.NoError(t, err)
		assert.NotContains(t, doms, "ma", "host1's stale copy is undefined")
		assert.NotContains(t, doms, "mb", "host1's stale copy is undefined")
		t.Logf("host1 after enable: domains %v (a drained VM is not restarted by enable)", doms)
		assert.Equal(t, map[string][]string{"ma": {h2.Name}, "mb": {h2.Name}}, runningOn(ctx, d.l, "ma", "mb"),
			"the rebuilt VMs still run exactly once after their old host is enabled")
	})

	t.Run("lock: a running fence holds the host, a second operation is refused naming it", func(t *testing.T) {
		// host2's BMC unreachable: the fence runs its IPMI level into the
		// level timeout, long enough to try a second operation meanwhile.
		before := d.l.QEMUPIDs(h2)
		require.Len(t, before, 2)
		require.NoError(t, d.l.BlockBMC(ctx, h2))
		t.Cleanup(func() { _ = d.l.UnblockBMC(ctx, h2) })
		r := d.cli(t, ctx, nil, "host", "fence", h2.Name, "--yes", "--no-wait", "--reason", "lock test")
		require.Equal(t, 0, r.code, "%s", r)
		id := strings.TrimSpace(r.stdout)
		require.True(t, strings.HasPrefix(id, "op-"), "--no-wait prints the task id: %s", r)

		r = d.op(t, ctx, operations.OpDrain, h2.Name)
		assert.Equal(t, 2, r.code, "%s", r)
		assert.Contains(t, r.stderr, "locked by task "+id+" (fence by api)", "the refusal names the running task: %s", r)
		h := d.showHost(t, ctx, h2.Name)
		require.NotNil(t, h.Lock, "host show names the lock")
		assert.Equal(t, id, h.Lock.TaskID)
		assert.Equal(t, node.Enabled, h.Admin, "the refused drain changed nothing")

		r = d.cli(t, ctx, nil, "task", "wait", id, "--poll-interval", "200ms")
		assert.Equal(t, 1, r.code, "a fence no level verified fails: %s", r)
		assert.Contains(t, r.stdout, "task "+id+" failed", "%s", r)
		assert.True(t, d.l.HostPowered(h2), "nothing powered host2 off")
		assert.ElementsMatch(t, before, d.l.QEMUPIDs(h2), "its VMs run on, untouched")
		h = d.showHost(t, ctx, h2.Name)
		assert.Nil(t, h.Lock, "the lock is released with the task's end")
		assert.Equal(t, node.Enabled, h.Admin, "a failed fence drains nothing")
		recs := d.history(store.Query{Host: h2.Name, Kind: "fence"})
		require.NotEmpty(t, recs)
		assert.Equal(t, "failed", recs[len(recs)-1].To, recs[len(recs)-1].Reason)
	})
}

// TestOperationsConfirmDownAndMetrics is issue 6's "done when (lab)" for
// confirm-down and /metrics, on four hosts (two silent hosts of four stay
// within the storm guard's 50%): host1 loses power and is fenced and
// evacuated automatically; host3 loses power with its BMC unreachable, is
// judged unprovable and left alone until an operator confirms it down, and
// when it comes back its stale copies are removed and it stays drained.
func TestOperationsConfirmDownAndMetrics(t *testing.T) {
	ctx := context.Background()
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chopc", Hosts: 4}, func(*lab.Lab) labconfig.Options {
		return labconfig.Options{Mode: "enforce"}
	}, opsEnv)
	hs := d.l.Hosts()
	h1, h3 := hs[0], hs[2]
	for _, s := range []struct {
		h    lab.Host
		spec lab.VMSpec
	}{
		{h1, lab.VMSpec{Name: "fa", Shared: true}}, {h1, lab.VMSpec{Name: "fb", Shared: true}}, {h1, lab.VMSpec{Name: "fl"}},
		{h3, lab.VMSpec{Name: "ca", Shared: true}}, {h3, lab.VMSpec{Name: "cb", Shared: true}},
	} {
		_, err := d.l.CreateVM(ctx, s.h, s.spec)
		require.NoError(t, err)
	}
	for _, hn := range []struct {
		h     lab.Host
		names []string
	}{{h1, []string{"fa", "fb", "fl"}}, {h3, []string{"ca", "cb"}}} {
		h, names := hn.h, hn.names
		mirror := filepath.Join(d.l.SharedDir(), "chime-fence", "domains", h.Name)
		for _, n := range names {
			u := domainUUID(t, ctx, d.l, h, n)
			require.Eventually(t, func() bool { _, err := os.Stat(filepath.Join(mirror, u+".xml")); return err == nil },
				10*time.Second, 50*time.Millisecond, "the inventory mirror holds %s", n)
		}
	}
	d.waitActive(t, h1.Name, 3)
	d.waitActive(t, h3.Name, 2)

	m0 := d.scrapeMetrics(t, ctx)
	assert.Equal(t, 0.0, metric(t, m0, `chime_fence_fences_total{result="verified"}`), "no fence yet")

	t.Run("6 metrics after a power loss: fence verified by level, evacuation and its VMs", func(t *testing.T) {
		require.NoError(t, d.l.PowerLoss(ctx, h1))
		require.Eventually(t, func() bool {
			return len(d.history(store.Query{Host: h1.Name, Kind: "evacuation"})) > 0
		}, 60*time.Second, 100*time.Millisecond, "host1 evacuated; daemon log:\n%s", tail(d.log(), 40))
		for _, n := range []string{"fa", "fb"} {
			w := where(ctx, d.l, n)
			require.Len(t, w, 1, n)
			assert.NotEqual(t, h1.Name, w[0], n)
		}
		m := d.scrapeMetrics(t, ctx)
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_fences_total{result="verified"}`))
		assert.Equal(t, 0.0, metric(t, m, `chime_fence_fences_total{result="failed"}`))
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_fence_attempts_total{level="ipmi",result="verified"}`), "attempts by level")
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_fence_attempt_duration_seconds_count{level="ipmi",result="verified"}`))
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_fence_duration_seconds_count{result="verified"}`))
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_evacuations_total{state="partial"}`), "partial: the local-disk VM stays")
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_evacuation_duration_seconds_count{state="partial"}`))
		assert.Equal(t, 2.0, metric(t, m, `chime_fence_evacuated_vms_total{result="running"}`))
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_evacuated_vms_total{result="not_moved"}`))
		assert.Equal(t, 0.0, metric(t, m, `chime_fence_evacuated_vms_total{result="failed"}`))
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_hosts_by_monitor_state{state="unreachable"}`))
		assert.Equal(t, 0.0, metric(t, m, `chime_fence_fences_in_flight`))
		assert.Equal(t, 0.0, metric(t, m, `chime_fence_storm_paused`), "one silent host of four")
		assert.Less(t, metric(t, m, fmt.Sprintf(`chime_fence_heartbeat_age_seconds{host=%q}`, hs[1].Name)), 5.0, "a live host's heartbeat is fresh")
		assert.Greater(t, metric(t, m, fmt.Sprintf(`chime_fence_heartbeat_age_seconds{host=%q}`, h1.Name)),
			metric(t, m, fmt.Sprintf(`chime_fence_heartbeat_age_seconds{host=%q}`, hs[1].Name)), "the dead host's is older")
	})

	t.Run("5 confirm-down of an unprovable host unlocks its evacuation, recorded with reason and actor", func(t *testing.T) {
		// host3 runs ca, cb and whatever host1's evacuation put there.
		victims := []string{"ca", "cb"}
		for _, n := range []string{"fa", "fb"} {
			if slices.Equal(where(ctx, d.l, n), []string{h3.Name}) {
				victims = append(victims, n)
			}
		}
		require.NoError(t, d.l.BlockBMC(ctx, h3))
		require.NoError(t, d.l.PowerLoss(ctx, h3))
		s := d.waitHost(h3.Name, "unprovable", 20*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.Unprovable })
		assert.Equal(t, node.Unreachable, s.Monitor)
		time.Sleep(3 * time.Second) // several detection windows: still nothing done
		assert.Empty(t, d.history(store.Query{Host: h3.Name, Kind: "fence"}), "an unprovable host is never fenced")
		for n, w := range runningOn(ctx, d.l, victims...) {
			assert.Empty(t, w, "%s: an unprovable host is not evacuated", n)
		}
		assert.Equal(t, node.Enabled, d.status(h3.Name).Admin)

		// Without a reason the CLI refuses before asking the daemon.
		r := d.cli(t, ctx, nil, "host", "confirm-down", h3.Name, "--yes")
		assert.Equal(t, 2, r.code, "%s", r)
		assert.Contains(t, r.stderr, "reason", "%s", r)
		// Nor may a rebuild start: host3 is not drained.
		r = d.op(t, ctx, operations.OpRebuild, h3.Name)
		assert.Equal(t, 2, r.code, "%s", r)
		assert.Contains(t, r.stderr, "drained", "%s", r)

		const why = "pulled both power cords of host3, rack B7"
		r = d.op(t, ctx, operations.OpConfirmDown, h3.Name, "--reason", why)
		require.Equal(t, 0, r.code, "%s\ndaemon log:\n%s", r, tail(d.log(), 40))
		for _, n := range victims {
			assert.Contains(t, vmLine(r.stdout, n), "done", "%s: %s", n, r)
			w := where(ctx, d.l, n)
			require.Len(t, w, 1, "%s runs exactly once", n)
			assert.NotContains(t, []string{h1.Name, h3.Name}, w[0], n)
		}
		assert.Contains(t, r.stdout, "by api", "the task names the actor: %s", r)

		// The history, through the CLI: the confirmation with who and why.
		r = d.cli(t, ctx, nil, "history", h3.Name, "--kind", "fence", "-o", "json")
		require.Equal(t, 0, r.code, "%s", r)
		var recs []store.Record
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &recs), "%s", r)
		require.Len(t, recs, 1, "one fence record: the confirmation; %s", r)
		assert.Equal(t, "confirmed", recs[0].To)
		assert.Contains(t, recs[0].Reason, why)
		assert.Contains(t, recs[0].Reason, "confirmed down by api", "the actor is the token's name")
		ops := d.history(store.Query{Host: h3.Name, Kind: operations.HistoryKind})
		require.NotEmpty(t, ops)
		var found bool
		for _, o := range ops {
			if strings.Contains(o.Reason, why) && strings.Contains(o.Reason, "api") {
				found = true
			}
		}
		assert.True(t, found, "the operation's history records carry reason and actor: %v", ops)
		assert.Equal(t, node.Drained, d.status(h3.Name).Admin, "a confirmed-down host is drained")

		m := d.scrapeMetrics(t, ctx)
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_fences_total{result="verified"}`), "a confirmation is not a fence run")
		assert.Equal(t, 1.0, metric(t, m, `chime_fence_evacuations_total{state="done"}`), "host3's evacuation")
		assert.Equal(t, float64(2+len(victims)), metric(t, m, `chime_fence_evacuated_vms_total{result="running"}`))

		// host3 was in fact only cut off from its BMC: it comes back. Its
		// agent starts nothing (drained) and its stale copies go.
		require.NoError(t, d.l.UnblockBMC(ctx, h3))
		require.NoError(t, d.l.PowerOn(ctx, h3))
		d.waitHost(h3.Name, "heartbeating again", 60*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })
		time.Sleep(2 * time.Second) // reconcile intervals of the returned agent
		for n, w := range runningOn(ctx, d.l, victims...) {
			assert.Len(t, w, 1, "%s still runs exactly once", n)
			assert.NotContains(t, w, h3.Name, n)
		}
		doms, err := d.l.Domains(ctx, h3)
		require.NoError(t, err)
		for _, n := range victims {
			assert.NotContains(t, doms, n, "the stale copy of %s is undefined on the returning host", n)
		}
		assert.Equal(t, node.Drained, d.status(h3.Name).Admin, "it stays drained until an operator enables it")
	})
}
