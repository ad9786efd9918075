package store

import (
	"bytes"
	"encoding/json"
	"fmt"
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
func (s *Store) PutTask(r TaskRecord) error {
	const step = "put task"
	if err := checkTask(r); err != nil {
		return s.wrap(step, err)
	}
	r.Updated = r.Updated.UTC().Round(0)
	// Compact so the stored copy does not alias the caller's slice.
	var body bytes.Buffer
	if err := json.Compact(&body, r.Body); err != nil {
		return s.wrap(step, fmt.Errorf("%w: task %q: body: %v", ErrInvalid, r.ID, err))
	}
	r.Body = body.Bytes()
	v, err := json.Marshal(r)
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode task %q: %w", r.ID, err))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bTasks).Put([]byte(r.ID), v); err != nil {
			return fmt.Errorf("put task %q: %w", r.ID, err)
		}
		return nil
	})
}

// Tasks returns the stored tasks (only the open ones when openOnly), oldest
// Updated first, ties by ID.
func (s *Store) Tasks(openOnly bool) ([]TaskRecord, error) {
	var out []TaskRecord
	err := s.view("read tasks", func(tx *bolt.Tx) error {
		return tx.Bucket(bTasks).ForEach(func(k, v []byte) error {
			r, err := decodeTask(k, v)
			if err != nil {
				return err
			}
			if r.Open || !openOnly {
				out = append(out, r)
			}
			return nil
		})
	})
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
func (s *Store) TaskByID(id string) (r TaskRecord, ok bool, err error) {
	const step = "read task"
	if id == "" {
		return TaskRecord{}, false, s.wrap(step, fmt.Errorf("%w: task ID is empty", ErrInvalid))
	}
	if err := checkIndexable("task ID", id); err != nil {
		return TaskRecord{}, false, s.wrap(step, err)
	}
	err = s.view(step, func(tx *bolt.Tx) error {
		v := tx.Bucket(bTasks).Get([]byte(id))
		if v == nil {
			return nil
		}
		ok = true
		r, err = decodeTask([]byte(id), v)
		return err
	})
	if err != nil {
		return TaskRecord{}, false, err
	}
	return r, ok, nil
}

func checkTask(r TaskRecord) error {
	if r.ID == "" {
		return fmt.Errorf("%w: task ID is empty", ErrInvalid)
	}
	if err := checkIndexable("task ID", r.ID); err != nil {
		return err
	}
	if err := checkHost(r.Host); err != nil {
		return fmt.Errorf("task %q: %w", r.ID, err)
	}
	if r.Updated.IsZero() {
		return fmt.Errorf("%w: task %q: Updated is zero", ErrInvalid, r.ID)
	}
	body := bytes.TrimSpace(r.Body)
	if len(body) == 0 || body[0] != '{' || !json.Valid(body) {
		return fmt.Errorf("%w: task %q: body is not a JSON object", ErrInvalid, r.ID)
	}
	return nil
}

// decodeTask reads a stored task (v is only valid inside the transaction,
// and json.Unmarshal copies what it keeps).
func decodeTask(k, v []byte) (TaskRecord, error) {
	var r TaskRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return TaskRecord{}, fmt.Errorf("%w: task %q does not decode: %v", ErrCorrupt, k, err)
	}
	if r.ID != string(k) {
		return TaskRecord{}, fmt.Errorf("%w: task under key %q says it is %q", ErrCorrupt, k, r.ID)
	}
	if len(r.Body) == 0 || !json.Valid(r.Body) {
		return TaskRecord{}, fmt.Errorf("%w: task %q has no JSON body", ErrCorrupt, k)
	}
	return r, nil
}
