package hypervisor

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMigrationValidate(t *testing.T) {
	ok := Migration{UUID: "u", DestURI: "qemu+tcp://10.0.0.12/system", DataURI: "tcp://10.0.0.12", CopyDisks: []string{"vda", "sdb"}}
	require.NoError(t, ok.Validate())
	require.NoError(t, Migration{UUID: "u", DestURI: "qemu+tcp://h2/system", DataURI: "tcp://h2:49152", Offline: true}.Validate())

	for _, tc := range []struct {
		name string
		m    Migration
		want []string
	}{
		{"empty", Migration{}, []string{"uuid is empty", "dest_uri is empty"}},
		{"no host", Migration{UUID: "u", DestURI: "qemu:///system"}, []string{`dest_uri "qemu:///system": want a libvirt URI with a host`}},
		{"data not tcp", Migration{UUID: "u", DestURI: "qemu+tcp://h/system", DataURI: "rdma://h"}, []string{`data_uri "rdma://h": want tcp://ADDR`}},
		{"data with path", Migration{UUID: "u", DestURI: "qemu+tcp://h/system", DataURI: "tcp://h/x"}, []string{"want tcp://ADDR"}},
		{"bad disk", Migration{UUID: "u", DestURI: "qemu+tcp://h/system", CopyDisks: []string{"vda", "vda", "../x"}}, []string{"vda is listed twice", `"../x" is not a disk target`}},
		{"offline copy", Migration{UUID: "u", DestURI: "qemu+tcp://h/system", Offline: true, CopyDisks: []string{"vda"}}, []string{"an offline migration cannot copy storage"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.m.Validate()
			require.Error(t, err)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}

	err := Migration{UUID: "u", DestURI: "qemu+tcp://root:s3cret-pw@h/system"}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "dest_uri must not carry a password")
	assert.NotContains(t, err.Error(), "s3cret-pw", "the password is never echoed")
}

func TestMigrationProgressPercent(t *testing.T) {
	assert.InDelta(t, 25.0, MigrationProgress{DataTotal: 400, DataRemaining: 300}.Percent(), 1e-9)
	assert.Zero(t, MigrationProgress{}.Percent())
	assert.Zero(t, MigrationProgress{DataTotal: 10, DataRemaining: 20}.Percent(), "remaining past total (dirtied memory) is not negative")
	assert.Equal(t, "u to qemu+tcp://h/system (data over tcp://h) copying vda,vdb", Migration{UUID: "u", DestURI: "qemu+tcp://h/system", DataURI: "tcp://h", CopyDisks: []string{"vda", "vdb"}}.String())
}
