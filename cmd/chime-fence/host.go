package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/operations"
)

// envTokenFile overrides controller.api_token_file, so an operator can use
// their own token with the shared configuration file.
const envTokenFile = "CHIME_FENCE_API_TOKEN_FILE"

// opClient is the daemon's API client for the operator commands. The token
// comes from a file (never argv): $CHIME_FENCE_API_TOKEN_FILE if set, else
// the configuration's controller.api_token_file. When the daemon serves
// TLS (controller.tls_cert_file), the client speaks HTTPS and trusts that
// certificate.
func opClient(cfg *configs.Config) (*api.Client, error) {
	if f := os.Getenv(envTokenFile); f != "" {
		c := *cfg
		c.Controller.APITokenFile = f
		cfg = &c
	}
	c, err := apiClient(cfg)
	if err != nil {
		return nil, err
	}
	if err := useTLS(c, cfg.Controller.TLSCertFile); err != nil {
		return nil, err
	}
	return c, nil
}

// useTLS switches c to HTTPS trusting the certificates in certFile (the
// daemon's own, usually self-signed); "" leaves c alone.
func useTLS(c *api.Client, certFile string) error {
	if certFile == "" {
		return nil
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return usageErr(fmt.Errorf("controller.tls_cert_file: %w", err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return usageErr(fmt.Errorf("controller.tls_cert_file %s: no PEM certificate in it", certFile))
	}
	c.Base = "https://" + strings.TrimPrefix(c.Base, "http://")
	c.HTTP = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	return nil
}

// apiFlags are the flags every operator command shares.
type apiFlags struct {
	config  string
	output  string
	timeout time.Duration
}

func (f *apiFlags) register(c *cobra.Command) {
	c.Flags().StringVarP(&f.config, "config", "c", defaultConfig(), "configuration file (daemon address and API token file)")
	c.Flags().StringVarP(&f.output, "output", "o", "table", "table or json")
	c.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "deadline of each API call")
}

// connect checks the flags, loads the configuration and builds the client.
func (f *apiFlags) connect() (*configs.Config, *api.Client, error) {
	if err := checkTableOutput(f.output); err != nil {
		return nil, nil, err
	}
	if f.timeout <= 0 {
		return nil, nil, usageErr(fmt.Errorf("--timeout %v: must be positive", f.timeout))
	}
	cfg, err := loadConfig(f.config)
	if err != nil {
		return nil, nil, err
	}
	c, err := opClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, c, nil
}

func (f *apiFlags) json() bool { return f.output == "json" }

// call runs one API call under the --timeout deadline.
func call[T any](ctx context.Context, f *apiFlags, fn func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	v, err := fn(ctx)
	return v, apiErr(err)
}

func newHostCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "host",
		Short: "List and show hosts; run operations on one (migrate, drain, rebuild, enable, disable, fence, confirm-down)",
		Long: `List and show hosts, and run an operation on one. Every operation is a task
on the daemon: the host is locked while it runs, and a conflicting operation
is refused, never queued.

Destructive operations (migrate, drain, rebuild, fence, confirm-down) ask you
to type the host name unless --yes; without a terminal and without --yes
they refuse.

The API token is read from $` + envTokenFile + ` if set, else from the
configuration's controller.api_token_file; never from the command line.

` + exitCodesHelp,
	}
	c.AddCommand(newHostListCmd(), newHostShowCmd())
	for _, s := range opSpecs {
		c.AddCommand(newHostOpCmd(s))
	}
	return c
}

func newHostListCmd() *cobra.Command {
	var f apiFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "Every host: admin and monitor state, heartbeat, verdict, fence, running task",
		Long:  "Every host: admin and monitor state, heartbeat, verdict, fence readiness, latest fence and the task holding its lock.\n\n" + exitCodesHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cl, err := f.connect()
			if err != nil {
				return err
			}
			hs, err := call(cmd.Context(), &f, cl.Hosts)
			if err != nil {
				return err
			}
			if f.json() {
				if hs == nil {
					hs = []api.HostInfo{}
				}
				return writeJSONOut(cmd.OutOrStdout(), hs)
			}
			printHosts(cmd.OutOrStdout(), hs)
			return nil
		},
	}
	f.register(c)
	c.SetContext(context.Background())
	return c
}

func newHostShowCmd() *cobra.Command {
	var f apiFlags
	c := &cobra.Command{
		Use:               "show HOST",
		Short:             "One host in detail, with its latest fence and the task holding its lock",
		Long:              "One host in detail, with its latest fence and the task holding its lock.\n\n" + exitCodesHelp,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeHostArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, cl, err := f.connect()
			if err != nil {
				return err
			}
			h, err := call(cmd.Context(), &f, func(ctx context.Context) (api.HostInfo, error) { return cl.ShowHost(ctx, args[0]) })
			if err != nil {
				return err
			}
			if f.json() {
				return writeJSONOut(cmd.OutOrStdout(), h)
			}
			printHost(cmd.OutOrStdout(), h)
			return nil
		},
	}
	f.register(c)
	c.SetContext(context.Background())
	return c
}

// opSpec describes one host operation's command.
type opSpec struct {
	op          operations.Op
	short, long string
	destructive bool
	target      bool // --target
	localDisks  bool // --migrate-local-disk-vms
	needReason  bool // --reason is required
	force       bool // --force overrides the daemon's own contrary evidence
}

var opSpecs = []opSpec{
	{op: operations.OpMigrate, destructive: true, target: true, localDisks: true,
		short: "Live-migrate every VM off the host (to --target, or placed by the scheduler)",
		long: `Live-migrate every VM off the host, to --target or wherever the scheduler
places them. The whole plan is checked for capacity first: if it cannot fit,
nothing moves. VMs with local disks stay unless --migrate-local-disk-vms
(their disks are copied: slow, and heavy on the network).`},
	{op: operations.OpDrain, destructive: true,
		short: "Stop every VM on the host and mark it drained (nothing restarts them)",
		long: `Stop every VM on the host and mark it drained: its agent never starts a VM
while it is drained, even after a reboot. Drain before a rebuild so a VM
cannot run in two places.`},
	{op: operations.OpRebuild, destructive: true, target: true,
		short: "Recreate a drained host's shared-disk VMs on other hosts",
		long: `Recreate a drained host's VMs on other hosts (on --target, or placed by the
scheduler) from their saved domain XML. Only a drained host can be rebuilt.
VMs with local disks are not rebuilt: their data is on the host; the task
reports them as skipped.`},
	{op: operations.OpEnable, short: "Let the scheduler place VMs on the host again (from disabled or drained)"},
	{op: operations.OpDisable, short: "Keep new VMs off the host; the VMs on it keep running"},
	{op: operations.OpFence, destructive: true, force: true,
		short: "Fence the host now with its rack's fence levels (power it off, read back)",
		long: `Fence the host now: run its rack's fence levels in order (agent drain,
IPMI, Redfish …) until one verifies the host off by reading it back.
Refused while the storm guard is paused or the daemon is in observe mode,
unless --force with a --reason (recorded with what it overrode).`},
	{op: operations.OpConfirmDown, destructive: true, needReason: true, force: true,
		short: "Attest that an unreachable host is off when no fence level could prove it",
		long: `Attest, as an operator, that an unreachable host is really off (e.g. you
pulled its power cords) when no fence level could prove it, say because its
BMC is dead. It is recorded with who you are and --reason, and unlocks the
evacuation of its VMs: if the host is in fact running, its VMs will run
twice. Be sure. Refused when the host heartbeats, when its BMC read power
on during its current silence, or while the storm guard is paused; --force
overrides the last two and is recorded with what it overrode.`},
}

// opFlags are an operation command's own flags.
type opFlags struct {
	apiFlags
	target     string
	localDisks bool
	reason     string
	force      bool
	yes        bool
	wait       bool
	noWait     bool
	waitFor    time.Duration
	poll       time.Duration
}

func newHostOpCmd(s opSpec) *cobra.Command {
	var f opFlags
	long := s.long
	if long == "" {
		long = s.short + "."
	}
	long += `

With --wait (the default on a terminal) the command follows the task and
prints a line each time a VM's step changes, then the result; with --no-wait
(the default otherwise) it prints the task id and returns: follow it with
'chime-fence task wait ID'.

` + exitCodesHelp
	use := string(s.op) + " HOST"
	c := &cobra.Command{
		Use:               use,
		Short:             s.short,
		Long:              long,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeHostArg,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runHostOp(cmd, s, &f, args[0])
		},
	}
	f.register(c)
	fl := c.Flags()
	if s.target {
		fl.StringVar(&f.target, "target", "", "the host that receives the VMs (default: placed by the scheduler)")
		_ = c.RegisterFlagCompletionFunc("target", completeHosts)
	}
	if s.localDisks {
		fl.BoolVar(&f.localDisks, "migrate-local-disk-vms", false, "also migrate VMs with local disks, copying their storage")
	}
	if s.needReason {
		fl.StringVar(&f.reason, "reason", "", "why (required; recorded in the history with your token's name)")
		_ = c.MarkFlagRequired("reason")
	} else {
		fl.StringVar(&f.reason, "reason", "", "why, for the history")
	}
	if s.destructive {
		fl.BoolVarP(&f.yes, "yes", "y", false, "do not ask to type the host name")
	}
	if s.force {
		fl.BoolVar(&f.force, "force", false, "act against the daemon's own evidence (BMC reads on, storm guard, observe mode); needs --reason")
	}
	fl.BoolVar(&f.wait, "wait", false, "follow the task until it ends (default on a terminal)")
	fl.BoolVar(&f.noWait, "no-wait", false, "print the task id and return at once")
	fl.DurationVar(&f.waitFor, "wait-timeout", time.Hour, "with --wait, give up following the task after this long (the task goes on)")
	fl.DurationVar(&f.poll, "poll-interval", time.Second, "with --wait, how often to read the task")
	c.MarkFlagsMutuallyExclusive("wait", "no-wait")
	c.SetContext(context.Background())
	return c
}

func runHostOp(cmd *cobra.Command, s opSpec, f *opFlags, host string) error {
	if (s.needReason || f.force) && strings.TrimSpace(f.reason) == "" {
		return usageErr(fmt.Errorf("%s: --reason must say why (it goes into the history)", s.op))
	}
	if f.waitFor <= 0 || f.poll <= 0 {
		return usageErr(fmt.Errorf("--wait-timeout %v and --poll-interval %v must be positive", f.waitFor, f.poll))
	}
	cfg, cl, err := f.connect()
	if err != nil {
		return err
	}
	if _, ok := cfg.Host(host); !ok {
		return usageErr(fmt.Errorf("no host %q in %s (hosts: %v)", host, f.config, cfg.HostNames()))
	}
	if f.target != "" {
		if f.target == host {
			return usageErr(fmt.Errorf("--target %s is the host being emptied", f.target))
		}
		if _, ok := cfg.Host(f.target); !ok {
			return usageErr(fmt.Errorf("--target: no host %q in %s (hosts: %v)", f.target, f.config, cfg.HostNames()))
		}
	}
	if s.destructive && !f.yes {
		describe := func() (string, error) {
			h, err := call(cmd.Context(), &f.apiFlags, func(ctx context.Context) (api.HostInfo, error) { return cl.ShowHost(ctx, host) })
			if err != nil {
				return "", err
			}
			return hostSummary(h, s.op), nil
		}
		if err := confirmHost(cmd.InOrStdin(), cmd.ErrOrStderr(), host, string(s.op), describe); err != nil {
			return err
		}
	}
	req := operations.Request{Target: f.target, MigrateLocalDiskVMs: f.localDisks, Reason: f.reason, Force: f.force}
	t, err := call(cmd.Context(), &f.apiFlags, func(ctx context.Context) (operations.Task, error) {
		return cl.StartOperation(ctx, host, s.op, req)
	})
	if err != nil {
		return err
	}
	wait := f.wait || (!f.noWait && terminal(cmd.OutOrStdout()))
	if !wait {
		if f.json() {
			return writeJSONOut(cmd.OutOrStdout(), t)
		}
		fmt.Fprintln(cmd.OutOrStdout(), t.ID)
		fmt.Fprintf(cmd.ErrOrStderr(), "%s %s started as task %s; follow it with: chime-fence task wait %s\n", s.op, host, t.ID, t.ID)
		return nil
	}
	return followTask(cmd, cl, &waitFlags{apiFlags: f.apiFlags, waitFor: f.waitFor, poll: f.poll}, t)
}

// completeHostArg completes the HOST argument.
func completeHostArg(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return completeHosts(cmd, args, toComplete)
}

// completeHosts completes host names, from the daemon when it answers
// quickly, else from the configuration file.
func completeHosts(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	file, _ := cmd.Flags().GetString("config")
	cfg, err := configs.Load(file)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := cfg.HostNames()
	if cl, err := opClient(cfg); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if hs, err := cl.Hosts(ctx); err == nil {
			names = names[:0:0]
			for _, h := range hs {
				names = append(names, h.Name)
			}
		}
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, toComplete) {
			out = append(out, n)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// taskExit is a finished task's exit code: any failed VM makes even a
// "succeeded" task partial.
func taskExit(t operations.Task) error {
	switch {
	case t.State == operations.TaskSucceeded && countVMs(t)[operations.VMFailed] == 0:
		return nil
	case t.State == operations.TaskSucceeded:
		return failureErr(fmt.Errorf("task %s (%s %s) partly failed: %s", t.ID, t.Op, t.Host, vmSummary(t)))
	case t.State.Done():
		reason := t.Error
		if reason == "" {
			reason = "no reason given"
		}
		return failureErr(fmt.Errorf("task %s (%s %s) %s: %s", t.ID, t.Op, t.Host, t.State, reason))
	}
	return failureErr(errors.New("task " + t.ID + " is still running"))
}

// hostSummary is what the operator sees before confirming an operation.
func hostSummary(h api.HostInfo, op operations.Op) string {
	s := fmt.Sprintf("%s: admin %s, monitor %s, verdict %s, %d domains, last fence %s", h.Name, h.Admin, h.Monitor, h.Verdict, h.Domains, fenceShort(h.Fence))
	if h.Fence == nil {
		s = strings.TrimSuffix(s, "-") + "none"
	}
	if h.Lock != nil {
		s += ", locked by " + h.Lock.String()
	}
	if op == operations.OpConfirmDown {
		s += fmt.Sprintf("\nIf %s is in fact running, its VMs will run twice.", h.Name)
	}
	return s
}
