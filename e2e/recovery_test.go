package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// webhook is a test alert receiver listening inside the controller's
// network namespace, where the daemon runs.
type webhook struct {
	url    string
	secret []byte
	file   string // the secret, for the config

	mu     sync.Mutex
	events []alert.Event
	bad    []string // deliveries whose signature did not verify
	bodies [][]byte // every delivery as received, to assert what none carried
}

func startWebhook(t *testing.T, l *lab.Lab) *webhook {
	t.Helper()
	w := &webhook{secret: []byte("e2e-webhook-secret-" + strconv.Itoa(os.Getpid()))}
	w.file = filepath.Join(t.TempDir(), "webhook-secret")
	require.NoError(t, os.WriteFile(w.file, w.secret, 0o600))
	var ln net.Listener
	require.NoError(t, nsenter.Do(l.Controller().Netns, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(l.Controller().MgmtAddr, "0"))
		return err
	}))
	w.url = "http://" + ln.Addr().String() + "/hook"
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev alert.Event
		err := json.Unmarshal(body, &ev)
		w.mu.Lock()
		w.bodies = append(w.bodies, body)
		if !alert.Verify(w.secret, body, r.Header.Get("X-Chime-Signature")) || err != nil {
			w.bad = append(w.bad, fmt.Sprintf("%s (%v)", body, err))
		} else {
			w.events = append(w.events, ev)
		}
		w.mu.Unlock()
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return w
}

// types lists the received event types for host, in order.
func (w *webhook) types(host string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, e := range w.events {
		if e.Host == host {
			out = append(out, e.Type)
		}
	}
	return out
}

func (w *webhook) configBlock() string {
	return fmt.Sprintf("alerts:\n  webhooks:\n    - name: e2e\n      url: %s\n      secret_file: %s\n      timeout: 2s\n", w.url, w.file)
}

// diskWatch samples every host's QEMU command lines and records any moment
// at which two live QEMU processes name the same disk.
type diskWatch struct {
	mu         sync.Mutex
	violations []string
	samples    int
	stop       chan struct{}
	done       chan struct{}
}

func watchDisks(l *lab.Lab, disks []string) *diskWatch {
	w := &diskWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			holders := map[string][]string{}
			for _, h := range l.Hosts() {
				for _, p := range l.QEMUPIDs(h) {
					b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
					if err != nil {
						continue
					}
					for _, d := range disks {
						if strings.Contains(string(b), d) {
							holders[d] = append(holders[d], fmt.Sprintf("%s/pid %d", h.Name, p))
						}
					}
				}
			}
			w.mu.Lock()
			w.samples++
			for d, hs := range holders {
				if len(hs) > 1 {
					w.violations = append(w.violations, fmt.Sprintf("%s held by %v", d, hs))
				}
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *diskWatch) finish() ([]string, int) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.violations, w.samples
}

// recoveryEnv makes the lab daemon capture inventory and load often.
var recoveryEnv = []string{"CHIME_FENCE_STORAGE_INVENTORY_INTERVAL=500ms", "CHIME_FENCE_SCHEDULER_START_TIMEOUT=20s"}

// where returns the lab hosts on which the named domain is running.
func where(ctx context.Context, l *lab.Lab, name string) []string {
	var out []string
	for _, h := range l.Hosts() {
		if st, err := l.DomainState(ctx, h, name); err == nil && st == "running" {
			out = append(out, h.Name)
		}
	}
	return out
}

func domainUUID(t *testing.T, ctx context.Context, l *lab.Lab, h lab.Host, name string) string {
	t.Helper()
	out, err := l.Virsh(ctx, h, "domuuid", name)
	require.NoError(t, err)
	return strings.TrimSpace(out)
}

// TestRecoveryPowerLoss is issue 5's "done when" 1, 3 and 6: a host with
// three shared-disk VMs and one local-disk VM loses power; it is fenced
// through its BMC (verified), the three run on the other hosts, the local
// one is reported, the webhook got signed events, no disk was ever held by
// two QEMU processes; a network cut with the BMC on moves nothing; the
// fenced host powered back on destroys its stale copies and stays drained.
func TestRecoveryPowerLoss(t *testing.T) {
	ctx := context.Background()
	var hook *webhook
	d := startDetectionLabWith(t, ctx, lab.Config{Name: "chrec", Hosts: 3}, func(l *lab.Lab) labconfig.Options {
		hook = startWebhook(t, l)
		return labconfig.Options{Mode: "enforce", Extra: hook.configBlock()}
	}, recoveryEnv)
	hs := d.l.Hosts()
	h1, h2 := hs[0], hs[1]

	shared := []string{"vma", "vmb", "vmc"}
	var disks []string
	uuids := map[string]string{}
	for _, name := range append(append([]string{}, shared...), "vml") {
		vm, err := d.l.CreateVM(ctx, h1, lab.VMSpec{Name: name, Shared: name != "vml"})
		require.NoError(t, err)
		uuids[name] = domainUUID(t, ctx, d.l, h1, name)
		if name != "vml" {
			disks = append(disks, vm.Disk)
		}
	}
	d.waitHost(h1.Name, "reporting its 4 VMs", 10*time.Second, func(s daemon.HostStatus) bool { return s.Domains == 4 })
	mirror := filepath.Join(d.l.SharedDir(), "chime-fence", "domains", h1.Name)
	require.Eventually(t, func() bool {
		for _, u := range uuids {
			if _, err := os.Stat(filepath.Join(mirror, u+".xml")); err != nil {
				return false
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond, "the inventory mirror holds every domain's XML")
	time.Sleep(1500 * time.Millisecond) // two load samples of every target

	// Done when 3 (first, so the storm guard sees one silent host at a time): a network cut with the BMC on moves nothing.
	before := d.l.QEMUPIDs(h2)
	require.NoError(t, d.l.CutNetwork(ctx, h2))
	d.waitHost(h2.Name, "isolated-or-hung", 10*time.Second, func(s daemon.HostStatus) bool { return s.Verdict == detector.IsolatedOrHung })
	time.Sleep(2 * time.Second)
	assert.Empty(t, d.history(store.Query{Host: h2.Name, Kind: "fence"}), "an isolated host whose BMC says on is never fenced")
	assert.ElementsMatch(t, before, d.l.QEMUPIDs(h2), "its VMs keep running, untouched")
	require.NoError(t, d.l.RestoreNetwork(ctx, h2))
	d.waitHost(h2.Name, "normal again", 15*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })

	time.Sleep(1500 * time.Millisecond) // fresh load samples of host2
	watch := watchDisks(d.l, disks)
	t0 := time.Now()
	require.NoError(t, d.l.PowerLoss(ctx, h1))
	require.Eventually(t, func() bool {
		for _, n := range shared {
			if len(where(ctx, d.l, n)) != 1 {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "the shared-disk VMs run elsewhere; daemon log:\n%s", d.log())
	allRunning := time.Since(t0)
	for _, n := range shared {
		w := where(ctx, d.l, n)
		require.Len(t, w, 1)
		assert.NotEqual(t, h1.Name, w[0])
	}
	violations, samples := watch.finish()
	assert.Empty(t, violations, "two QEMU processes held one disk")
	assert.Greater(t, samples, 10)

	fences := d.history(store.Query{Host: h1.Name, Kind: "fence"})
	require.NotEmpty(t, fences)
	last := fences[len(fences)-1]
	assert.Equal(t, "verified", last.To, last.Reason)
	fenceVerified := last.At.Sub(t0)
	d.waitHost(h1.Name, "drained by the fence", 5*time.Second, func(s daemon.HostStatus) bool { return s.Admin == node.Drained })
	var evac store.Record
	require.Eventually(t, func() bool {
		recs := d.history(store.Query{Host: h1.Name, Kind: "evacuation"})
		if len(recs) == 0 {
			return false
		}
		evac = recs[len(recs)-1]
		return true
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, "partial", evac.To, "partial: the local-disk VM stays: %s", evac.Reason)
	assert.Contains(t, evac.Reason, "3 running elsewhere, 0 failed, 1 not moved")
	assert.Contains(t, evac.Reason, "vml", "the local-disk VM is reported")
	assert.Contains(t, evac.Reason, "local")
	require.Eventually(t, func() bool {
		ty := hook.types(h1.Name)
		return assert.ObjectsAreEqual([]string{alert.FenceStarted, alert.FenceSucceeded, alert.EvacuationStarted, alert.EvacuationPartial},
			filter(ty, alert.FenceStarted, alert.FenceSucceeded, alert.EvacuationStarted, alert.EvacuationPartial, alert.EvacuationFinished))
	}, 10*time.Second, 50*time.Millisecond, "webhook events for %s: %v", h1.Name, hook.types(h1.Name))
	hook.mu.Lock()
	assert.Empty(t, hook.bad, "every delivery carries a valid signature")
	hook.mu.Unlock()
	t.Logf("power loss → fence verified %s, → all %d shared-disk VMs running %s (window %s)",
		fenceVerified.Round(time.Millisecond), len(shared), allRunning.Round(time.Millisecond), detInterval*detMisses)

	// Done when 6: the fenced host comes back.
	require.NoError(t, d.l.PowerOn(ctx, h1))
	d.waitHost(h1.Name, "heartbeating again", 30*time.Second, func(s daemon.HostStatus) bool { return s.Monitor == node.Normal })
	doms, err := d.l.Domains(ctx, h1)
	require.NoError(t, err)
	for _, n := range shared {
		assert.NotContains(t, doms, n, "the stale copy of %s is undefined on the returning host", n)
	}
	assert.Equal(t, "shut off", doms["vml"], "the local-disk VM stays defined and stopped")
	st, err := d.client.Host(ctx, h1.Name)
	require.NoError(t, err)
	assert.Equal(t, node.Drained, st.Admin, "the fenced host stays drained until an operator enables it")
	for _, n := range shared {
		assert.Len(t, where(ctx, d.l, n), 1, "%s still runs exactly once", n)
	}
}

func filter(in []string, keep ...string) []string {
	var out []string
	for _, s := range in {
		for _, k := range keep {
			if s == k {
				out = append(out, s)
			}
		}
	}
	return out
}
