package lab

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// HostError is a host that did not come up: which host, at which step
// ("boot": its init failed; "libvirtd": libvirtd died or never answered;
// "QEMU capabilities"), and the last lines of the logs that say why, so a
// failed Start reads as plain text.
type HostError struct {
	Host string
	Step string
	Err  error
	Logs []LogTail
}

// LogTail is the end of one log file.
type LogTail struct {
	Path  string
	Lines []string // the last lines, oldest first; nil when the file is missing or empty
}

// tailLines is how many lines of each log a HostError quotes.
const tailLines = 12

func (e *HostError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lab: %s: %s: %v", e.Host, e.Step, e.Err)
	for _, lt := range e.Logs {
		if len(lt.Lines) == 0 {
			fmt.Fprintf(&b, "\n  %s: (empty or missing)", lt.Path)
			continue
		}
		fmt.Fprintf(&b, "\n  last lines of %s:", lt.Path)
		for _, l := range lt.Lines {
			b.WriteString("\n    | " + l)
		}
	}
	return b.String()
}

func (e *HostError) Unwrap() error { return e.Err }

// hostError builds a HostError quoting h's boot log (console.log: what
// its init printed) and, from the libvirtd step on, libvirtd's output.
func hostError(h Host, step string, err error) *HostError {
	logs := []string{filepath.Join(h.Dir, "console.log")}
	if step != "boot" {
		logs = append(logs, filepath.Join(h.Dir, "log", "libvirtd.out"))
	}
	e := &HostError{Host: h.Name, Step: step, Err: err}
	for _, p := range logs {
		e.Logs = append(e.Logs, LogTail{Path: p, Lines: lastLines(p, tailLines)})
	}
	return e
}

// lastLines returns up to n last non-empty lines of the file at path
// (reading at most its last 64 KiB), each cut to 300 bytes.
func lastLines(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 64<<10 {
		_, _ = f.Seek(st.Size()-64<<10, 0)
	}
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<10)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), " \t\r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		if len(l) > 300 {
			l = l[:300] + "…"
		}
		out = append(out, l)
		if len(out) > n {
			out = out[1:]
		}
	}
	return out
}

// bootFailure reports why h failed to boot during Start, nil while it may
// still come up: its init exited (the power supply logs "down rc=N"; at
// Start nothing powers a host off, so any exit is a failure), or its init
// has run for libvirtdGrace without a libvirtd child (libvirtd exited).
func bootFailure(h Host) error {
	if rc, ok := firstDown(filepath.Join(h.Dir, "power.log")); ok {
		return hostError(h, "boot", fmt.Errorf("the host's init (host-init.sh) exited with status %s before libvirtd started", rc))
	}
	p := initPID(h)
	if p <= 0 {
		return nil
	}
	up, ok := upSince(p)
	if !ok || up < libvirtdGrace {
		return nil
	}
	for _, c := range children(p) {
		if comm(c) == "libvirtd" && alive(c) {
			return nil
		}
	}
	return hostError(h, "libvirtd", errors.New("libvirtd exited (the host's init runs, but has no libvirtd)"))
}

// libvirtdGrace is how long after its init starts a host may go without a
// libvirtd process: init starts it within a few milliseconds of its mounts.
const libvirtdGrace = 3 * time.Second

// firstDown finds the first "down rc=N" line of a power supply log.
func firstDown(path string) (rc string, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[1] == "down" {
			return strings.TrimPrefix(f[2], "rc="), true
		}
	}
	return "", false
}

func comm(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	return strings.TrimSpace(string(b))
}

// upSince is how long process pid has run: /proc/uptime minus the start
// time in /proc/PID/stat (field 22, in USER_HZ ticks, 100 a second on
// Linux).
func upSince(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false
	}
	start, err := strconv.ParseFloat(f[19], 64)
	if err != nil {
		return 0, false
	}
	u, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, false
	}
	uf := strings.Fields(string(u))
	if len(uf) == 0 {
		return 0, false
	}
	now, err := strconv.ParseFloat(uf[0], 64)
	if err != nil {
		return 0, false
	}
	return time.Duration((now - start/100) * float64(time.Second)), true
}
