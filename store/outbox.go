package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxOutboxEntries bounds the alert outbox: past it, EnqueueOutbox drops the
// oldest entries (of any webhook) and counts them in OutboxStats.Dropped, so
// a receiver that is down for days cannot fill the disk.
const MaxOutboxEntries = 100000

// ErrOutboxEntryGone: UpdateOutbox named an entry that is no longer in the
// outbox (acknowledged, dropped by the bound, or dropped with its webhook).
var ErrOutboxEntryGone = errors.New("outbox entry is gone")

// OutboxEntry is one alert waiting for delivery to one webhook.
type OutboxEntry struct {
	// ID is assigned by EnqueueOutbox: strictly increasing across all
	// webhooks, never reused, so it orders entries oldest first.
	ID      uint64          `json:"id"`
	Webhook string          `json:"webhook"`
	Event   json.RawMessage `json:"event"` // stored compacted
	// Attempts made so far; NextAt is when the next may start (zero: now).
	Attempts int       `json:"attempts"`
	NextAt   time.Time `json:"next_at"`
	Created  time.Time `json:"created"`
	// LastError of the last failed attempt, for operators. The caller keeps
	// secrets out of it.
	LastError string `json:"last_error,omitempty"`
}

// OutboxStats summarises the outbox.
type OutboxStats struct {
	Pending map[string]int // entries per webhook; webhooks with none are absent
	Total   int
	Dropped uint64 // entries ever dropped by MaxOutboxEntries
}

// Layout inside bOutbox. ids is the order (and names each entry's webhook,
// so pruning the oldest needs no decoding); entries is keyed by webhook +
// 0x00 + id so one webhook's queue is a prefix scan, oldest first.
var (
	obIDs     = []byte("ids")     // id → webhook
	obEntries = []byte("entries") // webhook 0x00 id → JSON OutboxEntry
	obCounts  = []byte("counts")  // webhook → uint64 pending
	okDropped = []byte("dropped") // uint64
)

// EnqueueOutbox stores entries in one transaction and returns them with ID
// assigned, Attempts as given, times in UTC and Event compacted. Each needs
// Webhook, a valid JSON Event and Created (the store never reads the clock).
// Past MaxOutboxEntries the oldest entries are dropped in the same
// transaction.
func (s *Store) EnqueueOutbox(entries ...OutboxEntry) ([]OutboxEntry, error) {
	return s.enqueueOutbox(MaxOutboxEntries, entries)
}

func (s *Store) enqueueOutbox(limit uint64, entries []OutboxEntry) ([]OutboxEntry, error) {
	const step = "enqueue outbox"
	if len(entries) == 0 {
		return nil, nil
	}
	out := slices.Clone(entries)
	for i := range out {
		if err := normalizeOutbox(&out[i]); err != nil {
			return nil, s.wrap(step, fmt.Errorf("entry %d of %d: %w", i+1, len(out), err))
		}
	}
	err := s.write(step, func(tx *bolt.Tx) error {
		ob, err := outboxBuckets(tx)
		if err != nil {
			return err
		}
		for i := range out {
			id, err := ob.ids.NextSequence()
			if err != nil {
				return fmt.Errorf("next outbox id: %w", err)
			}
			out[i].ID = id
			v, err := json.Marshal(&out[i])
			if err != nil {
				return fmt.Errorf("encode outbox entry %d: %w", id, err)
			}
			if err := ob.put(out[i].Webhook, id, v); err != nil {
				return err
			}
			if err := ob.addCount(out[i].Webhook, 1); err != nil {
				return err
			}
		}
		return ob.prune(limit)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func normalizeOutbox(e *OutboxEntry) error {
	switch {
	case e.Webhook == "":
		return fmt.Errorf("%w: Webhook is empty", ErrInvalid)
	case len(e.Event) == 0:
		return fmt.Errorf("%w: webhook %q: Event is empty", ErrInvalid, e.Webhook)
	case !json.Valid(e.Event):
		return fmt.Errorf("%w: webhook %q: Event is not valid JSON", ErrInvalid, e.Webhook)
	case e.Created.IsZero():
		return fmt.Errorf("%w: webhook %q: Created is zero", ErrInvalid, e.Webhook)
	case e.Attempts < 0:
		return fmt.Errorf("%w: webhook %q: Attempts %d is negative", ErrInvalid, e.Webhook, e.Attempts)
	}
	if err := checkIndexable("Webhook", e.Webhook); err != nil {
		return err
	}
	var b bytes.Buffer
	_ = json.Compact(&b, e.Event) // valid, checked above
	e.Event = b.Bytes()
	e.Created = e.Created.UTC().Round(0)
	if !e.NextAt.IsZero() {
		e.NextAt = e.NextAt.UTC().Round(0)
	}
	e.ID = 0
	return nil
}

// Outbox returns up to limit of webhook's entries, oldest first; limit 0
// returns all of them. An entry that does not decode is ErrCorrupt naming
// it, never skipped.
func (s *Store) Outbox(webhook string, limit int) ([]OutboxEntry, error) {
	const step = "read outbox"
	if limit < 0 {
		return nil, s.wrap(step, fmt.Errorf("%w: limit %d is negative", ErrInvalid, limit))
	}
	if webhook == "" {
		return nil, s.wrap(step, fmt.Errorf("%w: webhook is empty", ErrInvalid))
	}
	if err := checkIndexable("webhook", webhook); err != nil {
		return nil, s.wrap(step, err)
	}
	var out []OutboxEntry
	err := s.view(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bOutbox).Bucket(obEntries)
		if b == nil {
			return nil
		}
		prefix := append([]byte(webhook), 0)
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeOutbox(k, v, len(prefix))
			if err != nil {
				return err
			}
			out = append(out, e)
			if limit > 0 && len(out) >= limit {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func decodeOutbox(k, v []byte, prefix int) (OutboxEntry, error) {
	var e OutboxEntry
	if len(k) != prefix+8 {
		return e, fmt.Errorf("%w: outbox key %q is malformed", ErrCorrupt, k)
	}
	id := binary.BigEndian.Uint64(k[prefix:])
	if err := json.Unmarshal(v, &e); err != nil {
		return e, fmt.Errorf("%w: outbox entry %d does not decode: %v", ErrCorrupt, id, err)
	}
	if e.ID != id || e.Webhook != string(k[:prefix-1]) {
		return e, fmt.Errorf("%w: outbox entry under key %q says it is entry %d of webhook %q", ErrCorrupt, k, e.ID, e.Webhook)
	}
	return e, nil
}

// UpdateOutbox records a failed attempt: it replaces the stored entry's
// Attempts, NextAt and LastError with e's (Webhook, Event and Created stay
// as stored). An entry no longer in the outbox is ErrOutboxEntryGone.
func (s *Store) UpdateOutbox(e OutboxEntry) error {
	const step = "update outbox"
	switch {
	case e.ID == 0:
		return s.wrap(step, fmt.Errorf("%w: entry ID is 0", ErrInvalid))
	case e.Attempts < 0:
		return s.wrap(step, fmt.Errorf("%w: entry %d: Attempts %d is negative", ErrInvalid, e.ID, e.Attempts))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		ob, err := outboxBuckets(tx)
		if err != nil {
			return err
		}
		webhook := ob.ids.Get(u64(e.ID))
		if webhook == nil {
			return fmt.Errorf("entry %d: %w", e.ID, ErrOutboxEntryGone)
		}
		if e.Webhook != "" && e.Webhook != string(webhook) {
			return fmt.Errorf("%w: entry %d belongs to webhook %q, not %q", ErrInvalid, e.ID, webhook, e.Webhook)
		}
		k := idxKey(string(webhook), e.ID)
		stored, err := decodeOutbox(k, ob.entries.Get(k), len(webhook)+1)
		if err != nil {
			return err
		}
		stored.Attempts = e.Attempts
		stored.NextAt = time.Time{}
		if !e.NextAt.IsZero() {
			stored.NextAt = e.NextAt.UTC().Round(0)
		}
		stored.LastError = e.LastError
		v, err := json.Marshal(&stored)
		if err != nil {
			return fmt.Errorf("encode outbox entry %d: %w", e.ID, err)
		}
		return ob.put(stored.Webhook, e.ID, v)
	})
}

// AckOutbox removes the entries with ids (delivered, or given up on) in
// one transaction. Unknown ids are not an error, so acknowledging twice is
// harmless.
func (s *Store) AckOutbox(ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	return s.write("ack outbox", func(tx *bolt.Tx) error {
		ob, err := outboxBuckets(tx)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := ob.remove(id); err != nil {
				return err
			}
		}
		return nil
	})
}

// DropOutbox removes every entry of webhook (e.g. one removed from the
// configuration) in one transaction and returns how many there were.
func (s *Store) DropOutbox(webhook string) (int, error) {
	const step = "drop outbox"
	if webhook == "" {
		return 0, s.wrap(step, fmt.Errorf("%w: webhook is empty", ErrInvalid))
	}
	if err := checkIndexable("webhook", webhook); err != nil {
		return 0, s.wrap(step, err)
	}
	var n [1]int
	err := s.write(step, func(tx *bolt.Tx) error {
		n[0] = 0 // fresh on every run: see write
		ob, err := outboxBuckets(tx)
		if err != nil {
			return err
		}
		prefix := append([]byte(webhook), 0)
		var ids []uint64
		c := ob.entries.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) != len(prefix)+8 {
				return fmt.Errorf("%w: outbox key %q is malformed", ErrCorrupt, k)
			}
			ids = append(ids, binary.BigEndian.Uint64(k[len(prefix):]))
		}
		for _, id := range ids {
			if err := ob.remove(id); err != nil {
				return err
			}
		}
		n[0] = len(ids)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n[0], nil
}

// OutboxStats counts pending entries per webhook and the entries ever
// dropped by the bound. It reads counters, not entries.
func (s *Store) OutboxStats() (OutboxStats, error) {
	st := OutboxStats{Pending: map[string]int{}}
	err := s.view("read outbox stats", func(tx *bolt.Tx) error {
		top := tx.Bucket(bOutbox)
		if raw := top.Get(okDropped); raw != nil {
			if len(raw) != 8 {
				return fmt.Errorf("%w: outbox %s counter is %d bytes, want 8", ErrCorrupt, okDropped, len(raw))
			}
			st.Dropped = binary.BigEndian.Uint64(raw)
		}
		b := top.Bucket(obCounts)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: outbox count of webhook %q is %d bytes, want 8", ErrCorrupt, k, len(v))
			}
			n := int(binary.BigEndian.Uint64(v))
			st.Pending[string(k)] = n
			st.Total += n
			return nil
		})
	})
	if err != nil {
		return OutboxStats{}, err
	}
	return st, nil
}

type outboxTx struct {
	top, ids, entries, counts *bolt.Bucket
}

// outboxBuckets opens (creating on first use) the outbox's sub-buckets.
func outboxBuckets(tx *bolt.Tx) (*outboxTx, error) {
	top := tx.Bucket(bOutbox)
	ob := &outboxTx{top: top}
	for _, sb := range []struct {
		name []byte
		dst  **bolt.Bucket
	}{{obIDs, &ob.ids}, {obEntries, &ob.entries}, {obCounts, &ob.counts}} {
		b, err := top.CreateBucketIfNotExists(sb.name)
		if err != nil {
			return nil, fmt.Errorf("%w: outbox bucket %s: %v", ErrCorrupt, sb.name, err)
		}
		*sb.dst = b
	}
	// Ids only grow: fill pages instead of splitting them in half.
	ob.ids.FillPercent = 0.95
	return ob, nil
}

func (ob *outboxTx) put(webhook string, id uint64, v []byte) error {
	if err := ob.ids.Put(u64(id), []byte(webhook)); err != nil {
		return fmt.Errorf("put outbox id %d: %w", id, err)
	}
	if err := ob.entries.Put(idxKey(webhook, id), v); err != nil {
		return fmt.Errorf("put outbox entry %d: %w", id, err)
	}
	return nil
}

// remove deletes entry id if present.
func (ob *outboxTx) remove(id uint64) error {
	webhook := ob.ids.Get(u64(id))
	if webhook == nil {
		return nil
	}
	w := string(webhook) // the slice is invalid after the delete
	if err := ob.ids.Delete(u64(id)); err != nil {
		return fmt.Errorf("delete outbox id %d: %w", id, err)
	}
	if err := ob.entries.Delete(idxKey(w, id)); err != nil {
		return fmt.Errorf("delete outbox entry %d: %w", id, err)
	}
	return ob.addCount(w, -1)
}

func (ob *outboxTx) addCount(webhook string, d int) error {
	var n uint64
	if raw := ob.counts.Get([]byte(webhook)); raw != nil {
		if len(raw) != 8 {
			return fmt.Errorf("%w: outbox count of webhook %q is %d bytes, want 8", ErrCorrupt, webhook, len(raw))
		}
		n = binary.BigEndian.Uint64(raw)
	}
	switch {
	case d < 0 && n < uint64(-d):
		return fmt.Errorf("%w: outbox count of webhook %q would go below 0", ErrCorrupt, webhook)
	case d < 0:
		n -= uint64(-d)
	default:
		n += uint64(d)
	}
	if n == 0 {
		return ob.counts.Delete([]byte(webhook))
	}
	return ob.counts.Put([]byte(webhook), u64(n))
}

// prune drops the oldest entries until at most limit remain.
func (ob *outboxTx) prune(limit uint64) error {
	var total uint64
	err := ob.counts.ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("%w: outbox count of webhook %q is %d bytes, want 8", ErrCorrupt, k, len(v))
		}
		total += binary.BigEndian.Uint64(v)
		return nil
	})
	if err != nil || total <= limit {
		return err
	}
	var dropped uint64
	if raw := ob.top.Get(okDropped); len(raw) == 8 {
		dropped = binary.BigEndian.Uint64(raw)
	}
	for ; total > limit; total-- {
		k, _ := ob.ids.Cursor().First()
		if k == nil {
			return fmt.Errorf("%w: outbox counts say %d entries are left, the id list is empty", ErrCorrupt, total)
		}
		if err := ob.remove(binary.BigEndian.Uint64(k)); err != nil {
			return err
		}
		dropped++
	}
	return ob.top.Put(okDropped, u64(dropped))
}
