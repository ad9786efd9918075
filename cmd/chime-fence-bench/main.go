// Command chime-fence-bench times chime-fence's IPMI fence level against
// Debian's fence_ipmilan on a local ipmi_sim (see e2e/fencebench). It exits
// 1 when the median ratio exceeds -max-ratio, 2 when the bench cannot run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/e2e/fencebench"
)

func main() {
	runs := flag.Int("runs", 20, "runs per fencer")
	agent := flag.String("fence-agent", fencebench.DefaultFenceAgent, "path of fence_ipmilan")
	maxRatio := flag.Float64("max-ratio", 0.3, "fail when median(chime-fence)/median(fence_ipmilan) exceeds this (0: report only)")
	verbose := flag.Bool("v", false, "log every IPMI operation (JSON on stderr)")
	flag.Parse()

	log := zerolog.Nop()
	if *verbose {
		log = zerolog.New(os.Stderr).With().Timestamp().Logger()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep, err := fencebench.Run(ctx, fencebench.Options{Runs: *runs, FenceAgent: *agent, Log: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, "chime-fence-bench:", err)
		os.Exit(2)
	}
	if err := fencebench.Print(os.Stdout, rep, *maxRatio); err != nil {
		fmt.Fprintln(os.Stderr, "chime-fence-bench:", err)
		os.Exit(2)
	}
	if err := fencebench.Check(rep, *maxRatio); err != nil {
		fmt.Fprintln(os.Stderr, "chime-fence-bench:", err)
		if errors.Is(err, fencebench.ErrGoalMissed) {
			os.Exit(1)
		}
		os.Exit(2)
	}
}
