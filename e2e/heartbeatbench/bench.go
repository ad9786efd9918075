package heartbeatbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/e2e/blackhole"
	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/store"
)

// Options configures a bench run. Zero values take the defaults noted.
type Options struct {
	Daemon   string        // path of the chime-fence binary (required)
	Hosts    int           // simulated agents; default 10000
	Duration time.Duration // load before the sample stops; default 60 s
	Warmup   time.Duration // excluded from the steady phase; default 10 s
	Stop     int           // agents stopped at the end; default 100
	Domains  int           // domains per heartbeat
	// Transport the agents heartbeat over: TransportUDP (default), as
	// chime-agent does, or TransportHTTP.
	Transport string
	// Detection settings written to the daemon's config; defaults 1 s, 3,
	// 200 ms.
	Interval     time.Duration
	Missed       int
	ProbeTimeout time.Duration
	// DetectTimeout bounds the wait for every stopped host's
	// "unreachable"; default window + 30 s.
	DetectTimeout time.Duration
	// Settle keeps the remaining agents running after the last detection,
	// to catch late false "unreachable"s; default 2 × window.
	Settle         time.Duration
	Seed           uint64
	Keep           bool   // keep the work directory (config, state, daemon log)
	DaemonLogLevel string // default info
	Progress       io.Writer
}

func (o *Options) defaults() error {
	if o.Daemon == "" {
		return errors.New("the chime-fence binary is required (--daemon)")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Hosts <= 0 {
		o.Hosts = 10000
	}
	if o.Stop <= 0 {
		o.Stop = 100
	}
	if o.Missed <= 0 {
		o.Missed = 3
	}
	def(&o.Duration, time.Minute)
	def(&o.Warmup, 10*time.Second)
	def(&o.Interval, time.Second)
	def(&o.ProbeTimeout, 200*time.Millisecond)
	window := o.Interval * time.Duration(o.Missed)
	def(&o.DetectTimeout, window+30*time.Second)
	def(&o.Settle, 2*window)
	if o.DaemonLogLevel == "" {
		o.DaemonLogLevel = "info"
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Transport == "" {
		o.Transport = TransportUDP
	}
	if err := checkTransport(o.Transport); err != nil {
		return fmt.Errorf("--%w", err)
	}
	switch {
	case o.Stop > o.Hosts:
		return fmt.Errorf("--stop %d is more than --hosts %d", o.Stop, o.Hosts)
	case o.Warmup >= o.Duration:
		return fmt.Errorf("--warmup %v leaves no steady phase in --duration %v", o.Warmup, o.Duration)
	case o.Domains < 0:
		return fmt.Errorf("--domains %d is negative", o.Domains)
	}
	return nil
}

const listen = "127.0.0.1:7480"

// Run creates a network namespace, starts the daemon in it, loads it with
// o.Hosts agents for o.Duration, stops o.Stop of them and waits for their
// "unreachable" transitions. The namespace, the daemon (by PID) and,
// unless o.Keep or the run failed (not merely cancelled), the work
// directory are removed before Run returns, also when ctx is cancelled
// (SIGINT).
func Run(ctx context.Context, o Options) (rep *Report, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root: it creates a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("needs iproute2: %w", err)
	}
	daemonBin, err := filepath.Abs(o.Daemon)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(daemonBin); err != nil || st.IsDir() {
		return nil, fmt.Errorf("daemon binary %s: not a file (build it with make build)", o.Daemon)
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(o.Progress, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}

	dir, err := os.MkdirTemp("", "chime-hbbench-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if o.Keep || (err != nil && !errors.Is(err, context.Canceled)) {
			say("work directory kept: %s (config, state, daemon.log)", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	files, err := WriteConfig(dir, Spec{Hosts: o.Hosts, Listen: listen, HeartbeatInterval: o.Interval,
		MissedHeartbeats: o.Missed, ProbeTimeout: o.ProbeTimeout})
	if err != nil {
		return nil, err
	}
	cfg, err := configs.Load(files.Config)
	if err != nil {
		return nil, fmt.Errorf("the bench wrote a config chime-fence refuses: %w", err)
	}
	window := cfg.Detection.Window()

	// The hosts' subnet is unreachable from the root namespace while the
	// bench runs, so nothing aimed at a simulated host ever leaves the
	// machine, even from a command run outside the bench's namespace.
	owner := fmt.Sprintf("hbbench-%d", os.Getpid())
	if err := blackhole.Claim(ctx, owner, []string{Subnet}); err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := blackhole.Release(rctx, owner); err != nil {
			say("%v", err)
		}
	}()

	ns := fmt.Sprintf("chime-hbbench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", ns, err, out)
	}
	defer func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			say("ip netns del %s: %v: %s", ns, err, out)
		}
	}()
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip -n %s link set lo up: %v: %s", ns, err, out)
	}

	d, err := startDaemon(ns, daemonBin, files.Config, o.DaemonLogLevel, filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := d.stop(); serr != nil {
			say("%v", serr)
		}
	}()
	say("netns %s: daemon pid %d, %d hosts, window %v; log %s; %s unreachable from the root namespace", ns, d.pid, o.Hosts, window, d.logPath, Subnet)

	dial := nsDialer(ns)
	hc := &historyClient{base: "http://" + listen, token: files.APIToken,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial}}}
	if err := d.waitReady(ctx, hc, time.Minute); err != nil {
		return nil, err
	}

	// The daemon's UDP heartbeat address defaults to its API's.
	gen, err := NewGenerator(GenOptions{BaseURL: "http://" + listen, Secret: files.AgentSecret, Hosts: files.Hosts,
		Interval: o.Interval, Domains: o.Domains, Transport: o.Transport, Dial: dial, Seed: o.Seed})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	gen.Start(ctx)
	defer gen.Close()
	say("load started: %d agents over %s, one heartbeat each per %v", o.Hosts, o.Transport, o.Interval)

	steadyFrom := t0.Add(o.Warmup)
	steadyTo := t0.Add(o.Duration)
	if err := sleepUntil(ctx, steadyFrom, func() { progress(say, gen, d, t0) }); err != nil {
		return nil, err
	}
	if gen.Window(t0, time.Now()).Acked == 0 {
		// Every figure would be meaningless; say why now, not after the run.
		return nil, fmt.Errorf("no heartbeat over %s was acknowledged in the %v warm-up (errors: %s); "+
			"does this daemon take %s heartbeats? see %s", o.Transport, o.Warmup, errList(gen.Errors()), o.Transport, d.logPath)
	}
	cpu0, err := CPUTime(d.pid)
	if err != nil {
		return nil, fmt.Errorf("daemon cpu: %w (did it exit? see %s)", err, d.logPath)
	}
	self0, _ := CPUTime(os.Getpid())
	wall0 := time.Now()
	say("steady phase")
	if err := sleepUntil(ctx, steadyTo, func() { progress(say, gen, d, t0) }); err != nil {
		return nil, err
	}
	cpu1, err := CPUTime(d.pid)
	if err != nil {
		return nil, fmt.Errorf("daemon cpu: %w (did it exit? see %s)", err, d.logPath)
	}
	self1, _ := CPUTime(os.Getpid())
	wall1 := time.Now()
	var metrics map[string]float64
	var hbCounts HeartbeatCounts
	if text, err := hc.scrape(ctx); err != nil {
		say("daemon metrics: %v", err)
	} else {
		metrics, hbCounts = parseMetrics(text, daemonMetrics), parseHeartbeatCounts(text)
	}

	rng := rand.New(rand.NewPCG(o.Seed, 0x73746f70))
	sample := make([]string, 0, o.Stop)
	for _, i := range rng.Perm(len(files.Hosts))[:o.Stop] {
		sample = append(sample, files.Hosts[i])
	}
	stopAt := time.Now()
	last, err := gen.Stop(sample)
	if err != nil {
		return nil, err
	}
	say("stopped %d agents; waiting for their unreachable transitions", len(sample))

	det, err := waitDetected(ctx, hc, last, stopAt, o.DetectTimeout)
	if err != nil {
		return nil, err
	}
	say("%d of %d detected; settling %v for late false positives", len(det.Delays), len(sample), o.Settle)
	if err := sleepUntil(ctx, time.Now().Add(o.Settle), nil); err != nil {
		return nil, err
	}
	all, err := hc.history(ctx, "monitor", t0, 4*o.Hosts+1000)
	if err != nil {
		return nil, err
	}
	det = Detect(last, all)
	storms, err := hc.history(ctx, "storm", t0, 1000)
	if err != nil {
		return nil, err
	}
	mem, err := ProcMemory(d.pid)
	if err != nil {
		return nil, fmt.Errorf("daemon memory: %w", err)
	}

	w := gen.Window(steadyFrom, steadyTo)
	steady := wall1.Sub(wall0)
	rep = &Report{
		DaemonPID: d.pid, Transport: o.Transport, Hosts: o.Hosts, Stopped: len(sample), Domains: o.Domains, Interval: o.Interval, Window: window,
		ProbeTimeout: o.ProbeTimeout, Goal: window + o.ProbeTimeout,
		Duration: o.Duration, Steady: steady,
		DaemonCPU:     (cpu1 - cpu0).Seconds() / steady.Seconds(),
		GeneratorCPU:  (self1 - self0).Seconds() / steady.Seconds(),
		DaemonPeakRSS: mem.PeakRSS, DaemonRSS: mem.RSS,
		Sent: gen.Sent(), Errors: gen.Errors(), LateReplies: gen.LateReplies(), DaemonHeartbeats: hbCounts,
		Throughput: float64(w.Acked) / steadyTo.Sub(steadyFrom).Seconds(),
		AckLatency: Distribution(w.Latency), Lateness: Distribution(w.Late),
		Detection: Distribution(det.DelayList()), Undetected: det.Undetected, Unmeasured: det.Unmeasured,
		FalseUnreachable: det.False, StormRecords: len(storms), DaemonMetrics: metrics,
	}
	rep.check()
	return rep, nil
}

func progress(say func(string, ...any), gen *Generator, d *daemonProc, t0 time.Time) {
	now := time.Now()
	w := gen.Window(now.Add(-5*time.Second), now)
	mem, _ := ProcMemory(d.pid)
	say("t+%4.0fs  %6.0f acks/s (last 5 s)  daemon RSS %4d MiB  errors %v",
		now.Sub(t0).Seconds(), float64(w.Acked)/5, mem.RSS>>20, gen.Errors())
}

// sleepUntil waits for t or ctx, calling tick every 10 s.
func sleepUntil(ctx context.Context, t time.Time, tick func()) error {
	tk := time.NewTicker(10 * time.Second)
	defer tk.Stop()
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return nil
		case <-tk.C:
			if tick != nil {
				tick()
			}
		}
	}
}

// waitDetected polls the history until every stopped host (that had an
// ack) has its "unreachable" record, or timeout.
func waitDetected(ctx context.Context, hc *historyClient, last map[string]time.Time, since time.Time, timeout time.Duration) (Detection, error) {
	deadline := time.Now().Add(timeout)
	for {
		recs, err := hc.history(ctx, "monitor", since, 4*len(last)+1000)
		if err != nil {
			return Detection{}, err
		}
		det := Detect(last, recs)
		if len(det.Undetected) == 0 || time.Now().After(deadline) {
			return det, nil
		}
		select {
		case <-ctx.Done():
			return Detection{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// nsDialer dials from inside the named network namespace. At most a few
// dials hold a namespace-switched OS thread at a time, so 10,000 agents
// connecting at once cannot exhaust threads.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	sem := make(chan struct{}, 16)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		defer func() { <-sem }()
		var c net.Conn
		err := nsenter.Do(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

type historyClient struct {
	base, token string
	http        *http.Client
}

func (h *historyClient) get(ctx context.Context, path string, q url.Values, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	resp, err := h.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: HTTP %d: %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func (h *historyClient) history(ctx context.Context, kind string, since time.Time, limit int) ([]store.Record, error) {
	var b api.HistoryBody
	q := url.Values{"kind": {kind}, "since": {since.UTC().Format(time.RFC3339Nano)}, "limit": {strconv.Itoa(limit)}}
	if err := h.get(ctx, api.PathHistory, q, &b); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return b.Records, nil
}

type daemonProc struct {
	cmd     *exec.Cmd
	pid     int
	logPath string
	exited  chan struct{}
	waitErr error
}

func startDaemon(ns, bin, config, level, logPath string) (*daemonProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// `ip netns exec` enters the namespace and execs the daemon in place:
	// the PID we start is the daemon's.
	cmd := exec.Command("ip", "netns", "exec", ns, bin, "daemon", "--config", config, "--log-level", level)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the bench
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	d := &daemonProc{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, exited: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		logf.Close()
		close(d.exited)
	}()
	return d, nil
}

// waitReady waits until the API answers and the PID runs the daemon.
func (d *daemonProc) waitReady(ctx context.Context, hc *historyClient, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d.pid))
		err := hc.get(ctx, api.PathStatus, nil, nil)
		if err == nil && strings.TrimSpace(string(comm)) == "chime-fence" {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("daemon exited during start-up (%v): %s", d.waitErr, tail(d.logPath))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon not ready after %v (last: %v, comm %q): %s", timeout, err, strings.TrimSpace(string(comm)), tail(d.logPath))
		}
	}
}

// stop ends the daemon by PID: SIGTERM, then SIGKILL after 10 s.
func (d *daemonProc) stop() error {
	select {
	case <-d.exited:
		return nil
	default:
	}
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
	<-d.exited
	return fmt.Errorf("daemon pid %d ignored SIGTERM for 10 s; killed", d.pid)
}

// tail is the end of the daemon's log, for errors.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
