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
	"strings"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
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
	// drain has no client-wide timeout: a drain destroys every domain and
	// takes as long as the caller's deadline allows.
	drain *http.Client
}

// DomainStatus is one domain as the agent reports it.
type DomainStatus struct {
	UUID  string                 `json:"uuid"`
	Name  string                 `json:"name"`
	State hypervisor.DomainState `json:"state"`
}

// Status is the agent's view of its host.
type Status struct {
	Host   string `json:"host"`
	BootID string `json:"boot_id"`
	// AdminState is "drained" while LocalDrain is set, whatever the
	// daemon says.
	AdminState string `json:"admin_state"`
	// LocalDrain: the host carries the agent's local drain marker and
	// starts no domain.
	LocalDrain      bool           `json:"local_drain"`
	LocalDrainSince time.Time      `json:"local_drain_since,omitzero"`
	Domains         []DomainStatus `json:"domains"`
}

// DrainedDomain and DrainResult are the agent's drain answer (its wire
// types live in heartbeat, shared with chime-agent).
type (
	DrainedDomain = heartbeat.DrainedDomain
	DrainResult   = heartbeat.DrainResponse
)

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
	return &Client{cfg: cfg, base: u, http: &http.Client{Timeout: cfg.Timeout}, drain: &http.Client{}}, nil
}

// DefaultDrainTimeout bounds a Drain whose context has no deadline.
const DefaultDrainTimeout = 2 * time.Minute

// Drain asks the agent to drain its host: it writes its local drain marker
// (so it starts no domain until the daemon enables the host after the
// drain), then destroys every active domain. A nil error means the agent
// listed no active domain afterwards. An error with a non-zero result is a
// partial drain (KindRefused): the marker holds, some domain is still
// active or could not be checked; the caller verifies with Status and may
// drain again. Drains are idempotent.
func (c *Client) Drain(ctx context.Context) (DrainResult, error) {
	const step = "agent: drain"
	var res DrainResult
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDrainTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath("/v1/drain").String(), nil)
	if err != nil {
		return res, c.fail(power.KindConfig, step, err)
	}
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	resp, err := c.drain.Do(req)
	if err != nil {
		kind := power.KindUnreachable
		var ne net.Error
		if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
			kind = power.KindTimeout
		}
		return res, c.fail(kind, step, redact(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return res, c.fail(power.KindAuth, step, fmt.Errorf("HTTP %d: token rejected", resp.StatusCode))
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return res, c.fail(power.KindConfig, step, fmt.Errorf("HTTP %d: this agent has no drain endpoint (too old?)", resp.StatusCode))
	case http.StatusOK, http.StatusInternalServerError:
	default:
		return res, c.fail(power.KindProtocol, step, fmt.Errorf("HTTP %d", resp.StatusCode))
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return res, c.fail(power.KindProtocol, step, fmt.Errorf("HTTP %d, malformed drain result: %w", resp.StatusCode, err))
	}
	if res.Host != c.cfg.Host && (res.Host != "" || resp.StatusCode == http.StatusOK) {
		// A success that names no host ({}, null) is not an agent's: a
		// responder that merely answers must never count as a drain. (An
		// agent refusing before it knows anything may leave host empty.)
		return res, c.fail(power.KindConfig, step, fmt.Errorf("agent at %s says it runs on host %q", c.cfg.URL, res.Host))
	}
	if resp.StatusCode == http.StatusOK && res.Running != 0 {
		return res, c.fail(power.KindRefused, step, fmt.Errorf("HTTP 200 but %d domains still running", res.Running))
	}
	if resp.StatusCode != http.StatusOK {
		msg := res.Error
		if msg == "" {
			msg = "no detail"
		}
		return res, c.fail(power.KindRefused, step, fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.ReplaceAll(msg, c.cfg.Token, "[token]")))
	}
	return res, nil
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
	if st.Host != c.cfg.Host {
		return st, c.fail(power.KindConfig, step, fmt.Errorf("agent at %s says it runs on host %q", c.cfg.URL, st.Host))
	}
	if st.Domains == nil {
		// A real agent always lists (an empty list when nothing is
		// defined); a missing list must never read as "nothing runs".
		return st, c.fail(power.KindProtocol, step, errors.New("malformed status: no domains list"))
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
