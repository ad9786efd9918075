package heartbeatbench

import (
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
)

// fakeDaemon is the daemon's heartbeat endpoint, strict like the real one.
type fakeDaemon struct {
	token string
	mu    sync.Mutex
	got   map[string][]heartbeat.Heartbeat
	conns atomic.Int64
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != heartbeat.PathHeartbeat {
		http.Error(w, "wrong endpoint "+r.Method+" "+r.URL.Path, http.StatusNotFound)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, `{"error":"missing or wrong agent token"}`, http.StatusUnauthorized)
		return
	}
	hb, err := heartbeat.Decode(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.got[hb.Host] = append(f.got[hb.Host], hb)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(heartbeat.Ack{AdminState: 0, AssignmentRevision: 1, HeartbeatInterval: heartbeat.Duration(time.Second)})
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

func startFake(t *testing.T, token string) (*fakeDaemon, string) {
	f := &fakeDaemon{token: token, got: map[string][]heartbeat.Heartbeat{}}
	srv := httptest.NewUnstartedServer(f)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return f, srv.URL
}

func hostsN(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = HostName(i)
	}
	return out
}

func TestGeneratorHeartbeats(t *testing.T) {
	f, url := startFake(t, "s3cret")
	hosts := hostsN(20)
	g, err := NewGenerator(GenOptions{BaseURL: url, Token: "s3cret", Hosts: hosts, Interval: 50 * time.Millisecond, Domains: 3, Seed: 7})
	require.NoError(t, err)
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
	f.mu.Unlock()
	assert.Equal(t, int64(len(hosts)), f.conns.Load(), "one keep-alive connection per agent")
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

	_, err = g.Stop([]string{"nope"})
	assert.ErrorContains(t, err, "no agent for host nope")
}

func TestGeneratorCountsRefusals(t *testing.T) {
	f, url := startFake(t, "right")
	g, err := NewGenerator(GenOptions{BaseURL: url, Token: "wrong", Hosts: hostsN(3), Interval: 20 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	g.Start(ctx)
	require.Eventually(t, func() bool { return g.Errors()["http 401"] >= 6 }, 20*time.Second, 10*time.Millisecond)
	last, err := g.Stop(hostsN(3))
	require.NoError(t, err)
	for h, at := range last {
		assert.True(t, at.IsZero(), "%s: a refused heartbeat is not acknowledged", h)
	}
	assert.Zero(t, g.Window(start, time.Now()).Acked)
	assert.Zero(t, f.count(HostName(0)))
	g.Close()
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
	g, err := NewGenerator(GenOptions{BaseURL: srv.URL, Token: "t", Hosts: hostsN(1), Interval: 20 * time.Millisecond})
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
		{GenOptions{BaseURL: "https://x:1", Token: "t", Hosts: []string{"a"}, Interval: time.Second}, "not http://host:port"},
		{GenOptions{BaseURL: "http://x:1", Hosts: []string{"a"}, Interval: time.Second}, "token, hosts and a positive interval"},
		{GenOptions{BaseURL: "http://x:1", Token: "t", Interval: time.Second}, "token, hosts and a positive interval"},
		{GenOptions{BaseURL: "http://x:1", Token: "t", Hosts: []string{"a", "a"}, Interval: time.Second}, "host a listed twice"},
	} {
		_, err := NewGenerator(tc.o)
		assert.ErrorContains(t, err, tc.want, fmt.Sprint(tc.o.Hosts))
	}
}
