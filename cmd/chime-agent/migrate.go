package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/migration"
)

// migrateHV is a libvirtd (local or the destination's) as chime-agent
// migrate uses it.
type migrateHV interface {
	migration.Hypervisor
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
	NodeStats(ctx context.Context) (hypervisor.NodeStats, error)
	Close() error
}

// migrateEnv is what the command reads from the host; tests pass fakes.
type migrateEnv struct {
	dial   func(cfg libvirt.Config, log zerolog.Logger) (migrateHV, error)
	ifaces func() ([]agent.Iface, error)
	routes func() ([]agent.Route, error)
	now    func() time.Time
}

func realMigrateEnv() migrateEnv {
	return migrateEnv{
		dial:   func(cfg libvirt.Config, log zerolog.Logger) (migrateHV, error) { return libvirt.New(cfg, log) },
		ifaces: agent.LookupIfaces,
		routes: func() ([]agent.Route, error) {
			f, err := os.Open("/proc/net/route")
			if err != nil {
				return nil, err
			}
			defer f.Close()
			return agent.ReadRoutes(f)
		},
		now: time.Now,
	}
}

type migrateFlags struct {
	iface, dest, vmUUID, destURI                        string
	host, stateDir, libvirt, libvirtURI, output, logLvl string
	sharedPaths                                         []string
	all, confirm, localDisks, rbdShared, unsafe         bool
	destPort, parallel                                  int
	cpuOC, memOC                                        float64
	timeout, vmTimeout                                  time.Duration
}

func newMigrate(stdout, stderr io.Writer, env migrateEnv) *cobra.Command {
	var f migrateFlags
	hostname, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "migrate --interface IF --dest IP (--vm-uuid UUID | --all) [--confirm]",
		Short: "live-migrate this host's VMs over a chosen network (works without the daemon)",
		Long: `chime-agent migrate is the operator's fallback when the control plane cannot reach
this host: it live-migrates one VM (--vm-uuid) or every VM (--all) to the host at
--dest, over the network of --interface (e.g. the storage network while the
management network is down). This host's libvirtd drives the migration peer to
peer: it connects to the destination's libvirtd at --dest (qemu+tcp://DEST/system
unless --dest-uri) and sends the memory (and copied disks) to DEST.

Without --confirm it only validates and prints the plan: the interface is up with
a link, DEST is reached through it, both libvirtds answer, and every VM that
should move fits on the destination (vCPUs and memory, after what already runs
there). A plan that does not fit fails whole: nothing is migrated. With
--confirm it migrates VM by VM and reads each one back (running on the
destination, gone from here).

Disks count as shared when under a --shared-path (or Ceph RBD, unless
--rbd-shared=false). VMs with local disks stay unless --migrate-local-disk-vms,
which copies their local file disks. Shut-off VMs move their definition only.

Each migration is recorded in --state-dir and reported to the daemon in the
agent's heartbeats once the daemon is reachable again, so it can record where
the VMs now run.

Exit status: 0 when every VM moved (or, without --confirm, when the plan is
valid); 1 when validation or a migration failed; 2 on bad flags.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return migrate(cmd.Context(), f, stdout, stderr, env)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.iface, "interface", "", "network interface the migration data leaves by (required)")
	fs.StringVar(&f.dest, "dest", "", "the destination host's address on that network (required)")
	fs.StringVar(&f.vmUUID, "vm-uuid", "", "migrate this VM (or --all)")
	fs.BoolVar(&f.all, "all", false, "migrate every VM of this host (or --vm-uuid)")
	fs.BoolVar(&f.confirm, "confirm", false, "really migrate (without it: validate and print the plan)")
	fs.BoolVar(&f.localDisks, "migrate-local-disk-vms", false, "also migrate VMs with local disks, copying those disks (slow: all their data crosses the network)")
	fs.StringArrayVar(&f.sharedPaths, "shared-path", nil, "directory on shared storage, the same on every host (repeatable)")
	fs.BoolVar(&f.rbdShared, "rbd-shared", true, "Ceph RBD disks count as shared")
	fs.BoolVar(&f.unsafe, "allow-unsafe", false, "skip libvirt's check that disks not copied are on a file system it knows is shared (only for shared storage libvirt cannot recognise; with local disks it corrupts them)")
	fs.IntVar(&f.destPort, "dest-port", 16509, "the destination libvirtd's TCP port")
	fs.StringVar(&f.destURI, "dest-uri", "", "the destination libvirtd's URI as this host's libvirtd reaches it (default qemu+tcp://DEST/system, or with the port)")
	fs.IntVar(&f.parallel, "parallel", 1, "migrations at once")
	fs.Float64Var(&f.cpuOC, "cpu-overcommit", 1, "vCPUs per destination CPU the capacity check allows")
	fs.Float64Var(&f.memOC, "memory-overcommit", 1, "memory overcommit the capacity check allows")
	fs.StringVar(&f.host, "host", hostname, "this host's name, for the output and the records")
	fs.StringVar(&f.stateDir, "state-dir", agent.DefaultStateDir, "the agent's state directory (where migrations are recorded)")
	fs.StringVar(&f.libvirt, "libvirt", "unix:/run/libvirt/libvirt-sock", "this host's libvirtd: unix:/path or host:port")
	fs.StringVar(&f.libvirtURI, "libvirt-uri", "qemu:///system", "libvirt driver URI")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "deadline of each libvirt call other than a migration")
	fs.DurationVar(&f.vmTimeout, "vm-timeout", 30*time.Minute, "deadline of each VM's migration (then it is aborted)")
	fs.StringVarP(&f.output, "output", "o", "table", "table or json")
	fs.StringVar(&f.logLvl, "log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	return cmd
}

// migrateOutput is the command's report (--output json).
type migrateOutput struct {
	DryRun    bool   `json:"dry_run"`
	Host      string `json:"host"`
	Interface string `json:"interface"`
	Source    string `json:"source_addr,omitempty"`
	Dest      string `json:"dest"`
	DestURI   string `json:"dest_uri"`
	// Destination is the capacity the plan was checked against.
	Destination *evacuator.HostReport `json:"destination,omitempty"`
	Moves       []migration.Move      `json:"moves"`
	Skipped     []migration.Skip      `json:"skipped"`
	Outcomes    []migration.Outcome   `json:"outcomes,omitempty"`
	Error       string                `json:"error,omitempty"`
}

func checkMigrateFlags(f migrateFlags) []error {
	var problems []error
	if f.iface == "" {
		problems = append(problems, errors.New("--interface is required (the network the migration data crosses)"))
	}
	switch ip := net.ParseIP(f.dest); {
	case f.dest == "":
		problems = append(problems, errors.New("--dest is required (the destination host's address on that network)"))
	case ip == nil:
		problems = append(problems, fmt.Errorf("--dest %q: want an IP address", f.dest))
	}
	switch {
	case f.all && f.vmUUID != "":
		problems = append(problems, errors.New("--vm-uuid and --all: give one of them, not both"))
	case !f.all && f.vmUUID == "":
		problems = append(problems, errors.New("one of --vm-uuid or --all is required"))
	case f.vmUUID != "" && !heartbeat.ValidUUID(f.vmUUID):
		problems = append(problems, fmt.Errorf("--vm-uuid %q: want a lower-case canonical UUID", f.vmUUID))
	}
	if f.destURI != "" {
		if u, err := url.Parse(f.destURI); err != nil || u.Host == "" {
			problems = append(problems, fmt.Errorf("--dest-uri %q: want a libvirt URI with a host, e.g. qemu+tcp://10.0.0.12/system", f.destURI))
		}
	}
	if f.destPort < 1 || f.destPort > 65535 {
		problems = append(problems, fmt.Errorf("--dest-port %d: want 1..65535", f.destPort))
	}
	for _, p := range f.sharedPaths {
		if !filepath.IsAbs(p) {
			problems = append(problems, fmt.Errorf("--shared-path %q: want an absolute path", p))
		}
	}
	if !filepath.IsAbs(f.stateDir) {
		problems = append(problems, fmt.Errorf("--state-dir %q: want an absolute path", f.stateDir))
	}
	if f.timeout <= 0 || f.vmTimeout <= 0 {
		problems = append(problems, errors.New("--timeout and --vm-timeout: want positive durations"))
	}
	if f.parallel < 1 || f.parallel > 16 {
		problems = append(problems, fmt.Errorf("--parallel %d: want 1..16", f.parallel))
	}
	if !(f.cpuOC > 0) || !(f.memOC > 0) {
		problems = append(problems, errors.New("--cpu-overcommit and --memory-overcommit: want positive ratios"))
	}
	if f.output != "table" && f.output != "json" {
		problems = append(problems, fmt.Errorf("--output %q: want table or json", f.output))
	}
	if f.host == "" {
		problems = append(problems, errors.New("--host is empty"))
	}
	if _, err := zerolog.ParseLevel(f.logLvl); err != nil || f.logLvl == "" {
		problems = append(problems, fmt.Errorf("--log-level %q: want debug, info, warn or error", f.logLvl))
	}
	return problems
}

func migrate(ctx context.Context, f migrateFlags, stdout, stderr io.Writer, env migrateEnv) error {
	if problems := checkMigrateFlags(f); len(problems) > 0 {
		return usageErr(errors.Join(problems...))
	}
	level, _ := zerolog.ParseLevel(f.logLvl)
	log := zerolog.New(stderr).Level(level).With().Timestamp().Str("service", "chime-agent").Str("component", "migrate").Str("host", f.host).Logger()
	dest := net.ParseIP(f.dest)
	destAddr := net.JoinHostPort(dest.String(), strconv.Itoa(f.destPort))
	out := migrateOutput{DryRun: !f.confirm, Host: f.host, Interface: f.iface, Dest: dest.String(), DestURI: f.destURI,
		Moves: []migration.Move{}, Skipped: []migration.Skip{}}
	if out.DestURI == "" {
		host := destAddr
		if f.destPort == 16509 {
			host = hostForURI(dest)
		}
		out.DestURI = "qemu+tcp://" + host + "/system"
	}
	fail := func(err error) error {
		out.Error = err.Error()
		if perr := printMigrate(stdout, f.output, out); perr != nil {
			err = errors.Join(err, perr)
		}
		return &exitError{code: exitFailure, err: err}
	}

	// The path: the interface and the route to the destination.
	ifaces, err := env.ifaces()
	if err != nil {
		return fail(fmt.Errorf("cannot migrate: %w", err))
	}
	var ifc *agent.Iface
	for i := range ifaces {
		if ifaces[i].Name == f.iface {
			ifc = &ifaces[i]
		}
	}
	if ifc == nil {
		return fail(fmt.Errorf("cannot migrate: --interface %s: no such interface on this host", f.iface))
	}
	routes, err := env.routes()
	if err != nil {
		return fail(fmt.Errorf("cannot migrate: read the route table: %w", err))
	}
	src, err := agent.CheckMigrationPath(*ifc, ifaces, routes, dest)
	if err != nil {
		return fail(fmt.Errorf("cannot migrate over %s: %w", f.iface, err))
	}
	out.Source = src.String()
	if err := agent.CheckStateDir(f.stateDir); err != nil {
		return fail(fmt.Errorf("cannot migrate: the migrations could not be recorded: %w", err))
	}

	local, err := env.dial(libvirt.Config{Host: f.host, Address: f.libvirt, URI: f.libvirtURI, CallTimeout: f.timeout}, log)
	if err != nil {
		return usageErr(fmt.Errorf("--libvirt: %w", err))
	}
	defer local.Close()
	remote, err := env.dial(libvirt.Config{Host: dest.String(), Address: destAddr, URI: "qemu:///system", CallTimeout: f.timeout}, log)
	if err != nil {
		return usageErr(fmt.Errorf("--dest: %w", err))
	}
	defer remote.Close()

	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, f.timeout) }
	cctx, cancel := call()
	doms, err := local.Domains(cctx, true)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("cannot migrate: list this host's domains: %w", err))
	}
	cctx, cancel = call()
	stats, err := remote.NodeStats(cctx)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("cannot migrate: the destination's libvirtd at %s does not answer: %w", destAddr, err))
	}
	cctx, cancel = call()
	there, err := remote.Domains(cctx, true)
	cancel()
	if err != nil {
		return fail(fmt.Errorf("cannot migrate: list the destination's domains: %w", err))
	}

	rules := evacuator.StorageRules{SharedPaths: f.sharedPaths, RBDShared: f.rbdShared}
	req, conflicts, err := migrateRequest(f, doms, there, stats, rules)
	if err != nil {
		return fail(err)
	}
	plan, perr := migration.NewPlan(req)
	out.Moves, out.Skipped = plan.Moves, append(conflicts, plan.Skipped...)
	plan.Skipped = out.Skipped
	if len(plan.Placement.Hosts) == 1 {
		out.Destination = &plan.Placement.Hosts[0]
	}
	if perr != nil {
		return fail(fmt.Errorf("cannot migrate: %w", perr))
	}
	if f.vmUUID != "" && len(plan.Moves) == 0 {
		return fail(fmt.Errorf("cannot migrate %s: %s", f.vmUUID, out.Skipped[0].Reason))
	}
	if !f.confirm {
		return printMigrate(stdout, f.output, out)
	}

	hosts := map[string]migration.Hypervisor{f.host: local, dest.String(): remote}
	res, xerr := migration.Execute(ctx, plan, migration.Config{
		Hosts: func(h string) (migration.Hypervisor, error) {
			if hv, ok := hosts[h]; ok {
				return hv, nil
			}
			return nil, fmt.Errorf("unknown host %s", h)
		},
		Endpoint: func(string) (migration.Endpoint, error) {
			return migration.Endpoint{DestURI: out.DestURI, DataURI: "tcp://" + hostForURI(dest)}, nil
		},
		Parallel: f.parallel, VMTimeout: f.vmTimeout, CallTimeout: f.timeout, AllowUnsafe: f.unsafe,
		Moved: func(_ context.Context, m migration.Move) error {
			// Durable before the line says done: the daemon must learn
			// where the VM went even if this process dies next.
			return agent.RecordMigrations(f.stateDir, heartbeat.LocalMigration{At: env.now().UTC(), UUID: m.VM.UUID, Name: m.VM.Name,
				Dest: dest.String(), Interface: f.iface, Moved: true})
		},
		Report: func(ps ...migration.Progress) {
			for _, p := range ps {
				if p.State == migration.VMRunning || p.State == migration.VMDone || p.State == migration.VMFailed {
					log.Info().Str("uuid", p.UUID).Str("domain", p.Name).Str("state", p.State).Msg(p.Detail)
				}
			}
		},
		Now: env.now, Log: log,
	})
	out.Outcomes = res.Outcomes
	var failed []heartbeat.LocalMigration
	for _, o := range res.Outcomes {
		if o.State == migration.VMFailed && !strings.Contains(o.Detail, "recording it failed") {
			failed = append(failed, heartbeat.LocalMigration{At: env.now().UTC(), UUID: o.Move.VM.UUID, Name: o.Move.VM.Name,
				Dest: dest.String(), Interface: f.iface, Error: o.Detail})
		}
	}
	if len(failed) > 0 {
		if err := agent.RecordMigrations(f.stateDir, failed...); err != nil {
			xerr = errors.Join(xerr, err)
		}
	}
	if xerr != nil {
		return fail(xerr)
	}
	return printMigrate(stdout, f.output, out)
}

// hostForURI brackets IPv6 addresses.
func hostForURI(ip net.IP) string {
	if ip.To4() == nil {
		return "[" + ip.String() + "]"
	}
	return ip.String()
}

// migrateRequest builds the planner's request: this host's domains (all,
// or the one asked for) and the destination as the only candidate, with
// what already runs there. A VM the destination already defines is not
// moved (conflicts).
func migrateRequest(f migrateFlags, doms, there []hypervisor.Domain, stats hypervisor.NodeStats, rules evacuator.StorageRules) (migration.Request, []migration.Skip, error) {
	dest := net.ParseIP(f.dest).String()
	cand := evacuator.Candidate{Name: dest, Eligible: true, CPUs: stats.CPUs, MemoryMiB: int64(stats.MemoryKiB / 1024),
		FreeMemoryMiB: int64(stats.FreeKiB / 1024), Load: -1}
	onDest := map[string]hypervisor.DomainState{}
	for _, d := range there {
		onDest[d.UUID] = d.State
		if !d.State.Active() {
			continue
		}
		if vm, err := evacuator.ParseVM(d.XML, rules); err == nil {
			cand.UsedVCPUs += max(vm.VCPUs, 1)
			cand.UsedMemoryMiB += vm.MemoryMiB
		}
	}
	req := migration.Request{Source: f.host, Target: dest, Storage: rules, Hosts: []evacuator.Candidate{cand},
		Limits: evacuator.Limits{CPUOvercommit: f.cpuOC, MemoryOvercommit: f.memOC}, MigrateLocalDiskVMs: f.localDisks}
	var conflicts []migration.Skip
	found := false
	for _, d := range doms {
		if f.vmUUID != "" && d.UUID != f.vmUUID {
			continue
		}
		found = true
		if st, ok := onDest[d.UUID]; ok {
			conflicts = append(conflicts, migration.Skip{UUID: d.UUID, Name: d.Name,
				Reason: fmt.Sprintf("the destination already defines this UUID (%s there): resolve by hand", st)})
			continue
		}
		req.Domains = append(req.Domains, migration.Domain{XML: d.XML, State: d.State})
	}
	if f.vmUUID != "" && !found {
		return req, nil, fmt.Errorf("cannot migrate: no domain with UUID %s on this host", f.vmUUID)
	}
	return req, conflicts, nil
}

func printMigrate(w io.Writer, format string, o migrateOutput) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(o)
	}
	var lines []string
	add := func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }
	if o.DryRun {
		add("host %s: dry run, nothing migrated (add --confirm to migrate)", o.Host)
	}
	if o.Source != "" {
		add("path: %s %s -> %s (destination libvirtd %s)", o.Interface, o.Source, o.Dest, o.DestURI)
	}
	if d := o.Destination; d != nil {
		add("destination %s: %d of %d vCPUs and %d of %d MiB allocated after the plan", d.Name, d.VCPUs, d.VCPUCapacity, d.MemoryMiB, d.MemoryCapacityMiB)
	}
	outcome := map[string]migration.Outcome{}
	for _, oc := range o.Outcomes {
		outcome[oc.Move.VM.UUID] = oc
	}
	for _, m := range o.Moves {
		how := "live"
		switch {
		case m.Offline:
			how = "offline (definition only)"
		case len(m.CopyDisks) > 0:
			how = "live, copying " + strings.Join(m.CopyDisks, ",")
		}
		action := "would migrate"
		detail := how
		if oc, ok := outcome[m.VM.UUID]; ok {
			action = map[string]string{migration.VMDone: "migrated", migration.VMFailed: "failed", migration.VMPending: "not started"}[oc.State]
			detail = oc.Detail
		}
		add("  %-14s %-24s %s  %s", action, m.VM.Name, m.VM.UUID, detail)
	}
	for _, s := range o.Skipped {
		add("  %-14s %-24s %s  %s", "not moved", s.Name, s.UUID, s.Reason)
	}
	if o.Error != "" {
		add("error: %s", o.Error)
	}
	for _, l := range lines {
		if _, err := fmt.Fprintln(w, l); err != nil {
			return err
		}
	}
	return nil
}
