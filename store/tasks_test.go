package store

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func TestTasksRoundTripAndSurviveReopen(t *testing.T) {
	s, path := openTemp(t, Options{})
	local := time.FixedZone("x", 3600)
	a := TaskRecord{ID: "evac-a", Host: "h1", Open: true, Updated: t0.In(local), Body: json.RawMessage(` {"id": "evac-a", "vms": [1, 2]} `)}
	b := TaskRecord{ID: "evac-b", Host: "h2", Open: false, Updated: t0.Add(-time.Minute), Body: json.RawMessage(`{"id":"evac-b"}`)}
	require.NoError(t, s.PutTask(a))
	require.NoError(t, s.PutTask(b))

	got, ok, err := s.TaskByID("evac-a")
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, TaskRecord{ID: "evac-a", Host: "h1", Open: true, Updated: t0, Body: json.RawMessage(`{"id":"evac-a","vms":[1,2]}`)}, got,
		"Updated is stored in UTC, the body compacted")

	// Replacing a task keeps one copy, with the new contents.
	a.Open, a.Updated, a.Body = false, t0.Add(time.Minute), json.RawMessage(`{"id":"evac-a","state":"done"}`)
	require.NoError(t, s.PutTask(a))
	all, err := s.Tasks(false)
	require.NoError(t, err)
	require.Len(t, all, 2)
	assert.Equal(t, []string{"evac-b", "evac-a"}, []string{all[0].ID, all[1].ID}, "oldest Updated first")
	assert.False(t, all[1].Open)
	assert.JSONEq(t, `{"id":"evac-a","state":"done"}`, string(all[1].Body))

	_, ok, err = s.TaskByID("nope")
	require.NoError(t, err)
	assert.False(t, ok, "an unknown ID is not found, not an error")

	require.NoError(t, s.Close())
	s2, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	again, err := s2.Tasks(false)
	require.NoError(t, err)
	assert.Equal(t, all, again, "tasks survive a reopen")
}

func TestTasksOpenOnly(t *testing.T) {
	s, _ := openTemp(t, Options{})
	for i, open := range []bool{true, false, true, false} {
		id := "t" + string(rune('0'+i))
		require.NoError(t, s.PutTask(TaskRecord{ID: id, Host: "h", Open: open, Updated: t0, Body: json.RawMessage(`{}`)}))
	}
	open, err := s.Tasks(true)
	require.NoError(t, err)
	assert.Equal(t, []string{"t0", "t2"}, taskIDs(open), "same Updated: by ID")
	all, err := s.Tasks(false)
	require.NoError(t, err)
	assert.Equal(t, []string{"t0", "t1", "t2", "t3"}, taskIDs(all))

	// Closing a task takes it out of the open list.
	require.NoError(t, s.PutTask(TaskRecord{ID: "t2", Host: "h", Open: false, Updated: t0, Body: json.RawMessage(`{}`)}))
	open, err = s.Tasks(true)
	require.NoError(t, err)
	assert.Equal(t, []string{"t0"}, taskIDs(open))
}

func TestPutTaskRefusesBadInputAndWritesNothing(t *testing.T) {
	good := TaskRecord{ID: "t", Host: "h", Open: true, Updated: t0, Body: json.RawMessage(`{"a":1}`)}
	for name, tc := range map[string]struct {
		mut  func(*TaskRecord)
		want string
	}{
		"empty ID":       {func(r *TaskRecord) { r.ID = "" }, "task ID is empty"},
		"NUL in ID":      {func(r *TaskRecord) { r.ID = "a\x00b" }, `task ID "a\x00b" contains a NUL byte`},
		"long ID":        {func(r *TaskRecord) { r.ID = strings.Repeat("x", 5000) }, "task ID is 5000 bytes, at most 4096"},
		"empty host":     {func(r *TaskRecord) { r.Host = "" }, `task "t": invalid input: host is empty`},
		"zero Updated":   {func(r *TaskRecord) { r.Updated = time.Time{} }, `task "t": Updated is zero`},
		"no body":        {func(r *TaskRecord) { r.Body = nil }, `task "t": body is not a JSON object`},
		"null body":      {func(r *TaskRecord) { r.Body = json.RawMessage("null") }, `task "t": body is not a JSON object`},
		"array body":     {func(r *TaskRecord) { r.Body = json.RawMessage("[1]") }, `task "t": body is not a JSON object`},
		"truncated body": {func(r *TaskRecord) { r.Body = json.RawMessage(`{"a":`) }, `task "t": body is not a JSON object`},
		"trailing junk":  {func(r *TaskRecord) { r.Body = json.RawMessage(`{"a":1} x`) }, `task "t": body is not a JSON object`},
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := openTemp(t, Options{})
			r := good
			tc.mut(&r)
			err := s.PutTask(r)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), "store: put task")
			assert.Contains(t, err.Error(), tc.want)
			all, err := s.Tasks(false)
			require.NoError(t, err)
			assert.Empty(t, all)
		})
	}
}

func TestTaskByIDRefusesBadID(t *testing.T) {
	s, _ := openTemp(t, Options{})
	_, _, err := s.TaskByID("")
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "task ID is empty")
	_, _, err = s.TaskByID("a\x00")
	require.ErrorIs(t, err, ErrInvalid)
}

func TestTasksReportCorruptValues(t *testing.T) {
	for name, tc := range map[string]struct {
		value string
		want  string
	}{
		"not JSON":     {"garbage", `task "bad" does not decode`},
		"other ID":     {`{"id":"other","host":"h","open":true,"updated":"2026-03-01T12:00:00Z","body":{}}`, `task under key "bad" says it is "other"`},
		"missing body": {`{"id":"bad","host":"h","open":true,"updated":"2026-03-01T12:00:00Z"}`, `task "bad" has no JSON body`},
	} {
		t.Run(name, func(t *testing.T) {
			s, path := openTemp(t, Options{})
			require.NoError(t, s.Close())
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bTasks).Put([]byte("bad"), []byte(tc.value))
			})
			s, err := Open(path, Options{})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			_, err = s.Tasks(false)
			require.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), tc.want)
			_, _, err = s.TaskByID("bad")
			require.ErrorIs(t, err, ErrCorrupt)
		})
	}
}

func taskIDs(rs []TaskRecord) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

// TestPutTaskRecordsIsOneStep: the task and its history records are
// written together, or neither is.
func TestPutTaskRecordsIsOneStep(t *testing.T) {
	s, _ := openTemp(t, Options{})
	r := TaskRecord{ID: "evac-a", Host: "h1", Open: true, Updated: t0, Body: json.RawMessage(`{"id":"evac-a","state":"waiting"}`)}
	rec := Record{At: t0, Host: "h1", Kind: "evacuation", To: "waiting", Reason: "1 VM waits"}
	require.NoError(t, s.PutTaskRecords(r, rec))
	got, ok, err := s.TaskByID("evac-a")
	require.NoError(t, err)
	require.True(t, ok)
	assert.JSONEq(t, `{"id":"evac-a","state":"waiting"}`, string(got.Body))
	hist, err := s.History(Query{Host: "h1", Kind: "evacuation"})
	require.NoError(t, err)
	require.Len(t, hist, 1)
	assert.Equal(t, "waiting", hist[0].To)

	// A bad record refuses the whole step: the task is not changed either.
	r.Body = json.RawMessage(`{"id":"evac-a","state":"done"}`)
	err = s.PutTaskRecords(r, Record{Host: "h1", Kind: "evacuation"}) // no At
	require.ErrorIs(t, err, ErrInvalid)
	got, _, err = s.TaskByID("evac-a")
	require.NoError(t, err)
	assert.JSONEq(t, `{"id":"evac-a","state":"waiting"}`, string(got.Body), "the task is as before")
	hist, err = s.History(Query{Host: "h1"})
	require.NoError(t, err)
	assert.Len(t, hist, 1)
}
