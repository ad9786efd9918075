// Package blackhole keeps test subnets unreachable from the machine's root
// network namespace while a lab or bench that uses them runs, so a command
// run in the wrong namespace (chime-fence status with the lab's config, an
// ipmitool against a lab BMC) fails at once with "no route to host" instead
// of leaving the machine by its default route.
//
// Claim records an owner's subnets as a file in Dir (one per owner, holding
// the owner's PID and start time and its subnets) and installs an
// `unreachable` route for each in the root namespace's main table; Release
// removes the owner's file and each of its routes no live claim still
// needs. A claim whose process is gone (a killed test, a keeper killed by
// SIGKILL) no longer counts, so the next Claim or Release of anyone removes
// its routes; Dir itself is removed when the last claim goes. Only routes
// a claim in Dir names, and that carry the protocol mark Proto, are ever
// deleted: never one an administrator added. `unreachable`
// rather than `blackhole`: the kernel answers both at once, but a
// blackhole says "invalid argument" and an unreachable route says "no
// route to host", which tells an operator what happened.
//
// Callers hold root (CAP_NET_ADMIN) and iproute2. Claim refuses a subnet the
// machine already routes some other way: a lab on it would shadow a real
// network.
package blackhole

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Dir holds one claim file per owner. It lives on /run (a tmpfs cleared at
// boot, as the routes are), never on the root filesystem.
const Dir = "/run/chime-blackhole"

var netRE = regexp.MustCompile(`^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}/\d{1,2}$`)

var ownerRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,40}$`)

// Claim makes nets unreachable from the root namespace for owner (a name
// such as "lab-chlab"), replacing owner's earlier claim. The claim lives
// as long as the calling process, or until Release(owner).
func Claim(ctx context.Context, owner string, nets []string) error {
	return claim(ctx, Dir, owner, nets, os.Getpid())
}

// Release drops owner's claim and deletes every route that no live claim
// needs any more. Releasing an owner with no claim still collects the
// routes of dead claims.
func Release(ctx context.Context, owner string) error {
	return release(ctx, Dir, owner)
}

// Routes lists the root namespace's unreachable routes among nets (for
// tests and leftover reports).
func Routes(ctx context.Context, nets []string) ([]string, error) {
	have, err := unreachableRoutes(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range nets {
		if have[n] {
			out = append(out, n)
		}
	}
	return out, nil
}

// Claimed reports whether owner holds a live claim.
func Claimed(owner string) bool {
	c, err := readClaim(filepath.Join(Dir, owner))
	return err == nil && c.live()
}

// claimRec is one owner's claim file: "pid starttime" then one subnet a
// line.
type claimRec struct {
	pid   int
	start string
	nets  []string
}

func (c claimRec) live() bool { return c.pid > 0 && startTime(c.pid) == c.start }

func claim(ctx context.Context, dir, owner string, nets []string, pid int) error {
	if !ownerRE.MatchString(owner) {
		return fmt.Errorf("blackhole: invalid owner %q", owner)
	}
	for _, n := range nets {
		if _, err := parseNet(n); err != nil {
			return fmt.Errorf("blackhole: %s: %w", owner, err)
		}
	}
	created, err := mkdir(dir)
	if err != nil {
		return err
	}
	unlock, err := lock(dir)
	if err != nil {
		return err
	}
	defer unlock()
	st := startTime(pid)
	if st == "" {
		return fmt.Errorf("blackhole: %s: process %d not found", owner, pid)
	}
	body := fmt.Sprintf("%d %s\n%s\n", pid, st, strings.Join(nets, "\n"))
	if err := os.WriteFile(filepath.Join(dir, owner), []byte(body), 0o644); err != nil {
		return fmt.Errorf("blackhole: %s: claim: %w", owner, err)
	}
	have, err := unreachableRoutes(ctx)
	if err == nil {
		for _, n := range nets {
			if have[n] {
				continue
			}
			if _, err = ipRoute(ctx, "add", "unreachable", n); err != nil {
				other, _ := ipRoute(ctx, "show", "exact", n)
				if strings.TrimSpace(other) != "" {
					err = fmt.Errorf("%s is already routed on this machine (%s); a lab on it would shadow a real network", n, strings.TrimSpace(other))
				}
				break
			}
		}
	}
	if err != nil {
		_ = os.Remove(filepath.Join(dir, owner))
		if rerr := collect(ctx, dir, nil); rerr != nil {
			err = errors.Join(err, rerr)
		}
		if created {
			_ = os.Remove(dir)
		}
		return fmt.Errorf("blackhole: %s: %w", owner, err)
	}
	return nil
}

func release(ctx context.Context, dir, owner string) error {
	if !ownerRE.MatchString(owner) {
		return fmt.Errorf("blackhole: invalid owner %q", owner)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	unlock, err := lock(dir)
	if err != nil {
		return err
	}
	defer unlock()
	p := filepath.Join(dir, owner)
	c, _ := readClaim(p)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("blackhole: %s: release: %w", owner, err)
	}
	return collect(ctx, dir, c.nets)
}

// collect deletes the routes of the released subnets and of dead claims
// that no live claim shares, removes dead claims' files, and Dir when no
// claim is left. The caller holds the lock.
func collect(ctx context.Context, dir string, released []string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("blackhole: %w", err)
	}
	var live [][]string
	gone := slices.Clone(released)
	for _, e := range ents {
		if !ownerRE.MatchString(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		c, err := readClaim(p)
		if err == nil && c.live() {
			live = append(live, c.nets)
			continue
		}
		gone = append(gone, c.nets...)
		_ = os.Remove(p)
	}
	have, err := unreachableRoutes(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range Orphans(have, gone, live) {
		if _, err := ipRoute(ctx, "del", "unreachable", n); err != nil {
			errs = append(errs, fmt.Errorf("blackhole: %w", err))
		}
	}
	if len(live) == 0 && len(errs) == 0 {
		// The lock file goes with the directory; a concurrent Claim
		// recreates both.
		_ = os.Remove(filepath.Join(dir, lockFile))
		_ = os.Remove(dir)
	}
	return errors.Join(errs...)
}

// Orphans is the routes to delete: each subnet of gone (released or dead
// claims) that is installed (in have: the unreachable routes marked Proto)
// and that no live claim names. Sorted, without repeats.
func Orphans(have map[string]bool, gone []string, live [][]string) []string {
	keep := map[string]bool{}
	for _, nets := range live {
		for _, n := range nets {
			keep[n] = true
		}
	}
	var out []string
	for _, n := range gone {
		if have[n] && !keep[n] {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Proto marks the routes Claim installs (`ip route ... proto 77`, a number
// no routing daemon uses), so Release only ever deletes its own and never
// a route an administrator added by hand.
const Proto = "77"

const lockFile = ".lock"

func mkdir(dir string) (created bool, err error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("blackhole: %w", err)
	}
	return true, nil
}

// lock serializes claims across processes (two labs starting at once).
// collect removes the lock file with Dir when the last claim goes, so a
// waiter that then gets the lock on the unlinked file tries again.
func lock(dir string) (func(), error) {
	for {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("blackhole: %w", err)
		}
		p := filepath.Join(dir, lockFile)
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("blackhole: lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("blackhole: lock: %w", err)
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(p)
		if err1 == nil && err2 == nil && os.SameFile(held, now) {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		f.Close()
	}
}

func readClaim(path string) (claimRec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return claimRec{}, err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var c claimRec
	if f := strings.Fields(lines[0]); len(f) == 2 {
		c.pid, _ = strconv.Atoi(f[0])
		c.start = f[1]
	}
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			c.nets = append(c.nets, l)
		}
	}
	return c, nil
}

// startTime is field 22 of /proc/PID/stat (clock ticks since boot), so a
// reused PID never passes for the claim's owner; "" when pid is gone or a
// zombie.
func startTime(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return ""
	}
	return f[19]
}

func parseNet(n string) (string, error) {
	if !netRE.MatchString(n) {
		return "", fmt.Errorf("subnet %q: want a.b.c.d/len", n)
	}
	return n, nil
}

// unreachableRoutes lists the unreachable routes with our protocol in the
// root namespace's main table.
func unreachableRoutes(ctx context.Context) (map[string]bool, error) {
	out, err := ipRoute(ctx, "show", "type", "unreachable", "proto", Proto)
	if err != nil {
		return nil, err
	}
	have := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "unreachable" {
			have[f[1]] = true
		} else if len(f) >= 1 && strings.Contains(f[0], "/") {
			have[f[0]] = true
		}
	}
	return have, nil
}

func ipRoute(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	argv := append([]string{"route"}, args...)
	if args[0] == "add" || args[0] == "del" {
		argv = append(argv, "proto", Proto)
	}
	out, err := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Live lists the owners holding a live claim, sorted.
func Live() []string {
	ents, _ := os.ReadDir(Dir)
	var out []string
	for _, e := range ents {
		if !ownerRE.MatchString(e.Name()) {
			continue
		}
		if c, err := readClaim(filepath.Join(Dir, e.Name())); err == nil && c.live() {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out
}
