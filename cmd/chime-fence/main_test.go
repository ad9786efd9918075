package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

const example = "../../examples/chime-fence.yaml"

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("version")
	assert.Equal(t, exitOK, code)
	assert.Regexp(t, `^chime-fence (devel|v?\d)`, out)
}

func TestConfigValidate(t *testing.T) {
	code, out, errOut := runCLI("config", "validate", example)
	assert.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "valid (cluster dc1-kvm, 3 racks, 6 hosts, mode observe)")

	code, out, errOut = runCLI("config", "validate", "../../examples/broken/many-problems.yaml")
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, "6 problem(s)")
	assert.Contains(t, errOut, "detection.missed_heartbeats (line 11)")

	code, _, errOut = runCLI("config", "validate", "/nonexistent/chime.yaml")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "no such file")

	code, _, _ = runCLI("config", "validate")
	assert.Equal(t, exitUsage, code, "missing argument is a usage error")

	b, err := os.ReadFile(example)
	require.NoError(t, err)
	bad := filepath.Join(t.TempDir(), "chime-fence.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(strings.Replace(string(b), `"storm.*"`, `"storm_guard.*"`, 1)), 0o600))
	code, out, errOut = runCLI("config", "validate", bad)
	assert.Equal(t, exitUsage, code)
	assert.Empty(t, out)
	assert.Contains(t, errOut, `alerts.webhooks[0].events[2]: pattern "storm_guard.*" matches no event type (they are host.unreachable`)
}

// TestConfigFlagDefaultsToEnv: without -c, every command reads
// $CHIME_FENCE_CONFIG (chime-lab exec sets it), else the packaged path; an
// explicit -c wins.
func TestConfigFlagDefaultsToEnv(t *testing.T) {
	t.Setenv(envConfig, "")
	code, _, errOut := runCLI("config", "show", "--host", "r2-node2")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "/etc/chime-fence/chime-fence.yaml")

	t.Setenv(envConfig, example)
	code, out, errOut := runCLI("config", "show", "--host", "r2-node2")
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "r2-node2")
	for _, args := range [][]string{{"status"}, {"daemon"}, {"test-node", "x"}, {"history", "x"}, {"host", "enable", "x"}} {
		cmd, _, err := newRoot(io.Discard, io.Discard).Find(args)
		require.NoError(t, err, "%v", args)
		f := cmd.Flags().Lookup("config")
		require.NotNil(t, f, "%v has -c", args)
		assert.Equal(t, example, f.DefValue, "%v", args)
	}

	code, _, errOut = runCLI("config", "show", "-c", "/nonexistent/x.yaml")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "/nonexistent/x.yaml", "-c wins over the environment")
}

func TestConfigShowHostYAML(t *testing.T) {
	code, out, errOut := runCLI("config", "show", "-c", example, "--host", "r2-node2")
	require.Equal(t, exitOK, code, errOut)
	var v struct {
		Host struct {
			Name string `yaml:"name"`
		} `yaml:"host"`
		Effective struct {
			Name        string `yaml:"name"`
			OnIsolation string `yaml:"on_isolation"`
			Levels      []struct {
				Type    string `yaml:"type"`
				Timeout string `yaml:"timeout"`
			} `yaml:"levels"`
		} `yaml:"effective_policy"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(out), &v))
	assert.Equal(t, "r2-node2", v.Host.Name)
	assert.Equal(t, "drain-then-power", v.Effective.Name)
	assert.Equal(t, "fence", v.Effective.OnIsolation)
	require.Len(t, v.Effective.Levels, 2)
	assert.Equal(t, "20s", v.Effective.Levels[0].Timeout)
}

func TestConfigShowJSONUsesReadableDurations(t *testing.T) {
	code, out, errOut := runCLI("config", "show", "-c", example, "-o", "json")
	require.Equal(t, exitOK, code, errOut)
	var v map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	det := v["detection"].(map[string]any)
	assert.Equal(t, "5s", det["heartbeat_interval"])
	assert.Len(t, v["hosts"], 6)
}

func TestConfigShowErrors(t *testing.T) {
	code, _, errOut := runCLI("config", "show", "-c", example, "--host", "nope")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `no host "nope"`)
	code, _, errOut = runCLI("config", "show", "-c", example, "-o", "xml")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "must be yaml or json")
}
