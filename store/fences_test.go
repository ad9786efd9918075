package store

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestFenceRecordsRoundTripAndSurviveReopen(t *testing.T) {
	s, path := openTemp(t, Options{})
	in := FenceRecord{Host: "h1", CorrelationID: "host-1", State: FenceInFlight, Action: "off", Started: t0}
	require.NoError(t, s.PutFence(in))
	in.State, in.Level, in.Finished = FenceVerified, "ipmi", t0.Add(1500)
	in.Attempts = json.RawMessage(`[{"level":"ipmi","try":1}]`)
	require.NoError(t, s.PutFence(in), "a later record replaces the earlier one")
	require.NoError(t, s.PutFence(FenceRecord{Host: "h2", State: FenceFailed, Started: t0, Reason: "ipmi: auth"}))
	require.NoError(t, s.Close())

	s, err := Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()
	got, err := s.Fences()
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, FenceVerified, got["h1"].State)
	assert.Equal(t, "ipmi", got["h1"].Level)
	assert.JSONEq(t, `[{"level":"ipmi","try":1}]`, string(got["h1"].Attempts))
	assert.True(t, got["h1"].Proven())
	assert.False(t, got["h2"].Proven())
	assert.Equal(t, "ipmi: auth", got["h2"].Reason)
}

func TestPutFenceRefusesBadInput(t *testing.T) {
	s, _ := openTemp(t, Options{})
	for name, r := range map[string]FenceRecord{
		"no host":    {State: FenceVerified, Started: t0},
		"bad state":  {Host: "h", State: "done", Started: t0},
		"no started": {Host: "h", State: FenceFailed},
	} {
		err := s.PutFence(r)
		require.ErrorIs(t, err, ErrInvalid, name)
	}
	got, err := s.Fences()
	require.NoError(t, err)
	assert.Empty(t, got, "nothing half-written")
}
