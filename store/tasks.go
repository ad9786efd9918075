package store

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TaskRecord is one evacuation task as the journal keeps it. The store does
// not know the task's shape (evacuator owns it and imports store): it keeps
// the body as opaque JSON next to the few fields it filters and sorts on.
type TaskRecord struct {
	ID   string `json:"id"`
	Host string `json:"host"` // the fenced host the task evacuates
	// Open is true while the task still has work (evacuator: State running);
	// a restarted daemon resumes the open tasks.
	Open    bool            `json:"open"`
	Updated time.Time       `json:"updated"`
	Body    json.RawMessage `json:"body"`
}

// PutTask writes r, replacing any task with the same ID, in one durable
// transaction: when it returns nil the task is on disk. It refuses an empty
// or NUL-bearing ID or host, a zero Updated, and a body that is not a JSON
// object.
func (s *Store) PutTask(r TaskRecord) error { return s.PutTaskRecords(r) }

// PutTaskRecords is PutTask that also appends recs to the history in the
// same transaction: a task state the API shows is never missing from the
// history, and a history record never names a task state that was lost.
func (s *Store) PutTaskRecords(r TaskRecord, recs ...Record) error {
	const step = "put task"
	if err := checkTask(r); err != nil {
		return s.wrap(step, err)
	}
	recs = slices.Clone(recs)
	for i := range recs {
		if err := normalizeRecord(&recs[i]); err != nil {
			return s.wrap(step, fmt.Errorf("task %q: history record %d of %d: %w", r.ID, i+1, len(recs), err))
		}
	}
	r.Updated = r.Updated.UTC().Round(0)
	body, err := compactBody("task", r.ID, r.Body)
	if err != nil {
		return s.wrap(step, err)
	}
	r.Body = body
	v, err := json.Marshal(r)
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode task %q: %w", r.ID, err))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bTasks).Put([]byte(r.ID), v); err != nil {
			return fmt.Errorf("put task %q: %w", r.ID, err)
		}
		if len(recs) > 0 {
			return s.appendTx(tx, recs)
		}
		return nil
	})
}

// Tasks returns the stored tasks (only the open ones when openOnly), oldest
// Updated first, ties by ID.
func (s *Store) Tasks(openOnly bool) ([]TaskRecord, error) {
	out, err := readRecords(s, "read tasks", "task", bTasks, func(r TaskRecord) bool { return r.Open || !openOnly })
	if err != nil {
		return nil, err
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Updated.Equal(out[j].Updated) {
			return out[i].Updated.Before(out[j].Updated)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// TaskByID returns the task with this ID; ok is false when there is none.
func (s *Store) TaskByID(id string) (TaskRecord, bool, error) {
	return readRecord[TaskRecord](s, "read task", "task", bTasks, id)
}

func checkTask(r TaskRecord) error {
	if err := checkRecordID("task", r.ID); err != nil {
		return err
	}
	if err := checkHost(r.Host); err != nil {
		return fmt.Errorf("task %q: %w", r.ID, err)
	}
	if r.Updated.IsZero() {
		return fmt.Errorf("%w: task %q: Updated is zero", ErrInvalid, r.ID)
	}
	return checkBodyObject("task", r.ID, r.Body)
}
