package ipmi

import (
	"slices"
	"strings"
	"time"

	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/chimestack/chime-fence/power"
)

// Defaults applied by New.
const (
	DefaultPort    = 623
	DefaultTimeout = time.Second
	// DefaultOpTimeout caps a call whose ctx has no deadline.
	DefaultOpTimeout = 30 * time.Second
	// retries is go-ipmi's count of resends after an exchange timed out; the
	// ctx deadline bounds the total anyway.
	retries = 2
)

// DefaultCipherSuites: 3 (SHA1/AES, what ipmi_sim and most BMCs speak), then
// 17 (SHA256/AES, what newer BMCs insist on).
var DefaultCipherSuites = []int{3, 17}

// IntegritySuites are the only cipher suites a fence may use: each
// authenticates the session AND protects every message's integrity (and
// encrypts it). Suites 1, 6 and 15 authenticate the login only; on them a
// forged "power off" reply is indistinguishable from the BMC's, and a
// forged Off read-back would become a verified fence and a VM started
// twice. Suites without confidentiality (2, 7, 11, 16) are refused too:
// every BMC that offers them offers the AES variant of the same suite.
var IntegritySuites = []int{3, 8, 12, 17}

// Config is one host's IPMI fence level.
type Config struct {
	Host         string        // our host name, for errors and logs
	Addr         string        // BMC address (IP or name)
	Port         int           // default 623
	Username     string        // at most 16 bytes
	Password     string        // already read from password_file/env by the caller; at most 20 bytes
	CipherSuites []int         // tried in order; default [3, 17]
	Privilege    string        // "operator" (default) or "administrator"
	Timeout      time.Duration // per-exchange cap (default 1 s); ctx deadline also applies
}

const stepConfig = "ipmi: config"

// validate fills defaults and rejects what cannot work. Error text names the
// field, never the password.
func (c *Config) validate() (types.PrivilegeLevel, []types.CipherSuiteID, error) {
	bad := func(format string, args ...any) error {
		return power.Errorf(power.KindConfig, c.Host, stepConfig, format, args...)
	}
	if strings.TrimSpace(c.Host) == "" {
		return 0, nil, bad("host name is empty")
	}
	if strings.TrimSpace(c.Addr) == "" {
		return 0, nil, bad("BMC address is empty")
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Port < 1 || c.Port > 65535 {
		return 0, nil, bad("port %d is outside 1..65535", c.Port)
	}
	if c.Username == "" {
		return 0, nil, bad("username is empty")
	}
	if len(c.Username) > 16 {
		return 0, nil, bad("username is %d bytes, IPMI allows at most 16", len(c.Username))
	}
	if c.Password == "" {
		return 0, nil, bad("password is empty (was the password file or env variable read?)")
	}
	if len(c.Password) > 20 {
		return 0, nil, bad("password is %d bytes, IPMI 2.0 allows at most 20", len(c.Password))
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return 0, nil, bad("timeout %s is negative", c.Timeout)
	}
	if len(c.CipherSuites) == 0 {
		c.CipherSuites = slices.Clone(DefaultCipherSuites)
	}
	suites := make([]types.CipherSuiteID, 0, len(c.CipherSuites))
	for i, s := range c.CipherSuites {
		if s < 0 || s > 17 {
			return 0, nil, bad("cipher suite %d is not an IPMI 2.0 cipher suite (0..17)", s)
		}
		if _, _, _, ok := types.GetCipherSuiteAlgorithms(types.CipherSuiteID(s)); !ok {
			return 0, nil, bad("cipher suite %d is not supported by go-ipmi", s)
		}
		if !slices.Contains(IntegritySuites, s) {
			return 0, nil, bad("cipher suite %d does not protect message integrity, so a forged power reading could pass as the BMC's; use one of %v", s, IntegritySuites)
		}
		if slices.Contains(c.CipherSuites[:i], s) {
			return 0, nil, bad("cipher suite %d is listed twice", s)
		}
		suites = append(suites, types.CipherSuiteID(s))
	}
	var priv types.PrivilegeLevel
	switch strings.ToLower(c.Privilege) {
	case "", "operator":
		c.Privilege, priv = "operator", types.PrivilegeLevelOperator
	case "administrator", "admin":
		c.Privilege, priv = "administrator", types.PrivilegeLevelAdministrator
	default:
		return 0, nil, bad("privilege %q cannot control chassis power; use operator or administrator", c.Privilege)
	}
	return priv, suites, nil
}
