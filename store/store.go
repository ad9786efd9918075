package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the name of the state file inside the daemon's state directory.
const FileName = "chime-fence.db"

// SchemaVersion is the layout this build writes. Open refuses a file with a
// higher version and migrates a lower one.
const SchemaVersion = 3

const (
	// DefaultMaxRecords bounds the history when Options.MaxRecords is 0.
	DefaultMaxRecords = 200000
	// DefaultLockTimeout is how long Open waits for the file lock when
	// Options.LockTimeout is 0.
	DefaultLockTimeout = time.Second
)

// Errors callers can test with errors.Is. Every error the store returns also
// names the file and the step.
var (
	// ErrLocked: another process (probably another chime-fence daemon)
	// holds the file's lock.
	ErrLocked = errors.New("state file is locked by another process (another chime-fence daemon probably runs with this state directory)")
	// ErrCorrupt: the file is not a chime-fence state file, or a stored value
	// does not decode.
	ErrCorrupt = errors.New("state file is corrupt or not a chime-fence state file")
	// ErrSchema: the file was written by a newer chime-fence.
	ErrSchema = errors.New("state file was written by a newer chime-fence")
	// ErrInvalid: the caller passed something the store refuses to write or query.
	ErrInvalid = errors.New("invalid input")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store is closed")
)

// Bucket names. Index keys are value + 0x00 + big-endian id, so the fields
// they index may not contain NUL.
var (
	bMeta    = []byte("meta")
	bHistory = []byte("history")
	bIdxHost = []byte("idx-host")
	bIdxKind = []byte("idx-kind")
	bIdxCorr = []byte("idx-corr")
	bAdmin   = []byte("admin")
	bHomes   = []byte("homes")
	bMemos   = []byte("memos")
	// Schema 2: the recovery journal.
	bOutbox    = []byte("outbox")    // alert deliveries not yet acknowledged (alert/)
	bTasks     = []byte("tasks")     // evacuation tasks with per-VM steps (evacuator/)
	bInventory = []byte("inventory") // saved domain XML per host (evacuator/)
	bEvictions = []byte("evictions") // domains a returning host must destroy
	bFences    = []byte("fences")    // fence operations in flight and done (fencer/)
	// Schema 3: operator operations.
	bOpTasks = []byte("op-tasks") // operation tasks (operations/)

	v1Buckets  = [][]byte{bMeta, bHistory, bIdxHost, bIdxKind, bIdxCorr, bAdmin, bHomes, bMemos}
	v2Buckets  = append(append([][]byte{}, v1Buckets...), bOutbox, bTasks, bInventory, bEvictions, bFences)
	allBuckets = append(append([][]byte{}, v2Buckets...), bOpTasks)

	kSchema = []byte("schema")
	kCount  = []byte("history-count")
)

// Options tunes a Store. The zero value is valid.
type Options struct {
	// MaxRecords bounds the history; the oldest records are pruned past it.
	// Default 200000.
	MaxRecords int
	// LockTimeout: how long Open waits for the file lock. Default 1s.
	LockTimeout time.Duration
}

// Store is the daemon's embedded state. It is safe for concurrent use.
type Store struct {
	db         *bolt.DB
	path       string
	maxRecords uint64

	closed atomic.Bool
	// commitErr is the outcome of the last whole commit of a real write
	// (Probe reads it).
	commitErr atomic.Pointer[commitOutcome]
	// broken is set when bbolt panicked inside a write transaction: the
	// file may be damaged, so the store refuses further writes.
	broken atomic.Pointer[error]

	// Group commit: see write.go.
	wmu   sync.Mutex
	queue []*op
	busy  bool
	// beforeCommit, when set (tests only), is called by the committing
	// goroutine with the number of operations in the transaction.
	beforeCommit func(n int)
}

// Path returns the state file's path inside stateDir.
func Path(stateDir string) string { return filepath.Join(stateDir, FileName) }

// Open opens (creating if missing) the state file at path. The parent
// directory is created 0700 and the file 0600 when missing.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("store: open: %w: empty path", ErrInvalid)
	}
	if opts.MaxRecords < 0 {
		return nil, fmt.Errorf("store: open %s: %w: MaxRecords %d is negative", path, ErrInvalid, opts.MaxRecords)
	}
	if opts.LockTimeout < 0 {
		return nil, fmt.Errorf("store: open %s: %w: LockTimeout %s is negative", path, ErrInvalid, opts.LockTimeout)
	}
	if opts.MaxRecords == 0 {
		opts.MaxRecords = DefaultMaxRecords
	}
	if opts.LockTimeout == 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: open %s: create state directory: %w", path, err)
	}

	// Vet an existing file read-only first: opening for writing makes bbolt
	// read the freelist, which panics on some damage, and the mapping such a
	// panic leaves behind keeps the file locked until the process exits.
	if _, err := os.Lstat(path); err == nil {
		if err := vetFile(path); err != nil {
			return nil, err
		}
		ro, err := openBolt(path, opts.LockTimeout, true)
		if err != nil {
			return nil, err
		}
		vet := &Store{db: ro, path: path}
		err = vet.Check()
		if err == nil {
			err = vet.view("check schema", func(tx *bolt.Tx) error {
				_, _, err := schemaState(tx)
				return err
			})
		}
		_ = ro.Close()
		if err != nil {
			return nil, err
		}
	}

	db, err := openBolt(path, opts.LockTimeout, false)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, maxRecords: uint64(opts.MaxRecords)}
	if err := s.initSchema(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// openBolt opens the bbolt file, turning bbolt's errors (and panics, which a
// damaged file can cause) into errors that name the file.
func openBolt(path string, timeout time.Duration, readOnly bool) (db *bolt.DB, err error) {
	var file *os.File
	defer func() {
		if p := recover(); p != nil {
			// bbolt did not hand us the DB, so release its file (and lock) here.
			if file != nil {
				_ = file.Close()
			}
			db, err = nil, fmt.Errorf("store: open %s: %w: bbolt panicked reading it: %v", path, ErrCorrupt, p)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:  timeout,
		ReadOnly: readOnly,
		OpenFile: func(name string, flag int, mode os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, mode)
			file = f
			return f, err
		},
	})
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("store: open %s: %w (gave up after %s): %w", path, ErrLocked, timeout, err)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch),
		errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("store: open %s: %w: %w", path, ErrCorrupt, err)
	default:
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
}

// initSchema initialises a fresh file and checks an existing one.
func (s *Store) initSchema() error {
	const step = "check schema"
	var fresh bool
	var version uint64
	err := s.view(step, func(tx *bolt.Tx) (err error) {
		fresh, version, err = schemaState(tx)
		return err
	})
	if err != nil || (!fresh && version == SchemaVersion) {
		return err
	}
	return s.update(step, func(tx *bolt.Tx) error {
		fresh, version, err := schemaState(tx)
		if err != nil || (!fresh && version == SchemaVersion) {
			return err
		}
		// A fresh file gets every bucket; an older one the buckets added
		// since (each schema so far only added buckets).
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		return tx.Bucket(bMeta).Put(kSchema, u64(SchemaVersion))
	})
}

// schemaState reports whether the file is empty (fresh) and its schema
// version, and refuses a foreign, damaged or newer one.
func schemaState(tx *bolt.Tx) (fresh bool, version uint64, err error) {
	meta := tx.Bucket(bMeta)
	if meta == nil {
		var foreign [][]byte
		_ = tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			foreign = append(foreign, name)
			return nil
		})
		if len(foreign) > 0 {
			return false, 0, fmt.Errorf("%w: it is a bbolt file with buckets %q but no chime-fence schema key", ErrCorrupt, foreign)
		}
		return true, 0, nil
	}
	raw := meta.Get(kSchema)
	if len(raw) != 8 {
		return false, 0, fmt.Errorf("%w: schema key is %d bytes, want 8", ErrCorrupt, len(raw))
	}
	v := binary.BigEndian.Uint64(raw)
	switch {
	case v > SchemaVersion:
		return false, v, fmt.Errorf("%w: schema version %d, this build reads up to %d; run the newer chime-fence or restore a backup", ErrSchema, v, SchemaVersion)
	case v == 0:
		return false, v, fmt.Errorf("%w: schema version 0", ErrCorrupt)
	}
	want := allBuckets
	switch v {
	case 1:
		want = v1Buckets
	case 2:
		want = v2Buckets
	}
	for _, name := range want {
		if tx.Bucket(name) == nil {
			return false, v, fmt.Errorf("%w: bucket %s is missing", ErrCorrupt, name)
		}
	}
	return false, v, nil
}

// Check walks every page of the file and reports damage as ErrCorrupt. Open
// runs it (about 50 ms for a full 200000-record history with a warm page
// cache), so a damaged file stops the daemon at start rather than at the
// first read of the damaged page.
func (s *Store) Check() error {
	return s.view("check consistency", func(tx *bolt.Tx) error {
		var errs []string
		// Drain the channel: the checker goroutine reads the transaction
		// until it has sent everything.
		for err := range tx.Check() {
			if len(errs) < 5 {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%w: %s; move the file aside (losing history, admin states and domain homes) or restore a backup", ErrCorrupt, strings.Join(errs, "; "))
		}
		return nil
	})
}

// Close closes the file. It waits for a transaction in progress; later calls
// return ErrClosed. Closing twice is not an error.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	return nil
}

// Path returns the file this store uses.
func (s *Store) Path() string { return s.path }

// view runs a read transaction, naming the step and the file in any error
// and turning a bbolt panic (a damaged file) into ErrCorrupt.
func (s *Store) view(step string, fn func(*bolt.Tx) error) (err error) {
	if s.closed.Load() {
		return s.wrap(step, ErrClosed)
	}
	defer func() {
		if p := recover(); p != nil {
			err = s.wrap(step, fmt.Errorf("%w: bbolt panicked: %v", ErrCorrupt, p))
		}
	}()
	return s.wrap(step, s.db.View(fn))
}

// update runs fn in its own write transaction. Used by Open; the public
// write methods go through write (group commit).
func (s *Store) update(step string, fn func(*bolt.Tx) error) error {
	return s.wrap(step, s.rawUpdate(fn))
}

func (s *Store) rawUpdate(fn func(*bolt.Tx) error) (err error) {
	if s.closed.Load() {
		return ErrClosed
	}
	if b := s.broken.Load(); b != nil {
		return *b
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: bbolt panicked in a write transaction, refusing further writes until restart: %v", ErrCorrupt, p)
			s.broken.Store(&err)
		}
	}()
	return s.db.Update(fn)
}

func (s *Store) wrap(step string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		err = ErrClosed
	}
	return fmt.Errorf("store: %s (%s): %w", step, s.path, err)
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// kProbe is the meta key Probe rewrites.
var kProbe = []byte("write-probe")

// Probe proves the journal can be written now. Readiness calls it, so a
// daemon whose journal fails (full disk, I/O error, closed store) says it
// is not ready instead of answering reads from a journal that no fence or
// evacuation could be written to. When the last commit failed as a whole,
// that is the answer until a later commit succeeds: on a full disk a tiny
// write reuses a freed page and succeeds while every real write fails.
// Otherwise it commits (and syncs) one small record through the writer
// every other write uses: one fsync per call.
func (s *Store) Probe(now time.Time) error {
	if o := s.commitErr.Load(); o != nil && o.err != nil {
		return s.wrap("write probe", fmt.Errorf("the last write failed: %w", o.err))
	}
	return s.enqueue("write probe", &op{probe: true, done: make(chan result, 1), fn: func(tx *bolt.Tx) error {
		return tx.Bucket(bMeta).Put(kProbe, u64(uint64(now.UnixNano())))
	}})
}
