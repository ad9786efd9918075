package evacuator

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/chimestack/chime-fence/hypervisor"
)

// execCluster is a set of in-memory hypervisors sharing one lock, so the
// test can ask "where does this UUID run" atomically and catch a moment
// when two hosts run it.
type execCluster struct {
	mu    sync.Mutex
	hosts map[string]*execHost
	// violations lists every Start that made a UUID active on two hosts.
	violations []string
	// calls counts every hypervisor call, per host and operation.
	calls map[string]int
	// connectErr makes Hypervisor(host) fail for these hosts.
	connectErr map[string]error
}

type execDom struct {
	name      string
	xml       string
	state     hypervisor.DomainState
	autostart bool
}

// execHost is one fake hypervisor. Hooks run under no lock, before the
// operation; a non-nil error fails it without effect.
type execHost struct {
	c          *execCluster
	name       string
	doms       map[string]*execDom
	starts     map[string]int // successful starts per UUID
	startCalls map[string]int // every Start call per UUID, failed or not
	// down makes every call fail as unreachable.
	down bool

	onDefine func(ctx context.Context, xml string) error
	onStart  func(ctx context.Context, uuid string) error
	onState  func(uuid string) error
	// afterStart is the state a started domain gets (default running).
	afterStart hypervisor.DomainState
	// destroyErr fails Destroy (the copy keeps running).
	destroyErr error
	// autostartErr fails SetAutostart.
	autostartErr error

	// inFlight counts attempts under way (from Define to the first State),
	// maxInFlight the most at once.
	inFlight, maxInFlight int
	defineOrder           []string
}

func newExecCluster(hosts ...string) *execCluster {
	c := &execCluster{hosts: map[string]*execHost{}, calls: map[string]int{}, connectErr: map[string]error{}}
	for _, h := range hosts {
		c.hosts[h] = &execHost{c: c, name: h, doms: map[string]*execDom{}, starts: map[string]int{}, startCalls: map[string]int{}, afterStart: hypervisor.StateRunning}
	}
	return c
}

func (c *execCluster) host(name string) *execHost { return c.hosts[name] }

// Hypervisor is ExecDeps.Hypervisor.
func (c *execCluster) Hypervisor(name string) (Hypervisor, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[name+" connect"]++
	if err := c.connectErr[name]; err != nil {
		return nil, err
	}
	h, ok := c.hosts[name]
	if !ok {
		return nil, fmt.Errorf("no host %q in the fake cluster", name)
	}
	return h, nil
}

// activeOn returns the hosts where uuid is active.
func (c *execCluster) activeOn(uuid string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for name, h := range c.hosts {
		if d, ok := h.doms[uuid]; ok && d.state.Active() {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// startsOn counts the Start calls for uuid on host, failed or not.
func (c *execCluster) startsOn(host, uuid string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[host].startCalls[uuid]
}

func (c *execCluster) count(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[key]
}

// put places a domain on a host directly (the test's setup).
func (c *execCluster) put(host, uuid, name string, st hypervisor.DomainState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hosts[host].doms[uuid] = &execDom{name: name, xml: vmXML(uuid, name), state: st}
}

func (h *execHost) enter(op string) error {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.calls[h.name+" "+op]++
	if h.down {
		return &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: h.name, Step: op}
	}
	return nil
}

func notFound(host, step, uuid string) error {
	return &hypervisor.Error{Kind: hypervisor.KindNotFound, Host: host, Step: step, Err: fmt.Errorf("no domain %s", uuid)}
}

var uuidRe = regexp.MustCompile(`<uuid>([^<]+)</uuid>`)
var nameRe = regexp.MustCompile(`<name>([^<]+)</name>`)

func vmXML(uuid, name string) string {
	return fmt.Sprintf("<domain type='kvm'><name>%s</name><uuid>%s</uuid><devices><graphics type='vnc' listen='10.0.0.1'/></devices></domain>", name, uuid)
}

func (h *execHost) Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error) {
	return nil, fmt.Errorf("Domains: not used by Execute")
}

func (h *execHost) Domain(ctx context.Context, uuid string) (hypervisor.Domain, error) {
	if err := h.enter("domain"); err != nil {
		return hypervisor.Domain{}, err
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	d, ok := h.doms[uuid]
	if !ok {
		return hypervisor.Domain{}, notFound(h.name, "domain", uuid)
	}
	return hypervisor.Domain{UUID: uuid, Name: d.name, State: d.state, Persistent: true}, nil
}

func (h *execHost) Define(ctx context.Context, xml string) (string, error) {
	if err := h.enter("define"); err != nil {
		return "", err
	}
	m, n := uuidRe.FindStringSubmatch(xml), nameRe.FindStringSubmatch(xml)
	if m == nil || n == nil {
		return "", &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: h.name, Step: "define", Err: fmt.Errorf("no uuid or name")}
	}
	h.c.mu.Lock()
	h.inFlight++
	h.maxInFlight = max(h.maxInFlight, h.inFlight)
	h.defineOrder = append(h.defineOrder, m[1])
	hook := h.onDefine
	h.c.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, xml); err != nil {
			h.c.mu.Lock()
			h.inFlight--
			h.c.mu.Unlock()
			return "", err
		}
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.inFlight--
	if d, ok := h.doms[m[1]]; ok {
		d.xml = xml // redefine keeps the run state
		return m[1], nil
	}
	h.doms[m[1]] = &execDom{name: n[1], xml: xml, state: hypervisor.StateShutoff}
	return m[1], nil
}

func (h *execHost) SetAutostart(ctx context.Context, uuid string, on bool) error {
	if err := h.enter("autostart"); err != nil {
		return err
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if h.autostartErr != nil {
		return h.autostartErr
	}
	d, ok := h.doms[uuid]
	if !ok {
		return notFound(h.name, "autostart", uuid)
	}
	d.autostart = on
	return nil
}

func (h *execHost) Start(ctx context.Context, uuid string) error {
	if err := h.enter("start"); err != nil {
		return err
	}
	h.c.mu.Lock()
	h.startCalls[uuid]++
	hook := h.onStart
	h.c.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, uuid); err != nil {
			return err
		}
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	d, ok := h.doms[uuid]
	if !ok {
		return notFound(h.name, "start", uuid)
	}
	if d.state.Active() {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: h.name, Step: "start", Err: fmt.Errorf("domain is already active")}
	}
	if d.autostart {
		h.c.violations = append(h.c.violations, fmt.Sprintf("%s started on %s with autostart on", uuid, h.name))
	}
	for name, o := range h.c.hosts {
		if od, ok := o.doms[uuid]; ok && od.state.Active() && name != h.name {
			h.c.violations = append(h.c.violations, fmt.Sprintf("%s started on %s while active on %s", uuid, h.name, name))
		}
	}
	d.state = h.afterStart
	h.starts[uuid]++
	return nil
}

func (h *execHost) Destroy(ctx context.Context, uuid string) error {
	if err := h.enter("destroy"); err != nil {
		return err
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if h.destroyErr != nil {
		return h.destroyErr
	}
	d, ok := h.doms[uuid]
	if !ok {
		return notFound(h.name, "destroy", uuid)
	}
	if !d.state.Active() {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: h.name, Step: "destroy", Err: fmt.Errorf("domain is not running")}
	}
	d.state = hypervisor.StateShutoff
	return nil
}

func (h *execHost) Undefine(ctx context.Context, uuid string) error {
	if err := h.enter("undefine"); err != nil {
		return err
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	d, ok := h.doms[uuid]
	if !ok {
		return notFound(h.name, "undefine", uuid)
	}
	if d.state.Active() {
		return nil // libvirt: an active domain becomes transient and keeps running
	}
	delete(h.doms, uuid)
	return nil
}

func (h *execHost) State(ctx context.Context, uuid string) (hypervisor.DomainState, error) {
	if err := h.enter("state"); err != nil {
		return hypervisor.StateUnknown, err
	}
	h.c.mu.Lock()
	hook := h.onState
	h.c.mu.Unlock()
	if hook != nil {
		if err := hook(uuid); err != nil {
			return hypervisor.StateUnknown, err
		}
	}
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	d, ok := h.doms[uuid]
	if !ok {
		return hypervisor.StateUnknown, notFound(h.name, "state", uuid)
	}
	return d.state, nil
}

func (h *execHost) NodeStats(ctx context.Context) (hypervisor.NodeStats, error) {
	return hypervisor.NodeStats{}, fmt.Errorf("NodeStats: not used by Execute")
}

func (h *execHost) Events(ctx context.Context) <-chan hypervisor.Event { return nil }

// execClock is virtual time: Sleep advances it at once.
type execClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *execClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *execClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	return nil
}

// memJournal keeps the last saved copy of each task in memory and can
// fail every write after the first limit (0: never).
type memJournal struct {
	mu     sync.Mutex
	tasks  map[string]Task
	writes int
	limit  int
	inner  Journal // if set, writes go through to it as well
	all    []Task  // every write, in order
}

func (j *memJournal) SaveTask(t Task) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.limit > 0 && j.writes >= j.limit {
		return fmt.Errorf("journal stopped after %d writes (simulated crash)", j.limit)
	}
	if j.inner != nil {
		if err := j.inner.SaveTask(t); err != nil {
			return err
		}
	}
	if j.tasks == nil {
		j.tasks = map[string]Task{}
	}
	j.writes++
	j.tasks[t.ID] = t.Clone()
	j.all = append(j.all, t.Clone())
	return nil
}

func (j *memJournal) OpenTasks() ([]Task, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Task
	for _, t := range j.tasks {
		if t.State.Open() {
			out = append(out, t.Clone())
		}
	}
	return out, nil
}

func (j *memJournal) last(t *testing.T, id string) Task {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	task, ok := j.tasks[id]
	if !ok {
		t.Fatalf("task %s was never journaled", id)
	}
	return task.Clone()
}

func (j *memJournal) count() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.writes
}

// alerts records ExecDeps.Alert calls.
type alerts struct {
	mu   sync.Mutex
	list []string
}

func (a *alerts) add(kind, summary string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.list = append(a.list, kind+": "+summary)
}

func (a *alerts) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.list...)
}
