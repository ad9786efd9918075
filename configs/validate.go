package configs

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ipmiCipherSuites are the IPMI 2.0 suites with authentication, integrity
// and confidentiality, the same list drivers/ipmi.IntegritySuites enforces
// (configs imports no driver): on a suite without integrity a forged
// "power off" reading could become a verified fence.
var ipmiCipherSuites = map[int]bool{3: true, 8: true, 12: true, 17: true}

type validator struct {
	root *yaml.Node
	ps   *problems
}

func (v validator) add(p string, format string, args ...any) {
	v.ps.add(p, lineOf(v.root, p), format, args...)
}

func validate(c *Config, root *yaml.Node, ps *problems) {
	v := validator{root: root, ps: ps}
	if c.Cluster.Name == "" {
		v.add("cluster.name", "required")
	} else if !nameRE.MatchString(c.Cluster.Name) {
		v.add("cluster.name", "%q: use letters, digits, '.', '_' and '-' (at most 63)", c.Cluster.Name)
	}
	v.hostPort("controller.listen", c.Controller.Listen)
	if u := c.Controller.HeartbeatUDPListen; u != "" && u != HeartbeatUDPOff {
		if _, _, err := net.SplitHostPort(u); err != nil {
			v.add("controller.heartbeat_udp_listen", "%q is not host:port (or \"\" for controller.listen's address, %q for no UDP heartbeats)", u, HeartbeatUDPOff)
		} else {
			v.hostPort("controller.heartbeat_udp_listen", u)
		}
	}
	if !filepath.IsAbs(c.Controller.StateDir) {
		v.add("controller.state_dir", "%q must be an absolute path", c.Controller.StateDir)
	}
	v.controller(c.Controller)
	switch c.Mode {
	case ModeObserve, ModeEnforce:
	default:
		v.add("mode", "%q: must be observe or enforce", c.Mode)
	}
	v.detection(c.Detection)
	v.spec("defaults", c.Defaults)

	policies := map[string]bool{}
	for i, p := range c.Policies {
		at := fmt.Sprintf("policies[%d]", i)
		v.name(at+".name", p.Name, policies, "policy")
		v.spec(at, p.PolicySpec)
	}
	racks := map[string]bool{}
	for i, r := range c.Racks {
		at := fmt.Sprintf("racks[%d]", i)
		v.name(at+".name", r.Name, racks, "rack")
		switch {
		case r.Policy == "":
			v.add(at+".policy", "required: name one of the policies")
		case !policies[r.Policy]:
			v.add(at+".policy", "no policy named %q%s", r.Policy, known(policies))
		}
		v.spec(at+".override", r.Override)
	}
	v.hosts(c, policies, racks)
	for i, p := range c.Storage.SharedPaths {
		if !filepath.IsAbs(p) {
			v.add(fmt.Sprintf("storage.shared_paths[%d]", i), "%q must be an absolute path", p)
		}
	}
	s := c.Scheduler
	if s.CPUOvercommit <= 0 {
		v.add("scheduler.cpu_overcommit", "must be greater than 0, got %v", s.CPUOvercommit)
	}
	if s.MemoryOvercommit <= 0 {
		v.add("scheduler.memory_overcommit", "must be greater than 0, got %v", s.MemoryOvercommit)
	}
	if s.ReservedCPUs < 0 {
		v.add("scheduler.reserved_cpus", "must not be negative")
	}
	if s.ReservedMemoryMiB < 0 {
		v.add("scheduler.reserved_memory_mib", "must not be negative")
	}
	if s.RebuildsPerTarget < 1 {
		v.add("scheduler.rebuilds_per_target", "must be at least 1, got %d", s.RebuildsPerTarget)
	}
	if s.StartTimeout <= 0 {
		v.add("scheduler.start_timeout", "must be positive")
	}
	if net.ParseIP(s.GraphicsListen) == nil {
		v.add("scheduler.graphics_listen", "%q is not an IP address", s.GraphicsListen)
	}
	if c.Storage.InventoryInterval <= 0 {
		v.add("storage.inventory_interval", "must be positive")
	}
	if d := c.Storage.InventoryDir; d != "" && d != "-" && !filepath.IsAbs(d) {
		v.add("storage.inventory_dir", "%q must be an absolute path (or \"-\" for no mirror)", d)
	}
	v.webhooks(c.Alerts.Webhooks)
}

func (v validator) controller(c Controller) {
	names := map[string]bool{}
	if c.APITokenFile != "" {
		names[APITokenName] = true
	}
	files := map[string]string{}
	for i, t := range c.APITokens {
		at := fmt.Sprintf("controller.api_tokens[%d]", i)
		switch {
		case t.Name == "":
			v.add(at+".name", "required: the name is the actor history records for this token's operations")
		case !nameRE.MatchString(t.Name):
			v.add(at+".name", "%q: use letters, digits, '.', '_' and '-' (at most 63)", t.Name)
		case t.Name == APITokenName && c.APITokenFile != "":
			v.add(at+".name", "%q is the name of controller.api_token_file's token; choose another", t.Name)
		case names[t.Name]:
			v.add(at+".name", "duplicate token name %q", t.Name)
		}
		names[t.Name] = true
		switch {
		case t.File == "":
			v.add(at+".file", "required: the file that holds the token")
		case files[t.File] != "":
			v.add(at+".file", "%s is also the file of token %q; each token needs its own", t.File, files[t.File])
		case t.File == c.AgentSecretFile || t.File == c.AgentPreviousSecretFile:
			v.add(at+".file", "%s is a cluster secret's file; an API token must differ from the cluster secret", t.File)
		}
		if t.File != "" && files[t.File] == "" {
			files[t.File] = t.Name
		}
		switch t.Role {
		case RoleReadOnly, RoleOperator:
		case "":
			v.add(at+".role", "required: read-only or operator")
		default:
			v.add(at+".role", "%q: must be read-only or operator", t.Role)
		}
	}
	if c.AgentPreviousSecretFile != "" && c.AgentPreviousSecretFile == c.AgentSecretFile {
		v.add("controller.agent_previous_secret_file", "%s is also controller.agent_secret_file; a rotation needs a new secret in agent_secret_file and the old one here", c.AgentPreviousSecretFile)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		if c.TLSCertFile == "" {
			v.add("controller.tls_cert_file", "required when controller.tls_key_file is set (TLS needs both)")
		} else {
			v.add("controller.tls_key_file", "required when controller.tls_cert_file is set (TLS needs both)")
		}
	}
}

// Bounds of detection.heartbeat_max_clock_skew: below a second NTP-synced
// hosts and a busy network get refused; above ten minutes a captured
// heartbeat keeps a dead host alive that long.
const (
	MinClockSkew = time.Second
	MaxClockSkew = 10 * time.Minute
)

func (v validator) detection(d Detection) {
	if d.HeartbeatInterval <= 0 {
		v.add("detection.heartbeat_interval", "must be positive")
	}
	if d.MissedHeartbeats < 1 {
		v.add("detection.missed_heartbeats", "must be at least 1, got %d", d.MissedHeartbeats)
	}
	if d.ProbeTimeout <= 0 {
		v.add("detection.probe_timeout", "must be positive")
	} else if d.HeartbeatInterval > 0 && d.MissedHeartbeats > 0 && d.ProbeTimeout > d.Window() {
		v.add("detection.probe_timeout", "%v is longer than the detection window (%v = heartbeat_interval × missed_heartbeats)", d.ProbeTimeout, d.Window())
	}
	if d.RecoveryHeartbeats < 1 {
		v.add("detection.recovery_heartbeats", "must be at least 1, got %d", d.RecoveryHeartbeats)
	}
	if d.HeartbeatMaxClockSkew < MinClockSkew || d.HeartbeatMaxClockSkew > MaxClockSkew {
		v.add("detection.heartbeat_max_clock_skew", "%v is out of range %v..%v (it bounds how long a captured heartbeat can be replayed)",
			d.HeartbeatMaxClockSkew, MinClockSkew, MaxClockSkew)
	}
	for i, a := range d.ReferenceAddresses {
		if net.ParseIP(a) == nil {
			v.add(fmt.Sprintf("detection.reference_addresses[%d]", i), "%q is not an IP address", a)
		}
	}
}

func (v validator) spec(at string, s PolicySpec) {
	if s.Levels != nil && len(s.Levels) == 0 {
		v.add(at+".levels", "an empty list leaves the host with no way to be fenced; list at least one level")
	}
	seen := map[FenceLevelType]bool{}
	for i, l := range s.Levels {
		lp := fmt.Sprintf("%s.levels[%d]", at, i)
		switch l.Type {
		case LevelAgentDrain, LevelIPMI, LevelRedfish:
		case "":
			v.add(lp+".type", "required: agent-drain, ipmi or redfish")
		default:
			v.add(lp+".type", "%q: must be agent-drain, ipmi or redfish", l.Type)
		}
		if seen[l.Type] && l.Type != "" {
			v.add(lp, "level %s is listed twice", l.Type)
		}
		seen[l.Type] = true
		if l.Timeout < 0 {
			v.add(lp+".timeout", "must not be negative")
		}
		if l.Retries != nil && *l.Retries < 0 {
			v.add(lp+".retries", "must not be negative")
		}
		if l.SettleDelay < 0 {
			v.add(lp+".settle_delay", "must not be negative")
		}
	}
	positive := func(k string, d *time.Duration) {
		if d != nil && *d <= 0 {
			v.add(at+"."+k, "must be positive, got %v", *d)
		}
	}
	nonNeg := func(k string, d *time.Duration) {
		if d != nil && *d < 0 {
			v.add(at+"."+k, "must not be negative, got %v", *d)
		}
	}
	positive("level_timeout", s.LevelTimeout)
	if s.LevelRetries != nil && *s.LevelRetries < 0 {
		v.add(at+".level_retries", "must not be negative")
	}
	if s.Action != nil && *s.Action != ActionOff && *s.Action != ActionReboot {
		v.add(at+".action", "%q: must be off or reboot", *s.Action)
	}
	if s.OnIsolation != nil && *s.OnIsolation != IsolationAlert && !s.OnIsolation.Fences() {
		v.add(at+".on_isolation", "%q: must be alert, fence or reboot", *s.OnIsolation)
	}
	nonNeg("isolation_grace", s.IsolationGrace)
	if s.MaxConcurrentFences != nil && *s.MaxConcurrentFences < 1 {
		v.add(at+".max_concurrent_fences", "must be at least 1, got %d", *s.MaxConcurrentFences)
	}
	if s.MaxConcurrentFencesPerRack != nil && *s.MaxConcurrentFencesPerRack < 1 {
		v.add(at+".max_concurrent_fences_per_rack", "must be at least 1, got %d", *s.MaxConcurrentFencesPerRack)
	}
	nonNeg("min_fence_interval", s.MinFenceInterval)
	positive("fence_readiness_interval", s.FenceReadinessInterval)
	frac := func(k string, f *float64) {
		if f != nil && (*f <= 0 || *f > 1) {
			v.add(at+".storm_guard."+k, "must be a fraction in (0, 1], got %v", *f)
		}
	}
	frac("max_unreachable_fraction", s.StormGuard.MaxUnreachableFraction)
	frac("max_rack_unreachable_fraction", s.StormGuard.MaxRackUnreachableFraction)
	if s.StormGuard.Window != nil && *s.StormGuard.Window <= 0 {
		v.add(at+".storm_guard.window", "must be positive")
	}
}

func (v validator) hosts(c *Config, policies, racks map[string]bool) {
	names := map[string]bool{}
	addrs := map[string]string{}
	bmcAddrs := map[string]string{}
	for i := range c.Hosts {
		h := &c.Hosts[i]
		at := fmt.Sprintf("hosts[%d]", i)
		v.name(at+".name", h.Name, names, "host")
		switch {
		case h.Rack == "":
			v.add(at+".rack", "required")
		case !racks[h.Rack]:
			v.add(at+".rack", "no rack named %q%s", h.Rack, known(racks))
		}
		if h.Policy != "" && !policies[h.Policy] {
			v.add(at+".policy", "no policy named %q%s", h.Policy, known(policies))
		}
		v.spec(at+".override", h.Override)
		if h.Address == "" {
			v.add(at+".address", "required: the host's management address")
		} else if !validHost(h.Address) {
			v.add(at+".address", "%q is not an IP address or host name", h.Address)
		} else if other, dup := addrs[h.Address]; dup {
			v.add(at+".address", "%s is already the address of host %s", h.Address, other)
		} else {
			addrs[h.Address] = h.Name
		}
		if u, err := url.Parse(h.Agent.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add(at+".agent.url", "%q is not an http(s) URL", h.Agent.URL)
		}
		v.hostPort(at+".libvirt.address", h.Libvirt.Address)
		if u, err := url.Parse(h.Libvirt.URI); err != nil || u.Scheme == "" {
			v.add(at+".libvirt.uri", "%q is not a libvirt URI such as qemu:///system", h.Libvirt.URI)
		}
		types := map[BMCType]bool{}
		for j, b := range h.BMCs {
			bp := fmt.Sprintf("%s.bmcs[%d]", at, j)
			v.bmc(bp, b)
			if types[b.Type] {
				v.add(bp+".type", "the host already has a %s BMC; list one per type", b.Type)
			}
			types[b.Type] = true
			key := net.JoinHostPort(b.Address, strconv.Itoa(b.Port))
			if other, dup := bmcAddrs[key]; dup && b.Address != "" {
				v.add(bp+".address", "%s is already the BMC of host %s", key, other)
			} else {
				bmcAddrs[key] = h.Name
			}
		}
		// The effective policy must be executable on this host.
		if h.Rack != "" && racks[h.Rack] && (h.Policy == "" || policies[h.Policy]) {
			p := effectivePolicy(c, h)
			power := false
			for j, l := range p.Levels {
				if bt := l.Type.BMCType(); bt != "" && !types[bt] {
					v.add(at+".bmcs", "policy %q fences with level %d (%s) but the host has no %s BMC", p.Name, j+1, l.Type, bt)
				}
				power = power || l.Type.BMCType() != ""
			}
			if p.OnIsolation.Fences() && !power {
				// An isolated or hung host's agent cannot be reached, and an
				// agent's word would not prove a hung QEMU dead: only a BMC
				// read-back of power Off does.
				v.add(at, "policy %q says on_isolation: %s but has no ipmi or redfish level: an isolated host is fenced only by a BMC whose power reads back Off", p.Name, p.OnIsolation)
			}
		}
	}
}

func (v validator) bmc(at string, b BMC) {
	switch b.Type {
	case BMCIPMI, BMCRedfish:
	case "":
		v.add(at+".type", "required: ipmi or redfish")
	default:
		v.add(at+".type", "%q: must be ipmi or redfish", b.Type)
	}
	if b.Address == "" {
		v.add(at+".address", "required")
	} else if !validHost(b.Address) {
		v.add(at+".address", "%q is not an IP address or host name", b.Address)
	}
	if b.Port < 1 || b.Port > 65535 {
		v.add(at+".port", "%d is not a port (1-65535)", b.Port)
	}
	if b.Username == "" {
		v.add(at+".username", "required")
	}
	switch {
	case b.PasswordFile == "" && b.PasswordEnv == "":
		v.add(at, "set password_file or password_env")
	case b.PasswordFile != "" && b.PasswordEnv != "":
		v.add(at, "set only one of password_file and password_env")
	}
	if b.Type == BMCIPMI {
		for k, cs := range b.CipherSuites {
			if !ipmiCipherSuites[cs] {
				v.add(fmt.Sprintf("%s.cipher_suites[%d]", at, k), "%d is not an IPMI cipher suite with message integrity and encryption (use 3, 8, 12 or 17: on the others a forged power reading could pass as the BMC's)", cs)
			}
		}
		for k, set := range map[string]bool{"system_id": b.SystemID != "", "scheme": b.Scheme != "", "auth": b.Auth != "", "insecure": b.Insecure, "ca_file": b.CAFile != ""} {
			if set {
				v.add(at+"."+k, "applies to redfish BMCs only")
			}
		}
	}
	if b.Type == BMCRedfish {
		if len(b.CipherSuites) > 0 {
			v.add(at+".cipher_suites", "applies to ipmi BMCs only")
		}
		if b.Scheme != "http" && b.Scheme != "https" {
			v.add(at+".scheme", "%q: must be https or http", b.Scheme)
		}
		if b.Auth != "session" && b.Auth != "basic" {
			v.add(at+".auth", "%q: must be session or basic", b.Auth)
		}
		if b.Insecure && b.CAFile != "" {
			v.add(at+".insecure", "insecure skips verification, so ca_file would be ignored; choose one")
		}
	}
}

func (v validator) webhooks(ws []Webhook) {
	names := map[string]bool{}
	for i, w := range ws {
		at := fmt.Sprintf("alerts.webhooks[%d]", i)
		v.name(at+".name", w.Name, names, "webhook")
		if u, err := url.Parse(w.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.add(at+".url", "not an http(s) URL")
		}
		for j, e := range w.Events {
			if _, err := path.Match(e, ""); err != nil || e == "" {
				v.add(fmt.Sprintf("%s.events[%d]", at, j), "%q is not a valid event pattern", e)
			}
		}
		if w.Timeout <= 0 {
			v.add(at+".timeout", "must be positive")
		}
		if w.Retries < 0 {
			v.add(at+".retries", "must not be negative")
		}
		if w.Format != "chime" && w.Format != "alertmanager" {
			v.add(at+".format", "%q: must be chime or alertmanager", w.Format)
		}
	}
}

func (v validator) name(at, n string, seen map[string]bool, what string) {
	switch {
	case n == "":
		v.add(at, "required")
	case !nameRE.MatchString(n):
		v.add(at, "%q: use letters, digits, '.', '_' and '-' (at most 63)", n)
	case seen[n]:
		v.add(at, "duplicate %s name %q", what, n)
	}
	seen[n] = true
}

func (v validator) hostPort(at, hp string) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		v.add(at, "%q is not host:port", hp)
		return
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		v.add(at, "%q: port must be 1-65535", hp)
	}
	if h != "" && !validHost(h) {
		v.add(at, "%q: %q is not an IP address or host name", hp, h)
	}
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

func validHost(s string) bool { return net.ParseIP(s) != nil || hostnameRE.MatchString(s) }

func known(m map[string]bool) string {
	if len(m) == 0 {
		return " (none are defined)"
	}
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sortStrings(ks)
	return " (defined: " + strings.Join(ks, ", ") + ")"
}

// lineOf finds the line of a dotted path like hosts[3].bmcs[0].port in the
// YAML tree, or of its nearest existing ancestor; 0 if nothing matches.
func lineOf(root *yaml.Node, p string) int {
	n := root
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range splitPath(p) {
		if n == nil {
			break
		}
		if idx, err := strconv.Atoi(part); err == nil {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				break
			}
			n = n.Content[idx]
			line = n.Line
			continue
		}
		if n.Kind != yaml.MappingNode {
			break
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}

func splitPath(p string) []string {
	p = strings.NewReplacer("[", ".", "]", "").Replace(p)
	if p == "" {
		return nil
	}
	return strings.Split(p, ".")
}
