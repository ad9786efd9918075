package evacuator

import (
	"fmt"
	"path"
	"reflect"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rebuild runs a failed host's domain XML on healthy hypervisors. A
// compromised hypervisor writes that XML and can halt itself on purpose,
// so the XML is untrusted input: a domain is evacuable only when every
// element that makes the target's QEMU touch the target itself (run a
// program, open a host file, device or socket, connect somewhere) is on
// this allow-list. Anything else blocks the VM, naming the element. The
// lists are allow-lists: a device kind or hypervisor namespace libvirtxml
// learns later is refused until it is added here.

// allowedDevices are the <devices> children a rebuilt domain may have
// (DomainDeviceList field names); the checks below narrow some further.
var allowedDevices = map[string]bool{
	"Emulator": true, "Disks": true, "Controllers": true, "Interfaces": true, "Serials": true, "Parallels": true,
	"Consoles": true, "Channels": true, "Inputs": true, "TPMs": true, "Graphics": true, "Sounds": true, "Audios": true,
	"Videos": true, "RedirDevs": true, "RedirFilters": true, "Hubs": true, "Watchdogs": true, "MemBalloon": true,
	"RNGs": true, "Panics": true, "IOMMU": true, "IOMMUs": true, "VSock": true,
}

// refusedDomainFields are top-level elements never rebuilt: hypervisor
// pass-through namespaces (<qemu:commandline> runs anything) and
// host-side programs or id maps.
var refusedDomainFields = map[string]string{
	"QEMUCommandline": "qemu:commandline", "QEMUCapabilities": "qemu:capabilities", "QEMUOverride": "qemu:override",
	"QEMUDeprecation": "qemu:deprecation", "LXCNamespace": "lxc:namespace", "BHyveCommandline": "bhyve:commandline",
	"VMWareDataCenterPath": "vmware:datacenterpath", "XenCommandline": "xen:commandline",
	"Bootloader": "bootloader", "BootloaderArgs": "bootloader_args", "IDMap": "idmap",
}

// libvirtManaged is where libvirt itself puts per-domain sockets (the
// guest agent channel): a path there is the target's libvirt's own.
const libvirtManaged = "/var/lib/libvirt/qemu/"

// notAllowed lists every element of d outside the allow-list, each named
// as an operator would find it in the XML. Empty: nothing on the target
// is touched beyond what shared storage and the allowed devices need.
func notAllowed(d *libvirtxml.Domain, rules StorageRules) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	if d.Type != "" && d.Type != "kvm" && d.Type != "qemu" {
		add("domain type %q (only kvm and qemu are rebuilt)", d.Type)
	}
	dv := reflect.ValueOf(*d)
	for i := 0; i < dv.NumField(); i++ {
		f := dv.Type().Field(i)
		if name, ok := refusedDomainFields[f.Name]; ok && !dv.Field(i).IsZero() {
			add("<%s> is not allowed", name)
		}
	}
	for _, s := range d.SecLabel {
		if s.Type == "none" || s.Relabel == "no" {
			add("<seclabel type=%q relabel=%q> would run QEMU unconfined", s.Type, s.Relabel)
		}
	}
	if os := d.OS; os != nil {
		if os.Init != "" || len(os.InitArgs) > 0 || len(os.InitEnv) > 0 {
			add("<os><init> is not allowed")
		}
		for _, p := range []struct{ what, path string }{{"kernel", os.Kernel}, {"initrd", os.Initrd}, {"dtb", os.DTB}, {"shim", os.Shim}} {
			if p.path != "" && !underAny(p.path, rules.SharedPaths) {
				add("<os><%s> %s is not on shared storage", p.what, p.path)
			}
		}
		if os.Loader != nil && os.Loader.Path != "" && !underAny(os.Loader.Path, []string{"/usr/share/"}) {
			add("<os><loader> %s is not a packaged firmware (under /usr/share/)", os.Loader.Path)
		}
		if nv := os.NVRam; nv != nil {
			if nv.Template != "" && !underAny(nv.Template, []string{"/usr/share/"}) {
				add("<os><nvram template> %s is not a packaged firmware (under /usr/share/)", nv.Template)
			}
			if nv.NVRam != "" && !underAny(nv.NVRam, append([]string{"/var/lib/libvirt/qemu/nvram/"}, rules.SharedPaths...)) {
				add("<os><nvram> %s is neither libvirt's nor on shared storage", nv.NVRam)
			}
			if nv.Source != nil {
				add("<os><nvram><source> is not allowed")
			}
		}
	}
	if d.Devices == nil {
		return out
	}
	devs := reflect.ValueOf(*d.Devices)
	for i := 0; i < devs.NumField(); i++ {
		f := devs.Type().Field(i)
		// Host devices are reported by ParseVM with their count.
		if !allowedDevices[f.Name] && f.Name != "Hostdevs" && !devs.Field(i).IsZero() {
			add("device <%s> is not allowed", xmlName(f))
		}
	}
	if e := d.Devices.Emulator; e != "" && (!underAny(e, []string{"/usr/bin/", "/usr/libexec/"}) || !strings.HasPrefix(path.Base(e), "qemu")) {
		add("<emulator> %s is not a packaged QEMU", e)
	}
	for _, n := range d.Devices.Interfaces {
		out = append(out, interfaceProblems(n)...)
	}
	for _, c := range d.Devices.Serials {
		out = append(out, chardevProblems("serial", c.Source)...)
	}
	for _, c := range d.Devices.Parallels {
		out = append(out, chardevProblems("parallel", c.Source)...)
	}
	for _, c := range d.Devices.Consoles {
		out = append(out, chardevProblems("console", c.Source)...)
	}
	for _, c := range d.Devices.Channels {
		out = append(out, chardevProblems("channel", c.Source)...)
	}
	for _, r := range d.Devices.RedirDevs {
		out = append(out, chardevProblems("redirdev", r.Source)...)
	}
	for _, r := range d.Devices.RNGs {
		if r.Backend != nil && r.Backend.EGD != nil {
			out = append(out, chardevProblems("rng egd backend", r.Backend.EGD.Source)...)
		}
	}
	for _, t := range d.Devices.TPMs {
		if t.Backend != nil && t.Backend.Emulator == nil {
			add("<tpm> backend other than emulator (a host TPM or an external socket) is not allowed")
		}
	}
	for _, g := range d.Devices.Graphics {
		switch {
		case g.VNC != nil:
			if g.VNC.Socket != "" {
				add("<graphics type='vnc' socket=%q> is not allowed", g.VNC.Socket)
			}
			for _, l := range g.VNC.Listeners {
				if l.Socket != nil && l.Socket.Socket != "" {
					add("<graphics type='vnc'><listen socket=%q> is not allowed", l.Socket.Socket)
				}
			}
		case g.Spice != nil:
			for _, l := range g.Spice.Listeners {
				if l.Socket != nil && l.Socket.Socket != "" {
					add("<graphics type='spice'><listen socket=%q> is not allowed", l.Socket.Socket)
				}
			}
		default:
			add("<graphics> other than vnc or spice is not allowed")
		}
	}
	for _, a := range d.Devices.Audios {
		if a.None == nil && a.SPICE == nil {
			add("<audio id='%d'> other than none or spice is not allowed (it would use the target's sound system or files)", a.ID)
		}
	}
	return out
}

// interfaceProblems: a NIC may join a bridge (mapped per target), a
// libvirt network or user-mode networking; no host scripts, taps or
// sockets.
func interfaceProblems(n libvirtxml.DomainInterface) []string {
	var out []string
	mac := "?"
	if n.MAC != nil {
		mac = n.MAC.Address
	}
	if s := n.Source; s != nil && s.Bridge == nil && s.Network == nil && s.User == nil {
		out = append(out, fmt.Sprintf("<interface> %s: only bridge, network and user interfaces are rebuilt", mac))
	}
	if n.Script != nil || n.DownScript != nil {
		out = append(out, fmt.Sprintf("<interface> %s: <script>/<downscript> would run a program on the target", mac))
	}
	if n.Backend != nil && (n.Backend.Tap != "" || n.Backend.VHost != "") {
		out = append(out, fmt.Sprintf("<interface> %s: <backend> host device paths are not allowed", mac))
	}
	return out
}

// chardevProblems: a character device may be a pty, null, vc, or a SPICE
// or vdagent channel; a unix socket only where libvirt puts its own.
func chardevProblems(what string, s *libvirtxml.DomainChardevSource) []string {
	switch {
	case s == nil, s.Null != nil, s.VC != nil, s.Pty != nil, s.SpiceVMC != nil, s.SpicePort != nil, s.QEMUVDAgent != nil, s.DBus != nil:
		return nil
	case s.UNIX != nil:
		if s.UNIX.Path == "" || underAny(s.UNIX.Path, []string{libvirtManaged}) {
			return nil
		}
		return []string{fmt.Sprintf("<%s> unix socket %s is not libvirt's own", what, s.UNIX.Path)}
	}
	return []string{fmt.Sprintf("<%s> source (host file, device, pipe or network) is not allowed", what)}
}

// underAny reports whether p (cleaned) is under one of the prefixes
// (directory prefixes: /mnt/nfs does not cover /mnt/nfs2).
func underAny(p string, prefixes []string) bool {
	c := path.Clean(p)
	if !path.IsAbs(c) {
		return false
	}
	for _, pre := range prefixes {
		pc := path.Clean(pre)
		if c == pc || strings.HasPrefix(c, strings.TrimSuffix(pc, "/")+"/") {
			return true
		}
	}
	return false
}

func xmlName(f reflect.StructField) string {
	if n, _, _ := strings.Cut(f.Tag.Get("xml"), ","); n != "" && n != "-" {
		return n
	}
	return strings.ToLower(f.Name)
}
