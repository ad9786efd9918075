package alert

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"
)

// Formats of the request body.
const (
	FormatChime        = "chime"        // the Event's JSON
	FormatAlertmanager = "alertmanager" // an Alertmanager v2 POST /api/v2/alerts array
)

// Webhook defaults.
const (
	DefaultTimeout = 5 * time.Second
	DefaultRetries = 5
)

// Secret is an HMAC key. It prints as "[redacted]" so a Webhook logged or
// formatted by mistake does not leak it.
type Secret []byte

func (Secret) String() string                 { return "[redacted]" }
func (Secret) GoString() string               { return "[redacted]" }
func (Secret) MarshalText() ([]byte, error)   { return []byte("[redacted]"), nil }
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// Webhook is one receiver, as configs.Webhook describes it with the secret
// file already read.
type Webhook struct {
	// Name identifies the webhook's queue in the outbox and in metrics;
	// unique.
	Name string
	// URL: http or https. Its userinfo, path and query may hold
	// credentials, so logs and errors show only scheme and host.
	URL string
	// Secret, when set, signs every body: X-Chime-Signature:
	// sha256=<hex HMAC-SHA256(Secret, body)>.
	Secret Secret
	// Events are path.Match globs over event types ("fence.*"); empty
	// means every event.
	Events []string
	// Timeout bounds one POST (connect to response headers and body);
	// 0 means DefaultTimeout.
	Timeout time.Duration
	// Retries is the maximum number of attempts per event; 0 means
	// DefaultRetries. After the last failed attempt the event is dropped,
	// except the events retried for Config.MustDeliverFor (package doc).
	Retries int
	// Format is FormatChime (default when empty) or FormatAlertmanager.
	Format string
}

// normalize fills defaults and checks w. Errors name the webhook and the
// field, never the secret, and show the URL redacted.
func (w *Webhook) normalize() error {
	if w.Name == "" {
		return fmt.Errorf("webhook with URL %s: name is empty", RedactURL(w.URL))
	}
	if strings.ContainsRune(w.Name, 0) || len(w.Name) > 256 {
		return fmt.Errorf("webhook %q: name must be at most 256 bytes without NUL", w.Name)
	}
	u, err := url.Parse(w.URL)
	switch {
	case w.URL == "":
		return fmt.Errorf("webhook %q: url is empty", w.Name)
	case err != nil:
		// url.Error repeats the URL: say what is wrong without it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("webhook %q: url does not parse: %v", w.Name, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("webhook %q: url %s: scheme must be http or https", w.Name, RedactURL(w.URL))
	case u.Host == "":
		return fmt.Errorf("webhook %q: url %s has no host", w.Name, RedactURL(w.URL))
	}
	for _, g := range w.Events {
		if err := CheckPattern(g); err != nil {
			return fmt.Errorf("webhook %q: events: %w", w.Name, err)
		}
	}
	switch {
	case w.Timeout < 0:
		return fmt.Errorf("webhook %q: timeout %s is negative", w.Name, w.Timeout)
	case w.Timeout == 0:
		w.Timeout = DefaultTimeout
	}
	switch {
	case w.Retries < 0:
		return fmt.Errorf("webhook %q: retries %d is negative", w.Name, w.Retries)
	case w.Retries == 0:
		w.Retries = DefaultRetries
	}
	switch w.Format {
	case "":
		w.Format = FormatChime
	case FormatChime, FormatAlertmanager:
	default:
		return fmt.Errorf("webhook %q: format %q is not %q or %q", w.Name, w.Format, FormatChime, FormatAlertmanager)
	}
	return nil
}

// Wants reports whether the webhook receives events of type typ.
func (w *Webhook) Wants(typ string) bool {
	if len(w.Events) == 0 {
		return true
	}
	for _, g := range w.Events {
		if ok, _ := path.Match(g, typ); ok {
			return true
		}
	}
	return false
}

// RedactURL returns raw with everything that may carry a credential
// removed: userinfo, path, query and fragment become "***", leaving the
// scheme and host an operator needs to tell receivers apart.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" && u.Scheme == "" {
		return "[unparseable URL]"
	}
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteString("://")
	if u.User != nil {
		b.WriteString("***@")
	}
	b.WriteString(u.Host)
	if u.Path != "" && u.Path != "/" || u.RawPath != "" {
		b.WriteString("/***")
	}
	if u.RawQuery != "" || u.ForceQuery {
		b.WriteString("?***")
	}
	if u.Fragment != "" {
		b.WriteString("#***")
	}
	return b.String()
}
