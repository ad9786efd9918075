package heartbeatbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
)

// fakeDaemon is the daemon's heartbeat endpoints, strict like the real
// ones: HTTP, and UDP on the same port number.
type fakeDaemon struct {
	secret  string          // the cluster secret: each host's key derives from it
	sealers sync.Map        // host → *heartbeat.Sealer
	known   map[string]bool // nil: every host is known
	url     string          // http://127.0.0.1:PORT
	udp     *net.UDPConn

	// answer, when set, makes the UDP answer to an accepted heartbeat:
	// the datagrams to send back (ok is the right one).
	answer func(hb heartbeat.Heartbeat, ok []byte) [][]byte

	mu       sync.Mutex
	got      map[string][]heartbeat.Heartbeat
	srcs     map[string]map[string]bool // host → UDP source addresses
	notSeal  int                        // datagrams not as SealHeartbeat makes them
	conns    atomic.Int64
	udpStray atomic.Int64 // datagrams that did not open
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != heartbeat.PathHeartbeat {
		http.Error(w, "wrong endpoint "+r.Method+" "+r.URL.Path, http.StatusNotFound)
		return
	}
	host := r.Header.Get(identity.HeaderHost)
	if host == "" || r.Header.Get("Authorization") != "Bearer "+identity.AgentCredential(f.secret, host) {
		http.Error(w, `{"error":"missing or wrong agent credential"}`, http.StatusUnauthorized)
		return
	}
	hb, err := heartbeat.Decode(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if hb.Host != host {
		http.Error(w, `{"error":"a host speaks only for itself"}`, http.StatusForbidden)
		return
	}
	f.mu.Lock()
	f.got[hb.Host] = append(f.got[hb.Host], hb)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(heartbeat.Ack{AdminState: 0, AssignmentRevision: 1, HeartbeatInterval: heartbeat.Duration(time.Second)})
}

// serveUDP answers like the daemon: nothing to a datagram that does not
// open with its token, a refusal to an unknown host or invalid heartbeat,
// else the Ack.
func (f *fakeDaemon) serveUDP() {
	buf := make([]byte, heartbeat.MaxDatagram+1)
	for {
		n, src, err := f.udp.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		host, err := heartbeat.DatagramHost(buf[:n])
		if err != nil {
			f.udpStray.Add(1)
			continue
		}
		sl := f.sealerOf(host)
		kind, p, err := sl.Open(buf[:n])
		if err != nil || kind != heartbeat.KindHeartbeat {
			f.udpStray.Add(1)
			continue
		}
		hb, err := heartbeat.DecodeHeartbeatPayload(p)
		if err != nil {
			f.reply(sl, src, heartbeat.Reply{Host: "?", Seq: 1, Refused: "invalid heartbeat: " + err.Error()})
			continue
		}
		r := heartbeat.ReplyTo(hb)
		if f.known != nil && !f.known[hb.Host] {
			r.Refused = fmt.Sprintf("host %q is not in the daemon's configuration", hb.Host)
			f.reply(sl, src, r)
			continue
		}
		want, _ := sl.SealHeartbeat(hb)
		f.mu.Lock()
		f.got[hb.Host] = append(f.got[hb.Host], hb)
		if f.srcs[hb.Host] == nil {
			f.srcs[hb.Host] = map[string]bool{}
		}
		f.srcs[hb.Host][src.String()] = true
		if !bytes.Equal(want, buf[:n]) {
			f.notSeal++
		}
		f.mu.Unlock()
		r.Ack = &heartbeat.Ack{AssignmentRevision: 1, HeartbeatInterval: heartbeat.Duration(time.Second)}
		ok, err := sl.SealReply(r)
		if err != nil {
			panic(err)
		}
		out := [][]byte{ok}
		if f.answer != nil {
			out = f.answer(hb, ok)
		}
		for _, d := range out {
			_, _ = f.udp.WriteToUDP(d, src)
		}
	}
}

// sealerOf seals and opens host's datagrams (its agent's key).
func (f *fakeDaemon) sealerOf(host string) *heartbeat.Sealer {
	if s, ok := f.sealers.Load(host); ok {
		return s.(*heartbeat.Sealer)
	}
	s, err := heartbeat.NewSealer(identity.AgentCredential(f.secret, host))
	if err != nil {
		panic(err)
	}
	f.sealers.Store(host, s)
	return s
}

func (f *fakeDaemon) reply(sl *heartbeat.Sealer, to *net.UDPAddr, r heartbeat.Reply) {
	d, err := sl.SealReply(r)
	if err != nil {
		panic(err)
	}
	_, _ = f.udp.WriteToUDP(d, to)
}

func (f *fakeDaemon) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got[host])
}

func (f *fakeDaemon) last(host string) heartbeat.Heartbeat {
	f.mu.Lock()
	defer f.mu.Unlock()
	hs := f.got[host]
	return hs[len(hs)-1]
}

// startFake serves HTTP and UDP on one port number of 127.0.0.1, as the
// daemon does by default; opts set answer or known before it serves.
func startFake(t testing.TB, secret string, opts ...func(*fakeDaemon)) *fakeDaemon {
	var err error
	f := &fakeDaemon{secret: secret, got: map[string][]heartbeat.Heartbeat{}, srcs: map[string]map[string]bool{}}
	for _, o := range opts {
		o(f)
	}
	var ln net.Listener
	for range 20 { // the UDP port's TCP twin may be taken: try another
		f.udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		ln, err = net.Listen("tcp", f.udp.LocalAddr().String())
		if err == nil {
			break
		}
		f.udp.Close()
	}
	require.NoError(t, err, "no port number free for both TCP and UDP")
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.serveUDP()
	}()
	t.Cleanup(func() {
		f.udp.Close()
		<-done
	})
	srv := httptest.NewUnstartedServer(f)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

func hostsN(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = HostName(i)
	}
	return out
}

func TestGeneratorHeartbeats(t *testing.T) {
	for _, tr := range []string{TransportUDP, TransportHTTP} {
		t.Run(tr, func(t *testing.T) {
			f := startFake(t, "s3cret")
			hosts := hostsN(20)
			// A generous reply timeout: a loaded test machine must not
			// turn a slow reply into an error here.
			g, err := NewGenerator(GenOptions{BaseURL: f.url, Secret: "s3cret", Hosts: hosts, Interval: 50 * time.Millisecond,
				Domains: 3, Transport: tr, ReplyTimeout: 5 * time.Second, Seed: 7})
			require.NoError(t, err)
			assert.Equal(t, tr, g.Transport())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			started := time.Now()
			g.Start(ctx)
			defer g.Close()

			require.Eventually(t, func() bool {
				for _, h := range hosts {
					if f.count(h) < 4 {
						return false
					}
				}
				return true
			}, 20*time.Second, 20*time.Millisecond, "every agent heartbeats repeatedly")

			f.mu.Lock()
			for _, h := range hosts {
				hbs := f.got[h]
				for i, hb := range hbs {
					assert.Equal(t, uint64(i+1), hb.Seq, "%s: seq counts up from 1 without gaps", h)
					assert.Equal(t, hbs[0].BootID, hb.BootID)
					assert.Len(t, hb.Domains, 3)
					assert.True(t, hb.Health.Libvirt.OK)
					assert.Empty(t, hb.Health.Fault())
				}
			}
			srcs := map[string]bool{}
			for _, h := range hosts {
				if tr == TransportUDP {
					assert.Len(t, f.srcs[h], 1, "%s: all its datagrams from one socket", h)
				}
				for a := range f.srcs[h] {
					srcs[a] = true
				}
			}
			assert.Zero(t, f.notSeal, "every datagram is what heartbeat.Sealer.SealHeartbeat makes")
			f.mu.Unlock()
			if tr == TransportUDP {
				assert.Len(t, srcs, len(hosts), "one UDP socket per agent")
				assert.Zero(t, f.conns.Load(), "no HTTP")
				assert.Zero(t, f.udpStray.Load())
			} else {
				assert.Equal(t, int64(len(hosts)), f.conns.Load(), "one keep-alive connection per agent")
				assert.Empty(t, srcs, "no UDP")
			}
			assert.Empty(t, g.Errors())

			w := g.Window(started, time.Now())
			assert.GreaterOrEqual(t, w.Acked, 4*len(hosts))
			assert.Len(t, w.Latency, w.Acked)
			assert.Len(t, w.Late, w.Acked)
			assert.Zero(t, g.Window(started.Add(-time.Hour), started).Acked, "nothing was sent before the start")

			stopped := hosts[:5]
			last, err := g.Stop(stopped)
			require.NoError(t, err)
			require.Len(t, last, 5)
			before := map[string]int{}
			for _, h := range hosts {
				before[h] = f.count(h)
			}
			for _, h := range stopped {
				assert.True(t, last[h].Equal(f.last(h).SentAt), "%s: last ack is the send time of the last heartbeat the daemon got", h)
			}
			// The others keep going; the stopped ones send nothing more.
			require.Eventually(t, func() bool {
				for _, h := range hosts[5:] {
					if f.count(h) < before[h]+3 {
						return false
					}
				}
				return true
			}, 20*time.Second, 20*time.Millisecond)
			for _, h := range stopped {
				assert.Equal(t, before[h], f.count(h), "%s heartbeated after Stop", h)
			}
			assert.GreaterOrEqual(t, g.Sent(), int64(w.Acked))
			assert.Zero(t, g.LateReplies())

			_, err = g.Stop([]string{"nope"})
			assert.ErrorContains(t, err, "no agent for host nope")
		})
	}
}

// freeUDPAddr is a loopback UDP address nothing listens on.
func freeUDPAddr(t testing.TB) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestGeneratorCountsFailuresByCause(t *testing.T) {
	other, err := heartbeat.NewSealer("another token")
	require.NoError(t, err)
	seal := func(s *heartbeat.Sealer, kind byte, payload string) []byte { return s.Seal(nil, kind, []byte(payload)) }
	answer := func(f func(hb heartbeat.Heartbeat, ok []byte) [][]byte) func(*fakeDaemon) {
		return func(d *fakeDaemon) { d.answer = f }
	}
	for _, tc := range []struct {
		name      string
		transport string
		token     string // the generator's cluster secret; the daemon's is "right"
		udpAddr   string // "" the fake's
		fake      []func(*fakeDaemon)
		cause     string
		// received: the daemon took the heartbeats (only the answer was wrong)
		received bool
	}{
		{name: "http wrong token", transport: TransportHTTP, token: "wrong", cause: "http 401"},
		{name: "udp wrong token: the daemon stays silent", token: "wrong", cause: "udp timeout"},
		{name: "udp nothing listens", token: "right", udpAddr: "free", cause: "udp port unreachable"},
		{name: "udp unknown host", token: "right", fake: []func(*fakeDaemon){func(d *fakeDaemon) { d.known = map[string]bool{} }},
			cause: `refused: host "HOST" is not in the daemon's configuration`},
		{name: "udp reply is not a datagram", token: "right", received: true, cause: "malformed reply",
			fake: []func(*fakeDaemon){answer(func(heartbeat.Heartbeat, []byte) [][]byte { return [][]byte{[]byte("pong")} })}},
		{name: "udp reply sealed with another token", token: "right", received: true, cause: "malformed reply",
			fake: []func(*fakeDaemon){answer(func(hb heartbeat.Heartbeat, _ []byte) [][]byte {
				b, _ := other.SealReply(heartbeat.Reply{Host: hb.Host, AgentStart: hb.AgentStart, Seq: hb.Seq,
					Ack: &heartbeat.Ack{HeartbeatInterval: heartbeat.Duration(time.Second)}})
				return [][]byte{b}
			})}},
		{name: "udp reply of kind heartbeat", token: "right", received: true, cause: "malformed reply",
			fake: []func(*fakeDaemon){func(d *fakeDaemon) {
				d.answer = func(hb heartbeat.Heartbeat, ok []byte) [][]byte {
					_, p, _ := d.sealerOf(hb.Host).Open(ok)
					return [][]byte{seal(d.sealerOf(hb.Host), heartbeat.KindHeartbeat, string(p))}
				}
			}}},
		{name: "udp reply with neither ack nor refusal", token: "right", received: true, cause: "malformed reply",
			fake: []func(*fakeDaemon){func(d *fakeDaemon) {
				d.answer = func(hb heartbeat.Heartbeat, _ []byte) [][]byte {
					b, _ := d.sealerOf(hb.Host).SealReply(heartbeat.ReplyTo(hb))
					return [][]byte{b}
				}
			}}},
		{name: "udp reply for another host", token: "right", received: true, cause: "misaddressed reply",
			fake: []func(*fakeDaemon){func(d *fakeDaemon) {
				d.answer = func(hb heartbeat.Heartbeat, _ []byte) [][]byte {
					r := heartbeat.ReplyTo(hb)
					r.Host += "x"
					r.Ack = &heartbeat.Ack{HeartbeatInterval: heartbeat.Duration(time.Second)}
					b, _ := d.sealerOf(hb.Host).SealReply(r)
					return [][]byte{b}
				}
			}}},
		{name: "udp ack without interval", token: "right", received: true, cause: "bad ack",
			fake: []func(*fakeDaemon){func(d *fakeDaemon) {
				d.answer = func(hb heartbeat.Heartbeat, _ []byte) [][]byte {
					r := heartbeat.ReplyTo(hb)
					r.Ack = &heartbeat.Ack{}
					b, _ := d.sealerOf(hb.Host).SealReply(r)
					return [][]byte{b}
				}
			}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFake(t, "right", tc.fake...)
			udpAddr := tc.udpAddr
			if udpAddr == "free" {
				udpAddr = freeUDPAddr(t)
			}
			// A slow reply on a loaded test machine must not count as a
			// timeout, except where silence is the point.
			replyTimeout := 5 * time.Second
			if tc.cause == "udp timeout" {
				replyTimeout = 20 * time.Millisecond
			}
			g, err := NewGenerator(GenOptions{BaseURL: f.url, Secret: tc.token, Hosts: hostsN(3), Interval: 40 * time.Millisecond,
				Transport: tc.transport, UDPAddr: udpAddr, ReplyTimeout: replyTimeout})
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			start := time.Now()
			g.Start(ctx)
			defer g.Close()
			require.Eventually(t, func() bool { return g.Errors()[tc.cause] >= 6 }, 20*time.Second, 10*time.Millisecond,
				"errors: %v", g.Errors())
			last, err := g.Stop(hostsN(3))
			require.NoError(t, err)
			for h, at := range last {
				assert.True(t, at.IsZero(), "%s: a failed heartbeat is not acknowledged", h)
			}
			assert.Zero(t, g.Window(start, time.Now()).Acked)
			errs := g.Errors()
			assert.Equal(t, []string{tc.cause}, sortedKeys(errs), "one cause for every failure")
			assert.Equal(t, g.Sent(), errs[tc.cause], "every heartbeat sent failed, once")
			if tc.received {
				assert.Positive(t, f.count(HostName(0)))
			} else {
				assert.Zero(t, f.count(HostName(0)))
			}
		})
	}
}

// TestGeneratorSkipsLateReplies: a reply that comes after its heartbeat
// timed out is no error and no ack for the heartbeat waiting now.
func TestGeneratorSkipsLateReplies(t *testing.T) {
	var held atomic.Pointer[[]byte]
	f := startFake(t, "tok", func(d *fakeDaemon) {
		d.answer = func(hb heartbeat.Heartbeat, ok []byte) [][]byte {
			switch hb.Seq {
			case 1:
				held.Store(&ok) // answered only with the next one
				return nil
			case 2:
				return [][]byte{*held.Load(), ok}
			}
			return [][]byte{ok}
		}
	})
	g, err := NewGenerator(GenOptions{BaseURL: f.url, Secret: "tok", Hosts: hostsN(1), Interval: 100 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	g.Start(ctx)
	defer g.Close()
	require.Eventually(t, func() bool { return f.count(HostName(0)) >= 4 }, 20*time.Second, 10*time.Millisecond)
	last, err := g.Stop(hostsN(1))
	require.NoError(t, err)
	assert.True(t, last[HostName(0)].Equal(f.last(HostName(0)).SentAt), "the beats after the timed-out one are acked")

	errs := g.Errors()
	assert.Equal(t, []string{"udp timeout"}, sortedKeys(errs), "the late reply is no error of its own")
	assert.GreaterOrEqual(t, errs["udp timeout"], int64(1), "seq 1 had no reply in time")
	assert.GreaterOrEqual(t, g.LateReplies(), int64(1), "seq 1's reply came while seq 2 waited")
	w := g.Window(start, time.Now())
	assert.Equal(t, g.Sent()-errs["udp timeout"], int64(w.Acked), "seq 1 is not acked by its late reply")
}

func TestGeneratorRedialsAfterServerCloses(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := heartbeat.Decode(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n.Add(1)
		w.Header().Set("Connection", "close") // every answer ends the connection
		_ = json.NewEncoder(w).Encode(heartbeat.Ack{HeartbeatInterval: heartbeat.Duration(time.Second)})
	}))
	defer srv.Close()
	g, err := NewGenerator(GenOptions{BaseURL: srv.URL, Secret: "t", Hosts: hostsN(1), Interval: 20 * time.Millisecond, Transport: TransportHTTP})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g.Start(ctx)
	defer g.Close()
	require.Eventually(t, func() bool { return n.Load() >= 5 }, 20*time.Second, 10*time.Millisecond)
	assert.Empty(t, g.Errors(), "a closed connection is reopened for the next heartbeat, without error")
}

func TestNewGeneratorRefuses(t *testing.T) {
	for _, tc := range []struct {
		o    GenOptions
		want string
	}{
		{GenOptions{BaseURL: "https://x:1", Secret: "t", Hosts: []string{"a"}, Interval: time.Second}, "not http://host:port"},
		{GenOptions{BaseURL: "http://x:1", Hosts: []string{"a"}, Interval: time.Second}, "secret, hosts and a positive interval"},
		{GenOptions{BaseURL: "http://x:1", Secret: "t", Interval: time.Second}, "secret, hosts and a positive interval"},
		{GenOptions{BaseURL: "http://x:1", Secret: "t", Hosts: []string{"a", "a"}, Interval: time.Second}, "host a listed twice"},
		{GenOptions{BaseURL: "http://x:1", Secret: "t", Hosts: []string{"a"}, Interval: time.Second, Transport: "tcp"},
			`transport "tcp": want udp or http`},
		{GenOptions{BaseURL: "http://x:1", Secret: "t", Hosts: []string{"a"}, Interval: time.Second, Domains: 400},
			"a heartbeat with 400 domains is a"},
	} {
		_, err := NewGenerator(tc.o)
		assert.ErrorContains(t, err, tc.want, fmt.Sprint(tc.o.Hosts))
	}
	_, err := NewGenerator(GenOptions{BaseURL: "http://x:1", Secret: "t", Hosts: []string{"a"}, Interval: time.Second,
		Domains: 200, Transport: TransportHTTP})
	assert.NoError(t, err, "HTTP takes heartbeats of any size the daemon does")
}
