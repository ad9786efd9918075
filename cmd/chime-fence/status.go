package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/store"
)

// apiClient reaches the daemon the config describes, with its API token.
func apiClient(cfg *configs.Config) (*api.Client, error) {
	tok, err := readToken("api", cfg.Controller.APITokenFile)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(cfg.Controller.Listen)
	if err != nil {
		return nil, usageErr(fmt.Errorf("controller.listen %q: %w", cfg.Controller.Listen, err))
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return &api.Client{Base: "http://" + net.JoinHostPort(host, port), Token: tok}, nil
}

func writeJSONOut(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return failureErr(err)
	}
	return nil
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return usageErr(fmt.Errorf("--output %q: must be text or json", o))
	}
	return nil
}

func newStatusCmd() *cobra.Command {
	var file, output string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "status",
		Short: "Each host's admin and monitor state, heartbeat age, verdict and fence readiness",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			cfg, err := loadConfig(file)
			if err != nil {
				return err
			}
			c, err := opClient(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			st, err := c.Status(ctx)
			if err != nil {
				return apiErr(err)
			}
			if output == "json" {
				return writeJSONOut(cmd.OutOrStdout(), st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file (daemon address and API token)")
	c.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "deadline of the API call")
	c.SetContext(context.Background())
	return c
}

func printStatus(w io.Writer, st daemon.Status) {
	if st.Storm.Paused {
		fmt.Fprintf(w, "STORM GUARD: paused (%s) [%s]\n\n", st.Storm.Reason, st.Storm.CorrelationID)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRACK\tADMIN\tMONITOR\tHEARTBEAT\tVERDICT\tREADINESS\tDOMAINS")
	for _, h := range st.Hosts {
		age := "never"
		if !h.LastHeartbeat.IsZero() {
			age = time.Duration(h.HeartbeatAge).Round(time.Millisecond).String() + " ago"
		}
		ready := "unchecked"
		if h.Readiness != nil {
			ready = "ready"
			if !h.Readiness.Ready {
				ready = "NOT READY"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", h.Name, h.Rack, h.Admin, h.Monitor, age, h.Verdict, ready, h.Domains)
	}
	tw.Flush()
	for _, h := range st.Hosts {
		if h.Verdict.String() != "healthy" && h.VerdictReason != "" {
			fmt.Fprintf(w, "\n%s: %s", h.Name, h.VerdictReason)
		}
		if h.Readiness != nil && !h.Readiness.Ready {
			fmt.Fprintf(w, "\n%s: fence readiness: %s", h.Name, h.Readiness.Summary)
		}
		if h.NotEvacuable != "" {
			fmt.Fprintf(w, "\n%s: %s", h.Name, h.NotEvacuable)
		}
	}
	fmt.Fprintln(w)
}

func newHistoryCmd() *cobra.Command {
	var file, output, kind, corr, sinceFlag string
	var limit int
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "history [HOST]",
		Short: "Recorded transitions and verdicts with their evidence, oldest first",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" && output != "timeline" {
				return usageErr(fmt.Errorf("--output %q: must be text, json or timeline", output))
			}
			if limit < 1 {
				return usageErr(fmt.Errorf("--limit %d: must be at least 1", limit))
			}
			cfg, err := loadConfig(file)
			if err != nil {
				return err
			}
			var from time.Time
			if sinceFlag != "" {
				if from, err = parseSince(sinceFlag, time.Now()); err != nil {
					return usageErr(err)
				}
			}
			q := store.Query{Kind: kind, CorrelationID: corr, Limit: limit, Since: from}
			if output == "timeline" {
				// Earlier records tell which evidence moments were already
				// reported; printTimeline applies --since itself.
				q.Since = time.Time{}
			}
			if len(args) == 1 {
				if _, ok := cfg.Host(args[0]); !ok {
					return usageErr(fmt.Errorf("no host %q in %s (hosts: %v)", args[0], file, cfg.HostNames()))
				}
				q.Host = args[0]
			}
			c, err := opClient(cfg)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			recs, err := c.History(ctx, q)
			if err != nil {
				return apiErr(err)
			}
			if output == "timeline" {
				printTimeline(cmd.OutOrStdout(), recs, from)
				return nil
			}
			recs = recordsSince(recs, from) // in case the server ignored it
			if output == "json" {
				if recs == nil {
					recs = []store.Record{}
				}
				return writeJSONOut(cmd.OutOrStdout(), recs)
			}
			printHistory(cmd.OutOrStdout(), recs)
			return nil
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file (daemon address and API token)")
	c.Flags().StringVarP(&output, "output", "o", "text", "text, json (includes the evidence) or timeline (offsets from --since, "+
		"with the last heartbeat and BMC readings the evidence names)")
	c.Flags().StringVar(&sinceFlag, "since", "", "only records at or after this RFC 3339 time, or this long ago (10m)")
	c.Flags().StringVar(&kind, "kind", "", "only records of this kind: monitor, verdict, reboot, storm, readiness, admin, would-fence, "+
		"fence, fence-skipped, evacuation, evicted")
	c.Flags().StringVar(&corr, "correlation-id", "", "only records of this incident")
	c.Flags().IntVar(&limit, "limit", 100, "newest N records")
	c.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "deadline of the API call")
	c.SetContext(context.Background())
	return c
}

func printHistory(w io.Writer, recs []store.Record) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tHOST\tKIND\tCHANGE\tINCIDENT\tREASON")
	for _, r := range recs {
		host := r.Host
		if host == "" {
			host = "-"
		}
		change := r.To
		if r.From != "" {
			change = r.From + " → " + r.To
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.At.Local().Format("2006-01-02 15:04:05.000"), host, r.Kind, change,
			r.CorrelationID, strings.ReplaceAll(r.Reason, "\n", " "))
	}
	tw.Flush()
}
