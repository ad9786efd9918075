package probe

import (
	"context"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slack is how long after its deadline Round may return: scheduling under
// -race on a loaded 2-core machine, never a probe still running.
const slack = 250 * time.Millisecond

func newTestProber(t *testing.T) *Prober {
	t.Helper()
	return New(Options{Log: zerolog.New(zerolog.NewTestWriter(t))})
}

func within(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestTCPListenerAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	res := newTestProber(t).Round(within(t, 2*time.Second), []Target{{Kind: KindTCP, Addr: ln.Addr().String()}})
	require.Len(t, res.Answers, 1)
	a := res.Answers[0]
	assert.True(t, a.Answered, "err: %s", a.Err)
	assert.False(t, a.Unsupported)
	assert.Empty(t, a.Err)
	assert.Positive(t, a.RTT)
	assert.True(t, res.Answered)
	assert.False(t, res.Silent())
}

func TestTCPRefusedAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens now: the kernel sends RST

	res := newTestProber(t).Round(within(t, 2*time.Second), []Target{{Kind: KindTCP, Addr: addr}})
	a := res.Answers[0]
	assert.True(t, a.Answered, "a refused connect proves the kernel is alive; err: %s", a.Err)
	assert.Empty(t, a.Err)
	assert.Positive(t, a.RTT)
	assert.True(t, res.Answered)
}

// blackhole returns a loopback address whose SYNs are dropped: a listener
// with backlog 0 that never accepts, its accept queue already full.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { syscall.Close(fd) })
	require.NoError(t, syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, syscall.Listen(fd, 0))
	sa, err := syscall.Getsockname(fd)
	require.NoError(t, err)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; ; i++ {
		require.Less(t, i, 8, "accept queue of %s never filled", addr)
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			var ne net.Error
			require.ErrorAs(t, err, &ne)
			require.True(t, ne.Timeout(), "filling the accept queue: %v", err)
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
}

func TestTCPDroppedSYNIsSilentAtTheDeadline(t *testing.T) {
	addr := blackhole(t)
	const deadline = 300 * time.Millisecond
	start := time.Now()
	res := newTestProber(t).Round(within(t, deadline), []Target{{Kind: KindTCP, Addr: addr}})
	took := time.Since(start)

	a := res.Answers[0]
	assert.False(t, a.Answered)
	assert.False(t, a.Unsupported)
	assert.Contains(t, a.Err, "no answer within")
	assert.Zero(t, a.RTT)
	assert.True(t, res.Silent())
	assert.GreaterOrEqual(t, took, deadline-20*time.Millisecond, "returned before the deadline without an answer")
	assert.Less(t, took, deadline+slack)
}

func TestRoundAnyAnswerMeansAnswered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	dead := blackhole(t)

	res := newTestProber(t).Round(within(t, 300*time.Millisecond), []Target{
		{Kind: KindTCP, Addr: dead},
		{Kind: KindTCP, Addr: ln.Addr().String()}, // backlog holds the SYN-ACKed connect
	})
	require.Len(t, res.Answers, 2)
	assert.Equal(t, dead, res.Answers[0].Target.Addr, "answers keep the order of targets")
	assert.False(t, res.Answers[0].Answered)
	assert.True(t, res.Answers[1].Answered)
	assert.True(t, res.Answered)
	assert.False(t, res.Silent())
}

func TestRoundCancelIsNotSilence(t *testing.T) {
	dead := blackhole(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	time.AfterFunc(50*time.Millisecond, cancel)

	start := time.Now()
	res := newTestProber(t).Round(ctx, []Target{{Kind: KindTCP, Addr: dead}})
	assert.Less(t, time.Since(start), time.Second, "Round must return when ctx is cancelled")
	a := res.Answers[0]
	assert.False(t, a.Answered)
	assert.True(t, a.Unsupported, "a cancelled probe proves nothing")
	assert.Contains(t, a.Err, "cancelled")
	assert.False(t, res.Silent())
}

func TestRoundWithoutDeadlineUsesDefault(t *testing.T) {
	dead := blackhole(t)
	p := New(Options{DefaultTimeout: 200 * time.Millisecond})
	start := time.Now()
	res := p.Round(context.Background(), []Target{{Kind: KindTCP, Addr: dead}})
	took := time.Since(start)
	assert.Contains(t, res.Answers[0].Err, "no answer within 200ms")
	assert.GreaterOrEqual(t, took, 180*time.Millisecond)
	assert.Less(t, took, 200*time.Millisecond+slack)
}

func TestRoundAtAndRTTUseTheClock(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	base := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	calls := 0
	p := New(Options{Clock: func() time.Time {
		calls++ // Round is the only caller before the probe goroutine starts
		return base.Add(time.Duration(calls) * time.Second)
	}})
	res := p.Round(within(t, 2*time.Second), []Target{{Kind: KindTCP, Addr: ln.Addr().String()}})
	assert.Equal(t, base.Add(time.Second), res.At)
	assert.Equal(t, time.Second, res.Answers[0].RTT, "RTT is the difference of two clock reads")
}

func TestInvalidTargetsAreUnsupported(t *testing.T) {
	for _, tc := range []struct {
		target Target
		want   string
	}{
		{Target{Kind: "udp", Addr: "127.0.0.1:1"}, `kind "udp" is not tcp or icmp`},
		{Target{Kind: KindTCP, Addr: "127.0.0.1"}, `tcp wants host:port, got "127.0.0.1"`},
		{Target{Kind: KindTCP, Addr: ":80"}, `tcp wants host:port, got ":80"`},
		{Target{Kind: KindTCP, Addr: "127.0.0.1:"}, `tcp wants host:port`},
		{Target{Kind: KindICMP, Addr: "127.0.0.1:80"}, `icmp wants a host, not host:port "127.0.0.1:80"`},
		{Target{Kind: KindICMP, Addr: ""}, `empty icmp address`},
	} {
		t.Run(tc.target.String(), func(t *testing.T) {
			res := newTestProber(t).Round(within(t, time.Second), []Target{tc.target})
			a := res.Answers[0]
			assert.True(t, a.Unsupported)
			assert.False(t, a.Answered)
			assert.Contains(t, a.Err, tc.want)
			assert.Equal(t, tc.target, a.Target)
			assert.False(t, res.Silent())
		})
	}
}

func TestEmptyRound(t *testing.T) {
	res := newTestProber(t).Round(within(t, time.Second), nil)
	assert.Empty(t, res.Answers)
	assert.False(t, res.Answered)
	assert.False(t, res.Silent(), "no targets is no evidence")
	assert.False(t, res.At.IsZero())
}

func TestICMPLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1", "127.0.0.2", "::1"} {
		t.Run(addr, func(t *testing.T) {
			res := newTestProber(t).Round(within(t, 2*time.Second), []Target{{Kind: KindICMP, Addr: addr}})
			a := res.Answers[0]
			if a.Unsupported {
				t.Logf("ICMP unsupported here: %s", a.Err)
				assert.NotEmpty(t, a.Err)
				assert.False(t, res.Silent())
				return
			}
			if addr == "::1" && strings.Contains(a.Err, "unreachable") {
				t.Skipf("no IPv6 loopback here: %s", a.Err)
			}
			assert.True(t, a.Answered, "err: %s", a.Err)
			assert.Empty(t, a.Err)
			assert.Positive(t, a.RTT)
		})
	}
}
