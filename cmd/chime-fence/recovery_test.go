package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/node"
)

func candHost(name string, admin node.AdminState, mon node.MonitorState) daemon.HostStatus {
	return daemon.HostStatus{HostStatus: detector.HostStatus{Name: name, Monitor: mon}, Admin: admin}
}

// fakeSampler answers SampleStale from a table, recording what it was asked.
type fakeSampler struct {
	res   map[string]evacuator.SampleResult
	asked []string
	fresh map[string]bool
}

func (f *fakeSampler) SampleStale(_ context.Context, hosts []string, _ time.Duration, fresh func(string) bool) map[string]evacuator.SampleResult {
	f.asked, f.fresh = hosts, map[string]bool{}
	out := map[string]evacuator.SampleResult{}
	for _, h := range hosts {
		f.fresh[h] = fresh(h)
		out[h] = f.res[h]
	}
	return out
}

// TestPlanCandidates: the plan samples every host that could take a VM,
// a host not judged yet is a target only when it answered now, and a
// capacity it cannot measure says why.
func TestPlanCandidates(t *testing.T) {
	load := evacuator.HostLoad{CPUs: 4, MemoryMiB: 8192, FreeMemoryMiB: 4096, Load: -1, UsedVCPUs: 1, UsedMemoryMiB: 512}
	st := daemon.Status{Hosts: []daemon.HostStatus{
		candHost("dead", node.Drained, node.Unreachable),
		candHost("normal", node.Enabled, node.Normal),
		candHost("unjudged", node.Enabled, node.Unknown),
		candHost("unjudged-mute", node.Enabled, node.Unknown),
		candHost("stale-known", node.Enabled, node.Unknown),
		candHost("disabled", node.Disabled, node.Normal),
		candHost("faulty", node.Enabled, node.Error),
		candHost("normal-mute", node.Enabled, node.Normal),
	}}
	s := &fakeSampler{res: map[string]evacuator.SampleResult{
		"normal":        {Load: load, OK: true},
		"unjudged":      {Load: load, OK: true, Sampled: true},
		"unjudged-mute": {Sampled: true, Err: errors.New("dial tcp: i/o timeout")},
		"stale-known":   {Load: load, OK: true}, // an old figure, not an answer now
		"normal-mute":   {Sampled: true, Err: errors.New("connection refused")},
	}}
	cs := planCandidates(context.Background(), st, "dead", s)
	assert.ElementsMatch(t, []string{"normal", "unjudged", "unjudged-mute", "stale-known", "normal-mute"}, s.asked,
		"only hosts that could take a VM are sampled")
	assert.True(t, s.fresh["unjudged"], "a host not judged yet must answer now")
	assert.False(t, s.fresh["normal"])
	by := map[string]evacuator.Candidate{}
	for _, c := range cs {
		by[c.Name] = c
	}
	require.Len(t, by, len(st.Hosts))
	assert.True(t, by["normal"].Eligible)
	assert.Equal(t, 4, by["normal"].CPUs)
	assert.Equal(t, -1.0, by["normal"].Load, "one sample: load unknown, still eligible")
	assert.True(t, by["unjudged"].Eligible, "not judged yet, but its libvirt answered at plan time")
	assert.Equal(t, 1, by["unjudged"].UsedVCPUs)
	for name, why := range map[string]string{
		"dead":          "is the failed host",
		"disabled":      "admin disabled",
		"faulty":        "monitor error",
		"unjudged-mute": "monitor unknown (not judged yet) and libvirt did not answer a sample at plan time",
		"stale-known":   "monitor unknown (not judged yet) and libvirt did not answer a sample at plan time",
		"normal-mute":   "capacity unknown: libvirt did not answer a sample at plan time: connection refused",
	} {
		assert.False(t, by[name].Eligible, name)
		assert.Equal(t, why, by[name].Why, name)
	}
}

// TestFenceSetupCarriesTrustAgentDrain: the policy key reaches the
// coordinator, false unless set.
func TestFenceSetupCarriesTrustAgentDrain(t *testing.T) {
	dir := t.TempDir()
	file := daemonConfig(t, dir, freePort(t))
	for _, trust := range []bool{false, true} {
		if trust {
			b, err := os.ReadFile(file)
			require.NoError(t, err)
			y := strings.Replace(string(b), "    levels: [agent-drain]\n", "    levels: [agent-drain]\n    trust_agent_drain: true\n", 1)
			require.NotEqual(t, string(b), y)
			require.NoError(t, os.WriteFile(file, []byte(y), 0o644))
		}
		cfg, err := configs.Load(file)
		require.NoError(t, err)
		s, err := fenceSetup(cfg, "h1", zerolog.Nop())
		require.NoError(t, err)
		assert.Equal(t, trust, s.TrustAgentDrain)
		require.Len(t, s.Plan.Levels, 1)
		assert.NoError(t, s.Plan.Levels[0].SetupErr, "the agent client is built from the cluster secret")
	}
}
