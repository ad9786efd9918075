package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
)

type jobKind int

const (
	jobLibvirt jobKind = iota
	jobInterface
	jobStorage
)

// result is what one run of a check produced.
type result struct {
	err     error
	domains []hypervisor.Domain // jobLibvirt only
}

// job is one health check. Each run happens in its own goroutine under a
// deadline: an NFS write or a libvirtd that stopped answering can block a
// syscall for minutes, and nothing may wait for that.
type job struct {
	name string
	kind jobKind
	run  func(ctx context.Context) result

	// Guarded by checker.mu.
	last     heartbeat.Check
	inflight bool
	done     bool // produced at least one result (or timed out once)
}

// checker runs the health checks and keeps their latest results. Nothing
// that reads results ever waits for a check.
type checker struct {
	jobs    []*job
	timeout time.Duration
	// observe sees every successful domain listing (Stops).
	observe func([]hypervisor.Domain)

	mu        sync.Mutex
	domains   []hypervisor.Domain
	domainsOK bool
	ioErrors  int
	ioDetail  string
	ready     chan struct{} // closed once every job has a result
	readyOnce sync.Once
}

func newChecker(jobs []*job, timeout time.Duration, observe func([]hypervisor.Domain)) *checker {
	for _, j := range jobs {
		j.last = heartbeat.Check{Name: j.name, OK: false, Detail: "not checked yet"}
	}
	c := &checker{jobs: jobs, timeout: timeout, observe: observe, ready: make(chan struct{})}
	if len(jobs) == 0 {
		close(c.ready)
	}
	return c
}

// round starts every check that is not still running from an earlier
// round, and returns at once. A check still running past its deadline
// keeps reporting "timed out".
func (c *checker) round(ctx context.Context) {
	for _, j := range c.jobs {
		c.mu.Lock()
		busy := j.inflight
		if !busy {
			j.inflight = true
		}
		c.mu.Unlock()
		if !busy {
			go c.runJob(ctx, j)
		}
	}
}

func (c *checker) runJob(ctx context.Context, j *job) {
	jctx, cancel := context.WithTimeout(ctx, c.timeout)
	done := make(chan result, 1)
	go func() { done <- j.run(jctx) }()
	select {
	case r := <-done:
		cancel()
		c.record(j, r, false)
	case <-jctx.Done():
		c.record(j, result{err: fmt.Errorf("timed out after %s", c.timeout)}, true)
		// The check may be stuck in a syscall; it is not started again
		// until it returns, so a hung NFS mount costs one goroutine.
		go func() {
			<-done
			cancel()
			c.mu.Lock()
			j.inflight = false
			c.mu.Unlock()
		}()
	}
}

func (c *checker) record(j *job, r result, timedOut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !timedOut {
		j.inflight = false
	}
	j.last = heartbeat.Check{Name: j.name, OK: r.err == nil}
	if r.err != nil {
		j.last.Detail = r.err.Error()
	}
	switch j.kind {
	case jobLibvirt:
		c.domains, c.domainsOK = r.domains, r.err == nil
		if r.err == nil && c.observe != nil {
			c.observe(r.domains)
		}
	case jobStorage:
		if r.err != nil {
			c.ioErrors++
			c.ioDetail = "storage " + j.name + ": " + r.err.Error()
		}
	}
	j.done = true
	for _, o := range c.jobs {
		if !o.done {
			return
		}
	}
	c.readyOnce.Do(func() { close(c.ready) })
}

// snapshot is the latest health and domain listing. domains is nil when
// the last listing failed or timed out: "unknown", never "none".
func (c *checker) snapshot() (heartbeat.Health, []heartbeat.Domain) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var h heartbeat.Health
	for _, j := range c.jobs {
		switch j.kind {
		case jobLibvirt:
			h.Libvirt = j.last
		case jobInterface:
			h.Interfaces = append(h.Interfaces, j.last)
		case jobStorage:
			h.Storage = append(h.Storage, j.last)
		}
	}
	h.IOErrors, h.IODetail = c.ioErrors, c.ioDetail
	var doms []heartbeat.Domain
	if c.domainsOK {
		doms = make([]heartbeat.Domain, 0, len(c.domains))
		for _, d := range c.domains {
			doms = append(doms, heartbeat.Domain{UUID: d.UUID, Name: d.Name, State: d.State, Reason: d.Reason, Autostart: d.Autostart})
		}
	}
	return h, doms
}

// sent tells the checker the daemon received n I/O errors, so the next
// heartbeat counts only newer ones.
func (c *checker) sent(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ioErrors = max(c.ioErrors-n, 0)
	if c.ioErrors == 0 {
		c.ioDetail = ""
	}
}

// libvirtJob pings libvirtd and lists its domains.
func libvirtJob(hv CheckHypervisor) *job {
	return &job{name: "libvirtd", kind: jobLibvirt, run: func(ctx context.Context) result {
		if err := hv.Ping(ctx); err != nil {
			return result{err: err}
		}
		doms, err := hv.Domains(ctx, false)
		if err != nil {
			return result{err: fmt.Errorf("list domains: %w", err)}
		}
		if doms == nil {
			doms = []hypervisor.Domain{}
		}
		return result{domains: doms}
	}}
}

// interfaceJob checks that a network interface is up, as the kernel
// reports it in sysfs. Only "up" counts: "unknown" (some virtual devices),
// "down", "dormant" and "lowerlayerdown" all fail, naming the state.
func interfaceJob(sysClassNet, name string) *job {
	return &job{name: name, kind: jobInterface, run: func(context.Context) result {
		b, err := os.ReadFile(filepath.Join(sysClassNet, name, "operstate"))
		if errors.Is(err, os.ErrNotExist) {
			return result{err: fmt.Errorf("interface %s does not exist", name)}
		}
		if err != nil {
			return result{err: fmt.Errorf("interface %s: %w", name, err)}
		}
		if st := strings.TrimSpace(string(b)); st != "up" {
			return result{err: fmt.Errorf("interface %s operstate is %q", name, st)}
		}
		return result{}
	}}
}

// ProbeFile is the name of the file the storage check writes in each
// storage path; host tells agents sharing the storage apart.
func ProbeFile(host string) string { return ".chime-agent-probe-" + host }

// storageJob proves a storage path writable the way a VM's disk needs it:
// create, write, fsync, close, remove.
func storageJob(dir, host string) *job {
	path := filepath.Join(dir, ProbeFile(host))
	return &job{name: dir, kind: jobStorage, run: func(context.Context) result {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return result{err: err}
		}
		_, werr := fmt.Fprintf(f, "chime-agent %s %s\n", host, time.Now().UTC().Format(time.RFC3339Nano))
		serr := f.Sync()
		cerr := f.Close()
		rerr := os.Remove(path)
		if err := errors.Join(werr, serr, cerr, rerr); err != nil {
			return result{err: err}
		}
		return result{}
	}}
}
