package power

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStateRoundTrip(t *testing.T) {
	for _, s := range []State{Unknown, On, Off, PoweringOn, PoweringOff} {
		b, err := s.MarshalText()
		require.NoError(t, err)
		var got State
		require.NoError(t, got.UnmarshalText(b))
		assert.Equal(t, s, got)
	}
	var s State
	assert.Error(t, s.UnmarshalText([]byte("of")))
	assert.Equal(t, "State(9)", State(9).String())
}

func TestOnlyOffIsOff(t *testing.T) {
	for _, s := range []State{Unknown, On, PoweringOn, PoweringOff} {
		assert.False(t, s.IsOff(), s.String())
	}
	assert.True(t, Off.IsOff())
}

func TestErrorMatchesSentinelByKind(t *testing.T) {
	err := fmt.Errorf("fence level ipmi: %w", Errorf(KindAuth, "node1", "ipmi: open session", "bad user or password"))
	assert.ErrorIs(t, err, ErrAuth)
	assert.NotErrorIs(t, err, ErrUnreachable)
	assert.Equal(t, KindAuth, KindOf(err))
	assert.Equal(t, "fence level ipmi: host node1: ipmi: open session: bmc-auth-failed: bad user or password", err.Error())
	assert.Equal(t, KindUnknown, KindOf(errors.New("plain")))
}

func TestRetryable(t *testing.T) {
	assert.True(t, KindUnreachable.Retryable())
	assert.True(t, KindTimeout.Retryable())
	assert.False(t, KindAuth.Retryable())
	assert.False(t, KindRefused.Retryable())
	assert.False(t, KindConfig.Retryable())
}
