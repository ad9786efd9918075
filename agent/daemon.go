package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
)

// DaemonClient is the agent's client of the daemon's agent-facing API
// (heartbeat.PathHeartbeat, heartbeat.PathAssignment). It implements
// Daemon. Every call runs under the caller's context; the token is sent as
// a bearer token and never appears in errors. Safe for concurrent use.
type DaemonClient struct {
	host  string
	token string
	base  *url.URL
	http  *http.Client
}

// NewDaemonClient checks its arguments; no I/O. baseURL is the daemon's
// http(s) address, e.g. http://10.0.0.2:7480.
func NewDaemonClient(baseURL, host, token string) (*DaemonClient, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("daemon address %q is not an http(s) URL like http://10.0.0.2:7480 (without credentials)", baseURL)
	}
	if host == "" {
		return nil, errors.New("daemon client: host name is empty")
	}
	if token == "" {
		return nil, errors.New("daemon client: token is empty")
	}
	// No proxy from the environment: the daemon is on the management
	// network, and a proxy would see the token.
	tr := &http.Transport{
		DialContext:         (&net.Dialer{KeepAlive: 15 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
	}
	return &DaemonClient{host: host, token: token, base: u, http: &http.Client{Transport: tr}}, nil
}

// Assignment fetches this host's assignment. An assignment for another
// host is an error (a daemon or proxy misconfiguration the agent must not
// act on).
func (c *DaemonClient) Assignment(ctx context.Context) (heartbeat.Assignment, error) {
	const step = "fetch assignment"
	u := c.base.JoinPath(heartbeat.PathAssignment)
	u.RawQuery = url.Values{"host": {c.host}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return heartbeat.Assignment{}, c.fail(step, err)
	}
	body, err := c.do(req)
	if err != nil {
		return heartbeat.Assignment{}, c.fail(step, err)
	}
	if err := requireAdminState(body); err != nil {
		return heartbeat.Assignment{}, c.fail(step, err)
	}
	a, err := heartbeat.DecodeAssignment(bytes.NewReader(body))
	if err != nil {
		return heartbeat.Assignment{}, c.fail(step, err)
	}
	if a.Host != c.host {
		return heartbeat.Assignment{}, c.fail(step, fmt.Errorf("the daemon sent the assignment of host %q", a.Host))
	}
	return a, nil
}

// Heartbeat sends one heartbeat and returns the daemon's ack.
func (c *DaemonClient) Heartbeat(ctx context.Context, hb heartbeat.Heartbeat) (heartbeat.Ack, error) {
	// No seq in the step: the caller logs an error only when it changes.
	const step = "heartbeat"
	b, err := json.Marshal(hb)
	if err != nil {
		return heartbeat.Ack{}, c.fail(step, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath(heartbeat.PathHeartbeat).String(), bytes.NewReader(b))
	if err != nil {
		return heartbeat.Ack{}, c.fail(step, err)
	}
	req.Header.Set("Content-Type", "application/json")
	body, err := c.do(req)
	if err != nil {
		return heartbeat.Ack{}, c.fail(step, err)
	}
	var ack heartbeat.Ack
	if err := json.Unmarshal(body, &ack); err != nil {
		return heartbeat.Ack{}, c.fail(step, fmt.Errorf("malformed ack: %w", err))
	}
	if err := requireAdminState(body); err != nil {
		return heartbeat.Ack{}, c.fail(step, err)
	}
	return ack, nil
}

// requireAdminState refuses an answer without admin_state: its zero value
// is "enabled", and a proxy's or a foreign server's "{}" must not let the
// agent start domains.
func requireAdminState(body []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return fmt.Errorf("malformed answer: %w", err)
	}
	if _, ok := fields["admin_state"]; !ok {
		return errors.New("answer has no admin_state")
	}
	return nil
}

// do sends req with the token and returns a 200 response's body.
func (c *DaemonClient) do(req *http.Request) ([]byte, error) {
	req.Header.Set("Authorization", "Bearer "+c.token)
	// The credential is this host's only: the daemon checks it against
	// the host named here, and refuses anything about another host.
	req.Header.Set(identity.HeaderHost, c.host)
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is in the step already
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, heartbeat.MaxBodyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("HTTP %d: the daemon rejected the agent token", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		// A daemon that echoes the request must not leak the token.
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.ReplaceAll(snippet(body), c.token, "[token]"))
	case len(body) > heartbeat.MaxBodyBytes:
		return nil, fmt.Errorf("answer larger than %d bytes", heartbeat.MaxBodyBytes)
	}
	return body, nil
}

func (c *DaemonClient) fail(step string, err error) error {
	return fmt.Errorf("daemon %s: host %s: %s: %w", c.base.Host, c.host, step, err)
}

// snippet is the start of an error body, on one line.
func snippet(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	if s == "" {
		s = "(empty body)"
	}
	return s
}
