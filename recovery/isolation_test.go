package recovery

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

func TestIsolationPlan(t *testing.T) {
	drain := fencer.LevelPlan{Name: fencer.LevelAgentDrain, Timeout: time.Second}
	ipmi := fencer.LevelPlan{Name: "ipmi", Timeout: time.Second}
	redfish := fencer.LevelPlan{Name: "redfish", Timeout: time.Second}
	cases := []struct {
		name   string
		action fencer.Action
		levels []fencer.LevelPlan
		iso    detector.IsolationAction
		want   []string
		act    fencer.Action
		err    bool
	}{
		{"power levels kept in order", fencer.ActionOff, []fencer.LevelPlan{ipmi, redfish}, detector.IsolationFence, []string{"ipmi", "redfish"}, fencer.ActionOff, false},
		{"agent-drain dropped", fencer.ActionOff, []fencer.LevelPlan{drain, redfish}, detector.IsolationFence, []string{"redfish"}, fencer.ActionOff, false},
		{"reboot powers back on", fencer.ActionOff, []fencer.LevelPlan{ipmi}, detector.IsolationReboot, []string{"ipmi"}, fencer.ActionReboot, false},
		{"fence keeps the policy's reboot action", fencer.ActionReboot, []fencer.LevelPlan{ipmi}, detector.IsolationFence, []string{"ipmi"}, fencer.ActionReboot, false},
		{"agent-drain alone cannot", fencer.ActionOff, []fencer.LevelPlan{drain}, detector.IsolationFence, nil, fencer.ActionOff, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := fencer.Plan{Host: "a", Action: c.action, Levels: c.levels}
			out, err := IsolationPlan(in, c.iso)
			if c.err {
				require.ErrorIs(t, err, errNoPowerLevel)
				return
			}
			require.NoError(t, err)
			var names []string
			for _, l := range out.Levels {
				names = append(names, l.Name)
			}
			assert.Equal(t, c.want, names)
			assert.Equal(t, c.act, out.Action)
			assert.Equal(t, len(c.levels), len(in.Levels), "the input plan is not changed")
		})
	}
}

func TestStillActs(t *testing.T) {
	now := t0.Add(time.Minute)
	fence := detector.IsolationPolicy{Action: detector.IsolationFence, Grace: 30 * time.Second}
	st := func(v detector.Verdict, since time.Time) daemon.HostStatus {
		return daemon.HostStatus{HostStatus: detector.HostStatus{Name: "a", Verdict: v, VerdictReason: "evidence", IsolatedSince: since}}
	}
	paused := detector.StormStatus{Paused: true, Reason: "3 of 4 hosts silent"}
	cases := []struct {
		name  string
		st    daemon.HostStatus
		storm detector.StormStatus
		iso   detector.IsolationPolicy
		why   string // "" acts
	}{
		{"host down", st(detector.HostDown, time.Time{}), detector.StormStatus{}, detector.IsolationPolicy{}, ""},
		{"host down in a storm", st(detector.HostDown, time.Time{}), paused, detector.IsolationPolicy{}, "storm guard paused: 3 of 4"},
		{"isolated past the grace", st(detector.IsolatedOrHung, now.Add(-30*time.Second)), detector.StormStatus{}, fence, ""},
		{"isolated within the grace", st(detector.IsolatedOrHung, now.Add(-29*time.Second)), detector.StormStatus{}, fence, "not over yet"},
		{"isolated, policy alert", st(detector.IsolatedOrHung, now.Add(-time.Hour)), detector.StormStatus{}, detector.IsolationPolicy{Grace: time.Second}, "alert only"},
		{"isolated in a storm", st(detector.IsolatedOrHung, now.Add(-time.Hour)), paused, fence, "storm guard paused"},
		{"healthy again", st(detector.Healthy, time.Time{}), detector.StormStatus{}, fence, "verdict is now healthy (evidence)"},
		{"agent down", st(detector.AgentDown, time.Time{}), detector.StormStatus{}, fence, "verdict is now agent-down"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			why := stillActs(c.st, c.storm, c.iso, now)
			if c.why == "" {
				assert.Empty(t, why)
				return
			}
			assert.Contains(t, why, c.why)
		})
	}
}

// isolated makes host a isolated-or-hung since the given time.
func (r *rig) isolated(since time.Time) {
	r.cl.mu.Lock()
	defer r.cl.mu.Unlock()
	h := r.cl.hosts["a"]
	h.Verdict, h.VerdictReason, h.IsolatedSince = detector.IsolatedOrHung, "BMC reported power on", since
	r.cl.hosts["a"] = h
}

func (r *rig) isolatedIncident(t *testing.T) {
	t.Helper()
	retry, reason := r.c.incident(context.Background(), detector.DownEvent{Host: "a", Rack: "r1", CorrelationID: "a-1",
		Reason: "isolated or hung for 30s", Isolated: true})
	assert.True(t, retry.IsZero(), "not deferred: %s", reason)
}

func TestIsolationFenceRunsLikeHostDown(t *testing.T) {
	for _, c := range []struct {
		iso    detector.IsolationAction
		action fencer.Action
		note   string
	}{
		{detector.IsolationFence, fencer.ActionOff, ""},
		{detector.IsolationReboot, fencer.ActionReboot, "powered back on (stays drained)"},
	} {
		t.Run(c.iso.String(), func(t *testing.T) {
			r := newRig(t, true)
			r.iso = detector.IsolationPolicy{Action: c.iso, Grace: 30 * time.Second}
			r.levels = []fencer.LevelPlan{{Name: fencer.LevelAgentDrain, Timeout: time.Second}, {Name: "ipmi", Timeout: time.Second}}
			r.isolated(t0.Add(-30 * time.Second))
			r.isolatedIncident(t)

			require.Len(t, r.plans, 1)
			require.Len(t, r.plans[0].Levels, 1, "the power level only")
			assert.Equal(t, "ipmi", r.plans[0].Levels[0].Name)
			assert.Equal(t, c.action, r.plans[0].Action)
			f, err := r.st.Fences()
			require.NoError(t, err)
			assert.Equal(t, store.FenceVerified, f["a"].State)
			assert.Equal(t, c.action.String(), f["a"].Action)
			h, _ := r.cl.Host("a")
			assert.Equal(t, node.Drained, h.Admin)
			require.Len(t, r.ev.reqs, 1, "evacuated after the verified Off")
			assert.Equal(t, []string{"a:" + alert.FenceStarted, "a:" + alert.FenceSucceeded, "a:" + alert.EvacuationStarted, "a:" + alert.EvacuationFinished}, r.alerts)
			recs, err := r.st.History(store.Query{Host: "a", Kind: "fence"})
			require.NoError(t, err)
			require.Len(t, recs, 2)
			assert.Contains(t, recs[0].Reason, "because isolated or hung for 30s")
			assert.Equal(t, "verified", recs[1].To)
			assert.Contains(t, recs[1].Reason, c.note)
		})
	}
}

func TestIsolationFenceReChecked(t *testing.T) {
	t.Run("within the grace at fence time", func(t *testing.T) {
		r := newRig(t, true)
		r.iso = detector.IsolationPolicy{Action: detector.IsolationFence, Grace: 30 * time.Second}
		r.isolated(t0.Add(-10 * time.Second)) // the hold started over since the event
		r.isolatedIncident(t)
		assert.Empty(t, r.fences)
		recs, err := r.st.History(store.Query{Host: "a", Kind: "fence-skipped"})
		require.NoError(t, err)
		require.Len(t, recs, 1)
		assert.Contains(t, recs[0].Reason, "isolation fence no longer holds at fence time")
		assert.Contains(t, recs[0].Reason, "not over yet")
	})
	t.Run("policy reloaded to alert", func(t *testing.T) {
		r := newRig(t, true)
		r.isolated(t0.Add(-time.Hour))
		r.isolatedIncident(t)
		assert.Empty(t, r.fences)
	})
	t.Run("only agent-drain: fails, evacuates nothing", func(t *testing.T) {
		r := newRig(t, true)
		r.iso = detector.IsolationPolicy{Action: detector.IsolationReboot}
		r.levels = []fencer.LevelPlan{{Name: fencer.LevelAgentDrain, Timeout: time.Second}}
		r.isolated(t0)
		r.isolatedIncident(t)
		assert.Empty(t, r.fences, "no level ran")
		assert.Empty(t, r.ev.reqs)
		f, err := r.st.Fences()
		require.NoError(t, err)
		assert.Equal(t, store.FenceFailed, f["a"].State)
		assert.Contains(t, f["a"].Reason, "no ipmi or redfish level")
		assert.Equal(t, []string{"a:" + alert.FenceFailed}, r.alerts)
	})
	t.Run("a host down with an isolation policy keeps its agent-drain level", func(t *testing.T) {
		r := newRig(t, true)
		r.iso = detector.IsolationPolicy{Action: detector.IsolationReboot}
		r.levels = []fencer.LevelPlan{{Name: fencer.LevelAgentDrain, Timeout: time.Second}, {Name: "ipmi", Timeout: time.Second}}
		r.incident(t, "b")
		require.Len(t, r.plans, 1)
		assert.Len(t, r.plans[0].Levels, 2)
		assert.Equal(t, fencer.ActionOff, r.plans[0].Action)
	})
}
