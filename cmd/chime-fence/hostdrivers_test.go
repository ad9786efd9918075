package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/power"
)

// fakeBMC answers PowerStatus with st or err, counting calls.
type fakeBMC struct {
	fencer.PowerController // unused methods panic
	st                     power.State
	err                    error
	calls                  atomic.Int32
}

func (b *fakeBMC) PowerStatus(context.Context) (power.State, error) {
	b.calls.Add(1)
	return b.st, b.err
}

func TestReadPowerSparesABMCThatRefusedOurCredentials(t *testing.T) {
	now := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	ipmi := &fakeBMC{err: &power.Error{Kind: power.KindAuth, Host: "h1", Step: "chassis status"}}
	redfish := &fakeBMC{st: power.Off}
	d := newHostDrivers(nil, zerolog.Nop())
	d.now = func() time.Time { return now }
	d.hosts["h1"] = &hostDriver{host: &configs.Host{Name: "h1"}, power: []fencer.PowerController{ipmi, redfish},
		powerErr: []error{nil, nil}, authFailed: make([]time.Time, 2)}
	ctx := context.Background()

	st, err := d.ReadPower(ctx, "h1")
	require.NoError(t, err)
	assert.Equal(t, power.Off, st, "the second BMC answers")
	assert.EqualValues(t, 1, ipmi.calls.Load())

	for range 10 { // ten detection windows
		now = now.Add(20 * time.Second)
		st, err = d.ReadPower(ctx, "h1")
		require.NoError(t, err)
		assert.Equal(t, power.Off, st)
	}
	assert.EqualValues(t, 1, ipmi.calls.Load(), "not asked again within the backoff")

	now = now.Add(authBackoff)
	_, _ = d.ReadPower(ctx, "h1")
	assert.EqualValues(t, 2, ipmi.calls.Load(), "asked again after it")

	// With no other BMC the read fails as auth, naming the backoff.
	d.hosts["h1"].power, d.hosts["h1"].powerErr = d.hosts["h1"].power[:1], d.hosts["h1"].powerErr[:1]
	now = now.Add(time.Second)
	_, err = d.ReadPower(ctx, "h1")
	require.ErrorIs(t, err, power.ErrAuth)
	assert.Contains(t, err.Error(), "not asked again for 5m0s")
	assert.EqualValues(t, 2, ipmi.calls.Load())

	// A BMC that answers clears its mark.
	ipmi.err, ipmi.st = nil, power.On
	now = now.Add(authBackoff)
	st, err = d.ReadPower(ctx, "h1")
	require.NoError(t, err)
	assert.Equal(t, power.On, st)
	ipmi.err = &power.Error{Kind: power.KindUnreachable, Host: "h1"}
	for range 3 {
		now = now.Add(time.Second)
		_, _ = d.ReadPower(ctx, "h1")
	}
	assert.EqualValues(t, 6, ipmi.calls.Load(), "an unreachable BMC is asked every time: only auth failures back off")
}
