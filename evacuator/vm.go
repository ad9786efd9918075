package evacuator

import (
	"encoding/xml"
	"fmt"
	"math/bits"
	"path/filepath"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// MetadataNamespace is the XML namespace of chime-fence's per-VM settings
// inside a domain's <metadata>:
//
//	<metadata>
//	  <cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" evacuate="false" priority="10" group="db"/>
//	</metadata>
const MetadataNamespace = "https://chimestack.io/xmlns/chime-fence/1"

// StorageRules say which disks are reachable from every host.
type StorageRules struct {
	SharedPaths []string // mount prefixes of shared file systems
	RBDShared   bool     // Ceph RBD network disks count as shared
}

// DiskClass is where a disk lives, as far as moving its VM is concerned.
type DiskClass string

const (
	DiskShared DiskClass = "shared" // file or block device under a shared path
	DiskRBD    DiskClass = "rbd"    // Ceph RBD network disk
	DiskLocal  DiskClass = "local"  // only this host can reach it
	DiskEmpty  DiskClass = "empty"  // removable drive with no medium
)

// Disk is one disk of a VM and its classification.
type Disk struct {
	Target string    `json:"target"` // vda, hdc
	Device string    `json:"device"` // disk, cdrom, floppy, lun
	Source string    `json:"source"` // path, pool/image, or ""
	Class  DiskClass `json:"class"`
	Reason string    `json:"reason"`
}

// VM is a domain as the evacuator sees it.
type VM struct {
	UUID      string `json:"uuid"`
	Name      string `json:"name"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB int64  `json:"memory_mib"`
	// From chime-fence metadata: higher Priority restarts first; VMs of one
	// anti-affinity Group never share a host; OptOut is evacuate="false".
	Priority int    `json:"priority"`
	Group    string `json:"group,omitempty"`
	OptOut   bool   `json:"opt_out,omitempty"`
	Disks    []Disk `json:"disks"`
	// Evacuable and Reason sum the above up: why it can or cannot move.
	Evacuable bool   `json:"evacuable"`
	Reason    string `json:"reason"`
}

// ParseVM reads a domain XML. It fails only when the XML is not a domain
// we can read; a VM that cannot move is a successful parse with
// Evacuable=false and the reason.
func ParseVM(domainXML string, rules StorageRules) (VM, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(domainXML); err != nil {
		return VM{}, fmt.Errorf("parse domain XML: %w", err)
	}
	if d.UUID == "" || d.Name == "" {
		return VM{}, fmt.Errorf("parse domain XML: domain has no uuid or name")
	}
	vm := VM{UUID: d.UUID, Name: d.Name}
	if d.VCPU != nil {
		vm.VCPUs = int(d.VCPU.Value)
	}
	if d.Memory != nil {
		mib, err := toMiB(d.Memory.Value, d.Memory.Unit)
		if err != nil {
			return VM{}, fmt.Errorf("parse domain %s: memory: %w", d.Name, err)
		}
		vm.MemoryMiB = mib
	}
	if err := readMetadata(d.Metadata, &vm); err != nil {
		return VM{}, fmt.Errorf("parse domain %s: metadata: %w", d.Name, err)
	}

	var blockers []string
	if d.Devices != nil {
		for _, dd := range d.Devices.Disks {
			disk := classifyDisk(dd, rules)
			vm.Disks = append(vm.Disks, disk)
			if disk.Class == DiskLocal {
				blockers = append(blockers, fmt.Sprintf("disk %s %s", disk.Target, disk.Reason))
			}
		}
		if n := len(d.Devices.Hostdevs); n > 0 {
			blockers = append(blockers, fmt.Sprintf("%d host device(s) passed through", n))
		}
	}
	blockers = append(blockers, notAllowed(&d, rules)...)
	switch {
	case vm.OptOut:
		vm.Reason = `opted out by metadata evacuate="false"`
	case len(blockers) > 0:
		vm.Reason = strings.Join(blockers, "; ")
	default:
		vm.Evacuable = true
		vm.Reason = "all disks on shared storage"
		if len(vm.Disks) == 0 {
			vm.Reason = "no disks"
		}
	}
	return vm, nil
}

// AutostartReason is why a VM whose libvirt autostart is on is not
// evacuable: libvirtd on its old host would start the stale copy as soon
// as that host powers on, beside the rebuilt one. chime-agent turns
// autostart off; the VM becomes evacuable once it is reported off.
const AutostartReason = "autostart on: would start again on its old host"

// WithAutostart is vm as evacuation sees it when its autostart is on (or
// vm unchanged when off): not evacuable, AutostartReason added to any
// reason it already had. Pure.
func WithAutostart(vm VM, on bool) VM {
	if !on {
		return vm
	}
	if vm.Evacuable {
		vm.Evacuable, vm.Reason = false, AutostartReason
	} else {
		vm.Reason += "; " + AutostartReason
	}
	return vm
}

func classifyDisk(dd libvirtxml.DomainDisk, rules StorageRules) Disk {
	disk := Disk{Device: dd.Device}
	if disk.Device == "" {
		disk.Device = "disk"
	}
	if dd.Target != nil {
		disk.Target = dd.Target.Dev
	}
	src := dd.Source
	switch {
	case src == nil || (src.File != nil && src.File.File == "") || (src.Block != nil && src.Block.Dev == ""):
		if disk.Device == "cdrom" || disk.Device == "floppy" {
			disk.Class, disk.Reason = DiskEmpty, "no medium"
			return disk
		}
		disk.Class, disk.Reason = DiskLocal, "has no source the rebuild could use"
	case src.File != nil:
		disk.Source = src.File.File
		disk.Class, disk.Reason = byPath(disk.Source, rules)
	case src.Block != nil:
		disk.Source = src.Block.Dev
		disk.Class, disk.Reason = byPath(disk.Source, rules)
	case src.Network != nil:
		disk.Source = src.Network.Protocol + ":" + src.Network.Name
		switch {
		case src.Network.Protocol == "rbd" && rules.RBDShared:
			disk.Class, disk.Reason = DiskRBD, "Ceph RBD image"
		case src.Network.Protocol == "rbd":
			disk.Class, disk.Reason = DiskLocal, "is a Ceph RBD image and storage.rbd_shared is off"
		default:
			disk.Class, disk.Reason = DiskLocal, fmt.Sprintf("uses network protocol %q, which is not known to be shared", src.Network.Protocol)
		}
	case src.Volume != nil:
		disk.Source = src.Volume.Pool + "/" + src.Volume.Volume
		disk.Class, disk.Reason = DiskLocal, "is a storage-pool volume whose path is unknown here"
	default:
		disk.Class, disk.Reason = DiskLocal, "has a source type chime-fence cannot move"
	}
	return disk
}

// byPath compares cleaned paths so /mnt/nfs2/x is not under /mnt/nfs.
func byPath(p string, rules StorageRules) (DiskClass, string) {
	clean := filepath.Clean(p)
	for _, s := range rules.SharedPaths {
		s = filepath.Clean(s)
		if clean == s || strings.HasPrefix(clean, s+"/") {
			return DiskShared, "under shared path " + s
		}
	}
	return DiskLocal, "is on local storage (" + p + ")"
}

// vmMetadata is chime-fence's element inside <metadata>.
type vmMetadata struct {
	XMLName  xml.Name `xml:"vm"`
	Evacuate string   `xml:"evacuate,attr"`
	Priority string   `xml:"priority,attr"`
	Group    string   `xml:"group,attr"`
}

func readMetadata(m *libvirtxml.DomainMetadata, vm *VM) error {
	if m == nil {
		return nil
	}
	dec := xml.NewDecoder(strings.NewReader("<m>" + m.XML + "</m>"))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil // end of metadata (io.EOF) or foreign content we skip
		}
		se, ok := tok.(xml.StartElement)
		if !ok || se.Name.Space != MetadataNamespace || se.Name.Local != "vm" {
			continue
		}
		var md vmMetadata
		if err := dec.DecodeElement(&md, &se); err != nil {
			return err
		}
		switch md.Evacuate {
		case "", "true":
		case "false":
			vm.OptOut = true
		default:
			return fmt.Errorf("evacuate=%q: must be true or false", md.Evacuate)
		}
		if md.Priority != "" {
			p, err := strconv.Atoi(md.Priority)
			if err != nil {
				return fmt.Errorf("priority=%q: must be a whole number", md.Priority)
			}
			vm.Priority = p
		}
		vm.Group = md.Group
		return nil
	}
}

// maxMemoryMiB bounds a domain's memory: 2^40 MiB (1 EiB) is far beyond
// any host, and keeps every product below in int64.
const maxMemoryMiB = 1 << 40

// toMiB converts a libvirt memory amount to MiB, rounding UP: the
// scheduler must never count a VM as smaller than it is. A value that
// overflows, or is beyond any host, is an error, never a wrap to a small
// number (a VM counted as 0 MiB fits everywhere).
func toMiB(v uint, unit string) (int64, error) {
	var num, den uint64 // MiB = v × num / den
	switch unit {
	case "", "KiB", "k", "K":
		num, den = 1, 1024
	case "b", "bytes":
		num, den = 1, 1<<20
	case "MiB", "M":
		num, den = 1, 1
	case "GiB", "G":
		num, den = 1024, 1
	case "TiB", "T":
		num, den = 1024*1024, 1
	case "KB":
		num, den = 1000, 1<<20
	case "MB":
		num, den = 1000*1000, 1<<20
	case "GB":
		num, den = 1000*1000*1000, 1<<20
	default:
		return 0, fmt.Errorf("unit %q not understood", unit)
	}
	hi, lo := bits.Mul64(uint64(v), num)
	if hi != 0 {
		return 0, fmt.Errorf("%d %s is too large", v, unit)
	}
	mib := lo / den
	if lo%den != 0 {
		mib++
	}
	if mib > maxMemoryMiB {
		return 0, fmt.Errorf("%d %s is more than %d MiB", v, unit, uint64(maxMemoryMiB))
	}
	return int64(mib), nil
}
