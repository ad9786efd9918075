package agent

import (
	"context"
	"fmt"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

// evict gets rid of this host's copies of domains that now run elsewhere
// (Assignment.Evicted): destroy if active, then undefine. A domain libvirt
// does not list is done. It returns one failed check per domain it could
// not finish, for the heartbeat's Health.Evictions; the next round retries.
// local is a fresh listing, or nil with listErr when listing failed.
func (a *Agent) evict(ctx context.Context, evicted []heartbeat.AssignedDomain, local []hypervisor.Domain, listErr error) []heartbeat.Check {
	log := a.logger("evict")
	var faults []heartbeat.Check
	fail := func(e heartbeat.AssignedDomain, err error) {
		faults = append(faults, heartbeat.Check{Name: e.Name + " " + e.UUID, Detail: err.Error()})
	}
	if listErr != nil {
		for _, e := range evicted {
			fail(e, fmt.Errorf("cannot list domains: %w", listErr))
		}
		log.Error().Err(listErr).Int("evicted", len(evicted)).Msg("cannot list domains: evicted domains not cleaned up; retrying next round")
		return faults
	}
	byUUID := make(map[string]hypervisor.Domain, len(local))
	for _, d := range local {
		byUUID[d.UUID] = d
	}
	// After libvirtd stops answering, the remaining domains are not tried:
	// each would wait a full call timeout for the same answer.
	var down error
	for _, e := range evicted {
		d, ok := byUUID[e.UUID]
		if !ok {
			log.Debug().Str("uuid", e.UUID).Str("domain", e.Name).Int("listed", len(local)).Msg("evicted domain not defined here")
			continue
		}
		ev := log.With().Str("uuid", e.UUID).Str("domain", d.Name).Str("state", d.State.String()).Logger()
		if down != nil {
			fail(e, down)
			continue
		}
		if d.State.Active() {
			err := a.call(ctx, func(ctx context.Context) error { return a.hv.Destroy(ctx, e.UUID) })
			switch k := hypervisor.KindOf(err); {
			case err == nil:
				ev.Warn().Msg("evicted domain destroyed: it runs on another host now")
			case k == hypervisor.KindNotFound:
				ev.Info().Msg("evicted domain vanished before destroy")
				continue
			case k == hypervisor.KindInvalid:
				ev.Info().Err(err).Msg("evicted domain stopped before destroy")
			default:
				ev.Error().Err(err).Msg("evicted domain: destroy failed; retrying next round")
				fail(e, fmt.Errorf("destroy: %w", err))
				if k == hypervisor.KindUnreachable || k == hypervisor.KindTimeout {
					down = err
				}
				continue // never undefine a domain that may still run
			}
		}
		err := a.call(ctx, func(ctx context.Context) error { return a.hv.Undefine(ctx, e.UUID) })
		switch k := hypervisor.KindOf(err); {
		case err == nil:
			ev.Warn().Msg("evicted domain undefined")
		case k == hypervisor.KindNotFound:
			ev.Info().Msg("evicted domain already undefined (transient)")
		default:
			ev.Error().Err(err).Msg("evicted domain: undefine failed; retrying next round")
			fail(e, fmt.Errorf("undefine: %w", err))
			if k == hypervisor.KindUnreachable || k == hypervisor.KindTimeout {
				down = err
			}
		}
	}
	return faults
}

// call runs one libvirt call under CallTimeout.
func (a *Agent) call(ctx context.Context, fn func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, a.cfg.CallTimeout)
	defer cancel()
	return fn(cctx)
}

// evictionHealth is what a heartbeat reports about evicted domains: the
// last cleanup's failures, plus every evicted domain the heartbeat's own
// listing still shows (its cleanup has not run since, or has not finished).
// So no heartbeat that lists an evicted domain is fault-free, and the
// daemon never sees the host ready while a stale copy is defined.
func evictionHealth(failed []heartbeat.Check, evicted []heartbeat.AssignedDomain, doms []heartbeat.Domain) []heartbeat.Check {
	out := append([]heartbeat.Check(nil), failed...)
	if len(evicted) == 0 || len(doms) == 0 {
		return out
	}
	named := make(map[string]bool, len(out))
	for _, c := range out {
		named[c.Name] = true
	}
	listed := make(map[string]bool, len(doms))
	for _, d := range doms {
		listed[d.UUID] = true
	}
	for _, e := range evicted {
		if n := e.Name + " " + e.UUID; listed[e.UUID] && !named[n] {
			out = append(out, heartbeat.Check{Name: n, Detail: "still defined here; cleanup pending"})
			named[n] = true
		}
	}
	return out
}
