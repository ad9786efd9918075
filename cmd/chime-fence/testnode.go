package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/readiness"
)

func newTestNodeCmd() *cobra.Command {
	var file, output string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "test-node HOST",
		Short: "Dry run: can HOST be fenced and its VMs moved? Never changes power or VM state",
		Long: `test-node checks, for one host, every fence level of its effective policy
(BMC reachable, credentials accepted, power state readable, power-off allowed;
or the agent answering), its libvirtd, and which of its domains could be
evacuated. It only reads: power and VMs are left exactly as they were.

Exit status: 0 when at least one fence level is usable and read power back,
1 when none is, 2 on a usage or configuration error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := loadConfig(file)
			if err != nil {
				return err
			}
			h, ok := cfg.Host(args[0])
			if !ok {
				return usageErr(fmt.Errorf("no host %q in %s (hosts: %v)", args[0], file, cfg.HostNames()))
			}
			// Driver warnings (e.g. a BMC that publishes no reset types) go
			// to stderr, where they do not spoil --output json.
			log := cliLogger(cmd.ErrOrStderr()).Level(zerolog.WarnLevel)
			target, closeFn := readinessTarget(cfg, h, log)
			defer closeFn()
			target.Timeout = timeout
			r := readiness.Run(cmd.Context(), target, time.Now)
			det := detectorView(cmd.Context(), cfg, h.Name, timeout)
			if output == "json" {
				if err := writeJSONOut(cmd.OutOrStdout(), testNodeJSON{Report: r, Detector: det}); err != nil {
					return err
				}
			} else {
				printReport(cmd.OutOrStdout(), h.Rack, h.Effective.Name, r)
				printDetector(cmd.OutOrStdout(), det)
			}
			if !r.Ready {
				return failureErr(errors.New(r.Summary))
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file")
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "deadline of each check")
	c.SetContext(context.Background())
	return c
}

func printReport(w io.Writer, rack, policy string, r readiness.Report) {
	fmt.Fprintf(w, "host %s (rack %s, policy %s)\n\nfence levels:\n", r.Host, rack, policy)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, l := range r.Levels {
		status := "usable"
		if !l.Usable {
			status = "UNUSABLE"
		}
		detail := "power " + l.Power.String()
		if l.Error != "" {
			detail = l.Error
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", l.Index, l.Type, l.Endpoint, status, l.LatencyText, detail)
	}
	tw.Flush()
	if lv := r.Libvirt; lv != nil {
		if lv.Reachable {
			fmt.Fprintf(w, "\nlibvirt %s: reachable (%s)\n", lv.Endpoint, lv.LatencyText)
		} else {
			fmt.Fprintf(w, "\nlibvirt %s: UNREACHABLE (%s): %s\n", lv.Endpoint, lv.LatencyText, lv.Error)
		}
		if lv.Reachable {
			fmt.Fprintf(w, "\ndomains (%d):\n", len(r.Domains))
			for _, d := range r.Domains {
				ev := "evacuable"
				if !d.Evacuable {
					ev = "NOT evacuable"
				}
				reason := d.Reason
				if d.Error != "" {
					reason += ": " + d.Error
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", d.Name, d.State, ev, reason)
			}
			tw.Flush()
		}
	}
	fmt.Fprintf(w, "\n%s\n", r.Summary)
}

type testNodeJSON struct {
	readiness.Report
	Detector detectorStatus `json:"detector"`
}

// detectorStatus is the daemon's current view of the host, or why it is
// not available; test-node never fails because the daemon is down.
type detectorStatus struct {
	Available bool               `json:"available"`
	Error     string             `json:"error,omitempty"`
	Host      *daemon.HostStatus `json:"host,omitempty"`
}

func detectorView(ctx context.Context, cfg *configs.Config, host string, timeout time.Duration) detectorStatus {
	c, err := opClient(cfg)
	if err != nil {
		return detectorStatus{Error: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	h, err := c.Host(ctx, host)
	if err != nil {
		return detectorStatus{Error: err.Error()}
	}
	return detectorStatus{Available: true, Host: &h}
}

func printDetector(w io.Writer, d detectorStatus) {
	if !d.Available {
		fmt.Fprintf(w, "\ndetector: no verdict available (%s)\n", d.Error)
		return
	}
	h := d.Host
	age := "never"
	if !h.LastHeartbeat.IsZero() {
		age = time.Duration(h.HeartbeatAge).Round(time.Millisecond).String() + " ago"
	}
	fmt.Fprintf(w, "\ndetector: verdict %s, monitor %s, admin %s, last heartbeat %s\n  %s\n", h.Verdict, h.Monitor, h.Admin, age, h.VerdictReason)
}
