package configs

import "net/url"

// Redacted returns a copy of c fit to print. A Config holds no secret values
// (only where they come from), but a webhook URL may carry credentials in
// its user info or query, so those are masked.
func Redacted(c *Config) *Config {
	out := *c
	out.Alerts.Webhooks = append([]Webhook(nil), c.Alerts.Webhooks...)
	for i := range out.Alerts.Webhooks {
		out.Alerts.Webhooks[i].URL = RedactURL(out.Alerts.Webhooks[i].URL)
	}
	return &out
}

// RedactURL masks a URL's password and query values.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparseable url>"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "REDACTED")
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q.Set(k, "REDACTED")
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// HostConfig is what `config show --host` prints: the host as configured
// (with defaults filled) and its effective policy.
type HostConfig struct {
	Host      Host   `json:"host" yaml:"host"`
	Effective Policy `json:"effective_policy" yaml:"effective_policy"`
}

// HostView builds the printable view of one host.
func HostView(_ *Config, h *Host) HostConfig {
	return HostConfig{Host: *h, Effective: h.Effective}
}
