package store

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"

	"github.com/chimestack/chime-fence/node"
)

func TestSetAdminStateFillsRecord(t *testing.T) {
	s, _ := openTemp(t, Options{})
	r1, err := s.SetAdminState("b", node.Drained, Record{At: t0, Reason: "drain requested", CorrelationID: "op-1"})
	require.NoError(t, err)
	assert.Equal(t, Record{ID: 1, At: t0, Host: "b", Kind: AdminKind, From: "enabled", To: "drained",
		Reason: "drain requested", CorrelationID: "op-1"}, r1)

	r2, err := s.SetAdminState("b", node.Disabled, Record{At: t0.Add(time.Second), Host: "b", Kind: "fence"})
	require.NoError(t, err)
	assert.Equal(t, "drained", r2.From, "From is the previous state")
	assert.Equal(t, "disabled", r2.To)
	assert.Equal(t, "fence", r2.Kind, "a caller's Kind is kept")

	r3, err := s.SetAdminState("c", node.Disabled, Record{At: t0, From: "custom", To: "custom-to"})
	require.NoError(t, err)
	assert.Equal(t, "custom", r3.From)
	assert.Equal(t, "custom-to", r3.To)

	states, err := s.AdminStates()
	require.NoError(t, err)
	assert.Equal(t, map[string]node.AdminState{"b": node.Disabled, "c": node.Disabled}, states)
	hist, err := s.History(Query{Host: "b"})
	require.NoError(t, err)
	assert.Equal(t, []Record{r1, r2}, hist)
}

func TestSetAdminStateRefusesBadInputAndWritesNothing(t *testing.T) {
	for name, tc := range map[string]struct {
		host string
		st   node.AdminState
		rec  Record
		want string
	}{
		"zero At":       {"a", node.Drained, Record{Reason: "x"}, `host "a": invalid input: (host "a", kind "admin"): At is zero`},
		"other host":    {"a", node.Drained, Record{At: t0, Host: "b"}, `record is for host "b", state is for host "a"`},
		"unknown state": {"a", node.AdminState(7), Record{At: t0}, `host "a": cannot marshal admin state 7`},
		"empty host":    {"", node.Drained, Record{At: t0}, "host is empty"},
	} {
		t.Run(name, func(t *testing.T) {
			s, _ := openTemp(t, Options{})
			_, err := s.SetAdminState(tc.host, tc.st, tc.rec)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), "store: set admin state")
			assert.Contains(t, err.Error(), tc.want)
			states, err := s.AdminStates()
			require.NoError(t, err)
			assert.Empty(t, states)
			hist, err := s.History(Query{})
			require.NoError(t, err)
			assert.Empty(t, hist)
		})
	}
}

// TestSetAdminStateAtomic makes the history write fail inside the
// transaction, after the admin state was put: the state must roll back too.
func TestSetAdminStateAtomic(t *testing.T) {
	s, _ := openTemp(t, Options{})
	_, err := s.SetAdminState("a", node.Disabled, Record{At: t0})
	require.NoError(t, err)

	var good []byte
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		good = append([]byte(nil), tx.Bucket(bMeta).Get(kCount)...)
		return tx.Bucket(bMeta).Put(kCount, []byte{1, 2, 3})
	}))
	_, err = s.SetAdminState("a", node.Drained, Record{At: t0.Add(time.Second)})
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), "history-count is 3 bytes")

	states, err := s.AdminStates()
	require.NoError(t, err)
	assert.Equal(t, node.Disabled, states["a"], "state not written without its record")
	hist, err := s.History(Query{})
	require.NoError(t, err)
	assert.Len(t, hist, 1, "record not written")

	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bMeta).Put(kCount, good) }))
	r, err := s.SetAdminState("a", node.Drained, Record{At: t0.Add(time.Second)})
	require.NoError(t, err)
	assert.Equal(t, uint64(2), r.ID, "the failed attempt used up no ID")
	assert.Equal(t, "disabled", r.From)
}

func TestAdminStatesReportsCorruptValue(t *testing.T) {
	s, _ := openTemp(t, Options{})
	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bAdmin).Put([]byte("host-7"), []byte("meltdown"))
	}))
	_, err := s.AdminStates()
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), `admin state of host "host-7"`)
	assert.Contains(t, err.Error(), `"meltdown"`)
}

func TestDomainHomes(t *testing.T) {
	s, _ := openTemp(t, Options{})
	u1 := DomainHome{UUID: "u1", Name: "vm1", Host: "a", Since: t0}
	u2 := DomainHome{UUID: "u2", Name: "vm2", Host: "a", Since: t0}
	require.NoError(t, s.UpdateDomainHomes([]DomainHome{u1, u2}, nil))

	moved := DomainHome{UUID: "u1", Name: "vm1", Host: "b", Since: t0.Add(time.Minute).In(time.FixedZone("X", 7200))}
	require.NoError(t, s.UpdateDomainHomes([]DomainHome{moved}, []string{"u2", "never-existed"}))
	got, err := s.DomainHomes()
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "b", got["u1"].Host)
	assert.True(t, got["u1"].Since.Equal(moved.Since))
	assert.Equal(t, time.UTC, got["u1"].Since.Location())

	for name, tc := range map[string]struct {
		put    []DomainHome
		remove []string
		want   string
	}{
		"empty uuid":     {[]DomainHome{{Name: "vm9", Host: "a"}}, nil, `home 1 of 1 (name "vm9"): UUID is empty`},
		"empty host":     {[]DomainHome{{UUID: "u9", Name: "vm9"}}, nil, `home of domain u9 (name "vm9"): Host is empty`},
		"twice in put":   {[]DomainHome{u2, u2}, nil, "domain u2 appears twice in put"},
		"put and remove": {[]DomainHome{u2}, []string{"u2"}, "domain u2 is both put and removed"},
		"empty remove":   {nil, []string{""}, "empty UUID in remove"},
	} {
		t.Run(name, func(t *testing.T) {
			err := s.UpdateDomainHomes(tc.put, tc.remove)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tc.want)
			after, err := s.DomainHomes()
			require.NoError(t, err)
			assert.Equal(t, got, after, "nothing written")
		})
	}

	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bHomes).Put([]byte("u5"), []byte(`{"uuid":"u6","host":"a"}`))
	}))
	_, err = s.DomainHomes()
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), `domain home under key "u5" says it is "u6"`)
}

func TestHostMemos(t *testing.T) {
	s, _ := openTemp(t, Options{})
	a := HostMemo{BootID: "boot-1", LastHeartbeat: t0, Monitor: "normal"}
	b := HostMemo{BootID: "boot-2", LastVerdict: "host-down", LastVerdictAt: t0, Monitor: "unreachable"}
	require.NoError(t, s.PutHostMemos(map[string]HostMemo{"a": a, "b": b}))

	a2 := HostMemo{BootID: "boot-3", LastHeartbeat: t0.Add(time.Minute), Monitor: "normal", AgentStart: t0.Add(-time.Hour), Seq: 1 << 40}
	require.NoError(t, s.PutHostMemos(map[string]HostMemo{"a": a2}))
	got, err := s.HostMemos()
	require.NoError(t, err)
	assert.Equal(t, map[string]HostMemo{"a": a2, "b": b}, got, "hosts not in the call keep their memo")
	assert.Equal(t, uint64(1<<40), got["a"].Seq, "the replay mark survives")
	assert.True(t, got["a"].AgentStart.Equal(t0.Add(-time.Hour)))

	require.NoError(t, s.RemoveHostMemos("b", "unknown"))
	got, err = s.HostMemos()
	require.NoError(t, err)
	assert.Equal(t, map[string]HostMemo{"a": a2}, got)

	err = s.PutHostMemos(map[string]HostMemo{"": a})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Contains(t, err.Error(), "store: put host memos")
	assert.Contains(t, err.Error(), "host is empty")

	require.NoError(t, s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bMemos).Put([]byte("c"), []byte("{"))
	}))
	_, err = s.HostMemos()
	require.ErrorIs(t, err, ErrCorrupt)
	assert.Contains(t, err.Error(), `memo of host "c" does not decode`)
}
