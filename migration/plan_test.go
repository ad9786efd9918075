package migration

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
)

const sharedDir = "/mnt/shared"

var rules = StorageRule{SharedPaths: []string{sharedDir}, RBDShared: true}

// domXML is a domain with the given disks, each "file:/path", "block:/dev/x",
// "net:iscsi" or "rbd:pool/img"; extra goes inside <devices>.
func domXML(i int, memMiB int, vcpus int, extra string, disks ...string) string {
	var devs string
	for j, d := range disks {
		target := fmt.Sprintf("vd%c", 'a'+j)
		var src, typ string
		switch {
		case len(d) > 5 && d[:5] == "file:":
			typ, src = "file", fmt.Sprintf("<source file='%s'/>", d[5:])
		case len(d) > 6 && d[:6] == "block:":
			typ, src = "block", fmt.Sprintf("<source dev='%s'/>", d[6:])
		case len(d) > 4 && d[:4] == "net:":
			typ, src = "network", fmt.Sprintf("<source protocol='%s' name='x/y'><host name='10.0.0.9'/></source>", d[4:])
		case len(d) > 4 && d[:4] == "rbd:":
			typ, src = "network", fmt.Sprintf("<source protocol='rbd' name='%s'><host name='10.0.0.9'/></source>", d[4:])
		}
		devs += fmt.Sprintf("<disk type='%s' device='disk'><driver name='qemu' type='qcow2'/>%s<target dev='%s' bus='virtio'/></disk>", typ, src, target)
	}
	return fmt.Sprintf(`<domain type='kvm'><name>vm%d</name><uuid>00000000-0000-4000-8000-%012d</uuid>
<memory unit='MiB'>%d</memory><vcpu>%d</vcpu><os><type arch='x86_64'>hvm</type></os>
<devices>%s%s</devices></domain>`, i, i, memMiB, vcpus, devs, extra)
}

func uuid(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

func running(xml string) Domain { return Domain{XML: xml, State: hypervisor.StateRunning} }

func host(name string, cpus int, memMiB int64) evacuator.Candidate {
	return evacuator.Candidate{Name: name, Eligible: true, CPUs: cpus, MemoryMiB: memMiB, FreeMemoryMiB: -1, Load: 0.1}
}

func TestPlanTargetTakesEveryVM(t *testing.T) {
	req := Request{
		Source: "h1", Target: "h3", Storage: rules,
		Domains: []Domain{
			running(domXML(1, 1024, 2, "", "file:"+sharedDir+"/a.qcow2")),
			running(domXML(2, 2048, 1, "", "rbd:pool/b")),
			{XML: domXML(3, 512, 1, "", "file:"+sharedDir+"/c.qcow2"), State: hypervisor.StateShutoff},
		},
		Hosts: []evacuator.Candidate{host("h1", 8, 8192), host("h2", 64, 65536), host("h3", 8, 8192)},
	}
	p, err := NewPlan(req)
	require.NoError(t, err)
	require.Len(t, p.Moves, 3)
	for _, m := range p.Moves {
		assert.Equal(t, "h3", m.Target, "the operator's target takes every VM, though h2 is emptier")
		assert.Equal(t, "h1", m.Source)
		assert.Empty(t, m.CopyDisks)
	}
	assert.Equal(t, uuid(2), p.Moves[0].VM.UUID, "larger memory first")
	assert.True(t, p.Moves[2].Offline, "the shut-off VM moves its definition only")
	assert.False(t, p.Moves[0].Offline)
	assert.Empty(t, p.Skipped)
	assert.Equal(t, "3 VMs to migrate off h1 to h3", p.Summary())
}

func TestPlanFailsWholeWhenTargetTooSmall(t *testing.T) {
	req := Request{
		Source: "h1", Target: "h2", Storage: rules,
		Domains: []Domain{
			running(domXML(1, 3000, 1, "", "file:"+sharedDir+"/a.qcow2")),
			running(domXML(2, 3000, 1, "", "file:"+sharedDir+"/b.qcow2")),
		},
		Hosts: []evacuator.Candidate{host("h2", 8, 4096), host("h3", 8, 65536)},
	}
	p, err := NewPlan(req)
	require.ErrorIs(t, err, ErrNoCapacity)
	assert.Contains(t, err.Error(), "1 of 2 VMs to move do not fit on h2, so nothing is moved")
	assert.Contains(t, err.Error(), "vm2 ("+uuid(2)+"): no capacity: needs 3000 MiB")
	assert.Len(t, p.Placement.Unplaced, 1, "the report says which VM did not fit")

	// Automatic placement uses h3 as well: everything fits.
	req.Target = ""
	p, err = NewPlan(req)
	require.NoError(t, err)
	assert.Len(t, p.Moves, 2)
}

func TestPlanSchedulerCapacityOfWholeHost(t *testing.T) {
	var doms []Domain
	for i := 1; i <= 5; i++ {
		doms = append(doms, running(domXML(i, 1024, 2, "", "file:"+sharedDir+fmt.Sprintf("/%d.qcow2", i))))
	}
	hosts := []evacuator.Candidate{host("h2", 4, 8192), host("h3", 4, 8192)} // 8 vCPUs in all, 10 needed
	p, err := NewPlan(Request{Source: "h1", Domains: doms, Hosts: hosts, Storage: rules})
	require.ErrorIs(t, err, ErrNoCapacity)
	assert.Contains(t, err.Error(), "1 of 5 VMs to move do not fit on any eligible host")
	assert.Len(t, p.Moves, 4, "the placed part is reported, but the caller must move nothing")

	hosts[1].CPUs = 6
	p, err = NewPlan(Request{Source: "h1", Domains: doms, Hosts: hosts, Storage: rules})
	require.NoError(t, err)
	per := map[string]int{}
	for _, m := range p.Moves {
		per[m.Target]++
	}
	assert.Equal(t, map[string]int{"h2": 2, "h3": 3}, per)
}

func TestPlanLocalDisks(t *testing.T) {
	mixed := domXML(1, 512, 1, "", "file:"+sharedDir+"/a.qcow2", "file:/var/lib/libvirt/images/b.qcow2", "file:/var/lib/libvirt/images/c.qcow2", "file:/srv/d.img")
	block := domXML(2, 512, 1, "", "block:/dev/sdb")
	offline := Domain{XML: domXML(3, 512, 1, "", "file:/var/lib/libvirt/images/e.qcow2"), State: hypervisor.StateShutoff}
	iscsi := domXML(4, 512, 1, "", "net:iscsi")
	req := Request{Source: "h1", Storage: rules, Hosts: []evacuator.Candidate{host("h2", 8, 8192)},
		Domains: []Domain{running(mixed), running(block), offline, running(iscsi)}}

	p, err := NewPlan(req)
	require.NoError(t, err, "VMs that stay do not fail the plan")
	assert.Empty(t, p.Moves)
	require.Len(t, p.Skipped, 4)
	for _, s := range p.Skipped {
		assert.Contains(t, s.Reason, "has local disks", s.Name)
		assert.Contains(t, s.Reason, "add --migrate-local-disk-vms to copy them", s.Name)
	}
	assert.Contains(t, p.Skipped[0].Reason, "vdb is on local storage (/var/lib/libvirt/images/b.qcow2)")

	req.MigrateLocalDiskVMs = true
	p, err = NewPlan(req)
	require.NoError(t, err)
	require.Len(t, p.Moves, 1)
	m := p.Moves[0]
	assert.Equal(t, uuid(1), m.VM.UUID)
	assert.Equal(t, []string{"vdb", "vdc", "vdd"}, m.CopyDisks, "only the local disks are copied, never the shared one")
	assert.Equal(t, []string{"/var/lib/libvirt/images", "/srv"}, m.CopyDirs)
	reasons := map[string]string{}
	for _, s := range p.Skipped {
		reasons[s.Name] = s.Reason
	}
	assert.Contains(t, reasons["vm2"], "local disk vda cannot be copied by a migration: it is a block device (/dev/sdb)")
	assert.Contains(t, reasons["vm3"], "shut off with local disks (vda): an offline migration cannot copy storage")
	assert.Contains(t, reasons["vm4"], "it is a iscsi network disk")
}

func TestPlanSkipsWhatCannotMove(t *testing.T) {
	hostdev := domXML(1, 512, 1, "<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0' function='0'/></source></hostdev>", "file:"+sharedDir+"/a.qcow2")
	optOut := `<domain type='kvm'><name>vm2</name><uuid>` + uuid(2) + `</uuid><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<metadata><cf:vm xmlns:cf="https://chimestack.io/xmlns/chime-fence/1" evacuate="false"/></metadata>
<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'><source file='` + sharedDir + `/b.qcow2'/><target dev='vda'/></disk></devices></domain>`
	p, err := NewPlan(Request{Source: "h1", Storage: rules, Hosts: []evacuator.Candidate{host("h2", 8, 8192)},
		Domains: []Domain{running(hostdev), running(optOut), running("<domain"), running(optOut)}})
	require.NoError(t, err)
	require.Len(t, p.Moves, 1)
	assert.Equal(t, "vm2", p.Moves[0].VM.Name, `evacuate="false" concerns rebuilds; a live move keeps the guest running`)
	require.Len(t, p.Skipped, 3)
	assert.Equal(t, "vm1", p.Skipped[0].Name)
	assert.Contains(t, p.Skipped[0].Reason, "1 host device(s) passed through")
	assert.Equal(t, "domain #3", p.Skipped[1].Name)
	assert.Contains(t, p.Skipped[1].Reason, "its definition cannot be read")
	assert.Contains(t, p.Skipped[2].Reason, "listed more than once")
}

func TestPlanInvalidRequests(t *testing.T) {
	hosts := []evacuator.Candidate{host("h1", 8, 8192), host("h2", 8, 8192), {Name: "h3", Why: "admin disabled", CPUs: 8, MemoryMiB: 8192}}
	doms := []Domain{running(domXML(1, 512, 1, "", "file:"+sharedDir+"/a.qcow2"))}
	for _, tc := range []struct {
		name string
		req  Request
		want string
	}{
		{"no source", Request{Domains: doms, Hosts: hosts}, "no source host"},
		{"target is source", Request{Source: "h1", Target: "h1", Domains: doms, Hosts: hosts}, "target h1 is the host being emptied"},
		{"unknown target", Request{Source: "h1", Target: "h9", Domains: doms, Hosts: hosts}, "target h9 is not a known host"},
		{"ineligible target", Request{Source: "h1", Target: "h3", Domains: doms, Hosts: hosts}, "target h3 cannot take VMs: admin disabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewPlan(tc.req)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	// The source is never a target, whatever the caller says about it.
	p, err := NewPlan(Request{Source: "h1", Domains: doms, Hosts: hosts[:1], Storage: rules})
	require.ErrorIs(t, err, ErrNoCapacity)
	assert.Contains(t, err.Error(), "h1 is the failed host")
	assert.Empty(t, p.Placement.Assignments)
}
