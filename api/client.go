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
	"github.com/chimestack/chime-fence/operations"
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
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		var eb ErrorBody
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		err := fmt.Errorf("api: %s %s: HTTP %d: %s", method, path, resp.StatusCode, msg)
		if kind := statusErr(resp.StatusCode); kind != nil {
			err = fmt.Errorf("%w: %w", kind, err)
		}
		return err
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("api: %s %s: malformed answer: %w", method, path, err)
	}
	return nil
}

// statusErr maps an HTTP status onto the error callers test with errors.Is.
func statusErr(code int) error {
	switch code {
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return ErrBadRequest
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	case http.StatusNotImplemented, http.StatusServiceUnavailable:
		return ErrUnavailable
	}
	return nil
}

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (daemon.Status, error) {
	var s daemon.Status
	return s, c.get(ctx, PathStatus, nil, &s)
}

// Host is GET /v1/hosts/{name}, reading only the daemon's view of the
// host (see ShowHost for the fence and lock too).
func (c *Client) Host(ctx context.Context, name string) (daemon.HostStatus, error) {
	var h daemon.HostStatus
	return h, c.get(ctx, PathHosts+url.PathEscape(name), nil, &h)
}

// ShowHost is GET /v1/hosts/{name} with everything it answers: the
// daemon's view, the latest fence and the task holding the host's lock.
func (c *Client) ShowHost(ctx context.Context, name string) (HostInfo, error) {
	var h HostInfo
	return h, c.get(ctx, PathHosts+url.PathEscape(name), nil, &h)
}

// Hosts is GET /v1/hosts: every host, sorted by name.
func (c *Client) Hosts(ctx context.Context) ([]HostInfo, error) {
	var b HostsBody
	return b.Hosts, c.get(ctx, PathHostList, nil, &b)
}

// StartOperation is POST /v1/hosts/{host}/operations/{op}: it returns the
// started task (202). A refusal is ErrConflict (the host's state or a
// running task), ErrBadRequest, ErrNotFound (no such host), ErrUnauthorized
// or ErrUnavailable, with the daemon's reason in the text. req.Host,
// req.Op and req.Actor are not sent (the path and the token say them).
func (c *Client) StartOperation(ctx context.Context, host string, op operations.Op, req operations.Request) (operations.Task, error) {
	var t operations.Task
	return t, c.do(ctx, http.MethodPost, PathHosts+url.PathEscape(host)+"/operations/"+url.PathEscape(string(op)), nil, req, &t)
}

// Task is GET /v1/tasks/{id}.
func (c *Client) Task(ctx context.Context, id string) (operations.Task, error) {
	var t operations.Task
	return t, c.get(ctx, PathTasks+"/"+url.PathEscape(id), nil, &t)
}

// CancelTask is POST /v1/tasks/{id}/cancel: an operator ends a task.
func (c *Client) CancelTask(ctx context.Context, id, reason string) (operations.Task, error) {
	var t operations.Task
	return t, c.do(ctx, http.MethodPost, PathTasks+"/"+url.PathEscape(id)+"/cancel", nil, operations.Request{Reason: reason}, &t)
}

// Tasks is GET /v1/tasks?host=H: the host's tasks (every host's when host
// is ""), oldest first.
func (c *Client) Tasks(ctx context.Context, host string) ([]operations.Task, error) {
	v := url.Values{}
	if host != "" {
		v.Set("host", host)
	}
	var b TasksBody
	return b.Tasks, c.get(ctx, PathTasks, v, &b)
}

// Ready is GET /v1/readyz; a daemon that is not ready is ErrUnavailable
// naming its problems.
func (c *Client) Ready(ctx context.Context) (ReadyBody, error) {
	var b ReadyBody
	return b, c.get(ctx, PathReadyz, nil, &b)
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
