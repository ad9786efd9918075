package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/drivers/probe"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/power"
	"github.com/chimestack/chime-fence/readiness"
)

// hostDrivers adapts the drivers to the detector's interfaces, per host.
// configure swaps the whole set atomically on a config reload.
type hostDrivers struct {
	prober *probe.Prober
	log    zerolog.Logger

	now func() time.Time

	mu    sync.RWMutex
	cfg   *configs.Config
	hosts map[string]*hostDriver
	refs  []probe.Target
}

// authBackoff is how long the detector leaves a BMC that refused its
// credentials alone: re-reading it every detection window would lock the
// account on BMCs that count failures (and the fence level needs it). A
// config reload (a corrected password) starts over.
const authBackoff = 5 * time.Minute

type hostDriver struct {
	host *configs.Host
	// power lists the BMCs the detector may read, fence levels' BMCs first;
	// powerErr says why one could not be built.
	power    []fencer.PowerController
	powerErr []error
	targets  []probe.Target

	mu         sync.Mutex
	authFailed []time.Time // per power entry: when it last refused our credentials
}

var (
	_ detector.Prober           = (*hostDrivers)(nil)
	_ detector.ReferenceProber  = (*hostDrivers)(nil)
	_ detector.PowerReader      = (*hostDrivers)(nil)
	_ detector.ReadinessChecker = (*hostDrivers)(nil)
)

func newHostDrivers(p *probe.Prober, log zerolog.Logger) *hostDrivers {
	return &hostDrivers{prober: p, log: log, hosts: map[string]*hostDriver{}, now: time.Now}
}

func (d *hostDrivers) configure(cfg *configs.Config) {
	hosts := make(map[string]*hostDriver, len(cfg.Hosts))
	for i := range cfg.Hosts {
		h := &cfg.Hosts[i]
		hd := &hostDriver{host: h, targets: probeTargets(h)}
		for _, b := range readBMCs(h) {
			pc, err := powerController(h, b, d.log)
			hd.power, hd.powerErr = append(hd.power, pc), append(hd.powerErr, err)
		}
		hd.authFailed = make([]time.Time, len(hd.power))
		hosts[h.Name] = hd
	}
	var refs []probe.Target
	for _, a := range cfg.Detection.ReferenceAddresses {
		if _, _, err := net.SplitHostPort(a); err == nil {
			refs = append(refs, probe.Target{Kind: probe.KindTCP, Addr: a})
		} else {
			refs = append(refs, probe.Target{Kind: probe.KindICMP, Addr: a})
		}
	}
	d.mu.Lock()
	d.cfg, d.hosts, d.refs = cfg, hosts, refs
	d.mu.Unlock()
}

// readBMCs orders the BMCs whose power state the detector reads: those of
// the fence levels in level order, then any other.
func readBMCs(h *configs.Host) []configs.BMC {
	var out []configs.BMC
	seen := map[configs.BMCType]bool{}
	for _, l := range h.Effective.Levels {
		if t := l.Type.BMCType(); t != "" && !seen[t] {
			if b, ok := h.BMC(t); ok {
				out, seen[t] = append(out, b), true
			}
		}
	}
	for _, b := range h.BMCs {
		if !seen[b.Type] {
			out, seen[b.Type] = append(out, b), true
		}
	}
	return out
}

// probeTargets: the agent's and libvirtd's TCP ports and ICMP to the
// management address.
func probeTargets(h *configs.Host) []probe.Target {
	var t []probe.Target
	if u, err := url.Parse(h.Agent.URL); err == nil && u.Host != "" {
		addr := u.Host
		if u.Port() == "" {
			port := "80"
			if u.Scheme == "https" {
				port = "443"
			}
			addr = net.JoinHostPort(u.Hostname(), port)
		}
		t = append(t, probe.Target{Kind: probe.KindTCP, Addr: addr})
	}
	if a := h.Libvirt.Address; a != "" && !strings.HasPrefix(a, "unix:") {
		t = append(t, probe.Target{Kind: probe.KindTCP, Addr: a})
	}
	if h.Address != "" {
		t = append(t, probe.Target{Kind: probe.KindICMP, Addr: h.Address})
	}
	return t
}

func (d *hostDrivers) get(host string) (*hostDriver, *configs.Config) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.hosts[host], d.cfg
}

func (d *hostDrivers) ProbeHost(ctx context.Context, host string) (bool, bool, string) {
	hd, _ := d.get(host)
	if hd == nil || len(hd.targets) == 0 {
		return false, false, "no probe targets configured"
	}
	return summarize(d.prober.Round(ctx, hd.targets))
}

func (d *hostDrivers) ProbeReferences(ctx context.Context) (bool, string) {
	d.mu.RLock()
	refs := d.refs
	d.mu.RUnlock()
	answered, conclusive, detail := summarize(d.prober.Round(ctx, refs))
	// A reference round that could not run proves nothing about our
	// network; do not pause on it.
	return answered || !conclusive, detail
}

// summarize: answered if any target answered; conclusive if any answer is
// evidence (answered or silent); detail lists every target.
func summarize(r probe.Result) (answered, conclusive bool, detail string) {
	parts := make([]string, 0, len(r.Answers))
	for _, a := range r.Answers {
		switch {
		case a.Answered:
			answered, conclusive = true, true
			parts = append(parts, fmt.Sprintf("%s answered in %s", a.Target, a.RTT.Round(time.Microsecond)))
		case a.Unsupported:
			parts = append(parts, fmt.Sprintf("%s not probed: %s", a.Target, a.Err))
		default:
			conclusive = true
			parts = append(parts, fmt.Sprintf("%s: %s", a.Target, a.Err))
		}
	}
	return answered, conclusive, strings.Join(parts, "; ")
}

// ReadPower asks the host's BMCs in order and returns the first reading;
// when none answers, the errors of all of them. A host whose IPMI password
// is wrong but whose Redfish BMC answers is still judged on evidence.
func (d *hostDrivers) ReadPower(ctx context.Context, host string) (power.State, error) {
	hd, _ := d.get(host)
	if hd == nil {
		return power.Unknown, &power.Error{Kind: power.KindConfig, Host: host, Step: "read power", Err: fmt.Errorf("host not configured")}
	}
	if len(hd.power) == 0 {
		return power.Unknown, &power.Error{Kind: power.KindConfig, Host: host, Step: "read power", Err: fmt.Errorf("no BMC configured")}
	}
	var errs []error
	for i, pc := range hd.power {
		if hd.powerErr[i] != nil {
			errs = append(errs, hd.powerErr[i])
			continue
		}
		now := d.now()
		hd.mu.Lock()
		failedAt := hd.authFailed[i]
		hd.mu.Unlock()
		if !failedAt.IsZero() && now.Sub(failedAt) < authBackoff {
			errs = append(errs, &power.Error{Kind: power.KindAuth, Host: host, Step: "read power",
				Err: fmt.Errorf("BMC %d refused our credentials at %s; not asked again for %s, to spare its account", i+1,
					failedAt.Format(time.RFC3339), authBackoff)})
			continue
		}
		st, err := pc.PowerStatus(ctx)
		hd.mu.Lock()
		switch {
		case errors.Is(err, power.ErrAuth):
			hd.authFailed[i] = now
		case err == nil:
			hd.authFailed[i] = time.Time{}
		}
		hd.mu.Unlock()
		if err == nil {
			return st, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 1 {
		return power.Unknown, errs[0]
	}
	return power.Unknown, errors.Join(errs...)
}

func (d *hostDrivers) CheckReadiness(ctx context.Context, host string) detector.Readiness {
	hd, cfg := d.get(host)
	if hd == nil {
		return detector.Readiness{Summary: "host not configured"}
	}
	t, closeFn := readinessTarget(cfg, hd.host, d.log.Level(zerolog.WarnLevel))
	defer closeFn()
	t.Timeout = cfg.Detection.ProbeTimeout * 5
	r := readiness.Run(ctx, t, time.Now)
	return detector.Readiness{At: time.Now(), Ready: r.Ready, Summary: r.Summary}
}
