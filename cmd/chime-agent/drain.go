package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
)

// drainHV is the local libvirtd as chime-agent drain uses it.
type drainHV interface {
	agent.DrainHypervisor
	Close() error
}

// dialFunc builds the libvirt client; tests pass a fake.
type dialFunc func(cfg libvirt.Config, log zerolog.Logger) (drainHV, error)

func dialLibvirt(cfg libvirt.Config, log zerolog.Logger) (drainHV, error) {
	return libvirt.New(cfg, log)
}

type drainFlags struct {
	host, stateDir, libvirt, libvirtURI, output, logLevel string
	confirm                                               bool
	timeout                                               time.Duration
}

// drainOutput is --output json: the drain's result, or the dry run's plan
// (DryRun, Running = active domains now, no DrainedAt).
type drainOutput struct {
	DryRun bool `json:"dry_run"`
	agent.DrainResult
	// AlreadyDrained is the marker found before this command, if any.
	AlreadyDrained *agent.Marker `json:"already_drained,omitempty"`
	Error          string        `json:"error,omitempty"`
}

func newDrain(stdout, stderr io.Writer, dial dialFunc) *cobra.Command {
	var f drainFlags
	hostname, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "drain [--confirm]",
		Short: "stop every domain on this host and keep it drained locally (works without the daemon)",
		Long: `chime-agent drain is the operator's fallback when the control plane cannot reach
this host. It talks only to the local libvirtd and local files, so it works with
the management network cut.

Without --confirm it only validates (libvirtd answers, the state directory is
writable) and prints what it would stop. With --confirm it first writes the
drain marker in --state-dir (durably: a drain that cannot be remembered stops
nothing), then destroys every active domain. While the marker exists, chime-agent
starts no domain on this host — also after a restart or a reboot — whatever the
daemon's assignment says. The marker is lifted by the agent when the daemon sets
the host enabled or disabled after the drain. The agent reports the drain in its
heartbeats once the daemon is reachable again.

Exit status: 0 when every domain is stopped (or, without --confirm, when the
drain could run); 1 when something failed (the marker, if written, stays); 2 on
bad flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return drain(cmd.Context(), f, stdout, stderr, dial)
		},
	}
	fs := cmd.Flags()
	fs.BoolVar(&f.confirm, "confirm", false, "really stop the domains (without it: validate and print the plan)")
	fs.StringVar(&f.host, "host", hostname, "this host's name, for the output and logs")
	fs.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "the agent's state directory (where the drain marker goes)")
	fs.StringVar(&f.libvirt, "libvirt", "unix:/run/libvirt/libvirt-sock", "libvirtd's address: unix:/path or host:port")
	fs.StringVar(&f.libvirtURI, "libvirt-uri", "qemu:///system", "libvirt driver URI")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "deadline of each libvirt call")
	fs.StringVarP(&f.output, "output", "o", "table", "table or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (logs go to stderr)")
	return cmd
}

func drain(ctx context.Context, f drainFlags, stdout, stderr io.Writer, dial dialFunc) error {
	var problems []error
	if !filepath.IsAbs(f.stateDir) {
		problems = append(problems, fmt.Errorf("--state-dir %q: want an absolute path", f.stateDir))
	}
	if f.timeout <= 0 {
		problems = append(problems, fmt.Errorf("--timeout %s: want a positive duration", f.timeout))
	}
	if f.output != "table" && f.output != "json" {
		problems = append(problems, fmt.Errorf("--output %q: want table or json", f.output))
	}
	if f.host == "" {
		problems = append(problems, errors.New("--host is empty"))
	}
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || f.logLevel == "" {
		problems = append(problems, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel))
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Str("service", "chime-agent").Str("component", "drain").Str("host", f.host).Logger()
	var lv drainHV
	if len(problems) == 0 {
		lv, err = dial(libvirt.Config{Host: f.host, Address: f.libvirt, URI: f.libvirtURI, CallTimeout: f.timeout}, log)
		if err != nil {
			problems = append(problems, fmt.Errorf("--libvirt: %w", err))
		}
	}
	if len(problems) > 0 {
		return usageErr(errors.Join(problems...))
	}
	defer lv.Close()
	fail := func(err error) error { return &exitError{code: exitFailure, err: err} }

	before, merr := agent.ReadMarker(f.stateDir)
	if merr != nil {
		log.Warn().Err(merr).Msg("existing drain marker unreadable; the host already counts as drained")
	}
	out := drainOutput{AlreadyDrained: before, DryRun: !f.confirm}
	if !f.confirm {
		if err := agent.CheckStateDir(f.stateDir); err != nil {
			return fail(fmt.Errorf("cannot drain: %w", err))
		}
		lctx, cancel := context.WithTimeout(ctx, f.timeout)
		doms, err := lv.Domains(lctx, false)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("cannot drain: list domains: %w", err))
		}
		out.DrainResult = agent.DrainResult{Host: f.host, Marker: filepath.Join(f.stateDir, agent.MarkerFile), Domains: agent.PlanDrain(doms)}
		for _, d := range doms {
			if d.State.Active() {
				out.Running++
			}
		}
		return printDrain(stdout, f.output, out)
	}

	res, err := agent.DrainLocal(ctx, lv, agent.DrainOptions{Host: f.host, StateDir: f.stateDir, By: "cli", CallTimeout: f.timeout}, log)
	out.DrainResult = res
	if err != nil {
		out.Error = err.Error()
	}
	if perr := printDrain(stdout, f.output, out); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return fail(err)
	}
	return nil
}

func printDrain(w io.Writer, format string, o drainOutput) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(o)
	}
	var lines []string
	add := func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }
	if o.AlreadyDrained != nil {
		add("host %s: already drained locally since %s (by %s)", o.Host, o.AlreadyDrained.DrainedAt.Format(time.RFC3339), o.AlreadyDrained.By)
	}
	if o.DryRun {
		add("host %s: dry run, nothing stopped (add --confirm to drain)", o.Host)
		add("would write the drain marker %s", o.Marker)
	} else if !o.DrainedAt.IsZero() {
		add("host %s: drain marker %s written at %s", o.Host, o.Marker, o.DrainedAt.Format(time.RFC3339))
	}
	for _, d := range o.Domains {
		l := fmt.Sprintf("  %-14s %-24s %s  (%s)", d.Action, d.Name, d.UUID, d.Before)
		if d.Error != "" {
			l += ": " + d.Error
		}
		lines = append(lines, l)
	}
	switch {
	case o.DryRun:
		add("%d of %d domains active; all would be destroyed and none started again until the daemon enables this host after the drain", o.Running, len(o.Domains))
	case o.Running >= 0:
		add("%d domains active after the drain", o.Running)
	}
	if !o.DryRun && o.Error == "" {
		add("this host stays drained (the agent starts nothing) until the daemon sets it enabled or disabled after this drain")
	}
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, l); err != nil {
			return err
		}
	}
	return nil
}
