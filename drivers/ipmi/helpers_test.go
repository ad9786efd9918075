package ipmi

import (
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/clock"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/hal/mock"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/transport/udp"
	"github.com/bougou/go-ipmi/pkg/types"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
)

const (
	testUser     = "admin"
	testPassword = "Sekr1t-pw-4711"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger() (zerolog.Logger, *syncBuffer) {
	sb := &syncBuffer{}
	return zerolog.New(sb).Level(zerolog.DebugLevel), sb
}

// recChassis records chassis actions of the embedded BMC and can refuse them.
type recChassis struct {
	*mock.Chassis
	mu      sync.Mutex
	on      bool
	actions []string
	refuse  error // returned by every action when set
}

func (c *recChassis) record(a string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.actions = append(c.actions, a)
	return c.refuse
}

func (c *recChassis) PowerState(context.Context) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.on, nil
}

func (c *recChassis) SetPower(_ context.Context, on bool) error {
	a := "off"
	if on {
		a = "on"
	}
	if err := c.record(a); err != nil {
		return err
	}
	c.mu.Lock()
	c.on = on
	c.mu.Unlock()
	return nil
}

func (c *recChassis) PowerCycle(context.Context) error { return c.record("cycle") }
func (c *recChassis) WarmReset(context.Context) error  { return c.record("soft") }
func (c *recChassis) ColdReset(context.Context) error  { return c.record("reset") }

func (c *recChassis) snapshot() (bool, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.on, append([]string(nil), c.actions...)
}

type recHAL struct {
	*mock.HAL
	ch *recChassis
}

func (h recHAL) Chassis() hal.ChassisHAL { return h.ch }

// startEmbeddedBMC runs go-ipmi's reference BMC on 127.0.0.1 with one user
// of the given maximum privilege, and returns its port and chassis. suites,
// when given, are the only cipher suites it offers.
func startEmbeddedBMC(t *testing.T, maxPriv bmc.PrivilegeLevel, suites ...types.CipherSuiteID) (int, *recChassis) {
	t.Helper()
	ch := &recChassis{Chassis: &mock.Chassis{}, on: true}
	opts := []bmc.Option{bmc.WithClock(clock.Real)}
	if len(suites) > 0 {
		opts = append(opts, bmc.WithCipherSuites(suites))
	}
	b := bmc.New(bmc.DeviceInfo{IPMIVersion: 0x20}, [16]byte{1, 2, 3}, recHAL{HAL: mock.New(), ch: ch}, opts...)
	u, err := b.Users.Add(2, testUser)
	require.NoError(t, err)
	u.SetPassword([]byte(testPassword))
	u.Enabled = true
	u.ChannelAccess[1] = bmc.UserChannelAccess{MaxPrivilege: maxPriv, Enabled: true}

	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	port := conn.LocalAddr().(*net.UDPAddr).Port
	srv := server.NewServer(b, udp.Wrap(conn, udp.WithReadTimeout(100*time.Millisecond)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		<-done
	})
	return port, ch
}

// blackhole is a UDP port on 127.0.0.1 that reads and drops everything.
func blackhole(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); errors.Is(err, net.ErrClosed) {
				return
			}
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// closedPort is a UDP port on 127.0.0.1 with nothing listening: the kernel
// answers with ICMP port unreachable.
func closedPort(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	port := pc.LocalAddr().(*net.UDPAddr).Port
	require.NoError(t, pc.Close())
	return port
}

func newClient(t *testing.T, port int, mod func(*Config)) (*Client, *syncBuffer) {
	t.Helper()
	cfg := Config{Host: "node1", Addr: "127.0.0.1", Port: port, Username: testUser, Password: testPassword,
		Timeout: 300 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	log, buf := testLogger()
	c, err := New(cfg, log)
	require.NoError(t, err)
	t.Cleanup(func() { waitSessions(t, c, 5*time.Second) })
	return c, buf
}

// waitSessions fails the test if session goroutines outlive d.
func waitSessions(t *testing.T, c *Client, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { c.sessions.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Errorf("session goroutines still running after %s", d)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func numGoroutines() int { return runtime.NumGoroutine() }
