package main

import (
	"context"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/detector"
)

// A refused heartbeat reaches the webhooks as heartbeat.refused: critical
// when stale (a replay or a forged beat), a warning when the clock is off.
func TestRefusedHeartbeatAlerts(t *testing.T) {
	var got []alert.Event
	a := detectorAlerts{cluster: "c", send: func(ev alert.Event) error { got = append(got, ev); return nil }, log: zerolog.Nop()}
	a.Alert(context.Background(), detector.Alert{Host: "h1", Kind: detector.AlertHeartbeatStale, Summary: "stale"})
	a.Alert(context.Background(), detector.Alert{Host: "h1", Kind: detector.AlertHeartbeatSkewed, Summary: "skewed"})
	a.Alert(context.Background(), detector.Alert{Host: "h1", Kind: detector.AlertHeartbeatReplayed, Summary: "replayed"})
	require.Len(t, got, 3)
	assert.Equal(t, alert.HeartbeatRefused, got[2].Type)
	assert.Equal(t, "warning", got[2].Severity)
	assert.Equal(t, alert.HeartbeatRefused, got[0].Type)
	assert.Equal(t, "critical", got[0].Severity)
	assert.Equal(t, alert.HeartbeatRefused, got[1].Type)
	assert.Equal(t, "warning", got[1].Severity)
	assert.Equal(t, detector.AlertHeartbeatSkewed, got[1].Details["verdict"])
	require.NoError(t, alert.CheckPattern("heartbeat.*"))
}
