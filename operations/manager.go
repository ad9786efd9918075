package operations

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/store"
)

// HistoryKind is the kind of the history records operations write.
const HistoryKind = "operation"

// RestartedReason is the Error of a task a restarted daemon found running.
const RestartedReason = "daemon restarted during the task"

// DefaultTimeouts bound each operation's executor when Config.Timeouts does
// not name it.
var DefaultTimeouts = map[Op]time.Duration{
	OpEnable:      30 * time.Second,
	OpDisable:     30 * time.Second,
	OpDrain:       10 * time.Minute,
	OpRebuild:     time.Hour,
	OpMigrate:     4 * time.Hour,
	OpFence:       15 * time.Minute,
	OpConfirmDown: 5 * time.Minute,
}

// Store is the durable state the Manager needs; *store.Store satisfies it.
type Store interface {
	PutOpTask(r store.OpTaskRecord) error
	// PutOpTaskRecords writes the task and appends the history records in
	// one durable step.
	PutOpTaskRecords(r store.OpTaskRecord, recs ...store.Record) error
	OpTasks(host string) ([]store.OpTaskRecord, error)
	OpenOpTasks() ([]store.OpTaskRecord, error)
	OpTaskByID(id string) (store.OpTaskRecord, bool, error)
}

// Config tunes a Manager.
type Config struct {
	// Timeouts overrides DefaultTimeouts per operation.
	Timeouts map[Op]time.Duration
}

// Deps are the Manager's collaborators. Store, View and Now are required.
type Deps struct {
	Store Store
	// View reads a host's state for Check (Lock and Target are filled by
	// the Manager). An unknown host is Known: false, not an error.
	View      func(host string) (HostView, error)
	Executors Executors
	Now       func() time.Time
	// NewID makes task IDs (default: "op-" + UTC time + random hex).
	NewID func() string
	Log   zerolog.Logger
}

// Manager runs operations as tasks, one at a time per host. Safe for
// concurrent use.
type Manager struct {
	cfg  Config
	deps Deps
	log  zerolog.Logger

	ctx    context.Context // cancelled by Close: every executor's parent
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	locks   map[string]Holder // by host
	gen     map[string]uint64 // by host: lock releases so far
	running map[string]*run   // by task ID
}

// run is one task in flight. mu orders its snapshots and their writes.
type run struct {
	mu       sync.Mutex
	task     Task
	finished bool
	done     chan struct{}
}

// New checks the dependencies and finishes what a previous daemon left
// running: each such task is marked TaskInterrupted with RestartedReason
// and a history record (nothing is resumed; the operator looks and starts
// it again).
func New(cfg Config, deps Deps) (*Manager, error) {
	var errs []error
	if deps.Store == nil {
		errs = append(errs, errors.New("Store is nil"))
	}
	if deps.View == nil {
		errs = append(errs, errors.New("View is nil"))
	}
	if deps.Now == nil {
		errs = append(errs, errors.New("Now is nil"))
	}
	for op, d := range cfg.Timeouts {
		if _, err := ParseOp(string(op)); err != nil {
			errs = append(errs, fmt.Errorf("Timeouts: %w", err))
		} else if d <= 0 {
			errs = append(errs, fmt.Errorf("Timeouts[%s] is %s, must be positive", op, d))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("operations: %w", err)
	}
	if deps.NewID == nil {
		deps.NewID = func() string { return newID(deps.Now()) }
	}
	m := &Manager{cfg: cfg, deps: deps, log: deps.Log.With().Str("component", "operations").Logger(),
		locks: map[string]Holder{}, gen: map[string]uint64{}, running: map[string]*run{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.interruptLeftovers(); err != nil {
		return nil, err
	}
	return m, nil
}

func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "op-" + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

func (m *Manager) interruptLeftovers() error {
	open, err := m.deps.Store.OpenOpTasks()
	if err != nil {
		return fmt.Errorf("operations: read tasks left running: %w", err)
	}
	for _, r := range open {
		t, err := decode(r)
		if err != nil {
			return fmt.Errorf("operations: task %s left running: %w", r.ID, err)
		}
		now := m.deps.Now()
		t.State, t.Error, t.Updated, t.Finished = TaskInterrupted, RestartedReason, now, now
		if err := m.persist(t, m.history(t, string(TaskRunning), RestartedReason)); err != nil {
			return fmt.Errorf("operations: mark task %s interrupted: %w", t.ID, err)
		}
		m.log.Warn().Str("host", t.Host).Str("task", t.ID).Str("op", string(t.Op)).Msg("task was running when the daemon stopped: marked interrupted")
	}
	return nil
}

// Start checks req against the host's state and lock (Check), takes the
// host's lock, persists the task and runs its executor in the background.
// It returns the task as started. A refusal wraps ErrInvalid, ErrNotFound,
// ErrConflict or ErrUnavailable and names what is wrong; nothing was
// recorded then.
func (m *Manager) Start(req Request) (Task, error) {
	if err := Validate(req); err != nil {
		return Task{}, err
	}
	exec := m.deps.Executors.get(req.Op)
	if exec == nil {
		return Task{}, fmt.Errorf("%w: %s is not available in this daemon", ErrUnavailable, req.Op)
	}
	v, err := m.view(req)
	if err != nil {
		return Task{}, err
	}
	// m.mu is held from here: the lock check and the lock's taking are one step.
	if err := Check(req, v); err != nil {
		m.mu.Unlock()
		return Task{}, err
	}
	now := m.deps.Now()
	t := Task{ID: m.deps.NewID(), Host: req.Host, Op: req.Op, Target: req.Target, MigrateLocalDiskVMs: req.MigrateLocalDiskVMs,
		Reason: req.Reason, Actor: req.Actor, State: TaskRunning, Created: now, Updated: now, Progress: []VMProgress{}}
	if req.Force {
		t.Overridden = Overrides(req, v)
	}
	if err := m.persist(t, m.history(t, "", "")); err != nil {
		m.mu.Unlock()
		return Task{}, fmt.Errorf("operations: %s %s: record the task: %w", req.Op, req.Host, err)
	}
	r := &run{task: t, done: make(chan struct{})}
	m.locks[t.Host] = Holder{TaskID: t.ID, Op: t.Op, Owner: t.Actor, Since: now}
	m.running[t.ID] = r
	m.wg.Add(1)
	m.mu.Unlock()

	m.log.Info().Str("host", t.Host).Str("task", t.ID).Str("op", string(t.Op)).Str("actor", t.Actor).Str("target", t.Target).
		Msg("operation started")
	go m.execute(r, exec)
	return cloneTask(t), nil
}

// viewAttempts bounds how often Start re-reads a view that a lock release
// made stale.
const viewAttempts = 5

// view reads the host's (and target's) state without holding m.mu (View
// calls into the daemon and the detector, which must never wait for the
// Manager), then returns with m.mu held and the locks filled in, provided
// no lock on either host was released meanwhile: a release may come with a
// state change (recovery marks a host drained), so the view is read again.
func (m *Manager) view(req Request) (HostView, error) {
	for attempt := 1; ; attempt++ {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return HostView{}, fmt.Errorf("%w: the daemon is stopping", ErrUnavailable)
		}
		gh, gt := m.gen[req.Host], m.gen[req.Target]
		m.mu.Unlock()
		v, err := m.deps.View(req.Host)
		if err == nil && req.Target != "" {
			var tv HostView
			tv, err = m.deps.View(req.Target)
			tv.Name = req.Target
			v.Target = &tv
		}
		if err != nil {
			return HostView{}, fmt.Errorf("operations: %s %s: read host state: %w", req.Op, req.Host, err)
		}
		v.Name = req.Host
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return HostView{}, fmt.Errorf("%w: the daemon is stopping", ErrUnavailable)
		}
		if m.gen[req.Host] == gh && m.gen[req.Target] == gt {
			if h, ok := m.locks[req.Host]; ok {
				v.Lock = &h
			}
			if v.Target != nil {
				if h, ok := m.locks[req.Target]; ok {
					v.Target.Lock = &h
				}
			}
			return v, nil
		}
		m.mu.Unlock()
		if attempt == viewAttempts {
			return HostView{}, fmt.Errorf("%w: %s %s: the host's state kept changing while it was read; try again", ErrConflict, req.Op, req.Host)
		}
	}
}

// release frees host's lock if holder still has it. Called with m.mu held.
func (m *Manager) release(host string, holder Holder) {
	if cur, ok := m.locks[host]; ok && cur == holder {
		delete(m.locks, host)
		m.gen[host]++
	}
}

func (m *Manager) timeout(op Op) time.Duration {
	if d, ok := m.cfg.Timeouts[op]; ok {
		return d
	}
	return DefaultTimeouts[op]
}

func (m *Manager) execute(r *run, exec Executor) {
	defer m.wg.Done()
	t := r.snapshot()
	d := m.timeout(t.Op)
	ctx, cancel := context.WithTimeout(m.ctx, d)
	defer cancel()
	result, err := call(ctx, exec, t, func(vms ...VMProgress) { m.report(r, vms) })
	switch {
	case err == nil:
		m.finish(r, TaskSucceeded, result, "")
	case m.ctx.Err() != nil:
		m.finish(r, TaskInterrupted, result, "daemon stopped during the task: "+err.Error())
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		m.finish(r, TaskFailed, result, fmt.Sprintf("timed out after %s: %v", d, err))
	default:
		m.finish(r, TaskFailed, result, err.Error())
	}
}

// call runs the executor, turning a panic into the task's error: one bad
// executor must not take the daemon (and every host's lock) down.
func call(ctx context.Context, exec Executor, t Task, report Report) (result string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("executor panicked: %v", p)
		}
	}()
	return exec(ctx, t, report)
}

func (r *run) snapshot() Task {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneTask(r.task)
}

func cloneTask(t Task) Task {
	t.Progress = append([]VMProgress{}, t.Progress...)
	return t
}

// report merges lines into the task and persists it. Lines arriving after
// the task finished are dropped.
func (m *Manager) report(r *run, vms []VMProgress) {
	if len(vms) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return
	}
	now := m.deps.Now()
	r.task.Progress = Merge(r.task.Progress, vms, now)
	r.task.Updated = now
	if err := m.persist(r.task); err != nil {
		m.log.Error().Err(err).Str("host", r.task.Host).Str("task", r.task.ID).Msg("task progress not persisted")
	}
}

// Merge returns cur with lines merged in: a line for a VM already listed
// (same UUID, or same name when UUID is empty) replaces it in place, a new
// one is appended. Lines without At get now.
func Merge(cur, lines []VMProgress, now time.Time) []VMProgress {
	out := append([]VMProgress{}, cur...)
	idx := make(map[string]int, len(out))
	for i, v := range out {
		idx[v.key()] = i
	}
	for _, v := range lines {
		if v.At.IsZero() {
			v.At = now
		}
		if i, ok := idx[v.key()]; ok {
			out[i] = v
			continue
		}
		idx[v.key()] = len(out)
		out = append(out, v)
	}
	return out
}

func (m *Manager) finish(r *run, st TaskState, result, errText string) {
	// The record and the history come first: whoever sees the task done
	// (and may start the next operation on the host) also finds its end in
	// the store and in the history.
	r.mu.Lock()
	now := m.deps.Now()
	t := cloneTask(r.task)
	r.mu.Unlock()
	t.State, t.Result, t.Error = st, result, errText
	t.Updated, t.Finished = now, now
	if err := m.persist(t, m.history(t, string(TaskRunning), "")); err != nil {
		// The store keeps it "running" and the history its start: the
		// next start marks it interrupted and records that.
		m.log.Error().Err(err).Str("host", t.Host).Str("task", t.ID).Msg("task result not persisted")
	}

	// The end and the lock's release are one step for observers.
	m.mu.Lock()
	r.mu.Lock()
	r.finished = true
	r.task.State, r.task.Result, r.task.Error = st, result, errText
	r.task.Updated, r.task.Finished = now, now
	r.mu.Unlock()
	if h, ok := m.locks[t.Host]; ok && h.TaskID == t.ID {
		m.release(t.Host, h)
	}
	m.mu.Unlock()
	ev := m.log.Info()
	if st != TaskSucceeded {
		ev = m.log.Error()
	}
	ev.Str("host", t.Host).Str("task", t.ID).Str("op", string(t.Op)).Str("state", string(st)).Str("result", result).Str("error", errText).
		Msg("operation finished")
	m.mu.Lock()
	delete(m.running, t.ID)
	m.mu.Unlock()
	close(r.done)
}

// persist writes the task and its history records in one step: the API
// never shows a task state the history lacks.
func (m *Manager) persist(t Task, recs ...store.Record) error {
	body, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("encode task %s: %w", t.ID, err)
	}
	return m.deps.Store.PutOpTaskRecords(store.OpTaskRecord{ID: t.ID, Host: t.Host, Running: t.State == TaskRunning,
		Created: t.Created, Updated: t.Updated, Body: body}, recs...)
}

// history is the record of a task's start (from "") or end, with the
// actor and reason; persist writes it with the task.
func (m *Manager) history(t Task, from, reason string) store.Record {
	to := string(t.State)
	summary := fmt.Sprintf("%s %s by %s", t.Op, t.Host, t.Actor)
	if t.Target != "" {
		summary += " to " + t.Target
	}
	switch {
	case from == "":
		summary += " started"
	default:
		summary += " " + to
		if t.Result != "" {
			summary += ": " + t.Result
		}
		if t.Error != "" {
			summary += ": " + t.Error
		}
	}
	if t.Reason != "" {
		summary += " (reason: " + t.Reason + ")"
	}
	if len(t.Overridden) > 0 && from == "" {
		summary += "; forced over: " + strings.Join(t.Overridden, "; ")
	}
	if reason != "" && reason != t.Error {
		summary += "; " + reason
	}
	ev, _ := json.Marshal(map[string]any{"task": t.ID, "op": t.Op, "actor": t.Actor, "target": t.Target, "reason": t.Reason,
		"state": t.State, "progress": t.Progress, "overridden": t.Overridden})
	at := t.Updated
	if at.IsZero() {
		at = m.deps.Now()
	}
	return store.Record{At: at, Host: t.Host, Kind: HistoryKind, From: from, To: to,
		Reason: summary, CorrelationID: t.ID, Evidence: ev}
}

// Task returns the task with this ID (ErrNotFound if none).
func (m *Manager) Task(id string) (Task, error) {
	m.mu.Lock()
	r := m.running[id]
	m.mu.Unlock()
	if r != nil {
		return r.snapshot(), nil
	}
	if id == "" {
		return Task{}, fmt.Errorf("%w: task ID is empty", ErrInvalid)
	}
	rec, ok, err := m.deps.Store.OpTaskByID(id)
	if err != nil {
		if errors.Is(err, store.ErrInvalid) {
			return Task{}, fmt.Errorf("%w: task ID %q: %v", ErrInvalid, id, err)
		}
		return Task{}, fmt.Errorf("operations: task %s: %w", id, err)
	}
	if !ok {
		return Task{}, fmt.Errorf("%w: no task %q", ErrNotFound, id)
	}
	return decode(rec)
}

// Tasks returns host's tasks (every host's when host is ""), oldest first.
func (m *Manager) Tasks(host string) ([]Task, error) {
	recs, err := m.deps.Store.OpTasks(host)
	if err != nil {
		return nil, fmt.Errorf("operations: tasks of %q: %w", host, err)
	}
	out := make([]Task, 0, len(recs))
	seen := map[string]bool{}
	m.mu.Lock()
	running := make(map[string]*run, len(m.running))
	for id, r := range m.running {
		running[id] = r
	}
	m.mu.Unlock()
	for _, rec := range recs {
		if r := running[rec.ID]; r != nil {
			out = append(out, r.snapshot())
			seen[rec.ID] = true
			continue
		}
		t, err := decode(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	// A running task whose first write raced this read is still listed.
	for id, r := range running {
		if t := r.snapshot(); !seen[id] && (host == "" || t.Host == host) {
			out = append(out, t)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Wait blocks until the task finishes or ctx ends, and returns the task as
// it is then (with ctx's error if ctx ended first).
func (m *Manager) Wait(ctx context.Context, id string) (Task, error) {
	m.mu.Lock()
	r := m.running[id]
	m.mu.Unlock()
	if r == nil {
		return m.Task(id)
	}
	select {
	case <-r.done:
		return r.snapshot(), nil
	case <-ctx.Done():
		return r.snapshot(), fmt.Errorf("operations: wait for task %s: %w", id, ctx.Err())
	}
}

// Lock reports who holds host's lock.
func (m *Manager) Lock(host string) (Holder, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.locks[host]
	return h, ok
}

// TryLock takes host's lock for owner (e.g. "recovery") without a task, so
// that work outside the Manager (the automatic fence and evacuation)
// excludes operations on the host and they exclude it. It never waits: a
// held lock is ErrConflict naming the holder. release is idempotent.
func (m *Manager) TryLock(host, owner string) (release func(), err error) {
	if host == "" || owner == "" {
		return nil, fmt.Errorf("%w: TryLock needs a host and an owner (got %q, %q)", ErrInvalid, host, owner)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if h, ok := m.locks[host]; ok {
		return nil, fmt.Errorf("%w: host %s is locked by %s since %s", ErrConflict, host, h, h.Since.UTC().Format(time.RFC3339))
	}
	h := Holder{Owner: owner, Since: m.deps.Now()}
	m.locks[host] = h
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.release(host, h)
		})
	}, nil
}

// Close refuses new operations, cancels the running ones' contexts and
// waits for their executors to return; their tasks end TaskInterrupted.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
}

func decode(r store.OpTaskRecord) (Task, error) {
	var t Task
	if err := json.Unmarshal(r.Body, &t); err != nil {
		return Task{}, fmt.Errorf("operations: task %s does not decode: %w", r.ID, err)
	}
	if t.ID != r.ID || t.Host != r.Host {
		return Task{}, fmt.Errorf("operations: task stored as %s on %s says it is %s on %s", r.ID, r.Host, t.ID, t.Host)
	}
	if t.Progress == nil {
		t.Progress = []VMProgress{}
	}
	return t, nil
}
