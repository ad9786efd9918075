package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Environment markers on the processes the lab starts.
const (
	envLab   = "CHIME_LAB"       // =NAME on everything the lab starts
	envHost  = "CHIME_LAB_HOST"  // =host name on a host's supervisor and its children
	envInit  = "CHIME_LAB_INIT"  // =host netns on a host's PID 1 and below
	envAgent = "CHIME_LAB_AGENT" // =1 on the agent
)

// run runs argv and returns its combined output; the error carries the
// command and the output's tail.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, tail(out, 400))
	}
	return string(out), nil
}

func tail(b []byte, max int) string {
	b = bytes.TrimSpace(b)
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func tailFile(path string, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return strconv.Quote(tail(b, max))
}

// pids lists every process id in /proc.
func pids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		if p, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// environ returns a process's initial environment; empty for zombies and
// kernel threads.
func environ(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

func hasEnv(pid int, kv string) bool {
	for _, e := range environ(pid) {
		if e == kv {
			return true
		}
	}
	return false
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// nsID is the namespace link of a process ("pid:[4026532]"), "" if gone.
func nsID(pid int, kind string) string {
	s, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/" + kind)
	if err != nil {
		return ""
	}
	return s
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the last ')' (comm may contain anything).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// children lists the processes whose parent is pid, zombies included.
func children(pid int) []int {
	var out []int
	for _, p := range pids() {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// killWait sends SIGKILL to pids and waits until none is alive or ctx ends.
func killWait(ctx context.Context, ps []int) error {
	for _, p := range ps {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	for {
		var left []int
		for _, p := range ps {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("processes %v still alive after SIGKILL: %w", left, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// netnsFiles lists the named network namespaces whose name starts with
// prefix.
func netnsFiles(prefix string) []string {
	ents, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// netnsID is the "net:[inode]" identity of a named namespace.
func netnsID(name string) string {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", name), &st); err != nil {
		return ""
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// shq quotes s for a POSIX shell.
func shq(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
