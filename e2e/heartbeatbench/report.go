package heartbeatbench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// The goals.
const (
	GoalCPU   = 0.5       // cores
	GoalRSS   = 512 << 20 // bytes
	GoalSlack = 200 * time.Millisecond
)

// ErrGoalMissed is returned by Check when a goal is missed.
var ErrGoalMissed = errors.New("goal missed")

// Report is one bench run. Durations are in nanoseconds in JSON.
type Report struct {
	DaemonPID int `json:"daemon_pid"`
	// Transport the agents heartbeated over: udp or http.
	Transport    string        `json:"transport"`
	Hosts        int           `json:"hosts"`
	Stopped      int           `json:"stopped"`
	Domains      int           `json:"domains_per_heartbeat"`
	Interval     time.Duration `json:"heartbeat_interval_ns"`
	Window       time.Duration `json:"window_ns"`
	ProbeTimeout time.Duration `json:"probe_timeout_ns"`
	// Goal is the detection p99 goal: window + 200 ms.
	Goal     time.Duration `json:"detection_goal_ns"`
	Duration time.Duration `json:"load_duration_ns"`
	Steady   time.Duration `json:"steady_ns"`

	DaemonCPU     float64 `json:"daemon_cpu_cores"`
	DaemonPeakRSS int64   `json:"daemon_peak_rss_bytes"`
	DaemonRSS     int64   `json:"daemon_rss_bytes"`
	GeneratorCPU  float64 `json:"generator_cpu_cores"`
	// DaemonMetrics are Go runtime and process series scraped from the
	// daemon's /metrics at the end of the steady phase.
	DaemonMetrics map[string]float64 `json:"daemon_metrics,omitempty"`
	// DaemonHeartbeats is the daemon's heartbeat counter by result and
	// transport, scraped with DaemonMetrics (the whole run so far).
	DaemonHeartbeats HeartbeatCounts `json:"daemon_heartbeats,omitempty"`

	Sent   int64            `json:"heartbeats_sent"`
	Errors map[string]int64 `json:"errors"`
	// LateReplies are UDP replies that came after their heartbeat had
	// been counted as "udp timeout".
	LateReplies int64   `json:"late_replies"`
	Throughput  float64 `json:"acks_per_second"`
	AckLatency  Dist    `json:"ack_latency"`
	// Lateness is how far behind schedule the generator sent heartbeats:
	// large values mean the generator, not the daemon, was the bottleneck.
	Lateness Dist `json:"generator_lateness"`

	Detection        Dist     `json:"detection_delay"`
	Undetected       []string `json:"undetected"`
	Unmeasured       []string `json:"unmeasured"`
	FalseUnreachable []string `json:"false_unreachable"`
	StormRecords     int      `json:"storm_records"`

	Goals []Goal `json:"goals"`
}

// Goal is one pass/fail line.
type Goal struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	OK   bool   `json:"ok"`
}

func (r *Report) check() {
	r.Goals = []Goal{
		{"daemon CPU", fmt.Sprintf("≤ %.2f core", GoalCPU), fmt.Sprintf("%.3f core", r.DaemonCPU), r.DaemonCPU <= GoalCPU},
		{"daemon peak RSS", fmt.Sprintf("≤ %d MiB", GoalRSS>>20), mib(r.DaemonPeakRSS), r.DaemonPeakRSS <= GoalRSS},
		{"detection p99", "≤ " + r.Goal.String(), ms(r.Detection.P99), r.Detection.N > 0 && r.Detection.P99 <= r.Goal},
		{"stopped hosts detected", fmt.Sprint(r.Stopped), fmt.Sprint(r.Detection.N), r.Detection.N == r.Stopped},
		{"unreachable while heartbeating", "0", fmt.Sprint(len(r.FalseUnreachable)), len(r.FalseUnreachable) == 0},
		{"storm-guard records", "0", fmt.Sprint(r.StormRecords), r.StormRecords == 0},
	}
}

// Check returns ErrGoalMissed naming every missed goal.
func (r *Report) Check() error {
	var missed []string
	for _, g := range r.Goals {
		if !g.OK {
			missed = append(missed, fmt.Sprintf("%s: want %s, got %s", g.Name, g.Want, g.Got))
		}
	}
	if len(missed) > 0 {
		return fmt.Errorf("%w: %s", ErrGoalMissed, strings.Join(missed, "; "))
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
func mib(b int64) string        { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func dist(d Dist) string {
	if d.N == 0 {
		return "none"
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s  (n=%d)", ms(d.P50), ms(d.P99), ms(d.Max), d.N)
}

// Print writes the human table.
func (r *Report) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("agents", fmt.Sprintf("%d, heartbeat every %v, %d domains each; %d stopped", r.Hosts, r.Interval, r.Domains, r.Stopped))
	row("transport", transportLine(r.Transport))
	row("detection window", fmt.Sprintf("%v (+ probe timeout %v)", r.Window, r.ProbeTimeout))
	row("steady phase", r.Steady.Round(time.Millisecond).String())
	row("daemon CPU", fmt.Sprintf("%.3f core", r.DaemonCPU))
	row("daemon RSS", fmt.Sprintf("peak %s, now %s", mib(r.DaemonPeakRSS), mib(r.DaemonRSS)))
	if m := r.DaemonMetrics; len(m) > 0 {
		row("daemon runtime", fmt.Sprintf("%.0f goroutines, heap in use %s, stacks %s, from OS %s; %.0f of %.0f fds",
			m["go_goroutines"], mib(int64(m["go_memstats_heap_inuse_bytes"])), mib(int64(m["go_memstats_stack_inuse_bytes"])),
			mib(int64(m["go_memstats_sys_bytes"])), m["process_open_fds"], m["process_max_fds"]))
	}
	row("generator CPU", fmt.Sprintf("%.3f core (bench process, measured separately)", r.GeneratorCPU))
	row("heartbeats", fmt.Sprintf("%.0f acked/s in the steady phase; %d sent in all; errors %s", r.Throughput, r.Sent, errList(r.Errors)))
	if r.LateReplies > 0 {
		row("late replies", fmt.Sprintf("%d (after their heartbeat's reply timeout)", r.LateReplies))
	}
	if r.DaemonHeartbeats != nil {
		row("daemon counted", r.DaemonHeartbeats.String())
	}
	row("ack latency", dist(r.AckLatency))
	row("generator lateness", dist(r.Lateness))
	row("detection delay", dist(r.Detection)+"  (last acked heartbeat sent → unreachable recorded)")
	if len(r.Undetected) > 0 {
		row("undetected", short(r.Undetected))
	}
	if len(r.Unmeasured) > 0 {
		row("never acked", short(r.Unmeasured))
	}
	if len(r.FalseUnreachable) > 0 {
		row("false unreachable", short(r.FalseUnreachable))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "goal\twant\tgot\t")
	for _, g := range r.Goals {
		ok := "ok"
		if !g.OK {
			ok = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.Name, g.Want, g.Got, ok)
	}
	return tw.Flush()
}

func transportLine(t string) string {
	switch t {
	case TransportUDP:
		return "udp (sealed datagrams, one socket per agent)"
	case TransportHTTP:
		return "http (one keep-alive connection per agent)"
	}
	return t
}

func errList(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

func short(hs []string) string {
	if len(hs) > 10 {
		return fmt.Sprintf("%s … (%d)", strings.Join(hs[:10], " "), len(hs))
	}
	return strings.Join(hs, " ")
}
