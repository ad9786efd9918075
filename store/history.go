package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Record is one history entry: a monitor-state transition, a verdict, a
// storm-guard change, a readiness result, an admin change.
type Record struct {
	ID            uint64          `json:"id"` // assigned by Append, strictly increasing, survives reopen
	At            time.Time       `json:"at"`
	Host          string          `json:"host,omitempty"` // "" for cluster-wide records (storm guard)
	Kind          string          `json:"kind"`           // e.g. "monitor", "verdict", "storm", "readiness", "admin", "would-fence"
	From          string          `json:"from,omitempty"`
	To            string          `json:"to,omitempty"`
	Reason        string          `json:"reason,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	Evidence      json.RawMessage `json:"evidence,omitempty"`
}

// Query selects history records. Empty fields do not filter.
type Query struct {
	Host          string
	Kind          string
	CorrelationID string
	// Since keeps records whose At is not before it. At comes from the
	// caller's clock and may jump, so this is checked on every candidate,
	// never used to stop the scan early.
	Since time.Time
	// Limit returns the newest Limit matching records; 0 means 100.
	Limit int
	// BeforeID, when not 0, keeps only records with ID < BeforeID: pass the
	// oldest ID of one page to get the page before it.
	BeforeID uint64
}

// DefaultLimit is the number of records History returns when Query.Limit is 0.
const DefaultLimit = 100

// index is a secondary index over history: key = field + 0x00 + id,
// value = At in Unix nanoseconds, so a Since filter needs no decoding.
type index struct {
	bucket []byte
	field  func(*Record) string
}

var indexes = []index{
	{bIdxHost, func(r *Record) string { return r.Host }},
	{bIdxKind, func(r *Record) string { return r.Kind }},
	{bIdxCorr, func(r *Record) string { return r.CorrelationID }},
}

// Earliest and latest At a record may carry: At is stored in Unix nanoseconds.
var (
	minAt = time.Unix(0, math.MinInt64)
	maxAt = time.Unix(0, math.MaxInt64)
)

// Append stores recs in one transaction and returns them with ID set (any ID
// the caller set is ignored) and At in UTC. Every record needs At and Kind.
// Either all are stored or none. Safe for concurrent use; concurrent calls
// share transactions.
func (s *Store) Append(recs ...Record) ([]Record, error) {
	const step = "append history"
	if len(recs) == 0 {
		return nil, nil
	}
	out := slices.Clone(recs)
	for i := range out {
		if err := normalizeRecord(&out[i]); err != nil {
			return nil, s.wrap(step, fmt.Errorf("record %d of %d: %w", i+1, len(out), err))
		}
	}
	if err := s.write(step, func(tx *bolt.Tx) error { return s.appendTx(tx, out) }); err != nil {
		return nil, err
	}
	return out, nil
}

// normalizeRecord checks r and brings At to the form History returns.
func normalizeRecord(r *Record) error {
	desc := fmt.Sprintf("(host %q, kind %q)", r.Host, r.Kind)
	switch {
	case r.At.IsZero():
		return fmt.Errorf("%w: %s: At is zero", ErrInvalid, desc)
	case r.At.Before(minAt) || r.At.After(maxAt):
		return fmt.Errorf("%w: %s: At %s is outside the storable range", ErrInvalid, desc, r.At)
	case r.Kind == "":
		return fmt.Errorf("%w: %s: Kind is empty", ErrInvalid, desc)
	case len(r.Evidence) > 0 && !json.Valid(r.Evidence):
		return fmt.Errorf("%w: %s: Evidence is not valid JSON", ErrInvalid, desc)
	}
	if err := checkIndexed(r.Host, r.Kind, r.CorrelationID); err != nil {
		return fmt.Errorf("%s: %w", desc, err)
	}
	if len(r.Evidence) > 0 {
		// Stored compacted (as json.Marshal does); compact here too so
		// Append returns what History will.
		var b bytes.Buffer
		_ = json.Compact(&b, r.Evidence) // valid, checked above
		r.Evidence = b.Bytes()
		if string(r.Evidence) == "null" {
			r.Evidence = nil
		}
	}
	r.At = r.At.UTC().Round(0)
	r.ID = 0
	return nil
}

func checkIndexed(host, kind, correlationID string) error {
	for _, f := range [...]struct{ name, v string }{{"Host", host}, {"Kind", kind}, {"CorrelationID", correlationID}} {
		if err := checkIndexable(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

func checkIndexable(name, v string) error {
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrInvalid, name, v)
	}
	if len(v) > 4096 {
		return fmt.Errorf("%w: %s is %d bytes, at most 4096", ErrInvalid, name, len(v))
	}
	return nil
}

// appendTx assigns IDs, writes recs and their index entries, and prunes.
// It may run more than once (see write); each run overwrites the IDs.
func (s *Store) appendTx(tx *bolt.Tx, recs []Record) error {
	h := tx.Bucket(bHistory)
	// IDs only grow, so history pages never receive an insert once full:
	// fill them instead of splitting at bbolt's default half.
	h.FillPercent = 0.95
	for i := range recs {
		id, err := h.NextSequence()
		if err != nil {
			return fmt.Errorf("next id: %w", err)
		}
		recs[i].ID = id
		val, err := encodeRecord(&recs[i])
		if err != nil {
			return err
		}
		if err := h.Put(u64(id), val); err != nil {
			return fmt.Errorf("put record %d: %w", id, err)
		}
		at := u64(uint64(recs[i].At.UnixNano()))
		for _, ix := range indexes {
			f := ix.field(&recs[i])
			if f == "" {
				continue
			}
			if err := tx.Bucket(ix.bucket).Put(idxKey(f, id), at); err != nil {
				return fmt.Errorf("put %s entry for record %d: %w", ix.bucket, id, err)
			}
		}
	}
	meta := tx.Bucket(bMeta)
	count := uint64(len(recs))
	if raw := meta.Get(kCount); raw != nil {
		if len(raw) != 8 {
			return fmt.Errorf("%w: %s is %d bytes, want 8", ErrCorrupt, kCount, len(raw))
		}
		count += binary.BigEndian.Uint64(raw)
	}
	count, err := s.pruneTx(tx, count)
	if err != nil {
		return err
	}
	return meta.Put(kCount, u64(count))
}

// pruneTx deletes the oldest records, with their index entries, until at
// most maxRecords remain, and returns the new count.
func (s *Store) pruneTx(tx *bolt.Tx, count uint64) (uint64, error) {
	c := tx.Bucket(bHistory).Cursor()
	for count > s.maxRecords {
		k, v := c.First()
		if k == nil {
			return 0, nil
		}
		// A record that does not decode is pruned anyway, or one bad value
		// would stop all history writes. Its index entries stay behind;
		// History skips index entries older than the oldest record.
		if r, err := decodeRecord(k, v); err == nil {
			for _, ix := range indexes {
				if f := ix.field(&r); f != "" {
					if err := tx.Bucket(ix.bucket).Delete(idxKey(f, r.ID)); err != nil {
						return 0, fmt.Errorf("prune %s entry for record %d: %w", ix.bucket, r.ID, err)
					}
				}
			}
		}
		if err := c.Delete(); err != nil {
			return 0, fmt.Errorf("prune record %x: %w", k, err)
		}
		count--
	}
	return count, nil
}

// A stored record is At (8 bytes, Unix nanoseconds) followed by its JSON.
func encodeRecord(r *Record) ([]byte, error) {
	j, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode record %d: %w", r.ID, err)
	}
	return append(u64(uint64(r.At.UnixNano())), j...), nil
}

func decodeRecord(k, v []byte) (Record, error) {
	var r Record
	if len(k) != 8 {
		return r, fmt.Errorf("%w: history key %x is %d bytes, want 8", ErrCorrupt, k, len(k))
	}
	id := binary.BigEndian.Uint64(k)
	if len(v) < 8 {
		return r, fmt.Errorf("%w: record %d: value is %d bytes, too short", ErrCorrupt, id, len(v))
	}
	if err := json.Unmarshal(v[8:], &r); err != nil {
		return r, fmt.Errorf("%w: record %d does not decode: %v", ErrCorrupt, id, err)
	}
	if r.ID != id {
		return r, fmt.Errorf("%w: record under key %d says it is record %d", ErrCorrupt, id, r.ID)
	}
	return r, nil
}

func idxKey(field string, id uint64) []byte {
	k := make([]byte, len(field)+1+8)
	copy(k, field)
	binary.BigEndian.PutUint64(k[len(field)+1:], id)
	return k
}

// History returns the newest q.Limit records matching q, oldest first. A
// record that does not decode is an error naming it, never skipped.
func (s *Store) History(q Query) ([]Record, error) {
	const step = "read history"
	if q.Limit < 0 {
		return nil, s.wrap(step, fmt.Errorf("%w: Limit %d is negative", ErrInvalid, q.Limit))
	}
	if err := checkIndexed(q.Host, q.Kind, q.CorrelationID); err != nil {
		return nil, s.wrap(step, err)
	}
	limit := q.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	since := int64(math.MinInt64)
	if !q.Since.IsZero() {
		since = clampNanos(q.Since)
	}
	match := func(r *Record) bool {
		return (q.Host == "" || r.Host == q.Host) &&
			(q.Kind == "" || r.Kind == q.Kind) &&
			(q.CorrelationID == "" || r.CorrelationID == q.CorrelationID) &&
			r.At.UnixNano() >= since
	}

	var out []Record
	err := s.view(step, func(tx *bolt.Tx) error {
		h := tx.Bucket(bHistory)
		var upper []byte // exclusive upper bound of history keys
		if q.BeforeID != 0 {
			upper = u64(q.BeforeID)
		}
		add := func(k, v []byte) (full bool, err error) {
			r, err := decodeRecord(k, v)
			if err != nil {
				return false, err
			}
			if match(&r) {
				out = append(out, r)
			}
			return len(out) >= limit, nil
		}

		bucket, field := pickIndex(q)
		if bucket == nil {
			c := h.Cursor()
			for k, v := seekBefore(c, upper); k != nil; k, v = c.Prev() {
				if len(v) >= 8 && int64(binary.BigEndian.Uint64(v)) < since {
					continue
				}
				if full, err := add(k, v); err != nil || full {
					return err
				}
			}
			return nil
		}

		var oldest uint64 // 0: history is empty
		if k, _ := h.Cursor().First(); len(k) == 8 {
			oldest = binary.BigEndian.Uint64(k)
		}
		prefix := append([]byte(field), 0)
		bound := append([]byte(field), 1) // sorts after every key with prefix
		if upper != nil {
			bound = append(bytes.Clone(prefix), upper...)
		}
		c := tx.Bucket(bucket).Cursor()
		for k, v := seekBefore(c, bound); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			if len(k) != len(prefix)+8 || len(v) != 8 {
				return fmt.Errorf("%w: %s entry %q is malformed", ErrCorrupt, bucket, k)
			}
			if int64(binary.BigEndian.Uint64(v)) < since {
				continue
			}
			idk := k[len(prefix):]
			rv := h.Get(idk)
			if rv == nil {
				id := binary.BigEndian.Uint64(idk)
				if oldest == 0 || id < oldest {
					break // left behind by pruning a record that did not decode
				}
				return fmt.Errorf("%w: %s entry for %q points to record %d, which is missing", ErrCorrupt, bucket, field, id)
			}
			if full, err := add(idk, rv); err != nil || full {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(out)
	return out, nil
}

// pickIndex chooses the most selective index the query allows.
func pickIndex(q Query) ([]byte, string) {
	switch {
	case q.CorrelationID != "":
		return bIdxCorr, q.CorrelationID
	case q.Host != "":
		return bIdxHost, q.Host
	case q.Kind != "":
		return bIdxKind, q.Kind
	}
	return nil, ""
}

// seekBefore positions c on the last key < bound (the last key if bound is nil).
func seekBefore(c *bolt.Cursor, bound []byte) ([]byte, []byte) {
	if bound == nil {
		return c.Last()
	}
	if k, _ := c.Seek(bound); k == nil {
		return c.Last()
	}
	return c.Prev()
}

func clampNanos(t time.Time) int64 {
	switch {
	case t.Before(minAt):
		return math.MinInt64
	case t.After(maxAt):
		return math.MaxInt64
	}
	return t.UnixNano()
}
