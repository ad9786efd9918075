package libvirt

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/hypervisor"
)

// blackhole accepts TCP connections and never answers: what a libvirtd on a
// hung host looks like from outside.
func blackhole(t *testing.T) (addr string, accepted func() int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
}

func TestCallToSilentLibvirtdReturnsAtDeadline(t *testing.T) {
	addr, accepted := blackhole(t)
	c, err := New(Config{Host: "n1", Address: addr}, zerolog.Nop())
	require.NoError(t, err)
	defer c.Close()

	for i := 1; i <= 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		start := time.Now()
		err = c.Ping(ctx)
		cancel()
		assert.ErrorIs(t, err, hypervisor.ErrTimeout)
		assert.Contains(t, err.Error(), "host n1")
		assert.Less(t, time.Since(start), 2*time.Second, "the deadline must bound the call")
		assert.Equal(t, i, accepted(), "a timed-out connection is dropped and the next call dials again")
	}
}

func TestCallWithoutDeadlineGetsCallTimeout(t *testing.T) {
	addr, _ := blackhole(t)
	c, err := New(Config{Host: "n1", Address: addr, CallTimeout: 100 * time.Millisecond}, zerolog.Nop())
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Domains(context.Background(), false)
	assert.ErrorIs(t, err, hypervisor.ErrTimeout)
	assert.Less(t, time.Since(start), 2*time.Second)
}

func TestClosedPortIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	c, err := New(Config{Host: "n1", Address: addr}, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = c.Start(ctx, "6a1f7c4e-3b7f-4a0e-9d55-5e0c6b6d7a11")
	assert.ErrorIs(t, err, hypervisor.ErrUnreachable)
	assert.Contains(t, err.Error(), "libvirt: connect")
}

func TestCancelledCallerIsNotATimeout(t *testing.T) {
	addr, _ := blackhole(t)
	c, err := New(Config{Host: "n1", Address: addr}, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	err = c.Ping(ctx)
	require.Error(t, err)
	assert.NotErrorIs(t, err, hypervisor.ErrTimeout)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestEventsEndWithContextEvenWhenHostIsSilent(t *testing.T) {
	addr, accepted := blackhole(t)
	c, err := New(Config{Host: "n1", Address: addr, CallTimeout: 50 * time.Millisecond}, zerolog.Nop())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ch := c.Events(ctx)
	require.Eventually(t, func() bool { return accepted() >= 2 }, 5*time.Second, 10*time.Millisecond, "keeps reconnecting")
	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(2 * time.Second):
		t.Fatal("event channel not closed after cancel")
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Config{Address: "127.0.0.1:16509"}, zerolog.Nop())
	assert.ErrorContains(t, err, "Host is required")
	_, err = New(Config{Host: "n1", Address: "nope"}, zerolog.Nop())
	assert.ErrorContains(t, err, `address "nope"`)
	_, err = New(Config{Host: "n1", Address: "unix:"}, zerolog.Nop())
	assert.ErrorContains(t, err, "empty socket path")
	c, err := New(Config{Host: "n1", Address: "127.0.0.1:16509"}, zerolog.Nop())
	require.NoError(t, err)
	assert.Equal(t, "qemu:///system", c.cfg.URI)
	_, err = New(Config{Host: "n1", Address: "unix:/run/libvirt/libvirt-sock"}, zerolog.Nop())
	assert.NoError(t, err)
}

func TestUUIDRoundTrip(t *testing.T) {
	const s = "6a1f7c4e-3b7f-4a0e-9d55-5e0c6b6d7a11"
	u, err := ParseUUID(s)
	require.NoError(t, err)
	assert.Equal(t, s, FormatUUID(u))
	u2, err := ParseUUID("6a1f7c4e3b7f4a0e9d555e0c6b6d7a11")
	require.NoError(t, err)
	assert.Equal(t, u, u2)
	for _, bad := range []string{"", "xyz", "6a1f7c4e-3b7f-4a0e-9d55", "6a1f7c4e-3b7f-4a0e-9d55-5e0c6b6d7a1122"} {
		_, err := ParseUUID(bad)
		assert.Error(t, err, bad)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want hypervisor.Kind
	}{
		{golibvirt.Error{Code: uint32(golibvirt.ErrNoDomain), Message: "Domain not found"}, hypervisor.KindNotFound},
		{golibvirt.Error{Code: uint32(golibvirt.ErrXMLError), Message: "XML error"}, hypervisor.KindInvalid},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationInvalid), Message: "domain is not running"}, hypervisor.KindInvalid},
		{golibvirt.Error{Code: uint32(golibvirt.ErrInternalError), Message: `process exited while connecting to monitor: Failed to get "write" lock`}, hypervisor.KindConflict},
		{golibvirt.Error{Code: uint32(golibvirt.ErrOperationFailed), Message: "domain 'vm1' already exists with uuid"}, hypervisor.KindConflict},
		{golibvirt.Error{Code: uint32(golibvirt.ErrInternalError), Message: "something else"}, hypervisor.KindUnknown},
		{errors.New("plain"), hypervisor.KindUnknown},
	} {
		assert.Equal(t, tc.want, classify(tc.err), tc.err.Error())
	}
}

func TestMapState(t *testing.T) {
	assert.Equal(t, hypervisor.StateRunning, mapState(int32(golibvirt.DomainRunning)))
	assert.Equal(t, hypervisor.StateShutoff, mapState(int32(golibvirt.DomainShutoff)))
	assert.Equal(t, hypervisor.StatePaused, mapState(int32(golibvirt.DomainPaused)))
	assert.Equal(t, hypervisor.StateCrashed, mapState(int32(golibvirt.DomainCrashed)))
	assert.Equal(t, hypervisor.StateOther, mapState(int32(golibvirt.DomainBlocked)))
}

func TestStopReason(t *testing.T) {
	assert.Equal(t, "crashed", stopReason(int32(golibvirt.DomainShutoff), int32(golibvirt.DomainShutoffCrashed)))
	assert.Equal(t, "destroyed", stopReason(int32(golibvirt.DomainShutoff), int32(golibvirt.DomainShutoffDestroyed)))
	assert.Equal(t, "reason-42", stopReason(int32(golibvirt.DomainShutoff), 42))
	assert.Equal(t, "", stopReason(int32(golibvirt.DomainRunning), int32(golibvirt.DomainShutoffCrashed)), "only shut-off domains have a stop reason")
}

func TestOnlyASchemaLoadFailureIsDefinedAgain(t *testing.T) {
	assert.True(t, schemaLoadFailed(errors.New("internal error: Unable to parse RNG /usr/share/libvirt/schemas/domain.rng: Error type 'unsignedInt' is not exported by type library")))
	assert.False(t, schemaLoadFailed(errors.New("XML error: Invalid value for attribute 'type' in element 'disk'")),
		"an XML the schema refuses is the caller's error, not retried")
}
