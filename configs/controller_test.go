package configs

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAPITokensAndTLSLoad(t *testing.T) {
	y := minimal + `controller:
  api_token_file: /etc/chime/api.token
  agent_secret_file: agent.secret
  agent_previous_secret_file: /etc/chime/agent.secret.old
  api_tokens:
    - {name: alice, file: alice.token, role: operator}
    - {name: grafana, file: /etc/chime/ro.token, role: read-only}
  tls_cert_file: tls/cert.pem
  tls_key_file: /etc/chime/key.pem
`
	c, err := Parse("/etc/chime/chime-fence.yaml", []byte(y), noEnv)
	require.NoError(t, err)
	assert.Equal(t, []APIToken{
		{Name: "alice", File: "/etc/chime/alice.token", Role: RoleOperator},
		{Name: "grafana", File: "/etc/chime/ro.token", Role: RoleReadOnly},
	}, c.Controller.APITokens, "relative files are taken from the config's directory")
	assert.Equal(t, filepath.Join("/etc/chime", "tls/cert.pem"), c.Controller.TLSCertFile)
	assert.Equal(t, "/etc/chime/key.pem", c.Controller.TLSKeyFile)
	assert.Equal(t, `api token "alice"`, c.Controller.APITokens[0].Secret().What)
	assert.Equal(t, "/etc/chime/agent.secret", c.Controller.AgentSecretFile, "relative, from the config's directory")
	assert.Equal(t, "/etc/chime/agent.secret.old", c.Controller.AgentPreviousSecretFile)

	// Neither is required.
	c, err = Parse("/etc/chime/chime-fence.yaml", []byte(minimal), noEnv)
	require.NoError(t, err)
	assert.Empty(t, c.Controller.APITokens)
	assert.Empty(t, c.Controller.TLSCertFile)
}

func TestAPITokensMistakesAreNamed(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"controller:\n  api_tokens:\n    - {file: /a, role: operator}\n", "controller.api_tokens[0].name (line required"},
		{"controller:\n  api_tokens:\n    - {name: 'bad name', file: /a, role: operator}\n", `controller.api_tokens[0].name (line "bad name": use letters`},
		{"controller:\n  api_token_file: /x\n  api_tokens:\n    - {name: api, file: /a, role: operator}\n", `controller.api_tokens[0].name (line "api" is the name of controller.api_token_file's token`},
		{"controller:\n  api_tokens:\n    - {name: a, file: /a, role: operator}\n    - {name: a, file: /b, role: operator}\n", `controller.api_tokens[1].name (line duplicate token name "a"`},
		{"controller:\n  api_tokens:\n    - {name: a, role: operator}\n", "controller.api_tokens[0].file (line required"},
		{"controller:\n  api_tokens:\n    - {name: a, file: /a, role: operator}\n    - {name: b, file: /a, role: read-only}\n", `controller.api_tokens[1].file (line /a is also the file of token "a"`},
		{"controller:\n  agent_secret_file: /ag\n  api_tokens:\n    - {name: a, file: /ag, role: operator}\n", "controller.api_tokens[0].file (line /ag is a cluster secret's file"},
		{"controller:\n  agent_secret_file: /ag\n  agent_previous_secret_file: /old\n  api_tokens:\n    - {name: a, file: /old, role: operator}\n", "controller.api_tokens[0].file (line /old is a cluster secret's file"},
		{"controller:\n  agent_secret_file: /ag\n  agent_previous_secret_file: /ag\n", "controller.agent_previous_secret_file (line /ag is also controller.agent_secret_file"},
		{"controller:\n  agent_token_file: /ag\n", "controller.agent_token_file (line unknown key; the shared agent token is gone: put a cluster secret"},
		{"controller:\n  api_tokens:\n    - {name: a, file: /a}\n", "controller.api_tokens[0].role (line required: read-only or operator"},
		{"controller:\n  api_tokens:\n    - {name: a, file: /a, role: admin}\n", `controller.api_tokens[0].role (line "admin": must be read-only or operator`},
		{"controller:\n  api_tokens:\n    - {name: a, token: s3cret, role: operator}\n", "controller.api_tokens[0].token (line unknown key; tokens are never written in the config"},
		{"controller:\n  tls_cert_file: /c.pem\n", "controller.tls_key_file (line when controller.tls_cert_file is set"},
		{"controller:\n  tls_key_file: /k.pem\n", "controller.tls_cert_file (line when controller.tls_key_file is set"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := Parse("/etc/chime/t.yaml", []byte(minimal+tc.yaml), noEnv)
			require.Error(t, err)
			// want is "<key> (line" + the message: the key is named with its line.
			key, msg, _ := strings.Cut(tc.want, " (line")
			assert.Contains(t, err.Error(), key+" (line ")
			assert.Contains(t, err.Error(), strings.TrimSpace(msg))
			assert.NotContains(t, err.Error(), "s3cret")
		})
	}
}

func TestHeartbeatUDPListen(t *testing.T) {
	api := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7480}
	c, err := Parse("/etc/chime/c.yaml", []byte(minimal), noEnv)
	require.NoError(t, err)
	assert.Equal(t, "", c.Controller.HeartbeatUDPListen, "default: the API listener's address")
	addr, on := c.Controller.HeartbeatUDPAddr(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41234})
	assert.True(t, on)
	assert.Equal(t, "127.0.0.1:41234", addr, "the port the API actually bound")

	c, err = Parse("/etc/chime/c.yaml", []byte(minimal+"controller:\n  heartbeat_udp_listen: off\n"), noEnv)
	require.NoError(t, err)
	_, on = c.Controller.HeartbeatUDPAddr(api)
	assert.False(t, on)

	c, err = Parse("/etc/chime/c.yaml", []byte(minimal+"controller:\n  heartbeat_udp_listen: 0.0.0.0:7490\n"), noEnv)
	require.NoError(t, err)
	addr, on = c.Controller.HeartbeatUDPAddr(api)
	assert.True(t, on)
	assert.Equal(t, "0.0.0.0:7490", addr)

	env := func(k string) (string, bool) { return "off", k == "CHIME_FENCE_CONTROLLER_HEARTBEAT_UDP_LISTEN" }
	c, err = Parse("/etc/chime/c.yaml", []byte(minimal), env)
	require.NoError(t, err)
	assert.Equal(t, HeartbeatUDPOff, c.Controller.HeartbeatUDPListen, "the environment may turn it off")

	for _, tc := range []struct{ value, want string }{
		{"Off", `"Off" is not host:port (or "" for controller.listen's address, "off" for no UDP heartbeats)`},
		{"127.0.0.1", `"127.0.0.1" is not host:port`},
		{"'127.0.0.1:0'", `"127.0.0.1:0": port must be 1-65535`},
		{"'[::1]:70000'", `"[::1]:70000": port must be 1-65535`},
		{"'bad_host:7480'", `"bad_host" is not an IP address or host name`},
	} {
		t.Run(tc.value, func(t *testing.T) {
			_, err := Parse("/etc/chime/c.yaml", []byte(minimal+"controller:\n  heartbeat_udp_listen: "+tc.value+"\n"), noEnv)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "controller.heartbeat_udp_listen (line 15)")
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestTrustAgentDrain: off by default (an agent's drain alone does not start
// VMs elsewhere), on when a policy says so.
func TestTrustAgentDrain(t *testing.T) {
	c, err := Parse("/etc/chime/c.yaml", []byte(minimal), noEnv)
	require.NoError(t, err)
	h, _ := c.Host("n1")
	assert.False(t, h.Effective.TrustAgentDrain, "the default")
	y := strings.Replace(minimal, "    levels: [ipmi]\n", "    levels: [ipmi]\n    trust_agent_drain: true\n", 1)
	require.NotEqual(t, minimal, y)
	c, err = Parse("/etc/chime/c.yaml", []byte(y), noEnv)
	require.NoError(t, err)
	h, _ = c.Host("n1")
	assert.True(t, h.Effective.TrustAgentDrain)
	_, err = Parse("/etc/chime/c.yaml", []byte(strings.Replace(y, "trust_agent_drain: true", "trust_agent_drain: maybe", 1)), noEnv)
	assert.ErrorContains(t, err, "trust_agent_drain")
}
