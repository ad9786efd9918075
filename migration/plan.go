package migration

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
)

// Errors Plan returns; both mean nothing may be moved.
var (
	// ErrInvalid: the request is wrong (no source, unknown target, ...).
	ErrInvalid = errors.New("invalid migration request")
	// ErrNoCapacity: some VM that should move fits nowhere; the whole
	// operation is refused before anything moves (the seed's rule).
	ErrNoCapacity = errors.New("the migration plan does not fit")
)

// Domain is one domain of the source host as the planner sees it.
type Domain struct {
	// XML is the domain's definition (the inventory's inactive XML, or
	// the live one).
	XML string `json:"xml"`
	// State is its current state on the source: active domains move live,
	// shut-off ones move their definition only.
	State hypervisor.DomainState `json:"state"`
}

// Request is a whole-host migration to plan.
type Request struct {
	// Source is the host being emptied.
	Source  string      `json:"source"`
	Domains []Domain    `json:"domains"`
	Storage StorageRule `json:"storage"`
	// Hosts are the candidates, as for evacuator.Place (the caller sets
	// Eligible: admin enabled, monitor normal).
	Hosts  []evacuator.Candidate `json:"hosts"`
	Limits evacuator.Limits      `json:"limits"`
	// Target, if set, takes every VM: the plan fails unless all fit there.
	// "" lets the scheduler place each VM.
	Target string `json:"target,omitempty"`
	// MigrateLocalDiskVMs also moves VMs with local disks, copying those
	// disks. Without it such VMs are reported as not moved.
	MigrateLocalDiskVMs bool `json:"migrate_local_disk_vms,omitempty"`
}

// StorageRule says which disks every host reaches (evacuator's rules).
type StorageRule = evacuator.StorageRules

// Move is one VM's migration in a plan.
type Move struct {
	VM     evacuator.VM `json:"vm"`
	Source string       `json:"source"`
	Target string       `json:"target"`
	// Offline: the VM is shut off; only its definition moves.
	Offline bool `json:"offline,omitempty"`
	// CopyDisks are the disk targets whose storage is copied; CopyDirs
	// the directories those copies land in on Target (the same paths).
	CopyDisks []string `json:"copy_disks,omitempty"`
	CopyDirs  []string `json:"copy_dirs,omitempty"`
}

// Skip is a VM the plan leaves where it is, and why.
type Skip struct {
	UUID   string `json:"uuid,omitempty"`
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// Plan is a whole host's migration.
type Plan struct {
	Source string `json:"source"`
	Target string `json:"target,omitempty"` // the operator's, "" = scheduler
	// Moves are in migration order (highest priority first).
	Moves []Move `json:"moves"`
	// Skipped VMs stay on Source by design (local disks without
	// MigrateLocalDiskVMs, host devices, unreadable definitions).
	Skipped []Skip `json:"skipped"`
	// Placement is the scheduler's full report, reasons included.
	Placement evacuator.Placement `json:"placement"`
}

// Summary is the plan in one line.
func (p Plan) Summary() string {
	var to string
	if p.Target != "" {
		to = " to " + p.Target
	}
	s := fmt.Sprintf("%d VMs to migrate off %s%s", len(p.Moves), p.Source, to)
	if len(p.Skipped) > 0 {
		s += fmt.Sprintf(", %d not moved", len(p.Skipped))
	}
	return s
}

// diskInfo is what the planner needs about a disk beyond the evacuator's
// classification: whether its storage can be copied by a migration.
type diskInfo struct {
	target, path string
	copyable     bool
	why          string // why not copyable
}

// NewPlan plans a whole-host migration. It does no I/O and checks the
// capacity of the WHOLE plan first: when any VM that should move fits
// nowhere (or not on Target) it returns ErrNoCapacity with every reason,
// and the caller must move nothing. ErrInvalid names a wrong request. The
// Plan is returned with its report in both cases.
//
// Which VMs move: every domain of Source that can be live-migrated.
// Active ones move live, shut-off ones as a definition (offline). A VM
// with local disks moves only with MigrateLocalDiskVMs, its local file
// disks copied; one whose local storage cannot be copied (a block device,
// a network disk not known to be shared, a disk without source, or any
// local disk while the VM is shut off) is skipped with the reason, as is
// a VM with host devices or an unreadable definition. The evacuate="false"
// metadata does not apply: it keeps a VM from being rebuilt after a
// failure, and a live migration does not restart the guest.
func NewPlan(req Request) (Plan, error) {
	p := Plan{Source: req.Source, Target: req.Target, Moves: []Move{}, Skipped: []Skip{}}
	if req.Source == "" {
		return p, fmt.Errorf("%w: no source host", ErrInvalid)
	}
	hosts := req.Hosts
	if req.Target != "" {
		if req.Target == req.Source {
			return p, fmt.Errorf("%w: target %s is the host being emptied", ErrInvalid, req.Target)
		}
		i := slices.IndexFunc(hosts, func(c evacuator.Candidate) bool { return c.Name == req.Target })
		if i < 0 {
			return p, fmt.Errorf("%w: target %s is not a known host", ErrInvalid, req.Target)
		}
		if !hosts[i].Eligible {
			why := hosts[i].Why
			if why == "" {
				why = "not eligible"
			}
			return p, fmt.Errorf("%w: target %s cannot take VMs: %s", ErrInvalid, req.Target, why)
		}
		hosts = []evacuator.Candidate{hosts[i]}
	}

	var vms []evacuator.VM
	moves := map[string]Move{}
	seen := map[string]bool{}
	for i, d := range req.Domains {
		m, skip := classify(d, req.Storage, req.MigrateLocalDiskVMs)
		if skip != nil {
			if skip.Name == "" {
				skip.Name = fmt.Sprintf("domain #%d", i+1)
			}
			p.Skipped = append(p.Skipped, *skip)
			continue
		}
		if seen[m.VM.UUID] {
			p.Skipped = append(p.Skipped, Skip{UUID: m.VM.UUID, Name: m.VM.Name, Reason: "listed more than once; planned once"})
			continue
		}
		seen[m.VM.UUID] = true
		m.Source = req.Source
		moves[m.VM.UUID] = m
		vms = append(vms, m.VM)
	}

	p.Placement = evacuator.Place(evacuator.PlaceRequest{FailedHost: req.Source, VMs: vms, Hosts: hosts, Limits: req.Limits})
	for _, a := range p.Placement.Assignments {
		m := moves[a.VM.UUID]
		m.Target = a.Host
		p.Moves = append(p.Moves, m)
	}
	if n := len(p.Placement.Unplaced); n > 0 {
		reasons := make([]string, 0, n)
		for _, u := range p.Placement.Unplaced {
			reasons = append(reasons, fmt.Sprintf("%s (%s): %s", u.VM.Name, u.VM.UUID, u.Reason))
		}
		where := "on any eligible host"
		if req.Target != "" {
			where = "on " + req.Target
		}
		return p, fmt.Errorf("%w: %d of %d VMs to move do not fit %s, so nothing is moved: %s",
			ErrNoCapacity, n, len(vms), where, strings.Join(reasons, "; "))
	}
	return p, nil
}

// classify decides one domain's fate: a Move (VM, Offline, copies) or a
// Skip.
func classify(d Domain, rules StorageRule, copyLocal bool) (Move, *Skip) {
	vm, err := evacuator.ParseVM(d.XML, rules)
	if err != nil {
		return Move{}, &Skip{Reason: "its definition cannot be read: " + err.Error()}
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(d.XML); err != nil { // ParseVM just read it
		return Move{}, &Skip{UUID: vm.UUID, Name: vm.Name, Reason: "its definition cannot be read: " + err.Error()}
	}
	skip := func(format string, a ...any) (Move, *Skip) {
		return Move{}, &Skip{UUID: vm.UUID, Name: vm.Name, Reason: fmt.Sprintf(format, a...)}
	}
	if dom.Devices != nil && len(dom.Devices.Hostdevs) > 0 {
		return skip("%d host device(s) passed through: it cannot be live-migrated", len(dom.Devices.Hostdevs))
	}
	m := Move{Offline: !d.State.Active()}
	infos := disks(dom)
	var local []string
	for _, disk := range vm.Disks {
		if disk.Class != evacuator.DiskLocal {
			continue
		}
		local = append(local, fmt.Sprintf("%s %s", disk.Target, disk.Reason))
		info := infos[disk.Target]
		switch {
		case !copyLocal:
		case m.Offline:
			return skip("shut off with local disks (%s): an offline migration cannot copy storage; start it first, or copy the disks by hand", strings.Join(localTargets(vm), ", "))
		case !info.copyable:
			return skip("local disk %s cannot be copied by a migration: %s", disk.Target, info.why)
		default:
			m.CopyDisks = append(m.CopyDisks, disk.Target)
			if dir := filepath.Dir(info.path); !slices.Contains(m.CopyDirs, dir) {
				m.CopyDirs = append(m.CopyDirs, dir)
			}
		}
	}
	if len(local) > 0 && !copyLocal {
		return skip("has local disks (%s); add --migrate-local-disk-vms to copy them", strings.Join(local, "; "))
	}
	// Place schedules only evacuable VMs that did not opt out; both
	// concern rebuilds, not a live move.
	vm.Evacuable, vm.OptOut = true, false
	m.VM = vm
	return m, nil
}

func localTargets(vm evacuator.VM) []string {
	var out []string
	for _, d := range vm.Disks {
		if d.Class == evacuator.DiskLocal {
			out = append(out, d.Target)
		}
	}
	return out
}

// disks reads each disk's source type: a migration can create copies of
// file disks only (libvirt pre-creates them in a storage pool on the
// destination).
func disks(dom libvirtxml.Domain) map[string]diskInfo {
	out := map[string]diskInfo{}
	if dom.Devices == nil {
		return out
	}
	for _, dd := range dom.Devices.Disks {
		if dd.Target == nil {
			continue
		}
		in := diskInfo{target: dd.Target.Dev}
		src := dd.Source
		switch {
		case src == nil:
			in.why = "it has no source"
		case src.File != nil && src.File.File != "" && filepath.IsAbs(src.File.File):
			in.path, in.copyable = filepath.Clean(src.File.File), true
		case src.File != nil:
			in.why = "its file has no absolute path"
		case src.Block != nil:
			in.why = "it is a block device (" + src.Block.Dev + "), which the destination cannot create"
		case src.Network != nil:
			in.why = "it is a " + src.Network.Protocol + " network disk"
		case src.Volume != nil:
			in.why = "it is a storage-pool volume"
		default:
			in.why = "its source type is not supported"
		}
		if dd.ReadOnly != nil && in.copyable {
			in.copyable, in.why = false, "it is read-only (an image only this host has)"
		}
		out[in.target] = in
	}
	return out
}
