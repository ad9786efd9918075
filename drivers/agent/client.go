package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/power"
)

// Config says how to reach one host's agent.
type Config struct {
	Host string // our name for the host
	URL  string // base URL, e.g. http://10.0.0.11:7481
	// Credentials are the host's credential pairs, current cluster secret
	// first (identity.Ring): the next is tried only when the agent refuses
	// one (401: nothing was done), which is how a rotation keeps working
	// while an agent still holds the previous secret's.
	Credentials []Credential
	Timeout     time.Duration
}

// Credential is one pair of a host's credentials under one cluster secret.
type Credential struct {
	// Daemon is presented as the bearer token (identity.DaemonCredential):
	// agents hold only their own host's.
	Daemon string
	// Agent is the host's agent credential: the key of the MAC every
	// answer must carry (identity.ReplyMAC), so a responder at the URL that
	// is not this host's agent never counts.
	Agent string
}

// Credentials are host's credential pairs under ring, current first.
func Credentials(ring identity.Ring, host string) []Credential {
	var out []Credential
	for _, sec := range ring.Secrets() {
		out = append(out, Credential{Daemon: identity.DaemonCredential(sec, host), Agent: identity.AgentCredential(sec, host)})
	}
	return out
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
	if len(cfg.Credentials) == 0 {
		return nil, fmt.Errorf("agent: host %s: no credential (controller.agent_secret_file)", cfg.Host)
	}
	for _, c := range cfg.Credentials {
		if c.Daemon == "" || c.Agent == "" {
			return nil, fmt.Errorf("agent: host %s: empty credential", cfg.Host)
		}
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
	resp, body, err := c.call(ctx, c.drain, http.MethodPost, "/v1/drain", step)
	if err != nil {
		return res, err
	}
	switch resp.StatusCode {
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
		return res, c.fail(power.KindRefused, step, fmt.Errorf("HTTP %d: %s", resp.StatusCode, c.redactCreds(msg)))
	}
	return res, nil
}

// Status asks the agent for its host's state.
func (c *Client) Status(ctx context.Context) (Status, error) {
	const step = "agent: status"
	var st Status
	resp, body, err := c.call(ctx, c.http, http.MethodGet, "/v1/status", step)
	if err != nil {
		return st, err
	}
	switch {
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

// call sends one request to the agent with each credential pair in turn
// until one is not refused (401), and returns the answer only when its
// reply MAC is the host's over this request's fresh nonce: a responder
// that is not this host's agent (or replays one of its answers) is
// KindAuth, never a result.
func (c *Client) call(ctx context.Context, hc *http.Client, method, path, step string) (*http.Response, []byte, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, nil, c.fail(power.KindConfig, step, err)
	}
	n := hex.EncodeToString(nonce[:])
	for i, cred := range c.cfg.Credentials {
		req, err := http.NewRequestWithContext(ctx, method, c.base.JoinPath(path).String(), nil)
		if err != nil {
			return nil, nil, c.fail(power.KindConfig, step, err)
		}
		req.Header.Set("Authorization", "Bearer "+cred.Daemon)
		req.Header.Set(identity.HeaderNonce, n)
		resp, err := hc.Do(req)
		if err != nil {
			kind := power.KindUnreachable
			var ne net.Error
			if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
				kind = power.KindTimeout
			}
			return nil, nil, c.fail(kind, step, redact(err))
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && i+1 < len(c.cfg.Credentials) {
			continue // the agent may still hold the previous secret's
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return nil, nil, c.fail(power.KindAuth, step, fmt.Errorf("HTTP %d: credential rejected", resp.StatusCode))
		}
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			return resp, body, nil // no endpoint: nothing to authenticate
		}
		if err := identity.VerifyReply(cred.Agent, method, path, n, body, resp.Header.Get(identity.HeaderReplyMAC)); err != nil {
			return nil, nil, c.fail(power.KindAuth, step, fmt.Errorf("HTTP %d from %s: %w: not host %s's agent", resp.StatusCode, c.cfg.URL, err, c.cfg.Host))
		}
		return resp, body, nil
	}
	return nil, nil, c.fail(power.KindAuth, step, errors.New("no credential"))
}

// redactCreds keeps every credential out of a message an agent sent back.
func (c *Client) redactCreds(msg string) string {
	for _, cr := range c.cfg.Credentials {
		msg = strings.ReplaceAll(msg, cr.Daemon, "[credential]")
		msg = strings.ReplaceAll(msg, cr.Agent, "[credential]")
	}
	return msg
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
