package store

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

const (
	invU1 = "11111111-1111-1111-1111-111111111111"
	invU2 = "22222222-2222-2222-2222-222222222222"
	invU3 = "33333333-3333-3333-3333-333333333333"
)

func domRec(uuid, name, xml string, at time.Time, active bool) DomainRecord {
	return DomainRecord{UUID: uuid, Name: name, XML: xml, CapturedAt: at, Active: active}
}

func TestInventoryRoundTrip(t *testing.T) {
	s, path := openTemp(t, Options{})
	local := time.FixedZone("x", 3600)
	require.NoError(t, s.PutInventory("h1", []DomainRecord{
		domRec(invU2, "web", "<domain>web</domain>", t0.In(local), true),
		domRec(invU1, "db", "<domain>db</domain>", t0, false),
	}, nil))
	// "h" is a prefix of "h1": its range must not include h1's records.
	require.NoError(t, s.PutInventory("h", []DomainRecord{domRec(invU3, "x", "<domain>x</domain>", t0, true)}, nil))

	got, err := s.Inventory("h1")
	require.NoError(t, err)
	assert.Equal(t, []DomainRecord{
		{Host: "h1", UUID: invU1, Name: "db", XML: "<domain>db</domain>", Hash: InventoryHash("<domain>db</domain>"), CapturedAt: t0, Active: false},
		{Host: "h1", UUID: invU2, Name: "web", XML: "<domain>web</domain>", Hash: InventoryHash("<domain>web</domain>"), CapturedAt: t0, Active: true},
	}, got, "sorted by UUID, Host and Hash filled in, time in UTC")
	got, err = s.Inventory("h")
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, invU3, got[0].UUID)
	got, err = s.Inventory("nobody")
	require.NoError(t, err)
	assert.Empty(t, got)

	// Replace one, remove another, remove an unknown one: one transaction.
	require.NoError(t, s.PutInventory("h1", []DomainRecord{domRec(invU2, "web", "<domain>web2</domain>", t0.Add(time.Minute), false)},
		[]string{invU1, invU3}))
	got, err = s.Inventory("h1")
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "<domain>web2</domain>", got[0].XML)
	assert.Equal(t, InventoryHash("<domain>web2</domain>"), got[0].Hash)
	assert.False(t, got[0].Active)
	got, err = s.Inventory("h")
	require.NoError(t, err)
	assert.Len(t, got, 1, "removing %s on h1 leaves host h's record of it", invU3)

	// Survives a reopen.
	require.NoError(t, s.Close())
	s2, err := Open(path, Options{})
	require.NoError(t, err)
	defer s2.Close()
	got, err = s2.Inventory("h1")
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "<domain>web2</domain>", got[0].XML)
}

func TestInventoryHash(t *testing.T) {
	assert.Equal(t, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", InventoryHash(""))
	assert.NotEqual(t, InventoryHash("<a/>"), InventoryHash("<a />"))
}

func TestInventoryRecordLatestAnyHost(t *testing.T) {
	s, _ := openTemp(t, Options{})
	_, ok, err := s.InventoryRecord(invU1)
	require.NoError(t, err)
	assert.False(t, ok)

	// The dead host's record stays; the rebuilt copy on h2 is newer.
	require.NoError(t, s.PutInventory("h1", []DomainRecord{domRec(invU1, "db", "<old/>", t0, true)}, nil))
	require.NoError(t, s.PutInventory("h2", []DomainRecord{domRec(invU1, "db", "<new/>", t0.Add(time.Hour), true)}, nil))
	require.NoError(t, s.PutInventory("h3", []DomainRecord{domRec(invU2, "other", "<other/>", t0.Add(2*time.Hour), true)}, nil))
	r, ok, err := s.InventoryRecord(invU1)
	require.NoError(t, err)
	require.True(t, ok)
	assert.Equal(t, "h2", r.Host)
	assert.Equal(t, "<new/>", r.XML)

	// Tie: the active one, then the first host by name.
	require.NoError(t, s.PutInventory("h0", []DomainRecord{domRec(invU1, "db", "<inactive/>", t0.Add(time.Hour), false)}, nil))
	r, _, err = s.InventoryRecord(invU1)
	require.NoError(t, err)
	assert.Equal(t, "h2", r.Host, "same time: active wins over h0's inactive copy")
	require.NoError(t, s.PutInventory("h0", []DomainRecord{domRec(invU1, "db", "<active/>", t0.Add(time.Hour), true)}, nil))
	r, _, err = s.InventoryRecord(invU1)
	require.NoError(t, err)
	assert.Equal(t, "h0", r.Host)
	assert.Equal(t, "<active/>", r.XML)
}

func TestPutInventoryRefusesBadInputAndWritesNothing(t *testing.T) {
	good := domRec(invU1, "db", "<d/>", t0, true)
	with := func(f func(*DomainRecord)) []DomainRecord {
		r := good
		f(&r)
		return []DomainRecord{good, r}
	}
	for name, tc := range map[string]struct {
		host   string
		put    []DomainRecord
		remove []string
		want   string
	}{
		"empty host":       {"", []DomainRecord{good}, nil, "host is empty"},
		"NUL in host":      {"a\x00b", []DomainRecord{good}, nil, "contains a NUL byte"},
		"other host":       {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.Host = "h2" }), nil, `record 2 of 2: invalid input: domain ` + invU2 + ` is for host "h2"`},
		"empty UUID":       {"h1", with(func(r *DomainRecord) { r.UUID = "" }), nil, "record 2 of 2: invalid input: UUID is empty"},
		"NUL in UUID":      {"h1", with(func(r *DomainRecord) { r.UUID = "a\x00" }), nil, "contains a NUL byte"},
		"long UUID":        {"h1", with(func(r *DomainRecord) { r.UUID = strings.Repeat("a", 129) }), nil, "UUID is 129 bytes, at most 128"},
		"duplicate put":    {"h1", with(func(*DomainRecord) {}), nil, "domain " + invU1 + " appears twice in put"},
		"empty name":       {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.Name = "" }), nil, "Name is empty"},
		"empty XML":        {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.XML = "" }), nil, "XML is empty"},
		"huge XML":         {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.XML = strings.Repeat("x", MaxDomainXML+1) }), nil, "at most 16777216"},
		"zero time":        {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.CapturedAt = time.Time{} }), nil, "CapturedAt is zero"},
		"wrong hash":       {"h1", with(func(r *DomainRecord) { r.UUID = invU2; r.Hash = "sha256:00" }), nil, `Hash "sha256:00" does not match the XML`},
		"put and removed":  {"h1", []DomainRecord{good}, []string{invU1}, "domain " + invU1 + " is both put and removed"},
		"removed twice":    {"h1", nil, []string{invU2, invU2}, "appears twice in remove"},
		"empty remove":     {"h1", nil, []string{""}, "remove: invalid input: UUID is empty"},
		"NUL in remove":    {"h1", nil, []string{"x\x00"}, "contains a NUL byte"},
		"first then fails": {"h1", []DomainRecord{good, domRec(invU3, "", "<d/>", t0, true)}, nil, "record 2 of 2"},
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := openTemp(t, Options{})
			require.NoError(t, s.PutInventory("h1", []DomainRecord{domRec(invU2, "keep", "<keep/>", t0, true)}, nil))
			err := s.PutInventory(tc.host, tc.put, tc.remove)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), "store: put inventory")
			assert.Contains(t, err.Error(), tc.want)
			got, err := s.Inventory("h1")
			require.NoError(t, err)
			require.Len(t, got, 1, "nothing written, nothing removed")
			assert.Equal(t, "<keep/>", got[0].XML)
		})
	}
}

func TestPutInventoryMatchingHashAndNothingToDo(t *testing.T) {
	s, _ := openTemp(t, Options{})
	r := domRec(invU1, "db", "<d/>", t0, true)
	r.Hash = InventoryHash("<d/>")
	r.Host = "h1"
	require.NoError(t, s.PutInventory("h1", []DomainRecord{r}, nil))
	require.NoError(t, s.PutInventory("h1", nil, nil))
	got, err := s.Inventory("h1")
	require.NoError(t, err)
	assert.Equal(t, []DomainRecord{r}, got)
}

func TestInventoryCorruptValues(t *testing.T) {
	for name, tc := range map[string]struct {
		key, val string
		want     string
	}{
		"garbage":      {"h1\x00" + invU1, "{not json", "does not decode"},
		"key mismatch": {"h1\x00" + invU1, `{"host":"h1","uuid":"` + invU2 + `"}`, "says it is host \"h1\" domain \"" + invU2 + "\""},
	} {
		t.Run(name, func(t *testing.T) {
			s, path := openTemp(t, Options{})
			require.NoError(t, s.Close())
			rawUpdate(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bInventory).Put([]byte(tc.key), []byte(tc.val))
			})
			s, err := Open(path, Options{})
			require.NoError(t, err)
			defer s.Close()
			_, err = s.Inventory("h1")
			require.ErrorIs(t, err, ErrCorrupt)
			assert.Contains(t, err.Error(), tc.want)
			_, _, err = s.InventoryRecord(invU1)
			require.ErrorIs(t, err, ErrCorrupt)
			got, err := s.Inventory("h2")
			require.NoError(t, err, "other hosts' records still read")
			assert.Empty(t, got)
		})
	}
}

func TestInventoryBadQueries(t *testing.T) {
	s, _ := openTemp(t, Options{})
	_, err := s.Inventory("")
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "store: read inventory")
	_, _, err = s.InventoryRecord("")
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "UUID is empty")
	require.NoError(t, s.Close())
	_, err = s.Inventory("h1")
	assert.ErrorIs(t, err, ErrClosed)
	err = s.PutInventory("h1", []DomainRecord{domRec(invU1, "db", "<d/>", t0, true)}, nil)
	assert.ErrorIs(t, err, ErrClosed)
}
