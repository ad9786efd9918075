package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBootReason(t *testing.T) {
	at := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		s    BootState
		want string
	}{
		{"no state", BootState{}, "no persisted admin state: no domain is known to be allowed here"},
		{"marker unreadable", BootState{MarkerErr: errors.New("bad json"), Admin: AdminSeen{State: "enabled"}}, "the drain marker is unreadable (drained): no domain may start"},
		{"drained locally", BootState{Marker: &Marker{By: "cli", DrainedAt: at}, Admin: AdminSeen{State: "enabled"}}, "the host was drained locally (cli at 2026-12-07T20:00:00Z): no domain may start"},
		{"drained by the daemon (a fence)", BootState{Admin: AdminSeen{State: "drained"}}, "the daemon last said drained: no domain may start"},
		{"enabled: may be stale", BootState{Admin: AdminSeen{State: "enabled"}}, "the daemon last said enabled, but the host may have been fenced and its VMs rebuilt elsewhere since: only a current assignment lets a domain start (the agent starts it then)"},
		{"disabled: may be stale", BootState{Admin: AdminSeen{State: "disabled"}}, "the daemon last said disabled, but the host may have been fenced and its VMs rebuilt elsewhere since: only a current assignment lets a domain start (the agent starts it then)"},
	} {
		assert.Equal(t, c.want, BootReason(c.s), c.name)
	}
}

// TestPrepareBootRemovesEveryLink: whatever the persisted state (here the
// daemon last said enabled), every *.xml entry goes, in every directory;
// other files and a missing directory are left alone; the state is read.
func TestPrepareBootRemovesEveryLink(t *testing.T) {
	etc := t.TempDir()
	a1, a2 := filepath.Join(etc, "qemu", "autostart"), filepath.Join(etc, "other", "autostart")
	for _, d := range []string{a1, a2} {
		require.NoError(t, os.MkdirAll(d, 0o755))
	}
	cfg := filepath.Join(etc, "qemu", "db.xml")
	require.NoError(t, os.WriteFile(cfg, []byte(`<domain><name>db</name><uuid>6f1c2a9e-0000-4000-8000-000000000002</uuid></domain>`), 0o600))
	require.NoError(t, os.Symlink("../db.xml", filepath.Join(a1, "db.xml")))
	require.NoError(t, os.Symlink("/nowhere/x.xml", filepath.Join(a2, "x.xml")))
	require.NoError(t, os.WriteFile(filepath.Join(a1, "README"), nil, 0o600))
	state := t.TempDir()
	require.NoError(t, writeFileSync(state, AdminFile, AdminSeen{State: "enabled"}))

	var logs syncBuf
	r, err := PrepareBoot(state, []string{a1, a2, filepath.Join(etc, "missing")}, zerolog.New(&logs))
	require.NoError(t, err)
	assert.Equal(t, []BootLink{
		{Path: filepath.Join(a2, "x.xml"), Target: "/nowhere/x.xml", Removed: true},
		{Path: filepath.Join(a1, "db.xml"), Target: "../db.xml", Name: "db", UUID: "6f1c2a9e-0000-4000-8000-000000000002", Removed: true},
	}, r.Links, "sorted by path")
	assert.Contains(t, r.Why, "the daemon last said enabled")
	assert.FileExists(t, cfg, "the domain's config stays")
	assert.FileExists(t, filepath.Join(a1, "README"), "libvirt reads only *.xml")
	assert.NoFileExists(t, filepath.Join(a1, "db.xml"))
	assert.Len(t, logs.lines(map[string]string{"component": "prepare-boot", "message": "autostart link removed before libvirtd starts"}), 2)
}

func TestPrepareBootFailsWhenADirectoryCannotBeRead(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notDir, nil, 0o600))
	_, err := PrepareBoot("", []string{notDir}, zerolog.Nop())
	assert.ErrorContains(t, err, "prepare-boot:")
}
