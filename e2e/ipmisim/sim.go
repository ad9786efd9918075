package ipmisim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Binary is the simulator started by Start.
const Binary = "/usr/bin/ipmi_sim"

// Config describes one simulated BMC.
type Config struct {
	// Addr is the IPv4 address ipmi_sim binds (127.0.0.1 in unit tests, a lab
	// address inside Netns in the lab). Required.
	Addr string
	// Port is the UDP port; 0 picks a free one.
	Port int
	// User and Password are an admin user (IPMI user 2). The password goes
	// into lan.conf and PasswordFile, both 0600, never argv. Required; the
	// user name is at most 16 bytes, the password at most 20.
	User, Password string
	// StateDir holds lan.conf, emu.cmd, the password file and ipmi_sim's
	// persistent state (-s). Created if missing. Required.
	StateDir string
	// ChassisControl is the chassis_control program (see the package doc);
	// "" writes and uses WriteFilePowerControl(StateDir/power).
	ChassisControl string
	// Netns, if set, runs the simulator inside that named network namespace
	// (ip netns exec), and the readiness probe is sent from inside it too.
	Netns string
	// LogPath receives ipmi_sim's stdout and stderr; "" = StateDir/ipmi_sim.log.
	LogPath string
}

// Sim is a running ipmi_sim.
type Sim struct {
	cfg      Config
	port     int
	pwFile   string
	powerDir string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when the process has been reaped
	waitErr  error         // valid after exited is closed

	stopOnce sync.Once
	stopErr  error
}

// Start writes the configuration, starts ipmi_sim and returns once it
// answers on Addr:Port, or ctx ends (default cap 15 s when ctx has no
// deadline). On error no simulator process is left running.
func Start(ctx context.Context, cfg Config) (*Sim, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(Binary); err != nil {
		return nil, fmt.Errorf("ipmisim: %s not found (install Debian package openipmi): %w", Binary, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("ipmisim: state dir: %w", err)
	}
	if cfg.LogPath == "" {
		cfg.LogPath = filepath.Join(cfg.StateDir, "ipmi_sim.log")
	}
	s := &Sim{cfg: cfg, pwFile: filepath.Join(cfg.StateDir, "password")}
	if err := os.WriteFile(s.pwFile, []byte(cfg.Password+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("ipmisim: password file: %w", err)
	}
	prog := cfg.ChassisControl
	if prog == "" {
		s.powerDir = filepath.Join(cfg.StateDir, "power")
		var err error
		if prog, err = WriteFilePowerControl(s.powerDir); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "emu.cmd"), []byte(emuCmd), 0o600); err != nil {
		return nil, fmt.Errorf("ipmisim: emu.cmd: %w", err)
	}

	// A picked port can be taken before ipmi_sim binds it; try again then.
	attempts := 1
	if cfg.Port == 0 {
		attempts = 3
	}
	var lastErr error
	for i := 0; i < attempts; i++ {
		port := cfg.Port
		if port == 0 {
			p, err := freeUDPPort(cfg.Netns, cfg.Addr)
			if err != nil {
				return nil, err
			}
			port = p
		}
		err := s.startOnce(ctx, port, prog)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil || !errors.Is(err, errExitedEarly) {
			break
		}
	}
	return nil, lastErr
}

var errExitedEarly = errors.New("ipmi_sim exited before answering")

func (s *Sim) startOnce(ctx context.Context, port int, prog string) error {
	cfg := s.cfg
	conf := lanConf(cfg, port, prog)
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "lan.conf"), []byte(conf), 0o600); err != nil {
		return fmt.Errorf("ipmisim: lan.conf: %w", err)
	}
	logf, err := os.OpenFile(cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("ipmisim: log: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, 2)

	args := []string{Binary, "-n",
		"-c", filepath.Join(cfg.StateDir, "lan.conf"),
		"-f", filepath.Join(cfg.StateDir, "emu.cmd"),
		"-s", cfg.StateDir}
	if cfg.Netns != "" {
		// ip netns exec execs the program, so the PID stays ipmi_sim's.
		args = append([]string{"/usr/bin/ip", "netns", "exec", cfg.Netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = cfg.StateDir
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Best effort: do not outlive a test binary that dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ipmisim: start %s: %w", Binary, err)
	}
	s.cmd, s.port = cmd, port
	s.exited = make(chan struct{})
	s.stopOnce = sync.Once{}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	perr := s.waitReady(ctx)
	if perr == nil {
		return nil
	}
	_ = s.Stop()
	tail := logTail(cfg.LogPath, logStart, 2048)
	if errors.Is(perr, errExitedEarly) {
		return fmt.Errorf("ipmisim: %w (%v) on %s:%d; log: %s", errExitedEarly, s.waitErr, cfg.Addr, port, tail)
	}
	return fmt.Errorf("ipmisim: BMC on %s:%d did not answer: %w; log: %s", cfg.Addr, port, perr, tail)
}

func (s *Sim) waitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.exited:
			return errExitedEarly
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		err := Probe(pctx, s.cfg.Netns, s.cfg.Addr, s.port)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last probe: %v)", ctx.Err(), err)
		case <-s.exited:
			return errExitedEarly
		case <-tick.C:
		}
	}
}

// Stop terminates the simulator by PID (SIGTERM, then SIGKILL after 5 s)
// and waits until it has exited. Safe to call more than once.
func (s *Sim) Stop() error {
	s.stopOnce.Do(func() {
		if s.cmd == nil || s.cmd.Process == nil {
			return
		}
		select {
		case <-s.exited:
			return
		default:
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
			return
		case <-time.After(5 * time.Second):
		}
		_ = s.cmd.Process.Kill()
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			s.stopErr = fmt.Errorf("ipmisim: pid %d did not exit after SIGKILL", s.cmd.Process.Pid)
		}
	})
	return s.stopErr
}

// Addr is the address the BMC listens on.
func (s *Sim) Addr() string { return s.cfg.Addr }

// Port is the UDP port the BMC listens on.
func (s *Sim) Port() int { return s.port }

// PID is the simulator's process id.
func (s *Sim) PID() int { return s.cmd.Process.Pid }

// PasswordFile is a 0600 file holding the password followed by a newline,
// for `ipmitool -f` and similar.
func (s *Sim) PasswordFile() string { return s.pwFile }

// PowerDir is the directory of the built-in file-backed power state (use it
// with FilePower and SetFilePower), or "" when Config.ChassisControl was set.
func (s *Sim) PowerDir() string { return s.powerDir }

// Exited is closed once the simulator process has exited.
func (s *Sim) Exited() <-chan struct{} { return s.exited }

// The MC is a plain BMC at IPMB 0x20 with no SDRs: enough for chassis
// commands and session setup.
const emuCmd = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 0x09 0x08 0x9f 0x1291 0xf02
mc_enable 0x20
`

func lanConf(cfg Config, port int, prog string) string {
	var b strings.Builder
	b.WriteString("# written by chime-fence e2e/ipmisim; holds a password (0600)\n")
	b.WriteString("name \"chime\"\n")
	b.WriteString("set_working_mc 0x20\n")
	b.WriteString("startlan 1\n")
	fmt.Fprintf(&b, "  addr %s %d\n", cfg.Addr, port)
	b.WriteString("  priv_limit admin\n")
	b.WriteString("  allowed_auths_callback md5\n")
	b.WriteString("  allowed_auths_user md5\n")
	b.WriteString("  allowed_auths_operator md5\n")
	b.WriteString("  allowed_auths_admin md5\n")
	b.WriteString("  guid a123456789abcdefa123456789abcdef\n")
	b.WriteString("endlan\n")
	fmt.Fprintf(&b, "chassis_control %q\n", prog)
	fmt.Fprintf(&b, "user 2 true %q %q admin 10 md5 md2 straight\n", cfg.User, cfg.Password)
	return b.String()
}

func (c Config) validate() error {
	ip := net.ParseIP(c.Addr)
	if ip == nil || ip.To4() == nil {
		return fmt.Errorf("ipmisim: Addr %q is not an IPv4 address", c.Addr)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("ipmisim: Port %d out of range 0..65535", c.Port)
	}
	if c.StateDir == "" {
		return errors.New("ipmisim: StateDir is required")
	}
	if err := confString("User", c.User, 16); err != nil {
		return err
	}
	if err := confString("Password", c.Password, 20); err != nil {
		return err
	}
	if strings.ContainsAny(c.ChassisControl, "\"\\\n") {
		return fmt.Errorf("ipmisim: ChassisControl %q must not contain quotes, backslashes or newlines", c.ChassisControl)
	}
	return nil
}

// confString rejects what lan.conf's quoted strings cannot carry; the error
// names the field, never the value (it may be the password).
func confString(field, v string, max int) error {
	switch {
	case v == "":
		return fmt.Errorf("ipmisim: %s is required", field)
	case len(v) > max:
		return fmt.Errorf("ipmisim: %s is %d bytes, IPMI allows at most %d", field, len(v), max)
	case strings.ContainsAny(v, "\"\\\n\r\t "):
		return fmt.Errorf("ipmisim: %s must not contain quotes, backslashes or whitespace", field)
	}
	return nil
}

func logTail(path string, from int64, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if from >= 0 && from <= int64(len(b)) {
		b = b[from:]
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(empty)"
	}
	return strconv.Quote(string(b))
}
