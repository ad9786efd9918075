package ipmisim

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/chimestack/chime-fence/e2e/nsenter"
)

// getChanAuthCaps is an unauthenticated IPMI 1.5 Get Channel Authentication
// Capabilities request (channel: current, IPMI 2.0 extended data, admin),
// the first packet every lanplus client sends.
var getChanAuthCaps = func() []byte {
	msg := []byte{0x20, 0x06 << 2, 0, 0x81, 0x00, 0x38, 0x8e, 0x04, 0}
	msg[2] = checksum(msg[0:2])
	msg[8] = checksum(msg[3:8])
	pkt := []byte{
		0x06, 0x00, 0xff, 0x07, // RMCP: version 1, seq none, class IPMI
		0x00,                   // auth type none
		0, 0, 0, 0, 0, 0, 0, 0, // session seq, session id
		byte(len(msg)),
	}
	return append(pkt, msg...)
}()

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// Probe sends one Get Channel Authentication Capabilities request to
// addr:port (from inside netns when it is not "") and returns nil when a
// successful answer comes back before ctx ends.
func Probe(ctx context.Context, netns, addr string, port int) error {
	var conn net.Conn
	err := nsenter.Do(netns, func() error {
		var err error
		conn, err = net.Dial("udp4", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Second)
	}
	_ = conn.SetDeadline(dl)
	if _, err := conn.Write(getChanAuthCaps); err != nil {
		return err
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	// RMCP(4) + session header(10) + rsAddr..cmd(6) + completion code.
	const ccAt = 4 + 10 + 6
	if n <= ccAt || buf[0] != 0x06 || buf[3] != 0x07 {
		return fmt.Errorf("not an IPMI answer (%d bytes)", n)
	}
	if cc := buf[ccAt]; cc != 0 {
		return fmt.Errorf("completion code %#x", cc)
	}
	return nil
}

func freeUDPPort(netns, addr string) (int, error) {
	var port int
	err := nsenter.Do(netns, func() error {
		c, err := net.ListenPacket("udp4", net.JoinHostPort(addr, "0"))
		if err != nil {
			return err
		}
		port = c.LocalAddr().(*net.UDPAddr).Port
		return c.Close()
	})
	if err != nil {
		return 0, fmt.Errorf("ipmisim: pick a free UDP port on %s: %w", addr, err)
	}
	return port, nil
}
