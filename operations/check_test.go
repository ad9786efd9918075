package operations

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/node"
)

var (
	admins   = []node.AdminState{node.Enabled, node.Disabled, node.Drained}
	monitors = []node.MonitorState{node.Normal, node.Suspect, node.Unreachable, node.Error, node.Unknown}
)

func reqFor(op Op) Request {
	r := Request{Host: "h1", Op: op, Actor: "alice"}
	if op == OpConfirmDown {
		r.Reason = "PDU switched off by hand"
	}
	return r
}

func forced(r Request) Request {
	r.Force, r.Reason = true, "I pulled its power cords myself"
	return r
}

// expected is the rule table written out per op, independently of Check's
// control flow: it returns "" when the op may start.
func expected(op Op, a node.AdminState, m node.MonitorState, locked, proven bool, running int, storm, bmcOn, observe, force bool) string {
	beating := m == node.Normal || m == node.Error
	if force && op != OpFence && op != OpConfirmDown {
		return "force is only for fence and confirm-down"
	}
	if locked {
		return "locked"
	}
	allowed := map[Op]func() string{
		OpEnable: func() string { return map[bool]string{true: "", false: "already enabled"}[a != node.Enabled] },
		OpDisable: func() string {
			return map[bool]string{true: "", false: "only an enabled host can be disabled"}[a == node.Enabled]
		},
		OpDrain: func() string {
			switch {
			case a == node.Drained:
				return "already drained"
			case m == node.Unreachable:
				return "use fence or confirm-down"
			}
			return ""
		},
		OpRebuild: func() string {
			switch {
			case a != node.Drained:
				return "only on a drained host"
			case !beating && !proven:
				return "fence or confirm-down first"
			case beating && running > 0:
				return "running domain"
			}
			return ""
		},
		OpMigrate: func() string {
			switch {
			case a == node.Drained:
				return "only an enabled or disabled host"
			case !beating:
				return "needs a heartbeating host"
			}
			return ""
		},
		OpFence: func() string {
			switch {
			case force:
				return ""
			case storm:
				return "storm guard"
			case observe:
				return "observe mode"
			}
			return ""
		},
		OpConfirmDown: func() string {
			switch {
			case m != node.Unreachable:
				return "only for an unreachable host" // even forced: the daemon hears it
			case force:
				return ""
			case bmcOn:
				return "BMC read power on"
			case storm:
				return "storm guard"
			}
			return ""
		},
	}
	return allowed[op]()
}

func TestCheckEveryCombination(t *testing.T) {
	n := 0
	for _, op := range Ops {
		for _, a := range admins {
			for _, m := range monitors {
				for _, locked := range []bool{false, true} {
					for _, proven := range []bool{false, true} {
						for _, running := range []int{0, 2} {
							for _, storm := range []bool{false, true} {
								for _, ext := range [][3]bool{{}, {true, false, false}, {false, true, false}, {false, false, true}, {true, true, true}} {
									bmcOn, observe, force := ext[0], ext[1], ext[2]
									v := HostView{Name: "h1", Known: true, Admin: a, Monitor: m, FenceProven: proven, Running: running,
										StormPaused: storm, Observe: observe}
									if bmcOn {
										v.BMCOnAt = time.Date(2026, 3, 1, 11, 59, 0, 0, time.UTC)
									}
									if locked {
										v.Lock = &Holder{TaskID: "op-7", Op: OpMigrate, Owner: "bob", Since: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
									}
									name := fmt.Sprintf("%s/%s/%s/locked=%v/proven=%v/running=%d/storm=%v/bmcOn=%v/observe=%v/force=%v",
										op, a, m, locked, proven, running, storm, bmcOn, observe, force)
									want := expected(op, a, m, locked, proven, running, storm, bmcOn, observe, force)
									req := reqFor(op)
									if force {
										req = forced(req)
									}
									err := Check(req, v)
									n++
									if want == "" {
										assert.NoError(t, err, name)
										continue
									}
									if strings.HasPrefix(want, "force is only") {
										require.ErrorIs(t, err, ErrInvalid, name)
										assert.Contains(t, err.Error(), want, name)
										continue
									}
									if assert.ErrorIs(t, err, ErrConflict, name) {
										assert.Contains(t, err.Error(), want, name)
										assert.Contains(t, err.Error(), string(op)+" h1 refused", name)
									}
								}
							}
						}
					}
				}
			}
		}
	}
	assert.Equal(t, 7*3*5*2*2*2*2*5, n)
}

func TestCheckLockNamesTheRunningTask(t *testing.T) {
	v := HostView{Known: true, Monitor: node.Normal,
		Lock: &Holder{TaskID: "op-20260301T120000Z-0a0b0c0d", Op: OpDrain, Owner: "bob", Since: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}}
	err := Check(reqFor(OpDisable), v)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "task op-20260301T120000Z-0a0b0c0d (drain by bob)")
	assert.Contains(t, err.Error(), "never queued")

	v.Lock = &Holder{Owner: "recovery", Since: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	err = Check(reqFor(OpFence), v)
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "locked by recovery running since 2026-03-01T12:00:00Z")
}

func TestCheckUnknownHostIsNotFound(t *testing.T) {
	err := Check(reqFor(OpEnable), HostView{Name: "ghost"})
	require.ErrorIs(t, err, ErrNotFound)
	assert.False(t, errors.Is(err, ErrConflict))
	assert.Contains(t, err.Error(), `host "h1" is not in the daemon's configuration`)
}

func TestCheckTarget(t *testing.T) {
	src := HostView{Known: true, Admin: node.Enabled, Monitor: node.Normal}
	good := HostView{Known: true, Admin: node.Enabled, Monitor: node.Normal}
	drainedSrc := HostView{Known: true, Admin: node.Drained, Monitor: node.Unreachable, FenceProven: true}
	for name, tc := range map[string]struct {
		op     Op
		src    HostView
		target *HostView
		is     error
		want   string
	}{
		"migrate to good":       {OpMigrate, src, &good, nil, ""},
		"rebuild to good":       {OpRebuild, drainedSrc, &good, nil, ""},
		"unknown target":        {OpMigrate, src, &HostView{}, ErrInvalid, `target host "h2" is not in the daemon's configuration`},
		"no target view":        {OpMigrate, src, nil, ErrInvalid, `target host "h2" is not in the daemon's configuration`},
		"disabled target":       {OpMigrate, src, &HostView{Known: true, Admin: node.Disabled}, ErrConflict, "target h2 is disabled; VMs only land on an enabled host"},
		"drained target":        {OpRebuild, drainedSrc, &HostView{Known: true, Admin: node.Drained}, ErrConflict, "target h2 is drained"},
		"error target":          {OpMigrate, src, &HostView{Known: true, Monitor: node.Error}, ErrConflict, "target h2 is error; VMs only land on a normal"},
		"unreachable target":    {OpRebuild, drainedSrc, &HostView{Known: true, Monitor: node.Unreachable}, ErrConflict, "target h2 is unreachable"},
		"locked target":         {OpMigrate, src, &HostView{Known: true, Lock: &Holder{TaskID: "op-9", Op: OpDrain, Owner: "carol"}}, ErrConflict, "target h2 is locked by task op-9 (drain by carol)"},
		"source state wins":     {OpMigrate, HostView{Known: true, Admin: node.Drained}, &good, ErrConflict, "only an enabled or disabled host"},
		"rebuild not drained":   {OpRebuild, src, &good, ErrConflict, "rebuild runs only on a drained host"},
		"source unreachable":    {OpMigrate, HostView{Known: true, Monitor: node.Unreachable}, &good, ErrConflict, "needs a heartbeating host"},
		"target on wrong state": {OpRebuild, HostView{Known: true, Admin: node.Drained, Monitor: node.Suspect}, &good, ErrConflict, "fence or confirm-down first"},
	} {
		t.Run(name, func(t *testing.T) {
			req := reqFor(tc.op)
			req.Target = "h2"
			v := tc.src
			v.Target = tc.target
			err := Check(req, v)
			if tc.is == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.is)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestValidateNamesEachMistake(t *testing.T) {
	for name, tc := range map[string]struct {
		req  Request
		want []string
	}{
		"unknown op":       {Request{Host: "h1", Op: "reboot", Actor: "a"}, []string{`unknown operation "reboot"`, "confirm-down"}},
		"empty op":         {Request{Host: "h1", Actor: "a"}, []string{`unknown operation ""`}},
		"no host":          {Request{Op: OpDrain, Actor: "a"}, []string{"host is empty"}},
		"no actor":         {Request{Host: "h1", Op: OpDrain}, []string{"actor is empty"}},
		"target on drain":  {Request{Host: "h1", Op: OpDrain, Actor: "a", Target: "h2"}, []string{"target is only for migrate and rebuild, not drain"}},
		"self target":      {Request{Host: "h1", Op: OpMigrate, Actor: "a", Target: "h1"}, []string{"target h1 is the host itself"}},
		"local on rebuild": {Request{Host: "h1", Op: OpRebuild, Actor: "a", MigrateLocalDiskVMs: true}, []string{"migrate_local_disk_vms is only for migrate, not rebuild"}},
		"confirm no why":   {Request{Host: "h1", Op: OpConfirmDown, Actor: "a", Reason: "  "}, []string{"confirm-down needs a reason"}},
		"long reason":      {Request{Host: "h1", Op: OpDrain, Actor: "a", Reason: strings.Repeat("x", MaxReasonBytes+1)}, []string{"reason is 1025 bytes, at most 1024"}},
		"bad utf8":         {Request{Host: "h1", Op: OpDrain, Actor: "a", Reason: "\xff"}, []string{"reason is not valid UTF-8"}},
		"nul host":         {Request{Host: "h\x001", Op: OpDrain, Actor: "a"}, []string{"is not a host name"}},
		"several":          {Request{Host: "", Op: OpFence, Target: "h2", MigrateLocalDiskVMs: true}, []string{"host is empty", "actor is empty", "target is only for", "migrate_local_disk_vms is only for"}},
	} {
		t.Run(name, func(t *testing.T) {
			err := Validate(tc.req)
			require.ErrorIs(t, err, ErrInvalid)
			for _, w := range tc.want {
				assert.Contains(t, err.Error(), w)
			}
			// Check validates first, whatever the view says.
			require.ErrorIs(t, Check(tc.req, HostView{Known: true}), ErrInvalid)
		})
	}
	require.NoError(t, Validate(Request{Host: "h1", Op: OpMigrate, Actor: "a", Target: "h2", MigrateLocalDiskVMs: true, Reason: "maintenance"}))
}

func TestParseOp(t *testing.T) {
	for _, op := range Ops {
		got, err := ParseOp(string(op))
		require.NoError(t, err)
		assert.Equal(t, op, got)
	}
	_, err := ParseOp("Drain")
	require.ErrorIs(t, err, ErrInvalid)
}

// TestForceIsRecordedWithWhatItOverrode: a forced confirm-down of a host
// whose BMC read on during a storm lists both, and needs a reason.
func TestForceIsRecordedWithWhatItOverrode(t *testing.T) {
	v := HostView{Name: "h1", Known: true, Admin: node.Enabled, Monitor: node.Unreachable, StormPaused: true,
		BMCOnAt: time.Date(2026, 3, 1, 11, 59, 0, 0, time.UTC)}
	req := forced(reqFor(OpConfirmDown))
	require.NoError(t, Check(req, v))
	assert.Equal(t, []string{
		"the host's BMC read power on at 2026-03-01T11:59:00Z, during its current silence",
		"the storm guard is paused (the daemon may be the one cut off)",
	}, Overrides(req, v))
	req.Reason = " "
	err := Check(req, v)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "force needs a reason")
	assert.Empty(t, Overrides(reqFor(OpConfirmDown), HostView{Monitor: node.Unreachable}))
}
