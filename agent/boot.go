package agent

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/rs/zerolog"
)

// DefaultAutostartDir is where libvirt keeps the autostart links of the
// system QEMU driver's domains: one symlink <name>.xml per domain with
// autostart on, pointing at its config in the parent directory. The
// monolithic libvirtd and the modular virtqemud read the same directory.
const DefaultAutostartDir = "/etc/libvirt/qemu/autostart"

// BootLink is one autostart link PrepareBoot found.
type BootLink struct {
	// Path is the link; Target what it points at (the domain's config).
	Path   string `json:"path"`
	Target string `json:"target,omitempty"`
	// Name and UUID are read from the config, when it can be read.
	Name string `json:"name,omitempty"`
	UUID string `json:"uuid,omitempty"`
	// Removed: the link is gone; Error says why not.
	Removed bool   `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// BootReport is what PrepareBoot did.
type BootReport struct {
	// Why is the agent's last persisted state, as the log explains it.
	Why   string     `json:"why"`
	Links []BootLink `json:"links"`
}

// BootState is the agent's persisted state as PrepareBoot reads it.
type BootState struct {
	Marker    *Marker // local drain marker, nil when none
	MarkerErr error   // unreadable marker (counts as drained)
	Admin     AdminSeen
}

// BootReason says why no autostart link may stay, from the agent's last
// persisted state. Pure.
//
// No persisted state proves the agent may run a domain when the host
// powers on: the daemon may have fenced this host and rebuilt its VMs
// elsewhere while it was off (the admin state the agent last saw is then
// older than the fence), and it can only learn that from the daemon.
// So every link goes, whatever the state says; the state only explains
// it. Domains the daemon still assigns here are started by the agent
// once a current assignment says so (a power cycle leaves them "shut off
// (unknown)", which reconcile restarts).
func BootReason(s BootState) string {
	switch {
	case s.MarkerErr != nil:
		return "the drain marker is unreadable (drained): no domain may start"
	case s.Marker != nil:
		return fmt.Sprintf("the host was drained locally (%s at %s): no domain may start", s.Marker.By, s.Marker.DrainedAt.UTC().Format("2006-01-02T15:04:05Z"))
	case s.Admin.State == "":
		return "no persisted admin state: no domain is known to be allowed here"
	case s.Admin.State != "enabled" && s.Admin.State != "disabled":
		return "the daemon last said " + s.Admin.State + ": no domain may start"
	}
	return "the daemon last said " + s.Admin.State + ", but the host may have been fenced and its VMs rebuilt elsewhere since: " +
		"only a current assignment lets a domain start (the agent starts it then)"
}

// ReadBootState reads the agent's persisted state from dir ("" reads as
// no state).
func ReadBootState(dir string) BootState {
	if dir == "" {
		return BootState{}
	}
	m, err := ReadMarker(dir)
	return BootState{Marker: m, MarkerErr: err, Admin: readAdminSeen(dir)}
}

// PrepareBoot runs before libvirtd on every boot (chime-agent
// prepare-boot): it removes every autostart link in dirs, so libvirtd
// starts no domain by itself (see BootReason), then syncs each directory
// so the removal survives a power loss. It needs neither libvirtd nor the
// daemon. A directory that does not exist has nothing to remove. It fails
// if any link could not be removed: the unit that runs it must then keep
// libvirtd from starting.
func PrepareBoot(stateDir string, dirs []string, log zerolog.Logger) (BootReport, error) {
	log = log.With().Str("component", "prepare-boot").Logger()
	r := BootReport{Why: BootReason(ReadBootState(stateDir)), Links: []BootLink{}}
	var errs []error
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("prepare-boot: %w", err))
			continue
		}
		removed := 0
		for _, e := range ents {
			// libvirt reads only *.xml here.
			if !strings.HasSuffix(e.Name(), ".xml") || e.IsDir() {
				continue
			}
			l := BootLink{Path: filepath.Join(dir, e.Name())}
			if t, err := os.Readlink(l.Path); err == nil {
				l.Target = t
				if !filepath.IsAbs(t) {
					t = filepath.Join(dir, t)
				}
				l.Name, l.UUID = domainIdentity(t)
			}
			if err := os.Remove(l.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				l.Error = err.Error()
				errs = append(errs, fmt.Errorf("prepare-boot: remove autostart link: %w", err))
				log.Error().Err(err).Str("link", l.Path).Str("domain", l.Name).Str("uuid", l.UUID).
					Msg("autostart link NOT removed: libvirtd could start this domain by itself")
			} else {
				l.Removed = true
				removed++
				log.Warn().Str("link", l.Path).Str("target", l.Target).Str("domain", l.Name).Str("uuid", l.UUID).Str("why", r.Why).
					Msg("autostart link removed before libvirtd starts")
			}
			r.Links = append(r.Links, l)
		}
		if removed > 0 {
			if err := syncDir(dir); err != nil {
				errs = append(errs, fmt.Errorf("prepare-boot: sync %s: %w", dir, err))
			}
		}
	}
	sort.Slice(r.Links, func(i, j int) bool { return r.Links[i].Path < r.Links[j].Path })
	log.Info().Int("links", len(r.Links)).Strs("dirs", dirs).Str("why", r.Why).Msg("boot prepared: libvirtd will autostart no domain")
	return r, errors.Join(errs...)
}

// domainIdentity reads a domain config's name and UUID; empty when it
// cannot (the link is removed all the same).
func domainIdentity(path string) (name, uuid string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", ""
	}
	var d struct {
		Name string `xml:"name"`
		UUID string `xml:"uuid"`
	}
	if xml.Unmarshal(b, &d) != nil {
		return "", ""
	}
	return strings.TrimSpace(d.Name), strings.ToLower(strings.TrimSpace(d.UUID))
}
