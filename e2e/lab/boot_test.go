package lab

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLabStartFailsFastOnBrokenInit: a host whose init exits fails Start
// at once (not at its deadline), naming the host and the step and quoting
// the host's boot log; nothing is left behind, routes included.
func TestLabStartFailsFastOnBrokenInit(t *testing.T) {
	skipUnlessLab(t)
	// The deadline is far beyond the assertion: a wait for it would fail
	// the "before the deadline" check below, not pass slowly.
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := Config{Name: "chlabf", Dir: t.TempDir(), Hosts: 2,
		initPrelude: func(h Host) string {
			if h.Name != "host2" {
				return ""
			}
			return `echo "deliberately broken: no root filesystem" >&2; exit 3`
		}}
	t0 := time.Now()
	_, err := Start(ctx, cfg)
	took := time.Since(t0)
	require.Error(t, err)
	t.Logf("Start failed after %v:\n%v", took, err)
	var he *HostError
	require.True(t, errors.As(err, &he), "want a HostError, got %T", err)
	assert.Equal(t, "host2", he.Host)
	assert.Equal(t, "boot", he.Step)
	assert.Contains(t, err.Error(), "lab: host2: boot: the host's init (host-init.sh) exited with status 3")
	assert.Contains(t, err.Error(), "| deliberately broken: no root filesystem", "the boot log is quoted")
	assert.NoError(t, ctx.Err(), "Start returned because the init exited, not at its deadline")
	assert.Less(t, took, 30*time.Second, "a failed boot is reported within seconds")
	assert.Empty(t, Leftovers(cfg.Name, cfg.Dir))
}

func TestHostErrorText(t *testing.T) {
	e := &HostError{Host: "host1", Step: "libvirtd", Err: errors.New("not answering"), Logs: []LogTail{
		{Path: "/l/console.log", Lines: []string{"mount: /var/lib/libvirt: mount point does not exist.", "x"}},
		{Path: "/l/libvirtd.out"},
	}}
	assert.Equal(t, `lab: host1: libvirtd: not answering
  last lines of /l/console.log:
    | mount: /var/lib/libvirt: mount point does not exist.
    | x
  /l/libvirtd.out: (empty or missing)`, e.Error())
}

// TestLabStartFailsWhenLibvirtdDies: a host whose init runs but whose
// libvirtd exits fails Start a few seconds in (not at the deadline), at the
// libvirtd step, quoting libvirtd's output.
func TestLabStartFailsWhenLibvirtdDies(t *testing.T) {
	skipUnlessLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cfg := Config{Name: "chlabd", Dir: t.TempDir(), Hosts: 1,
		// A shell function shadows the program: init's `libvirtd --listen
		// ... &` runs it, and it exits at once.
		initPrelude: func(Host) string {
			return `libvirtd() { echo "libvirtd: deliberately dying" >&2; return 1; }`
		}}
	t0 := time.Now()
	_, err := Start(ctx, cfg)
	took := time.Since(t0)
	require.Error(t, err)
	t.Logf("Start failed after %v:\n%v", took, err)
	var he *HostError
	require.True(t, errors.As(err, &he), "want a HostError, got %T", err)
	assert.Equal(t, "host1", he.Host)
	assert.Equal(t, "libvirtd", he.Step)
	assert.Contains(t, err.Error(), "libvirtd exited")
	assert.Contains(t, err.Error(), "| libvirtd: deliberately dying", "libvirtd's output is quoted")
	assert.NoError(t, ctx.Err(), "Start returned because libvirtd died, not at its deadline")
	assert.Empty(t, Leftovers(cfg.Name, cfg.Dir))
}
