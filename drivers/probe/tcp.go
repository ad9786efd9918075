package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

func (p *Prober) probeTCP(ctx context.Context, a *attempt) Answer {
	t := a.t
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil || host == "" || port == "" {
		return unsupported(t, fmt.Sprintf("invalid target: tcp wants host:port, got %q", t.Addr))
	}
	d := net.Dialer{ControlContext: func(context.Context, string, string, syscall.RawConn) error {
		a.sent.Store(true) // the socket exists; connect(2) is next
		return nil
	}}
	start := p.clock()
	conn, err := d.DialContext(ctx, "tcp", t.Addr)
	rtt := p.clock().Sub(start)
	if err != nil {
		return classifyErr(ctx, a, err, rtt)
	}
	// Reset instead of FIN: thousands of probes per round must not leave
	// as many TIME_WAIT sockets behind.
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
	return answered(t, rtt)
}

// classifyErr sorts a failed connect or send into answered (the host's
// stack refused), silent (nothing came back, or the network says the host
// cannot be reached) or unsupported (the failure is ours: resolution,
// local resources, local policy).
func classifyErr(ctx context.Context, a *attempt, err error, rtt time.Duration) Answer {
	t := a.t
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return answered(t, rtt)
	case errors.As(err, &dns):
		return unsupported(t, "cannot resolve: "+err.Error())
	case ctx.Err() != nil || timeout(err):
		// The dialer's own deadline (ctx's) may fire before ctx reports it.
		return expired(ctx, a)
	case errors.Is(err, syscall.ENETUNREACH):
		return silent(t, "network unreachable: "+err.Error())
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return silent(t, "host unreachable: "+err.Error())
	case errors.Is(err, syscall.ETIMEDOUT):
		return silent(t, "timed out: "+err.Error())
	case localErr(err):
		return unsupported(t, "cannot probe from here: "+err.Error())
	}
	return silent(t, err.Error())
}

// localErr reports errors that describe this machine, not the target:
// out of descriptors, ports or buffers, or our own firewall refusing.
func localErr(err error) bool {
	for _, e := range []syscall.Errno{
		syscall.EMFILE, syscall.ENFILE, syscall.EADDRNOTAVAIL, syscall.EADDRINUSE,
		syscall.ENOBUFS, syscall.ENOMEM, syscall.EPERM, syscall.EACCES,
		syscall.EAFNOSUPPORT, syscall.EPROTONOSUPPORT, syscall.EINVAL, syscall.EMSGSIZE,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func timeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
