package identity

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	secret = "identity-test-cluster-secret-0123456789abc"
	older  = "identity-test-OLDER-cluster-secret-98765432"
)

func TestCredentialsAreBoundToTheHostAndDirection(t *testing.T) {
	a1, a2 := AgentCredential(secret, "h1"), AgentCredential(secret, "h2")
	d1 := DaemonCredential(secret, "h1")
	assert.Len(t, a1, 64, "hex SHA-256")
	assert.Equal(t, a1, AgentCredential(secret, "h1"), "derived, not random: the daemon needs no per-host file")
	assert.NotEqual(t, a1, a2, "each host its own")
	assert.NotEqual(t, a1, d1, "an agent's credential is not the daemon's to it")
	assert.NotEqual(t, a1, AgentCredential(older, "h1"), "another secret, another credential")
	// The label ends in NUL: host "h" + "1…" cannot collide across labels.
	assert.NotEqual(t, AgentCredential(secret, "h1"), DaemonCredential(secret, "h1"))
}

func TestCheckSecret(t *testing.T) {
	assert.ErrorContains(t, CheckSecret("short"), "has 5 bytes; at least 32")
	assert.NoError(t, CheckSecret(secret))
	_, err := NewRing("short", "")
	assert.Error(t, err)
	_, err = NewRing(secret, "short")
	assert.ErrorContains(t, err, "previous secret")
	_, err = NewRing(secret, secret)
	assert.ErrorContains(t, err, "equals the current one")
}

// TestRingRotation: during a rotation the ring accepts credentials of both
// secrets and presents the current one's; with the previous secret removed
// the old credentials are refused.
func TestRingRotation(t *testing.T) {
	during, err := NewRing(secret, older)
	require.NoError(t, err)
	assert.True(t, during.CheckAgent("h1", AgentCredential(secret, "h1")))
	assert.True(t, during.CheckAgent("h1", AgentCredential(older, "h1")), "an agent not yet given its new credential")
	assert.False(t, during.CheckAgent("h2", AgentCredential(older, "h1")), "never another host's")
	assert.False(t, during.CheckAgent("h1", DaemonCredential(secret, "h1")), "never the daemon's credential")
	assert.Equal(t, DaemonCredential(secret, "h1"), during.DaemonCredential("h1"))
	assert.Equal(t, []string{AgentCredential(secret, "h1"), AgentCredential(older, "h1")}, during.AgentCredentials("h1"))

	after, err := NewRing(secret, "")
	require.NoError(t, err)
	assert.True(t, after.CheckAgent("h1", AgentCredential(secret, "h1")))
	assert.False(t, after.CheckAgent("h1", AgentCredential(older, "h1")), "the previous secret removed")
	assert.True(t, Ring{}.Zero())
}

func TestReplyMAC(t *testing.T) {
	cred := AgentCredential(secret, "h1")
	body := []byte(`{"host":"h1","running":0}` + "\n")
	mac := ReplyMAC(cred, "POST", "/v1/drain", "n1", body)
	require.NoError(t, VerifyReply(cred, "POST", "/v1/drain", "n1", body, mac))
	for name, err := range map[string]error{
		"another host's key": VerifyReply(AgentCredential(secret, "h2"), "POST", "/v1/drain", "n1", body, mac),
		"another nonce":      VerifyReply(cred, "POST", "/v1/drain", "n2", body, mac),
		"another path":       VerifyReply(cred, "GET", "/v1/status", "n1", body, mac),
		"another body":       VerifyReply(cred, "POST", "/v1/drain", "n1", []byte(`{"host":"h1","running":1}`+"\n"), mac),
		"no MAC":             VerifyReply(cred, "POST", "/v1/drain", "n1", body, ""),
	} {
		assert.ErrorIs(t, err, ErrReplyMAC, name)
	}
}
