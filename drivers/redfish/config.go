package redfish

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/power"
)

// Defaults applied by New.
const (
	// DefaultTimeout caps each HTTP call when Config.Timeout is zero.
	DefaultTimeout = 10 * time.Second
	// DefaultOpTimeout caps an operation whose ctx has no deadline.
	DefaultOpTimeout = 60 * time.Second
	// logoutTimeout caps the DELETE of a session (and Timeout does too); it
	// runs even when the operation's ctx has ended.
	logoutTimeout = 5 * time.Second
)

// Auth modes.
const (
	AuthSession = "session"
	AuthBasic   = "basic"
)

// Config is one host's Redfish fence level.
type Config struct {
	Host     string // our host name, for errors
	Endpoint string // https://addr:port (http:// allowed only for tests/lab)
	Username string
	Password string        // already read from password_file/env by the caller
	SystemID string        // optional; required if the BMC has more than one system
	Auth     string        // "session" (default) or "basic"
	Insecure bool          // skip TLS verification (opt-in per BMC)
	CAFile   string        // extra CA to trust
	Timeout  time.Duration // per-HTTP-call cap; ctx deadline also applies
}

const stepConfig = "redfish: config"

// validate fills defaults, normalises Endpoint and builds the TLS config.
// Error text names the field, never the password.
func (c *Config) validate() (*tls.Config, error) {
	bad := func(format string, args ...any) error {
		return power.Errorf(power.KindConfig, c.Host, stepConfig, format, args...)
	}
	if strings.TrimSpace(c.Host) == "" {
		return nil, bad("host name is empty")
	}
	if strings.TrimSpace(c.Endpoint) == "" {
		return nil, bad("endpoint is empty (want https://ADDR[:PORT])")
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		// url's error quotes the input, which could carry credentials.
		return nil, bad("endpoint is not a URL (want https://ADDR[:PORT])")
	}
	if u.User != nil {
		return nil, bad("endpoint must not carry credentials; use username and password_file")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, bad("endpoint %q: scheme must be https (or http for a lab)", u.Redacted())
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, bad("endpoint %q has no host", u.Redacted())
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, bad("endpoint %q must be scheme://host[:port] only; the service root /redfish/v1/ is implied", u.Redacted())
	}
	c.Endpoint = u.Scheme + "://" + u.Host
	if c.Username == "" {
		return nil, bad("username is empty")
	}
	if c.Password == "" {
		return nil, bad("password is empty (was the password file or env variable read?)")
	}
	switch strings.ToLower(c.Auth) {
	case "", AuthSession:
		c.Auth = AuthSession
	case AuthBasic:
		c.Auth = AuthBasic
	default:
		return nil, bad("auth %q: want session or basic", c.Auth)
	}
	if strings.ContainsAny(c.SystemID, "/?#") {
		return nil, bad("system id %q must be the Id of a ComputerSystem, not a path", c.SystemID)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return nil, bad("timeout %s is negative", c.Timeout)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.Insecure} //nolint:gosec // opt-in per BMC
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, bad("ca_file: %v", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, bad("ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
