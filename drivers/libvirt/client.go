package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Config says how to reach one host's libvirtd.
type Config struct {
	Host string // our name for the host, for errors and logs
	// Address is host:port of libvirtd's TCP listener, or unix:/path of
	// its socket (the agent, on the host itself).
	Address string
	URI     string // driver URI, e.g. qemu:///system
	// CallTimeout caps a call whose context has no deadline. Default 30s.
	CallTimeout time.Duration
	// PingInterval is how often Events checks the connection. Default 5s.
	PingInterval time.Duration
}

// Client is a libvirtd connection that obeys contexts. Safe for concurrent
// use.
type Client struct {
	cfg Config
	log zerolog.Logger
	// sem guards cur and serialises dialing; a channel rather than a mutex
	// so a caller waiting for it still honours its context.
	sem chan struct{}
	cur *conn
}

type conn struct {
	l    *golibvirt.Libvirt
	nc   net.Conn
	once sync.Once
}

// close drops the TCP connection; go-libvirt then fails every request in
// flight on it.
func (c *conn) close() {
	c.once.Do(func() { _ = c.nc.Close() })
}

// New checks the config; it does no I/O.
func New(cfg Config, log zerolog.Logger) (*Client, error) {
	if cfg.Host == "" {
		return nil, errors.New("libvirt: Config.Host is required")
	}
	if path, ok := strings.CutPrefix(cfg.Address, "unix:"); ok {
		if path == "" {
			return nil, fmt.Errorf("libvirt: host %s: address %q: empty socket path", cfg.Host, cfg.Address)
		}
	} else if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		return nil, fmt.Errorf("libvirt: host %s: address %q: %w", cfg.Host, cfg.Address, err)
	}
	if cfg.URI == "" {
		cfg.URI = string(golibvirt.QEMUSystem)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 30 * time.Second
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 5 * time.Second
	}
	return &Client{
		cfg: cfg,
		log: log.With().Str("component", "libvirt").Str("host", cfg.Host).Logger(),
		sem: make(chan struct{}, 1),
	}, nil
}

// Close drops the connection. The Client may still be used: the next call
// dials again.
func (c *Client) Close() error {
	c.sem <- struct{}{}
	defer func() { <-c.sem }()
	if c.cur != nil {
		_ = c.cur.l.Disconnect()
		c.cur.close()
		c.cur = nil
	}
	return nil
}

func (c *Client) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.cfg.CallTimeout)
}

// connection returns the live connection, dialing if there is none.
func (c *Client) connection(ctx context.Context) (*conn, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, c.ctxErr(ctx, "libvirt: connect")
	}
	defer func() { <-c.sem }()
	if c.cur != nil && c.cur.l.IsConnected() {
		return c.cur, nil
	}
	if c.cur != nil {
		c.cur.close()
		c.cur = nil
	}
	d := net.Dialer{KeepAlive: 5 * time.Second}
	network, address := "tcp", c.cfg.Address
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		network, address = "unix", path
	}
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		if ctx.Err() != nil {
			return nil, c.ctxErr(ctx, "libvirt: connect")
		}
		return nil, &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: c.cfg.Host, Step: "libvirt: connect", Err: err}
	}
	cn := &conn{l: golibvirt.NewWithDialer(dialers.NewAlreadyConnected(nc)), nc: nc}
	done := make(chan error, 1)
	go func() { done <- cn.l.ConnectToURI(golibvirt.ConnectURI(c.cfg.URI)) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		cn.close()
		return nil, c.ctxErr(ctx, "libvirt: connect")
	}
	if err != nil {
		cn.close()
		return nil, &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: c.cfg.Host, Step: "libvirt: open " + c.cfg.URI, Err: err}
	}
	c.cur = cn
	return cn, nil
}

// drop forgets cn if it is still current, and closes it.
func (c *Client) drop(cn *conn) {
	cn.close()
	go func() {
		c.sem <- struct{}{}
		if c.cur == cn {
			c.cur = nil
		}
		<-c.sem
	}()
}

// call runs fn on the live connection under ctx. fn runs in its own
// goroutine because go-libvirt cannot be interrupted; on deadline we close
// the connection, which makes fn return soon after.
func (c *Client) call(ctx context.Context, step string, fn func(*golibvirt.Libvirt) error) error {
	ctx, cancel := c.withDeadline(ctx)
	defer cancel()
	cn, err := c.connection(ctx)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fn(cn.l) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		c.drop(cn)
		return c.ctxErr(ctx, step)
	}
	if err == nil {
		return nil
	}
	if !cn.l.IsConnected() || isConnError(err) {
		c.drop(cn)
		return &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: c.cfg.Host, Step: step, Err: err}
	}
	return &hypervisor.Error{Kind: classify(err), Host: c.cfg.Host, Step: step, Err: err}
}

func (c *Client) ctxErr(ctx context.Context, step string) error {
	kind := hypervisor.KindTimeout
	if errors.Is(ctx.Err(), context.Canceled) {
		kind = hypervisor.KindUnknown
	}
	return &hypervisor.Error{Kind: kind, Host: c.cfg.Host, Step: step, Err: ctx.Err()}
}

func isConnError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var le golibvirt.Error
	if errors.As(err, &le) {
		return false
	}
	s := err.Error()
	return strings.Contains(s, "use of closed network connection") || strings.Contains(s, "EOF") ||
		strings.Contains(s, "connection reset") || strings.Contains(s, "broken pipe")
}

// classify maps libvirt error codes to kinds the core reasons about.
func classify(err error) hypervisor.Kind {
	var le golibvirt.Error
	if !errors.As(err, &le) {
		return hypervisor.KindUnknown
	}
	msg := strings.ToLower(le.Message)
	switch golibvirt.ErrorNumber(le.Code) {
	case golibvirt.ErrNoDomain:
		return hypervisor.KindNotFound
	case golibvirt.ErrXMLError, golibvirt.ErrXMLDetail, golibvirt.ErrOperationInvalid, golibvirt.ErrInvalidArg:
		return hypervisor.KindInvalid
	}
	// QEMU's image locking is our last split-brain guard: surface it as
	// its own kind so it is alerted, not retried elsewhere blindly.
	if strings.Contains(msg, "lock") && (strings.Contains(msg, "write") || strings.Contains(msg, "image")) {
		return hypervisor.KindConflict
	}
	if strings.Contains(msg, "already exists") || strings.Contains(msg, "already defined") {
		return hypervisor.KindConflict
	}
	return hypervisor.KindUnknown
}
