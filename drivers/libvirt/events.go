package libvirt

import (
	"context"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Events streams lifecycle events until ctx ends, then closes the channel.
// It survives libvirtd restarts and network cuts: a failed ping or a closed
// stream drops the connection, and it reconnects with capped exponential
// backoff. The first event after every (re)subscription has Resubscribed
// set and Kind EventOther, telling the consumer to re-list domains.
func (c *Client) Events(ctx context.Context) <-chan hypervisor.Event {
	out := make(chan hypervisor.Event, 64)
	go func() {
		defer close(out)
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			err := c.subscribeOnce(ctx, out)
			if ctx.Err() != nil {
				return
			}
			c.log.Warn().Err(err).Dur("retry_in", backoff).Msg("libvirt event stream lost")
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(backoff*2, 10*time.Second)
		}
	}()
	return out
}

// subscribeOnce runs one subscription until it fails or ctx ends.
func (c *Client) subscribeOnce(ctx context.Context, out chan<- hypervisor.Event) error {
	dialCtx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	cn, err := c.connection(dialCtx)
	cancel()
	if err != nil {
		return err
	}
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	var events <-chan golibvirt.DomainEventLifecycleMsg
	err = c.call(ctx, "libvirt: subscribe events", func(l *golibvirt.Libvirt) error {
		var err error
		events, err = l.LifecycleEvents(subCtx)
		return err
	})
	if err != nil {
		return err
	}
	if !send(ctx, out, hypervisor.Event{Host: c.cfg.Host, Resubscribed: true}) {
		return ctx.Err()
	}
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, c.cfg.PingInterval)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				c.drop(cn)
				return err
			}
		case m, ok := <-events:
			if !ok {
				c.drop(cn)
				return &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: c.cfg.Host, Step: "libvirt: events", Err: errStreamClosed}
			}
			ev := hypervisor.Event{Host: c.cfg.Host, UUID: FormatUUID(m.Dom.UUID), Name: m.Dom.Name, Kind: mapEvent(m.Event)}
			if !send(ctx, out, ev) {
				return ctx.Err()
			}
		}
	}
}

type streamError string

func (e streamError) Error() string { return string(e) }

const errStreamClosed = streamError("event stream closed")

func send(ctx context.Context, out chan<- hypervisor.Event, ev hypervisor.Event) bool {
	select {
	case out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func mapEvent(e int32) hypervisor.EventKind {
	switch golibvirt.DomainEventType(e) {
	case golibvirt.DomainEventDefined:
		return hypervisor.EventDefined
	case golibvirt.DomainEventUndefined:
		return hypervisor.EventUndefined
	case golibvirt.DomainEventStarted, golibvirt.DomainEventResumed:
		return hypervisor.EventStarted
	case golibvirt.DomainEventStopped:
		return hypervisor.EventStopped
	case golibvirt.DomainEventCrashed:
		return hypervisor.EventCrashed
	}
	return hypervisor.EventOther
}
