package evacuator

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Defaults for SampleStale.
const (
	// DefaultPlanSampleAge is how old a host's last sample may be for a
	// plan to use it as it is; an older (or missing) one is taken again at
	// plan time.
	DefaultPlanSampleAge = 15 * time.Second
	// DefaultPlanSampleTimeout bounds the plan-time samples together.
	DefaultPlanSampleTimeout = 5 * time.Second
)

// Sample asks host's libvirt now for its node figures and its active
// domains, and updates HostLoad. Unlike a capture it needs no healthy
// monitor state and writes no inventory: it only measures, so it is safe
// on a host the daemon has not judged yet (a restart) and is how a plan
// learns capacity it has not seen. A host answering it is alive.
func (c *Capture) Sample(ctx context.Context, host string) (HostLoad, error) {
	c.mu.Lock()
	st := c.hosts[host]
	c.mu.Unlock()
	if st == nil {
		return HostLoad{}, fmt.Errorf("sample host %s: %w", host, ErrCaptureUnknownHost)
	}
	lock := c.lockOf(host)
	select {
	case lock <- struct{}{}:
	case <-ctx.Done():
		return HostLoad{}, fmt.Errorf("sample host %s: wait for the capture in progress: %w", host, ctx.Err())
	}
	defer func() { <-lock }()
	hv, err := c.deps.Hypervisor(host)
	if err != nil {
		return HostLoad{}, fmt.Errorf("sample host %s: hypervisor: %w", host, err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	doms, err := hv.Domains(cctx, true)
	cancel()
	if err != nil {
		return HostLoad{}, fmt.Errorf("sample host %s: list domains: %w", host, err)
	}
	sctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	ns, err := hv.NodeStats(sctx)
	cancel()
	if err != nil {
		c.statsFailures.Add(1)
		return HostLoad{}, fmt.Errorf("sample host %s: node stats: %w", host, err)
	}
	at := c.clock.Now()
	usedVCPUs, usedMiB := c.usedBy(st, doms)
	c.mu.Lock()
	defer c.mu.Unlock()
	st.load.usedVCPUs, st.load.usedMiB = usedVCPUs, usedMiB
	st.load.add(ns, at, c.cfg.Interval/2)
	l, _ := st.load.of(at, 3*c.cfg.Interval) // a sample was just added
	return l, nil
}

// SampleResult is one host's plan-time view: its load, or why it has none.
type SampleResult struct {
	Load HostLoad
	OK   bool
	// Sampled: taken now rather than from the last capture.
	Sampled bool
	Err     error
}

// SampleStale returns every host's load for a plan: the last sample when
// it is at most maxAge old and fresh is false for the host, else a new
// one taken now, all hosts in parallel, within ctx's deadline. fresh names
// the hosts that must be sampled now whatever their last sample (a host
// the daemon has not judged: only its answer now says it is alive).
func (c *Capture) SampleStale(ctx context.Context, hosts []string, maxAge time.Duration, fresh func(host string) bool) map[string]SampleResult {
	out := make(map[string]SampleResult, len(hosts))
	var mu sync.Mutex
	var wg sync.WaitGroup
	now := c.clock.Now()
	for _, h := range hosts {
		if l, ok := c.HostLoad(h); ok && (fresh == nil || !fresh(h)) && now.Sub(l.At) <= maxAge {
			out[h] = SampleResult{Load: l, OK: true}
			continue
		}
		wg.Go(func() {
			l, err := c.Sample(ctx, h)
			mu.Lock()
			out[h] = SampleResult{Load: l, OK: err == nil, Sampled: true, Err: err}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}
