package hypervisor

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCPULoad(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prev, cur NodeStats
		want      float64
		ok        bool
	}{
		{"quarter busy", NodeStats{BusyNs: 100, IdleNs: 100}, NodeStats{BusyNs: 200, IdleNs: 400}, 0.25, true},
		{"idle", NodeStats{BusyNs: 5, IdleNs: 5}, NodeStats{BusyNs: 5, IdleNs: 105}, 0, true},
		{"saturated", NodeStats{}, NodeStats{BusyNs: 10}, 1, true},
		{"no time passed", NodeStats{BusyNs: 7, IdleNs: 7}, NodeStats{BusyNs: 7, IdleNs: 7}, 0, false},
		{"counters reset by reboot", NodeStats{BusyNs: 1000, IdleNs: 1000}, NodeStats{BusyNs: 10, IdleNs: 2000}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := CPULoad(tc.prev, tc.cur)
			assert.Equal(t, tc.ok, ok)
			assert.InDelta(t, tc.want, got, 1e-9)
		})
	}
}

func TestDomainStateActive(t *testing.T) {
	for s, want := range map[DomainState]bool{StateRunning: true, StatePaused: true, StateOther: true, StateUnknown: true, StateShutoff: false, StateCrashed: false} {
		assert.Equal(t, want, s.Active(), s.String())
	}
	var s DomainState
	require.NoError(t, s.UnmarshalText([]byte("paused")))
	assert.Equal(t, StatePaused, s)
	assert.Error(t, s.UnmarshalText([]byte("zombie")))
}

func TestErrorKinds(t *testing.T) {
	err := fmt.Errorf("rebuild vm1: %w", &Error{Kind: KindConflict, Host: "n2", Step: "libvirt: start", Err: fmt.Errorf("disk locked")})
	assert.ErrorIs(t, err, ErrConflict)
	assert.NotErrorIs(t, err, ErrNotFound)
	assert.Equal(t, KindConflict, KindOf(err))
	assert.Equal(t, "rebuild vm1: host n2: libvirt: start: conflict: disk locked", err.Error())
}
