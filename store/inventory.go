package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxDomainXML bounds one saved domain definition. Real ones are a few KiB;
// anything near this is not a domain XML.
const MaxDomainXML = 16 << 20

// DomainRecord is one domain's saved definition on one host: what a rebuild
// defines after the host died.
type DomainRecord struct {
	Host string `json:"host"`
	UUID string `json:"uuid"`
	Name string `json:"name"`
	// XML is the inactive, secure definition (it may hold secrets such as
	// VNC passwords).
	XML string `json:"xml"`
	// Hash is InventoryHash(XML); PutInventory fills it in when empty.
	Hash string `json:"hash"`
	// CapturedAt is when this content (XML and Active) was captured. An
	// unchanged domain is not rewritten, so it is the time of the last
	// change seen, not of the last look.
	CapturedAt time.Time `json:"captured_at"`
	// Active: a QEMU process may exist for it (running, paused, ...).
	Active bool `json:"active"`
	// Autostart: libvirt's autostart was on (the VM is then not
	// evacuable; evacuator.WithAutostart).
	Autostart bool `json:"autostart,omitempty"`
}

// InventoryHash is the hash PutInventory stores with an XML: compare it
// with a fresh capture's to see whether the definition changed.
func InventoryHash(xml string) string {
	sum := sha256.Sum256([]byte(xml))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Inventory keys are host + 0x00 + UUID, so one host's records are a prefix
// range and neither part may contain NUL.
func invKey(host, uuid string) []byte {
	k := make([]byte, 0, len(host)+1+len(uuid))
	k = append(k, host...)
	k = append(k, 0)
	return append(k, uuid...)
}

// PutInventory writes host's records in put (replacing those with the same
// UUID) and deletes host's records whose UUIDs are in remove, in one
// transaction. A record's empty Host is filled with host and its empty Hash
// with InventoryHash(XML); another host, a Hash that does not match the
// XML, an empty UUID, Name or XML, a zero CapturedAt, or a UUID named twice
// is refused and nothing is written. Removing an unknown UUID is not an
// error.
func (s *Store) PutInventory(host string, put []DomainRecord, remove []string) error {
	const step = "put inventory"
	if err := checkHost(host); err != nil {
		return s.wrap(step, err)
	}
	seen := map[string]string{}
	vals := make([][]byte, len(put))
	for i, r := range put {
		if err := checkInvRecord(host, &r, seen); err != nil {
			return s.wrap(step, fmt.Errorf("host %q: record %d of %d: %w", host, i+1, len(put), err))
		}
		v, err := json.Marshal(r)
		if err != nil {
			return s.wrap(step, fmt.Errorf("host %q: encode domain %s: %w", host, r.UUID, err))
		}
		vals[i] = v
	}
	for _, id := range remove {
		if err := checkInvUUID(id); err != nil {
			return s.wrap(step, fmt.Errorf("host %q: remove: %w", host, err))
		}
		switch seen[id] {
		case "put":
			return s.wrap(step, fmt.Errorf("%w: host %q: domain %s is both put and removed", ErrInvalid, host, id))
		case "remove":
			return s.wrap(step, fmt.Errorf("%w: host %q: domain %s appears twice in remove", ErrInvalid, host, id))
		}
		seen[id] = "remove"
	}
	if len(put) == 0 && len(remove) == 0 {
		return nil
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bInventory)
		for i, r := range put {
			if err := b.Put(invKey(host, r.UUID), vals[i]); err != nil {
				return fmt.Errorf("host %q: put domain %s: %w", host, r.UUID, err)
			}
		}
		for _, id := range remove {
			if err := b.Delete(invKey(host, id)); err != nil {
				return fmt.Errorf("host %q: delete domain %s: %w", host, id, err)
			}
		}
		return nil
	})
}

// checkInvRecord validates r for host, fills its defaults and marks its UUID
// in seen.
func checkInvRecord(host string, r *DomainRecord, seen map[string]string) error {
	switch r.Host {
	case "":
		r.Host = host
	case host:
	default:
		return fmt.Errorf("%w: domain %s is for host %q", ErrInvalid, r.UUID, r.Host)
	}
	if err := checkInvUUID(r.UUID); err != nil {
		return err
	}
	if seen[r.UUID] != "" {
		return fmt.Errorf("%w: domain %s appears twice in put", ErrInvalid, r.UUID)
	}
	seen[r.UUID] = "put"
	switch {
	case r.Name == "":
		return fmt.Errorf("%w: domain %s: Name is empty", ErrInvalid, r.UUID)
	case r.XML == "":
		return fmt.Errorf("%w: domain %s (%s): XML is empty", ErrInvalid, r.UUID, r.Name)
	case len(r.XML) > MaxDomainXML:
		return fmt.Errorf("%w: domain %s (%s): XML is %d bytes, at most %d", ErrInvalid, r.UUID, r.Name, len(r.XML), MaxDomainXML)
	case r.CapturedAt.IsZero():
		return fmt.Errorf("%w: domain %s (%s): CapturedAt is zero", ErrInvalid, r.UUID, r.Name)
	}
	want := InventoryHash(r.XML)
	switch r.Hash {
	case "":
		r.Hash = want
	case want:
	default:
		return fmt.Errorf("%w: domain %s (%s): Hash %q does not match the XML (%s)", ErrInvalid, r.UUID, r.Name, r.Hash, want)
	}
	r.CapturedAt = r.CapturedAt.UTC().Round(0)
	return nil
}

func checkInvUUID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: UUID is empty", ErrInvalid)
	case len(id) > 128:
		return fmt.Errorf("%w: UUID is %d bytes, at most 128", ErrInvalid, len(id))
	case bytes.IndexByte([]byte(id), 0) >= 0:
		return fmt.Errorf("%w: UUID %q contains a NUL byte", ErrInvalid, id)
	}
	return nil
}

// Inventory returns host's records, sorted by UUID.
func (s *Store) Inventory(host string) ([]DomainRecord, error) {
	const step = "read inventory"
	if err := checkHost(host); err != nil {
		return nil, s.wrap(step, err)
	}
	var out []DomainRecord
	prefix := invKey(host, "")
	err := s.view(step, func(tx *bolt.Tx) error {
		c := tx.Bucket(bInventory).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			r, err := decodeInvRecord(k, v)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// InventoryRecord returns the latest record (by CapturedAt; on a tie an
// active one, then the first host by name) of the domain uuid on any host:
// after a rebuild the domain has a record on its new host while the dead
// host's stays. ok is false when no host has one.
func (s *Store) InventoryRecord(uuid string) (rec DomainRecord, ok bool, err error) {
	const step = "read inventory record"
	if err := checkInvUUID(uuid); err != nil {
		return DomainRecord{}, false, s.wrap(step, err)
	}
	var found []DomainRecord
	suffix := append([]byte{0}, uuid...)
	err = s.view(step, func(tx *bolt.Tx) error {
		return tx.Bucket(bInventory).ForEach(func(k, v []byte) error {
			if !bytes.HasSuffix(k, suffix) {
				return nil
			}
			r, err := decodeInvRecord(k, v)
			if err != nil {
				return err
			}
			found = append(found, r)
			return nil
		})
	})
	if err != nil || len(found) == 0 {
		return DomainRecord{}, false, err
	}
	sort.Slice(found, func(i, j int) bool {
		a, b := found[i], found[j]
		if !a.CapturedAt.Equal(b.CapturedAt) {
			return a.CapturedAt.After(b.CapturedAt)
		}
		if a.Active != b.Active {
			return a.Active
		}
		return a.Host < b.Host
	})
	return found[0], true, nil
}

func decodeInvRecord(k, v []byte) (DomainRecord, error) {
	var r DomainRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return r, fmt.Errorf("%w: inventory record %q does not decode: %v", ErrCorrupt, k, err)
	}
	if !bytes.Equal(k, invKey(r.Host, r.UUID)) {
		return r, fmt.Errorf("%w: inventory record under key %q says it is host %q domain %q", ErrCorrupt, k, r.Host, r.UUID)
	}
	return r, nil
}
