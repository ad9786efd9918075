package store

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/chimestack/chime-fence/node"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t *testing.T, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", FileName)
	s, err := Open(path, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// rawUpdate edits the file behind the store's back, as damage would.
func rawUpdate(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	require.NoError(t, err)
	require.NoError(t, db.Update(fn))
	require.NoError(t, db.Close())
}

func rec(host, kind string, at time.Time) Record {
	return Record{At: at, Host: host, Kind: kind}
}

func TestPath(t *testing.T) {
	assert.Equal(t, "/var/lib/chime-fence/chime-fence.db", Path("/var/lib/chime-fence"))
}

func TestOpenCreatesDirAndFilePrivate(t *testing.T) {
	s, path := openTemp(t, Options{})
	assert.Equal(t, path, s.Path())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	di, err := os.Stat(filepath.Dir(path))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), di.Mode().Perm())
}

func TestOpenRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		path string
		opts Options
		want string
	}{
		"empty path":   {"", Options{}, "empty path"},
		"max records":  {Path(dir), Options{MaxRecords: -1}, "MaxRecords -1 is negative"},
		"lock timeout": {Path(dir), Options{LockTimeout: -time.Second}, "LockTimeout -1s is negative"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Open(tc.path, tc.opts)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	s, path := openTemp(t, Options{})
	first, err := s.Append(
		Record{At: t0, Host: "a", Kind: "monitor", From: "normal", To: "suspect", CorrelationID: "c1",
			Evidence: json.RawMessage(`{"heartbeat_age_ms": 15000}`)},
		rec("", "storm", t0.Add(time.Second)),
	)
	require.NoError(t, err)
	_, err = s.SetAdminState("b", node.Drained, Record{At: t0.Add(2 * time.Second), Reason: "operator"})
	require.NoError(t, err)
	homes := []DomainHome{
		{UUID: "u1", Name: "vm1", Host: "a", Since: t0},
		{UUID: "u2", Name: "vm2", Host: "b", Since: t0.Add(time.Minute)},
	}
	require.NoError(t, s.UpdateDomainHomes(homes, nil))
	memos := map[string]HostMemo{
		"a": {BootID: "boot-a", LastHeartbeat: t0, LastVerdict: "healthy", LastVerdictAt: t0, Monitor: "normal"},
	}
	require.NoError(t, s.PutHostMemos(memos))
	before, err := s.History(Query{})
	require.NoError(t, err)
	require.Len(t, before, 3)
	require.NoError(t, s.Close())

	s2, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })

	after, err := s2.History(Query{})
	require.NoError(t, err)
	assert.Equal(t, before, after)
	assert.Equal(t, first, after[:2], "History returns what Append returned")
	assert.JSONEq(t, `{"heartbeat_age_ms": 15000}`, string(after[0].Evidence))

	states, err := s2.AdminStates()
	require.NoError(t, err)
	assert.Equal(t, map[string]node.AdminState{"b": node.Drained}, states)

	gotHomes, err := s2.DomainHomes()
	require.NoError(t, err)
	assert.Equal(t, map[string]DomainHome{"u1": homes[0], "u2": homes[1]}, gotHomes)

	gotMemos, err := s2.HostMemos()
	require.NoError(t, err)
	assert.Equal(t, memos, gotMemos)

	more, err := s2.Append(rec("a", "verdict", t0.Add(time.Hour)))
	require.NoError(t, err)
	assert.Equal(t, after[2].ID+1, more[0].ID, "IDs continue after reopen")
}

func TestOpenLockedFileFailsClearly(t *testing.T) {
	s, path := openTemp(t, Options{})
	start := time.Now()
	_, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	require.ErrorIs(t, err, ErrLocked)
	assert.Less(t, time.Since(start), 5*time.Second, "must give up, not hang")
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "another chime-fence daemon probably runs")

	// The failed Open must not have left anything that blocks the owner.
	_, err = s.Append(rec("a", "monitor", t0))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	s2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	require.NoError(t, err, "lock is free once the owner closed")
	require.NoError(t, s2.Close())
}

func TestOpenGarbageFileFailsClearly(t *testing.T) {
	random := make([]byte, 64<<10)
	_, _ = rand.Read(random)
	for name, content := range map[string][]byte{
		"random 64KiB": random,
		"short text":   []byte("hello"),
		"json":         []byte(`{"hosts": ["a", "b"]}` + string(make([]byte, 8192))),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			require.NoError(t, os.WriteFile(path, content, 0o600))
			_, err := Open(path, Options{})
			require.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), path)
			got, rerr := os.ReadFile(path)
			require.NoError(t, rerr)
			assert.Equal(t, content, got, "a file Open refused is left untouched")
		})
	}
}

func TestOpenForeignBboltFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("someone-elses"))
		return err
	})
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "no chime-fence schema key")
}

func TestOpenDirectoryFailsClearly(t *testing.T) {
	path := t.TempDir()
	_, err := Open(path, Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "store: open "+path)
}

func TestOpenNewerSchemaRefused(t *testing.T) {
	s, path := openTemp(t, Options{})
	require.NoError(t, s.Close())
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bMeta).Put(kSchema, u64(SchemaVersion+1))
	})
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, ErrSchema)
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), fmt.Sprintf("schema version %d, this build reads up to %d", SchemaVersion+1, SchemaVersion))
}

func TestOpenMigratesSchema1(t *testing.T) {
	s, path := openTemp(t, Options{})
	_, err := s.Append(rec("a", "monitor", t0))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	// Make it a schema-1 file: the v1 buckets only.
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		for _, b := range allBuckets[len(v1Buckets):] {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(kSchema, u64(1))
	})
	s, err = Open(path, Options{})
	require.NoError(t, err)
	recs, err := s.History(Query{})
	require.NoError(t, err)
	assert.Len(t, recs, 1, "history survives the migration")
	require.NoError(t, s.view("t", func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			assert.NotNil(t, tx.Bucket(b), "bucket %s", b)
		}
		assert.Equal(t, u64(SchemaVersion), tx.Bucket(bMeta).Get(kSchema))
		return nil
	}))
	require.NoError(t, s.Close())
}

func TestOpenMigratesSchema2(t *testing.T) {
	s, path := openTemp(t, Options{})
	_, err := s.Append(rec("a", "monitor", t0))
	require.NoError(t, err)
	require.NoError(t, s.PutFence(FenceRecord{Host: "a", State: FenceVerified, Started: t0}))
	require.NoError(t, s.Close())
	// Make it a schema-2 file: no operation tasks.
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		for _, b := range allBuckets[len(v2Buckets):] {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(kSchema, u64(2))
	})
	// A schema-2 file without its schema-3 bucket is valid as it is...
	ro, err := openBolt(path, time.Second, true)
	require.NoError(t, err)
	require.NoError(t, ro.View(func(tx *bolt.Tx) error {
		_, v, err := schemaState(tx)
		assert.Equal(t, uint64(2), v)
		return err
	}))
	require.NoError(t, ro.Close())
	// ...and Open migrates it, keeping what it held.
	s, err = Open(path, Options{})
	require.NoError(t, err)
	recs, err := s.History(Query{})
	require.NoError(t, err)
	assert.Len(t, recs, 1, "history survives the migration")
	fences, err := s.Fences()
	require.NoError(t, err)
	assert.Equal(t, FenceVerified, fences["a"].State, "fence journal survives the migration")
	require.NoError(t, s.PutOpTask(OpTaskRecord{ID: "op-1", Host: "a", Running: true, Created: t0, Updated: t0, Body: json.RawMessage(`{"id":"op-1"}`)}))
	require.NoError(t, s.view("t", func(tx *bolt.Tx) error {
		assert.NotNil(t, tx.Bucket(bOpTasks))
		assert.Equal(t, u64(3), tx.Bucket(bMeta).Get(kSchema))
		return nil
	}))
	require.NoError(t, s.Close())
	// A schema-3 file missing the bucket is damaged, not old.
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket(bOpTasks) })
	_, err = Open(path, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "bucket op-tasks is missing")
}

func TestOpenMissingBucketIsCorrupt(t *testing.T) {
	s, path := openTemp(t, Options{})
	require.NoError(t, s.Close())
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.DeleteBucket(bIdxHost) })
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "bucket idx-host is missing")
}

func TestClosedStoreRefusesCalls(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "closing twice is harmless")

	_, err := s.Append(rec("a", "monitor", t0))
	require.ErrorIs(t, err, ErrClosed)
	assert.Contains(t, err.Error(), "store: append history")
	_, err = s.History(Query{})
	require.ErrorIs(t, err, ErrClosed)
	_, err = s.AdminStates()
	require.ErrorIs(t, err, ErrClosed)
	err = s.PutHostMemos(map[string]HostMemo{"a": {}})
	require.ErrorIs(t, err, ErrClosed)
}

// TestOpenDamagedPagesFailsClearly overwrites one page at a time of a real
// store: Open and the calls after it must report ErrCorrupt naming the
// file, never panic, and a failed Open must release the file lock.
func TestOpenDamagedPagesFailsClearly(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.db")
	s, err := Open(golden, Options{})
	require.NoError(t, err)
	for i := range 200 {
		_, err := s.Append(rec("a", "monitor", t0.Add(time.Duration(i)*time.Second)))
		require.NoError(t, err)
	}
	require.NoError(t, s.PutHostMemos(map[string]HostMemo{"a": {BootID: "b1"}}))
	require.NoError(t, s.Close())
	clean, err := os.ReadFile(golden)
	require.NoError(t, err)

	pageSize := os.Getpagesize()
	byStep := map[string]int{}
	for p := 2; p < len(clean)/pageSize; p++ {
		damaged := bytes.Clone(clean)
		copy(damaged[p*pageSize:(p+1)*pageSize], bytes.Repeat([]byte{0xa5}, pageSize))
		path := filepath.Join(dir, fmt.Sprintf("page-%d.db", p))
		require.NoError(t, os.WriteFile(path, damaged, 0o600))

		s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt, "page %d", p)
			assert.Contains(t, err.Error(), path)
			byStep[strings.SplitN(err.Error(), " (", 2)[0]]++
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			assert.NoError(t, syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB), "page %d: lock released", p)
			require.NoError(t, f.Close())
			continue
		}
		byStep["opened"]++ // a free page: nothing reads it
		_, err = s.History(Query{Limit: 1000})
		assert.NoError(t, err, "page %d", p)
		_, err = s.Append(rec("a", "monitor", t0))
		assert.NoError(t, err, "page %d", p)
		require.NoError(t, s.Close())
	}
	t.Logf("outcomes: %v", byStep)
	assert.Positive(t, byStep["store: check consistency"], "the consistency check catches damaged data pages")
	assert.Less(t, byStep["opened"], len(clean)/pageSize/2, "most damage is caught at Open")
}

// TestOpenEmptyFileRefused: an existing 0-byte state file is not a fresh
// start. Starting empty forgot every drained and fenced host, every domain
// home and every fence in flight.
func TestOpenEmptyFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "the file is empty (0 bytes)")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "a refused file is left as it was")
}

// TestOpenTruncatedFileRefused cuts a real store short at every half page:
// bbolt mapped such a file and died of SIGBUS reading past its end (no
// recover catches that), so this test passing at all is half the proof.
func TestOpenTruncatedFileRefused(t *testing.T) {
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.db")
	s, err := Open(golden, Options{})
	require.NoError(t, err)
	for i := range 300 {
		_, err := s.Append(rec("a", "monitor", t0.Add(time.Duration(i)*time.Second)))
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())
	clean, err := os.ReadFile(golden)
	require.NoError(t, err)
	step := os.Getpagesize() / 2
	require.Greater(t, len(clean), 8*step, "the golden store spans several pages")

	refused := 0
	for n := 1; n < len(clean); n += step {
		path := filepath.Join(dir, fmt.Sprintf("cut-%d.db", n))
		require.NoError(t, os.WriteFile(path, clean[:n], 0o600))
		s, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
		if err == nil {
			// Only a cut inside trailing free pages may open; then it must work.
			_, herr := s.History(Query{Limit: 1000})
			assert.NoError(t, herr, "cut at %d", n)
			require.NoError(t, s.Close())
			continue
		}
		refused++
		require.ErrorIs(t, err, ErrCorrupt, "cut at %d", n)
		assert.Contains(t, err.Error(), path)
		if n >= 2*os.Getpagesize() {
			assert.Contains(t, err.Error(), "truncated", "cut at %d", n)
		}
	}
	assert.Positive(t, refused)
}
