package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/fencer"
)

const isolationConfig = `cluster: {name: t}
detection: {heartbeat_interval: 1s, missed_heartbeats: 3}
policies:
  - name: p
    levels: [agent-drain, ipmi]
    on_isolation: reboot
    isolation_grace: 45s
racks:
  - {name: r1, policy: p}
hosts:
  - name: n1
    rack: r1
    address: 10.0.0.1
    bmcs:
      - {type: ipmi, address: 10.1.0.1, username: a, password_env: P1}
  - name: n2
    rack: r1
    address: 10.0.0.2
    override: {on_isolation: alert}
    bmcs:
      - {type: ipmi, address: 10.1.0.2, username: a, password_env: P1}
`

func TestIsolationPolicyReachesDetectorAndFencer(t *testing.T) {
	cfg, err := configs.Parse("i.yaml", []byte(isolationConfig), func(string) (string, bool) { return "", false })
	require.NoError(t, err)
	ec := engineConfig(cfg)
	require.Len(t, ec.Hosts, 2)
	assert.Equal(t, detector.IsolationPolicy{Action: detector.IsolationReboot, Grace: 45 * time.Second}, ec.Hosts[0].Isolation)
	assert.Equal(t, detector.IsolationAlert, ec.Hosts[1].Isolation.Action)
	assert.Equal(t, 15*time.Second, ec.Monitor.StartGrace, "three beats at an unanswered agent's 5 s pace")
	assert.Equal(t, 30*time.Second, ec.Monitor.MaxClockSkew, "detection.heartbeat_max_clock_skew reaches the detector")

	setup, err := fenceSetup(cfg, "n1", zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, detector.IsolationPolicy{Action: detector.IsolationReboot, Grace: 45 * time.Second}, setup.Isolation)
	assert.Equal(t, fencer.ActionOff, setup.Plan.Action, "a host-down fence keeps the policy's action")
	require.Len(t, setup.Plan.Levels, 2)
}

func TestDaemonReloadToEnforceLogsAndReexamines(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	d := startDaemon(t, file, c)
	stop := beater(t, c.Base, "h1", "h2", "h3")
	defer stop()

	observe, err := os.ReadFile(file)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(file, []byte(strings.Replace(string(observe), "mode: observe", "mode: enforce", 1)), 0o644))
	d.hup <- os.Interrupt
	require.Eventually(t, func() bool { return strings.Contains(d.log.String(), "configuration reloaded") }, 5*time.Second, 20*time.Millisecond, d.log.String())
	log := d.log.String()
	assert.Contains(t, log, "config reload: mode observe → enforce")
	assert.Contains(t, log, "mode is now enforce: re-examining every host whose verdict acts")
	assert.Less(t, strings.Index(log, "config reload: mode"), strings.Index(log, "mode is now enforce"), "the mode change is logged first")

	// A reload that keeps the mode says nothing about it.
	d.hup <- os.Interrupt
	require.Eventually(t, func() bool { return strings.Count(d.log.String(), "configuration reloaded") == 2 }, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, 1, strings.Count(d.log.String(), "config reload: mode"))
}
