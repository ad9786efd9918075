package libvirt

import (
	"context"
	"testing"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
)

func TestMigrationFlagsAndParams(t *testing.T) {
	base := golibvirt.MigratePeer2peer | golibvirt.MigratePersistDest | golibvirt.MigrateUndefineSource
	m := hypervisor.Migration{UUID: "u", DestURI: "qemu+tcp://h/system"}
	assert.Equal(t, base|golibvirt.MigrateLive|golibvirt.MigrateAbortOnError, migrationFlags(m))
	assert.Empty(t, migrationParams(m), "no data URI: libvirt's default")

	m.CopyDisks, m.DataURI, m.BandwidthMiBs, m.AllowUnsafe = []string{"vda", "vdc"}, "tcp://10.0.0.2", 100, true
	f := migrationFlags(m)
	assert.NotZero(t, f&golibvirt.MigrateNonSharedDisk)
	assert.NotZero(t, f&golibvirt.MigrateUnsafe)
	assert.Zero(t, f&golibvirt.MigrateNonSharedInc)
	ps := migrationParams(m)
	require.Len(t, ps, 4)
	assert.Equal(t, golibvirt.MigrateParamURI, ps[0].Field)
	assert.Equal(t, "tcp://10.0.0.2", ps[0].Value.I)
	assert.Equal(t, golibvirt.MigrateParamMigrateDisks, ps[1].Field, "only the listed disks are copied")
	assert.Equal(t, "vda", ps[1].Value.I)
	assert.Equal(t, "vdc", ps[2].Value.I)
	assert.Equal(t, uint64(100), ps[3].Value.I)

	off := hypervisor.Migration{UUID: "u", DestURI: "qemu+tcp://h/system", Offline: true}
	assert.Equal(t, base|golibvirt.MigrateOffline, migrationFlags(off), "offline: no live flag")
}

func TestMigrateRefusesBadRequestWithoutIO(t *testing.T) {
	// An address nothing listens on: a request that dialed would fail
	// "unreachable", not "invalid".
	c, err := New(Config{Host: "h1", Address: "127.0.0.1:1"}, zerolog.Nop())
	require.NoError(t, err)
	err = c.Migrate(context.Background(), hypervisor.Migration{UUID: "not-a-uuid", DestURI: "qemu+tcp://h2/system"}, nil)
	require.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.Contains(t, err.Error(), `"not-a-uuid" is not a UUID`)
	err = c.Migrate(context.Background(), hypervisor.Migration{UUID: "00000000-0000-4000-8000-000000000001"}, nil)
	require.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.Contains(t, err.Error(), "dest_uri is empty")
	_, err = c.PrepareCopyTargets(context.Background(), []string{"relative/dir"})
	require.ErrorIs(t, err, hypervisor.ErrInvalid)
}

func TestPoolXML(t *testing.T) {
	a, b := poolXML("/var/lib/libvirt/images"), poolXML("/srv/a&b")
	assert.Contains(t, a, "<path>/var/lib/libvirt/images</path>")
	assert.Contains(t, b, "<path>/srv/a&amp;b</path>", "escaped")
	assert.Equal(t, a, poolXML("/var/lib/libvirt/images"), "one name per directory")
	assert.NotEqual(t, a[:60], b[:60])
}
