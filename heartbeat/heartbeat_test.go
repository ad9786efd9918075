package heartbeat

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	_, err := Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1}`))
	require.NoError(t, err)
	// Strict like every other body: upgrade the daemon before the agents.
	_, err = Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"future_field":{"x":1}}`))
	assert.ErrorContains(t, err, `unknown field "future_field"`)
	// Duplicate keys: encoding/json keeps the last, a reader sees the first.
	_, err = Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"agent_version":"1","agent_version":"2"}`))
	assert.ErrorContains(t, err, `field "agent_version" appears twice`)
	_, err = Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"health":{"libvirt":{"ok":true,"ok":false}}}`))
	assert.ErrorContains(t, err, `field "health.libvirt.ok" appears twice`)
	_, err = Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"domains":[{"uuid":"6f1c2a9e-0000-4000-8000-000000000001","name":"a","name":"b"}]}`))
	assert.ErrorContains(t, err, `field "domains.0.name" appears twice`)
	// The assignment (read by agents) refuses duplicates but tolerates new
	// fields, so an agent older than its daemon keeps working.
	_, err = DecodeAssignment(strings.NewReader(`{"host":"h","admin_state":"enabled","future":1}`))
	assert.NoError(t, err)
	_, err = DecodeAssignment(strings.NewReader(`{"host":"h","admin_state":"enabled","admin_state":"drained"}`))
	assert.ErrorContains(t, err, `field "admin_state" appears twice`)
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

const (
	uA = "6f1c2a9e-0000-4000-8000-00000000000a"
	uB = "6f1c2a9e-0000-4000-8000-00000000000b"
)

func TestDecodeAssignmentEvicted(t *testing.T) {
	a, err := DecodeAssignment(strings.NewReader(`{"host":"h","admin_state":"drained","admin_since":"2030-01-02T03:04:05Z",
		"domains":[{"uuid":"` + uA + `","name":"a"}],"evicted":[{"uuid":"` + uB + `","name":"b"}],"future":1}`))
	require.NoError(t, err)
	assert.Equal(t, []AssignedDomain{{UUID: uB, Name: "b"}}, a.Evicted)
	assert.Equal(t, time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), a.AdminSince)

	old, err := DecodeAssignment(strings.NewReader(`{"host":"h","admin_state":"enabled","domains":[]}`))
	require.NoError(t, err, "an older daemon sends neither evicted nor admin_since")
	assert.Nil(t, old.Evicted)
	assert.True(t, old.AdminSince.IsZero())

	_, err = DecodeAssignment(strings.NewReader(`{"host":"h","domains":[{"uuid":"` + uA + `"}],
		"evicted":[{"uuid":"` + uA + `"},{"uuid":"B"},{"uuid":"` + uB + `"},{"uuid":"` + uB + `"}]}`))
	require.Error(t, err)
	assert.ErrorContains(t, err, "evicted[0].uuid "+uA+" is also in domains")
	assert.ErrorContains(t, err, `evicted[1].uuid "B" is not a canonical UUID`)
	assert.ErrorContains(t, err, "evicted[3].uuid "+uB+" is listed twice")
	assert.NotContains(t, err.Error(), "evicted[2]")

	_, err = DecodeAssignment(strings.NewReader(`{"host":"","domains":[{"uuid":"x"}]}`))
	assert.ErrorContains(t, err, "invalid assignment: host is empty")
	assert.ErrorContains(t, err, `domains[0].uuid "x" is not a canonical UUID`)
}

func TestAssignmentJSONFields(t *testing.T) {
	b, err := json.Marshal(Assignment{Host: "h", Evicted: []AssignedDomain{{UUID: uB, Name: "b"}}})
	require.NoError(t, err)
	assert.Contains(t, string(b), `"evicted":[{"uuid":"`+uB+`","name":"b"}]`)
	assert.NotContains(t, string(b), "admin_since", "a zero AdminSince is left out")
}

func TestFaultNamesEvictionFailures(t *testing.T) {
	h := Health{Libvirt: Check{OK: true}, Evictions: []Check{{Name: "web " + uA, Detail: "libvirt: destroy: timeout"}}}
	assert.Equal(t, "evicted domain web "+uA+" not cleaned up (libvirt: destroy: timeout)", h.Fault())
}

func TestHeartbeatLocalDrainRoundTrip(t *testing.T) {
	hb := Heartbeat{Host: "h", BootID: "b", Seq: 1, LocalDrain: &LocalDrain{Since: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), By: "cli"}}
	b, err := json.Marshal(hb)
	require.NoError(t, err)
	got, err := Decode(bytes.NewReader(b))
	require.NoError(t, err)
	assert.Equal(t, hb.LocalDrain, got.LocalDrain)
	b, err = json.Marshal(Heartbeat{Host: "h", BootID: "b", Seq: 1})
	require.NoError(t, err)
	assert.NotContains(t, string(b), "local_drain")
}

func TestHeartbeatLocalMigrations(t *testing.T) {
	m := LocalMigration{ID: "m1", At: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), UUID: "00000000-0000-4000-8000-000000000001",
		Name: "vm1", Dest: "10.79.0.12", Interface: "stor0", Moved: true}
	hb := Heartbeat{Host: "h", BootID: "b", Seq: 1, LocalMigrations: []LocalMigration{m}}
	b, err := json.Marshal(hb)
	require.NoError(t, err)
	got, err := Decode(bytes.NewReader(b))
	require.NoError(t, err)
	assert.Equal(t, hb.LocalMigrations, got.LocalMigrations)

	bad := hb
	bad.LocalMigrations = []LocalMigration{m, m, {ID: "m2", UUID: "X", Dest: "d"}, {ID: "m3", UUID: m.UUID}, {UUID: m.UUID, Dest: "d"}}
	err = bad.Validate()
	require.Error(t, err)
	for _, want := range []string{`local_migrations[1].id "m1" is listed twice`, `local_migrations[2].uuid "X" is not`, "local_migrations[3].dest is empty", "local_migrations[4].id must be 1 to 64 bytes"} {
		assert.Contains(t, err.Error(), want)
	}
	bad.LocalMigrations = make([]LocalMigration, MaxLocalMigrations+1)
	assert.ErrorContains(t, bad.Validate(), "257 local migrations listed, at most 256 allowed")
}

func TestDecodeDomainAutostart(t *testing.T) {
	hb, err := Decode(strings.NewReader(`{"host":"h","boot_id":"b","seq":1,"domains":[` +
		`{"uuid":"6f1c2a9e-0000-4000-8000-000000000001","autostart":true},{"uuid":"6f1c2a9e-0000-4000-8000-000000000002"}]}`))
	require.NoError(t, err)
	assert.True(t, hb.Domains[0].Autostart)
	assert.False(t, hb.Domains[1].Autostart, "absent (an agent that predates the field) reads as off")
	b, err := json.Marshal(Domain{UUID: "u"})
	require.NoError(t, err)
	assert.NotContains(t, string(b), "autostart", "off is left out")
}

func TestAckOutcomeJSON(t *testing.T) {
	b, err := json.Marshal(Ack{Outcome: OutcomeStale, OutcomeDetail: "why"})
	require.NoError(t, err)
	assert.Contains(t, string(b), `"outcome":"stale","outcome_detail":"why"`)
	var a Ack
	require.NoError(t, json.Unmarshal([]byte(`{"admin_state":"enabled","assignment_revision":1,"heartbeat_interval":"1s"}`), &a))
	assert.True(t, a.Accepted(), "a daemon that predates outcome: accepted")
	require.NoError(t, json.Unmarshal([]byte(`{"admin_state":"enabled","outcome":"stale"}`), &a))
	assert.True(t, a.Stale())
	assert.False(t, a.Accepted())
}
