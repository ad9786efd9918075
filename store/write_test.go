package store

import (
	"errors"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// holdFirstCommit makes the first commit wait for release, and records the
// size of every commit.
func holdFirstCommit(s *Store) (entered <-chan struct{}, release chan<- struct{}, sizes func() []int) {
	in := make(chan struct{})
	rel := make(chan struct{})
	var mu sync.Mutex
	var got []int
	s.beforeCommit = func(n int) {
		mu.Lock()
		got = append(got, n)
		first := len(got) == 1
		mu.Unlock()
		if first {
			close(in)
			<-rel
		}
	}
	return in, rel, func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), got...)
	}
}

func queued(s *Store) int {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return len(s.queue)
}

func TestGroupCommitCoalescesWaitingWrites(t *testing.T) {
	s, _ := openTemp(t, Options{})
	entered, release, sizes := holdFirstCommit(s)

	var wg sync.WaitGroup
	errs := make(chan error, 11)
	appendOne := func() {
		defer wg.Done()
		_, err := s.Append(rec("a", "monitor", t0))
		errs <- err
	}
	wg.Add(1)
	go appendOne()
	<-entered
	for range 10 {
		wg.Add(1)
		go appendOne()
	}
	require.Eventually(t, func() bool { return queued(s) == 10 }, waitLong, pollEvery)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, []int{1, 10}, sizes(), "the ten writes that queued during the first commit share one transaction")
	hist, err := s.History(Query{})
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, ids(hist))
}

func TestGroupCommitIsolatesAFailingWrite(t *testing.T) {
	s, _ := openTemp(t, Options{})
	entered, release, sizes := holdFirstCommit(s)
	boom := errors.New("boom")

	var wg sync.WaitGroup
	var errA, errB, errFail, errPanic error
	wg.Add(1)
	go func() { defer wg.Done(); _, errA = s.Append(rec("a", "monitor", t0)) }()
	<-entered
	wg.Add(3)
	go func() { defer wg.Done(); _, errB = s.Append(rec("b", "monitor", t0)) }()
	require.Eventually(t, func() bool { return queued(s) == 1 }, waitLong, pollEvery)
	go func() {
		defer wg.Done()
		errFail = s.write("test step", func(tx *bolt.Tx) error {
			// Written, then failed: must not survive.
			if err := tx.Bucket(bMemos).Put([]byte("x"), []byte("{}")); err != nil {
				return err
			}
			return boom
		})
	}()
	require.Eventually(t, func() bool { return queued(s) == 2 }, waitLong, pollEvery)
	go func() {
		defer wg.Done()
		errPanic = s.write("panicky step", func(tx *bolt.Tx) error { panic("bug") })
	}()
	require.Eventually(t, func() bool { return queued(s) == 3 }, waitLong, pollEvery)
	close(release)
	wg.Wait()

	require.NoError(t, errA)
	require.NoError(t, errB, "a neighbour's failure does not fail this write")
	require.ErrorIs(t, errFail, boom)
	assert.Contains(t, errFail.Error(), "store: test step ("+s.Path()+")")
	require.ErrorIs(t, errPanic, ErrCorrupt)
	assert.Contains(t, errPanic.Error(), "panic in write transaction: bug")
	assert.Equal(t, []int{1, 3, 2, 1}, sizes(), "group retried without each failing op")

	memos, err := s.HostMemos()
	require.NoError(t, err)
	assert.Empty(t, memos, "the failed op's write was rolled back")
	hist, err := s.History(Query{})
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, []string{hist[0].Host, hist[1].Host})
	assert.Equal(t, []uint64{1, 2}, ids(hist))

	_, err = s.Append(rec("c", "monitor", t0))
	require.NoError(t, err, "a panic inside an op does not break the store")
}
