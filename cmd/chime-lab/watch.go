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

// qemuScanner lists every lab host's QEMU processes with one pass over
// /proc (lab.QEMUPIDs scans it once per host, too slow to sample often).
type qemuScanner struct {
	l       *lab.Lab
	hostOf  map[string]string // PID namespace → host name
	refresh time.Time
}

func (q *qemuScanner) scan() []qemuProc {
	if time.Now().After(q.refresh) { // a host may have been powered on or off
		q.hostOf = map[string]string{}
		for _, h := range q.l.Hosts() {
			if ps := q.l.HostPIDs(h); len(ps) > 0 {
				if ns, err := os.Readlink("/proc/" + strconv.Itoa(ps[0]) + "/ns/pid"); err == nil {
					q.hostOf[ns] = h.Name
				}
			}
		}
		q.refresh = time.Now().Add(500 * time.Millisecond)
	}
	ents, _ := os.ReadDir("/proc")
	var out []qemuProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		dir := "/proc/" + e.Name()
		if comm, err := os.ReadFile(dir + "/comm"); err != nil || !strings.HasPrefix(string(comm), "qemu-system") {
			continue
		}
		ns, err := os.Readlink(dir + "/ns/pid")
		host, ok := q.hostOf[ns]
		if err != nil || !ok {
			continue // not a lab host's (another lab's, or exited)
		}
		b, err := os.ReadFile(dir + "/cmdline")
		if err != nil {
			continue
		}
		out = append(out, qemuProc{host: host, pid: pid, cmd: strings.ReplaceAll(string(b), "\x00", " ")})
	}
	return out
}

// seen is a VM libvirt confirmed running (ok), or whose QEMU process went
// away before it did (!ok: look for it again).
type seen struct {
	name, host, at string
	pid            int
	ok             bool
}

// confirm asks h's libvirtd until it says the VM runs, while its QEMU
// process lives.
func confirm(l *lab.Lab, h lab.Host, name string, pid int, since, deadline time.Time, out chan<- seen) {
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := l.DomainState(ctx, h, name)
		cancel()
		if err == nil && st == "running" {
			out <- seen{name: name, host: h.Name, at: offsetSince(since), pid: pid, ok: true}
			return
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	out <- seen{name: name}
}

// watchVMs waits until every named VM runs (virsh says running) on a host
// other than o.from, printing a timeline row for each as it is seen (one
// libvirt check per VM at a time, in parallel, so one slow answer does
// not delay another VM's row); all along it samples every host's QEMU
// processes and reports any moment two of them named the same shared disk.
// Exit 1 on a timeout or a violation.
func watchVMs(l *lab.Lab, o watchOpts, stdout, stderr io.Writer) int {
	disks, _ := filepath.Glob(filepath.Join(l.SharedDir(), "*.qcow2"))
	pending := map[string]bool{}
	for _, n := range o.names {
		pending[n] = true
	}
	checking := map[string]bool{}
	results := make(chan seen, len(o.names))
	violations := map[string]bool{}
	violation := func(v string) {
		if !violations[v] {
			violations[v] = true
			fmt.Fprintf(stderr, "chime-lab watch: VIOLATION at %s: %s\n", offsetSince(o.since), v)
		}
	}
	q := &qemuScanner{l: l}
	samples := 0
	deadline := time.Now().Add(o.timeout)
	for len(pending) > 0 && time.Now().Before(deadline) {
		procs := q.scan()
		samples++
		for d, hs := range sharedHolders(procs, disks) {
			violation(fmt.Sprintf("%s held by %s", d, strings.Join(hs, " and ")))
		}
		for _, p := range procs {
			n := guestName(p.cmd)
			switch {
			case !pending[n]:
			case p.host == o.from:
				violation(fmt.Sprintf("%s runs on %s (pid %d), the host it should have left", n, p.host, p.pid))
			case !checking[n]:
				if h, err := l.Host(p.host); err == nil {
					checking[n] = true
					go confirm(l, h, n, p.pid, o.since, deadline, results)
				}
			}
		}
		for drained := false; !drained; {
			select {
			case r := <-results:
				checking[r.name] = false
				if r.ok {
					delete(pending, r.name)
					fmt.Fprintf(stdout, "%9s  %-6s %-10s %s running on %s (seen by the lab: virsh domstate, QEMU pid %d), was on %s\n",
						r.at, r.host, "vm", r.name, r.host, r.pid, o.from)
				}
			default:
				drained = true
			}
		}
		if len(pending) > 0 {
			time.Sleep(20 * time.Millisecond)
		}
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
