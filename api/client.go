package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/store"
)

// Client is the operator side of the API, used by the CLI.
type Client struct {
	Base  string // e.g. http://127.0.0.1:7480
	Token string
	HTTP  *http.Client
}

// ErrNotFound is a 404 from the daemon.
var ErrNotFound = errors.New("not found")

func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	return c.do(ctx, http.MethodGet, path, q, nil, out)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	u := strings.TrimRight(c.Base, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("api: %s %s: %w", method, path, err)
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, reqBody)
	if err != nil {
		return fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("api: daemon at %s not reachable: %w", c.Base, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode != http.StatusOK {
		var eb ErrorBody
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		err := fmt.Errorf("api: %s %s: HTTP %d: %s", method, path, resp.StatusCode, msg)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("api: %s %s: malformed answer: %w", method, path, err)
	}
	return nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (daemon.Status, error) {
	var s daemon.Status
	return s, c.get(ctx, PathStatus, nil, &s)
}

// Host is GET /v1/hosts/{name}.
func (c *Client) Host(ctx context.Context, name string) (daemon.HostStatus, error) {
	var h daemon.HostStatus
	return h, c.get(ctx, PathHosts+url.PathEscape(name), nil, &h)
}

// History is GET /v1/history.
func (c *Client) History(ctx context.Context, q store.Query) ([]store.Record, error) {
	v := url.Values{}
	if q.Host != "" {
		v.Set("host", q.Host)
	}
	if q.Kind != "" {
		v.Set("kind", q.Kind)
	}
	if q.CorrelationID != "" {
		v.Set("correlation_id", q.CorrelationID)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	var b HistoryBody
	return b.Records, c.get(ctx, PathHistory, v, &b)
}

// SetAdminState is PUT /v1/hosts/{name}/admin-state.
func (c *Client) SetAdminState(ctx context.Context, host string, req AdminRequest) (store.Record, error) {
	var rec store.Record
	return rec, c.do(ctx, http.MethodPut, PathHosts+url.PathEscape(host)+"/admin-state", nil, req, &rec)
}
