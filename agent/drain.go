package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

// Files in the agent's state directory.
const (
	// MarkerFile is the local drain marker: while it exists the agent
	// starts no domain.
	MarkerFile = "drained.json"
	// AdminFile is the daemon's admin state as the agent last fetched it,
	// kept so chime-agent drain (a separate process) can record it in the
	// marker.
	AdminFile = "admin.json"
	// lockFile serialises "check the marker, start a domain" in the agent
	// against "write the marker" in chime-agent drain.
	lockFile = ".lock"
)

// DefaultStateDir is where chime-agent keeps its marker by default.
const DefaultStateDir = "/var/lib/chime-agent"

// Marker is the local drain marker's content.
type Marker struct {
	// DrainedAt is when the drain began, by this host's clock.
	DrainedAt time.Time `json:"drained_at"`
	// By is "api" (POST /v1/drain) or "cli" (chime-agent drain).
	By string `json:"by"`
	// AdminState and AdminSince are the daemon's admin state the agent
	// knew when it drained, if any: the daemon's later word is needed to
	// lift the drain, whatever the two clocks say.
	AdminState string    `json:"admin_state,omitempty"`
	AdminSince time.Time `json:"admin_since,omitzero"`
}

// AdminSeen is the daemon's admin state as the agent last fetched it.
type AdminSeen struct {
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
}

// MarkerLifts decides whether the daemon's assignment a ends the local
// drain recorded in m, and says why (for the log). It lifts only when the
// daemon says enabled or disabled, and that state was set after the drain:
// after m.DrainedAt (this host's clock) and after the admin state the agent
// knew when it drained (the daemon's clock), so a host clock running behind
// cannot make an old "enabled" look newer than the drain.
func MarkerLifts(m Marker, a heartbeat.Assignment) (bool, string) {
	switch {
	case !a.AdminState.MayStartDomains():
		return false, "the daemon says " + a.AdminState.String()
	case a.AdminSince.IsZero():
		return false, "the daemon did not say when it set " + a.AdminState.String()
	case !a.AdminSince.After(m.DrainedAt):
		return false, fmt.Sprintf("the daemon set %s at %s, not after the local drain at %s (if this host's clock is ahead, set the admin state again)",
			a.AdminState, a.AdminSince.UTC().Format(time.RFC3339Nano), m.DrainedAt.UTC().Format(time.RFC3339Nano))
	case !m.AdminSince.IsZero() && !a.AdminSince.After(m.AdminSince):
		return false, fmt.Sprintf("the daemon's %s set at %s is the admin state the agent already knew when it drained",
			a.AdminState, a.AdminSince.UTC().Format(time.RFC3339Nano))
	}
	return true, fmt.Sprintf("the daemon set %s at %s, after the local drain at %s",
		a.AdminState, a.AdminSince.UTC().Format(time.RFC3339Nano), m.DrainedAt.UTC().Format(time.RFC3339Nano))
}

// ReadMarker reads dir's drain marker; nil when there is none. An error
// (unreadable, undecodable) must be taken as "drained".
func ReadMarker(dir string) (*Marker, error) {
	if dir == "" {
		return nil, nil
	}
	p := filepath.Join(dir, MarkerFile)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("drain marker: %w", err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("drain marker %s does not decode (treated as drained; remove it by hand only if the host must run domains again): %w", p, err)
	}
	return &m, nil
}

// readAdminSeen reads what the agent last knew of its admin state; zero
// when unknown.
func readAdminSeen(dir string) AdminSeen {
	var a AdminSeen
	if b, err := os.ReadFile(filepath.Join(dir, AdminFile)); err == nil {
		_ = json.Unmarshal(b, &a) // a damaged file only weakens the clock check
	}
	return a
}

// writeFileSync writes name in dir durably: a temporary file, fsync,
// rename, fsync of the directory. Power loss leaves the old or the new
// content, never a torn one.
func writeFileSync(dir, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	serr := d.Sync()
	return errors.Join(serr, d.Close())
}

// gate serialises domain starts against marker writes and removals: a
// start happens only after the marker was checked under the gate, so a
// drain's listing (taken after its marker is written) sees every domain
// the agent started. Across processes (the agent and chime-agent drain) it
// is an flock on the state directory's lock file.
type gate struct {
	mu  sync.Mutex
	dir string
}

// lock takes the gate; unlock releases it. An error (the lock file cannot
// be opened) means no start may happen.
func (g *gate) lock() (unlock func(), err error) {
	g.mu.Lock()
	if g.dir == "" {
		return g.mu.Unlock, nil
	}
	f, err := lockDir(g.dir)
	if err != nil {
		g.mu.Unlock()
		return nil, err
	}
	return func() { _ = f.Close(); g.mu.Unlock() }, nil
}

// lockDir flocks dir's lock file; closing the file releases it.
func lockDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("state directory lock: %w", err)
	}
	return f, nil
}

// DrainHypervisor is what a drain needs from libvirtd.
type DrainHypervisor interface {
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
	Destroy(ctx context.Context, uuid string) error
}

// DrainedDomain and DrainResult are the drain's wire types.
type (
	DrainedDomain = heartbeat.DrainedDomain
	DrainResult   = heartbeat.DrainResult
)

// Drain actions.
const (
	ActionDestroyed    = "destroyed"
	ActionFailed       = "failed"
	ActionNotRunning   = "not running"
	ActionWouldDestroy = "would destroy"
)

// DrainOptions configure DrainLocal.
type DrainOptions struct {
	Host     string
	StateDir string
	// By goes into the marker: "api" or "cli".
	By  string
	Now func() time.Time
	// CallTimeout bounds each libvirt call. Default 30s.
	CallTimeout time.Duration
	// Admin, if set, is the admin state the caller knows; otherwise it is
	// read from the state directory's AdminFile.
	Admin *AdminSeen
	// gate, if set, is the running agent's start gate (in-process mutex
	// plus the flock); DrainLocal otherwise takes the flock alone.
	gate *gate
}

// drainParallel bounds concurrent destroys: libvirt serves them in
// parallel, and a fence waits for the slowest.
const drainParallel = 4

// DrainLocal drains this host: it writes the drain marker durably BEFORE
// stopping anything (a drain that cannot be remembered does not start),
// then destroys every active domain and lists the domains again. An error
// means the marker was not written (nothing was stopped) or the domains
// could not be listed; per-domain failures are in the result (Action
// "failed") and in the returned error.
func DrainLocal(ctx context.Context, hv DrainHypervisor, o DrainOptions, log zerolog.Logger) (DrainResult, error) {
	if o.StateDir == "" {
		return DrainResult{}, errors.New("drain: no state directory: the drain marker cannot be written, so nothing is stopped")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	admin := o.Admin
	if admin == nil {
		a := readAdminSeen(o.StateDir)
		admin = &a
	}
	m := Marker{DrainedAt: o.Now().UTC(), By: o.By, AdminState: admin.State, AdminSince: admin.Since}
	res := DrainResult{Host: o.Host, Marker: filepath.Join(o.StateDir, MarkerFile), DrainedAt: m.DrainedAt, Domains: []DrainedDomain{}, Running: -1}

	var unlock func()
	if o.gate != nil {
		u, err := o.gate.lock()
		if err != nil {
			return res, fmt.Errorf("drain: %w; nothing stopped", err)
		}
		unlock = u
	} else {
		f, err := lockDir(o.StateDir)
		if err != nil {
			return res, fmt.Errorf("drain: %w; nothing stopped", err)
		}
		unlock = func() { _ = f.Close() }
	}
	err := writeFileSync(o.StateDir, MarkerFile, m)
	unlock()
	if err != nil {
		return res, fmt.Errorf("drain: write marker %s: %w; nothing stopped", res.Marker, err)
	}
	log.Warn().Str("marker", res.Marker).Str("by", o.By).Msg("local drain marker written: no domain will be started on this host until the daemon enables it again")

	lctx, cancel := context.WithTimeout(ctx, o.CallTimeout)
	doms, err := hv.Domains(lctx, false)
	cancel()
	if err != nil {
		return res, fmt.Errorf("drain: list domains: %w (marker written; run the drain again)", err)
	}
	res.Domains = planDrain(doms, ActionDestroyed)
	var wg sync.WaitGroup
	sem := make(chan struct{}, drainParallel)
	for i := range res.Domains {
		d := &res.Domains[i]
		if d.Action != ActionDestroyed {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, o.CallTimeout)
			err := hv.Destroy(dctx, d.UUID)
			cancel()
			ev := log.With().Str("uuid", d.UUID).Str("domain", d.Name).Str("was", d.Before.String()).Logger()
			switch k := hypervisor.KindOf(err); {
			case err == nil:
				ev.Warn().Msg("drain: domain destroyed")
			case k == hypervisor.KindNotFound || k == hypervisor.KindInvalid:
				// Gone or stopped meanwhile; the final listing tells.
				d.Action = ActionNotRunning
				ev.Info().Err(err).Msg("drain: domain already stopped or gone")
			default:
				d.Action, d.Error = ActionFailed, err.Error()
				ev.Error().Err(err).Msg("drain: destroy failed")
			}
		}()
	}
	wg.Wait()

	lctx, cancel = context.WithTimeout(ctx, o.CallTimeout)
	after, lerr := hv.Domains(lctx, false)
	cancel()
	var errs []string
	for _, d := range res.Domains {
		if d.Action == ActionFailed {
			errs = append(errs, fmt.Sprintf("%s (%s): %s", d.Name, d.UUID, d.Error))
		}
	}
	if lerr != nil {
		errs = append(errs, fmt.Sprintf("list domains after the drain: %v", lerr))
	} else {
		res.Running = 0
		for _, d := range after {
			if d.State.Active() {
				res.Running++
			}
		}
		if res.Running > 0 {
			errs = append(errs, fmt.Sprintf("%d domains still active after the drain", res.Running))
		}
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("drain: %s", strings.Join(errs, "; "))
	}
	return res, nil
}

// PlanDrain is a drain's dry run: every local domain, with "would destroy"
// for the active ones.
func PlanDrain(local []hypervisor.Domain) []DrainedDomain {
	return planDrain(local, ActionWouldDestroy)
}

func planDrain(local []hypervisor.Domain, action string) []DrainedDomain {
	out := make([]DrainedDomain, 0, len(local))
	for _, d := range local {
		dd := DrainedDomain{UUID: d.UUID, Name: d.Name, Before: d.State, Action: ActionNotRunning}
		if d.State.Active() {
			dd.Action = action
		}
		out = append(out, dd)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].UUID < out[j].UUID
	})
	return out
}

// CheckStateDir reports whether dir (or, when missing, its nearest
// existing parent) is a writable directory, without writing anything: a
// dry run's validation.
func CheckStateDir(dir string) error {
	if dir == "" || !filepath.IsAbs(dir) {
		return fmt.Errorf("state directory %q is not an absolute path", dir)
	}
	p := dir
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("state directory %s: %s is not a directory", dir, p)
			}
			if err := syscall.Access(p, 2 /* W_OK */); err != nil {
				return fmt.Errorf("state directory %s: %s is not writable: %w", dir, p, err)
			}
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Errorf("state directory %s: %w", dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return fmt.Errorf("state directory %s: no existing parent", dir)
		}
		p = parent
	}
}

// adminSeenOf is what the agent records of an assignment's admin state.
func adminSeenOf(a heartbeat.Assignment) AdminSeen {
	return AdminSeen{State: a.AdminState.String(), Since: a.AdminSince}
}
