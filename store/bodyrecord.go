package store

import (
	"bytes"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Evacuation tasks and operation tasks are both kept the same way: a JSON
// record under its ID, carrying an opaque JSON object body that the package
// owning its shape (evacuator, operations) decodes. These helpers are that
// shared part; each record type keeps its own fields, filters and order.

// bodyRecord is a record kept under its ID with an opaque JSON body.
type bodyRecord interface {
	TaskRecord | OpTaskRecord
	key() string
	body() json.RawMessage
}

func (r TaskRecord) key() string             { return r.ID }
func (r TaskRecord) body() json.RawMessage   { return r.Body }
func (r OpTaskRecord) key() string           { return r.ID }
func (r OpTaskRecord) body() json.RawMessage { return r.Body }

// checkRecordID refuses an ID that cannot be a key; what names the record
// ("task", "operation task") in the error.
func checkRecordID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s ID is empty", ErrInvalid, what)
	}
	return checkIndexable(what+" ID", id)
}

// checkBodyObject refuses a body that is not a JSON object.
func checkBodyObject(what, id string, body json.RawMessage) error {
	b := bytes.TrimSpace(body)
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return fmt.Errorf("%w: %s %q: body is not a JSON object", ErrInvalid, what, id)
	}
	return nil
}

// compactBody copies body compacted, so the stored record does not alias
// the caller's slice.
func compactBody(what, id string, body json.RawMessage) (json.RawMessage, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, body); err != nil {
		return nil, fmt.Errorf("%w: %s %q: body: %v", ErrInvalid, what, id, err)
	}
	return b.Bytes(), nil
}

// decodeBodyRecord reads a stored record and checks it is the one its key
// names (v is only valid inside the transaction; json.Unmarshal copies).
func decodeBodyRecord[R bodyRecord](what string, k, v []byte) (R, error) {
	var r R
	if err := json.Unmarshal(v, &r); err != nil {
		return r, fmt.Errorf("%w: %s %q does not decode: %v", ErrCorrupt, what, k, err)
	}
	if id := r.key(); id != string(k) {
		return r, fmt.Errorf("%w: %s under key %q says it is %q", ErrCorrupt, what, k, id)
	}
	if body := r.body(); len(body) == 0 || !json.Valid(body) {
		return r, fmt.Errorf("%w: %s %q has no JSON body", ErrCorrupt, what, k)
	}
	return r, nil
}

// readRecords lists bucket's records that keep accepts, in key order.
func readRecords[R bodyRecord](s *Store, step, what string, bucket []byte, keep func(R) bool) ([]R, error) {
	var out []R
	err := s.view(step, func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			r, err := decodeBodyRecord[R](what, k, v)
			if err != nil {
				return err
			}
			if keep(r) {
				out = append(out, r)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// readRecord returns bucket's record with this ID; ok is false when there
// is none.
func readRecord[R bodyRecord](s *Store, step, what string, bucket []byte, id string) (r R, ok bool, err error) {
	if err := checkRecordID(what, id); err != nil {
		return r, false, s.wrap(step, err)
	}
	err = s.view(step, func(tx *bolt.Tx) error {
		v := tx.Bucket(bucket).Get([]byte(id))
		if v == nil {
			return nil
		}
		ok = true
		r, err = decodeBodyRecord[R](what, []byte(id), v)
		return err
	})
	if err != nil {
		var zero R
		return zero, false, err
	}
	return r, ok, nil
}
