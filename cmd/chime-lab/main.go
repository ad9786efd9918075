// Command chime-lab runs the local lab (package e2e/lab) for `make demo`
// and by hand, as root:
//
//	chime-lab up    --dir D [--name chlab] [--hosts 3] [--vms 3] [--vm NAME@HOST[:local]]... [--redfish N] [--both N] [--agent CMD]
//	chime-lab show  --dir D
//	chime-lab exec  [--lab NAME] -- CMD [ARG...]
//	chime-lab env   [--lab NAME]
//	chime-lab down  --dir D
//	chime-lab sweep [--name chlab]
//	chime-lab kill-agent --dir D --host H
//	chime-lab watch --dir D --host H --names VM,... [--since T] [--timeout 60s]
//	chime-lab webhook --listen ADDR --secret-file F --out FILE
//
// up starts a keeper process (chime-lab serve, detached) that owns the lab
// — its processes die with it — creates the VMs, and returns once the lab
// is up, printing hosts, BMC power and VMs per host. The keeper's PID is in
// D/keeper.pid, its log in D/keeper.log, the lab itself in D/lab; it
// closes every file descriptor it inherits (a lab started under flock(1)
// must not hold the lock for its whole life). When the lab fails to start,
// up prints why in plain text (host, step, the end of its boot log) and
// exits 1. down stops the keeper (which closes the lab) and sweeps
// whatever is left.
//
// exec runs a command in the lab's controller namespace, the only place
// lab addresses are reachable from (the root namespace has unreachable
// routes for them while a lab is up), with CHIME_FENCE_CONFIG (D's
// chime-fence.yaml, where config writes by default) and
// CHIME_FENCE_API_TOKEN_FILE in its environment; env prints the same as a
// prefix, for $(chime-lab env) chime-fence status. Both find the lab by
// --dir, by --lab NAME, or as the only lab up.
// Exit codes: 0 success, 1 runtime failure, 2 usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/e2e/lab"
	"github.com/chimestack/chime-fence/e2e/labconfig"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  chime-lab up    --dir D [--name chlab] [--hosts 3] [--vms 3] [--vm NAME@HOST[:local]]... [--redfish N] [--both N]
  chime-lab show  --dir D
  chime-lab exec  [--lab NAME | --dir D] -- CMD [ARG...]
                   (run CMD in the lab's controller namespace with CHIME_FENCE_CONFIG
                    and the token files in its environment)
  chime-lab env   [--lab NAME | --dir D]   (print that as a command prefix: $(chime-lab env) CMD)
  chime-lab vars  --dir D          (shell variables describing the lab)
  chime-lab config --dir D [--out D/chime-fence.yaml] [--mode observe|enforce]
  chime-lab down  --dir D
  chime-lab sweep [--name chlab]
  chime-lab kill-agent --dir D --host H   (SIGKILL H's agent, by PID; the host stays up)
  chime-lab watch --dir D --host H --names VM,... [--since T] [--timeout 60s]
                   (wait until each VM runs on a host other than H, one timeline line each;
                    exit 1 if two QEMU processes ever name one shared disk)
  chime-lab webhook --listen ADDR --secret-file F --out FILE
                   (receive chime-fence alert webhooks until SIGTERM, one line per delivery
                    with its X-Chime-Signature verdict)
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	fs := flag.NewFlagSet("chime-lab "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for the lab, its keeper's PID and log (absolute or relative)")
	name := fs.String("name", lab.DefaultName, "lab name: prefix of its namespaces")
	labName := fs.String("lab", "", "exec, env: the lab's name (default: the only lab up)")
	hosts := fs.Int("hosts", 3, "number of hosts")
	vms := fs.Int("vms", 3, "VMs to create, round-robin over the hosts, disks on shared storage")
	redfish := fs.Int("redfish", 0, "give the last N hosts a Redfish BMC instead of IPMI")
	both := fs.Int("both", 0, "give the first N hosts an IPMI and a Redfish BMC driving the same power (config: rack-both, levels ipmi then redfish)")
	agent := fs.String("agent", "", "command started in every host at power-on (split at spaces, no quoting); "+
		"{host}, {addr}, {ctl}, {token} and {daemon-token} are replaced by the host's name, its address, the controller's address, "+
		"the host's agent credential file and its daemon→agent credential file (derived from the lab's cluster secret, written before the lab starts)")
	heartbeat := fs.Duration("heartbeat", 0, "config: detection heartbeat interval (also the probe timeout); 0 keeps the defaults")
	out := fs.String("out", "", "config: where to write the chime-fence configuration (default D/chime-fence.yaml, which exec and env use); webhook: the file deliveries are appended to")
	mode := fs.String("mode", "observe", "config: observe or enforce")
	hostName := fs.String("host", "", "kill-agent, watch: the host (host1)")
	sinceFlag := fs.String("since", "", "watch: offsets are from this RFC 3339 time (default: when watch starts)")
	timeout := fs.Duration("timeout", time.Minute, "watch: give up after this long")
	names := fs.String("names", "", "watch: the VMs, comma-separated")
	listen := fs.String("listen", "", "webhook: address to listen on")
	secretFile := fs.String("secret-file", "", "webhook: file holding the webhook's HMAC secret")
	var extra vmList
	fs.Var(&extra, "vm", "up: one more VM, NAME@HOST[:local] (HOST is host1 or 1); repeatable; "+
		":local puts its disk on the host's local storage, which chime-fence never evacuates")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 && args[0] != "exec" {
		fmt.Fprintf(stderr, "chime-lab: unexpected arguments %q\n", fs.Args())
		return 2
	}
	needDir := func() (string, bool) {
		if *dir == "" {
			fmt.Fprintln(stderr, "chime-lab: --dir is required")
			return "", false
		}
		d, err := filepath.Abs(*dir)
		if err != nil {
			fmt.Fprintf(stderr, "chime-lab: --dir: %v\n", err)
			return "", false
		}
		return d, true
	}
	if *hosts < 1 {
		fmt.Fprintf(stderr, "chime-lab: --hosts %d: a lab needs at least 1 host\n", *hosts)
		return 2
	}
	if *redfish < 0 || *redfish > *hosts {
		fmt.Fprintf(stderr, "chime-lab: --redfish %d out of range 0..%d (--hosts)\n", *redfish, *hosts)
		return 2
	}
	if *both < 0 || *both+*redfish > *hosts {
		fmt.Fprintf(stderr, "chime-lab: --both %d out of range 0..%d (--hosts minus --redfish)\n", *both, max(*hosts-*redfish, 0))
		return 2
	}
	if *vms < 0 {
		fmt.Fprintf(stderr, "chime-lab: --vms %d is negative\n", *vms)
		return 2
	}
	if err := extra.check(*hosts, *vms); err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 2
	}
	switch args[0] {
	case "up", "serve":
		d, ok := needDir()
		if !ok {
			return 2
		}
		types := make([]string, *hosts)
		for i := range types {
			types[i] = lab.BMCIPMI
			if i >= *hosts-*redfish {
				types[i] = lab.BMCRedfish
			}
			if i < *both {
				types[i] = lab.BMCBoth
			}
		}
		cfg := lab.Config{Name: *name, Dir: filepath.Join(d, "lab"), Hosts: *hosts, BMCTypes: types}
		if argv := strings.Fields(*agent); len(argv) > 0 {
			if err := labconfig.WriteTokens(d); err != nil {
				fmt.Fprintf(stderr, "chime-lab: tokens: %v\n", err)
				return 1
			}
			cfg.AgentCommand = func(h lab.Host) []string {
				// Each host gets its own credentials, derived from the
				// lab's cluster secret (written just above).
				token, daemonCred, err := labconfig.HostCredentials(d, h.Name)
				if err != nil {
					fmt.Fprintf(stderr, "chime-lab: credentials of %s: %v\n", h.Name, err)
				}
				r := strings.NewReplacer("{host}", h.Name, "{addr}", h.MgmtAddr, "{ctl}", lab.ControllerMgmtAddr, "{token}", token, "{daemon-token}", daemonCred)
				out := make([]string, len(argv))
				for i, a := range argv {
					out[i] = r.Replace(a)
				}
				return out
			}
			cfg.PrepareBootCommand = prepareBootOf(argv)
		}
		// `make build` puts chime-redfish-sim next to chime-lab.
		if self, err := os.Executable(); err == nil {
			if sim := filepath.Join(filepath.Dir(self), "chime-redfish-sim"); fileExists(sim) {
				cfg.RedfishSim = sim
			}
		}
		if args[0] == "serve" {
			return serve(cfg, vmPlan(*vms, *hosts, extra), d, stderr)
		}
		return up(d, args[1:], stdout, stderr)
	case "show":
		d, ok := needDir()
		if !ok {
			return 2
		}
		return show(d, stdout, stderr)
	case "exec", "env":
		d := ""
		if *dir != "" {
			var ok bool
			if d, ok = needDir(); !ok {
				return 2
			}
		}
		if args[0] == "exec" {
			return execInLab(d, *labName, fs.Args(), stderr)
		}
		return printPrefix(d, *labName, stdout, stderr)
	case "vars":
		d, ok := needDir()
		if !ok {
			return 2
		}
		return printEnv(d, stdout, stderr)
	case "config":
		d, ok := needDir()
		if !ok {
			return 2
		}
		if *out == "" {
			*out = configFile(d)
		}
		return writeConfig(d, *out, *mode, *heartbeat, stdout, stderr)
	case "kill-agent":
		d, ok := needDir()
		if !ok {
			return 2
		}
		l, h, code := attachHost(d, *hostName, stderr)
		if code != 0 {
			return code
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pid := l.AgentPID(h)
		if err := l.KillAgent(ctx, h); err != nil {
			fmt.Fprintf(stderr, "chime-lab: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "killed %s's agent (pid %d)\n", h.Name, pid)
		return 0
	case "watch":
		d, ok := needDir()
		if !ok {
			return 2
		}
		o := watchOpts{from: *hostName, since: time.Now(), timeout: *timeout}
		for _, n := range strings.Split(*names, ",") {
			if n = strings.TrimSpace(n); n != "" {
				o.names = append(o.names, n)
			}
		}
		if len(o.names) == 0 {
			fmt.Fprintln(stderr, "chime-lab: watch: --names is required (the VMs to wait for)")
			return 2
		}
		if *timeout <= 0 {
			fmt.Fprintf(stderr, "chime-lab: watch: --timeout %s must be positive\n", *timeout)
			return 2
		}
		if *sinceFlag != "" {
			t, err := time.Parse(time.RFC3339Nano, *sinceFlag)
			if err != nil {
				fmt.Fprintf(stderr, "chime-lab: watch: --since %q: want an RFC 3339 time\n", *sinceFlag)
				return 2
			}
			o.since = t
		}
		l, _, code := attachHost(d, *hostName, stderr)
		if code != 0 {
			return code
		}
		return watchVMs(l, o, stdout, stderr)
	case "webhook":
		return serveWebhook(*listen, *secretFile, *out, stderr)
	case "down":
		d, ok := needDir()
		if !ok {
			return 2
		}
		return down(d, stdout, stderr)
	case "sweep":
		if err := lab.Sweep(*name); err != nil {
			fmt.Fprintf(stderr, "chime-lab: %v\n", err)
			return 1
		}
		return report(lab.Leftovers(*name, ""), stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return 2
}

// attachHost attaches to the lab in dir and finds its host name.
func attachHost(dir, name string, stderr io.Writer) (*lab.Lab, lab.Host, int) {
	if name == "" {
		fmt.Fprintln(stderr, "chime-lab: --host is required")
		return nil, lab.Host{}, 2
	}
	l, err := lab.Attach(filepath.Join(dir, "lab"))
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v (is the lab up?)\n", err)
		return nil, lab.Host{}, 1
	}
	h, err := l.Host(name)
	if err != nil {
		var names []string
		for _, x := range l.Hosts() {
			names = append(names, x.Name)
		}
		fmt.Fprintf(stderr, "chime-lab: --host %q: no such host in the lab (hosts: %s)\n", name, strings.Join(names, ", "))
		return nil, lab.Host{}, 2
	}
	return l, h, 0
}

// up starts the keeper detached and waits until it reports the lab ready.
func up(dir string, args []string, stdout, stderr io.Writer) int {
	if pid := keeperPID(dir); pid > 0 {
		fmt.Fprintf(stderr, "chime-lab: a lab keeper (pid %d) already runs for %s; chime-lab down --dir %s first\n", pid, dir, dir)
		return 1
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 1
	}
	_ = os.Remove(filepath.Join(dir, "ready"))
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 1
	}
	logPath := filepath.Join(dir, "keeper.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 1
	}
	defer logf.Close()
	_ = os.Remove(startErrorFile(dir))
	noInheritance()
	cmd := exec.Command(self, append([]string{"serve"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "chime-lab: start keeper: %v\n", err)
		return 1
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t0 := time.Now()
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		select {
		case err := <-exited:
			if b, rerr := os.ReadFile(startErrorFile(dir)); rerr == nil {
				fmt.Fprintf(stderr, "chime-lab: the lab did not start after %v:\n%s\n(keeper log %s)\n",
					time.Since(t0).Round(10*time.Millisecond), strings.TrimSpace(string(b)), logPath)
				return 1
			}
			fmt.Fprintf(stderr, "chime-lab: keeper exited (%v); log %s:\n%s\n", err, logPath, logTail(logPath))
			return 1
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(t0) > 3*time.Minute {
			_ = cmd.Process.Kill()
			fmt.Fprintf(stderr, "chime-lab: lab not up after 3m; log %s:\n%s\n", logPath, logTail(logPath))
			return 1
		}
	}
	fmt.Fprintf(stdout, "lab up in %v (keeper pid %d, log %s)\n\n", time.Since(t0).Round(10*time.Millisecond), cmd.Process.Pid, logPath)
	return show(dir, stdout, stderr)
}

// startErrorFile holds, in plain text, why the keeper's lab did not start.
func startErrorFile(dir string) string { return filepath.Join(dir, "start-error") }

// serve is the keeper: it owns the lab until SIGTERM or SIGINT.
func serve(cfg lab.Config, vms []vmSpec, dir string, stderr io.Writer) int {
	closeInherited()
	cfg.Log = zerolog.New(stderr).With().Timestamp().Logger()
	log := cfg.Log.With().Str("component", "chime-lab").Logger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.WriteFile(filepath.Join(dir, "keeper.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		log.Error().Err(err).Msg("keeper pid file")
		return 1
	}
	defer os.Remove(filepath.Join(dir, "keeper.pid"))
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	l, err := lab.Start(sctx, cfg)
	cancel()
	if err != nil {
		log.Error().Err(err).Msg("lab start failed")
		// up prints this as it is: host, step and boot log, in plain text.
		_ = os.WriteFile(startErrorFile(dir), []byte(err.Error()+"\n"), 0o644)
		return 1
	}
	defer func() {
		if err := l.Close(); err != nil {
			log.Error().Err(err).Msg("lab close")
		}
		if left := lab.Leftovers(cfg.Name, cfg.Dir); len(left) > 0 {
			log.Error().Strs("leftovers", left).Msg("lab close left things behind")
		}
	}()
	hs := l.Hosts()
	for _, v := range vms {
		vctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := l.CreateVM(vctx, hs[v.host-1], lab.VMSpec{Name: v.name, Shared: !v.local})
		cancel()
		if err != nil {
			log.Error().Err(err).Msg("create VM")
			return 1
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644); err != nil {
		log.Error().Err(err).Msg("ready file")
		return 1
	}
	log.Info().Int("vms", len(vms)).Msg("lab ready; SIGTERM (chime-lab down) stops it")
	<-ctx.Done()
	log.Info().Msg("stopping")
	return 0
}

func show(dir string, stdout, stderr io.Writer) int {
	l, err := lab.Attach(filepath.Join(dir, "lab"))
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v (is the lab up?)\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sts := l.Status(ctx)
	c := l.Controller()
	fmt.Fprintf(stdout, "lab %s: controller netns %s (mgmt %s, bmc %s), shared storage %s\n\n",
		l.Name(), c.Netns, c.MgmtAddr, c.BMCAddr, l.SharedDir())
	if err := lab.WriteStatus(stdout, sts); err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 1
	}
	for _, s := range sts {
		if strings.HasPrefix(s.BMCPower, "error") {
			return 1
		}
	}
	return 0
}

// printEnv prints the lab's namespaces and addresses as shell variables,
// for scripts (make demo): CTL_NETNS, SHARED_DIR, and per host HOSTn_NAME,
// HOSTn_ADDR, HOSTn_BMC_TYPE, HOSTn_BMC_ADDR, HOSTn_BMC_PORT,
// HOSTn_BMC_USER, HOSTn_BMC_PASSWORD_FILE (the primary BMC), and for a
// host with a second BMC HOSTn_BMC2_TYPE, HOSTn_BMC2_ADDR, HOSTn_BMC2_PORT.
func printEnv(dir string, stdout, stderr io.Writer) int {
	l, err := lab.Attach(filepath.Join(dir, "lab"))
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v (is the lab up?)\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "CTL_NETNS=%s\nSHARED_DIR=%s\n", shellQuote(l.Controller().Netns), shellQuote(l.SharedDir()))
	for _, h := range l.Hosts() {
		p := fmt.Sprintf("HOST%d_", h.Index)
		for _, kv := range [][2]string{{"NAME", h.Name}, {"ADDR", h.MgmtAddr}, {"BMC_TYPE", h.BMC.Type}, {"BMC_ADDR", h.BMC.Addr},
			{"BMC_PORT", strconv.Itoa(h.BMC.Port)}, {"BMC_USER", h.BMC.User}, {"BMC_PASSWORD_FILE", h.BMC.PasswordFile}} {
			fmt.Fprintf(stdout, "%s%s=%s\n", p, kv[0], shellQuote(kv[1]))
		}
		if bs := h.AllBMCs(); len(bs) > 1 {
			for _, kv := range [][2]string{{"BMC2_TYPE", bs[1].Type}, {"BMC2_ADDR", bs[1].Addr}, {"BMC2_PORT", strconv.Itoa(bs[1].Port)}} {
				fmt.Fprintf(stdout, "%s%s=%s\n", p, kv[0], shellQuote(kv[1]))
			}
		}
	}
	return 0
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// writeConfig writes a chime-fence configuration describing the lab.
func writeConfig(dir, out, mode string, heartbeat time.Duration, stdout, stderr io.Writer) int {
	l, err := lab.Attach(filepath.Join(dir, "lab"))
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v (is the lab up?)\n", err)
		return 1
	}
	o := labconfig.Options{Mode: mode, Tokens: true, TokenDir: dir}
	if heartbeat > 0 {
		o.Detection = fmt.Sprintf("  heartbeat_interval: %s\n  missed_heartbeats: 3\n  probe_timeout: %s\n  recovery_heartbeats: 3\n", heartbeat, heartbeat)
	}
	path, err := labconfig.Write(l, out, o)
	if err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, path)
	return 0
}

// down stops the keeper by PID, then closes and sweeps whatever is left.
func down(dir string, stdout, stderr io.Writer) int {
	var errs []error
	if pid := keeperPID(dir); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(30 * time.Second)
		for keeperPID(dir) == pid && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if keeperPID(dir) == pid {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			errs = append(errs, fmt.Errorf("keeper %d ignored SIGTERM; killed", pid))
		}
	}
	name := lab.DefaultName
	if l, err := lab.Attach(filepath.Join(dir, "lab")); err == nil {
		name = l.Name()
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	} else if b, err := os.ReadFile(filepath.Join(dir, "lab", ".chime-lab")); err == nil {
		name = strings.TrimSpace(string(b))
	}
	if err := lab.Sweep(name); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Join(dir, "ready"))
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(stderr, "chime-lab: %v\n", err)
	}
	if code := report(lab.Leftovers(name, filepath.Join(dir, "lab")), stdout, stderr); code != 0 || len(errs) > 0 {
		return 1
	}
	return 0
}

// keeperPID is the PID in dir/keeper.pid if that process is a live
// chime-lab keeper, else 0.
func keeperPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "keeper.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cl, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return 0
	}
	args := strings.Split(string(cl), "\x00")
	if len(args) < 2 || filepath.Base(args[0]) != "chime-lab" || args[1] != "serve" {
		return 0
	}
	return pid
}

func report(left []string, stdout, stderr io.Writer) int {
	if len(left) == 0 {
		fmt.Fprintln(stdout, "clean: no lab processes, namespaces, mounts, nftables tables or root namespace routes left")
		return 0
	}
	fmt.Fprintln(stderr, "chime-lab: left behind:")
	for _, s := range left {
		fmt.Fprintln(stderr, "  "+s)
	}
	return 1
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// prepareBootOf is the lab's PrepareBootCommand for an --agent argv that
// runs chime-agent: its prepare-boot with the same --state-dir, before
// libvirtd as the agent's systemd units order it; nil for another agent.
func prepareBootOf(argv []string) func(lab.Host) []string {
	if len(argv) == 0 || filepath.Base(argv[0]) != "chime-agent" {
		return nil
	}
	return func(h lab.Host) []string {
		out := []string{argv[0], "prepare-boot"}
		for i, a := range argv {
			if a == "--state-dir" && i+1 < len(argv) {
				out = append(out, "--state-dir", strings.ReplaceAll(argv[i+1], "{host}", h.Name))
			} else if v, ok := strings.CutPrefix(a, "--state-dir="); ok {
				out = append(out, "--state-dir", strings.ReplaceAll(v, "{host}", h.Name))
			}
		}
		return out
	}
}
