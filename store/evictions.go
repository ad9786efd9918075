package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Eviction says that host must destroy and undefine its copy of a domain:
// the domain was rebuilt elsewhere (Relocate) while host was fenced. It
// stays until the host's agent reports the domain gone (ClearEvictions).
type Eviction struct {
	Host  string    `json:"host"`
	UUID  string    `json:"uuid"`
	Name  string    `json:"name"`
	Since time.Time `json:"since"`
}

// evictionKey is host + 0x00 + uuid, so one host's evictions are one
// prefix scan. checkHost and checkIndexable keep NUL out of both.
func evictionKey(host, uuid string) []byte {
	k := make([]byte, 0, len(host)+1+len(uuid))
	k = append(k, host...)
	k = append(k, 0)
	return append(k, uuid...)
}

func checkEvictionUUID(uuid string) error {
	if uuid == "" {
		return fmt.Errorf("%w: domain UUID is empty", ErrInvalid)
	}
	return checkIndexable("domain UUID", uuid)
}

// Relocate records that a domain now lives on home.Host and that host
// from must get rid of its copy, in one transaction: the domain's home is
// set to home (replacing any), an eviction (from, home.UUID, home.Name,
// home.Since) is written, and an eviction of the same domain on home.Host
// is deleted (a domain moved back to a host must not be destroyed there).
// home needs UUID, Host and Since; from must be another host.
func (s *Store) Relocate(home DomainHome, from string) error {
	const step = "relocate domain"
	if err := checkEvictionUUID(home.UUID); err != nil {
		return s.wrap(step, err)
	}
	var errs []string
	if err := checkHost(home.Host); err != nil {
		errs = append(errs, "target: "+err.Error())
	}
	if err := checkHost(from); err != nil {
		errs = append(errs, "source: "+err.Error())
	}
	if home.Host != "" && home.Host == from {
		errs = append(errs, fmt.Sprintf("source and target are both host %q", from))
	}
	if home.Since.IsZero() {
		errs = append(errs, "Since is zero")
	}
	if len(errs) > 0 {
		return s.wrap(step, fmt.Errorf("%w: domain %s: %s", ErrInvalid, home.UUID, strings.Join(errs, "; ")))
	}
	home.Since = home.Since.UTC().Round(0)
	hv, err := json.Marshal(home)
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode home of domain %s: %w", home.UUID, err))
	}
	ev, err := json.Marshal(Eviction{Host: from, UUID: home.UUID, Name: home.Name, Since: home.Since})
	if err != nil {
		return s.wrap(step, fmt.Errorf("encode eviction of domain %s: %w", home.UUID, err))
	}
	return s.write(step, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bHomes).Put([]byte(home.UUID), hv); err != nil {
			return fmt.Errorf("put home of domain %s: %w", home.UUID, err)
		}
		b := tx.Bucket(bEvictions)
		if err := b.Put(evictionKey(from, home.UUID), ev); err != nil {
			return fmt.Errorf("put eviction of domain %s on host %q: %w", home.UUID, from, err)
		}
		if err := b.Delete(evictionKey(home.Host, home.UUID)); err != nil {
			return fmt.Errorf("delete eviction of domain %s on host %q: %w", home.UUID, home.Host, err)
		}
		return nil
	})
}

// Evictions returns host's evictions sorted by UUID; host "" returns every
// host's, sorted by host then UUID.
func (s *Store) Evictions(host string) ([]Eviction, error) {
	const step = "read evictions"
	var prefix []byte
	if host != "" {
		if err := checkHost(host); err != nil {
			return nil, s.wrap(step, err)
		}
		prefix = append([]byte(host), 0)
	}
	var out []Eviction
	err := s.view(step, func(tx *bolt.Tx) error {
		c := tx.Bucket(bEvictions).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var e Eviction
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("%w: eviction %q does not decode: %v", ErrCorrupt, k, err)
			}
			if !bytes.Equal(k, evictionKey(e.Host, e.UUID)) {
				return fmt.Errorf("%w: eviction under key %q says it is host %q domain %q", ErrCorrupt, k, e.Host, e.UUID)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ClearEvictions deletes host's evictions of uuids in one transaction
// (the host's agent reported the domains gone). Unknown UUIDs are not an
// error; naming one twice is.
func (s *Store) ClearEvictions(host string, uuids ...string) error {
	const step = "clear evictions"
	if err := checkHost(host); err != nil {
		return s.wrap(step, err)
	}
	for i, u := range uuids {
		if err := checkEvictionUUID(u); err != nil {
			return s.wrap(step, fmt.Errorf("host %q: %w", host, err))
		}
		if slices.Contains(uuids[:i], u) {
			return s.wrap(step, fmt.Errorf("%w: host %q: domain %s named twice", ErrInvalid, host, u))
		}
	}
	if len(uuids) == 0 {
		return nil
	}
	return s.write(step, func(tx *bolt.Tx) error {
		b := tx.Bucket(bEvictions)
		for _, u := range uuids {
			if err := b.Delete(evictionKey(host, u)); err != nil {
				return fmt.Errorf("delete eviction of domain %s on host %q: %w", u, host, err)
			}
		}
		return nil
	})
}
