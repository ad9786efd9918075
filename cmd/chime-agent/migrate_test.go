package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/hypervisor"
)

// migHosts is a fake pair of libvirtds: this host (unix socket) and the
// destination (TCP), sharing one view of where each domain is.
type migHosts struct {
	mu       sync.Mutex
	doms     map[string][]hypervisor.Domain // "local" or "dest"
	migrated []hypervisor.Migration
	failOn   string
	dialed   []libvirt.Config
}

type migHV struct {
	h    *migHosts
	side string
}

func (m migHV) Domains(context.Context, bool) ([]hypervisor.Domain, error) {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	return append([]hypervisor.Domain(nil), m.h.doms[m.side]...), nil
}

func (m migHV) Domain(_ context.Context, uuid string) (hypervisor.Domain, error) {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	for _, d := range m.h.doms[m.side] {
		if d.UUID == uuid {
			return d, nil
		}
	}
	return hypervisor.Domain{}, &hypervisor.Error{Kind: hypervisor.KindNotFound}
}

func (m migHV) NodeStats(context.Context) (hypervisor.NodeStats, error) {
	return hypervisor.NodeStats{CPUs: 2, MemoryKiB: 4 << 20, FreeKiB: 3 << 20}, nil
}

func (m migHV) Migrate(_ context.Context, mg hypervisor.Migration, _ func(hypervisor.MigrationProgress)) error {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	m.h.migrated = append(m.h.migrated, mg)
	if mg.UUID == m.h.failOn {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Err: errors.New("Unsafe migration")}
	}
	for i, d := range m.h.doms["local"] {
		if d.UUID == mg.UUID {
			m.h.doms["local"] = append(m.h.doms["local"][:i:i], m.h.doms["local"][i+1:]...)
			m.h.doms["dest"] = append(m.h.doms["dest"], d)
			return nil
		}
	}
	return &hypervisor.Error{Kind: hypervisor.KindNotFound}
}

func (m migHV) PrepareCopyTargets(context.Context, []string) (func(context.Context) error, error) {
	return func(context.Context) error { return nil }, nil
}

func (m migHV) Close() error { return nil }

const (
	mu1 = "6f1c2a9e-0000-4000-8000-0000000000a1"
	mu2 = "6f1c2a9e-0000-4000-8000-0000000000a2"
	mu3 = "6f1c2a9e-0000-4000-8000-0000000000a3"
)

func migDom(uuid, name, disk string, memMiB int) hypervisor.Domain {
	return hypervisor.Domain{UUID: uuid, Name: name, State: hypervisor.StateRunning, Persistent: true, XML: fmt.Sprintf(
		`<domain type='qemu'><name>%s</name><uuid>%s</uuid><memory unit='MiB'>%d</memory><vcpu>1</vcpu><os><type>hvm</type></os>
<devices><disk type='file' device='disk'><source file='%s'/><target dev='vda'/></disk></devices></domain>`, name, uuid, memMiB, disk)}
}

func newMigHosts() *migHosts {
	return &migHosts{doms: map[string][]hypervisor.Domain{
		"local": {migDom(mu1, "web", "/shared/web.qcow2", 512), migDom(mu2, "db", "/var/lib/libvirt/images/db.qcow2", 512)},
		"dest":  {},
	}}
}

func migEnv(h *migHosts, ethUp bool) migrateEnv {
	oper := "up"
	if !ethUp {
		oper = "lowerlayerdown"
	}
	_, mgmt, _ := net.ParseCIDR("10.77.0.0/24")
	_, stor, _ := net.ParseCIDR("10.79.0.0/24")
	return migrateEnv{
		dial: func(cfg libvirt.Config, _ zerolog.Logger) (migrateHV, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.dialed = append(h.dialed, cfg)
			if cfg.Address == "unix:/run/libvirt/libvirt-sock" {
				return migHV{h: h, side: "local"}, nil
			}
			return migHV{h: h, side: "dest"}, nil
		},
		ifaces: func() ([]agent.Iface, error) {
			return []agent.Iface{
				{Name: "eth0", Up: true, Oper: oper, Addrs: []*net.IPNet{{IP: net.ParseIP("10.77.0.11"), Mask: mgmt.Mask}}},
				{Name: "stor0", Up: true, Oper: "up", Addrs: []*net.IPNet{{IP: net.ParseIP("10.79.0.11"), Mask: stor.Mask}}},
			}, nil
		},
		routes: func() ([]agent.Route, error) {
			return []agent.Route{{Iface: "eth0", Dst: mgmt}, {Iface: "stor0", Dst: stor}}, nil
		},
		now: func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) },
	}
}

func runMigrate(t *testing.T, env migrateEnv, args ...string) (int, string, string) {
	t.Helper()
	var o, e lockedBuf
	root := newRoot(&o, &e)
	for _, c := range root.Commands() {
		if c.Name() == "migrate" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(newMigrate(&o, &e, env))
	root.SetArgs(append([]string{"migrate", "--host", "host1"}, args...))
	err := root.ExecuteContext(context.Background())
	code := exitOK
	if err != nil {
		var ee *exitError
		code = exitUsage
		if errors.As(err, &ee) {
			code = ee.code
		}
		e.Write([]byte(err.Error()))
	}
	return code, o.String(), e.String()
}

func TestMigrateDryRunValidatesAndPrints(t *testing.T) {
	h := newMigHosts()
	dir := filepath.Join(t.TempDir(), "state")
	code, out, errOut := runMigrate(t, migEnv(h, false), "--interface", "stor0", "--dest", "10.79.0.12", "--all",
		"--shared-path", "/shared", "--state-dir", dir)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "host host1: dry run, nothing migrated (add --confirm to migrate)")
	assert.Contains(t, out, "path: stor0 10.79.0.11 -> 10.79.0.12 (destination libvirtd qemu+tcp://10.79.0.12/system)")
	assert.Contains(t, out, "would migrate  web")
	assert.Contains(t, out, "not moved      db")
	assert.Contains(t, out, "has local disks (vda is on local storage (/var/lib/libvirt/images/db.qcow2))")
	assert.Contains(t, out, "destination 10.79.0.12: 1 of 2 vCPUs and 512 of 4096 MiB allocated after the plan")
	assert.Empty(t, h.migrated, "a dry run migrates nothing")
	p, err := agent.PendingMigrations(dir)
	require.NoError(t, err)
	assert.Empty(t, p, "and records nothing")
	assert.Equal(t, "10.79.0.12:16509", h.dialed[1].Address, "the destination's libvirtd over the chosen network")

	// With local-disk VMs included, as JSON.
	code, out, errOut = runMigrate(t, migEnv(h, false), "--interface", "stor0", "--dest", "10.79.0.12", "--all",
		"--shared-path", "/shared", "--state-dir", dir, "--migrate-local-disk-vms", "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var o migrateOutput
	require.NoError(t, json.Unmarshal([]byte(out), &o))
	assert.True(t, o.DryRun)
	require.Len(t, o.Moves, 2)
	for _, m := range o.Moves {
		if m.VM.UUID == mu2 {
			assert.Equal(t, []string{"vda"}, m.CopyDisks)
		}
	}
}

func TestMigrateRefusesBadPathsAndPlans(t *testing.T) {
	h := newMigHosts()
	dir := filepath.Join(t.TempDir(), "state")
	base := []string{"--shared-path", "/shared", "--state-dir", dir}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"cut interface", []string{"--interface", "eth0", "--dest", "10.77.0.12", "--all"}, exitFailure,
			"cannot migrate over eth0: interface eth0 has no link (operstate lowerlayerdown)"},
		{"dest elsewhere", []string{"--interface", "stor0", "--dest", "10.77.0.12", "--all"}, exitFailure,
			"destination 10.77.0.12 is reached through eth0"},
		{"no interface", []string{"--interface", "eth7", "--dest", "10.79.0.12", "--all"}, exitFailure, "--interface eth7: no such interface"},
		{"unknown vm", []string{"--interface", "stor0", "--dest", "10.79.0.12", "--vm-uuid", mu3}, exitFailure, "no domain with UUID " + mu3 + " on this host"},
		{"local vm without flag", []string{"--interface", "stor0", "--dest", "10.79.0.12", "--vm-uuid", mu2}, exitFailure,
			"cannot migrate " + mu2 + ": has local disks"},
		{"too big", []string{"--interface", "stor0", "--dest", "10.79.0.12", "--all", "--memory-overcommit", "0.1"}, exitFailure,
			"the migration plan does not fit: 1 of 1 VMs to move do not fit on 10.79.0.12, so nothing is moved"},
		{"both", []string{"--interface", "stor0", "--dest", "10.79.0.12", "--all", "--vm-uuid", mu1}, exitUsage, "give one of them, not both"},
		{"neither", []string{"--interface", "stor0", "--dest", "10.79.0.12"}, exitUsage, "one of --vm-uuid or --all is required"},
		{"bad dest", []string{"--interface", "stor0", "--dest", "host2", "--all"}, exitUsage, `--dest "host2": want an IP address`},
		{"missing", []string{"--all"}, exitUsage, "--interface is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runMigrate(t, migEnv(h, false), append(tc.args, base...)...)
			assert.Equal(t, tc.code, code, out+errOut)
			assert.Contains(t, out+errOut, tc.want)
		})
	}
	assert.Empty(t, h.migrated)
}

func TestMigrateConfirmMovesAndRecords(t *testing.T) {
	h := newMigHosts()
	h.doms["local"] = append(h.doms["local"], migDom(mu3, "cache", "/shared/cache.qcow2", 256))
	h.failOn = mu3
	dir := filepath.Join(t.TempDir(), "state")
	code, out, errOut := runMigrate(t, migEnv(h, false), "--interface", "stor0", "--dest", "10.79.0.12", "--all",
		"--shared-path", "/shared", "--state-dir", dir, "--confirm")
	assert.Equal(t, exitFailure, code, "one VM failed")
	assert.Contains(t, out, "migrated       web")
	assert.Contains(t, out, "running on 10.79.0.12")
	assert.Contains(t, out, "failed         cache")
	assert.Contains(t, out, "not moved      db")
	assert.Contains(t, errOut, "1 of 2 VMs migrated off host1")
	require.Len(t, h.migrated, 2)
	for _, m := range h.migrated {
		assert.Equal(t, "qemu+tcp://10.79.0.12/system", m.DestURI)
		assert.Equal(t, "tcp://10.79.0.12", m.DataURI, "the data goes over the chosen network")
	}
	p, err := agent.PendingMigrations(dir)
	require.NoError(t, err)
	require.Len(t, p, 2, "both attempts recorded for the daemon")
	byUUID := map[string]bool{}
	for _, r := range p {
		byUUID[r.UUID] = r.Moved
		assert.Equal(t, "10.79.0.12", r.Dest)
		assert.Equal(t, "stor0", r.Interface)
		assert.NotEmpty(t, r.ID)
	}
	assert.Equal(t, map[string]bool{mu1: true, mu3: false}, byUUID)
}
