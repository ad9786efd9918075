// Command chime-agent runs on every compute host: heartbeats to the
// chime-fence daemon, local health checks, restart of domains whose QEMU
// died, and the host's status API. This package only parses flags and
// wires packages together; the agent itself is package agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/drivers/libvirt"
)

// Exit codes, as chime-fence's.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure, e.g. the API port is taken
	exitUsage   = 2 // bad flags, unreadable token or boot id
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "devel+" + s.Value[:12]
			}
		}
	}
	return "devel"
}

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{code: exitUsage, err: err} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line until ctx is done and returns the exit
// code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := newRoot(stdout, stderr)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "chime-agent: error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitUsage // cobra's own errors are about flags
}

type flags struct {
	host, daemon, tokenFile, daemonCredFile, bootIDFile, listen string
	libvirt, libvirtURI, logLevel, stateDir                     string
	hbTransport, hbUDP                                          string
	interfaces, storage                                         []string
	heartbeat, reconcile                                        time.Duration
	version                                                     bool
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	var f flags
	hostname, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "chime-agent --daemon URL --token-file FILE [flags]",
		Short: "chime-fence's host agent: heartbeats, health checks, restart of domains whose QEMU died, status API",
		Long: `chime-agent runs on every compute host (systemd, Restart=always). It heartbeats
to the chime-fence daemon, reports local health (libvirtd, interfaces, storage),
and restarts domains the daemon assigns to this host when their QEMU died or the
host restarted — never while the host is drained, and never before the daemon
has told it the host's admin state. Domains the daemon rebuilt elsewhere while
this host was fenced are destroyed and undefined before the first heartbeat.
Heartbeats are UDP datagrams (sealed with a key derived from the token) to the
daemon's host and port; a beat UDP does not answer goes over HTTP (see
--heartbeat-transport).

chime-agent drain stops every domain and keeps this host drained locally, even
when the daemon cannot be reached (see chime-agent drain --help).
chime-agent migrate live-migrates this host's VMs over a chosen network, also
when the daemon cannot be reached (see chime-agent migrate --help).
chime-agent prepare-boot runs before libvirtd at boot and removes every libvirt
autostart link (see chime-agent prepare-boot --help); the agent keeps autostart
off for every domain of the host while it runs.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.version {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), "chime-agent", versionString())
				return err
			}
			return serve(cmd.Context(), f, stderr)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.AddCommand(newDrain(stdout, stderr, dialLibvirt))
	cmd.AddCommand(newMigrate(stdout, stderr, realMigrateEnv()))
	cmd.AddCommand(newPrepareBoot(stderr))
	fs := cmd.Flags()
	fs.StringVar(&f.host, "host", hostname, "this host's name as the daemon's configuration knows it")
	fs.StringVar(&f.daemon, "daemon", "", "the daemon's address, e.g. http://10.0.0.2:7480 (required)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding this host's agent credential, from `chime-fence agent-credential HOST` (required; not readable by others)")
	fs.StringVar(&f.daemonCredFile, "daemon-credential-file", "", "file holding the credential the daemon presents to this host's agent, from `chime-fence agent-credential --daemon-side HOST` (required; not readable by others)")
	fs.StringVar(&f.bootIDFile, "boot-id-file", "/proc/sys/kernel/random/boot_id", "where the kernel's boot id is read")
	fs.StringVar(&f.listen, "listen", ":7481", "address of the agent's HTTP API")
	fs.StringVar(&f.libvirt, "libvirt", "unix:/run/libvirt/libvirt-sock", "libvirtd's address: unix:/path or host:port")
	fs.StringVar(&f.libvirtURI, "libvirt-uri", "qemu:///system", "libvirt driver URI")
	fs.StringArrayVar(&f.interfaces, "interface", nil, "network interface that must be up (repeatable)")
	fs.StringArrayVar(&f.storage, "storage", nil, "directory that must be writable, e.g. shared VM storage (repeatable)")
	fs.DurationVar(&f.heartbeat, "heartbeat-interval", 5*time.Second, "heartbeat interval until the daemon names its own")
	fs.StringVar(&f.hbTransport, "heartbeat-transport", agent.TransportAuto.String(),
		"how heartbeats travel: auto (UDP; HTTP for a beat UDP does not answer within half the interval, and for 10 minutes after 3 such beats in a row), udp or http")
	fs.StringVar(&f.hbUDP, "heartbeat-udp", "", "the daemon's UDP heartbeat address HOST:PORT (default: host and port of --daemon)")
	fs.DurationVar(&f.reconcile, "reconcile-interval", 60*time.Second, "how often domains that should run are checked")
	fs.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "directory of the local drain marker (persistent, per host)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	return cmd
}

// serve wires the agent and runs it until ctx is done.
func serve(ctx context.Context, f flags, stderr io.Writer) error {
	var problems []error
	if f.daemon == "" {
		problems = append(problems, errors.New("--daemon is required (e.g. http://10.0.0.2:7480)"))
	}
	if f.tokenFile == "" {
		problems = append(problems, errors.New("--token-file is required"))
	}
	if f.daemonCredFile == "" {
		problems = append(problems, errors.New("--daemon-credential-file is required"))
	}
	level, err := zerolog.ParseLevel(f.logLevel)
	if err != nil || f.logLevel == "" {
		problems = append(problems, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLevel))
	}
	if !filepath.IsAbs(f.stateDir) {
		problems = append(problems, fmt.Errorf("--state-dir %q: want an absolute path", f.stateDir))
	}
	transport, err := agent.ParseTransport(f.hbTransport)
	if err != nil {
		problems = append(problems, fmt.Errorf("--heartbeat-transport %q: want auto, udp or http", f.hbTransport))
	}
	switch {
	case f.hbUDP == "":
	case err == nil && transport == agent.TransportHTTP:
		problems = append(problems, errors.New("--heartbeat-udp is of no use with --heartbeat-transport http"))
	default:
		if err := agent.CheckUDPAddress(f.hbUDP); err != nil {
			problems = append(problems, fmt.Errorf("--heartbeat-udp: %w", err))
		}
	}
	if len(problems) > 0 {
		return usageErr(errors.Join(problems...))
	}
	token, err := configs.Secret{What: "agent credential", File: f.tokenFile}.Read()
	if err != nil {
		return usageErr(err)
	}
	daemonCred, err := configs.Secret{What: "daemon credential", File: f.daemonCredFile}.Read()
	if err != nil {
		return usageErr(err)
	}
	b, err := os.ReadFile(f.bootIDFile)
	if err != nil {
		return usageErr(fmt.Errorf("boot id: %w", err))
	}
	bootID := strings.TrimSpace(string(b))
	if bootID == "" {
		return usageErr(fmt.Errorf("boot id: %s is empty", f.bootIDFile))
	}

	log := zerolog.New(stderr).Level(level).With().Timestamp().Str("service", "chime-agent").Logger()
	lv, err := libvirt.New(libvirt.Config{Host: f.host, Address: f.libvirt, URI: f.libvirtURI}, log)
	if err != nil {
		return usageErr(fmt.Errorf("--libvirt: %w", err))
	}
	defer lv.Close()
	// Health checks get their own connection (see agent.Config.Checks).
	lvChecks, err := libvirt.New(libvirt.Config{Host: f.host, Address: f.libvirt, URI: f.libvirtURI}, log)
	if err != nil {
		return usageErr(fmt.Errorf("--libvirt: %w", err))
	}
	defer lvChecks.Close()
	dc, err := agent.NewDaemonClient(f.daemon, f.host, token)
	if err != nil {
		return usageErr(fmt.Errorf("--daemon: %w", err))
	}
	var daemon agent.Daemon = dc
	if transport != agent.TransportHTTP {
		uc, err := agent.NewUDPClient(dc, agent.UDPConfig{Address: f.hbUDP, Transport: transport}, log)
		if err != nil {
			if f.hbUDP == "" {
				return usageErr(fmt.Errorf("--heartbeat-udp (from --daemon): %w", err))
			}
			return usageErr(fmt.Errorf("--heartbeat-udp: %w", err))
		}
		defer uc.Close()
		daemon = uc
		log.Info().Str("component", "heartbeat").Str("host", f.host).Str("transport", transport.String()).
			Str("udp", uc.Address()).Msg("heartbeats over UDP")
	} else {
		log.Info().Str("component", "heartbeat").Str("host", f.host).Str("transport", transport.String()).
			Msg("heartbeats over HTTP")
	}
	a, err := agent.New(agent.Config{
		Host: f.host, BootID: bootID, Version: versionString(),
		Interfaces: f.interfaces, Storage: f.storage,
		HeartbeatInterval: f.heartbeat, ReconcileInterval: f.reconcile,
		StateDir: f.stateDir, Checks: lvChecks,
	}, lv, daemon, log)
	if err != nil {
		return usageErr(err)
	}
	h, err := agent.NewHandler(a, daemonCred, token, log)
	if err != nil {
		return usageErr(err)
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("--listen: %w", err)}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	apiErr := make(chan error, 1)
	go func() {
		apiErr <- agent.Serve(ctx, ln, h, log)
		cancel() // a dead API ends the agent; systemd restarts it
	}()
	_ = a.Run(ctx)
	if err := <-apiErr; err != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("API: %w", err)}
	}
	return nil
}
