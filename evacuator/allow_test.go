package evacuator

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirtxml"
)

// allowDomain is a shared-disk domain with extra top-level XML and devices.
func allowDomain(top, devices string) string {
	return `<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>vm</name>` +
		`<uuid>6f1c2a9e-0000-4000-8000-000000000001</uuid><memory unit='MiB'>512</memory><vcpu>1</vcpu>` + top +
		`<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>` +
		`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/mnt/nfs/vm.qcow2'/><target dev='vda' bus='virtio'/></disk>` +
		devices + `</devices></domain>`
}

// TestRebuiltXMLIsAllowListed performs the attack of a compromised
// hypervisor that writes its VMs' XML and halts itself: each element below
// would make a healthy target run a program, open a host path or connect
// somewhere, and must make the VM non-evacuable with the element named.
func TestRebuiltXMLIsAllowListed(t *testing.T) {
	rules := StorageRules{SharedPaths: []string{"/mnt/nfs"}}
	for name, tc := range map[string]struct{ top, devices, want string }{
		"qemu commandline":         {`<qemu:commandline><qemu:arg value='-chardev'/><qemu:arg value='file,path=/etc/shadow'/></qemu:commandline>`, "", "<qemu:commandline> is not allowed"},
		"host filesystem":          {"", `<filesystem type='mount'><source dir='/'/><target dir='host'/></filesystem>`, "device <filesystem> is not allowed"},
		"serial to a file":         {"", `<serial type='file'><source path='/root/.ssh/authorized_keys'/></serial>`, "<serial> source (host file, device, pipe or network) is not allowed"},
		"console on a host device": {"", `<console type='dev'><source path='/dev/sda'/></console>`, "<console> source"},
		"channel to tcp":           {"", `<channel type='tcp'><source mode='connect' host='10.0.0.1' service='22'/><target type='virtio' name='x'/></channel>`, "<channel> source"},
		"foreign unix socket":      {"", `<channel type='unix'><source mode='bind' path='/run/docker.sock'/><target type='virtio' name='x'/></channel>`, "unix socket /run/docker.sock is not libvirt's own"},
		"interface script":         {"", `<interface type='ethernet'><mac address='52:54:00:00:00:01'/><script path='/tmp/x.sh'/></interface>`, "would run a program on the target"},
		"direct interface":         {"", `<interface type='direct'><mac address='52:54:00:00:00:02'/><source dev='eth0' mode='bridge'/></interface>`, "only bridge, network and user interfaces"},
		"emulator elsewhere":       {"", "", ""}, // replaced below
		"kernel from the host":     {`<os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>`, "", "<os><kernel> /boot/vmlinuz is not on shared storage"},
		"loader outside firmware":  {`<os><type>hvm</type><loader readonly='yes' type='pflash'>/etc/passwd</loader></os>`, "", "<os><loader> /etc/passwd"},
		"seclabel none":            {`<seclabel type='none'/>`, "", "would run QEMU unconfined"},
		"shared memory":            {"", `<shmem name='x'><model type='ivshmem-plain'/></shmem>`, "device <shmem> is not allowed"},
		"tpm passthrough":          {"", `<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>`, "<tpm> backend other than emulator"},
		"sdl graphics":             {"", `<graphics type='sdl' display=':0'/>`, "<graphics> other than vnc or spice"},
		"audio to a file":          {"", `<audio id='1' type='file' path='/tmp/a.wav'/>`, "<audio id='1'> other than none or spice"},
		"lease":                    {"", `<lease><lockspace>x</lockspace><key>k</key><target path='/var/lib/x'/></lease>`, "device <lease> is not allowed"},
	} {
		t.Run(name, func(t *testing.T) {
			xml := allowDomain(tc.top, tc.devices)
			want := tc.want
			if name == "emulator elsewhere" {
				xml = strings.Replace(xml, "/usr/bin/qemu-system-x86_64", "/tmp/evil", 1)
				want = "<emulator> /tmp/evil is not a packaged QEMU"
			}
			vm, err := ParseVM(xml, rules)
			require.NoError(t, err)
			assert.False(t, vm.Evacuable, "%s must not be rebuilt", name)
			assert.Contains(t, vm.Reason, want)
		})
	}
}

// TestOrdinaryDomainsStayEvacuable: what real guests carry is allowed.
func TestOrdinaryDomainsStayEvacuable(t *testing.T) {
	rules := StorageRules{SharedPaths: []string{"/mnt/nfs"}}
	devices := `<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><model type='virtio'/></interface>` +
		`<interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/></interface>` +
		`<serial type='pty'><target port='0'/></serial><console type='pty'><target type='serial' port='0'/></console>` +
		`<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>` +
		`<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-1-vm/org.qemu.guest_agent.0'/><target type='virtio' name='org.qemu.guest_agent.1'/></channel>` +
		`<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>` +
		`<input type='tablet' bus='usb'/><graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'/>` +
		`<graphics type='spice' autoport='yes'/><audio id='1' type='spice'/><video><model type='virtio'/></video>` +
		`<memballoon model='virtio'/><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>` +
		`<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm><watchdog model='i6300esb' action='reset'/>`
	top := `<os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>` +
		`<nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram><kernel>/mnt/nfs/boot/vmlinuz</kernel></os>` +
		`<seclabel type='dynamic' model='apparmor' relabel='yes'/>`
	vm, err := ParseVM(allowDomain(top, devices), rules)
	require.NoError(t, err)
	assert.True(t, vm.Evacuable, vm.Reason)
	assert.Empty(t, notAllowed(mustDomain(t, allowDomain(top, devices)), rules))
	vm, err = ParseVM(instanceXML, rules)
	require.NoError(t, err)
	assert.Empty(t, strings.TrimSpace(strings.Join(notAllowedOf(t, instanceXML, rules), "; ")))
}

func TestUnderAny(t *testing.T) {
	assert.True(t, underAny("/mnt/nfs/a", []string{"/mnt/nfs"}))
	assert.True(t, underAny("/mnt/nfs/", []string{"/mnt/nfs/"}))
	assert.False(t, underAny("/mnt/nfs2/a", []string{"/mnt/nfs"}))
	assert.False(t, underAny("/mnt/nfs/../etc/passwd", []string{"/mnt/nfs"}))
	assert.False(t, underAny("relative/x", []string{"relative"}))
}

func mustDomain(t *testing.T, xml string) *libvirtxml.Domain {
	t.Helper()
	var d libvirtxml.Domain
	require.NoError(t, d.Unmarshal(xml))
	return &d
}

func notAllowedOf(t *testing.T, xml string, rules StorageRules) []string {
	return notAllowed(mustDomain(t, xml), rules)
}
