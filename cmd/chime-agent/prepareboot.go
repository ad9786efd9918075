package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/agent"
)

type prepareBootFlags struct {
	stateDir, logLevel string
	autostartDirs      []string
}

func newPrepareBoot(stderr io.Writer) *cobra.Command {
	var f prepareBootFlags
	cmd := &cobra.Command{
		Use:   "prepare-boot",
		Short: "before libvirtd starts at boot: remove every libvirt autostart link (works without libvirtd or the daemon)",
		Long: `chime-agent prepare-boot runs once per boot BEFORE libvirtd (or virtqemud)
starts: examples/chime-agent-prepare-boot.service orders it Before= both and makes
them require it. It removes every libvirt autostart link (--autostart-dir, by
default /etc/libvirt/qemu/autostart, which libvirtd and virtqemud share), so
libvirtd starts no domain by itself. While this host was off, the daemon may
have fenced it and rebuilt its VMs elsewhere; a copy libvirtd autostarts would
then run on two hosts. Nothing the agent persisted (--state-dir) can prove
otherwise without the daemon, so every link goes; the state is only logged to
explain it. The agent starts the domains the daemon still assigns here once it
has fetched a current assignment.

It needs neither libvirtd nor the daemon. Each removal is logged (JSON, stderr).
Exit status: 0 when no autostart link is left; 1 when one could not be removed
(libvirtd must then not start); 2 on bad flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return prepareBoot(f, stderr)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "the agent's state directory (its last persisted state, for the log)")
	fs.StringArrayVar(&f.autostartDirs, "autostart-dir", []string{agent.DefaultAutostartDir},
		"libvirt autostart directory to empty (repeatable)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (logs go to stderr)")
	return cmd
}

func prepareBoot(f prepareBootFlags, stderr io.Writer) error {
	var problems []error
	if !filepath.IsAbs(f.stateDir) {
		problems = append(problems, fmt.Errorf("--state-dir %q: want an absolute path", f.stateDir))
	}
	if len(f.autostartDirs) == 0 {
		problems = append(problems, errors.New("--autostart-dir: at least one is needed"))
	}
	for _, d := range f.autostartDirs {
		if !filepath.IsAbs(d) {
			problems = append(problems, fmt.Errorf("--autostart-dir %q: want an absolute path", d))
		}
	}
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || f.logLevel == "" {
		problems = append(problems, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel))
	}
	if len(problems) > 0 {
		return usageErr(errors.Join(problems...))
	}
	log := zerolog.New(stderr).Level(level).With().Timestamp().Str("service", "chime-agent").Logger()
	if _, err := agent.PrepareBoot(f.stateDir, f.autostartDirs, log); err != nil {
		return &exitError{code: exitFailure, err: err}
	}
	return nil
}
