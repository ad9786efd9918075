package heartbeatbench

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Subnet holds every simulated host's address.
const Subnet = "10.200.0.0/16"

// MaxHosts is how many distinct addresses 10.200.0.0/16 offers.
const MaxHosts = 65534

// HostsPerRack groups hosts into racks, so no random stopped sample can
// empty a rack and trip the per-rack storm guard.
const HostsPerRack = 100

// Spec is the daemon configuration the bench runs.
type Spec struct {
	Hosts             int
	Listen            string // host:port of the API
	HeartbeatInterval time.Duration
	MissedHeartbeats  int
	ProbeTimeout      time.Duration
}

// Files is a written configuration.
type Files struct {
	Dir      string
	Config   string // path of the YAML file
	StateDir string
	// AgentSecret (the cluster secret every simulated host's credential
	// derives from) and APIToken are written to their files (mode 0600),
	// for the generator and the history client.
	AgentSecret, APIToken string
	Hosts                 []string // host names, in config order
}

// HostName and HostAddr name host i (0-based) of a bench config.
func HostName(i int) string { return fmt.Sprintf("h%05d", i) }

// HostAddr is host i's management address: 10.200.0.1, 10.200.0.2, …
// Nothing routes there inside the bench's namespace, so probes fail at once.
func HostAddr(i int) string {
	n := i + 1
	return fmt.Sprintf("10.200.%d.%d", n>>8, n&0xff)
}

// WriteConfig writes chime-fence.yaml, the cluster secret and the API token into dir.
// Hosts need no BMC: every rack uses an agent-drain-only policy, and fence
// readiness checks run hourly so they do not dominate the measurement.
func WriteConfig(dir string, s Spec) (Files, error) {
	if s.Hosts < 1 || s.Hosts > MaxHosts {
		return Files{}, fmt.Errorf("hosts: %d is not in 1…%d (one address each in 10.200.0.0/16)", s.Hosts, MaxHosts)
	}
	if s.HeartbeatInterval <= 0 || s.MissedHeartbeats < 1 || s.ProbeTimeout <= 0 {
		return Files{}, fmt.Errorf("heartbeat interval %v, missed heartbeats %d and probe timeout %v must all be positive",
			s.HeartbeatInterval, s.MissedHeartbeats, s.ProbeTimeout)
	}
	if s.Listen == "" {
		return Files{}, fmt.Errorf("listen address is empty")
	}
	f := Files{Dir: dir, Config: filepath.Join(dir, "chime-fence.yaml"), StateDir: filepath.Join(dir, "state")}
	var err error
	if f.AgentSecret, err = writeToken(filepath.Join(dir, "agent-secret")); err != nil {
		return Files{}, err
	}
	if f.APIToken, err = writeToken(filepath.Join(dir, "api-token")); err != nil {
		return Files{}, err
	}

	var b strings.Builder
	fmt.Fprintf(&b, `# written by chime-heartbeat-bench
cluster:
  name: heartbeat-bench
controller:
  listen: %s
  state_dir: %s
  api_token_file: api-token
  agent_secret_file: agent-secret
mode: observe
detection:
  heartbeat_interval: %v
  missed_heartbeats: %d
  probe_timeout: %v
  recovery_heartbeats: 3
defaults:
  fence_readiness_interval: 1h
policies:
  - name: drain
    levels: [agent-drain]
racks:
`, s.Listen, f.StateDir, s.HeartbeatInterval, s.MissedHeartbeats, s.ProbeTimeout)
	racks := (s.Hosts + HostsPerRack - 1) / HostsPerRack
	for r := range racks {
		fmt.Fprintf(&b, "  - {name: %s, policy: drain}\n", rackName(r))
	}
	b.WriteString("hosts:\n")
	f.Hosts = make([]string, s.Hosts)
	for i := range s.Hosts {
		f.Hosts[i] = HostName(i)
		fmt.Fprintf(&b, "  - {name: %s, rack: %s, address: %s}\n", f.Hosts[i], rackName(i/HostsPerRack), HostAddr(i))
	}
	if err := os.WriteFile(f.Config, []byte(b.String()), 0o644); err != nil {
		return Files{}, fmt.Errorf("write config: %w", err)
	}
	return f, nil
}

func rackName(r int) string { return fmt.Sprintf("r%03d", r) }

func writeToken(path string) (string, error) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	tok := hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write token file: %w", err)
	}
	return tok, nil
}
