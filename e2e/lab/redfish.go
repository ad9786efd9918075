package lab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/chimestack/chime-fence/e2e/nsenter"
	"github.com/chimestack/chime-fence/e2e/redfishsim"
)

const redfishSimPkg = "github.com/chimestack/chime-fence/cmd/chime-redfish-sim"

// redfishBinary returns Config.RedfishSim or builds the simulator once into
// Dir/bin.
func (l *Lab) redfishBinary(ctx context.Context) (string, error) {
	if l.cfg.RedfishSim != "" {
		return l.cfg.RedfishSim, nil
	}
	bin := filepath.Join(l.cfg.Dir, "bin", "chime-redfish-sim")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	// Build inside this module's source tree, wherever the caller runs.
	_, src, _, _ := runtime.Caller(0)
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", bin, redfishSimPkg)
	cmd.Dir = filepath.Dir(src)
	if out, err := cmd.CombinedOutput(); err != nil {
		err = fmt.Errorf("go build %s: %w: %s", redfishSimPkg, err, tail(out, 600))
		return "", fmt.Errorf("lab: build Redfish simulator (or set Config.RedfishSim): %w", err)
	}
	return bin, nil
}

// startRedfish runs chime-redfish-sim with TLS in the namespace of h's
// BMC number k (index into h.BMCs) and waits for its "listening" line.
func (l *Lab) startRedfish(ctx context.Context, h *host, k int, bin, pwFile string) error {
	b := h.BMCs[k]
	dir := filepath.Join(l.cfg.Dir, "bmc", h.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	cert, key, err := redfishsim.WriteSelfSignedCert(dir, b.Addr)
	if err != nil {
		return fmt.Errorf("lab: %s: BMC certificate: %w", h.Name, err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "redfish-sim.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", b.Netns, bin,
		"--listen", net.JoinHostPort(b.Addr, strconv.Itoa(b.Port)),
		"--user", b.User, "--password-file", pwFile,
		"--chassis-control", h.ChassisControl, "--system-id", b.SystemID,
		"--tls-cert", cert, "--tls-key", key)
	cmd.Args = append(cmd.Args, l.cfg.RedfishArgs...)
	cmd.Env = append(os.Environ(), envLab+"="+l.cfg.Name)
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: %s: start Redfish BMC: %w", h.Name, err)
	}
	done := make(chan struct{})
	l.mu.Lock()
	h.rf, h.rfDone, h.BMCs[k].CAFile = cmd, done, cert
	h.BMC = h.BMCs[0]
	l.mu.Unlock()
	ready := make(chan bool, 1)
	go func() {
		lf, err := os.OpenFile(filepath.Join(dir, "redfish-sim.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err == nil {
			defer lf.Close()
		}
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if lf != nil {
				fmt.Fprintln(lf, sc.Text())
			}
			if !ok && strings.Contains(sc.Text(), "listening on") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
		_ = cmd.Wait()
		close(done)
	}()
	select {
	case ok := <-ready:
		if ok {
			return nil
		}
		return fmt.Errorf("lab: %s: Redfish BMC exited: %s", h.Name, tailFile(filepath.Join(dir, "redfish-sim.log"), 600))
	case <-ctx.Done():
		return fmt.Errorf("lab: %s: Redfish BMC not listening: %w", h.Name, ctx.Err())
	}
}

// tcpProbe connects to addr:port from inside netns.
func tcpProbe(ctx context.Context, netns, addr string, port int, timeout time.Duration) error {
	var c net.Conn
	err := nsenter.Do(netns, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.DialContext(ctx, "tcp4", net.JoinHostPort(addr, strconv.Itoa(port)))
		return err
	})
	if err != nil {
		return err
	}
	return c.Close()
}
