package operations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// clock is a manual clock; every reading advances it a millisecond so
// records are ordered.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Millisecond)
	return c.now
}

type fixture struct {
	st    *store.Store
	path  string
	clk   *clock
	views map[string]HostView
	vmu   sync.Mutex
	ids   atomic.Int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), store.FileName)
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	return &fixture{st: st, path: path, clk: &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		views: map[string]HostView{
			"h1": {Known: true, Admin: node.Enabled, Monitor: node.Normal},
			"h2": {Known: true, Admin: node.Enabled, Monitor: node.Normal},
		}}
}

func (f *fixture) view(host string) (HostView, error) {
	f.vmu.Lock()
	defer f.vmu.Unlock()
	return f.views[host], nil
}

func (f *fixture) manager(t *testing.T, cfg Config, ex Executors) *Manager {
	t.Helper()
	m, err := New(cfg, Deps{Store: f.st, View: f.view, Executors: ex, Now: f.clk.Now,
		NewID: func() string { return fmt.Sprintf("op-%d", f.ids.Add(1)) }, Log: zerolog.Nop()})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	return m
}

func req(op Op) Request {
	r := reqFor(op)
	r.Reason = "maintenance window 42"
	return r
}

func TestManagerRunsATaskHoldingTheLock(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	reported := make(chan struct{})
	m := f.manager(t, Config{}, Executors{Disable: func(ctx context.Context, tk Task, report Report) (string, error) {
		report(VMProgress{UUID: "u1", Name: "web", State: VMRunning}, VMProgress{Name: "db", State: VMPending})
		close(reported)
		<-release
		report(VMProgress{UUID: "u1", Name: "web", State: VMDone, Detail: "moved"})
		return "all done", nil
	}, Enable: func(context.Context, Task, Report) (string, error) { return "", nil }})

	tk, err := m.Start(req(OpDisable))
	require.NoError(t, err)
	assert.Equal(t, "op-1", tk.ID)
	assert.Equal(t, TaskRunning, tk.State)
	assert.Equal(t, "alice", tk.Actor)
	assert.Equal(t, "maintenance window 42", tk.Reason)
	<-reported

	// The host is locked: a second operation is refused, naming the task.
	_, err = m.Start(req(OpEnable))
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "task op-1 (disable by alice)")
	h, ok := m.Lock("h1")
	require.True(t, ok)
	assert.Equal(t, "op-1", h.TaskID)
	// Other hosts are free.
	_, ok = m.Lock("h2")
	assert.False(t, ok)

	// Progress is visible and persisted while it runs.
	got, err := m.Task("op-1")
	require.NoError(t, err)
	require.Len(t, got.Progress, 2)
	assert.Equal(t, VMRunning, got.Progress[0].State)
	rec, ok, err := f.st.OpTaskByID("op-1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, rec.Running)
	assert.Contains(t, string(rec.Body), `"name":"db"`)

	close(release)
	done, err := m.Wait(context.Background(), "op-1")
	require.NoError(t, err)
	assert.Equal(t, TaskSucceeded, done.State)
	assert.Equal(t, "all done", done.Result)
	require.Len(t, done.Progress, 2, "the line for web was replaced, not appended")
	assert.Equal(t, VMProgress{UUID: "u1", Name: "web", State: VMDone, Detail: "moved", At: done.Progress[0].At}, done.Progress[0])
	assert.False(t, done.Finished.IsZero())
	_, ok = m.Lock("h1")
	assert.False(t, ok, "lock released")

	// Stored as finished.
	rec, _, err = f.st.OpTaskByID("op-1")
	require.NoError(t, err)
	assert.False(t, rec.Running)
	list, err := m.Tasks("h1")
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, TaskSucceeded, list[0].State)
	none, err := m.Tasks("h2")
	require.NoError(t, err)
	assert.Empty(t, none)

	// History: start and end, with actor and reason, under the task's id.
	hist, err := f.st.History(store.Query{CorrelationID: "op-1"})
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Equal(t, HistoryKind, hist[0].Kind)
	assert.Equal(t, "running", hist[0].To)
	assert.Contains(t, hist[0].Reason, "disable h1 by alice started (reason: maintenance window 42)")
	assert.Equal(t, "running", hist[1].From)
	assert.Equal(t, "succeeded", hist[1].To)
	assert.Contains(t, hist[1].Reason, "disable h1 by alice succeeded: all done")
	var ev map[string]any
	require.NoError(t, json.Unmarshal(hist[1].Evidence, &ev))
	assert.Equal(t, "alice", ev["actor"])
	assert.Equal(t, "op-1", ev["task"])

	// Now the host is free again.
	_, err = m.Start(req(OpEnable))
	require.ErrorIs(t, err, ErrConflict, "the view still says enabled")
	assert.Contains(t, err.Error(), "already enabled")
}

func TestManagerFailuresAreRecorded(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t, Config{Timeouts: map[Op]time.Duration{OpFence: 20 * time.Millisecond}}, Executors{
		Drain:   func(context.Context, Task, Report) (string, error) { return "", errors.New("agent said no") },
		Disable: func(context.Context, Task, Report) (string, error) { panic("boom") },
		Fence: func(ctx context.Context, _ Task, _ Report) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		},
	})
	for _, tc := range []struct {
		op   Op
		host string
		want string
	}{
		{OpDrain, "h1", "agent said no"},
		{OpDisable, "h2", "executor panicked: boom"},
	} {
		r := req(tc.op)
		r.Host = tc.host
		tk, err := m.Start(r)
		require.NoError(t, err)
		done, err := m.Wait(context.Background(), tk.ID)
		require.NoError(t, err)
		assert.Equal(t, TaskFailed, done.State, tc.op)
		assert.Equal(t, tc.want, done.Error, tc.op)
		_, held := m.Lock(tc.host)
		assert.False(t, held, "lock released after a failure")
	}
	tk, err := m.Start(req(OpFence))
	require.NoError(t, err)
	done, err := m.Wait(context.Background(), tk.ID)
	require.NoError(t, err)
	assert.Equal(t, TaskFailed, done.State)
	assert.Contains(t, done.Error, "timed out after 20ms: context deadline exceeded")

	hist, err := f.st.History(store.Query{Kind: HistoryKind, Host: "h2"})
	require.NoError(t, err)
	require.Len(t, hist, 2)
	assert.Contains(t, hist[1].Reason, "disable h2 by alice failed: executor panicked: boom")
}

func TestManagerRefusals(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t, Config{}, Executors{Enable: func(context.Context, Task, Report) (string, error) { return "", nil }})
	_, err := m.Start(req(OpRebuild))
	require.ErrorIs(t, err, ErrUnavailable)
	assert.Contains(t, err.Error(), "rebuild is not available")
	r := req(OpEnable)
	r.Host = "ghost"
	_, err = m.Start(r)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = m.Start(Request{Host: "h1", Op: OpEnable})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = m.Task("op-404")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = m.Wait(context.Background(), "op-404")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = m.Task("a\x00b")
	require.ErrorIs(t, err, ErrInvalid)
	all, err := m.Tasks("")
	require.NoError(t, err)
	assert.Empty(t, all, "no refusal left a task behind")
	hist, err := f.st.History(store.Query{Kind: HistoryKind})
	require.NoError(t, err)
	assert.Empty(t, hist, "nor a history record")
}

func TestManagerOneTaskPerHostUnderContention(t *testing.T) {
	f := newFixture(t)
	f.views["h1"] = HostView{Known: true, Admin: node.Disabled, Monitor: node.Normal}
	release := make(chan struct{})
	m := f.manager(t, Config{}, Executors{
		Enable:  func(context.Context, Task, Report) (string, error) { <-release; return "", nil },
		Drain:   func(context.Context, Task, Report) (string, error) { <-release; return "", nil },
		Migrate: func(context.Context, Task, Report) (string, error) { <-release; return "", nil },
	})
	var wg sync.WaitGroup
	var ok, conflict atomic.Int32
	for i := 0; i < 24; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := m.Start(req([]Op{OpEnable, OpDrain, OpMigrate}[i%3]))
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrConflict):
				conflict.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), ok.Load(), "exactly one operation holds h1")
	assert.Equal(t, int32(23), conflict.Load())
	close(release)
}

func TestTryLockExcludesOperationsAndBack(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	m := f.manager(t, Config{}, Executors{Disable: func(context.Context, Task, Report) (string, error) { <-release; return "ok", nil }})

	unlock, err := m.TryLock("h1", "recovery")
	require.NoError(t, err)
	_, err = m.Start(req(OpDisable))
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "locked by recovery")
	_, err = m.TryLock("h1", "recovery")
	require.ErrorIs(t, err, ErrConflict, "TryLock never nests")
	unlock()
	unlock() // idempotent

	tk, err := m.Start(req(OpDisable))
	require.NoError(t, err)
	unlock() // a stale release must not free the task's lock
	_, err = m.TryLock("h1", "recovery")
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "host h1 is locked by task "+tk.ID+" (disable by alice)")
	close(release)
	_, err = m.Wait(context.Background(), tk.ID)
	require.NoError(t, err)
	unlock, err = m.TryLock("h1", "recovery")
	require.NoError(t, err)
	unlock()

	_, err = m.TryLock("", "recovery")
	require.ErrorIs(t, err, ErrInvalid)
	_, err = m.TryLock("h1", "")
	require.ErrorIs(t, err, ErrInvalid)
}

func TestRestartMarksRunningTasksInterrupted(t *testing.T) {
	f := newFixture(t)
	started := make(chan struct{})
	m, err := New(Config{}, Deps{Store: f.st, View: f.view, Now: f.clk.Now, Log: zerolog.Nop(),
		Executors: Executors{Drain: func(ctx context.Context, _ Task, report Report) (string, error) {
			report(VMProgress{Name: "web", State: VMDone, Detail: "destroyed"})
			close(started)
			<-ctx.Done()
			return "", ctx.Err()
		}}})
	require.NoError(t, err)
	tk, err := m.Start(req(OpDrain))
	require.NoError(t, err)
	assert.Regexp(t, `^op-20260301T120000Z-[0-9a-f]{8}$`, tk.ID, "default IDs carry the time")
	<-started
	// A graceful stop interrupts it.
	m.Close()
	got, err := m.Task(tk.ID)
	require.NoError(t, err)
	assert.Equal(t, TaskInterrupted, got.State)
	assert.Contains(t, got.Error, "daemon stopped during the task")
	require.Len(t, got.Progress, 1, "what was done is kept")
	_, err = m.Start(req(OpDrain))
	require.ErrorIs(t, err, ErrUnavailable, "a closed manager starts nothing")

	// A crash leaves it "running" in the store: the next manager marks it.
	body, _ := json.Marshal(Task{ID: "op-crashed", Host: "h2", Op: OpMigrate, Actor: "bob", State: TaskRunning,
		Created: f.clk.Now(), Updated: f.clk.Now(), Progress: []VMProgress{{Name: "db", State: VMRunning}}})
	require.NoError(t, f.st.PutOpTask(store.OpTaskRecord{ID: "op-crashed", Host: "h2", Running: true, Created: f.clk.Now(), Updated: f.clk.Now(), Body: body}))
	m2 := f.manager(t, Config{}, Executors{})
	got, err = m2.Task("op-crashed")
	require.NoError(t, err)
	assert.Equal(t, TaskInterrupted, got.State)
	assert.Equal(t, RestartedReason, got.Error)
	assert.False(t, got.Finished.IsZero())
	open, err := f.st.OpenOpTasks()
	require.NoError(t, err)
	assert.Empty(t, open)
	hist, err := f.st.History(store.Query{CorrelationID: "op-crashed"})
	require.NoError(t, err)
	require.Len(t, hist, 1)
	assert.Equal(t, "interrupted", hist[0].To)
	assert.Contains(t, hist[0].Reason, "migrate h2 by bob interrupted: daemon restarted during the task")
	_, held := m2.Lock("h2")
	assert.False(t, held, "an interrupted task holds no lock")
}

func TestWaitHonoursContext(t *testing.T) {
	f := newFixture(t)
	release := make(chan struct{})
	defer close(release)
	m := f.manager(t, Config{}, Executors{Disable: func(context.Context, Task, Report) (string, error) { <-release; return "", nil }})
	tk, err := m.Start(req(OpDisable))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	got, err := m.Wait(ctx, tk.ID)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, TaskRunning, got.State)
}

func TestNewRefusesBadDeps(t *testing.T) {
	_, err := New(Config{Timeouts: map[Op]time.Duration{"reboot": time.Second, OpDrain: 0}}, Deps{})
	require.Error(t, err)
	for _, w := range []string{"Store is nil", "View is nil", "Now is nil", `unknown operation "reboot"`, "Timeouts[drain] is 0s, must be positive"} {
		assert.Contains(t, err.Error(), w)
	}
}

func TestMerge(t *testing.T) {
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	cur := []VMProgress{{UUID: "u1", Name: "a", State: VMPending}, {Name: "b", State: VMPending}}
	out := Merge(cur, []VMProgress{{UUID: "u1", Name: "a", State: VMDone}, {Name: "b", State: VMFailed}, {UUID: "u3", Name: "b", State: VMRunning}}, now)
	require.Len(t, out, 3)
	assert.Equal(t, VMDone, out[0].State)
	assert.Equal(t, VMFailed, out[1].State, "no UUID: matched by name")
	assert.Equal(t, "u3", out[2].UUID, "same name, a UUID: another VM")
	assert.Equal(t, now, out[2].At)
	assert.Equal(t, VMPending, cur[0].State, "input untouched")
}

// Whoever sees a task done may start the next operation on its host.
func TestDoneMeansUnlocked(t *testing.T) {
	f := newFixture(t)
	m := f.manager(t, Config{}, Executors{Disable: func(context.Context, Task, Report) (string, error) { return "ok", nil }})
	for i := 0; i < 50; i++ {
		tk, err := m.Start(req(OpDisable))
		require.NoError(t, err)
		for {
			got, err := m.Task(tk.ID)
			require.NoError(t, err)
			if got.State.Done() {
				break
			}
		}
		_, held := m.Lock("h1")
		require.False(t, held, "round %d: task done but host still locked", i)
	}
}

// View runs without the Manager's lock (it calls into the daemon, which
// may call back), and a lock released while it ran makes Start read again:
// the release may have come with a state change.
func TestStartRereadsAViewMadeStaleByARelease(t *testing.T) {
	f := newFixture(t)
	var m *Manager
	calls := 0
	always := false
	view := func(host string) (HostView, error) {
		calls++
		if host == "h1" && (calls == 1 || always) {
			// Recovery fences h1 meanwhile: lock, mark drained, release.
			unlock, err := m.TryLock("h1", "recovery")
			require.NoError(t, err)
			f.vmu.Lock()
			f.views["h1"] = HostView{Known: true, Admin: node.Drained, Monitor: node.Unreachable}
			f.vmu.Unlock()
			unlock()
			return HostView{Known: true, Admin: node.Enabled, Monitor: node.Normal}, nil // what it read before
		}
		return f.view(host)
	}
	var err error
	m, err = New(Config{}, Deps{Store: f.st, View: view, Now: f.clk.Now, Log: zerolog.Nop(),
		Executors: Executors{Disable: func(context.Context, Task, Report) (string, error) { return "", nil }}})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	_, err = m.Start(req(OpDisable))
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "host is drained; only an enabled host can be disabled")
	assert.Equal(t, 2, calls, "read again once")

	always, calls = true, 0
	_, err = m.Start(req(OpDisable))
	require.ErrorIs(t, err, ErrConflict)
	assert.Contains(t, err.Error(), "the host's state kept changing while it was read; try again")
	assert.Equal(t, viewAttempts, calls)
}
