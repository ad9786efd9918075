package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/e2e/blackhole"
)

// Subnets are every lab subnet: management, then BMC. The lab has no
// storage network (shared storage is a directory). While any lab is up
// they are unreachable from the root namespace (package e2e/blackhole),
// so a client run outside the controller namespace fails at once with
// "no route to host" instead of sending lab traffic out of the machine.
var Subnets = []string{mgmtNet + "0/24", bmcNet + "0/24"}

// IndexDir lists the labs up on this machine: one symlink per lab name,
// pointing at its Dir (chime-lab exec --lab NAME finds a lab by it). It is
// on /run, a tmpfs, and is removed when the last lab goes.
const IndexDir = "/run/chime-lab"

func routeOwner(name string) string { return "lab-" + name }

// isolate claims the lab subnets for the lab and indexes it. Start calls
// it before any lab address exists.
func (l *Lab) isolate(ctx context.Context) error {
	if err := blackhole.Claim(ctx, routeOwner(l.cfg.Name), Subnets); err != nil {
		return fmt.Errorf("lab: root namespace routes: %w", err)
	}
	if err := os.MkdirAll(IndexDir, 0o755); err != nil {
		return fmt.Errorf("lab: index: %w", err)
	}
	link := filepath.Join(IndexDir, l.cfg.Name)
	_ = os.Remove(link)
	if err := os.Symlink(l.cfg.Dir, link); err != nil {
		return fmt.Errorf("lab: index: %w", err)
	}
	return nil
}

// unisolate undoes isolate for lab name: Sweep calls it once the lab's
// namespaces are gone. The routes stay while another lab holds them.
func unisolate(name string) error {
	_ = os.Remove(filepath.Join(IndexDir, name))
	_ = os.Remove(IndexDir) // only when empty
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := blackhole.Release(ctx, routeOwner(name)); err != nil {
		return fmt.Errorf("lab: sweep %s: root namespace routes: %w", name, err)
	}
	return nil
}

// Lookup returns the Dir of the lab called name that is up on this
// machine; with name "" the only lab up, if exactly one is.
func Lookup(name string) (string, error) {
	if name == "" {
		names := Running()
		switch len(names) {
		case 0:
			return "", errors.New("lab: no lab is up")
		case 1:
			name = names[0]
		default:
			return "", fmt.Errorf("lab: %d labs are up (%s); name one", len(names), strings.Join(names, ", "))
		}
	}
	dir, err := os.Readlink(filepath.Join(IndexDir, name))
	if err != nil {
		return "", fmt.Errorf("lab: no lab %q is up (%s)", name, IndexDir)
	}
	return dir, nil
}

// Running lists the names of the labs indexed as up, sorted.
func Running() []string {
	ents, _ := os.ReadDir(IndexDir)
	var out []string
	for _, e := range ents {
		if nameRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

// isolationLeftovers reports lab name's index entry and route claim, and
// lab-subnet routes in the root namespace when no lab or bench claims
// anything any more.
func isolationLeftovers(name string) []string {
	var out []string
	if _, err := os.Lstat(filepath.Join(IndexDir, name)); err == nil {
		out = append(out, "index "+filepath.Join(IndexDir, name))
	}
	if blackhole.Claimed(routeOwner(name)) {
		out = append(out, "route claim "+routeOwner(name))
	}
	if len(blackhole.Live()) == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rs, _ := blackhole.Routes(ctx, Subnets)
		for _, r := range rs {
			out = append(out, "root namespace route unreachable "+r)
		}
	}
	return out
}
