package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

const (
	ua = "00000000-0000-0000-0000-00000000000a"
	ub = "00000000-0000-0000-0000-00000000000b"
)

func TestRelocateMovesHomeAndRecordsEviction(t *testing.T) {
	s, path := openTemp(t, Options{})
	require.NoError(t, s.UpdateDomainHomes([]DomainHome{{UUID: ua, Name: "web", Host: "h1", Since: t0}}, nil))

	at := t0.Add(time.Minute).In(time.FixedZone("x", 3600))
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "web", Host: "h2", Since: at}, "h1"))

	homes, err := s.DomainHomes()
	require.NoError(t, err)
	assert.Equal(t, map[string]DomainHome{ua: {UUID: ua, Name: "web", Host: "h2", Since: at.UTC()}}, homes)
	ev, err := s.Evictions("h1")
	require.NoError(t, err)
	assert.Equal(t, []Eviction{{Host: "h1", UUID: ua, Name: "web", Since: at.UTC()}}, ev)
	ev, err = s.Evictions("h2")
	require.NoError(t, err)
	assert.Empty(t, ev)

	// Survives a reopen.
	require.NoError(t, s.Close())
	s2, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	ev, err = s2.Evictions("")
	require.NoError(t, err)
	assert.Equal(t, []Eviction{{Host: "h1", UUID: ua, Name: "web", Since: at.UTC()}}, ev)
}

// TestRelocateBackCancelsTheEviction: a domain moved h1 → h2 and later back
// to h1 must not be destroyed on h1; h2 must now get rid of its copy.
func TestRelocateBackCancelsTheEviction(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "web", Host: "h2", Since: t0}, "h1"))
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "web", Host: "h1", Since: t0.Add(time.Hour)}, "h2"))
	all, err := s.Evictions("")
	require.NoError(t, err)
	assert.Equal(t, []Eviction{{Host: "h2", UUID: ua, Name: "web", Since: t0.Add(time.Hour)}}, all)
	homes, err := s.DomainHomes()
	require.NoError(t, err)
	assert.Equal(t, "h1", homes[ua].Host)
}

func TestEvictionsArePerHostAndSorted(t *testing.T) {
	s, _ := openTemp(t, Options{})
	// "h1" is a prefix of "h10": the scan must not mix them.
	require.NoError(t, s.Relocate(DomainHome{UUID: ub, Name: "b", Host: "h2", Since: t0}, "h1"))
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "a", Host: "h2", Since: t0}, "h10"))
	require.NoError(t, s.Relocate(DomainHome{UUID: "00000000-0000-0000-0000-00000000000c", Name: "c", Host: "h2", Since: t0}, "h1"))
	ev, err := s.Evictions("h1")
	require.NoError(t, err)
	require.Len(t, ev, 2)
	assert.Equal(t, []string{ub, "00000000-0000-0000-0000-00000000000c"}, []string{ev[0].UUID, ev[1].UUID})
	ev, err = s.Evictions("h10")
	require.NoError(t, err)
	require.Len(t, ev, 1)
	assert.Equal(t, ua, ev[0].UUID)
	all, err := s.Evictions("")
	require.NoError(t, err)
	assert.Len(t, all, 3)
	assert.Equal(t, []string{"h1", "h1", "h10"}, []string{all[0].Host, all[1].Host, all[2].Host})
}

func TestClearEvictions(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "a", Host: "h2", Since: t0}, "h1"))
	require.NoError(t, s.Relocate(DomainHome{UUID: ub, Name: "b", Host: "h2", Since: t0}, "h1"))
	require.NoError(t, s.Relocate(DomainHome{UUID: ua, Name: "a", Host: "h3", Since: t0}, "h4"))

	require.NoError(t, s.ClearEvictions("h1", ua, "00000000-0000-0000-0000-0000000000ff"), "an unknown UUID is not an error")
	ev, err := s.Evictions("h1")
	require.NoError(t, err)
	require.Len(t, ev, 1)
	assert.Equal(t, ub, ev[0].UUID)
	ev, err = s.Evictions("h4")
	require.NoError(t, err)
	assert.Len(t, ev, 1, "another host's eviction of the same domain stays")
	require.NoError(t, s.ClearEvictions("h1"), "nothing to clear")
}

func TestEvictionInputErrors(t *testing.T) {
	s, _ := openTemp(t, Options{})
	for name, tc := range map[string]struct {
		err  error
		want string
	}{
		"no uuid":     {s.Relocate(DomainHome{Host: "h2", Since: t0}, "h1"), "domain UUID is empty"},
		"same host":   {s.Relocate(DomainHome{UUID: ua, Host: "h1", Since: t0}, "h1"), `source and target are both host "h1"`},
		"no target":   {s.Relocate(DomainHome{UUID: ua, Since: t0}, "h1"), "target: invalid input: host is empty"},
		"no source":   {s.Relocate(DomainHome{UUID: ua, Host: "h2", Since: t0}, ""), "source: invalid input: host is empty"},
		"no since":    {s.Relocate(DomainHome{UUID: ua, Host: "h2"}, "h1"), "Since is zero"},
		"nul source":  {s.Relocate(DomainHome{UUID: ua, Host: "h2", Since: t0}, "h\x001"), "contains a NUL byte"},
		"clear twice": {s.ClearEvictions("h1", ua, ua), "domain " + ua + " named twice"},
		"clear empty": {s.ClearEvictions("h1", ""), "domain UUID is empty"},
		"clear host":  {s.ClearEvictions("", ua), "host is empty"},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorIs(t, tc.err, ErrInvalid)
			assert.Contains(t, tc.err.Error(), tc.want)
		})
	}
	_, err := s.Evictions("a\x00b")
	require.ErrorIs(t, err, ErrInvalid)
	all, err := s.Evictions("")
	require.NoError(t, err)
	assert.Empty(t, all, "nothing was written")
	homes, err := s.DomainHomes()
	require.NoError(t, err)
	assert.Empty(t, homes)
}

func TestEvictionsCorruptValue(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.update("plant", func(tx *bolt.Tx) error {
		return tx.Bucket(bEvictions).Put(evictionKey("h1", ua), []byte("{not json"))
	}))
	_, err := s.Evictions("h1")
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "does not decode")

	require.NoError(t, s.update("plant", func(tx *bolt.Tx) error {
		return tx.Bucket(bEvictions).Put(evictionKey("h1", ua), []byte(`{"host":"h2","uuid":"`+ua+`"}`))
	}))
	_, err = s.Evictions("")
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), `says it is host "h2"`)
}
