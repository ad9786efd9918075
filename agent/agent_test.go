package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

// fakeHV is an in-memory libvirtd. Ping can be made to hang (ignoring its
// context, like a stuck socket).
type fakeHV struct {
	mu       sync.Mutex
	doms     []hypervisor.Domain
	starts   []string
	startErr error
	listErr  error
	hang     chan struct{} // non-nil: Ping blocks until closed
	// destroyErr and undefineErr fail those calls (per UUID, "" = all).
	destroyErr, undefineErr map[string]error
	autostartErr            error
	rec                     *recorder // optional: call order
}

// recorder keeps the order of calls across the fake hypervisor and daemon.
type recorder struct {
	mu  sync.Mutex
	seq []string
}

func (r *recorder) add(s string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq = append(r.seq, s)
}

func (r *recorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seq...)
}

func (f *fakeHV) Destroy(_ context.Context, uuid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rec.add("destroy " + uuid)
	if err := pick(f.destroyErr, uuid); err != nil {
		return err
	}
	for i := range f.doms {
		if f.doms[i].UUID == uuid {
			if !f.doms[i].State.Active() {
				return &hypervisor.Error{Kind: hypervisor.KindInvalid, Step: "destroy", Err: errors.New("domain is not running")}
			}
			f.doms[i].State, f.doms[i].Reason = hypervisor.StateShutoff, "destroyed"
			return nil
		}
	}
	return &hypervisor.Error{Kind: hypervisor.KindNotFound, Step: "destroy " + uuid}
}

func (f *fakeHV) Undefine(_ context.Context, uuid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rec.add("undefine " + uuid)
	if err := pick(f.undefineErr, uuid); err != nil {
		return err
	}
	for i := range f.doms {
		if f.doms[i].UUID == uuid {
			f.doms = append(f.doms[:i], f.doms[i+1:]...)
			return nil
		}
	}
	return &hypervisor.Error{Kind: hypervisor.KindNotFound, Step: "undefine " + uuid}
}

// SetAutostart sets a domain's autostart; autostartErr fails it.
func (f *fakeHV) SetAutostart(_ context.Context, uuid string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rec.add(fmt.Sprintf("autostart %s %v", uuid, on))
	if f.autostartErr != nil {
		return f.autostartErr
	}
	for i := range f.doms {
		if f.doms[i].UUID == uuid {
			f.doms[i].Autostart = on
			return nil
		}
	}
	return &hypervisor.Error{Kind: hypervisor.KindNotFound, Step: "autostart " + uuid}
}

func pick(m map[string]error, uuid string) error {
	if err, ok := m[uuid]; ok {
		return err
	}
	return m[""]
}

func (f *fakeHV) set(fn func(*fakeHV)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeHV) domains() []hypervisor.Domain {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]hypervisor.Domain(nil), f.doms...)
}

func (f *fakeHV) Ping(context.Context) error {
	f.mu.Lock()
	h := f.hang
	f.mu.Unlock()
	if h != nil {
		<-h
	}
	return nil
}

func (f *fakeHV) Domains(context.Context, bool) ([]hypervisor.Domain, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	return append([]hypervisor.Domain(nil), f.doms...), nil
}

func (f *fakeHV) Start(_ context.Context, uuid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts = append(f.starts, uuid)
	if f.startErr != nil {
		return f.startErr
	}
	for i := range f.doms {
		if f.doms[i].UUID == uuid {
			f.doms[i].State, f.doms[i].Reason = hypervisor.StateRunning, ""
		}
	}
	return nil
}

// crash makes uuid's QEMU die: shut off (crashed).
func (f *fakeHV) crash(uuid string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.doms {
		if f.doms[i].UUID == uuid {
			f.doms[i].State, f.doms[i].Reason = hypervisor.StateShutoff, "crashed"
		}
	}
}

func (f *fakeHV) started() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.starts...)
}

// fakeDaemon is the daemon's agent-facing API over real HTTP, so the tests
// also run DaemonClient.
type fakeDaemon struct {
	mu        sync.Mutex
	asg       heartbeat.Assignment
	asgStatus int // non-zero: the assignment endpoint answers this
	hbStatus  int // non-zero: the heartbeat endpoint answers this
	fetches   int
	hbs       []heartbeat.Heartbeat
	bodies    []string
	auth      []string
	rec       *recorder
	// ackMigrations: acks list every local migration of the heartbeat.
	ackMigrations bool
	// staleAt: the ack of the beat with this seq (first agent_start only)
	// says stale, as when a forged beat overtook the agent's sequence.
	staleAt uint64
}

func (d *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.auth = append(d.auth, r.Header.Get("Authorization"))
	switch r.URL.Path {
	case heartbeat.PathAssignment:
		if d.asgStatus != 0 {
			w.WriteHeader(d.asgStatus)
			return
		}
		d.fetches++
		d.rec.add("assignment")
		_ = json.NewEncoder(w).Encode(d.asg)
	case heartbeat.PathHeartbeat:
		var buf bytes.Buffer
		hb, err := heartbeat.Decode(ioTee(r, &buf))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		d.hbs = append(d.hbs, hb)
		d.bodies = append(d.bodies, buf.String())
		d.rec.add(fmt.Sprintf("heartbeat %d", hb.Seq))
		if d.hbStatus != 0 {
			w.WriteHeader(d.hbStatus)
			return
		}
		ack := heartbeat.Ack{AdminState: d.asg.AdminState, AssignmentRevision: d.asg.Revision,
			HeartbeatInterval: d.asg.HeartbeatInterval}
		if d.staleAt != 0 && hb.Seq >= d.staleAt && hb.AgentStart.Equal(d.hbs[0].AgentStart) {
			ack.Outcome, ack.OutcomeDetail = heartbeat.OutcomeStale, "seq is not after 1000000000000"
		}
		if d.ackMigrations {
			for _, m := range hb.LocalMigrations {
				ack.LocalMigrationsSeen = append(ack.LocalMigrationsSeen, m.ID)
			}
		}
		_ = json.NewEncoder(w).Encode(ack)
	default:
		http.NotFound(w, r)
	}
}

func ioTee(r *http.Request, buf *bytes.Buffer) *bytes.Reader {
	_, _ = buf.ReadFrom(r.Body)
	return bytes.NewReader(buf.Bytes())
}

func (d *fakeDaemon) set(f func(*fakeDaemon)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

func (d *fakeDaemon) heartbeats() []heartbeat.Heartbeat {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]heartbeat.Heartbeat(nil), d.hbs...)
}

func (d *fakeDaemon) fetchCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fetches
}

// syncBuf is a log sink safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// logLines returns the JSON log lines that have every key=value of match.
func (s *syncBuf) lines(match map[string]string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(s.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil {
			continue
		}
		ok := true
		for k, v := range match {
			if m[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

type rig struct {
	hv     *fakeHV
	daemon *fakeDaemon
	logs   *syncBuf
	agent  *Agent
	cancel context.CancelFunc
	done   chan struct{}
}

const fastInterval = 20 * time.Millisecond

func newRig(t *testing.T, hv *fakeHV, d *fakeDaemon, mod func(*Config)) *rig {
	t.Helper()
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	dc, err := NewDaemonClient(srv.URL, "n1", testToken)
	require.NoError(t, err)
	cfg := Config{Host: "n1", BootID: "boot-1", Version: "v-test",
		HeartbeatInterval: fastInterval, ReconcileInterval: fastInterval, CheckTimeout: time.Second,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		Now: func() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) }}
	if mod != nil {
		mod(&cfg)
	}
	logs := &syncBuf{}
	a, err := New(cfg, hv, dc, zerolog.New(logs).Level(zerolog.DebugLevel))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &rig{hv: hv, daemon: d, logs: logs, agent: a, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); assert.NoError(t, a.Run(ctx)) }()
	t.Cleanup(func() {
		r.stop(t)
		assert.NotContains(t, logs.String(), testToken, "the token never reaches the log")
	})
	return r
}

func (r *rig) stop(t *testing.T) {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func crashedVM(uuid string) hypervisor.Domain {
	return hypervisor.Domain{UUID: uuid, Name: "vm-" + uuid[len(uuid)-1:], State: hypervisor.StateShutoff, Reason: "crashed", Persistent: true}
}

func runningVM(uuid string) hypervisor.Domain {
	return hypervisor.Domain{UUID: uuid, Name: "vm-" + uuid[len(uuid)-1:], State: hypervisor.StateRunning, Persistent: true}
}

func enabledWith(rev uint64, uuids ...string) heartbeat.Assignment {
	a := heartbeat.Assignment{Host: "n1", AdminState: node.Enabled, Revision: rev}
	for _, u := range uuids {
		a.Domains = append(a.Domains, heartbeat.AssignedDomain{UUID: u, Name: "vm-" + u[len(u)-1:]})
	}
	return a
}

const wait = 10 * time.Second

func TestAgentHeartbeats(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1), {UUID: u2, Name: "vm-2", State: hypervisor.StateShutoff, Reason: "destroyed", Persistent: true}}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 4 }, wait, 5*time.Millisecond)
	r.stop(t)
	hbs := d.heartbeats()
	for i, hb := range hbs {
		assert.Equal(t, uint64(i+1), hb.Seq, "seq counts 1, 2, 3 … per process")
		assert.Equal(t, "n1", hb.Host)
		assert.Equal(t, "boot-1", hb.BootID)
		assert.Equal(t, "v-test", hb.AgentVersion)
		assert.Equal(t, time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), hb.SentAt.UTC(), "times come from the injected clock")
		assert.Equal(t, hb.SentAt, hb.AgentStart)
		assert.Equal(t, heartbeat.Check{Name: "libvirtd", OK: true}, hb.Health.Libvirt)
		assert.Equal(t, []heartbeat.Domain{
			{UUID: u1, Name: "vm-1", State: hypervisor.StateRunning},
			{UUID: u2, Name: "vm-2", State: hypervisor.StateShutoff, Reason: "destroyed"},
		}, hb.Domains, "every libvirt domain, with its reason")
	}
	for _, a := range d.auth {
		assert.Equal(t, "Bearer "+testToken, a)
	}
	assert.Contains(t, d.bodies[0], `"state":"running"`, "states travel by name")
	assert.NotEmpty(t, r.logs.lines(map[string]string{"component": "agent", "message": "assignment"}))
}

// A beat answered "stale" means someone else's beat in this host's name
// overtook the sequence: the agent starts a new one (new agent_start, seq
// 1) at once and logs an error, instead of beating unheard forever.
func TestAgentStartsANewSequenceWhenStale(t *testing.T) {
	d := &fakeDaemon{asg: enabledWith(1), staleAt: 3}
	var ticks atomic.Int64 // a clock that moves a millisecond per reading
	r := newRig(t, &fakeHV{}, d, func(c *Config) {
		c.Now = func() time.Time {
			return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(ticks.Add(1)) * time.Millisecond)
		}
	})
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 6 }, wait, 5*time.Millisecond)
	r.stop(t)
	hbs := d.heartbeats()
	first := hbs[0].AgentStart
	for i, want := range []uint64{1, 2, 3, 1, 2, 3} {
		assert.Equal(t, want, hbs[i].Seq, "beat %d", i)
		assert.Equal(t, i >= 3, hbs[i].AgentStart.After(first), "beat %d: a new agent_start after the stale answer", i)
		assert.False(t, hbs[i].AgentStart.After(hbs[i].SentAt), "beat %d: agent_start is never after sent_at (the daemon would refuse it)", i)
	}
	assert.Len(t, r.logs.lines(map[string]string{"level": "error", "component": "heartbeat"}), 1, "one error, naming the cause")
	assert.Contains(t, r.logs.String(), "starting a new heartbeat sequence")
}

func TestAgentRestartsCrashedDomainWhenEnabled(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1), crashedVM(u3)}}
	d := &fakeDaemon{asg: enabledWith(1, u1, u2)} // u2 not defined here; u3 not assigned
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(hv.started()) >= 1 }, wait, 5*time.Millisecond)
	// Several more rounds: nothing else is started, u1 only once (it runs).
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+5 }, wait, 5*time.Millisecond)
	r.stop(t)
	assert.Equal(t, []string{u1}, hv.started(), "only the assigned, crashed domain; once")

	started := r.logs.lines(map[string]string{"component": "reconcile", "action": "start", "uuid": u1, "message": "domain started"})
	require.NotEmpty(t, started)
	assert.Equal(t, "vm-1", started[0]["domain"])
	assert.Contains(t, started[0]["reason"], "crashed")
	assert.NotEmpty(t, r.logs.lines(map[string]string{"component": "reconcile", "action": "missing", "uuid": u2}), "an assigned domain not defined here is reported")
	last := d.heartbeats()[len(d.heartbeats())-1]
	assert.Equal(t, hypervisor.StateRunning, last.Domains[0].State, "heartbeats show it running again")
}

func TestAgentStartsNothingWhenDrained(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)}}
	asg := enabledWith(1, u1)
	asg.AdminState = node.Drained
	d := &fakeDaemon{asg: asg}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return d.fetchCount() >= 1 && len(d.heartbeats()) >= 10 }, wait, 5*time.Millisecond)
	r.stop(t)
	assert.Empty(t, hv.started())
	assert.NotEmpty(t, r.logs.lines(map[string]string{"component": "reconcile", "admin_state": "drained"}), "reconcile ran and said why it did nothing")
}

// TestAgentStartsNothingBeforeTheAssignment: the daemon answers heartbeats
// but not the assignment (or not at all): the agent keeps heartbeating,
// retries the fetch, and starts nothing until the assignment arrives.
func TestAgentStartsNothingBeforeTheAssignment(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1), asgStatus: http.StatusServiceUnavailable}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 10 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started(), "admin state enabled per ack, but no assignment: nothing starts")
	retries := r.logs.lines(map[string]string{"component": "agent", "message": "assignment not fetched; reconcile starts nothing until it is"})
	require.GreaterOrEqual(t, len(retries), 2, "the fetch is retried")
	assert.Contains(t, retries[0]["error"], "HTTP 503")

	d.set(func(d *fakeDaemon) { d.asgStatus = 0 })
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
	assert.Equal(t, []string{u1}, hv.started())
}

func TestAgentDaemonDownAtStart(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1), asgStatus: http.StatusBadGateway, hbStatus: http.StatusBadGateway}
	r := newRig(t, hv, d, nil)

	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 10 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started())
	st, err := r.agent.Status(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "unknown", st.AdminState)
	warn := r.logs.lines(map[string]string{"component": "heartbeat", "message": "heartbeat not delivered"})
	assert.Len(t, warn, 1, "an outage is logged once, not at every beat")

	d.set(func(d *fakeDaemon) { d.asgStatus, d.hbStatus = 0, 0 })
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		return len(r.logs.lines(map[string]string{"component": "heartbeat", "message": "daemon answers heartbeats again"})) == 1
	}, wait, 5*time.Millisecond)
}

// TestAgentFollowsRevisions: an ack naming a new revision makes the agent
// refetch; while the new assignment is not there, nothing starts (a domain
// rebuilt elsewhere must not come back here from a stale list).
func TestAgentFollowsRevisions(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	r := newRig(t, hv, d, nil)
	require.Eventually(t, func() bool { return d.fetchCount() >= 1 && len(d.heartbeats()) >= 3 }, wait, 5*time.Millisecond)

	// The daemon moves u1 away (rev 2) but its assignment endpoint fails.
	d.set(func(d *fakeDaemon) { d.asg = enabledWith(2); d.asgStatus = http.StatusInternalServerError })
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+3 }, wait, 5*time.Millisecond)
	hv.crash(u1)
	n = len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+10 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started(), "stale assignment (rev 1 held, rev 2 acked): nothing starts")

	d.set(func(d *fakeDaemon) { d.asgStatus = 0 })
	require.Eventually(t, func() bool { rev, _ := r.agent.held.revision(); return rev == 2 }, wait, 5*time.Millisecond)
	n = len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+5 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started(), "rev 2 does not list u1")

	// Back to this host (rev 3): restarted.
	d.set(func(d *fakeDaemon) { d.asg = enabledWith(3, u1) })
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
}

// TestAgentDrainByAckStopsStarts: an ack that drains the host takes effect
// at once, even before the new assignment is fetched.
func TestAgentDrainByAckStopsStarts(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	r := newRig(t, hv, d, nil)
	require.Eventually(t, func() bool { return d.fetchCount() >= 1 }, wait, 5*time.Millisecond)

	d.set(func(d *fakeDaemon) {
		d.asg.AdminState, d.asg.Revision = node.Drained, 2
		d.asgStatus = http.StatusInternalServerError
	})
	require.Eventually(t, func() bool {
		st, err := r.agent.Status(context.Background())
		return err == nil && st.AdminState == "drained"
	}, wait, 5*time.Millisecond)
	hv.crash(u1)
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+10 }, wait, 5*time.Millisecond)
	assert.Empty(t, hv.started())
	assert.NotEmpty(t, r.logs.lines(map[string]string{"component": "heartbeat", "admin_state": "drained", "was": "enabled"}))
}

// TestSlowCheckNeverDelaysHeartbeats: libvirtd hangs (Ping blocks, ignoring
// its context); heartbeats keep coming, report libvirtd "timed out" and
// domains unknown (null).
func TestSlowCheckNeverDelaysHeartbeats(t *testing.T) {
	hang := make(chan struct{})
	hv := &fakeHV{doms: []hypervisor.Domain{runningVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	r := newRig(t, hv, d, func(c *Config) { c.CheckTimeout = 100 * time.Millisecond })
	defer close(hang)
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		return len(hbs) > 0 && hbs[len(hbs)-1].Health.Libvirt.OK
	}, wait, 5*time.Millisecond)

	hv.mu.Lock()
	hv.hang = hang
	hv.mu.Unlock()
	var timedOut heartbeat.Heartbeat
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		timedOut = hbs[len(hbs)-1]
		return !timedOut.Health.Libvirt.OK
	}, wait, 5*time.Millisecond)
	assert.Equal(t, "timed out after 100ms", timedOut.Health.Libvirt.Detail)
	assert.Nil(t, timedOut.Domains, "domains unknown, not empty")
	d.mu.Lock()
	assert.Contains(t, d.bodies[len(d.bodies)-1], `"domains":null`)
	d.mu.Unlock()

	// While libvirtd stays hung, heartbeats keep their cadence: many more
	// arrive than the hung check could ever have allowed if it blocked them.
	n := len(d.heartbeats())
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= n+20 }, wait, 5*time.Millisecond)
	r.stop(t)
}

func TestAgentHealthInHeartbeat(t *testing.T) {
	sys := t.TempDir()
	writeOperstate(t, sys, "eth0", "up")
	writeOperstate(t, sys, "eth1", "down")
	good := t.TempDir()
	hv := &fakeHV{}
	d := &fakeDaemon{asg: enabledWith(1)}
	newRig(t, hv, d, func(c *Config) {
		c.SysClassNet = sys
		c.Interfaces = []string{"eth0", "eth1", "eth9"}
		c.Storage = []string{good, "/nonexistent/chime-agent-test"}
	})
	require.Eventually(t, func() bool { return len(d.heartbeats()) >= 2 }, wait, 5*time.Millisecond)
	hb := d.heartbeats()[0]
	assert.Equal(t, []heartbeat.Check{
		{Name: "eth0", OK: true},
		{Name: "eth1", Detail: `interface eth1 operstate is "down"`},
		{Name: "eth9", Detail: "interface eth9 does not exist"},
	}, hb.Health.Interfaces, "the first heartbeat already carries real results")
	require.Len(t, hb.Health.Storage, 2)
	assert.Equal(t, heartbeat.Check{Name: good, OK: true}, hb.Health.Storage[0])
	assert.False(t, hb.Health.Storage[1].OK)
	assert.Contains(t, hb.Health.Storage[1].Detail, "/nonexistent/chime-agent-test/.chime-agent-probe-n1")
	assert.GreaterOrEqual(t, hb.Health.IOErrors, 1)
	assert.Contains(t, hb.Health.Fault(), "storage /nonexistent/chime-agent-test not writable")
	assert.Contains(t, hb.Health.Fault(), "interface eth9 down")
}

func writeOperstate(t *testing.T, sys, name, st string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Join(sys, name), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(sys, name, "operstate"), []byte(st+"\n"), 0o644))
}

func TestAgentStartConflictIsLoggedAsSplitBrain(t *testing.T) {
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)},
		startErr: &hypervisor.Error{Kind: hypervisor.KindConflict, Host: "n1", Step: "libvirt: start " + u1, Err: errors.New(`Failed to get "write" lock`)}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	r := newRig(t, hv, d, nil)
	require.Eventually(t, func() bool {
		return len(r.logs.lines(map[string]string{"component": "reconcile", "level": "error", "uuid": u1,
			"message": "start refused: its disk is in use elsewhere (possible split brain)"})) > 0
	}, wait, 5*time.Millisecond)
}

func TestNewRejectsBadConfig(t *testing.T) {
	_, err := New(Config{Host: "n/1", Interfaces: []string{"../x"}, Storage: []string{"rel/path"}, HeartbeatInterval: time.Millisecond, CheckTimeout: -1}, nil, nil, zerolog.Nop())
	require.Error(t, err)
	for _, msg := range []string{`host name "n/1"`, "boot id is empty", `interface name "../x"`, `storage path "rel/path" is not absolute`,
		"heartbeat interval 1ms out of range", "check timeout -1ns is negative", "no hypervisor", "no daemon client"} {
		assert.Contains(t, err.Error(), msg)
	}
}

// TestChecksUseTheirOwnHypervisor: with Config.Checks set, a hung health
// check connection neither blocks nor cuts reconcile's own connection.
func TestChecksUseTheirOwnHypervisor(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	checks := &fakeHV{hang: hang}
	hv := &fakeHV{doms: []hypervisor.Domain{crashedVM(u1)}}
	d := &fakeDaemon{asg: enabledWith(1, u1)}
	newRig(t, hv, d, func(c *Config) { c.Checks = checks; c.CheckTimeout = 50 * time.Millisecond })
	require.Eventually(t, func() bool { return len(hv.started()) == 1 }, wait, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		hbs := d.heartbeats()
		return len(hbs) > 0 && hbs[len(hbs)-1].Health.Libvirt.Detail == "timed out after 50ms"
	}, wait, 5*time.Millisecond, "the check went to its own (hung) connection")
	assert.Empty(t, checks.started())
}
