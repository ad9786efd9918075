package store

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// bbolt's on-disk meta page (bbolt internal/common: page header, then
// meta), read by hand because bbolt maps the file before it looks at its
// size: a file shorter than its own meta page says is read through the
// mapping past its end and the process dies of SIGBUS, which no recover()
// catches. Offsets are from the start of each of the two meta pages.
const (
	boltMagic         = 0xED0CDAED
	boltMetaOffset    = 16 // page header: id u64, flags u16, count u16, overflow u32
	boltMetaSize      = 64 // magic, version, pageSize, flags, root{u64,u64}, freelist, pgid, txid, checksum
	boltMinFileLength = 2 * 512
)

// bboltMeta is what vetFile needs from one meta page.
type bboltMeta struct {
	pageSize uint32
	pgid     uint64 // high-water mark: the file holds at least pgid pages
	txid     uint64
}

func readMeta(b []byte) (bboltMeta, bool) {
	if len(b) < boltMetaOffset+boltMetaSize {
		return bboltMeta{}, false
	}
	m := b[boltMetaOffset : boltMetaOffset+boltMetaSize]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic {
		return bboltMeta{}, false
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return bboltMeta{}, false
	}
	return bboltMeta{pageSize: le.Uint32(m[8:]), pgid: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}, true
}

// vetFile refuses, with a message an operator can act on, an existing state
// file that is empty or shorter than its newest valid meta page says. An
// empty file is not a fresh start: starting empty would forget every
// drained and fenced host, every domain home and every fence in flight.
func vetFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: open %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("store: open %s: %w: not a regular file", path, ErrCorrupt)
	}
	size := fi.Size()
	if size == 0 {
		return fmt.Errorf("store: open %s: %w: the file is empty (0 bytes), so the daemon would forget every drained and fenced host; restore it from a backup, or remove it to start with no state", path, ErrCorrupt)
	}
	head := make([]byte, boltMetaOffset+boltMetaSize)
	if _, err := io.ReadFull(f, head); err != nil {
		return fmt.Errorf("store: open %s: %w: %d bytes is too short to be a state file (truncated?); restore it from a backup", path, ErrCorrupt, size)
	}
	m0, ok0 := readMeta(head)
	var m1 bboltMeta
	ok1 := false
	if ok0 && int64(m0.pageSize) <= size {
		second := make([]byte, boltMetaOffset+boltMetaSize)
		if _, err := f.ReadAt(second, int64(m0.pageSize)); err == nil {
			m1, ok1 = readMeta(second)
		}
	}
	// bbolt uses the valid meta with the higher txid.
	m, ok := m0, ok0
	if ok1 && (!ok0 || m1.txid > m0.txid) {
		m, ok = m1, true
	}
	if !ok {
		// Neither meta page is valid: bbolt says so itself, without
		// mapping past the end.
		return nil
	}
	if need := int64(m.pgid) * int64(m.pageSize); size < need {
		return fmt.Errorf("store: open %s: %w: the file is %d bytes but its last commit needs %d (truncated: a full disk, or a copy cut short); restore it from a backup", path, ErrCorrupt, size, need)
	}
	return nil
}
