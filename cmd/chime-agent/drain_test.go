package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/hypervisor"
)

const (
	du1 = "6f1c2a9e-0000-4000-8000-000000000001"
	du2 = "6f1c2a9e-0000-4000-8000-000000000002"
)

// localHV is the host's libvirtd for the drain command.
type localHV struct {
	mu        sync.Mutex
	doms      []hypervisor.Domain
	destroyed []string
	failOn    string
	cfg       libvirt.Config
	closed    bool
}

func (h *localHV) Domains(context.Context, bool) ([]hypervisor.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hypervisor.Domain(nil), h.doms...), nil
}

func (h *localHV) Destroy(_ context.Context, uuid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if uuid == h.failOn {
		return &hypervisor.Error{Kind: hypervisor.KindUnknown, Step: "destroy " + uuid, Err: errors.New("qemu stuck in D state")}
	}
	h.destroyed = append(h.destroyed, uuid)
	for i := range h.doms {
		if h.doms[i].UUID == uuid {
			h.doms[i].State, h.doms[i].Reason = hypervisor.StateShutoff, "destroyed"
		}
	}
	return nil
}

func (h *localHV) Close() error { h.closed = true; return nil }

func runDrain(t *testing.T, hv *localHV, args ...string) (int, string, string) {
	t.Helper()
	var o, e lockedBuf
	root := newRoot(&o, &e)
	// Replace the real drain command by one on the fake libvirtd.
	for _, c := range root.Commands() {
		if c.Name() == "drain" {
			root.RemoveCommand(c)
		}
	}
	root.AddCommand(newDrain(&o, &e, func(cfg libvirt.Config, _ zerolog.Logger) (drainHV, error) {
		hv.cfg = cfg
		return hv, nil
	}))
	root.SetArgs(append([]string{"drain"}, args...))
	err := root.ExecuteContext(context.Background())
	code := exitOK
	if err != nil {
		var ee *exitError
		code = exitUsage
		if errors.As(err, &ee) {
			code = ee.code
		}
		e.Write([]byte("chime-agent: error: " + err.Error() + "\n"))
	}
	return code, o.String(), e.String()
}

func twoVMs() *localHV {
	return &localHV{doms: []hypervisor.Domain{
		{UUID: du1, Name: "web", State: hypervisor.StateRunning},
		{UUID: du2, Name: "db", State: hypervisor.StateShutoff, Reason: "shutdown"},
	}}
}

func TestDrainDryRunStopsNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	hv := twoVMs()
	code, out, errOut := runDrain(t, hv, "--state-dir", dir, "--host", "n1", "--libvirt", "127.0.0.1:16509")
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "host n1: dry run, nothing stopped (add --confirm to drain)")
	assert.Contains(t, out, "would write the drain marker "+filepath.Join(dir, agent.MarkerFile))
	assert.Regexp(t, `would destroy\s+web\s+`+du1+`  \(running\)`, out)
	assert.Regexp(t, `not running\s+db\s+`+du2+`  \(shutoff\)`, out)
	assert.Contains(t, out, "1 of 2 domains active")
	assert.Empty(t, hv.destroyed)
	_, err := os.Stat(dir)
	assert.ErrorIs(t, err, os.ErrNotExist, "a dry run writes nothing")
	assert.Equal(t, "127.0.0.1:16509", hv.cfg.Address, "talks to the libvirtd named by --libvirt")
	assert.True(t, hv.closed)
}

func TestDrainConfirm(t *testing.T) {
	dir := t.TempDir()
	hv := twoVMs()
	code, out, errOut := runDrain(t, hv, "--confirm", "--state-dir", dir, "--host", "n1", "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var got drainOutput
	require.NoError(t, json.Unmarshal([]byte(out), &got))
	assert.False(t, got.DryRun)
	assert.Equal(t, 0, got.Running)
	assert.Equal(t, []agent.DrainedDomain{
		{UUID: du2, Name: "db", Before: hypervisor.StateShutoff, Action: agent.ActionNotRunning},
		{UUID: du1, Name: "web", Before: hypervisor.StateRunning, Action: agent.ActionDestroyed},
	}, got.Domains)
	assert.Equal(t, []string{du1}, hv.destroyed)
	m, err := agent.ReadMarker(dir)
	require.NoError(t, err)
	require.NotNil(t, m)
	assert.Equal(t, "cli", m.By)
	assert.Equal(t, got.DrainedAt, m.DrainedAt)
	assert.Contains(t, errOut, `"message":"drain: domain destroyed"`, "each destroy is logged")

	// A second run says the host was already drained.
	code, out, _ = runDrain(t, hv, "--state-dir", dir, "--host", "n1")
	assert.Equal(t, exitOK, code)
	assert.Contains(t, out, "host n1: already drained locally since")
	assert.Contains(t, out, "0 of 2 domains active")
}

func TestDrainConfirmPartialFailure(t *testing.T) {
	dir := t.TempDir()
	hv := twoVMs()
	hv.failOn = du1
	code, out, errOut := runDrain(t, hv, "--confirm", "--state-dir", dir, "--host", "n1")
	assert.Equal(t, exitFailure, code)
	assert.Regexp(t, `failed\s+web\s+`+du1+`  \(running\): destroy `+du1+`: unknown: qemu stuck in D state`, out)
	assert.Contains(t, out, "1 domains active after the drain")
	assert.NotContains(t, out, "stays drained (the agent starts nothing)")
	assert.Contains(t, errOut, "drain: web ("+du1+")")
	m, err := agent.ReadMarker(dir)
	require.NoError(t, err)
	assert.NotNil(t, m, "the marker stays: run the drain again")
}

func TestDrainRefusals(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"relative state dir", []string{"--state-dir", "state"}, exitUsage, `--state-dir "state": want an absolute path`},
		{"bad output", []string{"--state-dir", "/x", "-o", "yaml"}, exitUsage, `--output "yaml"`},
		{"bad timeout", []string{"--state-dir", "/x", "--timeout", "0s"}, exitUsage, "--timeout 0s"},
		{"stray argument", []string{"now"}, exitUsage, `unknown command "now"`},
		{"state dir under a file", []string{"--state-dir", filepath.Join(file, "sub")}, exitFailure, "is not a directory"},
		{"confirm, state dir under a file", []string{"--confirm", "--state-dir", filepath.Join(file, "sub")}, exitFailure, "nothing stopped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hv := twoVMs()
			code, _, errOut := runDrain(t, hv, tc.args...)
			assert.Equal(t, tc.code, code)
			assert.Contains(t, errOut, tc.msg)
			assert.Empty(t, hv.destroyed)
		})
	}
}
