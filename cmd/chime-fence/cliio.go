package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/chimestack/chime-fence/api"
)

// Exit codes of the operator commands (host, task), on top of main's:
// exitOK (0) succeeded, exitFailure (1) the task failed or partly failed,
// exitUsage (2) the daemon refused (400/401/403/404/409/501/503) or the
// command line was wrong, exitUnreachable (3) the daemon could not be
// reached.
const exitUnreachable = 3

const exitCodesHelp = `Exit codes:
  0  succeeded
  1  the task failed or partly failed (or a local error)
  2  refused: the daemon said no (409 conflict, 400 bad request, unknown
     host or task, wrong or read-only token, operation not available)
     or the command line is wrong
  3  the daemon is unreachable`

func refusedErr(err error) error     { return &exitError{code: exitUsage, err: err} }
func unreachableErr(err error) error { return &exitError{code: exitUnreachable, err: err} }

// apiErr maps a client error to its exit code. A transport failure (no
// answer at all) is "unreachable"; a 4xx, or a 501/503 (this daemon cannot
// run the operation, or is not ready), is a refusal the operator must read;
// anything else is a failure.
func apiErr(err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	switch {
	case errors.Is(err, api.ErrConflict), errors.Is(err, api.ErrNotFound),
		errors.Is(err, api.ErrBadRequest), errors.Is(err, api.ErrUnauthorized),
		errors.Is(err, api.ErrForbidden), errors.Is(err, api.ErrUnavailable):
		return refusedErr(err)
	case errors.As(err, &ue):
		return unreachableErr(err)
	}
	return failureErr(err)
}

// terminal reports whether a stream is an interactive terminal: a file
// with terminal attributes (/dev/null is a character device, not a
// terminal). Tests pass a reader or writer with an IsTerminal method.
func terminal(s any) bool {
	if t, ok := s.(interface{ IsTerminal() bool }); ok {
		return t.IsTerminal()
	}
	f, ok := s.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// confirmHost asks the operator to type the host name before a destructive
// operation, after printing what describe says about the host (an error
// from describe stops here: no point asking about a host the daemon cannot
// show). With no terminal to ask on it refuses rather than guessing: a
// script must say --yes.
func confirmHost(in io.Reader, out io.Writer, host, what string, describe func() (string, error)) error {
	if !terminal(in) {
		return refusedErr(fmt.Errorf("%s %s is destructive and stdin is not a terminal to confirm on: pass --yes to confirm non-interactively", what, host))
	}
	about, err := describe()
	if err != nil {
		return err
	}
	fmt.Fprintln(out, about)
	fmt.Fprintf(out, "%s %s: type the host name to confirm: ", what, host)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return refusedErr(fmt.Errorf("%s %s not confirmed: no answer read (%v)", what, host, err))
	}
	if got := strings.TrimSpace(line); got != host {
		return refusedErr(fmt.Errorf("%s %s not confirmed: typed %q, expected %q", what, host, got, host))
	}
	return nil
}

// checkTableOutput accepts table (text is kept as an alias: status and
// history call it that) or json.
func checkTableOutput(o string) error {
	switch o {
	case "table", "text", "json":
		return nil
	}
	return usageErr(fmt.Errorf("--output %q: must be table or json", o))
}
