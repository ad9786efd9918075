package evacuator

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var rules = StorageRules{SharedPaths: []string{"/mnt/nfs", "/var/lib/nova/instances/"}, RBDShared: true}

func domainXML(metadata, devices string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>vm1</name>
  <uuid>6a1f7c4e-3b7f-4a0e-9d55-5e0c6b6d7a11</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  %s
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>%s</devices>
</domain>`, metadata, devices)
}

const (
	sharedFile = `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/mnt/nfs/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>`
	rbdDisk    = `<disk type='network' device='disk'><source protocol='rbd' name='pool/vm1-data'><host name='10.0.0.5' port='6789'/></source><target dev='vdb' bus='virtio'/></disk>`
	localFile  = `<disk type='file' device='disk'><source file='/var/lib/libvirt/images/vm1.qcow2'/><target dev='vdc' bus='virtio'/></disk>`
	prefixTrap = `<disk type='file' device='disk'><source file='/mnt/nfs2/vm1.qcow2'/><target dev='vdd' bus='virtio'/></disk>`
	emptyCD    = `<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>`
	localISO   = `<disk type='file' device='cdrom'><source file='/root/install.iso'/><target dev='hdd' bus='ide'/></disk>`
	sharedLV   = `<disk type='block' device='disk'><source dev='/var/lib/nova/instances/lv1'/><target dev='vde' bus='virtio'/></disk>`
	poolVol    = `<disk type='volume' device='disk'><source pool='default' volume='vm1.img'/><target dev='vdf' bus='virtio'/></disk>`
	nbdDisk    = `<disk type='network' device='disk'><source protocol='nbd' name='export'><host name='10.0.0.9'/></source><target dev='vdg' bus='virtio'/></disk>`
	hostdev    = `<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>`
	meta       = `<metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" priority="10" group="db"/><other:x xmlns:other="urn:other" priority="99"/></metadata>`
	optOut     = `<metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" evacuate="false"/></metadata>`
)

func TestParseVMClassifiesEveryDisk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		meta, dev string
		evacuable bool
		reason    string
		classes   []DiskClass
	}{
		{"shared file", "", sharedFile, true, "all disks on shared storage", []DiskClass{DiskShared}},
		{"shared file + rbd + empty cdrom", "", sharedFile + rbdDisk + emptyCD, true, "all disks on shared storage", []DiskClass{DiskShared, DiskRBD, DiskEmpty}},
		{"shared block device", "", sharedLV, true, "all disks on shared storage", []DiskClass{DiskShared}},
		{"one local disk blocks", "", sharedFile + localFile, false, "disk vdc is on local storage (/var/lib/libvirt/images/vm1.qcow2)", []DiskClass{DiskShared, DiskLocal}},
		{"sibling of a shared prefix is not shared", "", prefixTrap, false, "disk vdd is on local storage (/mnt/nfs2/vm1.qcow2)", []DiskClass{DiskLocal}},
		{"local ISO blocks", "", sharedFile + localISO, false, "disk hdd is on local storage (/root/install.iso)", []DiskClass{DiskShared, DiskLocal}},
		{"pool volume", "", poolVol, false, "disk vdf is a storage-pool volume whose path is unknown here", []DiskClass{DiskLocal}},
		{"unknown network protocol", "", nbdDisk, false, `disk vdg uses network protocol "nbd", which is not known to be shared`, []DiskClass{DiskLocal}},
		{"pci passthrough", "", sharedFile + hostdev, false, "1 host device(s) passed through", []DiskClass{DiskShared}},
		{"opted out", optOut, sharedFile, false, `opted out by metadata evacuate="false"`, []DiskClass{DiskShared}},
		{"no disks", "", "", true, "no disks", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm, err := ParseVM(domainXML(tc.meta, tc.dev), rules)
			require.NoError(t, err)
			assert.Equal(t, tc.evacuable, vm.Evacuable)
			assert.Equal(t, tc.reason, vm.Reason)
			var classes []DiskClass
			for _, d := range vm.Disks {
				classes = append(classes, d.Class)
			}
			assert.Equal(t, tc.classes, classes)
		})
	}
}

func TestParseVMRBDWhenNotShared(t *testing.T) {
	vm, err := ParseVM(domainXML("", rbdDisk), StorageRules{RBDShared: false})
	require.NoError(t, err)
	assert.False(t, vm.Evacuable)
	assert.Equal(t, "disk vdb is a Ceph RBD image and storage.rbd_shared is off", vm.Reason)
}

func TestParseVMSizeAndMetadata(t *testing.T) {
	vm, err := ParseVM(domainXML(meta, sharedFile), rules)
	require.NoError(t, err)
	assert.Equal(t, "6a1f7c4e-3b7f-4a0e-9d55-5e0c6b6d7a11", vm.UUID)
	assert.Equal(t, "vm1", vm.Name)
	assert.Equal(t, 2, vm.VCPUs)
	assert.Equal(t, int64(2048), vm.MemoryMiB)
	assert.Equal(t, 10, vm.Priority, "foreign metadata with the same attribute is ignored")
	assert.Equal(t, "db", vm.Group)
	assert.False(t, vm.OptOut)
}

func TestParseVMRejectsWhatItCannotRead(t *testing.T) {
	for _, tc := range []struct{ xml, want string }{
		{"not xml at all", "parse domain XML"},
		{"<domain><name>x</name></domain>", "domain has no uuid or name"},
		{domainXML(`<metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" priority="high"/></metadata>`, ""), `priority="high": must be a whole number`},
		{domainXML(`<metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" evacuate="no"/></metadata>`, ""), `evacuate="no": must be true or false`},
		{`<domain><name>x</name><uuid>u</uuid><memory unit='parsecs'>3</memory></domain>`, `memory: unit "parsecs" not understood`},
	} {
		_, err := ParseVM(tc.xml, rules)
		require.Error(t, err)
		assert.Contains(t, err.Error(), tc.want)
	}
}

// TestToMiBRefusesOverflow: a unit product that wrapped to 0 MiB made a
// huge VM fit on any host (and so evacuable anywhere).
func TestToMiBRefusesOverflow(t *testing.T) {
	for _, tc := range []struct {
		v    uint
		unit string
	}{
		{1 << 63, "GiB"}, {1 << 54, "TiB"}, {^uint(0), "GB"}, {^uint(0), "MiB"}, {1<<20 + 1, "TiB"},
	} {
		_, err := toMiB(tc.v, tc.unit)
		require.Error(t, err, "%d %s", tc.v, tc.unit)
	}
	_, err := ParseVM(`<domain><name>x</name><uuid>u</uuid><memory unit='TiB'>18014398509481984</memory></domain>`, StorageRules{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "memory: 18014398509481984 TiB is too large")
}

func TestToMiB(t *testing.T) {
	for _, tc := range []struct {
		v    uint
		unit string
		want int64
	}{
		{65536, "", 64}, {65536, "KiB", 64}, {64, "MiB", 64}, {2, "GiB", 2048}, {1 << 26, "b", 64}, {1, "TiB", 1 << 20},
		// Rounded up: a VM is never counted smaller than it is.
		{65537, "KiB", 65}, {1, "KiB", 1}, {1, "b", 1}, {1000, "MB", 954}, {1 << 20, "TiB", 1 << 40},
	} {
		got, err := toMiB(tc.v, tc.unit)
		require.NoError(t, err)
		assert.Equal(t, tc.want, got, "%d %s", tc.v, tc.unit)
	}
}

func TestWithAutostart(t *testing.T) {
	ok := VM{Name: "web", Evacuable: true, Reason: "all disks on shared storage"}
	local := VM{Name: "db", Reason: "disk vda local"}
	for _, c := range []struct {
		name string
		vm   VM
		on   bool
		want VM
	}{
		{"off: unchanged", ok, false, ok},
		{"off, not evacuable: unchanged", local, false, local},
		{"on: not evacuable, the reason says why", ok, true, VM{Name: "web", Reason: AutostartReason}},
		{"on, already not evacuable: both reasons", local, true, VM{Name: "db", Reason: "disk vda local; " + AutostartReason}},
	} {
		assert.Equal(t, c.want, WithAutostart(c.vm, c.on), c.name)
	}
	assert.Equal(t, "autostart on: would start again on its old host", AutostartReason, "the text operators search for")
}
