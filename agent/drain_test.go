package agent

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	agentclient "github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/power"
)

// The rig's clock (Config.Now): drains happen at this time.
var rigNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestMarkerLifts(t *testing.T) {
	drained := rigNow
	m := Marker{DrainedAt: drained, By: "api"}
	known := Marker{DrainedAt: drained, By: "cli", AdminState: "enabled", AdminSince: drained.Add(time.Hour)} // host clock behind
	asg := func(st node.AdminState, since time.Time) heartbeat.Assignment {
		return heartbeat.Assignment{Host: "n1", AdminState: st, AdminSince: since}
	}
	for _, tc := range []struct {
		name string
		m    Marker
		a    heartbeat.Assignment
		lift bool
		why  string
	}{
		{"enabled after the drain", m, asg(node.Enabled, drained.Add(time.Second)), true, "after the local drain"},
		{"disabled after the drain", m, asg(node.Disabled, drained.Add(time.Second)), true, "the daemon set disabled"},
		{"drained after the drain", m, asg(node.Drained, drained.Add(time.Second)), false, "the daemon says drained"},
		{"enabled before the drain", m, asg(node.Enabled, drained.Add(-time.Second)), false, "not after the local drain"},
		{"enabled at the drain", m, asg(node.Enabled, drained), false, "not after the local drain"},
		{"daemon without admin_since", m, asg(node.Enabled, time.Time{}), false, "did not say when"},
		{"the state known at drain time", known, asg(node.Enabled, drained.Add(time.Hour)), false, "already knew when it drained"},
		{"newer than the state known", known, asg(node.Enabled, drained.Add(2*time.Hour)), true, "after the local drain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lift, why := MarkerLifts(tc.m, tc.a)
			assert.Equal(t, tc.lift, lift)
			assert.Contains(t, why, tc.why)
		})
	}
}

// markerHV checks, at every destroy, that the marker is already on disk.
type markerHV struct {
	*fakeHV
	t   *testing.T
	dir string
}

func (h markerHV) Destroy(ctx context.Context, uuid string) error {
	m, err := ReadMarker(h.dir)
	assert.NoError(h.t, err)
	assert.NotNil(h.t, m, "the marker is written before anything is stopped")
	return h.fakeHV.Destroy(ctx, uuid)
}

func TestDrainLocal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	paused := runningVM(u3)
	paused.State = hypervisor.StatePaused
	shut := crashedVM(u2)
	shut.Reason = "shutdown"
	fail := &hypervisor.Error{Kind: hypervisor.KindUnknown, Step: "destroy", Err: errors.New("qemu won't die")}
	u4 := "6f1c2a9e-0000-4000-8000-000000000004"
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1), shut, paused, runningVM(u4)}, destroyErr: map[string]error{u4: fail}}
	res, err := DrainLocal(context.Background(), markerHV{hv, t, dir}, DrainOptions{Host: "n1", StateDir: dir, By: "cli",
		Now: func() time.Time { return rigNow }, Admin: &AdminSeen{State: "enabled", Since: rigNow.Add(-time.Hour)}}, zerolog.Nop())
	require.Error(t, err)
	assert.Contains(t, err.Error(), "drain: vm-4 ("+u4+"): destroy: unknown: qemu won't die; 1 domains still active after the drain")
	assert.Equal(t, DrainResult{Host: "n1", Marker: filepath.Join(dir, MarkerFile), DrainedAt: rigNow, Running: 1, Domains: []DrainedDomain{
		{UUID: u1, Name: "vm-1", Before: hypervisor.StateRunning, Action: ActionDestroyed},
		{UUID: u2, Name: "vm-2", Before: hypervisor.StateShutoff, Action: ActionNotRunning},
		{UUID: u3, Name: "vm-3", Before: hypervisor.StatePaused, Action: ActionDestroyed},
		{UUID: u4, Name: "vm-4", Before: hypervisor.StateRunning, Action: ActionFailed, Error: fail.Error()},
	}}, res)
	m, err := ReadMarker(dir)
	require.NoError(t, err)
	assert.Equal(t, &Marker{DrainedAt: rigNow, By: "cli", AdminState: "enabled", AdminSince: rigNow.Add(-time.Hour)}, m)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())

	// Again, once qemu cooperates: everything stopped, no error.
	hv.set(func(f *fakeHV) { f.destroyErr = nil })
	res, err = DrainLocal(context.Background(), hv, DrainOptions{Host: "n1", StateDir: dir, By: "cli"}, zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, 0, res.Running)
}

func TestDrainStopsNothingWithoutAMarker(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-dir")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	for name, dir := range map[string]string{"no state dir": "", "state dir is a file": file} {
		t.Run(name, func(t *testing.T) {
			hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}, rec: &recorder{}}
			_, err := DrainLocal(context.Background(), hv, DrainOptions{Host: "n1", StateDir: dir}, zerolog.Nop())
			require.Error(t, err)
			assert.Contains(t, err.Error(), "nothing")
			assert.Empty(t, hv.rec.calls(), "no destroy")
			assert.Equal(t, hypervisor.StateRunning, hv.domains()[0].State)
		})
	}
}

func TestCheckStateDir(t *testing.T) {
	base := t.TempDir()
	assert.NoError(t, CheckStateDir(filepath.Join(base, "a", "b")), "missing, but the parent is writable")
	file := filepath.Join(base, "f")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	assert.ErrorContains(t, CheckStateDir(filepath.Join(file, "x")), "is not a directory")
	assert.ErrorContains(t, CheckStateDir("rel"), "not an absolute path")
}

// drainRig is an agent with a state directory and its API.
func drainRig(t *testing.T, hv *fakeHV, d *fakeDaemon, dir string) (*rig, *agentclient.Client) {
	t.Helper()
	r := newRig(t, hv, d, func(c *Config) { c.StateDir = dir })
	h, err := NewHandler(r.agent, testDaemonCred, testToken, zerolog.Nop())
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := agentclient.New(agentclient.Config{Host: "n1", URL: srv.URL, Credentials: testCreds})
	require.NoError(t, err)
	return r, c
}

// TestDrainMarkerOutlivesTheAgent: drained over the API, the host starts
// nothing, also in a new agent process after a reboot, while the daemon
// still says enabled (set before the drain); the daemon enabling the host
// after the drain lifts it.
func TestDrainMarkerOutlivesTheAgent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	asg := enabledWith(1, u1)
	asg.AdminSince = rigNow.Add(-time.Hour)
	d := &fakeDaemon{asg: asg}
	r1, c := drainRig(t, hv, d, dir)
	// The fake counts a fetch when it answers, a moment before the agent
	// holds the assignment (the marker then knew no admin state: flaked
	// under load). Wait until the agent says the daemon's state.
	require.Eventually(t, func() bool {
		st, err := c.Status(context.Background())
		return d.fetchCount() >= 1 && err == nil && st.AdminState == "enabled"
	}, wait, 5*time.Millisecond)

	res, err := c.Drain(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 0, res.Running)
	assert.Equal(t, []agentclient.DrainedDomain{{UUID: u1, Name: "vm-1", Before: hypervisor.StateRunning, Action: "destroyed"}}, res.Domains)
	st, err := c.Status(context.Background())
	require.NoError(t, err)
	assert.True(t, st.LocalDrain)
	assert.Equal(t, "drained", st.AdminState, "the daemon still says enabled; the host is drained")
	assert.Equal(t, rigNow, st.LocalDrainSince)
	assert.Zero(t, st.Running())
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		return len(hbs) > 0 && hbs[len(hbs)-1].LocalDrain != nil
	}, wait, 5*time.Millisecond, "heartbeats tell the daemon")
	assert.Equal(t, &heartbeat.LocalDrain{Since: rigNow, By: "api"}, d.heartbeats()[len(d.heartbeats())-1].LocalDrain)
	m, err := ReadMarker(dir)
	require.NoError(t, err)
	assert.Equal(t, "enabled", m.AdminState, "the admin state the agent knew is in the marker")
	assert.Equal(t, rigNow.Add(-time.Hour), m.AdminSince)
	r1.stop(t)

	// Reboot: the domain reads "shut off (unknown)", restartable.
	hv.set(func(f *fakeHV) { f.doms[0].Reason = "unknown" })
	r2 := newRig(t, hv, d, func(c *Config) { c.StateDir = dir })
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+10 && d.fetchCount() >= 2 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started(), "a new agent process keeps the host drained")
	assert.NotEmpty(t, r2.logs.lines(map[string]string{"component": "drain", "message": "local drain kept"}))

	// The operator enables the host after the drain.
	d.set(func(d *fakeDaemon) { d.asg.Revision, d.asg.AdminSince = 2, rigNow.Add(time.Minute) })
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
	m, err = ReadMarker(dir)
	require.NoError(t, err)
	assert.Nil(t, m, "marker removed")
	assert.Len(t, r2.logs.lines(map[string]string{"component": "drain", "message": "local drain lifted: domains may be started again"}), 1)
	st2, err := r2.agent.Status(context.Background())
	require.NoError(t, err)
	assert.False(t, st2.LocalDrain)
	assert.Equal(t, "enabled", st2.AdminState)
}

func TestUnreadableMarkerMeansDrained(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, MarkerFile), []byte("{torn"), 0o600))
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)}}
	asg := enabledWith(1, u1)
	asg.AdminSince = rigNow.Add(time.Hour) // would lift a readable marker
	d := &fakeDaemon{asg: asg}
	r := newRig(t, hv, d, func(c *Config) { c.StateDir = dir })
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 10 && d.fetchCount() >= 1 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started())
	st, err := r.agent.Status(context.Background())
	require.NoError(t, err)
	assert.True(t, st.LocalDrain)
	assert.Equal(t, "drained", st.AdminState)
	assert.NotNil(t, d.heartbeats()[0].LocalDrain)
	_, err = os.Stat(filepath.Join(dir, MarkerFile))
	assert.NoError(t, err, "left for an operator to look at")
}

// TestAgentRecordsAdminForTheCLI: the agent keeps the admin state it
// fetched in the state directory; a CLI drain records it in the marker.
func TestAgentRecordsAdminForTheCLI(t *testing.T) {
	dir := t.TempDir()
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	asg := enabledWith(1, u1)
	asg.AdminSince = rigNow.Add(-time.Minute)
	d := &fakeDaemon{asg: asg}
	newRig(t, hv, d, func(c *Config) { c.StateDir = dir })
	require.Eventually(t, func() bool { return readAdminSeen(dir).State == "enabled" }, wait, 5*time.Millisecond)
	assert.Equal(t, rigNow.Add(-time.Minute), readAdminSeen(dir).Since)

	_, err := DrainLocal(context.Background(), hv, DrainOptions{Host: "n1", StateDir: dir, By: "cli", Now: func() time.Time { return rigNow }}, zerolog.Nop())
	require.NoError(t, err)
	m, err := ReadMarker(dir)
	require.NoError(t, err)
	assert.Equal(t, Marker{DrainedAt: rigNow, By: "cli", AdminState: "enabled", AdminSince: rigNow.Add(-time.Minute)}, *m)
}

func TestDrainOverTheAPIRefusedWithoutStateDir(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	_, url, _ := apiRig(t, hv)
	c, err := agentclient.New(agentclient.Config{Host: "n1", URL: url, Credentials: testCreds})
	require.NoError(t, err)
	_, err = c.Drain(context.Background())
	require.ErrorIs(t, err, power.ErrRefused)
	assert.Contains(t, err.Error(), "no state directory")
	assert.Equal(t, hypervisor.StateRunning, hv.domains()[0].State)

	bad, err := agentclient.New(agentclient.Config{Host: "n1", URL: url, Credentials: []agentclient.Credential{{Daemon: "nope", Agent: testToken}}})
	require.NoError(t, err)
	_, err = bad.Drain(context.Background())
	require.ErrorIs(t, err, power.ErrAuth)
}
