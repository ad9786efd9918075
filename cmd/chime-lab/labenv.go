package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
)

// configFile is where `chime-lab config` writes by default and what
// `chime-lab exec` hands chime-fence as $CHIME_FENCE_CONFIG.
func configFile(dir string) string { return filepath.Join(dir, "chime-fence.yaml") }

// findLab resolves the lab a command means: --dir D (the lab in D/lab), or
// --lab NAME, or with neither the only lab up on the machine. It returns
// chime-lab's directory D and the attached lab.
func findLab(dir, name string) (string, *lab.Lab, error) {
	if dir == "" {
		labDir, err := lab.Lookup(name)
		if err != nil {
			return "", nil, err
		}
		// chime-lab keeps the lab in D/lab; a lab started by a test has no
		// D, and its config and token paths then simply do not exist.
		dir = filepath.Dir(labDir)
	}
	l, err := lab.Attach(filepath.Join(dir, "lab"))
	if err != nil {
		return "", nil, fmt.Errorf("%w (is the lab up?)", err)
	}
	return dir, l, nil
}

// labEnv is the environment a command in the controller namespace gets:
// the lab's marker (so `chime-lab down` stops it with the lab), the
// chime-fence configuration, and the token files that exist.
func labEnv(dir string, l *lab.Lab) []string {
	env := []string{"CHIME_LAB=" + l.Name(), "CHIME_FENCE_CONFIG=" + configFile(dir)}
	secret, api := labconfig.TokenFiles(dir)
	if fileExists(api) {
		env = append(env, "CHIME_FENCE_API_TOKEN_FILE="+api)
	}
	if fileExists(secret) {
		// The cluster secret: `chime-fence agent-credential` derives any
		// host's credentials from it through the config.
		env = append(env, "CHIME_LAB_AGENT_SECRET_FILE="+secret)
	}
	return env
}

// nsArgv is the command line that runs argv in the lab's controller
// namespace with labEnv.
func nsArgv(dir string, l *lab.Lab, argv ...string) []string {
	out := []string{"ip", "netns", "exec", l.Controller().Netns, "env"}
	out = append(out, labEnv(dir, l)...)
	return append(out, argv...)
}

// execInLab replaces chime-lab with argv in the controller namespace (ip
// netns exec and env exec in place, so the PID a script holds is the
// command's).
func execInLab(dir, name string, argv []string, stderr io.Writer) int {
	if len(argv) == 0 {
		fmt.Fprintln(stderr, "chime-lab: exec: no command (chime-lab exec [--lab NAME] -- CMD [ARG...])")
		return 2
	}
	d, l, err := findLab(dir, name)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: exec: %v\n", err)
		return 1
	}
	full := nsArgv(d, l, argv...)
	ip, err := exec.LookPath(full[0])
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: exec: %v\n", err)
		return 1
	}
	err = syscall.Exec(ip, full, os.Environ())
	fmt.Fprintf(stderr, "chime-lab: exec: %v\n", err)
	return 1
}

// printPrefix prints nsArgv without a command, for `$(chime-lab env)
// chime-fence status`. Lab paths have no spaces (lab.Config refuses them),
// so the words survive the shell's splitting unquoted.
func printPrefix(dir, name string, stdout, stderr io.Writer) int {
	d, l, err := findLab(dir, name)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: env: %v\n", err)
		return 1
	}
	words := nsArgv(d, l)
	for _, w := range words {
		if strings.ContainsAny(w, " \t\n'\"\\$`*?[") {
			fmt.Fprintf(stderr, "chime-lab: env: %q would not survive the shell's word splitting; use chime-lab exec\n", w)
			return 1
		}
	}
	fmt.Fprintln(stdout, strings.Join(words, " "))
	return 0
}
