package store

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func opTask(id, host string, running bool, minute int) OpTaskRecord {
	at := t0.Add(time.Duration(minute) * time.Minute)
	return OpTaskRecord{ID: id, Host: host, Running: running, Created: at, Updated: at, Body: json.RawMessage(`{"id": "` + id + `"}`)}
}

func TestOpTasksRoundTripAndFilters(t *testing.T) {
	s, path := openTemp(t, Options{})
	require.NoError(t, s.PutOpTask(opTask("op-b", "h1", true, 2)))
	require.NoError(t, s.PutOpTask(opTask("op-a", "h2", false, 1)))
	require.NoError(t, s.PutOpTask(opTask("op-c", "h1", false, 3)))

	all, err := s.OpTasks("")
	require.NoError(t, err)
	require.Len(t, all, 3)
	assert.Equal(t, []string{"op-a", "op-b", "op-c"}, []string{all[0].ID, all[1].ID, all[2].ID}, "oldest Created first")
	assert.JSONEq(t, `{"id":"op-a"}`, string(all[0].Body))
	assert.Equal(t, `{"id":"op-a"}`, string(all[0].Body), "stored compacted")

	h1, err := s.OpTasks("h1")
	require.NoError(t, err)
	assert.Equal(t, []string{"op-b", "op-c"}, []string{h1[0].ID, h1[1].ID})

	open, err := s.OpenOpTasks()
	require.NoError(t, err)
	require.Len(t, open, 1)
	assert.Equal(t, "op-b", open[0].ID)

	// Finishing it replaces the record.
	done := opTask("op-b", "h1", false, 2)
	done.Body = json.RawMessage(`{"id":"op-b","state":"succeeded"}`)
	require.NoError(t, s.PutOpTask(done))
	open, err = s.OpenOpTasks()
	require.NoError(t, err)
	assert.Empty(t, open)

	// Survives a reopen.
	require.NoError(t, s.Close())
	s, err = Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()
	r, ok, err := s.OpTaskByID("op-b")
	require.NoError(t, err)
	require.True(t, ok)
	assert.False(t, r.Running)
	assert.JSONEq(t, `{"id":"op-b","state":"succeeded"}`, string(r.Body))
	assert.Equal(t, t0.Add(time.Duration(2)*time.Minute), r.Created)
	_, ok, err = s.OpTaskByID("op-zz")
	require.NoError(t, err)
	assert.False(t, ok)
}

func TestPutOpTaskRefusesBadInput(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.PutOpTask(opTask("op-1", "h1", true, 0)))
	for name, tc := range map[string]struct {
		r    OpTaskRecord
		want string
	}{
		"empty id":      {OpTaskRecord{Host: "h", Created: t0, Updated: t0, Body: json.RawMessage(`{}`)}, "operation task ID is empty"},
		"nul id":        {OpTaskRecord{ID: "a\x00b", Host: "h", Created: t0, Updated: t0, Body: json.RawMessage(`{}`)}, "contains a NUL byte"},
		"empty host":    {OpTaskRecord{ID: "x", Created: t0, Updated: t0, Body: json.RawMessage(`{}`)}, "host is empty"},
		"zero created":  {OpTaskRecord{ID: "x", Host: "h", Updated: t0, Body: json.RawMessage(`{}`)}, "Created or Updated is zero"},
		"array body":    {OpTaskRecord{ID: "x", Host: "h", Created: t0, Updated: t0, Body: json.RawMessage(`[1]`)}, "body is not a JSON object"},
		"broken body":   {OpTaskRecord{ID: "x", Host: "h", Created: t0, Updated: t0, Body: json.RawMessage(`{"a":`)}, "body is not a JSON object"},
		"host switched": {opTask("op-1", "h2", true, 0), `operation task "op-1" is for host "h1", not "h2"`},
	} {
		t.Run(name, func(t *testing.T) {
			err := s.PutOpTask(tc.r)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, _, err := s.OpTaskByID("")
	require.ErrorIs(t, err, ErrInvalid)
	all, err := s.OpTasks("")
	require.NoError(t, err)
	require.Len(t, all, 1, "nothing refused was written")
	assert.Equal(t, "h1", all[0].Host)
}

func TestOpTaskCorruptValueReported(t *testing.T) {
	s, path := openTemp(t, Options{})
	require.NoError(t, s.Close())
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bOpTasks).Put([]byte("op-x"), []byte(`{"id":"op-y","body":{}}`))
	})
	s, err := Open(path, Options{})
	require.NoError(t, err)
	defer s.Close()
	_, err = s.OpTasks("")
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), `operation task under key "op-x" says it is "op-y"`)
}

// TestPutOpTaskRecordsIsOneStep: an operation's state and its history
// record are written together, or neither is.
func TestPutOpTaskRecordsIsOneStep(t *testing.T) {
	s, _ := openTemp(t, Options{})
	r := opTask("op-1", "h1", true, 0)
	require.NoError(t, s.PutOpTaskRecords(r, Record{At: t0, Host: "h1", Kind: "operation", To: "running", Reason: "drain h1 started"}))
	hist, err := s.History(Query{Host: "h1", Kind: "operation"})
	require.NoError(t, err)
	require.Len(t, hist, 1)

	done := opTask("op-1", "h1", false, 1)
	err = s.PutOpTaskRecords(done, Record{Host: "h1", Kind: "operation"}) // no At: refused
	require.ErrorIs(t, err, ErrInvalid)
	got, ok, err := s.OpTaskByID("op-1")
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, got.Running, "the task is as before")
	hist, err = s.History(Query{Host: "h1"})
	require.NoError(t, err)
	assert.Len(t, hist, 1)
}
