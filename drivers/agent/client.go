package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/power"
)

// Config says how to reach one host's agent.
type Config struct {
	Host    string // our name for the host
	URL     string // base URL, e.g. http://10.0.0.11:7481
	Token   string // bearer token, already read from its file
	Timeout time.Duration
}

// Client talks to one agent. Safe for concurrent use.
type Client struct {
	cfg  Config
	base *url.URL
	http *http.Client
}

// DomainStatus is one domain as the agent reports it.
type DomainStatus struct {
	UUID  string                 `json:"uuid"`
	Name  string                 `json:"name"`
	State hypervisor.DomainState `json:"state"`
}

// Status is the agent's view of its host.
type Status struct {
	Host       string         `json:"host"`
	BootID     string         `json:"boot_id"`
	AdminState string         `json:"admin_state"`
	Domains    []DomainStatus `json:"domains"`
}

// Running counts domains that may hold their disks.
func (s Status) Running() int {
	n := 0
	for _, d := range s.Domains {
		if d.State.Active() {
			n++
		}
	}
	return n
}

// New checks the config; no I/O.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("agent: host %s: %q is not an http(s) URL", cfg.Host, cfg.URL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	return &Client{cfg: cfg, base: u, http: &http.Client{Timeout: cfg.Timeout}}, nil
}

// Status asks the agent for its host's state.
func (c *Client) Status(ctx context.Context) (Status, error) {
	const step = "agent: status"
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.JoinPath("/v1/status").String(), nil)
	if err != nil {
		return st, c.fail(power.KindConfig, step, err)
	}
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		kind := power.KindUnreachable
		var ne net.Error
		if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
			kind = power.KindTimeout
		}
		return st, c.fail(kind, step, redact(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return st, c.fail(power.KindAuth, step, fmt.Errorf("HTTP %d: token rejected", resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return st, c.fail(power.KindProtocol, step, fmt.Errorf("HTTP %d", resp.StatusCode))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, c.fail(power.KindProtocol, step, fmt.Errorf("malformed status: %w", err))
	}
	if st.Host != "" && st.Host != c.cfg.Host {
		return st, c.fail(power.KindConfig, step, fmt.Errorf("agent at %s says it runs on host %q", c.cfg.URL, st.Host))
	}
	return st, nil
}

// Check is the agent-drain level's dry run: the agent answers with its
// domains. An answering agent means the host is running.
func (c *Client) Check(ctx context.Context) (power.State, error) {
	if _, err := c.Status(ctx); err != nil {
		return power.Unknown, err
	}
	return power.On, nil
}

func (c *Client) fail(kind power.Kind, step string, err error) error {
	return &power.Error{Kind: kind, Host: c.cfg.Host, Step: step, Err: err}
}

// redact drops the URL from transport errors: it is in the config anyway,
// and a URL can carry credentials.
func redact(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
