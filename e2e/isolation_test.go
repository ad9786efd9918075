package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
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
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/store"
)

// TestIsolationPolicies is issue 12's "done when" 1 on one lab of three
// hosts, each hung in turn (all traffic dropped, every process stopped, the
// BMC still reads on):
//
//   - host1, on_isolation fence: in observe mode only "would fence"; a
//     SIGHUP to enforce fences it (BMC reads Off), then its shared VMs run
//     once elsewhere. Powered on by hand, it comes back drained without
//     them.
//   - host3, on_isolation alert: nothing moves, nothing is powered off.
//   - host2, on_isolation reboot: powered off (verified), on again; its VMs
//     run once elsewhere; it comes back drained, its stale domains undefined.
//
// No disk is ever held by two QEMU processes: the hung QEMUs are dead
// before any copy starts elsewhere.
func TestIsolationPolicies(t *testing.T) {
	ctx := context.Background()
	var hook *webhook
	var opts labconfig.Options
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chiso", Hosts: 3}, func(l *lab.Lab) labconfig.Options {
		hook = startWebhook(t, l)
		hs := l.Hosts()
		opts = labconfig.Options{Mode: "observe", Extra: hook.configBlock(), HostIsolation: map[string]labconfig.Isolation{
			hs[0].Name: {On: "fence", Grace: "2s"},
			hs[1].Name: {On: "reboot", Grace: "2s"},
			hs[2].Name: {On: "alert", Grace: "1s"},
		}}
		return opts
	}, recoveryEnv)
	hs := d.l.Hosts()
	h1, h2, h3 := hs[0], hs[1], hs[2]

	vms := map[string][]string{h1.Name: {"isof1", "isof2"}, h2.Name: {"isor1", "isor2"}, h3.Name: {"isoa1"}}
	var disks, all []string
	uuids := map[string]string{}
	for _, h := range hs {
		for _, name := range vms[h.Name] {
			vm, err := d.l.CreateVM(ctx, h, lab.VMSpec{Name: name, Shared: true})
			require.NoError(t, err)
			uuids[name] = domainUUID(t, ctx, d.l, h, name)
			disks, all = append(disks, vm.Disk), append(all, name)
		}
	}
	for _, h := range hs {
		n := len(vms[h.Name])
		d.waitHost(h.Name, "reporting its VMs", 10*time.Second, func(s daemon.HostStatus) bool { return s.Domains == n })
	}
	require.Eventually(t, func() bool {
		for _, h := range hs {
			for _, name := range vms[h.Name] {
				if _, err := os.Stat(filepath.Join(d.l.SharedDir(), "chime-fence", "domains", h.Name, uuids[name]+".xml")); err != nil {
					return false
				}
			}
		}
		return true
	}, 15*time.Second, 50*time.Millisecond, "the inventory mirror holds every domain's XML")
	time.Sleep(1500 * time.Millisecond) // two load samples of every target
	watch := watchDisks(d.l, disks)
	onceElsewhere := func(names []string, not string) bool {
		for _, n := range names {
			if w := where(ctx, d.l, n); len(w) != 1 || w[0] == not {
				return false
			}
		}
		return true
	}
	lastFence := func(host string) (store.Record, bool) {
		recs := d.history(store.Query{Host: host, Kind: "fence"})
		if len(recs) == 0 {
			return store.Record{}, false
		}
		return recs[len(recs)-1], true
	}

	// host1, observe: the fence falls due and is only recorded.
	require.NoError(t, d.l.Hang(ctx, h1))
	hung := time.Now()
	require.Eventually(t, func() bool {
		for _, r := range d.history(store.Query{Host: h1.Name, Kind: "would-fence"}) {
			if r.To == "isolation-fence" {
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond, "observe mode records the isolation fence it would do; log:\n%s", d.log())
	due := time.Since(hung)
	assert.Empty(t, d.history(store.Query{Host: h1.Name, Kind: "fence"}), "observe fences nothing")
	assert.True(t, d.l.HostPowered(h1))

	// SIGHUP to enforce: the decision already made is acted on.
	opts.Mode, opts.Tokens, opts.TokenDir, opts.Detection = "enforce", true, d.tokens, detectionBlock
	_, err := labconfig.Write(d.l, d.cfg, opts)
	require.NoError(t, err)
	require.NoError(t, d.daemon.Process.Signal(syscall.SIGHUP))
	reload := time.Now()
	var f1 store.Record
	require.Eventually(t, func() bool {
		r, ok := lastFence(h1.Name)
		f1 = r
		return ok && r.To != "fencing"
	}, 30*time.Second, 50*time.Millisecond, "host1 is fenced after the switch to enforce; log:\n%s", d.log())
	require.Equal(t, "verified", f1.To, f1.Reason)
	offAfter := f1.At.Sub(reload)
	assert.False(t, d.l.HostPowered(h1), "the BMC reads Off")
	require.Eventually(t, func() bool { return onceElsewhere(vms[h1.Name], h1.Name) }, 30*time.Second, 50*time.Millisecond,
		"host1's VMs run once elsewhere; log:\n%s", d.log())
	runAfter := time.Since(reload)
	assert.Contains(t, d.log(), "config reload: mode observe → enforce")
	fencing := d.history(store.Query{Host: h1.Name, Kind: "fence"})
	require.NotEmpty(t, fencing)
	assert.Contains(t, fencing[0].Reason, "isolated or hung for", "the fence names its cause")
	t.Logf("host1 (fence): hang → would-fence in observe %s; SIGHUP to enforce → Off verified %s → its %d VMs running %s",
		due.Round(time.Millisecond), offAfter.Round(time.Millisecond), len(vms[h1.Name]), runAfter.Round(time.Millisecond))

	// host1 powered on by hand: back drained, its stale copies undefined.
	require.NoError(t, d.l.PowerOn(ctx, h1))
	d.waitHost(h1.Name, "heartbeating again", 30*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })
	assert.Equal(t, node.Drained, d.status(h1.Name).Admin)
	require.Eventually(t, func() bool {
		doms, err := d.l.Domains(ctx, h1)
		return err == nil && !hasAny(doms, vms[h1.Name])
	}, 15*time.Second, 100*time.Millisecond, "host1's stale domains are undefined")

	// host3, alert: nothing moves.
	before := d.l.QEMUPIDs(h3)
	require.NoError(t, d.l.Hang(ctx, h3))
	d.waitHost(h3.Name, "isolated-or-hung", 15*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.IsolatedOrHung })
	time.Sleep(4 * time.Second) // 1 s grace, and then some
	// An operator's confirm-down against the daemon's own evidence (the BMC
	// reads power on during this silence) is refused, not acted on.
	r := d.op(t, ctx, operations.OpConfirmDown, h3.Name, "--reason", "looks dead to me")
	assert.Equal(t, 2, r.code, "%s", r)
	assert.Contains(t, r.stderr, "BMC read power on", "%s", r)
	assert.Contains(t, r.stderr, "--force", "%s", r)
	assert.Empty(t, d.history(store.Query{Host: h3.Name, Kind: "fence"}), "on_isolation alert never fences")
	assert.True(t, d.l.HostPowered(h3))
	require.NoError(t, d.l.Unhang(ctx, h3))
	d.waitHost(h3.Name, "normal again", 15*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })
	assert.ElementsMatch(t, before, d.l.QEMUPIDs(h3), "its VMs keep running, untouched")
	assert.Equal(t, []string{h3.Name}, where(ctx, d.l, "isoa1"))

	// host2, reboot: off (verified), on again, its VMs elsewhere.
	var onH2 []string
	for _, n := range all {
		if slices.Equal(where(ctx, d.l, n), []string{h2.Name}) {
			onH2 = append(onH2, n)
		}
	}
	require.NotEmpty(t, onH2)
	boot, err := d.l.BootID(h2)
	require.NoError(t, err)
	require.NoError(t, d.l.Hang(ctx, h2))
	hung = time.Now()
	var f2 store.Record
	require.Eventually(t, func() bool {
		r, ok := lastFence(h2.Name)
		f2 = r
		return ok && r.To != "fencing"
	}, 30*time.Second, 50*time.Millisecond, "host2 is fenced; log:\n%s", d.log())
	require.Equal(t, "verified", f2.To, f2.Reason)
	assert.Contains(t, f2.Reason, "powered back on")
	fenced := f2.At.Sub(hung)
	require.Eventually(t, func() bool { return onceElsewhere(onH2, h2.Name) }, 30*time.Second, 50*time.Millisecond,
		"host2's VMs run once elsewhere; log:\n%s", d.log())
	running := time.Since(hung)
	require.Eventually(t, func() bool { b, err := d.l.BootID(h2); return err == nil && b != boot }, 30*time.Second, 100*time.Millisecond,
		"host2 is powered on again with a new boot id")
	d.waitHost(h2.Name, "heartbeating again", 30*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })
	assert.Equal(t, node.Drained, d.status(h2.Name).Admin, "back drained")
	require.Eventually(t, func() bool {
		doms, err := d.l.Domains(ctx, h2)
		return err == nil && !hasAny(doms, onH2)
	}, 15*time.Second, 100*time.Millisecond, "host2's stale domains are undefined")
	t.Logf("host2 (reboot): hang → Off verified and powered on %s → its %d VMs running %s", fenced.Round(time.Millisecond),
		len(onH2), running.Round(time.Millisecond))

	for _, n := range all {
		assert.Len(t, where(ctx, d.l, n), 1, "%s runs exactly once", n)
	}
	violations, samples := watch.finish()
	assert.Empty(t, violations, "two QEMU processes held one disk")
	assert.Greater(t, samples, 10)
	// The alerts of a host-down fence. Once the fenced host's BMC reads Off
	// the verdict turns host-down, and that repeated verdict replays the
	// finished evacuation (no second fence, no second plan), as a
	// repeated host-down verdict does.
	for _, h := range []string{h1.Name, h2.Name} {
		require.Eventually(t, func() bool {
			got := filter(hook.types(h), alert.FenceStarted, alert.FenceSucceeded, alert.FenceFailed, alert.EvacuationStarted,
				alert.EvacuationPartial, alert.EvacuationFinished)
			return len(got) >= 4 && slices.Equal([]string{alert.FenceStarted, alert.FenceSucceeded, alert.EvacuationStarted, alert.EvacuationFinished}, got[:4])
		}, 10*time.Second, 50*time.Millisecond, "webhook events for %s: %v", h, hook.types(h))
		types := hook.types(h)
		assert.Len(t, filter(types, alert.FenceStarted), 1, "one fence of %s: %v", h, types)
		assert.Empty(t, filter(types, alert.FenceFailed, alert.EvacuationPartial), "%s: %v", h, types)
		assert.Len(t, d.history(store.Query{Host: h, Kind: "evacuation-plan"}), 1, "one plan for %s", h)
	}
	assert.Empty(t, filter(hook.types(h3.Name), alert.FenceStarted), "no fence of host3")
}

func hasAny(doms map[string]string, names []string) bool {
	for _, n := range names {
		if _, ok := doms[n]; ok {
			return true
		}
	}
	return false
}
