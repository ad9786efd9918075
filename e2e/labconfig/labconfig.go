// Package labconfig writes a chime-fence configuration describing a running
// lab (package e2e/lab): one rack per BMC type, each host's management
// address, libvirt listener and BMCs, the lab's shared storage. Lab tests and
// `make demo` run chime-fence against it from the controller namespace.
//
// Racks and policies (level_timeout 5s each):
//
//	rack-ipmi     policy ipmi               levels [ipmi]
//	rack-redfish  policy redfish            levels [redfish]
//	rack-both     policy ipmi-then-redfish  levels [ipmi, redfish], level_retries 0
//
// A host goes to the rack of its lab.Host.BMCType(); a lab.BMCBoth host
// lists both BMCs under bmcs (IPMI first). Options.HostLevels replaces one
// host's fence levels (a host `override`; the rest of its rack's policy
// stays), e.g. [ipmi, agent-drain] on a lab.BMCBoth host so every level can
// fail while the Redfish BMC still reads power for the detector.
// Options.HostIsolation sets one host's on_isolation and isolation_grace the
// same way.
package labconfig

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/identity"
)

// Options adjust the generated config.
type Options struct {
	Mode string // observe (default) or enforce
	// PasswordFiles overrides the password file of every BMC of a host,
	// by host name, to test wrong credentials.
	PasswordFiles map[string]string
	// BMCPasswordFiles overrides one BMC's password file, by BMCKey(host,
	// type) ("host1/ipmi"); it wins over PasswordFiles. E.g. a wrong IPMI
	// password on a lab.BMCBoth host fails its first fence level only.
	BMCPasswordFiles map[string]string
	// HostLevels replaces a host's fence levels, by host name, in order
	// (LevelIPMI, LevelRedfish, LevelAgentDrain); the other fields of its
	// rack's policy stay. A power level needs the host to have that BMC.
	HostLevels map[string][]string
	// HostIsolation sets a host's on_isolation (alert, fence or reboot)
	// and isolation_grace in its override, by host name.
	HostIsolation map[string]Isolation
	// Extra is YAML appended verbatim (e.g. a detection block).
	Extra string
	// Detection, if set, is the detection block's body (indented lines).
	Detection string
	// Tokens writes a cluster secret and an API token (TokenFiles) and names them
	// in the controller block, as the daemon requires.
	Tokens bool
	// TokenDir is the directory TokenFiles is given; default the lab's
	// directory. (lab.Start wipes a reused lab directory, so tokens written
	// before the lab starts belong outside it.)
	TokenDir string
	// APITokens are further API tokens for controller.api_tokens, e.g. a
	// read-only one; their files must exist (WriteToken makes one).
	APITokens []APIToken
}

// Isolation is one host's on_isolation policy.
type Isolation struct {
	On    string // alert, fence or reboot
	Grace string // a duration, e.g. "2s"; "" keeps the policy's
}

// APIToken is one controller.api_tokens entry.
type APIToken struct {
	Name string
	File string
	Role string // RoleReadOnly or RoleOperator
}

// API token roles, as the config spells them.
const (
	RoleReadOnly = "read-only"
	RoleOperator = "operator"
)

// WriteToken writes a random token to file (0600) and returns it.
func WriteToken(file string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", err
	}
	return tok, os.WriteFile(file, []byte(tok+"\n"), 0o600)
}

// TokenFiles are where the cluster secret (every host's credentials derive
// from it: HostCredentials) and the API token of the lab in labDir live.
func TokenFiles(labDir string) (secret, api string) {
	d := filepath.Join(labDir, "tokens")
	return filepath.Join(d, "agent.secret"), filepath.Join(d, "api.token")
}

// WriteTokens creates a random cluster secret (32 bytes, hex) and API token
// in TokenFiles(labDir), keeping any that exist, so agents started before
// the config is written find theirs.
func WriteTokens(labDir string) error {
	secret, api := TokenFiles(labDir)
	if err := os.MkdirAll(filepath.Dir(secret), 0o700); err != nil {
		return err
	}
	for _, f := range []string{secret, api} {
		if _, err := os.Stat(f); err == nil {
			continue
		}
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if err := os.WriteFile(f, []byte(hex.EncodeToString(b[:])+"\n"), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// HostCredentials writes host's agent credential (chime-agent --token-file)
// and daemon→agent credential (--daemon-credential-file), derived from the
// lab's cluster secret as `chime-fence agent-credential` derives them, and
// returns their files. WriteTokens must have run.
func HostCredentials(labDir, host string) (agent, daemon string, err error) {
	secretFile, _ := TokenFiles(labDir)
	b, err := os.ReadFile(secretFile)
	if err != nil {
		return "", "", fmt.Errorf("cluster secret: %w", err)
	}
	secret := strings.TrimRight(string(b), "\r\n")
	d := filepath.Dir(secretFile)
	agent, daemon = filepath.Join(d, host+".agent"), filepath.Join(d, host+".daemon")
	for f, v := range map[string]string{agent: identity.AgentCredential(secret, host), daemon: identity.DaemonCredential(secret, host)} {
		if err := os.WriteFile(f, []byte(v+"\n"), 0o600); err != nil {
			return "", "", err
		}
	}
	return agent, daemon, nil
}

// Rack and policy names Write uses, by lab.Host.BMCType().
const (
	RackIPMI      = "rack-ipmi"
	RackRedfish   = "rack-redfish"
	RackBoth      = "rack-both"
	PolicyIPMI    = "ipmi"
	PolicyRedfish = "redfish"
	PolicyBoth    = "ipmi-then-redfish"
)

// Fence level names for Options.HostLevels, as the config spells them.
const (
	LevelIPMI       = "ipmi"
	LevelRedfish    = "redfish"
	LevelAgentDrain = "agent-drain"
)

// RackOf is the rack Write puts h in.
func RackOf(h lab.Host) string {
	switch h.BMCType() {
	case lab.BMCRedfish:
		return RackRedfish
	case lab.BMCBoth:
		return RackBoth
	}
	return RackIPMI
}

// BMCKey is the Options.BMCPasswordFiles key of host's BMC of type typ
// (lab.BMCIPMI or lab.BMCRedfish).
func BMCKey(host, typ string) string { return host + "/" + typ }

// checkOverrides reports override keys that name no host or BMC of l, so a
// typo cannot silently leave the right password in place.
func checkOverrides(hosts []lab.Host, o Options) error {
	known := map[string]bool{}
	byName := map[string]lab.Host{}
	for _, h := range hosts {
		byName[h.Name] = h
		known[h.Name] = true
		for _, b := range h.AllBMCs() {
			known[BMCKey(h.Name, b.Type)] = true
		}
	}
	var bad []string
	for k := range o.PasswordFiles {
		if strings.Contains(k, "/") || !known[k] {
			bad = append(bad, fmt.Sprintf("PasswordFiles[%q]: no such host", k))
		}
	}
	for k := range o.BMCPasswordFiles {
		if !strings.Contains(k, "/") || !known[k] {
			bad = append(bad, fmt.Sprintf("BMCPasswordFiles[%q]: no such BMC (want HOST/ipmi or HOST/redfish of a lab host)", k))
		}
	}
	for host, levels := range o.HostLevels {
		h, ok := byName[host]
		if !ok {
			bad = append(bad, fmt.Sprintf("HostLevels[%q]: no such host", host))
			continue
		}
		if len(levels) == 0 {
			bad = append(bad, fmt.Sprintf("HostLevels[%q]: empty (a host needs at least one fence level)", host))
		}
		seen := map[string]bool{}
		for i, l := range levels {
			switch {
			case l != LevelIPMI && l != LevelRedfish && l != LevelAgentDrain:
				bad = append(bad, fmt.Sprintf("HostLevels[%q][%d]: unknown level %q (want %s, %s or %s)", host, i, l, LevelIPMI, LevelRedfish, LevelAgentDrain))
			case seen[l]:
				bad = append(bad, fmt.Sprintf("HostLevels[%q][%d]: level %q listed twice", host, i, l))
			case l != LevelAgentDrain && !known[BMCKey(h.Name, l)]:
				bad = append(bad, fmt.Sprintf("HostLevels[%q][%d]: %s has no %s BMC", host, i, host, l))
			}
			seen[l] = true
		}
	}
	for host, iso := range o.HostIsolation {
		if _, ok := byName[host]; !ok {
			bad = append(bad, fmt.Sprintf("HostIsolation[%q]: no such host", host))
		}
		if strings.ContainsAny(iso.On+iso.Grace, "\n:{}") {
			bad = append(bad, fmt.Sprintf("HostIsolation[%q]: %q / %q is not a plain value", host, iso.On, iso.Grace))
		}
	}
	for i, t := range o.APITokens {
		switch {
		case t.Name == "" || strings.ContainsAny(t.Name, "\"\n"):
			bad = append(bad, fmt.Sprintf("APITokens[%d]: name %q is empty or has quotes or newlines", i, t.Name))
		case !filepath.IsAbs(t.File):
			bad = append(bad, fmt.Sprintf("APITokens[%d] (%s): file %q is not an absolute path", i, t.Name, t.File))
		case t.Role != RoleReadOnly && t.Role != RoleOperator:
			bad = append(bad, fmt.Sprintf("APITokens[%d] (%s): role %q (want %s or %s)", i, t.Name, t.Role, RoleReadOnly, RoleOperator))
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("labconfig: %s", strings.Join(bad, "; "))
	}
	return nil
}

// Write writes the config to path and returns it.
func Write(l *lab.Lab, path string, o Options) (string, error) {
	if o.Mode == "" {
		o.Mode = "observe"
	}
	if err := checkOverrides(l.Hosts(), o); err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by e2e/labconfig for lab %s.\n", l.Name())
	fmt.Fprintf(&b, "cluster:\n  name: %s\n", l.Name())
	fmt.Fprintf(&b, "controller:\n  listen: %s:7480\n  state_dir: %s\n", l.Controller().MgmtAddr, filepath.Join(l.Dir(), "chime-fence"))
	if o.Tokens {
		td := o.TokenDir
		if td == "" {
			td = l.Dir()
		}
		if err := WriteTokens(td); err != nil {
			return "", fmt.Errorf("labconfig: tokens: %w", err)
		}
		secret, api := TokenFiles(td)
		fmt.Fprintf(&b, "  agent_secret_file: %s\n  api_token_file: %s\n", secret, api)
	}
	if len(o.APITokens) > 0 {
		b.WriteString("  api_tokens:\n")
		for _, t := range o.APITokens {
			fmt.Fprintf(&b, "    - {name: %q, file: %q, role: %s}\n", t.Name, t.File, t.Role)
		}
	}
	if o.Detection != "" {
		fmt.Fprintf(&b, "detection:\n%s\n", strings.TrimRight(o.Detection, "\n"))
	}
	fmt.Fprintf(&b, "mode: %s\n", o.Mode)
	b.WriteString(`policies:
  - name: ipmi
    levels: [ipmi]
    level_timeout: 5s
  - name: redfish
    levels: [redfish]
    level_timeout: 5s
  - name: ipmi-then-redfish
    levels: [ipmi, redfish]
    level_timeout: 5s
    level_retries: 0
racks:
  - {name: rack-ipmi, policy: ipmi}
  - {name: rack-redfish, policy: redfish}
  - {name: rack-both, policy: ipmi-then-redfish}
`)
	fmt.Fprintf(&b, "storage:\n  shared_paths: [%s]\n", l.SharedDir())
	b.WriteString("hosts:\n")
	for _, h := range l.Hosts() {
		fmt.Fprintf(&b, "  - name: %s\n    rack: %s\n    address: %s\n", h.Name, RackOf(h), h.MgmtAddr)
		fmt.Fprintf(&b, "    libvirt: {address: \"%s:%d\", uri: \"qemu:///system\"}\n", h.MgmtAddr, lab.LibvirtPort)
		levels, hasLevels := o.HostLevels[h.Name]
		iso, hasIso := o.HostIsolation[h.Name]
		if hasLevels || hasIso {
			b.WriteString("    override:\n")
		}
		if hasLevels {
			fmt.Fprintf(&b, "      levels: [%s]\n", strings.Join(levels, ", "))
		}
		if hasIso {
			fmt.Fprintf(&b, "      on_isolation: %s\n", iso.On)
			if iso.Grace != "" {
				fmt.Fprintf(&b, "      isolation_grace: %s\n", iso.Grace)
			}
		}
		b.WriteString("    bmcs:\n")
		for _, bmc := range h.AllBMCs() {
			pw := bmc.PasswordFile
			if p, ok := o.PasswordFiles[h.Name]; ok {
				pw = p
			}
			if p, ok := o.BMCPasswordFiles[BMCKey(h.Name, bmc.Type)]; ok {
				pw = p
			}
			fmt.Fprintf(&b, "      - type: %s\n        address: %s\n        port: %d\n        username: %s\n        password_file: %s\n",
				bmc.Type, bmc.Addr, bmc.Port, bmc.User, pw)
			switch bmc.Type {
			case lab.BMCIPMI:
				b.WriteString("        cipher_suites: [3]   # ipmi_sim 2.0.33 has no suite 17\n")
			case lab.BMCRedfish:
				fmt.Fprintf(&b, "        ca_file: %s\n", bmc.CAFile)
				if bmc.SystemID != "" {
					fmt.Fprintf(&b, "        system_id: %q\n", bmc.SystemID)
				}
			}
		}
	}
	b.WriteString(o.Extra)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return "", fmt.Errorf("labconfig: %w", err)
	}
	return path, nil
}
