package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Close stops the lab: power supplies, host PID namespaces (libvirtd, QEMU,
// agent), BMCs, every other process in a lab namespace, then the
// namespaces themselves (and with them the nftables tables the faults put
// there). Everything is found and killed by PID. It keeps Dir (logs) and
// may be called more than once. On an attached lab it kills the PIDs the
// owner recorded and sweeps.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	var errs []error
	marker := envLab + "=" + l.cfg.Name

	// Hosts first, with their power flags gone so no power supply reboots
	// them; then the supplies, which by then have reaped their unshare (no
	// zombies left for init).
	var recorded []int
	for _, h := range l.hosts {
		_ = os.Remove(filepath.Join(h.Dir, "power_on"))
		if p := initPID(h.Host); p > 0 {
			recorded = append(recorded, p)
		}
	}
	if err := killWait(ctx, recorded); err != nil {
		errs = append(errs, fmt.Errorf("lab: close: %w", err))
	}
	for _, h := range l.hosts {
		if h.sup != nil {
			// Let the supply reap its unshare and reach its idle read.
			waitNoChildren(ctx, h.sup.Process.Pid)
			_ = h.sup.Process.Kill()
			select {
			case <-h.supDone:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("lab: %s: supervisor %d did not exit", h.Name, h.sup.Process.Pid))
			}
		}
	}
	recorded = nil
	for _, p := range l.attachedPIDs {
		if hasEnv(p, marker) || strings.Contains(cmdline(p), l.cfg.Dir) {
			recorded = append(recorded, p)
		}
	}
	if err := killWait(ctx, recorded); err != nil {
		errs = append(errs, fmt.Errorf("lab: close: %w", err))
	}
	for _, h := range l.hosts {
		if h.ipmi != nil {
			if err := h.ipmi.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("lab: %s: BMC: %w", h.Name, err))
			}
		}
		if h.rf != nil {
			_ = h.rf.Process.Kill()
			select {
			case <-h.rfDone:
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("lab: %s: Redfish BMC %d did not exit", h.Name, h.rf.Process.Pid))
			}
		}
	}
	if err := Sweep(l.cfg.Name); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Join(l.cfg.Dir, stateFile))
	l.log.Info().Dur("took", time.Since(t0)).Msg("lab closed")
	return errors.Join(errs...)
}

// waitNoChildren waits (at most 2 s) until pid has no child processes,
// zombies included.
func waitNoChildren(ctx context.Context, pid int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for len(children(pid)) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// initPID is the PID (root namespace) of h's current PID 1, 0 when the
// host is off or the recorded PID is no longer its init.
func initPID(h Host) int {
	b, err := os.ReadFile(filepath.Join(h.Dir, "init.pid"))
	if err != nil {
		return 0
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p <= 0 || !alive(p) || !hasEnv(p, envInit+"="+h.Netns) {
		return 0
	}
	return p
}

// Sweep removes what a lab called name left behind, e.g. after its owner
// was killed: every process marked CHIME_LAB=name or living in one of the
// lab's network namespaces ("name-*"), then those namespaces (nftables
// tables inside them go with them), then, if all that went well, the
// lab's index entry and its claim on the root namespace's unreachable
// routes (the routes go unless another lab or bench claims them). It does
// not touch the lab directory. Sweeping a name with nothing left is a
// no-op.
func Sweep(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab: sweep: invalid lab name %q", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	prefix := name + "-"
	var errs []error
	// A dying power supply can boot one more host before it is killed, so
	// look again until a pass finds nothing.
	for pass := 0; ; pass++ {
		victims := labProcs(name)
		if len(victims) == 0 {
			break
		}
		if pass == 10 {
			errs = append(errs, fmt.Errorf("lab: sweep %s: processes keep appearing: %v", name, victims))
			break
		}
		if err := killWait(ctx, victims); err != nil {
			errs = append(errs, fmt.Errorf("lab: sweep %s: %w", name, err))
			break
		}
	}
	for _, ns := range netnsFiles(prefix) {
		if _, err := run(ctx, "ip", "netns", "delete", ns); err != nil {
			errs = append(errs, fmt.Errorf("lab: sweep %s: %w", name, err))
		}
	}
	for _, m := range labMounts(prefix, "") {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("lab: sweep %s: unmount %s: %w", name, m, err))
		}
	}
	if len(errs) == 0 {
		// The routes outlive a sweep that left namespaces behind.
		if err := unisolate(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// labProcs lists live processes that belong to lab name.
func labProcs(name string) []int {
	nets := map[string]bool{}
	for _, ns := range netnsFiles(name + "-") {
		if id := netnsID(ns); id != "" {
			nets[id] = true
		}
	}
	self := os.Getpid()
	marker := envLab + "=" + name
	var out []int
	for _, p := range pids() {
		if p == self || !alive(p) {
			continue
		}
		if nets[nsID(p, "net")] || hasEnv(p, marker) {
			out = append(out, p)
		}
	}
	return out
}

// labMounts lists mount points in this mount namespace that belong to a
// lab: namespace bind mounts named prefix* and anything under dir.
func labMounts(prefix, dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := fields[4]
		if strings.HasPrefix(mp, "/run/netns/"+prefix) || (dir != "" && (mp == dir || strings.HasPrefix(mp, dir+"/"))) {
			out = append(out, mp)
		}
	}
	return out
}

// Leftovers describes anything of lab name (directory dir, may be "") that
// still exists: processes, network namespaces, mounts, nftables tables
// named like the lab's in the root namespace (the lab never creates any
// there), its index entry and route claim, and lab-subnet routes once no
// lab or bench claims any. Empty means clean.
func Leftovers(name, dir string) []string {
	var out []string
	for _, p := range labProcs(name) {
		out = append(out, fmt.Sprintf("process %d: %s", p, cmdline(p)))
	}
	for _, ns := range netnsFiles(name + "-") {
		out = append(out, "netns "+ns)
	}
	for _, m := range labMounts(name+"-", dir) {
		out = append(out, "mount "+m)
	}
	out = append(out, isolationLeftovers(name)...)
	if b, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "chimelab") {
				out = append(out, "nft "+strings.TrimSpace(line))
			}
		}
	}
	return out
}
