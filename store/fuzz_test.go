package store

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// FuzzJournalRecords puts arbitrary bytes where a record of each kind
// lives (as a damaged or hand-edited file would hold them) and reads them
// back through every reader: each returns the records or an error, and
// never panics (a panic in the daemon's journal read would stop fencing).
func FuzzJournalRecords(f *testing.F) {
	s, err := Open(filepath.Join(f.TempDir(), FileName), Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = s.Close() })
	if _, err := s.Append(Record{At: t0, Host: "a", Kind: "monitor", From: "normal", To: "suspect"}); err != nil {
		f.Fatal(err)
	}
	buckets := [][]byte{bHistory, bAdmin, bHomes, bMemos, bOutbox, bTasks, bInventory, bEvictions, bFences, bOpTasks}
	f.Add(uint8(0), []byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte(`{"at":"2026-01-01T00:00:00Z","host":"a","kind":"monitor"}`))
	f.Add(uint8(0), []byte{0, 0, 0, 0, 0, 0, 0, 2}, []byte{1, 2, 3})
	f.Add(uint8(1), []byte("a"), []byte(`"drained"`))
	f.Add(uint8(2), []byte("6f1c3a52-8f0e-4c7b-9a51-0d2f5e6b7c81"), []byte(`{"uuid":"6f1c3a52-8f0e-4c7b-9a51-0d2f5e6b7c81","host":"a"}`))
	f.Add(uint8(5), []byte("task-1"), []byte(`{"id":"task-1","body":{"vms":[null]}}`))
	f.Add(uint8(8), []byte("a"), []byte(`{"host":"a","state":"verified"}`))
	f.Add(uint8(9), []byte("op-1"), []byte(`null`))
	f.Add(uint8(6), []byte("a\x00u"), []byte(`{"host":"a","uuid":"u","xml":"<domain/>"}`))
	f.Add(uint8(4), []byte{0, 0, 0, 0, 0, 0, 0, 9}, []byte(`{"id":9,"webhook":"w","event":{}}`))
	f.Fuzz(func(t *testing.T, which uint8, key, value []byte) {
		if len(key) == 0 || len(key) > bolt.MaxKeySize {
			return
		}
		b := buckets[int(which)%len(buckets)]
		put := func(tx *bolt.Tx) error { return tx.Bucket(b).Put(key, value) }
		if err := s.rawUpdate(put); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = s.rawUpdate(func(tx *bolt.Tx) error { return tx.Bucket(b).Delete(key) })
		}()
		_, _ = s.History(Query{Limit: 100})
		_, _ = s.History(Query{Host: "a", Limit: 100})
		_, _ = s.AdminStates()
		_, _ = s.DomainHomes()
		_, _ = s.HostMemos()
		_, _ = s.Outbox("w", 10)
		_, _ = s.OutboxStats()
		_, _ = s.Tasks(false)
		_, _, _ = s.TaskByID(string(key))
		_, _ = s.Inventory("a")
		_, _, _ = s.InventoryRecord(string(key))
		_, _ = s.Evictions("a")
		_, _ = s.Fences()
		_, _ = s.OpTasks("a")
		_, _ = s.OpenOpTasks()
		_, _, _ = s.OpTaskByID(string(key))
	})
}
