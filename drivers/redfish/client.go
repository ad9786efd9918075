package redfish

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/schemas"

	"github.com/chimestack/chime-fence/power"
)

// Reset types this driver sends (DMTF ResetType).
const (
	ResetForceOff         = "ForceOff"
	ResetOn               = "On"
	ResetPowerCycle       = "PowerCycle"
	ResetForceRestart     = "ForceRestart"
	ResetGracefulShutdown = "GracefulShutdown"
)

// Client is one host's Redfish fence level. It holds configuration only, so
// it is safe for concurrent use: every call has its own HTTP transport,
// gofish client and BMC session.
type Client struct {
	cfg Config
	tls *tls.Config
	log zerolog.Logger

	// logouts counts session DELETEs still running after their call
	// returned (ctx ended first); tests wait on it.
	logouts sync.WaitGroup
}

// New validates cfg and fills its defaults. It reads CAFile but does no
// network I/O.
func New(cfg Config, log zerolog.Logger) (*Client, error) {
	tc, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	c := &Client{
		cfg: cfg,
		tls: tc,
		log: log.With().Str("component", "redfish").Str("host", cfg.Host).Str("bmc", cfg.Endpoint).Logger(),
	}
	if strings.HasPrefix(cfg.Endpoint, "http://") {
		c.log.Warn().Msg("endpoint is plain http: credentials cross the network unencrypted; use https outside a lab")
	}
	return c, nil
}

// PowerStatus reads the system's PowerState. PoweringOff is not Off.
func (c *Client) PowerStatus(ctx context.Context) (power.State, error) {
	st := power.Unknown
	err := c.run(ctx, "redfish: power status", func(op *operation) error {
		sys, err := op.system()
		if err != nil {
			return err
		}
		st, err = op.state(sys)
		return err
	})
	return st, err
}

// Check is test-node's dry run: it connects, authenticates, reads the power
// state and verifies ForceOff is an allowed reset type. It never acts. When
// the BMC publishes no list of allowed reset types (neither
// AllowableValues nor ActionInfo) ForceOff cannot be verified and Check
// passes with a warning in the log; AllowedResetTypes then returns nil.
func (c *Client) Check(ctx context.Context) (power.State, error) {
	st := power.Unknown
	err := c.run(ctx, "redfish: check", func(op *operation) error {
		sys, err := op.system()
		if err != nil {
			return err
		}
		if st, err = op.state(sys); err != nil {
			return err
		}
		_, err = op.require(sys, ResetForceOff)
		return err
	})
	return st, err
}

// AllowedResetTypes returns the reset types the system advertises, from
// ResetType@Redfish.AllowableValues or else its @Redfish.ActionInfo; nil if
// it advertises none.
func (c *Client) AllowedResetTypes(ctx context.Context) ([]string, error) {
	var types []string
	err := c.run(ctx, "redfish: allowed reset types", func(op *operation) error {
		sys, err := op.system()
		if err != nil {
			return err
		}
		types, _, err = op.allowed(sys)
		return err
	})
	return types, err
}

// PowerOff sends ForceOff (hard power off, the fencing action). A BMC that
// answers 400 or 409 because the system is already off counts as success
// once a fresh GET reads Off. It does not wait for Off: read back with
// PowerStatus.
func (c *Client) PowerOff(ctx context.Context) error {
	return c.reset(ctx, power.Off, ResetForceOff)
}

// PowerOn sends On; 400/409 on a system a fresh GET reads On is success.
func (c *Client) PowerOn(ctx context.Context) error {
	return c.reset(ctx, power.On, ResetOn)
}

// PowerCycle sends PowerCycle, or ForceRestart when the BMC allows only
// that.
func (c *Client) PowerCycle(ctx context.Context) error {
	return c.reset(ctx, power.Unknown, ResetPowerCycle, ResetForceRestart)
}

// SoftOff sends GracefulShutdown (the OS is asked to shut down; nothing is
// proven off). 400/409 on a system a fresh GET reads Off is success.
func (c *Client) SoftOff(ctx context.Context) error {
	return c.reset(ctx, power.Off, ResetGracefulShutdown)
}

// reset sends the first of types the system allows. already is the state in
// which a 400/409 answer means "nothing to do" (Unknown: none).
func (c *Client) reset(ctx context.Context, already power.State, types ...string) error {
	return c.run(ctx, "redfish: reset "+types[0], func(op *operation) error {
		sys, err := op.system()
		if err != nil {
			return err
		}
		rt, err := op.require(sys, types...)
		if err != nil {
			return err
		}
		op.step = "redfish: reset " + rt
		if _, err := sys.Reset(schemas.ResetType(rt)); err != nil {
			status := httpStatus(err)
			if already == power.Unknown || (status != 400 && status != 409) || op.ctx.Err() != nil {
				return op.fail(err)
			}
			// Vendors answer ForceOff on an Off system with 409 or 400; only a
			// fresh read decides whether that is "done" or a real refusal.
			first := op.fail(err)
			op.step = "redfish: re-read power after refused " + rt
			fresh, gerr := schemas.GetComputerSystem(op.api, sys.ODataID)
			if gerr != nil {
				return errors.Join(first, op.fail(gerr))
			}
			st, serr := op.state(fresh)
			if serr != nil {
				return errors.Join(first, serr)
			}
			if st != already {
				var pe *power.Error
				errors.As(first, &pe)
				return &power.Error{Kind: power.KindRefused, Host: c.cfg.Host, Step: "redfish: reset " + rt,
					Err: fmt.Errorf("system reads %s, not %s, after the BMC refused %s: %w", st, already, rt, pe.Err)}
			}
			c.log.Info().Str("reset", rt).Int("status", status).Stringer("power", st).
				Msg("BMC refused the reset because the system is already in that state; counted as done")
			return nil
		}
		c.log.Info().Str("reset", rt).Str("system", sys.ID).Msg("reset accepted")
		return nil
	})
}

// operation is one call's connection: one gofish client, one session.
type operation struct {
	c    *Client
	ctx  context.Context
	api  *gofish.APIClient
	step string
}

func (op *operation) fail(err error) error {
	secrets := []string{op.c.cfg.Password}
	if op.api != nil {
		if s, e := op.api.GetSession(); e == nil {
			secrets = append(secrets, s.Token)
		}
	}
	return fail(op.ctx, op.c.cfg.Host, op.step, err, secrets...)
}

// run connects (creating a session unless Auth is basic), runs fn, and
// always logs out, whether fn failed or ctx ended.
func (c *Client) run(ctx context.Context, step string, fn func(*operation) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultOpTimeout)
		defer cancel()
	}
	op := &operation{c: c, ctx: ctx, step: step}
	if err := ctx.Err(); err != nil {
		return op.fail(err)
	}
	tr := c.transport()
	defer tr.CloseIdleConnections()
	hc := &http.Client{
		Transport: tr,
		Timeout:   c.cfg.Timeout,
		// A redirect would carry X-Auth-Token to wherever it points.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	api, err := gofish.ConnectContext(ctx, gofish.ClientConfig{
		Endpoint:          c.cfg.Endpoint,
		Username:          c.cfg.Username,
		Password:          c.cfg.Password,
		HTTPClient:        hc,
		BasicAuth:         c.cfg.Auth == AuthBasic,
		NoModifyTransport: true, // our transport already holds the TLS policy
		ReuseConnections:  true, // one TLS handshake per call, not per request
	})
	if err != nil {
		// A session POST that reached the BMC but whose answer was lost
		// (ctx ended mid-response) leaves a session we cannot name; the
		// BMC's session timeout reaps it.
		return op.fail(err)
	}
	op.api = api
	defer c.logout(ctx, api)
	return fn(op)
}

func (c *Client) transport() *http.Transport {
	d := &net.Dialer{Timeout: c.cfg.Timeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil, // BMC networks are reached directly, never via HTTP(S)_PROXY
		DialContext:           d.DialContext,
		TLSClientConfig:       c.tls.Clone(),
		TLSHandshakeTimeout:   c.cfg.Timeout,
		ResponseHeaderTimeout: c.cfg.Timeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       30 * time.Second,
	}
}

// logout deletes the session with a context of its own (gofish's Logout
// would reuse the ended ctx, or fall back to one without deadline). It
// waits for the DELETE while ctx lives; once ctx ends the DELETE finishes
// on its own, bounded by logoutTimeout, so the caller's deadline holds.
func (c *Client) logout(ctx context.Context, api *gofish.APIClient) {
	if c.cfg.Auth == AuthBasic {
		return
	}
	// gofish reports "not authenticated" when the login answer had no
	// Location, although it holds a token.
	sess, err := api.GetSession()
	if err != nil || sess.ID == "" {
		c.log.Warn().Msg("BMC returned a session token but no Location: cannot log out; the session stays until the BMC times it out")
		return
	}
	c.logouts.Add(1)
	done := make(chan struct{})
	go func() {
		defer c.logouts.Done()
		defer close(done)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(logoutTimeout, c.cfg.Timeout))
		defer cancel()
		if err := api.WithContext(lctx).Service.DeleteSession(sess.ID); err != nil {
			err = fail(lctx, c.cfg.Host, "redfish: logout", err, c.cfg.Password, sess.Token)
			c.log.Warn().Err(err).Msg("logout failed; the BMC keeps the session until it times out")
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// system finds the configured system, or the only one.
func (op *operation) system() (*schemas.ComputerSystem, error) {
	step := op.step
	op.step = "redfish: find system"
	defer func() { op.step = step }()
	systems, err := op.api.Service.Systems()
	if err != nil {
		return nil, op.fail(err)
	}
	ids := make([]string, len(systems))
	for i, s := range systems {
		ids[i] = s.ID
		if ids[i] == "" {
			ids[i] = path.Base(s.ODataID)
		}
	}
	host := op.c.cfg.Host
	if want := op.c.cfg.SystemID; want != "" {
		for i, s := range systems {
			if ids[i] == want || path.Base(s.ODataID) == want {
				return s, nil
			}
		}
		return nil, power.Errorf(power.KindConfig, host, op.step, "system id %q not found; the BMC has %s", want, quoteList(ids))
	}
	switch len(systems) {
	case 0:
		return nil, power.Errorf(power.KindProtocol, host, op.step, "the BMC lists no ComputerSystem")
	case 1:
		return systems[0], nil
	}
	return nil, power.Errorf(power.KindConfig, host, op.step,
		"the BMC has %d systems (%s): set system_id to choose one", len(systems), quoteList(ids))
}

func quoteList(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = fmt.Sprintf("%q", id)
	}
	return strings.Join(q, ", ")
}

func (op *operation) state(sys *schemas.ComputerSystem) (power.State, error) {
	switch sys.PowerState {
	case schemas.OnPowerState:
		return power.On, nil
	case schemas.OffPowerState:
		return power.Off, nil
	case schemas.PoweringOnPowerState:
		return power.PoweringOn, nil
	case schemas.PoweringOffPowerState:
		return power.PoweringOff, nil
	case schemas.PausedPowerState:
		// Paused still holds the workload in memory: never "off".
		return power.On, nil
	}
	return power.Unknown, power.Errorf(power.KindProtocol, op.c.cfg.Host, op.step,
		"system %q reports PowerState %q, not one of On, Off, PoweringOn, PoweringOff, Paused", sys.ID, sys.PowerState)
}

// allowed reads the advertised reset types, following @Redfish.ActionInfo
// when AllowableValues is absent. published is false when there is neither.
func (op *operation) allowed(sys *schemas.ComputerSystem) (types []string, published bool, err error) {
	step := op.step
	op.step = "redfish: allowed reset types"
	defer func() { op.step = step }()
	rts, err := sys.GetSupportedResetTypes()
	if err != nil {
		return nil, false, op.fail(err)
	}
	for _, t := range rts {
		types = append(types, string(t))
	}
	return types, len(types) > 0, nil
}

// require picks the first of want the system allows, before anything is
// sent. An unpublished list allows want[0].
func (op *operation) require(sys *schemas.ComputerSystem, want ...string) (string, error) {
	types, published, err := op.allowed(sys)
	if err != nil {
		return "", err
	}
	if !published {
		op.c.log.Warn().Str("reset", want[0]).Msg("BMC publishes no allowed reset types (no AllowableValues, no ActionInfo); cannot verify before acting")
		return want[0], nil
	}
	for _, w := range want {
		if slices.Contains(types, w) {
			return w, nil
		}
	}
	return "", power.Errorf(power.KindRefused, op.c.cfg.Host, op.step,
		"reset type %s not allowed by system %q (allowed: %s); nothing was sent", strings.Join(want, " or "), sys.ID, strings.Join(types, ", "))
}
