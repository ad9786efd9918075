package heartbeat

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestValidUUID(t *testing.T) {
	for _, ok := range []string{"6f1c2a9e-0000-4000-8000-000000000001", "ffffffff-ffff-ffff-ffff-ffffffffffff"} {
		assert.True(t, ValidUUID(ok), ok)
	}
	for _, bad := range []string{"", "6F1C2A9E-0000-4000-8000-000000000001", "6f1c2a9e00000-4000-8000-000000000001",
		"6f1c2a9e-0000-4000-8000-00000000000", "6f1c2a9e-0000-4000-8000-0000000000011", "6f1c2a9e-0000-4000-8000-00000000000g",
		"{6f1c2a9e-0000-4000-8000-000000000001}"} {
		assert.False(t, ValidUUID(bad), bad)
	}
}

func TestDecode(t *testing.T) {
	_, err := Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"future_field":{"x":1}}`))
	assert.NoError(t, err, "unknown fields are tolerated for rolling upgrades")
	_, err = Decode(strings.NewReader(`{"host":"","seq":0,"health":{"io_errors":-1}}`))
	assert.ErrorContains(t, err, "host is empty")
	assert.ErrorContains(t, err, "boot_id is empty")
	assert.ErrorContains(t, err, "seq must be >= 1")
	assert.ErrorContains(t, err, "health.io_errors must be >= 0")
	_, err = Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"domains":[{"uuid":"6f1c2a9e-0000-4000-8000-000000000001"},{"uuid":"6f1c2a9e-0000-4000-8000-000000000001"}]}`))
	assert.ErrorContains(t, err, "domains[1].uuid 6f1c2a9e-0000-4000-8000-000000000001 is listed twice")
}

func TestFault(t *testing.T) {
	h := Health{Libvirt: Check{OK: true}}
	assert.Empty(t, h.Fault())
	h = Health{Libvirt: Check{Detail: "dial: refused"}, Interfaces: []Check{{Name: "eth1"}, {Name: "eth0", OK: true}},
		Storage: []Check{{Name: "/mnt/shared", Detail: "EROFS"}}, IOErrors: 2}
	assert.Equal(t, "libvirtd unreachable (dial: refused); interface eth1 down; storage /mnt/shared not writable (EROFS); 2 I/O errors", h.Fault())
}
