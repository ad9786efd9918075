package fencebench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/drivers/ipmi"
	"github.com/chimestack/chime-fence/e2e/ipmisim"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/power"
)

// DefaultFenceAgent is Debian's fence_ipmilan (package fence-agents).
const DefaultFenceAgent = "/usr/sbin/fence_ipmilan"

// PollInterval is how often chime-fence reads the power state back.
const PollInterval = 50 * time.Millisecond

// Options configure a benchmark run.
type Options struct {
	Runs       int           // runs per fencer; default 20
	FenceAgent string        // default DefaultFenceAgent
	StateDir   string        // ipmi_sim state; default a temporary directory
	RunTimeout time.Duration // cap per fence run; default 30 s
	Log        zerolog.Logger
}

// Result is one fencer's timings.
type Result struct {
	Name      string
	Durations []time.Duration
	Stats     Stats
}

// Report is both fencers' results on the same BMC.
type Report struct {
	BMC        string // addr:port of the simulator
	Chime      Result
	Agent      Result
	Ratio      float64 // Chime.Stats.Median / Agent.Stats.Median
	Runs       int
	FenceAgent string // fence agent path
}

// Run executes the benchmark. See the package doc.
func Run(ctx context.Context, o Options) (Report, error) {
	if o.Runs <= 0 {
		o.Runs = 20
	}
	if o.FenceAgent == "" {
		o.FenceAgent = DefaultFenceAgent
	}
	if o.RunTimeout <= 0 {
		o.RunTimeout = 30 * time.Second
	}
	for _, bin := range []string{ipmisim.Binary, o.FenceAgent} {
		if _, err := os.Stat(bin); err != nil {
			return Report{}, fmt.Errorf("fencebench: %s not installed (Debian packages openipmi, fence-agents, ipmitool): %w", bin, err)
		}
	}
	if o.StateDir == "" {
		dir, err := os.MkdirTemp("", "chime-fencebench-")
		if err != nil {
			return Report{}, fmt.Errorf("fencebench: %w", err)
		}
		defer os.RemoveAll(dir)
		o.StateDir = dir
	}
	password, err := randomPassword()
	if err != nil {
		return Report{}, err
	}
	startCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	sim, err := ipmisim.Start(startCtx, ipmisim.Config{Addr: "127.0.0.1", User: "admin", Password: password,
		StateDir: filepath.Join(o.StateDir, "sim")})
	cancel()
	if err != nil {
		return Report{}, err
	}
	defer sim.Stop()

	drv, err := ipmi.New(ipmi.Config{Host: "bench-host", Addr: sim.Addr(), Port: sim.Port(), Username: "admin",
		Password: password, CipherSuites: []int{3}}, o.Log)
	if err != nil {
		return Report{}, err
	}
	b := &bench{o: o, sim: sim, drv: drv, password: password}
	rep := Report{BMC: fmt.Sprintf("%s:%d", sim.Addr(), sim.Port()), Runs: o.Runs, FenceAgent: o.FenceAgent,
		Chime: Result{Name: "chime-fence ipmi"}, Agent: Result{Name: filepath.Base(o.FenceAgent)}}
	// Alternate so drift (cache, CPU contention) hits both fencers alike.
	for i := 0; i < o.Runs; i++ {
		for _, f := range []struct {
			res *Result
			run func(context.Context) error
		}{{&rep.Chime, b.chimeFence}, {&rep.Agent, b.agentFence}} {
			if err := b.powerOn(ctx); err != nil {
				return rep, fmt.Errorf("fencebench: run %d: power on before %s: %w", i+1, f.res.Name, err)
			}
			runCtx, cancel := context.WithTimeout(ctx, o.RunTimeout)
			start := time.Now()
			err := f.run(runCtx)
			took := time.Since(start)
			cancel()
			if err != nil {
				return rep, fmt.Errorf("fencebench: run %d: %s: %w", i+1, f.res.Name, err)
			}
			if on, err := ipmisim.FilePower(sim.PowerDir()); err != nil || on {
				return rep, fmt.Errorf("fencebench: run %d: %s reported off but the simulated host is on (%v)", i+1, f.res.Name, err)
			}
			f.res.Durations = append(f.res.Durations, took)
		}
	}
	rep.Chime.Stats = Summarize(rep.Chime.Durations)
	rep.Agent.Stats = Summarize(rep.Agent.Durations)
	if rep.Agent.Stats.Median > 0 {
		rep.Ratio = float64(rep.Chime.Stats.Median) / float64(rep.Agent.Stats.Median)
	}
	return rep, nil
}

type bench struct {
	o        Options
	sim      *ipmisim.Sim
	drv      *ipmi.Client
	password string
}

// chimeFence is the fencer's IPMI level itself: fencer.PowerOff sends a
// hard off and verifies by reading power back until Off.
func (b *bench) chimeFence(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	timeout := 30 * time.Second
	if ok {
		timeout = time.Until(dl)
	}
	_, err := fencer.PowerOff(ctx, b.drv, fencer.RealClock{}, fencer.PowerOffOptions{Timeout: timeout, Poll: PollInterval})
	return err
}

// agentFence runs fence_ipmilan -o off with its options on stdin, the way
// pacemaker calls fence agents.
func (b *bench) agentFence(ctx context.Context) error {
	stdin := strings.Join([]string{
		"action=off",
		"ip=" + b.sim.Addr(),
		"ipport=" + strconv.Itoa(b.sim.Port()),
		"username=admin",
		"password=" + b.password,
		"lanplus=1",
		"cipher=3",
		"privlvl=operator",
	}, "\n") + "\n"
	cmd := exec.CommandContext(ctx, b.o.FenceAgent)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := strings.ReplaceAll(out.String(), b.password, "[password]")
	if err != nil {
		return fmt.Errorf("%s: %w: %s", b.o.FenceAgent, err, lastLines(text, 5))
	}
	if !strings.Contains(text, "Success: Powered OFF") {
		return fmt.Errorf("%s did not report success: %s", b.o.FenceAgent, lastLines(text, 5))
	}
	return nil
}

func (b *bench) powerOn(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.drv.PowerOn(ctx); err != nil {
		return err
	}
	st, err := b.drv.PowerStatus(ctx)
	if err != nil {
		return err
	}
	if st != power.On {
		return fmt.Errorf("power reads %s after power on", st)
	}
	return nil
}

func randomPassword() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("fencebench: password: %w", err)
	}
	return "b-" + hex.EncodeToString(b[:]), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Stats summarise a set of durations.
type Stats struct {
	N                     int
	Min, Median, P90, Max time.Duration
}

// Summarize computes nearest-rank percentiles (the median of an even count
// is the mean of the two middle values).
func Summarize(ds []time.Duration) Stats {
	if len(ds) == 0 {
		return Stats{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	rank := (90*n + 99) / 100 // ceil(0.9 n)
	return Stats{N: n, Min: s[0], Median: med, P90: s[rank-1], Max: s[n-1]}
}

// Print writes the human-readable report.
func Print(w io.Writer, r Report, maxRatio float64) error {
	var b strings.Builder
	fmt.Fprintf(&b, "fence bench: %d runs each, ipmi_sim at %s, decide to fence -> power read back Off\n", r.Runs, r.BMC)
	for _, res := range []Result{r.Chime, r.Agent} {
		s := res.Stats
		fmt.Fprintf(&b, "  %-18s median %9s  p90 %9s  min %9s  max %9s\n", res.Name,
			round(s.Median), round(s.P90), round(s.Min), round(s.Max))
	}
	fmt.Fprintf(&b, "  ratio (median chime-fence / median %s): %.3f", r.Agent.Name, r.Ratio)
	if maxRatio > 0 {
		verdict := "PASS"
		if r.Ratio > maxRatio {
			verdict = "FAIL"
		}
		fmt.Fprintf(&b, " (goal <= %.2f: %s)", maxRatio, verdict)
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

// ErrGoalMissed is returned by Check when the ratio exceeds the goal.
var ErrGoalMissed = errors.New("fencebench: goal missed")

// Check returns ErrGoalMissed when maxRatio > 0 and r.Ratio exceeds it.
func Check(r Report, maxRatio float64) error {
	if maxRatio > 0 && r.Ratio > maxRatio {
		return fmt.Errorf("%w: ratio %.3f > %.2f", ErrGoalMissed, r.Ratio, maxRatio)
	}
	return nil
}
