package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/identity"
	"github.com/chimestack/chime-fence/node"
)

// withUDPListen sets controller.heartbeat_udp_listen in a daemonConfig file.
func withUDPListen(t *testing.T, file, value string) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	s := strings.Replace(string(b), "  state_dir:", "  heartbeat_udp_listen: "+value+"\n  state_dir:", 1)
	require.NoError(t, os.WriteFile(file, []byte(s), 0o644))
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// udpBeat sends one heartbeat datagram to addr and returns the reply.
func udpBeat(t *testing.T, addr string, hb heartbeat.Heartbeat) heartbeat.Reply {
	t.Helper()
	sealer, err := heartbeat.NewSealer(identity.AgentCredential(testClusterSecret, hb.Host))
	require.NoError(t, err)
	c, err := net.Dial("udp", addr)
	require.NoError(t, err)
	defer c.Close()
	dg, err := sealer.SealHeartbeat(hb)
	require.NoError(t, err)
	_, err = c.Write(dg)
	require.NoError(t, err)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, heartbeat.MaxDatagram+1)
	n, err := c.Read(buf)
	require.NoError(t, err, "no reply from the daemon's UDP heartbeats on %s", addr)
	kind, payload, err := sealer.Open(buf[:n])
	require.NoError(t, err)
	require.Equal(t, heartbeat.KindReply, kind)
	r, err := heartbeat.DecodeReply(payload)
	require.NoError(t, err)
	require.True(t, r.Answers(hb))
	return r
}

func TestDaemonTakesUDPHeartbeatsOnItsAPIPort(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	d := startDaemon(t, file, c)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	assert.Eventually(t, func() bool { return strings.Contains(d.log.String(), `"heartbeat_udp":"`+addr+`"`) }, 5*time.Second, 10*time.Millisecond,
		"daemon started names the UDP address")

	hb := heartbeat.Heartbeat{Host: "h1", BootID: "boot-h1", Seq: 1, AgentStart: time.Now().UTC(), SentAt: time.Now().UTC(),
		Health: heartbeat.Health{Libvirt: heartbeat.Check{Name: "libvirt", OK: true}}}
	r := udpBeat(t, addr, hb)
	require.NotNil(t, r.Ack, "refused: %s", r.Refused)
	assert.Equal(t, node.Enabled, r.Ack.AdminState)
	assert.Equal(t, heartbeat.Duration(100*time.Millisecond), r.Ack.HeartbeatInterval)
	h, err := c.Host(context.Background(), "h1")
	require.NoError(t, err)
	assert.False(t, h.LastHeartbeat.IsZero(), "the daemon took the datagram's heartbeat")

	r = udpBeat(t, addr, heartbeat.Heartbeat{Host: "h9", BootID: "b", Seq: 1, AgentStart: hb.AgentStart, SentAt: time.Now()})
	assert.Contains(t, r.Refused, `host "h9" is not in the daemon's configuration`)

	d.stop(t)
	u, err := net.ListenPacket("udp", addr)
	require.NoError(t, err, "the daemon let go of its UDP socket when it stopped")
	u.Close()
}

func TestDaemonUDPHeartbeatsOffOrElsewhere(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	withUDPListen(t, file, "off")
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	d := startDaemon(t, file, c)
	// The API answers before "daemon started" is logged.
	assert.Eventually(t, func() bool { return strings.Contains(d.log.String(), `"heartbeat_udp":"off"`) }, 5*time.Second, 10*time.Millisecond)
	u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err, "off: the daemon holds no UDP socket on its port")
	u.Close()
	d.stop(t)

	udp := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	dir = t.TempDir()
	port = freePort(t)
	file = daemonConfig(t, dir, port)
	withUDPListen(t, file, udp)
	c = &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	d = startDaemon(t, file, c)
	// The API answers before "daemon started" is logged.
	assert.Eventually(t, func() bool { return strings.Contains(d.log.String(), `"heartbeat_udp":"`+udp+`"`) }, 5*time.Second, 10*time.Millisecond)
	r := udpBeat(t, udp, heartbeat.Heartbeat{Host: "h2", BootID: "b", Seq: 1, AgentStart: time.Now().UTC(), SentAt: time.Now()})
	assert.NotNil(t, r.Ack)
}

func TestDaemonUDPBindFailureNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	taken, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err)
	defer taken.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = runDaemon(ctx, file, nil, zerolog.Nop())
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf(`listen for UDP heartbeats on 127.0.0.1:%d (controller.heartbeat_udp_listen is "": controller.listen's address`, port))
	assert.Contains(t, err.Error(), "address already in use")
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	require.NoError(t, err, "the API listener was closed on the way out")
	ln.Close()
}
