package store

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func ev(n int) json.RawMessage { return json.RawMessage(fmt.Sprintf(`{ "n" : %d }`, n)) }

func TestOutboxEnqueueListAckOrder(t *testing.T) {
	s, _ := openTemp(t, Options{})
	local := time.FixedZone("x", 3600)
	got, err := s.EnqueueOutbox(
		OutboxEntry{ID: 99, Webhook: "a", Event: ev(1), Created: t0.In(local)},
		OutboxEntry{Webhook: "b", Event: ev(2), Created: t0},
		OutboxEntry{Webhook: "a", Event: ev(3), Created: t0, NextAt: t0.Add(time.Second), Attempts: 2},
	)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, []uint64{1, 2, 3}, []uint64{got[0].ID, got[1].ID, got[2].ID}, "IDs are assigned, the caller's ignored")
	assert.Equal(t, `{"n":1}`, string(got[0].Event), "event is compacted")
	assert.Equal(t, time.UTC, got[0].Created.Location())

	a, err := s.Outbox("a", 0)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{got[0], got[2]}, a, "one webhook's entries, oldest first, as Enqueue returned them")
	a1, err := s.Outbox("a", 1)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{got[0]}, a1, "limit keeps the oldest")
	none, err := s.Outbox("nobody", 0)
	require.NoError(t, err)
	assert.Empty(t, none)

	st, err := s.OutboxStats()
	require.NoError(t, err)
	assert.Equal(t, OutboxStats{Pending: map[string]int{"a": 2, "b": 1}, Total: 3}, st)

	require.NoError(t, s.AckOutbox(got[0].ID, 12345))
	require.NoError(t, s.AckOutbox(got[0].ID), "acknowledging twice is harmless")
	a, err = s.Outbox("a", 0)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{got[2]}, a)
	st, err = s.OutboxStats()
	require.NoError(t, err)
	assert.Equal(t, OutboxStats{Pending: map[string]int{"a": 1, "b": 1}, Total: 2}, st)

	// IDs keep growing after acks.
	more, err := s.EnqueueOutbox(OutboxEntry{Webhook: "b", Event: ev(4), Created: t0})
	require.NoError(t, err)
	assert.Equal(t, uint64(4), more[0].ID)
}

func TestOutboxUpdate(t *testing.T) {
	s, _ := openTemp(t, Options{})
	got, err := s.EnqueueOutbox(OutboxEntry{Webhook: "a", Event: ev(1), Created: t0})
	require.NoError(t, err)
	e := got[0]

	upd := e
	upd.Attempts = 3
	upd.NextAt = t0.Add(time.Minute).In(time.FixedZone("y", -7200))
	upd.LastError = "HTTP 503"
	upd.Event = ev(666) // not updatable
	upd.Created = t0.Add(time.Hour)
	require.NoError(t, s.UpdateOutbox(upd))

	list, err := s.Outbox("a", 0)
	require.NoError(t, err)
	want := e
	want.Attempts, want.NextAt, want.LastError = 3, t0.Add(time.Minute), "HTTP 503"
	assert.Equal(t, []OutboxEntry{want}, list)

	wrong := upd
	wrong.Webhook = "b"
	err = s.UpdateOutbox(wrong)
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), `entry 1 belongs to webhook "a", not "b"`)

	require.NoError(t, s.AckOutbox(e.ID))
	err = s.UpdateOutbox(upd)
	require.ErrorIs(t, err, ErrOutboxEntryGone)
	assert.Contains(t, err.Error(), "store: update outbox")
	list, err = s.Outbox("a", 0)
	require.NoError(t, err)
	assert.Empty(t, list, "updating a gone entry does not resurrect it")
}

func TestOutboxRefusesBadInput(t *testing.T) {
	s, _ := openTemp(t, Options{})
	for name, tc := range map[string]struct {
		e    OutboxEntry
		want string
	}{
		"no webhook":   {OutboxEntry{Event: ev(1), Created: t0}, "Webhook is empty"},
		"no event":     {OutboxEntry{Webhook: "a", Created: t0}, `webhook "a": Event is empty`},
		"bad json":     {OutboxEntry{Webhook: "a", Event: json.RawMessage(`{"x":`), Created: t0}, "Event is not valid JSON"},
		"no created":   {OutboxEntry{Webhook: "a", Event: ev(1)}, "Created is zero"},
		"neg attempts": {OutboxEntry{Webhook: "a", Event: ev(1), Created: t0, Attempts: -1}, "Attempts -1 is negative"},
		"nul webhook":  {OutboxEntry{Webhook: "a\x00b", Event: ev(1), Created: t0}, "contains a NUL byte"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := s.EnqueueOutbox(OutboxEntry{Webhook: "ok", Event: ev(0), Created: t0}, tc.e)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), "store: enqueue outbox")
			assert.Contains(t, err.Error(), "entry 2 of 2")
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	st, err := s.OutboxStats()
	require.NoError(t, err)
	assert.Zero(t, st.Total, "a refused batch writes nothing, not even its good entries")

	_, err = s.Outbox("", 0)
	require.ErrorIs(t, err, ErrInvalid)
	_, err = s.Outbox("a", -1)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorIs(t, s.UpdateOutbox(OutboxEntry{}), ErrInvalid)
	_, err = s.DropOutbox("")
	require.ErrorIs(t, err, ErrInvalid)
}

func TestOutboxBoundDropsOldest(t *testing.T) {
	s, _ := openTemp(t, Options{})
	var all []OutboxEntry
	for i := range 5 {
		wh := []string{"a", "b"}[i%2]
		got, err := s.enqueueOutbox(3, []OutboxEntry{{Webhook: wh, Event: ev(i), Created: t0}})
		require.NoError(t, err)
		all = append(all, got...)
	}
	st, err := s.OutboxStats()
	require.NoError(t, err)
	assert.Equal(t, OutboxStats{Pending: map[string]int{"a": 2, "b": 1}, Total: 3, Dropped: 2}, st)
	a, err := s.Outbox("a", 0)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{all[2], all[4]}, a, "entry 1 (a) was dropped as the oldest")
	b, err := s.Outbox("b", 0)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{all[3]}, b, "entry 2 (b) was dropped as the second oldest")

	// One batch larger than the bound keeps its newest entries.
	batch := []OutboxEntry{}
	for i := range 4 {
		batch = append(batch, OutboxEntry{Webhook: "c", Event: ev(10 + i), Created: t0})
	}
	got, err := s.enqueueOutbox(3, batch)
	require.NoError(t, err)
	st, err = s.OutboxStats()
	require.NoError(t, err)
	assert.Equal(t, OutboxStats{Pending: map[string]int{"c": 3}, Total: 3, Dropped: 6}, st)
	c, err := s.Outbox("c", 0)
	require.NoError(t, err)
	assert.Equal(t, got[1:], c)
}

func TestOutboxDropWebhook(t *testing.T) {
	s, _ := openTemp(t, Options{})
	got, err := s.EnqueueOutbox(
		OutboxEntry{Webhook: "a", Event: ev(1), Created: t0},
		OutboxEntry{Webhook: "ab", Event: ev(2), Created: t0},
		OutboxEntry{Webhook: "a", Event: ev(3), Created: t0},
	)
	require.NoError(t, err)
	n, err := s.DropOutbox("a")
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	ab, err := s.Outbox("ab", 0)
	require.NoError(t, err)
	assert.Equal(t, []OutboxEntry{got[1]}, ab, "a webhook whose name extends the dropped one keeps its entries")
	st, err := s.OutboxStats()
	require.NoError(t, err)
	assert.Equal(t, OutboxStats{Pending: map[string]int{"ab": 1}, Total: 1}, st, "dropping a webhook is not counted as overflow")
	n, err = s.DropOutbox("a")
	require.NoError(t, err)
	assert.Zero(t, n)
}

func TestOutboxSurvivesReopen(t *testing.T) {
	s, path := openTemp(t, Options{})
	got, err := s.EnqueueOutbox(OutboxEntry{Webhook: "a", Event: ev(1), Created: t0})
	require.NoError(t, err)
	require.NoError(t, s.Close())

	s2, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	list, err := s2.Outbox("a", 0)
	require.NoError(t, err)
	assert.Equal(t, got, list)
	next, err := s2.EnqueueOutbox(OutboxEntry{Webhook: "a", Event: ev(2), Created: t0})
	require.NoError(t, err)
	assert.Equal(t, uint64(2), next[0].ID, "IDs continue across restarts")
}

func TestOutboxCorruptEntryIsReported(t *testing.T) {
	s, path := openTemp(t, Options{})
	_, err := s.EnqueueOutbox(OutboxEntry{Webhook: "a", Event: ev(1), Created: t0})
	require.NoError(t, err)
	require.NoError(t, s.Close())
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket(bOutbox).Bucket(obEntries).Put(idxKey("a", 1), []byte("{not json"))
	})
	s2, err := Open(path, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s2.Close() })
	_, err = s2.Outbox("a", 0)
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "outbox entry 1 does not decode")
	// Acknowledging needs no decoding, so the bad entry can still be removed.
	require.NoError(t, s2.AckOutbox(1))
	list, err := s2.Outbox("a", 0)
	require.NoError(t, err)
	assert.Empty(t, list)
}
