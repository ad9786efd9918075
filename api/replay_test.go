package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// The attacks of issue 13 items 2 and 3, each performed against a daemon
// on real loopback sockets (HTTP and UDP) over a real store.

const maxSkew = 30 * time.Second

// offsetClock is the wall clock moved by Advance: real enough for a real
// agent's sent_at, movable for the daemon's silence.
type offsetClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *offsetClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

type alertLog struct {
	mu sync.Mutex
	as []detector.Alert
}

func (l *alertLog) Alert(_ context.Context, a detector.Alert) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.as = append(l.as, a)
}

func (l *alertLog) kinds() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, a := range l.as {
		out = append(out, a.Host+" "+a.Kind)
	}
	return out
}

// replayRig is a daemon (real detector, daemon, store and API) listening
// on loopback HTTP and UDP.
type replayRig struct {
	t      *testing.T
	clk    *offsetClock
	st     *store.Store
	eng    *detector.Engine
	alerts *alertLog
	srv    *httptest.Server
	udp    *net.UDPAddr
	sealer *heartbeat.Sealer
	stop   func()
}

func newReplayRig(t *testing.T, path string, clk *offsetClock) *replayRig {
	t.Helper()
	st, err := store.Open(path, store.Options{})
	require.NoError(t, err)
	memos, err := st.HostMemos()
	require.NoError(t, err)
	r := &replayRig{t: t, clk: clk, st: st, alerts: &alertLog{}}
	r.eng, err = detector.NewEngine(detector.EngineConfig{
		Hosts: []detector.HostConfig{{Name: "h1", Rack: "r1"}, {Name: "h2", Rack: "r1"}},
		Monitor: detector.MonitorConfig{Thresholds: detector.Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second},
			RecoveryHeartbeats: 3, Settle: time.Second, MaxClockSkew: maxSkew},
		Storm: detector.StormGuard{MaxFraction: 0.5, Window: time.Minute},
	}, detector.Deps{Clock: clk, Prober: quiet{}, Power: quiet{}, Readiness: quiet{}, History: st, Memos: st, Alerter: r.alerts, Log: zerolog.Nop()}, memos)
	require.NoError(t, err)
	d, err := daemon.New(st, r.eng, func() time.Duration { return 20 * time.Millisecond }, clk.Now, zerolog.Nop())
	require.NoError(t, err)
	s, err := New(d, Tokens{Agents: testRing, API: apiTok}, prometheus.NewRegistry(), zerolog.Nop())
	require.NoError(t, err)
	r.srv = httptest.NewServer(s)
	r.sealer, err = heartbeat.NewSealer(credOf("h1"))
	require.NoError(t, err)
	conn, err := ListenHeartbeats("127.0.0.1:0")
	require.NoError(t, err)
	r.udp = conn.LocalAddr().(*net.UDPAddr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeHeartbeats(ctx, conn) }()
	var once sync.Once
	// stop is the daemon's shutdown: intake closed, memos flushed (what
	// Engine.Run does when its context ends), store closed.
	r.stop = func() {
		once.Do(func() {
			r.srv.Close()
			cancel()
			assert.NoError(t, <-done)
			r.eng.Flush()
			assert.NoError(t, st.Close())
		})
	}
	t.Cleanup(r.stop)
	return r
}

// beatHTTP posts hb with the agent token; it returns the status and the
// ack, or the refusal's text.
func (r *replayRig) beatHTTP(hb heartbeat.Heartbeat) (int, heartbeat.Ack, string) {
	r.t.Helper()
	b, err := json.Marshal(hb)
	require.NoError(r.t, err)
	req, err := http.NewRequest(http.MethodPost, r.srv.URL+heartbeat.PathHeartbeat, bytes.NewReader(b))
	require.NoError(r.t, err)
	setAuth(req, agentTok)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(r.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(r.t, err)
	if resp.StatusCode != http.StatusOK {
		var eb ErrorBody
		require.NoError(r.t, json.Unmarshal(body, &eb), "%s", body)
		return resp.StatusCode, heartbeat.Ack{}, eb.Error
	}
	var ack heartbeat.Ack
	require.NoError(r.t, json.Unmarshal(body, &ack))
	return resp.StatusCode, ack, ""
}

// capture seals hb as the agent would send it: what an attacker on the
// path records and replays byte for byte.
func (r *replayRig) capture(hb heartbeat.Heartbeat) []byte {
	r.t.Helper()
	b, err := r.sealer.SealHeartbeat(hb)
	require.NoError(r.t, err)
	return b
}

// send delivers a datagram to the daemon's UDP port and returns its reply.
func (r *replayRig) send(dgram []byte) heartbeat.Reply {
	r.t.Helper()
	c, err := net.DialUDP("udp", nil, r.udp)
	require.NoError(r.t, err)
	defer c.Close()
	_, err = c.Write(dgram)
	require.NoError(r.t, err)
	require.NoError(r.t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, err := c.Read(buf)
	require.NoError(r.t, err)
	_, payload, err := r.sealer.Open(buf[:n])
	require.NoError(r.t, err)
	rep, err := heartbeat.DecodeReply(payload)
	require.NoError(r.t, err)
	return rep
}

func (r *replayRig) status(host string) detector.HostStatus {
	r.t.Helper()
	hs, ok := r.eng.Host(host)
	require.True(r.t, ok)
	return hs
}

func beatAt(host string, start time.Time, seq uint64, sent time.Time) heartbeat.Heartbeat {
	return heartbeat.Heartbeat{Host: host, BootID: "boot-1", Seq: seq, AgentStart: start, SentAt: sent,
		Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}}
}

// Two captured datagrams of two agent processes (the agent restarted),
// replayed in turn after the host died, kept it healthy: the older
// agent_start is now stale, the newer one a duplicate.
func TestAttackReplayTwoAgentStartsRefused(t *testing.T) {
	clk := &offsetClock{}
	r := newReplayRig(t, filepath.Join(t.TempDir(), "s.db"), clk)
	now := clk.Now()
	startA, startB := now.Add(-time.Minute), now.Add(-2*time.Second)
	a2 := r.capture(beatAt("h1", startA, 2, now.Add(-time.Second)))
	b1 := r.capture(beatAt("h1", startB, 1, now))
	for _, d := range [][]byte{r.capture(beatAt("h1", startA, 1, now.Add(-2*time.Second))), a2, b1} {
		rep := r.send(d)
		require.NotNil(t, rep.Ack, "the agent's own beats: %+v", rep)
		require.True(t, rep.Ack.Accepted(), "%+v", rep.Ack)
	}
	last := r.status("h1").LastHeartbeat

	// The host dies; the attacker replays the two captured beats in turn.
	for range 3 {
		clk.Advance(time.Second)
		rep := r.send(a2)
		require.NotNil(t, rep.Ack, "%+v", rep)
		assert.Equal(t, heartbeat.OutcomeStale, rep.Ack.Outcome)
		assert.Contains(t, rep.Ack.OutcomeDetail, "older than the newest taken")
		rep = r.send(b1)
		require.NotNil(t, rep.Ack, "%+v", rep)
		assert.Equal(t, heartbeat.OutcomeDuplicate, rep.Ack.Outcome)
	}
	assert.True(t, last.Equal(r.status("h1").LastHeartbeat), "no replay counted as a heartbeat")
	assert.Contains(t, r.alerts.kinds(), "h1 "+detector.AlertHeartbeatReplayed, "the replay is alerted")
	assert.Contains(t, r.status("h1").LastRefused, "stale: agent_start")
}

// A beat captured before a daemon restart and replayed after it: the
// persisted mark makes it stale; one captured 7 minutes before is outside
// the clock-skew window anyway.
func TestAttackReplayAcrossDaemonRestartRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	clk := &offsetClock{}
	r := newReplayRig(t, path, clk)
	start := clk.Now().Add(-10 * time.Minute)
	old := beatAt("h1", start, 1, clk.Now().Add(-7*time.Minute))
	oldDgram := r.capture(old)
	recent := make([][]byte, 0, 5)
	for seq := uint64(2); seq <= 6; seq++ {
		hb := beatAt("h1", start, seq, clk.Now())
		if seq == 2 {
			// The 7-minute-old capture delivered in time, over HTTP.
			code, ack, why := r.beatHTTP(old)
			require.Equal(t, http.StatusUnprocessableEntity, code, "already 7 minutes old at the first daemon: %+v", ack)
			assert.Contains(t, why, "behind the daemon's clock")
		}
		d := r.capture(hb)
		recent = append(recent, d)
		rep := r.send(d)
		require.NotNil(t, rep.Ack, "%+v", rep)
		require.True(t, rep.Ack.Accepted(), "%+v", rep.Ack)
	}
	r.stop()

	clk.Advance(2 * time.Second)
	r2 := newReplayRig(t, path, clk)
	assert.Equal(t, uint64(6), r2.status("h1").Seq, "the mark survived the restart")
	before := r2.status("h1").LastHeartbeat
	for i, d := range recent {
		rep := r2.send(d)
		require.NotNil(t, rep.Ack, "%+v", rep)
		assert.False(t, rep.Ack.Accepted(), "beat %d captured before the restart: %+v", i+2, rep.Ack)
	}
	rep := r2.send(oldDgram)
	assert.Contains(t, rep.Refused, "sent_at 7m", "%+v", rep)
	assert.True(t, before.Equal(r2.status("h1").LastHeartbeat), "no replay counted: %v, then %v", before, r2.status("h1").LastHeartbeat)
	assert.Equal(t, uint64(6), r2.status("h1").Seq)
	// The live agent goes on where it was.
	rep = r2.send(r2.capture(beatAt("h1", start, 7, clk.Now())))
	require.NotNil(t, rep.Ack)
	assert.True(t, rep.Ack.Accepted(), "%+v", rep.Ack)
}

// A clock outside the window is refused with the reason, over both
// transports; a forged far-future agent_start too.
func TestAttackSentAtOutsideWindowRefused(t *testing.T) {
	clk := &offsetClock{}
	r := newReplayRig(t, filepath.Join(t.TempDir(), "s.db"), clk)
	now := clk.Now()
	ahead := beatAt("h1", now.Add(-time.Hour), 1, now.Add(7*time.Minute))
	code, _, why := r.beatHTTP(ahead)
	assert.Equal(t, http.StatusUnprocessableEntity, code)
	assert.Contains(t, why, "sent_at 7m0s ahead of the daemon's clock (at most 30s allowed): check NTP on the host")
	rep := r.send(r.capture(ahead))
	assert.Nil(t, rep.Ack)
	assert.Contains(t, rep.Refused, "ahead of the daemon's clock")
	assert.Contains(t, rep.Refused, "check NTP")

	behind := beatAt("h1", now.Add(-time.Hour), 1, now.Add(-7*time.Minute))
	code, _, why = r.beatHTTP(behind)
	assert.Equal(t, http.StatusUnprocessableEntity, code)
	assert.Contains(t, why, "behind the daemon's clock")

	future := beatAt("h1", now.Add(7*time.Minute), 1, now)
	code, _, why = r.beatHTTP(future)
	assert.Equal(t, http.StatusUnprocessableEntity, code)
	assert.Contains(t, why, "agent_start")

	undated := beatAt("h1", now.Add(-time.Hour), 1, time.Time{})
	code, _, why = r.beatHTTP(undated)
	assert.Equal(t, http.StatusUnprocessableEntity, code)
	assert.Contains(t, why, "sent_at is missing")

	assert.True(t, r.status("h1").LastHeartbeat.IsZero(), "nothing was taken")
	assert.Contains(t, r.status("h1").LastRefused, "skewed: ")
	assert.Contains(t, r.alerts.kinds(), "h1 "+detector.AlertHeartbeatSkewed)
	// Within the window is fine.
	code, ack, why := r.beatHTTP(beatAt("h1", now.Add(-time.Hour), 1, now.Add(20*time.Second)))
	require.Equal(t, http.StatusOK, code, why)
	assert.Equal(t, heartbeat.OutcomeAccepted, ack.Outcome)
}

// emptyHV is a libvirtd with no domains.
type emptyHV struct{}

func (emptyHV) Ping(context.Context) error { return nil }
func (emptyHV) Domains(context.Context, bool) ([]hypervisor.Domain, error) {
	return []hypervisor.Domain{}, nil
}
func (emptyHV) Start(context.Context, string) error              { return nil }
func (emptyHV) Destroy(context.Context, string) error            { return nil }
func (emptyHV) Undefine(context.Context, string) error           { return nil }
func (emptyHV) SetAutostart(context.Context, string, bool) error { return nil }

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// One forged beat with the agent's real agent_start and seq 10^12 made
// every later real beat stale while the agent kept getting acks. The real
// agent now sees "stale", starts a new sequence, and is heard again.
func TestAttackForgedSeqDoesNotMuteTheAgent(t *testing.T) {
	clk := &offsetClock{}
	r := newReplayRig(t, filepath.Join(t.TempDir(), "s.db"), clk)
	dc, err := agent.NewDaemonClient(r.srv.URL, "h1", credOf("h1"))
	require.NoError(t, err)
	logs := &logBuf{}
	a, err := agent.New(agent.Config{Host: "h1", BootID: "boot-1", Version: "test", StateDir: t.TempDir(),
		HeartbeatInterval: 20 * time.Millisecond, ReconcileInterval: time.Second, CheckTimeout: time.Second,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, Now: clk.Now}, emptyHV{}, dc, zerolog.New(logs))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		assert.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool { return r.status("h1").Seq >= 3 }, 10*time.Second, 5*time.Millisecond)
	real := r.status("h1").AgentStart
	require.False(t, real.IsZero())

	const forged = 1_000_000_000_000
	code, ack, why := r.beatHTTP(beatAt("h1", real, forged, clk.Now()))
	require.Equal(t, http.StatusOK, code, why)
	require.True(t, ack.Accepted(), "the forged beat itself is in order: %+v", ack)

	// The agent's next beat is stale; it starts a new sequence, which the
	// daemon takes.
	require.Eventually(t, func() bool {
		hs := r.status("h1")
		return hs.AgentStart.After(real) && hs.Seq >= 2 && hs.Seq < forged
	}, 10*time.Second, 5*time.Millisecond, "the agent is heard again: %+v", r.status("h1"))
	assert.Contains(t, logs.String(), "starting a new heartbeat sequence")
	assert.Contains(t, r.alerts.kinds(), "h1 "+detector.AlertHeartbeatStale, "the daemon alerts too: a beat sent after the forged one was stale")
}

// An agent whose clock is 7 minutes ahead is told so, and logs it.
func TestAgentWithWrongClockLogsTheReason(t *testing.T) {
	clk := &offsetClock{}
	r := newReplayRig(t, filepath.Join(t.TempDir(), "s.db"), clk)
	dc, err := agent.NewDaemonClient(r.srv.URL, "h1", credOf("h1"))
	require.NoError(t, err)
	logs := &logBuf{}
	a, err := agent.New(agent.Config{Host: "h1", BootID: "boot-1", Version: "test", StateDir: t.TempDir(),
		HeartbeatInterval: 20 * time.Millisecond, ReconcileInterval: time.Second, CheckTimeout: time.Second,
		RetryInitial: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		Now: func() time.Time { return clk.Now().Add(7 * time.Minute) }}, emptyHV{}, dc, zerolog.New(logs))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		assert.NoError(t, <-done)
	}()
	require.Eventually(t, func() bool {
		return bytes.Contains([]byte(logs.String()), []byte(`HTTP 422: {\"error\":\"heartbeat refused: sent_at 7m0s ahead of the daemon's clock (at most 30s allowed): check NTP on the host\"}`))
	}, 10*time.Second, 5*time.Millisecond, "%s", logs.String())
	assert.True(t, r.status("h1").LastHeartbeat.IsZero(), "nothing taken")
}
