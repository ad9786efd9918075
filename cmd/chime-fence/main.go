// Command chime-fence is the daemon and the operator's CLI. This package
// only parses flags and wires packages together.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

// Exit codes: scripts and cron jobs branch on them.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure: a peer did not answer, a check failed
	exitUsage   = 2 // bad flags or an invalid configuration
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error   { return &exitError{code: exitUsage, err: err} }
func failureErr(err error) error { return &exitError{code: exitFailure, err: err} }

func main() {
	// Millisecond timestamps: the recovery timeline is read from the log.
	// Set once here, before any goroutine, as zerolog's format is global.
	zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00"
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns its exit code.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	// cobra's own errors are about flags and arguments.
	return exitUsage
}

// envConfig names the configuration file when -c is not given, so
// `chime-lab exec -- chime-fence status` runs with the lab's.
const envConfig = "CHIME_FENCE_CONFIG"

// defaultConfig is every -c flag's default: $CHIME_FENCE_CONFIG, else the
// packaged path.
func defaultConfig() string {
	if f := os.Getenv(envConfig); f != "" {
		return f
	}
	return "/etc/chime-fence/chime-fence.yaml"
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "chime-fence",
		Short:         "Fence dead libvirt/KVM hosts safely and rebuild their VMs elsewhere",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(newVersionCmd(), newConfigCmd(), newTestNodeCmd(), newDaemonCmd(), newStatusCmd(), newHistoryCmd(), newHostCmd(), newTaskCmd(), newAgentCredentialCmd())
	return root
}

// cliLogger is human console output for interactive commands; the daemon
// logs JSON instead.
func cliLogger(w io.Writer) zerolog.Logger {
	return zerolog.New(zerolog.ConsoleWriter{Out: w, NoColor: true}).With().Timestamp().Logger()
}
