package configs

import (
	"fmt"
	"sync/atomic"
)

// Store holds the configuration in use and swaps it atomically on reload.
// Readers call Current on every decision and never see a half-applied
// file. (The daemon calls Reload on SIGHUP; there is no file watching.)
type Store struct {
	path string
	cur  atomic.Pointer[Config]
}

// NewStore loads path; it fails if the file is not valid.
func NewStore(path string) (*Store, error) {
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path}
	s.cur.Store(c)
	return s, nil
}

// Current is the configuration in use.
func (s *Store) Current() *Config { return s.cur.Load() }

// Reload parses and validates the file again. On success the new
// configuration replaces the old one at once; on any problem the old one
// stays in use and the error says why.
func (s *Store) Reload() (*Config, error) {
	c, err := Load(s.path)
	if err != nil {
		return s.cur.Load(), fmt.Errorf("reload %s: keeping the configuration in use: %w", s.path, err)
	}
	s.cur.Store(c)
	return c, nil
}
