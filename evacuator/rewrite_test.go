package evacuator

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirtxml"

	"github.com/chimestack/chime-fence/e2e/lab"
)

// instanceXML is what `virsh dumpxml --inactive --security-info` gives for a
// typical cloud instance on a host whose management address is 10.0.0.5:
// both consoles listen there, and the NICs hang off that host's bridges.
const instanceXML = `<domain type='kvm'>
  <name>instance-0000002a</name>
  <uuid>0f6d8c2e-5b1a-4c3e-9a7d-2e4f6b8c0d1e</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>db-1</nova:name>
      <nova:flavor name="m1.medium"><nova:memory>4096</nova:memory><nova:vcpus>2</nova:vcpus></nova:flavor>
    </nova:instance>
    <cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" priority="10" group="db"/>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <cputune>
    <shares>2048</shares>
  </cputune>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>ChimeStack</entry>
      <entry name='serial'>0f6d8c2e-5b1a-4c3e-9a7d-2e4f6b8c0d1e</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
    <smbios mode='sysinfo'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-model' check='partial'>
    <topology sockets='2' dies='1' cores='1' threads='1'/>
  </cpu>
  <clock offset='utc'>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/var/lib/nova/instances/0f6d8c2e-5b1a-4c3e-9a7d-2e4f6b8c0d1e/disk'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x0'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <auth username='cinder'>
        <secret type='ceph' uuid='b5d1f0e4-0c39-4a52-9c1d-4f0b1a2c3d4e'/>
      </auth>
      <source protocol='rbd' name='volumes/volume-7c1e'>
        <host name='10.0.1.10' port='6789'/>
        <host name='10.0.1.11' port='6789'/>
      </source>
      <target dev='vdb' bus='virtio'/>
      <serial>7c1e</serial>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <controller type='sata' index='0'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='virtio-serial' index='0'>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </controller>
    <interface type='bridge'>
      <mac address='fa:16:3e:12:34:56'/>
      <source bridge='br-ex'/>
      <model type='virtio'/>
      <mtu size='1450'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='fa:16:3e:65:43:21'/>
      <source bridge='br-int'/>
      <virtualport type='openvswitch'>
        <parameters interfaceid='3c2b1a09-8f7e-4d6c-b5a4-392817160504'/>
      </virtualport>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
    </interface>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <model type='e1000e'/>
      <address type='pci' domain='0x0000' bus='0x07' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
      <address type='virtio-serial' controller='0' bus='0' port='1'/>
    </channel>
    <input type='tablet' bus='usb'>
      <address type='usb' bus='0' port='1'/>
    </input>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes' listen='10.0.0.5' keymap='en-us'>
      <listen type='address' address='10.0.0.5'/>
    </graphics>
    <graphics type='spice' autoport='yes' listen='10.0.0.5'>
      <listen type='address' address='10.0.0.5'/>
      <image compression='off'/>
    </graphics>
    <audio id='1' type='none'/>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>
    </video>
    <memballoon model='virtio'>
      <stats period='10'/>
      <address type='pci' domain='0x0000' bus='0x08' slot='0x00' function='0x0'/>
    </memballoon>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
      <address type='pci' domain='0x0000' bus='0x09' slot='0x00' function='0x0'/>
    </rng>
  </devices>
</domain>
`

var novaRules = StorageRules{SharedPaths: []string{"/var/lib/nova/instances"}, RBDShared: true}

func parseDomain(t *testing.T, s string) libvirtxml.Domain {
	t.Helper()
	var d libvirtxml.Domain
	require.NoError(t, d.Unmarshal(s))
	return d
}

func TestRewriteInstance(t *testing.T) {
	out, err := Rewrite(instanceXML, RewriteRules{BridgeMap: map[string]string{"br-ex": "br-public", "virbr0": "virbr9"}})
	require.NoError(t, err)
	d := parseDomain(t, out)

	vnc, spice := d.Devices.Graphics[0].VNC, d.Devices.Graphics[1].Spice
	require.NotNil(t, vnc)
	require.NotNil(t, spice)
	assert.Equal(t, "0.0.0.0", vnc.Listen)
	assert.Equal(t, "0.0.0.0", vnc.Listeners[0].Address.Address)
	assert.Equal(t, "0.0.0.0", spice.Listen)
	assert.Equal(t, "0.0.0.0", spice.Listeners[0].Address.Address)
	assert.Equal(t, -1, vnc.Port, "the rest of the console is kept")
	assert.Equal(t, "en-us", vnc.Keymap)
	assert.Equal(t, "off", spice.Image.Compression)
	assert.NotContains(t, out, "10.0.0.5", "no trace of the dead host's address")

	ifs := d.Devices.Interfaces
	require.Len(t, ifs, 3)
	assert.Equal(t, "br-public", ifs[0].Source.Bridge.Bridge, "mapped bridge")
	assert.Equal(t, "br-int", ifs[1].Source.Bridge.Bridge, "unmapped bridge is unchanged")
	assert.Equal(t, "3c2b1a09-8f7e-4d6c-b5a4-392817160504", ifs[1].VirtualPort.Params.OpenVSwitch.InterfaceID)
	assert.Equal(t, "default", ifs[2].Source.Network.Network, "network interfaces are not bridges")
	assert.Equal(t, "fa:16:3e:12:34:56", ifs[0].MAC.Address, "the guest keeps its MAC")

	// Identity, size, disks and chime-fence metadata survive.
	before, err := ParseVM(instanceXML, novaRules)
	require.NoError(t, err)
	after, err := ParseVM(out, novaRules)
	require.NoError(t, err)
	assert.Equal(t, before, after)
	assert.True(t, after.Evacuable, after.Reason)
	assert.Equal(t, 10, after.Priority)
	assert.Contains(t, out, "<nova:name>db-1</nova:name>", "foreign metadata is kept")
	assert.Contains(t, out, "10.0.1.10", "the Ceph monitors are not console addresses")
	assert.Equal(t, parseDomain(t, instanceXML).Devices.Disks, d.Devices.Disks)

	// Rewriting again changes nothing.
	again, err := Rewrite(out, RewriteRules{BridgeMap: map[string]string{"br-ex": "br-public"}})
	require.NoError(t, err)
	assert.Equal(t, out, again)
}

func TestRewriteListenChoices(t *testing.T) {
	const consoles = `<graphics type='vnc' port='5901' listen='192.168.7.1'><listen type='address' address='192.168.7.1'/></graphics>` +
		`<graphics type='vnc' autoport='yes'/>` + // no address: the target's qemu.conf default applies
		`<graphics type='spice' autoport='yes'><listen type='network' network='mgmt'/></graphics>` +
		`<graphics type='vnc'><listen type='socket' socket='/run/vnc.sock'/></graphics>` +
		`<graphics type='spice'><listen type='none'/></graphics>` +
		`<graphics type='vnc'><listen type='address'/></graphics>` +
		`<graphics type='rdp' autoport='yes' listen='192.168.7.1'/>` +
		`<graphics type='sdl' display=':0'/>`
	for _, tc := range []struct{ listen, want string }{
		{"", "0.0.0.0"}, {"::", "::"}, {"127.0.0.1", "127.0.0.1"}, {"console.example", "console.example"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			out, err := Rewrite(domainXML("", consoles), RewriteRules{GraphicsListen: tc.listen})
			require.NoError(t, err)
			g := parseDomain(t, out).Devices.Graphics
			require.Len(t, g, 8)
			assert.Equal(t, tc.want, g[0].VNC.Listen)
			assert.Equal(t, tc.want, g[0].VNC.Listeners[0].Address.Address)
			assert.Equal(t, 5901, g[0].VNC.Port)
			assert.Empty(t, g[1].VNC.Listen, "no address stays no address")
			assert.Empty(t, g[1].VNC.Listeners)
			assert.Equal(t, "mgmt", g[2].Spice.Listeners[0].Network.Network)
			assert.Empty(t, g[2].Spice.Listeners[0].Network.Address)
			assert.Equal(t, "/run/vnc.sock", g[3].VNC.Listeners[0].Socket.Socket)
			l := g[4].Spice.Listeners[0]
			assert.True(t, l.Address == nil && l.Network == nil && l.Socket == nil, "type='none' is kept")
			assert.Empty(t, g[5].VNC.Listeners[0].Address.Address, "an address listener without an address keeps the target's default")
			assert.Equal(t, tc.want, g[6].RDP.Listen)
			assert.Equal(t, ":0", g[7].SDL.Display)
			assert.NotContains(t, out, "192.168.7.1")
		})
	}
}

func TestRewriteLabVM(t *testing.T) {
	in := lab.DomainXML("vm-a", "/srv/chime-lab/shared/vm-a.qcow2")
	out, err := Rewrite(in, RewriteRules{BridgeMap: map[string]string{"br0": "br1"}})
	require.NoError(t, err, "as written by the lab, before libvirt gave it a UUID")
	assert.Contains(t, out, "<name>vm-a</name>")

	// As the inventory saves it: libvirt added the UUID at define time.
	in = strings.Replace(in, "</name>", "</name>\n  <uuid>c0ffee00-1234-4cde-8f00-0000000000a1</uuid>", 1)
	out, err = Rewrite(in, RewriteRules{BridgeMap: map[string]string{"br0": "br1"}})
	require.NoError(t, err)
	labRules := StorageRules{SharedPaths: []string{"/srv/chime-lab/shared"}}
	before, err := ParseVM(in, labRules)
	require.NoError(t, err)
	after, err := ParseVM(out, labRules)
	require.NoError(t, err)
	assert.Equal(t, before, after)
	assert.True(t, after.Evacuable)
	assert.Contains(t, out, "<source file=\"/srv/chime-lab/shared/vm-a.qcow2\"></source>")
	assert.Contains(t, out, "<memballoon model=\"none\"></memballoon>")
}

func TestRewriteErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		xml   string
		rules RewriteRules
		want  string
		lossy bool
	}{
		{"not XML", "<domain", RewriteRules{}, "rewrite domain XML: parse: XML syntax error", false},
		{"not a domain", "<network><name>x</name></network>", RewriteRules{}, "rewrite domain XML: parse: expected element type <domain> but have <network>", false},
		{"listen is not an address", instanceXML, RewriteRules{GraphicsListen: "0.0.0.0; rm -rf"}, `rewrite domain XML: graphics listen "0.0.0.0; rm -rf": is neither an IP address nor a host name`, false},
		{"listen label too long", instanceXML, RewriteRules{GraphicsListen: strings.Repeat("a", 64) + ".example"}, "is neither an IP address nor a host name", false},
		{"empty bridge target", instanceXML, RewriteRules{BridgeMap: map[string]string{"br-ex": ""}}, `rewrite domain XML: bridge map: br-ex → "": empty bridge name`, false},
		{"long bridge target", instanceXML, RewriteRules{BridgeMap: map[string]string{"br-ex": "br-0123456789abc"}}, `rewrite domain XML: bridge map: br-ex → "br-0123456789abc": longer than 15 bytes`, false},
		{"bad bridge source", instanceXML, RewriteRules{BridgeMap: map[string]string{"br/ex": "br0"}}, `rewrite domain XML: bridge map: source "br/ex": not a valid interface name`, false},
		{
			"element libvirtxml does not know",
			domainXML("", sharedFile+`<frobnicator model='x'/>`), RewriteRules{},
			"rewrite domain XML of vm1: rewrite would lose part of the domain XML: libvirtxml drops <domain/devices/frobnicator>, domain/devices/frobnicator@model", true,
		},
		{
			"attribute libvirtxml does not know",
			domainXML("", `<disk type='file' device='disk' frob='1'><source file='/mnt/nfs/a'/><target dev='vda'/></disk>`), RewriteRules{},
			"rewrite domain XML of vm1: rewrite would lose part of the domain XML: libvirtxml drops domain/devices/disk@frob", true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Rewrite(tc.xml, tc.rules)
			require.Error(t, err)
			assert.Empty(t, out)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, tc.lossy, errors.Is(err, ErrLossyRewrite))
		})
	}
}

func TestShapeIgnoresMetadataAndNamespaces(t *testing.T) {
	a, err := xmlShape(`<domain xmlns:q="urn:q"><metadata><x:a xmlns:x="urn:x" k="v"><b/></x:a></metadata><name>n</name></domain>`)
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"<domain>": 1, "<domain/metadata>": 1, "<domain/name>": 1}, a)
	_, err = xmlShape(`<domain><name>`)
	assert.Error(t, err)
}

// TestRewriteOutputIsValidLibvirtXML checks the fixture and the rewrite
// against libvirt's own schema, when libvirt's validator is installed.
func TestRewriteOutputIsValidLibvirtXML(t *testing.T) {
	validator, err := exec.LookPath("virt-xml-validate")
	if err != nil {
		t.Skip("virt-xml-validate (libvirt-clients) not installed")
	}
	if _, err := exec.LookPath("xmllint"); err != nil {
		t.Skip("xmllint (libxml2-utils), which virt-xml-validate runs, not installed")
	}
	out, err := Rewrite(instanceXML, RewriteRules{BridgeMap: map[string]string{"br-ex": "br-public"}})
	require.NoError(t, err)
	dir := t.TempDir()
	for name, doc := range map[string]string{"before.xml": instanceXML, "after.xml": out} {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
		msg, err := exec.Command(validator, path, "domain").CombinedOutput()
		assert.NoError(t, err, "%s: %s", name, msg)
	}
}

func TestRewriteKeepsNamespacedElements(t *testing.T) {
	in := strings.Replace(domainXML("", sharedFile), "<domain type='qemu'>",
		"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", 1)
	in = strings.Replace(in, "</devices>", "</devices>\n  <qemu:commandline><qemu:arg value='-trace'/><qemu:env name='X' value='1'/></qemu:commandline>", 1)
	out, err := Rewrite(in, RewriteRules{})
	require.NoError(t, err)
	cl := parseDomain(t, out).QEMUCommandline
	require.NotNil(t, cl)
	assert.Equal(t, "-trace", cl.Args[0].Value)
	assert.Equal(t, "X", cl.Envs[0].Name)
}
