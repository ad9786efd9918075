package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

func localMig(id, uuid string, moved bool) heartbeat.LocalMigration {
	return heartbeat.LocalMigration{ID: id, At: rigNow, UUID: uuid, Name: "vm", Dest: "10.79.0.12", Interface: "stor0", Moved: moved}
}

func TestMigrationRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p, err := PendingMigrations(dir)
	require.NoError(t, err)
	assert.Empty(t, p, "no file: nothing pending")

	require.NoError(t, RecordMigrations(dir, localMig("a", u1, true), localMig("", u2, false)))
	p, err = PendingMigrations(dir)
	require.NoError(t, err)
	require.Len(t, p, 2)
	assert.Equal(t, "a", p[0].ID)
	assert.Len(t, p[1].ID, 16, "a record without ID gets a random one")
	fi, err := os.Stat(filepath.Join(dir, MigrationsFile))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	require.NoError(t, AckMigrations(dir, []string{"a", "unknown"}))
	p, err = PendingMigrations(dir)
	require.NoError(t, err)
	require.Len(t, p, 1)
	assert.Equal(t, u2, p[0].UUID)

	// The bound drops reported records first.
	var many []heartbeat.LocalMigration
	for i := range keepMigrations {
		many = append(many, localMig(fmt.Sprintf("m%d", i), u1, true))
	}
	require.NoError(t, RecordMigrations(dir, many...))
	recs, err := readMigrations(dir)
	require.NoError(t, err)
	assert.Len(t, recs, keepMigrations)
	assert.NotEqual(t, "a", recs[0].ID, "the reported record went first")
	p, err = PendingMigrations(dir)
	require.NoError(t, err)
	assert.Equal(t, keepMigrations, len(p), "then the oldest unreported one")
	assert.Equal(t, "m0", p[0].ID)
	assert.LessOrEqual(t, keepMigrations, heartbeat.MaxLocalMigrations, "everything kept fits one heartbeat")

	require.NoError(t, os.WriteFile(filepath.Join(dir, MigrationsFile), []byte("{"), 0o600))
	_, err = PendingMigrations(dir)
	assert.ErrorContains(t, err, "does not decode")
	assert.ErrorContains(t, RecordMigrations(dir, localMig("b", u1, true)), "does not decode", "a damaged file is not overwritten")
}

// TestHeartbeatReportsLocalMigrationsUntilAcked: the agent sends what
// chime-agent migrate recorded until the daemon acknowledges it.
func TestHeartbeatReportsLocalMigrationsUntilAcked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	require.NoError(t, RecordMigrations(dir, localMig("x1", u1, true)))
	hv := &fakeHV{doms: []hypervisor.Domain{}}
	d := &fakeDaemon{asg: enabledWith(1)}
	newRig(t, hv, d, func(c *Config) { c.StateDir = dir })
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		return len(hbs) >= 3
	}, wait, 5*time.Millisecond)
	for _, hb := range d.heartbeats() {
		require.Len(t, hb.LocalMigrations, 1, "sent while not acknowledged")
		assert.Equal(t, localMig("x1", u1, true), hb.LocalMigrations[0])
	}
	d.set(func(d *fakeDaemon) { d.ackMigrations = true })
	require.Eventually(t, func() bool {
		p, err := PendingMigrations(dir)
		return err == nil && len(p) == 0
	}, wait, 5*time.Millisecond)
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+2 }, wait, 5*time.Millisecond)
	hbs := d.heartbeats()
	assert.Empty(t, hbs[len(hbs)-1].LocalMigrations, "acknowledged: no longer sent")
}

func ipnet(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return n
}

func TestCheckMigrationPath(t *testing.T) {
	eth0 := Iface{Name: "eth0", Up: true, Oper: "up", Addrs: []*net.IPNet{ipnet("10.77.0.11/24")}}
	stor := Iface{Name: "stor0", Up: true, Oper: "up", Addrs: []*net.IPNet{ipnet("10.79.0.11/24"), ipnet("fd00::11/64")}}
	all := []Iface{eth0, stor}
	routes := []Route{
		{Iface: "eth0", Dst: ipnet("0.0.0.0/0")},
		{Iface: "eth0", Dst: ipnet("10.77.0.0/24")},
		{Iface: "stor0", Dst: ipnet("10.79.0.0/24")},
		{Iface: "stor0", Dst: ipnet("10.80.0.0/16"), Metric: 5},
		{Iface: "eth0", Dst: ipnet("10.80.0.0/16"), Metric: 10},
	}
	src, err := CheckMigrationPath(stor, all, routes, net.ParseIP("10.79.0.12"))
	require.NoError(t, err)
	assert.Equal(t, "10.79.0.11", src.String(), "directly connected")
	src, err = CheckMigrationPath(stor, all, routes, net.ParseIP("10.80.3.4"))
	require.NoError(t, err, "routed through stor0 (lower metric)")
	assert.Equal(t, "10.79.0.11", src.String())
	src, err = CheckMigrationPath(stor, all, routes, net.ParseIP("fd00::12"))
	require.NoError(t, err)
	assert.Equal(t, "fd00::11", src.String())

	down := eth0
	down.Oper = "lowerlayerdown"
	admin := stor
	admin.Up = false
	for _, tc := range []struct {
		name string
		ifc  Iface
		dest string
		want string
	}{
		{"other interface", stor, "10.77.0.12", "destination 10.77.0.12 is reached through eth0 (route 10.77.0.0/24), not through stor0"},
		{"default route elsewhere", stor, "192.0.2.1", "reached through eth0 (route 0.0.0.0/0)"},
		{"cable cut", down, "10.77.0.12", "interface eth0 has no link (operstate lowerlayerdown)"},
		{"admin down", admin, "10.79.0.12", "interface stor0 is administratively down"},
		{"own address", stor, "10.77.0.11", "destination 10.77.0.11 is this host's own address (on eth0)"},
		{"loopback", stor, "127.0.0.1", "is not a host address"},
		{"no v6 on eth0", eth0, "fd00::12", "interface eth0 has no IPv6 address"},
		{"v6 not connected", stor, "fd01::1", "only directly connected IPv6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CheckMigrationPath(tc.ifc, all, routes, net.ParseIP(tc.dest))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err = CheckMigrationPath(stor, all, nil, net.ParseIP("192.0.2.1"))
	assert.ErrorContains(t, err, "no route to destination 192.0.2.1")
}

func TestReadRoutes(t *testing.T) {
	table := `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth0	00000000	01004D0A	0003	0	0	0	00000000	0	0	0
eth0	00004D0A	00000000	0001	0	0	0	00FFFFFF	0	0	0
stor0	00004F0A	00000000	0001	0	0	100	00FFFFFF	0	0	0
`
	rs, err := ReadRoutes(strings.NewReader(table))
	require.NoError(t, err)
	require.Len(t, rs, 3)
	assert.Equal(t, "0.0.0.0/0", rs[0].Dst.String())
	assert.Equal(t, "10.77.0.0/24", rs[1].Dst.String())
	assert.Equal(t, Route{Iface: "stor0", Dst: ipnet("10.79.0.0/24"), Metric: 100}.Dst.String(), rs[2].Dst.String())
	assert.Equal(t, uint32(100), rs[2].Metric)
	_, err = ReadRoutes(strings.NewReader("h\neth0 zz 0 0 0 0 0 00FFFFFF\n"))
	assert.ErrorContains(t, err, `"zz" is not a hex IPv4 address`)
}
