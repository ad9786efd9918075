package store

import (
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Group commit. Every write method queues an op; whoever finds no commit in
// progress becomes the committer and runs everything queued in one bbolt
// transaction (one fsync). Ops that arrive meanwhile queue up and go into the
// next transaction, which the first of them commits. Under load this
// coalesces as db.Batch does, but a lone write is not delayed by
// db.Batch's 10 ms timer, and a bbolt panic happens on the caller's
// goroutine, where it can be recovered, instead of on a timer goroutine.

// maxGroup bounds the ops in one transaction so one commit stays small.
const maxGroup = 1000

type op struct {
	fn   func(*bolt.Tx) error
	done chan result
	// probe ops (Probe) never clear a failed commit: a tiny write can
	// succeed on a disk where every real one fails.
	probe bool
}

type result struct {
	err  error
	lead bool // you now commit the queue; no err yet
}

// write runs fn in a write transaction, possibly shared with other writers.
// fn may be called more than once (after another op in its group failed), so
// it must only set its outputs, never act outside the transaction. Its
// outputs are valid only when write returns nil.
func (s *Store) write(step string, fn func(*bolt.Tx) error) error {
	return s.enqueue(step, &op{fn: fn, done: make(chan result, 1)})
}

func (s *Store) enqueue(step string, o *op) error {
	s.wmu.Lock()
	s.queue = append(s.queue, o)
	if s.busy {
		s.wmu.Unlock()
		r := <-o.done
		if !r.lead {
			return s.wrap(step, r.err)
		}
		s.wmu.Lock()
	} else {
		s.busy = true
	}
	// o is s.queue[0] here: the queue is empty whenever busy is false, and
	// leadership is handed to the queue's head.
	n := min(len(s.queue), maxGroup)
	group := s.queue[:n:n]
	s.queue = s.queue[n:]
	s.wmu.Unlock()

	s.commit(group)

	s.wmu.Lock()
	if len(s.queue) > 0 {
		s.queue[0].done <- result{lead: true}
	} else {
		s.busy = false
		s.queue = nil
	}
	s.wmu.Unlock()
	return s.wrap(step, (<-o.done).err)
}

// commit runs group in one transaction and sends each op its result. An op
// that fails is answered with its error and the rest are retried without
// it, so one bad op never fails its neighbours.
func (s *Store) commit(group []*op) {
	for len(group) > 0 {
		if s.beforeCommit != nil {
			s.beforeCommit(len(group))
		}
		failed := -1
		err := s.rawUpdate(func(tx *bolt.Tx) error {
			for i, o := range group {
				if err := callSafely(o.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed >= 0 {
			group[failed].done <- result{err: err}
			group = append(group[:failed:failed], group[failed+1:]...)
			continue
		}
		// A commit that failed as a whole (the file could not be written:
		// full disk, I/O error) stays the store's health until a later
		// commit succeeds; Probe reports it.
		if err != nil || slices.ContainsFunc(group, func(o *op) bool { return !o.probe }) {
			s.commitErr.Store(&commitOutcome{err: err})
		}
		for _, o := range group {
			o.done <- result{err: err}
		}
		return
	}
}

// commitOutcome is the result of the last whole commit (nil err: success).
type commitOutcome struct{ err error }

// callSafely turns a panic inside fn (bbolt reading a damaged page, or a
// bug) into an error for that op alone; the transaction is rolled back.
func callSafely(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: panic in write transaction: %v", ErrCorrupt, p)
		}
	}()
	return fn(tx)
}
