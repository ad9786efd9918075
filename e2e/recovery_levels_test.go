package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// eventsOf returns the received events of host with type typ, in order.
func (w *webhook) eventsOf(host, typ string) []alert.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []alert.Event
	for _, e := range w.events {
		if e.Host == host && e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// assertSecretsAbsent checks the daemon log and every alert body for each
// secret (the wrong IPMI password the test configured, the lab's real one).
func (w *webhook) assertSecretsAbsent(t *testing.T, d *detectionLab, secrets map[string]string) {
	t.Helper()
	logText := d.log()
	require.NotEmpty(t, logText, "the daemon log is where a leak would be")
	w.mu.Lock()
	bodies := append([][]byte(nil), w.bodies...)
	w.mu.Unlock()
	require.NotEmpty(t, bodies)
	for what, s := range secrets {
		require.NotEmpty(t, s, what)
		assert.NotContains(t, logText, s, "the %s is in the daemon log", what)
		for _, b := range bodies {
			assert.NotContains(t, string(b), s, "the %s is in an alert body", what)
		}
	}
}

// wrongPassword writes a random password the lab's BMCs do not accept to a
// 0600 file outside the lab directory (lab.Start wipes that).
func wrongPassword(t *testing.T) (file, password string) {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	password = "wrong" + hex.EncodeToString(b[:])
	file = filepath.Join(t.TempDir(), "wrong-ipmi-password")
	require.NoError(t, os.WriteFile(file, []byte(password+"\n"), 0o600))
	return file, password
}

func readPassword(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// createSharedVMs starts shared-disk VMs on h and waits until the daemon
// has their XML mirrored on shared storage, so an evacuation could run.
func createSharedVMs(t *testing.T, ctx context.Context, d *detectionLab, h lab.Host, names ...string) (disks []string) {
	t.Helper()
	uuids := map[string]string{}
	for _, n := range names {
		vm, err := d.l.CreateVM(ctx, h, lab.VMSpec{Name: n, Shared: true})
		require.NoError(t, err)
		uuids[n] = domainUUID(t, ctx, d.l, h, n)
		disks = append(disks, vm.Disk)
	}
	d.waitHost(h.Name, fmt.Sprintf("reporting its %d VMs", len(names)), 20*time.Second,
		func(s daemon.HostStatus) bool { return s.Domains == len(names) })
	mirror := filepath.Join(d.l.SharedDir(), "chime-fence", "domains", h.Name)
	require.Eventually(t, func() bool {
		for _, u := range uuids {
			if _, err := os.Stat(filepath.Join(mirror, u+".xml")); err != nil {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "the inventory mirror holds every domain's XML")
	time.Sleep(1500 * time.Millisecond) // two load samples of every target
	return disks
}

// stopDaemonWithin stops the lab daemon as stopDaemon does, but a daemon
// still running `within` after SIGTERM fails the test with its goroutine
// dump (SIGQUIT) instead of hanging the test binary until its timeout.
// Register it after startDetectionLabWith so it runs before stopDaemon.
func stopDaemonWithin(t *testing.T, d *detectionLab, within time.Duration) {
	t.Helper()
	cmd := d.daemon
	if cmd == nil || cmd.Process == nil {
		return
	}
	d.daemon = nil // stopDaemon then has nothing left to do
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(within):
	}
	_ = cmd.Process.Signal(syscall.SIGQUIT) // the Go runtime dumps every goroutine to the log
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	t.Errorf("the daemon did not exit within %s of SIGTERM; log tail with its goroutines:\n%s", within, tail(d.log(), 300))
}

// attemptsOf decodes a fence record's evidence: the fencer's attempts.
func attemptsOf(t *testing.T, r store.Record) []fencer.Attempt {
	t.Helper()
	var as []fencer.Attempt
	require.NoError(t, json.Unmarshal(r.Evidence, &as), "fence evidence: %s", r.Evidence)
	return as
}

// detailAttempts decodes an alert's details.attempts.
func detailAttempts(t *testing.T, ev alert.Event) []fencer.Attempt {
	t.Helper()
	b, err := json.Marshal(ev.Details["attempts"])
	require.NoError(t, err)
	var as []fencer.Attempt
	require.NoError(t, json.Unmarshal(b, &as), "details.attempts: %s", b)
	return as
}

func levelsOf(as []fencer.Attempt) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Level)
	}
	return out
}

// bmcAuthFailed is power.KindAuth's text, which the IPMI driver's errors
// carry when the BMC refuses the password.
const bmcAuthFailed = "bmc-auth-failed"

// TestRecoveryFenceLevelFallback is issue 5's "done when" 2: the power loss
// of a host whose first fence level (IPMI) has a wrong password and whose
// second (Redfish) works. The fence is verified through redfish, the
// evidence and the fence.succeeded alert name the ipmi level's auth
// failure, the VMs run elsewhere exactly once, and neither password ever
// appears in the daemon log or an alert.
func TestRecoveryFenceLevelFallback(t *testing.T) {
	ctx := context.Background()
	var hook *webhook
	wrongFile, wrong := wrongPassword(t)
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chlvl2", Hosts: 3, BMCTypes: []string{lab.BMCBoth}},
		func(l *lab.Lab) labconfig.Options {
			hook = startWebhook(t, l)
			h1 := l.Hosts()[0]
			return labconfig.Options{Mode: "enforce", Extra: hook.configBlock(),
				BMCPasswordFiles: map[string]string{labconfig.BMCKey(h1.Name, lab.BMCIPMI): wrongFile}}
		}, recoveryEnv)
	t.Cleanup(func() { stopDaemonWithin(t, d, 20*time.Second) })
	h1 := d.l.Hosts()[0]
	require.Equal(t, lab.BMCBoth, h1.BMCType())
	real := readPassword(t, h1.BMC.PasswordFile)
	require.NotEqual(t, real, wrong)

	vms := []string{"vmf1", "vmf2"}
	disks := createSharedVMs(t, ctx, d, h1, vms...)
	watch := watchDisks(d.l, disks)
	t0 := time.Now()
	require.NoError(t, d.l.PowerLoss(ctx, h1))
	require.Eventually(t, func() bool {
		for _, n := range vms {
			if w := where(ctx, d.l, n); len(w) != 1 || w[0] == h1.Name {
				return false
			}
		}
		return true
	}, 60*time.Second, 50*time.Millisecond, "the VMs run elsewhere; daemon log:\n%s", tail(d.log(), 40))
	allRunning := time.Since(t0)
	violations, samples := watch.finish()
	assert.Empty(t, violations, "two QEMU processes held one disk")
	assert.Greater(t, samples, 10)

	// The history: fencing through [ipmi redfish], verified by redfish;
	// the evidence shows ipmi refused the password, redfish verified.
	fences := d.history(store.Query{Host: h1.Name, Kind: "fence"})
	require.Len(t, fences, 2, "one fence: started and verified: %v", kindsOf(fences))
	assert.Equal(t, "fencing", fences[0].To)
	assert.Contains(t, fences[0].Reason, "levels [ipmi redfish]")
	last := fences[1]
	require.Equal(t, "verified", last.To, last.Reason)
	assert.Contains(t, last.Reason, "redfish verified power off", "verified through the redfish level")
	assert.Contains(t, last.Reason, "(after ipmi failed: power off: host host1: ipmi: chassis power off: bmc-auth-failed", "the record says the first level failed and why")
	as := attemptsOf(t, last)
	require.Equal(t, []string{"ipmi", "redfish"}, levelsOf(as), "one attempt per level (level_retries 0; auth is not retried anyway)")
	assert.False(t, as[0].Verified)
	assert.Contains(t, as[0].Err, bmcAuthFailed, "the ipmi level failed on the password")
	assert.True(t, as[1].Verified)
	assert.Empty(t, as[1].Err)
	assert.Positive(t, as[1].Reads, "verified by reading power back")
	fenceVerified := last.At.Sub(t0)

	on, err := d.l.BMCPowerVia(ctx, h1, lab.BMCRedfish)
	require.NoError(t, err)
	assert.False(t, on, "the host is off")
	d.waitHost(h1.Name, "drained by the fence", 10*time.Second, func(s daemon.HostStatus) bool { return s.Admin == node.Drained })

	var evac store.Record
	require.Eventually(t, func() bool {
		recs := d.history(store.Query{Host: h1.Name, Kind: "evacuation"})
		if len(recs) == 0 {
			return false
		}
		evac = recs[len(recs)-1]
		return true
	}, 20*time.Second, 50*time.Millisecond)
	assert.Equal(t, "done", evac.To, evac.Reason)
	assert.Contains(t, evac.Reason, "2 running elsewhere, 0 failed, 0 not moved")

	// The webhook: started (both levels), succeeded (redfish, with the
	// ipmi attempt and its error), then the evacuation.
	want := []string{alert.FenceStarted, alert.FenceSucceeded, alert.EvacuationStarted, alert.EvacuationFinished}
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(want, filter(hook.types(h1.Name), append(want, alert.FenceFailed, alert.EvacuationPartial)...))
	}, 20*time.Second, 50*time.Millisecond, "webhook events for %s: %v", h1.Name, hook.types(h1.Name))
	started := hook.eventsOf(h1.Name, alert.FenceStarted)[0]
	assert.Equal(t, []any{"ipmi", "redfish"}, started.Details["levels"])
	ok := hook.eventsOf(h1.Name, alert.FenceSucceeded)[0]
	assert.Equal(t, "redfish", ok.Details["level"])
	assert.Contains(t, ok.Summary, "redfish verified power off")
	assert.Contains(t, ok.Summary, "(after ipmi failed: power off: host host1: ipmi: chassis power off: bmc-auth-failed", "the alert names the broken first level")
	das := detailAttempts(t, ok)
	require.Equal(t, []string{"ipmi", "redfish"}, levelsOf(das), "fence.succeeded names both levels through its attempts")
	assert.Contains(t, das[0].Err, bmcAuthFailed)
	assert.False(t, das[0].Verified)
	assert.True(t, das[1].Verified)
	assert.Equal(t, last.CorrelationID, ok.CorrelationID)
	hook.mu.Lock()
	assert.Empty(t, hook.bad, "every delivery carries a valid signature")
	hook.mu.Unlock()

	for _, n := range vms {
		assert.Len(t, where(ctx, d.l, n), 1, "%s runs exactly once", n)
	}
	hook.assertSecretsAbsent(t, d, map[string]string{"wrong IPMI password": wrong, "real BMC password": real})
	t.Logf("power loss → fence verified via redfish after ipmi auth failure %s, → %d VMs running %s (window %s)",
		fenceVerified.Round(time.Millisecond), len(vms), allRunning.Round(time.Millisecond), detInterval*detMisses)
}

// TestRecoveryEveryLevelFails is issue 5's "done when" 4: a dead host whose
// every fence level fails (ipmi: wrong password; agent-drain: the agent
// died with the host) while its Redfish BMC, which is no fence level,
// still reads power off for the detector. The fence fails, the record and
// the fence.failed alert say which levels failed and why, nothing is
// drained or moved, and it stays that way past min_fence_interval with at
// most one (failing) fence per host-down verdict.
func TestRecoveryEveryLevelFails(t *testing.T) {
	ctx := context.Background()
	var hook *webhook
	wrongFile, wrong := wrongPassword(t)
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chlvl4", Hosts: 3, BMCTypes: []string{lab.BMCBoth}},
		func(l *lab.Lab) labconfig.Options {
			hook = startWebhook(t, l)
			h1 := l.Hosts()[0]
			return labconfig.Options{Mode: "enforce", Extra: hook.configBlock(),
				BMCPasswordFiles: map[string]string{labconfig.BMCKey(h1.Name, lab.BMCIPMI): wrongFile},
				HostLevels:       map[string][]string{h1.Name: {labconfig.LevelIPMI, labconfig.LevelAgentDrain}}}
		}, recoveryEnv)
	t.Cleanup(func() { stopDaemonWithin(t, d, 20*time.Second) })
	hs := d.l.Hosts()
	h1 := hs[0]
	real := readPassword(t, h1.BMC.PasswordFile)

	vms := []string{"vmn1", "vmn2"}
	createSharedVMs(t, ctx, d, h1, vms...)
	require.NoError(t, d.l.PowerLoss(ctx, h1))
	var fences []store.Record
	require.Eventually(t, func() bool {
		fences = d.history(store.Query{Host: h1.Name, Kind: "fence"})
		return len(fences) > 0 && fences[len(fences)-1].To == "failed"
	}, 60*time.Second, 100*time.Millisecond, "the fence fails; daemon log:\n%s", tail(d.log(), 40))
	require.Len(t, fences, 2, "one fence: started and failed: %v", kindsOf(fences))
	assert.Contains(t, fences[0].Reason, "levels [ipmi agent-drain]")
	failed := fences[1]
	assert.Contains(t, failed.Reason, "FAILED, nothing evacuated")
	// fencer.Run's reason: "LEVEL: why" per level, in order, "; "-joined.
	ipmiAt, drainAt := strings.Index(failed.Reason, "ipmi: "), strings.Index(failed.Reason, "agent-drain: agent drain: ")
	require.True(t, ipmiAt >= 0 && drainAt > ipmiAt, "the reason names each level in order: %s", failed.Reason)
	assert.Contains(t, failed.Reason[ipmiAt:drainAt], bmcAuthFailed, "ipmi failed on the password")
	as := attemptsOf(t, failed)
	require.Equal(t, []string{"ipmi", "agent-drain"}, levelsOf(as))
	for _, a := range as {
		assert.False(t, a.Verified, "%s", a.Level)
		assert.NotEmpty(t, a.Err, "%s says why", a.Level)
	}
	assert.Contains(t, as[0].Err, bmcAuthFailed)
	assert.Contains(t, as[1].Err, "agent drain")

	// The alert: fence.failed whose details carry the fencer's reason
	// (the record's reason wraps the same text) and both attempts.
	require.Eventually(t, func() bool { return len(hook.eventsOf(h1.Name, alert.FenceFailed)) == 1 },
		20*time.Second, 50*time.Millisecond, "webhook events for %s: %v", h1.Name, hook.types(h1.Name))
	ff := hook.eventsOf(h1.Name, alert.FenceFailed)[0]
	assert.Equal(t, "critical", ff.Severity)
	assert.Equal(t, failed.CorrelationID, ff.CorrelationID)
	assert.Equal(t, failed.Reason, ff.Summary)
	why, _ := ff.Details["reason"].(string)
	require.NotEmpty(t, why, "details.reason: %v", ff.Details)
	assert.Contains(t, failed.Reason, why)
	assert.Contains(t, why, "ipmi: ")
	assert.Contains(t, why, bmcAuthFailed)
	assert.Contains(t, why, "agent-drain: ")
	assert.Equal(t, []string{"ipmi", "agent-drain"}, levelsOf(detailAttempts(t, ff)))
	t.Logf("fence failed: %s", why)

	nothingMoved := func(when string) {
		t.Helper()
		assert.Empty(t, d.history(store.Query{Host: h1.Name, Kind: "evacuation"}), "%s: no evacuation", when)
		for _, ty := range []string{alert.EvacuationStarted, alert.EvacuationFinished, alert.EvacuationPartial, alert.FenceSucceeded} {
			assert.Empty(t, hook.eventsOf(h1.Name, ty), "%s: no %s alert", when, ty)
		}
		for _, n := range vms {
			assert.Empty(t, where(ctx, d.l, n), "%s: %s runs nowhere (its host is off and it was not moved)", when, n)
		}
		for _, h := range hs[1:] {
			doms, err := d.l.Domains(ctx, h)
			require.NoError(t, err)
			for _, n := range vms {
				assert.NotContains(t, doms, n, "%s: %s is not even defined on %s", when, n, h.Name)
			}
		}
		s := d.status(h1.Name)
		assert.Equal(t, node.Enabled, s.Admin, "%s: a host no level fenced is not drained", when)
		// Unprovable too: a BMC read that fails proves nothing, so the
		// verdict may leave host-down for a while; it never drains.
		assert.Contains(t, []detector.Verdict{detector.HostDown, detector.Unprovable}, s.Verdict, "%s: %s", when, s.VerdictReason)
	}
	nothingMoved("right after the failed fence")

	// Well past the policy's min_fence_interval (builtin 10 s; the lab's
	// policies leave it): still nothing moved, and no fence storm. What
	// recovery/coordinator.go implies: a failed fence is never re-queued
	// (incident returns no retry; only a gate deferral is looked at again
	// every Config.Retry). A new fence needs a new host-down verdict from
	// the detector, which is edge-triggered and keeps a conclusion while
	// its evidence is refreshed, but does move host-down → unprovable →
	// host-down when one BMC read fails. So: at most one fence per
	// host-down edge, starts at least min_fence_interval apart, each one
	// failing the same way.
	const minFenceInterval = 10 * time.Second
	time.Sleep(minFenceInterval + 10*detInterval*detMisses)
	nothingMoved("after min_fence_interval and ten windows")
	verdicts := d.history(store.Query{Host: h1.Name, Kind: "verdict"})
	var downs []time.Time
	for _, r := range verdicts {
		if r.To == detector.HostDown.String() {
			downs = append(downs, r.At)
		}
		if r.To == detector.Unprovable.String() {
			t.Logf("verdict left host-down: %s", r.Reason)
		}
	}
	var starts []store.Record
	ended := 0
	for _, r := range d.history(store.Query{Host: h1.Name, Kind: "fence"}) {
		switch r.To {
		case "fencing":
			starts = append(starts, r)
		case "failed":
			ended++
			assert.Contains(t, r.Reason, bmcAuthFailed, "every fence fails the same way")
			assert.Contains(t, r.Reason, "agent-drain: ")
		default:
			t.Errorf("fence record %s>%s: %s", r.From, r.To, r.Reason)
		}
	}
	require.NotEmpty(t, downs)
	assert.LessOrEqual(t, len(starts), len(downs), "at most one fence per host-down verdict: %v", kindsOf(verdicts))
	assert.Contains(t, []int{len(starts), len(starts) - 1}, ended, "every fence but one in flight has failed")
	for i := 1; i < len(starts); i++ {
		assert.GreaterOrEqual(t, starts[i].At.Sub(starts[i-1].At), minFenceInterval, "fence starts are min_fence_interval apart")
	}
	require.Eventually(t, func() bool { return len(hook.eventsOf(h1.Name, alert.FenceStarted)) == len(starts) },
		10*time.Second, 50*time.Millisecond, "one fence.started per fence")
	t.Logf("%d host-down verdict(s), %d fence(s), %d failed, over %s after the first verdict",
		len(downs), len(starts), ended, time.Since(downs[0]).Round(time.Second))

	on, err := d.l.BMCPowerVia(ctx, h1, lab.BMCRedfish)
	require.NoError(t, err)
	assert.False(t, on, "the host is still off (nobody powered it on)")
	hook.mu.Lock()
	assert.Empty(t, hook.bad, "every delivery carries a valid signature")
	hook.mu.Unlock()
	hook.assertSecretsAbsent(t, d, map[string]string{"wrong IPMI password": wrong, "real BMC password": real})
}
