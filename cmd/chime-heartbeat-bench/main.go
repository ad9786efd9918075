// Command chime-heartbeat-bench loads one chime-fence daemon with simulated
// agents inside a private network namespace, stops a sample of them and
// reports the daemon's CPU, peak RSS and detection delay against the
// issue's goals (see e2e/heartbeatbench). It exits 1 when a goal is
// missed, 2 when the bench cannot run, 130 when interrupted. Needs root.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/chimestack/chime-fence/e2e/heartbeatbench"
)

func main() {
	var o heartbeatbench.Options
	flag.StringVar(&o.Daemon, "daemon", "bin/chime-fence", "chime-fence binary to run")
	flag.IntVar(&o.Hosts, "hosts", 10000, "simulated agents")
	flag.DurationVar(&o.Duration, "duration", time.Minute, "load before the sample stops (at least 60s for the issue's figures)")
	flag.DurationVar(&o.Warmup, "warmup", 10*time.Second, "start of the load left out of the steady-phase figures")
	flag.IntVar(&o.Stop, "stop", 100, "agents stopped at the end")
	flag.IntVar(&o.Domains, "domains", 4, "running domains listed in every heartbeat")
	flag.StringVar(&o.Transport, "transport", heartbeatbench.TransportUDP, "heartbeat transport of the simulated agents: udp (as chime-agent) or http")
	flag.DurationVar(&o.Interval, "heartbeat-interval", time.Second, "detection.heartbeat_interval")
	flag.IntVar(&o.Missed, "missed-heartbeats", 3, "detection.missed_heartbeats")
	flag.DurationVar(&o.ProbeTimeout, "probe-timeout", 200*time.Millisecond, "detection.probe_timeout")
	flag.DurationVar(&o.DetectTimeout, "detect-timeout", 0, "wait for unreachable transitions at most this long (0: window + 30s)")
	flag.DurationVar(&o.Settle, "settle", 0, "keep the rest running this long after the last detection (0: 2 × window)")
	flag.Uint64Var(&o.Seed, "seed", 1, "seed of start offsets and of the stopped sample")
	flag.BoolVar(&o.Keep, "keep", false, "keep the work directory (config, state, daemon log)")
	flag.StringVar(&o.DaemonLogLevel, "daemon-log-level", "info", "the daemon's --log-level")
	asJSON := flag.Bool("json", false, "print the report as JSON")
	quiet := flag.Bool("q", false, "no progress lines on stderr")
	cpuProfile := flag.String("cpuprofile", "", "write the bench process's own CPU profile (the generator's cost) to this file; the daemon's: CHIME_FENCE_CPUPROFILE")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "chime-heartbeat-bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if !*quiet {
		o.Progress = os.Stderr
	}

	exit := os.Exit
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "chime-heartbeat-bench: --cpuprofile:", err)
			os.Exit(2)
		}
		// Stopped before every exit but a crash: os.Exit skips defers.
		exit = func(code int) {
			pprof.StopCPUProfile()
			f.Close()
			os.Exit(code)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := heartbeatbench.Run(ctx, o)
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "chime-heartbeat-bench: interrupted; the daemon is stopped and the namespace removed")
		exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chime-heartbeat-bench:", err)
		exit(2)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.Print(os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chime-heartbeat-bench:", err)
		exit(2)
	}
	if err := rep.Check(); err != nil {
		fmt.Fprintln(os.Stderr, "chime-heartbeat-bench:", err)
		if errors.Is(err, heartbeatbench.ErrGoalMissed) {
			exit(1)
		}
		exit(2)
	}
	exit(0)
}
