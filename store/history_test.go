package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func ids(recs []Record) []uint64 {
	out := make([]uint64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func TestAppendAssignsIDsAndNormalizes(t *testing.T) {
	s, _ := openTemp(t, Options{})
	local := t0.In(time.FixedZone("CET", 3600))
	got, err := s.Append(
		Record{ID: 99, At: local, Host: "a", Kind: "monitor", Evidence: json.RawMessage(" { \"x\" : 1 } ")},
		Record{At: time.Now(), Kind: "storm"},
	)
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 2}, ids(got), "caller's ID is ignored")
	assert.Equal(t, time.UTC, got[0].At.Location())
	assert.True(t, got[0].At.Equal(t0))
	assert.Equal(t, `{"x":1}`, string(got[0].Evidence))

	hist, err := s.History(Query{})
	require.NoError(t, err)
	assert.Equal(t, got, hist)

	none, err := s.Append()
	require.NoError(t, err)
	assert.Empty(t, none)
}

func TestAppendRefusesBadRecordsAndWritesNone(t *testing.T) {
	for name, tc := range map[string]struct {
		bad  Record
		want string
	}{
		"zero At":      {Record{Host: "a", Kind: "monitor"}, `record 2 of 2: invalid input: (host "a", kind "monitor"): At is zero`},
		"At too late":  {Record{At: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC), Kind: "monitor"}, "outside the storable range"},
		"empty Kind":   {Record{At: t0, Host: "a"}, "Kind is empty"},
		"NUL in host":  {Record{At: t0, Host: "a\x00b", Kind: "monitor"}, "Host \"a\\x00b\" contains a NUL byte"},
		"bad evidence": {Record{At: t0, Kind: "verdict", Evidence: json.RawMessage(`{"x":`)}, "Evidence is not valid JSON"},
		"huge corr id": {Record{At: t0, Kind: "verdict", CorrelationID: strings.Repeat("x", 5000)}, "CorrelationID is 5000 bytes"},
	} {
		t.Run(name, func(t *testing.T) {
			s, path := openTemp(t, Options{})
			_, err := s.Append(rec("ok", "monitor", t0), tc.bad)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "store: append history ("+path+")")

			hist, err := s.History(Query{})
			require.NoError(t, err)
			assert.Empty(t, hist, "the good record of the call is not written either")
			got, err := s.Append(rec("ok", "monitor", t0))
			require.NoError(t, err)
			assert.Equal(t, uint64(1), got[0].ID, "no ID was used up")
		})
	}
}

func TestAppendConcurrentIDsUniqueAndIncreasing(t *testing.T) {
	s, _ := openTemp(t, Options{})
	const goroutines, calls = 50, 10
	var wg sync.WaitGroup
	results := make([][][]Record, goroutines)
	errs := make(chan error, goroutines*calls)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				n := 1 + (g+c)%3 // some calls append a batch
				recs := make([]Record, n)
				for i := range recs {
					recs[i] = rec(fmt.Sprintf("h%d", g), "monitor", t0.Add(time.Duration(c)*time.Second))
				}
				got, err := s.Append(recs...)
				if err != nil {
					errs <- err
					return
				}
				results[g] = append(results[g], got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	var all []uint64
	for g, calls := range results {
		var last uint64
		for _, batch := range calls {
			for i, r := range batch {
				assert.Equal(t, fmt.Sprintf("h%d", g), r.Host)
				if i > 0 {
					assert.Equal(t, batch[i-1].ID+1, r.ID, "one call's records get consecutive IDs")
				}
				assert.Greater(t, r.ID, last, "a goroutine's later call gets larger IDs")
				last = r.ID
				all = append(all, r.ID)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for i, id := range all {
		require.Equal(t, uint64(i+1), id, "IDs are 1..N with no duplicate and no gap")
	}

	hist, err := s.History(Query{Limit: len(all)})
	require.NoError(t, err)
	assert.Equal(t, all, ids(hist))
}

// filterFixture appends records whose At is not monotonic in ID (the clock
// jumped back at ID 4), so Since must not stop the scan early.
func filterFixture(t *testing.T) *Store {
	s, _ := openTemp(t, Options{})
	_, err := s.Append(
		Record{At: t0.Add(10 * time.Second), Host: "a", Kind: "monitor", CorrelationID: "c1"}, // 1
		Record{At: t0.Add(20 * time.Second), Host: "b", Kind: "monitor", CorrelationID: "c2"}, // 2
		Record{At: t0.Add(30 * time.Second), Host: "a", Kind: "verdict", CorrelationID: "c1"}, // 3
		Record{At: t0.Add(5 * time.Second), Host: "a", Kind: "monitor"},                       // 4
		Record{At: t0.Add(40 * time.Second), Kind: "storm", CorrelationID: "c3"},              // 5
		Record{At: t0.Add(50 * time.Second), Host: "b", Kind: "verdict", CorrelationID: "c2"}, // 6
		Record{At: t0.Add(60 * time.Second), Host: "ab", Kind: "monitor"},                     // 7
		Record{At: t0.Add(70 * time.Second), Host: "a", Kind: "admin"},                        // 8
	)
	require.NoError(t, err)
	return s
}

func TestHistoryFilters(t *testing.T) {
	s := filterFixture(t)
	for name, tc := range map[string]struct {
		q    Query
		want []uint64
	}{
		"all":                   {Query{}, []uint64{1, 2, 3, 4, 5, 6, 7, 8}},
		"host":                  {Query{Host: "a"}, []uint64{1, 3, 4, 8}},
		"host is exact":         {Query{Host: "ab"}, []uint64{7}},
		"unknown host":          {Query{Host: "zz"}, nil},
		"kind":                  {Query{Kind: "monitor"}, []uint64{1, 2, 4, 7}},
		"correlation":           {Query{CorrelationID: "c1"}, []uint64{1, 3}},
		"host and kind":         {Query{Host: "a", Kind: "monitor"}, []uint64{1, 4}},
		"correlation and host":  {Query{CorrelationID: "c2", Host: "b"}, []uint64{2, 6}},
		"correlation and kind":  {Query{CorrelationID: "c2", Kind: "verdict"}, []uint64{6}},
		"disjoint filters":      {Query{CorrelationID: "c3", Host: "a"}, nil},
		"since":                 {Query{Since: t0.Add(20 * time.Second)}, []uint64{2, 3, 5, 6, 7, 8}},
		"since past clock jump": {Query{Host: "a", Since: t0.Add(10 * time.Second)}, []uint64{1, 3, 8}},
		"since on kind index":   {Query{Kind: "monitor", Since: t0.Add(15 * time.Second)}, []uint64{2, 7}},
		"since after all":       {Query{Since: t0.Add(time.Hour)}, nil},
		"before id":             {Query{BeforeID: 4}, []uint64{1, 2, 3}},
		"before id on index":    {Query{Host: "a", BeforeID: 8}, []uint64{1, 3, 4}},
		"before id 1":           {Query{BeforeID: 1}, nil},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := s.History(tc.q)
			require.NoError(t, err)
			assert.Equal(t, tc.want, nilIfEmpty(ids(got)))
			for _, r := range got {
				if tc.q.Host != "" {
					assert.Equal(t, tc.q.Host, r.Host)
				}
			}
		})
	}
}

func nilIfEmpty(s []uint64) []uint64 {
	if len(s) == 0 {
		return nil
	}
	return s
}

func TestHistoryLimit(t *testing.T) {
	s, _ := openTemp(t, Options{})
	recs := make([]Record, 150)
	for i := range recs {
		recs[i] = rec("a", "monitor", t0.Add(time.Duration(i)*time.Second))
	}
	_, err := s.Append(recs...)
	require.NoError(t, err)

	got, err := s.History(Query{})
	require.NoError(t, err)
	require.Len(t, got, DefaultLimit, "0 means 100")
	assert.Equal(t, uint64(51), got[0].ID, "the newest 100, oldest first")
	assert.Equal(t, uint64(150), got[99].ID)

	got, err = s.History(Query{Host: "a", Limit: 3})
	require.NoError(t, err)
	assert.Equal(t, []uint64{148, 149, 150}, ids(got))

	got, err = s.History(Query{Limit: 1000})
	require.NoError(t, err)
	assert.Len(t, got, 150, "a limit above the count returns all")

	// Paging backwards with BeforeID walks the whole history once.
	var pages []uint64
	before := uint64(0)
	for {
		page, err := s.History(Query{Host: "a", Limit: 40, BeforeID: before})
		require.NoError(t, err)
		if len(page) == 0 {
			break
		}
		pages = append(ids(page), pages...)
		before = page[0].ID
	}
	require.Len(t, pages, 150)
	for i, id := range pages {
		require.Equal(t, uint64(i+1), id)
	}

	_, err = s.History(Query{Limit: -1})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "Limit -1 is negative")
}

// corruptRecord replaces record id's stored value.
func corruptRecord(t *testing.T, s *Store, id uint64, val []byte) {
	t.Helper()
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bHistory).Put(u64(id), val)
	}))
}

func TestHistoryHostFilterReadsOnlyThatHost(t *testing.T) {
	s := filterFixture(t)
	// Damage a record of host b: a host-a query must not touch it, which it
	// would if it scanned the whole history.
	corruptRecord(t, s, 6, []byte("garbage!{"))
	got, err := s.History(Query{Host: "a"})
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 3, 4, 8}, ids(got))

	_, err = s.History(Query{})
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestHistoryReportsCorruption(t *testing.T) {
	for name, tc := range map[string]struct {
		val  []byte
		want string
	}{
		"bad json":      {append(u64(uint64(t0.UnixNano())), "{not json"...), "record 3 does not decode"},
		"short value":   {[]byte{1, 2}, "record 3: value is 2 bytes, too short"},
		"wrong id":      {append(u64(uint64(t0.UnixNano())), `{"id":7,"at":"2026-03-01T12:00:00Z","kind":"x"}`...), "record under key 3 says it is record 7"},
		"missing (nil)": {nil, "idx-host entry for \"a\" points to record 3, which is missing"},
	} {
		t.Run(name, func(t *testing.T) {
			s := filterFixture(t)
			if tc.val == nil {
				require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
					return tx.Bucket(bHistory).Delete(u64(3))
				}))
			} else {
				corruptRecord(t, s, 3, tc.val)
			}
			_, err := s.History(Query{Host: "a"})
			require.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), tc.want)
			assert.Contains(t, err.Error(), "store: read history ("+s.Path()+")")
		})
	}
}

// checkIndexes asserts every index holds exactly one entry per live record
// field, carrying the record's At.
func checkIndexes(t *testing.T, s *Store) (live []uint64) {
	t.Helper()
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		want := map[string]map[string]bool{}
		for _, ix := range indexes {
			want[string(ix.bucket)] = map[string]bool{}
		}
		err := tx.Bucket(bHistory).ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			require.NoError(t, err)
			live = append(live, r.ID)
			for _, ix := range indexes {
				if f := ix.field(&r); f != "" {
					want[string(ix.bucket)][string(idxKey(f, r.ID))] = true
				}
			}
			return nil
		})
		require.NoError(t, err)
		for _, ix := range indexes {
			got := map[string]bool{}
			require.NoError(t, tx.Bucket(ix.bucket).ForEach(func(k, v []byte) error {
				got[string(k)] = true
				return nil
			}))
			assert.Equal(t, want[string(ix.bucket)], got, "index %s", ix.bucket)
		}
		count := tx.Bucket(bMeta).Get(kCount)
		assert.Equal(t, uint64(len(live)), binary.BigEndian.Uint64(count), "stored count")
		return nil
	}))
	return live
}

func TestPruneKeepsIndexesConsistent(t *testing.T) {
	s, path := openTemp(t, Options{MaxRecords: 10})
	for i := range 25 {
		r := rec(fmt.Sprintf("h%d", i%3), []string{"monitor", "verdict"}[i%2], t0.Add(time.Duration(i)*time.Second))
		if i%4 == 0 {
			r.CorrelationID = fmt.Sprintf("c%d", i%8)
		}
		if i%5 == 0 {
			r.Host = "" // cluster-wide
		}
		_, err := s.Append(r)
		require.NoError(t, err)
	}
	live := checkIndexes(t, s)
	assert.Equal(t, []uint64{16, 17, 18, 19, 20, 21, 22, 23, 24, 25}, live)

	got, err := s.History(Query{Host: "h0", Limit: 1000})
	require.NoError(t, err)
	for _, r := range got {
		assert.GreaterOrEqual(t, r.ID, uint64(16))
		assert.Equal(t, "h0", r.Host)
	}
	assert.Equal(t, []uint64{19, 22, 25}, ids(got), "h0 records that survived (16 is cluster-wide)")

	// A smaller limit after a restart prunes on the next append.
	require.NoError(t, s.Close())
	s2, err := Open(path, Options{MaxRecords: 4})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	_, err = s2.Append(rec("h1", "monitor", t0.Add(time.Hour)))
	require.NoError(t, err)
	assert.Equal(t, []uint64{23, 24, 25, 26}, checkIndexes(t, s2))
}

func TestPruneRemovesUndecodableRecord(t *testing.T) {
	s, _ := openTemp(t, Options{MaxRecords: 3})
	_, err := s.Append(rec("a", "monitor", t0), rec("a", "monitor", t0), rec("b", "monitor", t0))
	require.NoError(t, err)
	corruptRecord(t, s, 1, []byte("garbage"))

	// Pruning record 1 must not fail the append, though its index entries
	// can't be found; History must then skip them, not report them missing.
	_, err = s.Append(rec("a", "verdict", t0.Add(time.Second)))
	require.NoError(t, err)
	got, err := s.History(Query{Host: "a"})
	require.NoError(t, err)
	assert.Equal(t, []uint64{2, 4}, ids(got))
	got, err = s.History(Query{Kind: "monitor"})
	require.NoError(t, err)
	assert.Equal(t, []uint64{2, 3}, ids(got))
}

func TestHistoryRefusesBadQuery(t *testing.T) {
	s, _ := openTemp(t, Options{})
	_, err := s.History(Query{Kind: "a\x00"})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "Kind")
}

func TestEvidenceNullIsDropped(t *testing.T) {
	s, _ := openTemp(t, Options{})
	got, err := s.Append(Record{At: t0, Kind: "verdict", Evidence: json.RawMessage(" null ")})
	require.NoError(t, err)
	assert.Nil(t, got[0].Evidence)
	hist, err := s.History(Query{})
	require.NoError(t, err)
	assert.Equal(t, got, hist)
	raw, err := json.Marshal(hist[0])
	require.NoError(t, err)
	assert.False(t, bytes.Contains(raw, []byte("evidence")))
}
