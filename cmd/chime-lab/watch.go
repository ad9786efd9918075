package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/e2e/lab"
)

// qemuProc is one live QEMU process of a lab host.
type qemuProc struct {
	host string
	pid  int
	cmd  string // its command line, NULs as spaces
}

// guestName is the domain a QEMU command line runs (libvirt passes
// "-name guest=NAME,..."), "" if none.
func guestName(cmdline string) string {
	i := strings.Index(cmdline, "guest=")
	if i < 0 {
		return ""
	}
	rest := cmdline[i+len("guest="):]
	if j := strings.IndexAny(rest, ", "); j >= 0 {
		rest = rest[:j]
	}
	return rest
}

// sharedHolders maps each disk that more than one QEMU process names to
// those processes: the moment two hosts could write one disk.
func sharedHolders(procs []qemuProc, disks []string) map[string][]string {
	out := map[string][]string{}
	for _, d := range disks {
		var hs []string
		for _, p := range procs {
			if strings.Contains(p.cmd, d) {
				hs = append(hs, fmt.Sprintf("%s/pid %d", p.host, p.pid))
			}
		}
		if len(hs) > 1 {
			out[d] = hs
		}
	}
	return out
}

// watchOpts are `chime-lab watch`'s inputs.
type watchOpts struct {
	from    string    // the host the VMs left
	since   time.Time // offsets are from here
	timeout time.Duration
	names   []string
}

// watchVMs waits until every named VM runs (virsh says running) on a host
// other than o.from, printing a timeline row for each as it is seen; all
// along it samples every host's QEMU processes and reports any moment two
// of them named the same shared disk. Exit 1 on a timeout or a violation.
func watchVMs(l *lab.Lab, o watchOpts, stdout, stderr io.Writer) int {
	disks, _ := filepath.Glob(filepath.Join(l.SharedDir(), "*.qcow2"))
	pending := map[string]bool{}
	for _, n := range o.names {
		pending[n] = true
	}
	violations := map[string]bool{}
	samples := 0
	deadline := time.Now().Add(o.timeout)
	for {
		var procs []qemuProc
		for _, h := range l.Hosts() {
			for _, p := range l.QEMUPIDs(h) {
				b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline")
				if err != nil {
					continue // exited meanwhile
				}
				procs = append(procs, qemuProc{host: h.Name, pid: p, cmd: strings.ReplaceAll(string(b), "\x00", " ")})
			}
		}
		samples++
		for d, hs := range sharedHolders(procs, disks) {
			v := fmt.Sprintf("%s held by %s", d, strings.Join(hs, " and "))
			if !violations[v] {
				violations[v] = true
				fmt.Fprintf(stderr, "chime-lab watch: VIOLATION at %s: %s\n", offsetSince(o.since), v)
			}
		}
		for _, p := range procs {
			n := guestName(p.cmd)
			if !pending[n] {
				continue
			}
			if p.host == o.from {
				v := fmt.Sprintf("%s runs on %s (pid %d), the host it should have left", n, p.host, p.pid)
				if !violations[v] {
					violations[v] = true
					fmt.Fprintf(stderr, "chime-lab watch: VIOLATION at %s: %s\n", offsetSince(o.since), v)
				}
				continue
			}
			h, err := l.Host(p.host)
			if err != nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := l.DomainState(ctx, h, n)
			cancel()
			if err == nil && st == "running" {
				delete(pending, n)
				fmt.Fprintf(stdout, "%9s  %-6s %-10s %s running on %s (seen by the lab: virsh domstate, QEMU pid %d), was on %s\n",
					offsetSince(o.since), p.host, "vm", n, p.host, p.pid, o.from)
			}
		}
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	code := 0
	if len(pending) > 0 {
		var left []string
		for n := range pending {
			left = append(left, n)
		}
		sort.Strings(left)
		fmt.Fprintf(stderr, "chime-lab watch: not running on another host after %s: %s\n", o.timeout, strings.Join(left, ", "))
		code = 1
	}
	if len(violations) > 0 {
		code = 1
	} else {
		fmt.Fprintf(stderr, "chime-lab watch: no shared disk was named by two QEMU processes in %d samples of every host (%d disks)\n",
			samples, len(disks))
	}
	return code
}

// offsetSince is now - t as the timeline's signed seconds ("+1.234s").
func offsetSince(t time.Time) string {
	d := time.Since(t)
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	ms := d.Round(time.Millisecond).Milliseconds()
	return fmt.Sprintf("%s%d.%03ds", sign, ms/1000, ms%1000)
}
