package probe

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/e2e/nsenter"
)

// The namespace tests build, per run:
//
//	netns A (prober)                 netns R (router + host)
//	  va 10.98.0.1/24  <-- veth -->    vr 10.98.0.2/24 (answers; TCP listener)
//	  route 10.97.0.0/24 via R              10.98.0.3/24 (nftables drops input)
//	  no route to 10.200.0.0/16        ip_forward=1, no route to 10.97.0.0/24
//	                                   (so R reports "net unreachable")
//
// and re-run this test binary inside A (`ip netns exec A`), so every socket
// the Prober opens, on whatever thread, lives in A.

const (
	childEnv  = "CHIME_PROBE_NETNS_CHILD"
	listenEnv = "CHIME_PROBE_NETNS_LISTEN"
)

func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

func run(t *testing.T, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s: %s", strings.Join(args, " "), out)
}

func addNetns(t *testing.T, name string) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace here: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
}

func TestNetns(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("parent only")
	}
	needNetns(t)
	a := fmt.Sprintf("chprobe-a-%d", os.Getpid())
	r := fmt.Sprintf("chprobe-r-%d", os.Getpid())
	addNetns(t, a)
	addNetns(t, r)
	run(t, "", "ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vr", "netns", r)
	for _, c := range [][]string{
		{"ip", "-n", a, "link", "set", "lo", "up"},
		{"ip", "-n", a, "link", "set", "va", "up"},
		{"ip", "-n", a, "addr", "add", "10.98.0.1/24", "dev", "va"},
		{"ip", "-n", a, "route", "add", "10.97.0.0/24", "via", "10.98.0.2"},
		{"ip", "-n", r, "link", "set", "lo", "up"},
		{"ip", "-n", r, "link", "set", "vr", "up"},
		{"ip", "-n", r, "addr", "add", "10.98.0.2/24", "dev", "vr"},
		{"ip", "-n", r, "addr", "add", "10.98.0.3/24", "dev", "vr"},
		{"ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"},
	} {
		run(t, "", c...)
	}
	run(t, `table inet chprobe {
	chain in {
		type filter hook input priority 0; policy accept;
		ip daddr 10.98.0.3 drop
	}
}
`, "ip", "netns", "exec", r, "nft", "-f", "-")

	// A listener in R, served from here: the socket stays in R.
	var ln net.Listener
	require.NoError(t, nsenter.Do(r, func() error {
		var err error
		ln, err = net.Listen("tcp", "10.98.0.2:0")
		return err
	}))
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

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", a, os.Args[0],
		"-test.run", "^TestNetnsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+a, listenEnv+"="+ln.Addr().String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("child in netns %s:\n%s", a, out.String())
	require.NoError(t, err)
	require.Contains(t, out.String(), "--- PASS: TestNetnsChild", "the child ran its cases")
}

// TestNetnsChild runs inside netns A, started by TestNetns.
func TestNetnsChild(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("started by TestNetns inside its namespace")
	}
	listen := os.Getenv(listenEnv)

	cases := func(t *testing.T, p *Prober, raw bool) {
		t.Run("listener, refused port and echo answer", func(t *testing.T) {
			res := p.Round(within(t, 2*time.Second), []Target{
				{Kind: KindTCP, Addr: listen},
				{Kind: KindTCP, Addr: "10.98.0.2:1"},
				{Kind: KindICMP, Addr: "10.98.0.2"},
			})
			for _, a := range res.Answers {
				assert.True(t, a.Answered, "%s: %s", a.Target, a.Err)
				assert.Positive(t, a.RTT)
			}
		})
		t.Run("no route: silent at once", func(t *testing.T) {
			start := time.Now()
			res := p.Round(within(t, 2*time.Second), []Target{
				{Kind: KindTCP, Addr: "10.200.0.1:7481"},
				{Kind: KindICMP, Addr: "10.200.0.1"},
			})
			assert.Less(t, time.Since(start), 500*time.Millisecond, "no route is known without waiting")
			for _, a := range res.Answers {
				assert.False(t, a.Answered)
				assert.False(t, a.Unsupported, "%s: %s", a.Target, a.Err)
				assert.Contains(t, a.Err, "network unreachable")
			}
			assert.True(t, res.Silent())
		})
		t.Run("dropped by nftables: silent at the deadline", func(t *testing.T) {
			const deadline = 300 * time.Millisecond
			start := time.Now()
			res := p.Round(within(t, deadline), []Target{
				{Kind: KindTCP, Addr: "10.98.0.3:7481"},
				{Kind: KindTCP, Addr: "10.98.0.3:16509"},
				{Kind: KindICMP, Addr: "10.98.0.3"},
			})
			took := time.Since(start)
			assert.GreaterOrEqual(t, took, deadline-20*time.Millisecond)
			assert.Less(t, took, deadline+slack)
			for _, a := range res.Answers {
				assert.False(t, a.Answered)
				assert.False(t, a.Unsupported)
				assert.Contains(t, a.Err, "no answer within 300ms", "%s", a.Target)
			}
			assert.True(t, res.Silent())
		})
		t.Run("router reports unreachable", func(t *testing.T) {
			res := p.Round(within(t, time.Second), []Target{
				{Kind: KindTCP, Addr: "10.97.0.1:7481"},
				{Kind: KindICMP, Addr: "10.97.0.1"},
			})
			tcp, echo := res.Answers[0], res.Answers[1]
			assert.False(t, tcp.Answered)
			assert.False(t, tcp.Unsupported)
			assert.Contains(t, tcp.Err, "unreachable")
			assert.False(t, echo.Answered)
			assert.False(t, echo.Unsupported)
			if raw {
				assert.Contains(t, echo.Err, "destination unreachable")
				assert.Contains(t, echo.Err, "reported by 10.98.0.2")
			} else {
				// ping sockets do not deliver ICMP errors: the probe waits
				assert.Contains(t, echo.Err, "no answer within")
			}
			assert.True(t, res.Silent())
		})
		t.Run("one answer among the silent", func(t *testing.T) {
			res := p.Round(within(t, 300*time.Millisecond), []Target{
				{Kind: KindICMP, Addr: "10.98.0.3"},
				{Kind: KindTCP, Addr: "10.200.0.1:7481"},
				{Kind: KindTCP, Addr: "10.98.0.2:1"},
			})
			assert.True(t, res.Answered)
			assert.False(t, res.Silent())
		})
	}

	var rawLog syncBuffer
	t.Run("raw socket", func(t *testing.T) {
		require.NoError(t, os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("1 0"), 0))
		p := New(Options{Log: zerolog.New(&rawLog)})
		cases(t, p, true)
		assert.Contains(t, rawLog.String(), `"mode":"raw socket"`)
	})
	var pingLog syncBuffer
	t.Run("ping socket", func(t *testing.T) {
		require.NoError(t, os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0))
		p := New(Options{Log: zerolog.New(&pingLog)})
		cases(t, p, false)
		assert.Contains(t, pingLog.String(), `"mode":"unprivileged ping socket"`)
	})
}
