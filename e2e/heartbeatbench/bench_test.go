package heartbeatbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/blackhole"
)

// TestRun runs the whole bench, small, against the real daemon: its own
// namespace, real heartbeats, real detection, and nothing left behind.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	bin := filepath.Join(t.TempDir(), "chime-fence")
	build := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "github.com/chimestack/chime-fence/cmd/chime-fence")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build chime-fence: %s", out)

	for _, tr := range []string{TransportUDP, TransportHTTP} {
		t.Run("small run over "+tr+" meets the semantics", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var progress strings.Builder
			o := Options{Daemon: bin, Hosts: 300, Duration: 8 * time.Second, Warmup: 3 * time.Second,
				Stop: 10, Domains: 1, Settle: 2 * time.Second, Seed: 3, Progress: &progress}
			if tr != TransportUDP {
				o.Transport = tr // UDP is the default
			}
			rep, err := Run(ctx, o)
			t.Log(progress.String())
			require.NoError(t, err)
			var table strings.Builder
			require.NoError(t, rep.Print(&table))
			t.Log("\n" + table.String())

			assert.Equal(t, tr, rep.Transport)
			assert.Regexp(t, `(?m)^transport +`+tr+` \(`, table.String())
			assert.Equal(t, 10, rep.Stopped)
			assert.Equal(t, 10, rep.Detection.N, "undetected: %v, never acked: %v", rep.Undetected, rep.Unmeasured)
			assert.Empty(t, rep.FalseUnreachable)
			assert.Zero(t, rep.StormRecords)
			assert.Empty(t, rep.Errors)
			assert.GreaterOrEqual(t, rep.Detection.P50, rep.Window, "nothing is unreachable before the window has passed")
			assert.Positive(t, rep.Throughput)
			assert.Positive(t, rep.DaemonCPU)
			assert.Positive(t, rep.DaemonPeakRSS)
			assert.Positive(t, rep.AckLatency.N)
			assert.Contains(t, rep.DaemonMetrics, "go_goroutines")
			acc := rep.DaemonHeartbeats["accepted"]
			assert.GreaterOrEqual(t, acc[tr], float64(rep.AckLatency.N), "the daemon counted every acked heartbeat of the steady phase, over %s", tr)
			assert.Equal(t, acc[tr], rep.DaemonHeartbeats.Total("accepted"), "no heartbeat over another transport: %v", acc)
			assertGone(t, rep.DaemonPID)
		})
	}

	t.Run("cancel cleans up", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var progress syncWriter
		var during string
		progress.onLine = func(l string) {
			if strings.Contains(l, "load started") {
				out, _ := exec.Command("ip", "route", "get", HostAddr(1)).CombinedOutput()
				during = string(out)
				time.AfterFunc(time.Second, cancel)
			}
		}
		_, err := Run(ctx, Options{Daemon: bin, Hosts: 50, Duration: time.Minute, Warmup: 10 * time.Second, Stop: 5, Progress: &progress})
		require.ErrorIs(t, err, context.Canceled)
		out := progress.String()
		var pid int
		for l := range strings.SplitSeq(out, "\n") {
			if _, after, ok := strings.Cut(l, "daemon pid "); ok {
				fmt.Sscanf(after, "%d", &pid)
			}
		}
		require.Positive(t, pid, "progress names the daemon pid: %s", out)
		assertGone(t, pid)
		assert.Contains(t, during, "No route to host", "ip route get %s in the root namespace while the bench runs", HostAddr(1))
		if len(blackhole.Live()) == 0 {
			rs, err := blackhole.Routes(context.Background(), []string{Subnet})
			require.NoError(t, err)
			assert.Empty(t, rs, "the bench's route outlived it")
		}
	})
	// Both runs removed their namespaces.
	nets, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	assert.NotContains(t, string(nets), fmt.Sprintf("chime-hbbench-%d", os.Getpid()))
}

func assertGone(t *testing.T, pid int) {
	t.Helper()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err == nil {
		assert.NotEqual(t, "chime-fence", strings.TrimSpace(string(comm)), "daemon pid %d still runs", pid)
	}
}

// syncWriter collects progress lines and calls onLine for each.
type syncWriter struct {
	b      strings.Builder
	onLine func(string)
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.b.Write(p)
	if w.onLine != nil {
		w.onLine(string(p))
	}
	return len(p), nil
}

func (w *syncWriter) String() string { return w.b.String() }
