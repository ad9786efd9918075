package lab

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// VMSpec describes a lab VM: a real QEMU TCG guest (64 MiB and one vCPU
// unless set), no OS and no graphics, whose only disk is an empty qcow2
// image. The zero values of the sizing and metadata fields give exactly
// the XML of DomainXML.
type VMSpec struct {
	// Name is the domain name: letters, digits, '.', '_' or '-'.
	Name string
	// Shared puts the disk on the lab's shared storage (SharedDir, same
	// path on every host); otherwise on the host's local storage
	// (/var/lib/libvirt/images inside the host).
	Shared bool
	// NoStart only defines the domain.
	NoStart bool
	// Shareable makes the disk raw and marks it <shareable/>: QEMU's image
	// lock then lets a second QEMU write it (as NFS without working locks
	// or RBD without exclusive-lock would), so nothing but chime-fence
	// keeps two copies of the VM from running at once.
	Shareable bool
	// MemoryMiB is the guest's memory; 0 means 64. QEMU TCG with no OS
	// touches little of it, so a few hundred MiB cost little.
	MemoryMiB int
	// VCPUs is the number of vCPUs; 0 means 1.
	VCPUs int
	// Priority, Group and NoEvacuate go into chime-fence's metadata
	// element (<cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1"
	// priority="N" group="G" evacuate="false"/>); the element is left out
	// when all three are zero, and so is each zero attribute.
	Priority   int
	Group      string
	NoEvacuate bool
}

// MetadataNamespace is chime-fence's per-VM metadata namespace (the
// evacuator's MetadataNamespace; the lab does not import it).
const MetadataNamespace = "https://chimestack.io/xmlns/chime-fence/1"

// maxVMMemoryMiB and maxVMVCPUs bound lab VMs: the lab runs on a small
// machine and a typo of a few zeros should fail here, not in QEMU.
const (
	maxVMMemoryMiB = 64 * 1024
	maxVMVCPUs     = 64
)

// VM is a VM created by CreateVM.
type VM struct {
	Name string
	Host string // host it was created on
	// Disk is the disk's path as hosts see it.
	Disk string
	// XML is the domain XML it was defined from.
	XML string
	// XMLFile holds XML, for `virsh define` on another host.
	XMLFile string
}

var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Virsh runs virsh against h's libvirtd over its unix socket (so it works
// while h's network is cut) and returns stdout. The error carries stderr.
func (l *Lab) Virsh(ctx context.Context, h Host, args ...string) (string, error) {
	uri := "qemu:///system?socket=" + h.LibvirtSocket
	cmd := exec.CommandContext(ctx, "virsh", append([]string{"-q", "-c", uri}, args...)...)
	cmd.Env = append(os.Environ(), envLab+"="+l.cfg.Name)
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("lab: %s: virsh %s: %w: %s", h.Name, strings.Join(args, " "), err, tail(stderr.Bytes(), 1000))
	}
	return stdout.String(), nil
}

// DomainXML is the domain XML of a lab VM with the given disk path.
func DomainXML(name, disk string) string {
	s, _ := SpecXML(VMSpec{Name: name}, disk) // a zero spec has nothing to reject
	return s
}

// SpecXML is the domain XML of the lab VM spec with the given disk path
// (spec.Shared and spec.NoStart do not show in it). It fails on negative
// or oversized sizes.
func SpecXML(spec VMSpec, disk string) (string, error) {
	mem, vcpus := spec.MemoryMiB, spec.VCPUs
	switch {
	case mem < 0 || mem > maxVMMemoryMiB:
		return "", fmt.Errorf("lab: VM %s: MemoryMiB %d out of range 0..%d", spec.Name, mem, maxVMMemoryMiB)
	case vcpus < 0 || vcpus > maxVMVCPUs:
		return "", fmt.Errorf("lab: VM %s: VCPUs %d out of range 0..%d", spec.Name, vcpus, maxVMVCPUs)
	}
	if mem == 0 {
		mem = 64
	}
	if vcpus == 0 {
		vcpus = 1
	}
	shareable := ""
	if spec.Shareable {
		shareable = "\n      <shareable/>"
	}
	var n, d bytes.Buffer
	_ = xml.EscapeText(&n, []byte(spec.Name))
	_ = xml.EscapeText(&d, []byte(disk))
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
%s  <memory unit='MiB'>%d</memory>
  <vcpu>%d</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='%s'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>%s
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`, n.String(), metadataXML(spec), mem, vcpus, diskFormat(spec), d.String(), shareable), nil
}

// diskFormat is the disk image format of spec: raw when shareable (QEMU
// refuses a shared qcow2), qcow2 otherwise.
func diskFormat(spec VMSpec) string {
	if spec.Shareable {
		return "raw"
	}
	return "qcow2"
}

// metadataXML is the <metadata> block of spec, or "" when it has none.
func metadataXML(spec VMSpec) string {
	if spec.Priority == 0 && spec.Group == "" && !spec.NoEvacuate {
		return ""
	}
	var attrs strings.Builder
	if spec.Priority != 0 {
		fmt.Fprintf(&attrs, " priority='%d'", spec.Priority)
	}
	if spec.Group != "" {
		var g bytes.Buffer
		_ = xml.EscapeText(&g, []byte(spec.Group))
		fmt.Fprintf(&attrs, " group='%s'", g.String()) // EscapeText escapes quotes too
	}
	if spec.NoEvacuate {
		attrs.WriteString(" evacuate='false'")
	}
	return fmt.Sprintf("  <metadata>\n    <cf:vm xmlns:cf='%s'%s/>\n  </metadata>\n", MetadataNamespace, attrs.String())
}

// CreateVM creates the VM's disk, defines it on h and, unless
// spec.NoStart, starts it.
func (l *Lab) CreateVM(ctx context.Context, h Host, spec VMSpec) (VM, error) {
	if !vmNameRE.MatchString(spec.Name) {
		return VM{}, fmt.Errorf("lab: VM name %q: want letters, digits, '.', '_' or '-' (at most 64)", spec.Name)
	}
	vm := VM{Name: spec.Name, Host: h.Name}
	if _, err := SpecXML(spec, ""); err != nil {
		return VM{}, err // before anything is created
	}
	var file string // the disk's path from the root namespace
	format := diskFormat(spec)
	if spec.Shared {
		file = filepath.Join(l.SharedDir(), spec.Name+"."+format)
		vm.Disk = file
	} else {
		file = filepath.Join(h.Dir, "lib", "images", spec.Name+"."+format)
		vm.Disk = "/var/lib/libvirt/images/" + spec.Name + "." + format
	}
	if _, err := os.Stat(file); err == nil {
		return VM{}, fmt.Errorf("lab: VM %s: disk %s already exists", spec.Name, file)
	}
	if _, err := run(ctx, "qemu-img", "create", "-q", "-f", format, file, "64M"); err != nil {
		return VM{}, fmt.Errorf("lab: VM %s: %w", spec.Name, err)
	}
	x, err := SpecXML(spec, vm.Disk)
	if err != nil {
		return VM{}, err
	}
	vm.XML = x
	vm.XMLFile = filepath.Join(l.cfg.Dir, "vms", spec.Name+".xml")
	if err := os.WriteFile(vm.XMLFile, []byte(vm.XML), 0o644); err != nil {
		return VM{}, fmt.Errorf("lab: VM %s: %w", spec.Name, err)
	}
	if err := l.DefineVM(ctx, h, vm); err != nil {
		return VM{}, err
	}
	if !spec.NoStart {
		if err := l.StartVM(ctx, h, vm.Name); err != nil {
			return VM{}, err
		}
	}
	return vm, nil
}

// DefineVM defines vm (its XMLFile) on h.
func (l *Lab) DefineVM(ctx context.Context, h Host, vm VM) error {
	_, err := l.Virsh(ctx, h, "define", vm.XMLFile)
	return err
}

// StartVM starts the defined domain name on h. Starting a VM whose disk a
// QEMU on another host holds fails with an error containing LockErrorText.
func (l *Lab) StartVM(ctx context.Context, h Host, name string) error {
	_, err := l.Virsh(ctx, h, "start", name)
	return err
}

// DomainState is `virsh domstate` of name on h ("running", "shut off", ...).
func (l *Lab) DomainState(ctx context.Context, h Host, name string) (string, error) {
	out, err := l.Virsh(ctx, h, "domstate", name)
	return strings.TrimSpace(out), err
}

// Domains maps every domain defined on h to its state.
func (l *Lab) Domains(ctx context.Context, h Host) (map[string]string, error) {
	out, err := l.Virsh(ctx, h, "list", "--all", "--name")
	if err != nil {
		return nil, err
	}
	doms := map[string]string{}
	for _, n := range strings.Fields(out) {
		st, err := l.DomainState(ctx, h, n)
		if err != nil {
			return nil, err
		}
		doms[n] = st
	}
	return doms, nil
}

// HostCommand returns a command that runs inside h (its mount, UTS,
// network and PID namespaces: it sees the host's /proc, boot id and
// libvirt socket), or an error when h is off.
func (l *Lab) HostCommand(ctx context.Context, h Host, name string, args ...string) (*exec.Cmd, error) {
	p := initPID(h)
	if p == 0 {
		return nil, fmt.Errorf("lab: %s: host is not running", h.Name)
	}
	argv := append([]string{"--target", fmt.Sprint(p), "--mount", "--uts", "--net", "--pid", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = append(os.Environ(), envLab+"="+l.cfg.Name)
	cmd.WaitDelay = 2 * time.Second
	return cmd, nil
}
