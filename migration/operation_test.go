package migration

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/operations"
)

func TestOperationPlansThenMigrates(t *testing.T) {
	c := newCluster()
	c.put("h1", uuid(1), hypervisor.StateRunning)
	c.put("h1", uuid(2), hypervisor.StateRunning)
	doms := []hypervisor.Domain{
		{UUID: uuid(1), Name: "vm1", State: hypervisor.StateRunning, XML: domXML(1, 3000, 1, "", "file:"+sharedDir+"/a.qcow2")},
		{UUID: uuid(2), Name: "vm2", State: hypervisor.StateRunning, XML: domXML(2, 3000, 1, "", "file:"+sharedDir+"/b.qcow2")},
		{UUID: uuid(3), Name: "vm3", State: hypervisor.StateRunning, XML: domXML(3, 512, 1, "", "file:/var/lib/libvirt/images/c.qcow2")},
	}
	var r recorder
	deps := OperationDeps{
		Domains: func(_ context.Context, h string) ([]hypervisor.Domain, error) {
			require.Equal(t, "h1", h)
			return doms, nil
		},
		Cluster: func(source string) ([]evacuator.Candidate, evacuator.Limits, evacuator.StorageRules) {
			return []evacuator.Candidate{host("h1", 8, 8192), host("h2", 8, 4096), host("h3", 8, 8192)}, evacuator.Limits{}, rules
		},
		Exec: r.config(c),
	}
	exec := Operation(deps)
	var mu sync.Mutex
	var lines []operations.VMProgress
	report := func(ps ...operations.VMProgress) { mu.Lock(); lines = append(lines, ps...); mu.Unlock() }
	last := func(name string) operations.VMProgress {
		mu.Lock()
		defer mu.Unlock()
		for i := len(lines) - 1; i >= 0; i-- {
			if lines[i].Name == name {
				return lines[i]
			}
		}
		return operations.VMProgress{}
	}

	// Everything to h2, which takes one 3000 MiB VM only: refused whole.
	_, err := exec(context.Background(), operations.Task{Host: "h1", Op: operations.OpMigrate, Target: "h2"}, report)
	require.ErrorIs(t, err, ErrNoCapacity)
	assert.Empty(t, c.calls, "nothing moved")
	assert.Equal(t, operations.VMFailed, last("vm2").State)
	assert.Contains(t, last("vm2").Detail, "does not fit: no capacity: needs 3000 MiB")
	assert.Equal(t, operations.VMPending, last("vm1").State)
	assert.Equal(t, "not started: the plan does not fit as a whole", last("vm1").Detail)
	assert.Equal(t, operations.VMSkipped, last("vm3").State)

	// The scheduler spreads them.
	res, err := exec(context.Background(), operations.Task{Host: "h1", Op: operations.OpMigrate}, report)
	require.NoError(t, err)
	assert.Equal(t, "2 of 2 VMs migrated off h1; 1 not moved by design", res)
	assert.Equal(t, operations.VMDone, last("vm1").State)
	assert.Equal(t, operations.VMDone, last("vm2").State)
	assert.Len(t, r.moved, 2)

	_, err = Operation(OperationDeps{Domains: func(context.Context, string) ([]hypervisor.Domain, error) {
		return nil, errors.New("libvirtd down")
	}, Cluster: deps.Cluster, Exec: deps.Exec})(context.Background(), operations.Task{Host: "h1"}, report)
	assert.ErrorContains(t, err, "migrate h1: list its domains: libvirtd down; nothing moved")
}
