package configs

import (
	"net"
	"path/filepath"
	"sort"
	"time"
)

// fillDefaults sets what a host or webhook may omit, derived from its other
// fields, before validation, so duplicates and references are checked on the
// values that will be used. Relative secret paths are taken from the config
// file's directory.
func fillDefaults(c *Config, dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Controller.APITokenFile)
	abs(&c.Controller.AgentSecretFile)
	abs(&c.Controller.AgentPreviousSecretFile)
	for i := range c.Controller.APITokens {
		abs(&c.Controller.APITokens[i].File)
	}
	abs(&c.Controller.TLSCertFile)
	abs(&c.Controller.TLSKeyFile)
	for i := range c.Hosts {
		h := &c.Hosts[i]
		if h.Agent.URL == "" && h.Address != "" {
			h.Agent.URL = "http://" + net.JoinHostPort(h.Address, "7481")
		}
		if h.Libvirt.Address == "" && h.Address != "" {
			h.Libvirt.Address = net.JoinHostPort(h.Address, "16509")
		}
		if h.Libvirt.URI == "" {
			h.Libvirt.URI = "qemu:///system"
		}
		for j := range h.BMCs {
			b := &h.BMCs[j]
			abs(&b.PasswordFile)
			abs(&b.CAFile)
			switch b.Type {
			case BMCIPMI:
				if b.Port == 0 {
					b.Port = 623
				}
				if b.CipherSuites == nil {
					b.CipherSuites = []int{3, 17}
				}
			case BMCRedfish:
				if b.Scheme == "" {
					b.Scheme = "https"
				}
				if b.Port == 0 {
					b.Port = 443
					if b.Scheme == "http" {
						b.Port = 80
					}
				}
				if b.Auth == "" {
					b.Auth = "session"
				}
			}
		}
	}
	if c.Storage.InventoryDir == "" && len(c.Storage.SharedPaths) > 0 {
		c.Storage.InventoryDir = filepath.Join(c.Storage.SharedPaths[0], "chime-fence", "domains")
	}
	for i := range c.Alerts.Webhooks {
		w := &c.Alerts.Webhooks[i]
		abs(&w.SecretFile)
		if w.Format == "" {
			w.Format = "chime"
		}
		if w.Timeout == 0 {
			w.Timeout = 5 * time.Second
		}
	}
}

// effectivePolicy layers defaults → named policy → rack override → host
// override for one host. It assumes the references were checked.
func effectivePolicy(c *Config, h *Host) Policy {
	var rack Rack
	for _, r := range c.Racks {
		if r.Name == h.Rack {
			rack = r
		}
	}
	name := rack.Policy
	if h.Policy != "" {
		name = h.Policy
	}
	var named PolicySpec
	for _, p := range c.Policies {
		if p.Name == name {
			named = p.PolicySpec
		}
	}
	return ResolvePolicy(name, c.Defaults, named, rack.Override, h.Override)
}

func resolve(c *Config) {
	c.hostIndex = make(map[string]int, len(c.Hosts))
	for i := range c.Hosts {
		c.Hosts[i].Effective = effectivePolicy(c, &c.Hosts[i])
		c.hostIndex[c.Hosts[i].Name] = i
	}
}

// Host returns the named host. A loaded config finds it in its index (the
// daemon asks for a host per heartbeat-sized event; 10,000 hosts made the
// scan show in profiles); a hand-built one is scanned.
func (c *Config) Host(name string) (*Host, bool) {
	if c.hostIndex != nil {
		i, ok := c.hostIndex[name]
		if !ok || i >= len(c.Hosts) || c.Hosts[i].Name != name {
			return c.scanHost(name)
		}
		return &c.Hosts[i], true
	}
	return c.scanHost(name)
}

func (c *Config) scanHost(name string) (*Host, bool) {
	for i := range c.Hosts {
		if c.Hosts[i].Name == name {
			return &c.Hosts[i], true
		}
	}
	return nil, false
}

// HostNames lists the hosts in file order.
func (c *Config) HostNames() []string {
	out := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		out[i] = h.Name
	}
	return out
}

func sortStrings(s []string) { sort.Strings(s) }
