package node

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAdminStateRoundTrip(t *testing.T) {
	for _, s := range []AdminState{Enabled, Disabled, Drained} {
		b, err := json.Marshal(s)
		require.NoError(t, err)
		var back AdminState
		require.NoError(t, json.Unmarshal(b, &back))
		assert.Equal(t, s, back)
	}
	assert.Equal(t, Enabled, AdminState(0), "the zero value is enabled")
	assert.True(t, Enabled.MayStartDomains())
	assert.True(t, Disabled.MayStartDomains())
	assert.False(t, Drained.MayStartDomains(), "a drained host starts nothing")
	var s AdminState
	assert.ErrorContains(t, json.Unmarshal([]byte(`"asleep"`), &s), `unknown admin state "asleep" (want one of enabled, disabled, drained)`)
	_, err := json.Marshal(AdminState(9))
	assert.Error(t, err)
}

func TestMonitorStateRoundTrip(t *testing.T) {
	for _, s := range []MonitorState{Normal, Suspect, Unreachable, Error, Unknown} {
		p, err := ParseMonitorState(s.String())
		require.NoError(t, err)
		assert.Equal(t, s, p)
	}
	_, err := ParseMonitorState("dead")
	assert.ErrorContains(t, err, "unknown monitor state")
	assert.Equal(t, "MonitorState(9)", MonitorState(9).String())
}
