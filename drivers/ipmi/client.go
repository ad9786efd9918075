package ipmi

import (
	"context"
	"fmt"
	"sync"
	"time"

	goipmi "github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/power"
)

// Client is one host's IPMI fence level. It holds configuration only, so it
// is safe for concurrent use; each call has its own go-ipmi session.
type Client struct {
	cfg    Config
	priv   types.PrivilegeLevel
	suites []types.CipherSuiteID
	log    zerolog.Logger

	// sessions counts session goroutines still running (tests wait on it).
	sessions sync.WaitGroup
	// onSession, when set (tests only), sees every go-ipmi client created.
	onSession func(*goipmi.Client)
}

// New validates cfg and fills its defaults. It does no I/O.
func New(cfg Config, log zerolog.Logger) (*Client, error) {
	priv, suites, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg:    cfg,
		priv:   priv,
		suites: suites,
		log:    log.With().Str("component", "ipmi").Str("host", cfg.Host).Str("bmc", cfg.Addr).Logger(),
	}, nil
}

// PowerStatus reads the chassis power state.
func (c *Client) PowerStatus(ctx context.Context) (power.State, error) {
	return c.status(ctx, "ipmi: chassis status")
}

// Check is test-node's dry run: it proves the BMC answers, the credentials
// obtain the configured (at least operator) privilege, and the power state
// is readable. It never acts.
func (c *Client) Check(ctx context.Context) (power.State, error) {
	return c.status(ctx, "ipmi: check")
}

// PowerOff is a hard chassis power down (the fencing action).
func (c *Client) PowerOff(ctx context.Context) error {
	return c.control(ctx, "ipmi: chassis power off", chassis.ChassisControlPowerDown)
}

// PowerOn powers the chassis up.
func (c *Client) PowerOn(ctx context.Context) error {
	return c.control(ctx, "ipmi: chassis power on", chassis.ChassisControlPowerUp)
}

// PowerCycle powers the chassis down and up again (BMC-timed).
func (c *Client) PowerCycle(ctx context.Context) error {
	return c.control(ctx, "ipmi: chassis power cycle", chassis.ChassisControlPowerCycle)
}

// SoftOff asks the OS for an ACPI soft shutdown; it does not prove anything
// is off.
func (c *Client) SoftOff(ctx context.Context) error {
	return c.control(ctx, "ipmi: chassis soft off", chassis.ChassisControlSoftShutdown)
}

func (c *Client) status(ctx context.Context, step string) (power.State, error) {
	st := power.Unknown
	err := c.run(ctx, step, func(ctx context.Context, bmc *goipmi.Client) error {
		res, err := bmc.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		st = power.Off
		if res.PowerIsOn {
			st = power.On
		}
		return nil
	})
	if err != nil {
		return power.Unknown, err
	}
	return st, nil
}

func (c *Client) control(ctx context.Context, step string, action chassis.ChassisControl) error {
	return c.run(ctx, step, func(ctx context.Context, bmc *goipmi.Client) error {
		_, err := bmc.ChassisControl(ctx, action)
		return err
	})
}

// run does one session: connect, op, close. The session runs on its own
// goroutine, which alone owns the go-ipmi client; run returns when the
// session has closed or when ctx ends, whichever is first. Results written
// by op are visible to the caller only when run returns nil or op's error.
func (c *Client) run(ctx context.Context, step string, op func(context.Context, *goipmi.Client) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultOpTimeout)
		defer cancel()
	}
	start := time.Now()
	done := make(chan error, 1)
	c.sessions.Add(1)
	go func() {
		defer c.sessions.Done()
		c.session(ctx, step, op, done)
	}()

	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// Prefer a result that raced with the deadline.
		select {
		case err = <-done:
		default:
			err = &power.Error{Kind: power.KindTimeout, Host: c.cfg.Host, Step: step,
				Err: fmt.Errorf("no result from BMC %s before the context ended: %w", c.cfg.Addr, ctx.Err())}
		}
	}
	ev := c.log.Debug()
	if err != nil {
		ev = c.log.Info().Str("kind", power.KindOf(err).String()).Str("error", err.Error())
	}
	ev.Str("step", step).Dur("took", time.Since(start)).Msg("ipmi operation")
	return err
}

// session owns bmc from creation to Close. It sends the classified result
// on done (buffered): after Close when the operation succeeded, so a
// returned call leaves no session open on the BMC; before Close when it
// failed or ctx ended, because closing a session that never opened waits a
// Timeout for an answer that never comes, and nobody should wait for that.
func (c *Client) session(ctx context.Context, step string, op func(context.Context, *goipmi.Client) error, done chan<- error) {
	bmc, err := goipmi.NewClient(c.cfg.Addr, c.cfg.Port, c.cfg.Username, c.cfg.Password)
	if err != nil {
		done <- classify(ctx, c.cfg.Host, step, err)
		return
	}
	if c.onSession != nil {
		c.onSession(bmc)
	}
	bmc.WithInterface(goipmi.InterfaceLanplus).
		WithTimeout(c.cfg.Timeout).
		WithRetry(retries).
		WithCipherSuiteID(c.suites...).
		WithMaxPrivilegeLevel(c.priv)

	err = bmc.Connect(ctx)
	if err == nil {
		if ctx.Err() != nil {
			err = ctx.Err() // never act after the caller gave up
		} else {
			err = op(ctx, bmc)
		}
	}
	result := classify(ctx, c.cfg.Host, step, err)
	sent := false
	if result != nil {
		done <- result
		sent = true
	}
	if ctx.Err() != nil {
		// An abandoned exchange leaves a go-ipmi reader goroutine blocked
		// until its read deadline (at most one Timeout); let it finish
		// before Close touches the client's session state.
		time.Sleep(c.cfg.Timeout)
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	if cerr := bmc.Close(closeCtx); cerr != nil {
		c.log.Debug().Str("step", step).Str("error", oneLine{cerr}.Error()).Msg("ipmi close session")
	}
	cancel()
	if !sent {
		done <- nil
	}
}
