package heartbeatbench

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/store"
)

func msList(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentileNearestRank(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one value", msList(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100 is the 50th", hundred, 50, 50 * time.Millisecond},
		{"p99 of 1..100 is the 99th, not the max", hundred, 99, 99 * time.Millisecond},
		{"p100 is the max", hundred, 100, 100 * time.Millisecond},
		{"p50 of 4 is the 2nd", msList(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 4 is the max", msList(1, 2, 3, 4), 99, 4 * time.Millisecond},
		{"p50 of 3 is the middle", msList(1, 2, 3), 50, 2 * time.Millisecond},
		{"tiny p is the min", msList(5, 6, 9), 0.1, 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, Percentile(tc.sorted, tc.p))
		})
	}
}

func TestDistributionSorts(t *testing.T) {
	d := Distribution(msList(30, 10, 20, 40))
	assert.Equal(t, Dist{N: 4, P50: 20 * time.Millisecond, P99: 40 * time.Millisecond, Max: 40 * time.Millisecond}, d)
	assert.Equal(t, Dist{}, Distribution(nil))
}

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	stat := "4242 (chime fe) nce) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 5000 100000 2000"
	got, err := parseStatCPU(stat)
	require.NoError(t, err)
	assert.Equal(t, 3250*time.Millisecond, got, "(250 + 75) ticks of 10 ms")

	_, err = parseStatCPU("4242 (x) S 1 2")
	assert.ErrorContains(t, err, "want at least 13")
	_, err = parseStatCPU("no parens")
	assert.ErrorContains(t, err, "no command name")
	_, err = parseStatCPU("1 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 75 0")
	assert.ErrorContains(t, err, `"ab"`)
}

func TestCPUTimeOfThisProcess(t *testing.T) {
	before, err := CPUTime(os.Getpid())
	require.NoError(t, err)
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for {
		for i := range 1_000_000 {
			x += i
		}
		after, err := CPUTime(os.Getpid())
		require.NoError(t, err)
		if after > before {
			break
		}
		require.True(t, time.Now().Before(deadline), "CPU time never grew while spinning")
	}
	_ = x
}

func TestParseStatusMemory(t *testing.T) {
	m, err := parseStatusMemory("Name:\tchime-fence\nVmPeak:\t  999 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t9\n")
	require.NoError(t, err)
	assert.Equal(t, Memory{PeakRSS: 2 << 20, RSS: 1 << 20}, m)

	_, err = parseStatusMemory("Name:\tkthreadd\n")
	assert.ErrorContains(t, err, "missing")
	_, err = parseStatusMemory("VmHWM:\t2 MB\nVmRSS:\t1 kB\n")
	assert.ErrorContains(t, err, "VmHWM")

	self, err := ProcMemory(os.Getpid())
	require.NoError(t, err)
	assert.GreaterOrEqual(t, self.PeakRSS, self.RSS)
	assert.Positive(t, self.RSS)
}

func TestWriteConfigLoads(t *testing.T) {
	dir := t.TempDir()
	f, err := WriteConfig(dir, Spec{Hosts: 250, Listen: "127.0.0.1:7480", HeartbeatInterval: time.Second,
		MissedHeartbeats: 3, ProbeTimeout: 200 * time.Millisecond})
	require.NoError(t, err)

	cfg, err := configs.Load(f.Config)
	require.NoError(t, err, "chime-fence must accept the bench's config")
	assert.Equal(t, configs.ModeObserve, cfg.Mode)
	assert.Equal(t, time.Second, cfg.Detection.HeartbeatInterval)
	assert.Equal(t, 3, cfg.Detection.MissedHeartbeats)
	assert.Equal(t, 200*time.Millisecond, cfg.Detection.ProbeTimeout)
	assert.Equal(t, 3*time.Second, cfg.Detection.Window())
	assert.Equal(t, filepath.Join(dir, "state"), cfg.Controller.StateDir)
	assert.Equal(t, "127.0.0.1:7480", cfg.Controller.Listen)
	assert.Len(t, cfg.Racks, 3, "250 hosts in racks of 100")

	require.Len(t, cfg.Hosts, 250)
	assert.Equal(t, f.Hosts, cfg.HostNames())
	addrs := map[string]bool{}
	for i, h := range cfg.Hosts {
		assert.Equal(t, HostName(i), h.Name)
		assert.Equal(t, HostAddr(i), h.Address)
		assert.True(t, strings.HasPrefix(h.Address, "10.200."))
		assert.False(t, addrs[h.Address], "address %s used twice", h.Address)
		addrs[h.Address] = true
		assert.Empty(t, h.BMCs)
		require.Len(t, h.Effective.Levels, 1)
		assert.Equal(t, configs.LevelAgentDrain, h.Effective.Levels[0].Type)
		assert.Equal(t, time.Hour, h.Effective.FenceReadinessInterval)
	}

	for _, tok := range []struct{ path, want string }{
		{cfg.Controller.AgentSecretFile, f.AgentSecret},
		{cfg.Controller.APITokenFile, f.APIToken},
	} {
		st, err := os.Stat(tok.path)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		got, err := configs.Secret{What: "token", File: tok.path}.Read()
		require.NoError(t, err)
		assert.Equal(t, tok.want, got)
		assert.Len(t, got, 64)
	}
	assert.NotEqual(t, f.AgentSecret, f.APIToken)
	b, err := os.ReadFile(f.Config)
	require.NoError(t, err)
	assert.NotContains(t, string(b), f.AgentSecret, "tokens live in their files only")
}

func TestHostAddrs(t *testing.T) {
	assert.Equal(t, "10.200.0.1", HostAddr(0))
	assert.Equal(t, "10.200.0.255", HostAddr(254))
	assert.Equal(t, "10.200.1.0", HostAddr(255))
	assert.Equal(t, "10.200.255.254", HostAddr(MaxHosts-1))
}

func TestWriteConfigRefuses(t *testing.T) {
	ok := Spec{Hosts: 1, Listen: "127.0.0.1:7480", HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second}
	for _, tc := range []struct {
		mut  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Hosts = 0 }, "hosts: 0 is not in 1…65534"},
		{func(s *Spec) { s.Hosts = MaxHosts + 1 }, "hosts: 65535 is not in 1…65534"},
		{func(s *Spec) { s.MissedHeartbeats = 0 }, "missed heartbeats 0"},
		{func(s *Spec) { s.Listen = "" }, "listen address is empty"},
	} {
		s := ok
		tc.mut(&s)
		_, err := WriteConfig(t.TempDir(), s)
		assert.ErrorContains(t, err, tc.want)
	}
}

func TestDetect(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	stopped := map[string]time.Time{
		"a": t0,
		"b": t0.Add(500 * time.Millisecond),
		"c": t0, // never detected
		"d": {}, // never acked
		"e": t0.Add(10 * time.Second),
	}
	mon := func(host, to string, at time.Duration) store.Record {
		return store.Record{Kind: "monitor", Host: host, From: "suspect", To: to, At: t0.Add(at)}
	}
	recs := []store.Record{
		mon("a", "suspect", 3*time.Second),
		mon("a", "unreachable", 3100*time.Millisecond),
		mon("a", "unreachable", 9*time.Second), // a later incident: the first one counts
		mon("b", "unreachable", 3700*time.Millisecond),
		{Kind: "verdict", Host: "c", To: "unreachable", At: t0.Add(time.Second)}, // not a monitor record
		mon("x", "unreachable", time.Second),                                     // never stopped
		mon("e", "unreachable", 2*time.Second),                                   // declared while still heartbeating
		mon("e", "unreachable", 13*time.Second),
		mon("y", "suspect", time.Second), // suspect alone is no false positive
	}
	d := Detect(stopped, recs)
	assert.Equal(t, map[string]time.Duration{
		"a": 3100 * time.Millisecond,
		"b": 3200 * time.Millisecond,
		"e": 3 * time.Second,
	}, d.Delays)
	assert.Equal(t, []string{"c"}, d.Undetected)
	assert.Equal(t, []string{"d"}, d.Unmeasured)
	assert.Equal(t, []string{"e", "x"}, d.False)
	got := d.DelayList()
	slices.Sort(got)
	assert.Equal(t, []time.Duration{3 * time.Second, 3100 * time.Millisecond, 3200 * time.Millisecond}, got)
}

const metricsText = `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 10042
go_memstats_heap_inuse_bytes 1.2345e+08
# HELP chime_fence_heartbeats_total Heartbeats received, by result and transport.
# TYPE chime_fence_heartbeats_total counter
chime_fence_heartbeats_total{result="accepted",transport="http"} 7
chime_fence_heartbeats_total{result="accepted",transport="udp"} 590000
chime_fence_heartbeats_total{transport="udp",result="unknown_host"} 2
chime_fence_heartbeats_total{result="unknown_host",transport="http"} 1
chime_fence_heartbeats_total{result="malformed",transport="udp"} 0
chime_fence_heartbeats_total{result="unauthorized",transport="udp"} 3e+00
chime_fence_heartbeats_total_created{result="accepted",transport="udp"} 1.7e+09
process_open_fds 10021
`

func TestParseMetrics(t *testing.T) {
	got := parseMetrics(metricsText, daemonMetrics)
	assert.Equal(t, map[string]float64{"go_goroutines": 10042, "go_memstats_heap_inuse_bytes": 1.2345e8, "process_open_fds": 10021}, got,
		"labelled series are not taken for unlabelled ones")
}

func TestParseHeartbeatCounts(t *testing.T) {
	c := parseHeartbeatCounts(metricsText)
	assert.Equal(t, HeartbeatCounts{
		"accepted":     {"http": 7, "udp": 590000},
		"unknown_host": {"udp": 2, "http": 1},
		"malformed":    {"udp": 0},
		"unauthorized": {"udp": 3},
	}, c, "by result and transport, whatever the label order; _created is another series")
	assert.Equal(t, 590007.0, c.Total("accepted"), "summed over transports")
	assert.Equal(t, 3.0, c.Total("unknown_host"))
	assert.Zero(t, c.Total("too_large"))
	assert.Equal(t, "accepted 590007 (http 7, udp 590000); refused unauthorized=3 unknown_host=3", c.String())

	// A daemon from before the transport label: one unlabelled transport.
	old := parseHeartbeatCounts("chime_fence_heartbeats_total{result=\"accepted\"} 99\n")
	assert.Equal(t, HeartbeatCounts{"accepted": {"": 99}}, old)
	assert.Equal(t, "accepted 99 (unlabelled 99); refused none", old.String())

	// Escapes in label values; lines that do not parse are skipped.
	odd := parseHeartbeatCounts(`chime_fence_heartbeats_total{result="a\"b\\c",transport="u\nd"} 1
chime_fence_heartbeats_total{result="accepted",transport="udp} 5
chime_fence_heartbeats_total{result="accepted",transport="udp"} many
chime_fence_heartbeats_total{transport="udp"} 4
chime_fence_heartbeats_total{result="accepted",transport="udp\x"} 6
chime_fence_heartbeats_total 8
`)
	assert.Equal(t, HeartbeatCounts{`a"b\c`: {"u\nd": 1}}, odd)
	assert.Equal(t, "none", HeartbeatCounts{}.String())
}

func TestReportGoals(t *testing.T) {
	good := Report{Hosts: 10, Stopped: 2, Goal: 3200 * time.Millisecond, DaemonCPU: 0.2, DaemonPeakRSS: 100 << 20,
		Detection: Dist{N: 2, P50: 3 * time.Second, P99: 3100 * time.Millisecond, Max: 3100 * time.Millisecond}}
	good.check()
	require.NoError(t, good.Check())
	var out strings.Builder
	require.NoError(t, good.Print(&out))
	assert.Contains(t, out.String(), "p99 3100.0 ms")
	assert.NotContains(t, out.String(), "daemon counted", "no scrape, no line")
	good.Transport = TransportUDP
	good.DaemonHeartbeats = HeartbeatCounts{"accepted": {"udp": 42, "http": 0}}
	out.Reset()
	require.NoError(t, good.Print(&out))
	assert.Regexp(t, `transport +udp \(sealed datagrams`, out.String())
	assert.Regexp(t, `daemon counted +accepted 42 \(http 0, udp 42\); refused none`, out.String())
	assert.NotContains(t, out.String(), "MISSED")

	for _, tc := range []struct {
		mut  func(*Report)
		want string
	}{
		{func(r *Report) { r.DaemonCPU = 0.51 }, "daemon CPU"},
		{func(r *Report) { r.DaemonPeakRSS = 513 << 20 }, "daemon peak RSS"},
		{func(r *Report) { r.Detection.P99 = 3201 * time.Millisecond }, "detection p99"},
		{func(r *Report) { r.Detection = Dist{} }, "detection p99"},
		{func(r *Report) { r.Detection.N = 1 }, "stopped hosts detected"},
		{func(r *Report) { r.FalseUnreachable = []string{"h1"} }, "unreachable while heartbeating"},
		{func(r *Report) { r.StormRecords = 1 }, "storm-guard records"},
	} {
		r := good
		tc.mut(&r)
		r.check()
		err := r.Check()
		require.ErrorIs(t, err, ErrGoalMissed)
		assert.Contains(t, err.Error(), tc.want)
		out.Reset()
		require.NoError(t, r.Print(&out))
		assert.Contains(t, out.String(), "MISSED")
	}
}

func TestOptionsDefaultsAndRefusals(t *testing.T) {
	o := Options{Daemon: "bin/chime-fence"}
	require.NoError(t, o.defaults())
	assert.Equal(t, 10000, o.Hosts)
	assert.Equal(t, time.Minute, o.Duration)
	assert.Equal(t, 100, o.Stop)
	assert.Equal(t, 6*time.Second, o.Settle)
	assert.Equal(t, 33*time.Second, o.DetectTimeout)
	assert.Equal(t, TransportUDP, o.Transport, "the bench speaks what chime-agent speaks by default")
	o = Options{Daemon: "bin/chime-fence", Transport: TransportHTTP}
	require.NoError(t, o.defaults())
	assert.Equal(t, TransportHTTP, o.Transport)

	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{}, "chime-fence binary is required"},
		{Options{Daemon: "x", Hosts: 5, Stop: 6}, "--stop 6 is more than --hosts 5"},
		{Options{Daemon: "x", Duration: time.Second, Warmup: 2 * time.Second}, "leaves no steady phase"},
		{Options{Daemon: "x", Domains: -1}, "--domains -1"},
		{Options{Daemon: "x", Transport: "UDP"}, `--transport "UDP": want udp or http`},
	} {
		o := tc.o
		assert.ErrorContains(t, o.defaults(), tc.want)
	}
}
