package evacuator

import (
	"strings"
	"testing"
)

// FuzzParseVM feeds ParseVM domain XML as a compromised or broken
// hypervisor could send it: it must return an error or a VM that is
// consistent (never negative sizes, never evacuable with a local disk),
// and never panic.
func FuzzParseVM(f *testing.F) {
	f.Add(instanceXML)
	f.Add(domainXML("", rbdDisk))
	f.Add(`<domain><name>x</name><uuid>u</uuid><memory unit='TiB'>18014398509481984</memory></domain>`)
	f.Add(`<domain><name>x</name><uuid>u</uuid><vcpu>4</vcpu><memory unit='KiB'>1</memory><devices><disk type='file'><source file='/var/lib/x.qcow2'/><target dev='vda'/></disk></devices></domain>`)
	f.Add(`<domain><name>x</name><uuid>u</uuid><metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" priority="-1" group="a" evacuate="true"/></metadata></domain>`)
	f.Add("")
	rules := StorageRules{SharedPaths: []string{"/mnt/nfs"}, RBDShared: true}
	f.Fuzz(func(t *testing.T, xml string) {
		vm, err := ParseVM(xml, rules)
		if err != nil {
			if vm.UUID != "" || vm.Evacuable {
				t.Fatalf("an error with a half-filled VM: %+v", vm)
			}
			return
		}
		if vm.MemoryMiB < 0 || vm.VCPUs < 0 {
			t.Fatalf("negative size: %+v", vm)
		}
		if vm.Evacuable {
			for _, d := range vm.Disks {
				if d.Class == DiskLocal {
					t.Fatalf("evacuable with a local disk: %+v", vm)
				}
			}
			if vm.OptOut {
				t.Fatalf("evacuable although opted out: %+v", vm)
			}
		}
		if vm.Reason == "" {
			t.Fatalf("no reason given: %+v", vm)
		}
	})
}

// FuzzRewrite: Rewrite returns an error or XML that parses again with the
// same identity, and never panics.
func FuzzRewrite(f *testing.F) {
	f.Add(instanceXML, "0.0.0.0", "br0", "br-vm")
	f.Add(domainXML("", rbdDisk), "::", "virbr0", "br1")
	f.Add(`<domain><name>x</name><uuid>u</uuid><devices><graphics type='vnc' listen='1.2.3.4'><listen type='address' address='1.2.3.4'/></graphics></devices></domain>`, "", "", "")
	f.Fuzz(func(t *testing.T, xml, listen, from, to string) {
		rules := RewriteRules{GraphicsListen: listen}
		if from != "" {
			rules.BridgeMap = map[string]string{from: to}
		}
		out, err := Rewrite(xml, rules)
		if err != nil {
			return
		}
		before, berr := ParseVM(xml, StorageRules{})
		after, aerr := ParseVM(out, StorageRules{})
		if berr == nil && aerr != nil {
			t.Fatalf("rewritten XML no longer parses: %v\n%s", aerr, out)
		}
		if berr == nil && (before.UUID != after.UUID || before.Name != after.Name || before.MemoryMiB != after.MemoryMiB) {
			t.Fatalf("rewrite changed the domain's identity or size: %+v → %+v", before, after)
		}
		if strings.Contains(out, "<qemu:commandline") && !strings.Contains(xml, "commandline") {
			t.Fatalf("rewrite added a command line")
		}
	})
}
