package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// OpTaskRecord is one operator operation's task (package operations owns
// its shape and imports store, so the body is opaque JSON next to the few
// fields the store filters and sorts on).
type OpTaskRecord struct {
	ID   string `json:"id"`
	Host string `json:"host"`
	// Running is true until the task has finished; a restarted daemon
	// finds the tasks it was running with OpenOpTasks.
	Running bool            `json:"running"`
	Created time.Time       `json:"created"`
	Updated time.Time       `json:"updated"`
	Body    json.RawMessage `json:"body"`
}

// PutOpTask writes r, replacing any task with the same ID, in one durable
// transaction. It refuses an empty or NUL-bearing ID or host, a zero
// Created or Updated, and a body that is not a JSON object. A task keeps
// the host it was created for: a put naming another host for an existing
// ID is refused.
func (s *Store) PutOpTask(r OpTaskRecord) error { return s.PutOpTaskRecords(r) }

// PutOpTaskRecords is PutOpTask that also appends recs to the history in
// the same transaction: a task state the API shows is never missing from
// the history.
func (s *Store) PutOpTaskRecords(r OpTaskRecord, recs ...Record) error {
	const step = "put operation task"
	if err := checkOpTask(r); err != nil {
		return s.wrap(step, err)
	}
	recs = slices.Clone(recs)
	for i := range recs {
		if err := normalizeRecord(&recs[i]); err != nil {
			return s.wrap(step, fmt.Errorf("operation task %q: history record %d of %d: %w", r.ID, i+1, len(recs), err))
		}
	}
	r.Created = r.Created.UTC().Round(0)
	r.Updated = r.Updated.UTC().Round(0)
	body, err := compactBody("operation task", r.ID, r.Body)
	if err != nil {
		return s.wrap(step, err)
	}
	r.Body = body
	v, err := json.Marshal(r)
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode operation task %q: %w", r.ID, err))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bOpTasks)
		if old := b.Get([]byte(r.ID)); old != nil {
			prev, err := decodeBodyRecord[OpTaskRecord]("operation task", []byte(r.ID), old)
			if err != nil {
				return err
			}
			if prev.Host != r.Host {
				return fmt.Errorf("%w: operation task %q is for host %q, not %q", ErrInvalid, r.ID, prev.Host, r.Host)
			}
		}
		if err := b.Put([]byte(r.ID), v); err != nil {
			return fmt.Errorf("put operation task %q: %w", r.ID, err)
		}
		if len(recs) > 0 {
			return s.appendTx(tx, recs)
		}
		return nil
	})
}

// OpTasks returns the operation tasks of host (every host's when host is
// ""), oldest Created first, ties by ID.
func (s *Store) OpTasks(host string) ([]OpTaskRecord, error) {
	return s.opTasks("read operation tasks", func(r OpTaskRecord) bool { return host == "" || r.Host == host })
}

// OpenOpTasks returns the tasks still marked running, oldest first.
func (s *Store) OpenOpTasks() ([]OpTaskRecord, error) {
	return s.opTasks("read running operation tasks", func(r OpTaskRecord) bool { return r.Running })
}

func (s *Store) opTasks(step string, keep func(OpTaskRecord) bool) ([]OpTaskRecord, error) {
	out, err := readRecords(s, step, "operation task", bOpTasks, keep)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// OpTaskByID returns the operation task with this ID; ok is false when
// there is none.
func (s *Store) OpTaskByID(id string) (OpTaskRecord, bool, error) {
	return readRecord[OpTaskRecord](s, "read operation task", "operation task", bOpTasks, id)
}

func checkOpTask(r OpTaskRecord) error {
	if err := checkRecordID("operation task", r.ID); err != nil {
		return err
	}
	if err := checkHost(r.Host); err != nil {
		return fmt.Errorf("operation task %q: %w", r.ID, err)
	}
	if r.Created.IsZero() || r.Updated.IsZero() {
		return fmt.Errorf("%w: operation task %q: Created or Updated is zero", ErrInvalid, r.ID)
	}
	return checkBodyObject("operation task", r.ID, r.Body)
}
