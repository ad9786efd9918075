package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/operations"
)

// maxPollMisses is how many polls in a row may find the daemon unreachable
// before task wait gives up: a daemon restart takes a few seconds (about
// ten at the default --poll-interval of 1s).
const maxPollMisses = 10

func newTaskCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "task",
		Short: "Show, follow and list the tasks operations run",
		Long: `Every host operation runs as a task on the daemon, with per-VM progress and
a final result. 'task wait' follows one until it ends and exits by its
outcome; 'task show' prints one as it is now and exits 0.

` + exitCodesHelp,
	}
	c.AddCommand(newTaskShowCmd(), newTaskWaitCmd(), newTaskListCmd(), newTaskCancelCmd())
	return c
}

func newTaskShowCmd() *cobra.Command {
	var f apiFlags
	c := &cobra.Command{
		Use:               "show ID",
		Short:             "One task as it is now: what was asked, by whom, per-VM progress, result",
		Long:              "One task as it is now: what was asked, by whom, per-VM progress and result. Exits 0 whatever the task's state; use 'task wait' to branch on the outcome.\n\n" + exitCodesHelp,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTaskIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return showTaskAfter(cmd, &f, func(ctx context.Context, cl *api.Client) (operations.Task, error) { return cl.Task(ctx, args[0]) })
		},
	}
	f.register(c)
	c.SetContext(context.Background())
	return c
}

func newTaskCancelCmd() *cobra.Command {
	var f apiFlags
	var reason string
	c := &cobra.Command{
		Use:   "cancel ID",
		Short: "End an evacuation task by hand: VMs still waiting stay where they are",
		Long: `End an open evacuation task (evac-…, rebuild-…) by hand. VMs already
running elsewhere stay there; VMs still waiting for a host are no longer
re-planned (rebuild them later with 'host rebuild'). A rebuild in flight
finishes first. The cancel is recorded in the history with who and why.

` + exitCodesHelp,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTaskIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return showTaskAfter(cmd, &f, func(ctx context.Context, cl *api.Client) (operations.Task, error) {
				return cl.CancelTask(ctx, args[0], reason)
			})
		},
	}
	f.register(c)
	c.Flags().StringVar(&reason, "reason", "", "why, for the history")
	c.SetContext(context.Background())
	return c
}

// waitFlags are the flags of anything that follows a task.
type waitFlags struct {
	apiFlags
	waitFor time.Duration
	poll    time.Duration
}

func newTaskWaitCmd() *cobra.Command {
	var f waitFlags
	c := &cobra.Command{
		Use:   "wait ID",
		Short: "Follow a task until it ends, a line per VM step, and exit by its outcome",
		Long: `Follow a task until it ends, printing a line each time a VM's step changes,
then the result. Exits 0 if the task succeeded, 1 if it failed, was
interrupted or any VM failed; a finished task is reported at once.
With --output json the progress lines go to stderr and the final task, as
JSON, to stdout.

` + exitCodesHelp,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeTaskIDs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.waitFor <= 0 || f.poll <= 0 {
				return usageErr(fmt.Errorf("--wait-timeout %v and --poll-interval %v must be positive", f.waitFor, f.poll))
			}
			_, cl, err := f.connect()
			if err != nil {
				return err
			}
			t, err := call(cmd.Context(), &f.apiFlags, func(ctx context.Context) (operations.Task, error) { return cl.Task(ctx, args[0]) })
			if err != nil {
				return err
			}
			return followTask(cmd, cl, &f, t)
		},
	}
	f.register(c)
	c.Flags().DurationVar(&f.waitFor, "wait-timeout", time.Hour, "give up following the task after this long (the task goes on)")
	c.Flags().DurationVar(&f.poll, "poll-interval", time.Second, "how often to read the task")
	c.SetContext(context.Background())
	return c
}

func newTaskListCmd() *cobra.Command {
	var f apiFlags
	var host string
	var limit int
	c := &cobra.Command{
		Use:   "list",
		Short: "Tasks, oldest first, of one host (--host) or of all",
		Long:  "Tasks, oldest first, of one host (--host) or of all.\n\n" + exitCodesHelp,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 1 {
				return usageErr(fmt.Errorf("--limit %d: must be at least 1", limit))
			}
			_, cl, err := f.connect()
			if err != nil {
				return err
			}
			ts, err := call(cmd.Context(), &f, func(ctx context.Context) ([]operations.Task, error) { return cl.Tasks(ctx, host) })
			if err != nil {
				return err
			}
			if len(ts) > limit {
				ts = ts[len(ts)-limit:]
			}
			if f.json() {
				if ts == nil {
					ts = []operations.Task{}
				}
				return writeJSONOut(cmd.OutOrStdout(), ts)
			}
			printTasks(cmd.OutOrStdout(), ts)
			return nil
		},
	}
	f.register(c)
	c.Flags().StringVar(&host, "host", "", "only this host's tasks")
	c.Flags().IntVar(&limit, "limit", 50, "newest N tasks")
	_ = c.RegisterFlagCompletionFunc("host", completeHosts)
	c.SetContext(context.Background())
	return c
}

// followTask polls the task until it is done, printing each VM's step as it
// changes, then the result. The task keeps running on the daemon whatever
// happens here (Ctrl-C, --wait-timeout, a lost daemon).
func followTask(cmd *cobra.Command, cl *api.Client, f *waitFlags, t operations.Task) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, f.waitFor)
	defer cancel()
	out := cmd.OutOrStdout()
	if f.json() {
		out = cmd.ErrOrStderr() // stdout holds one JSON document
	}
	p := newProgress(out)
	follow := func(why string) error {
		return failureErr(fmt.Errorf("%s; task %s (%s %s) goes on on the daemon: chime-fence task wait %s", why, t.ID, t.Op, t.Host, t.ID))
	}
	tick := time.NewTicker(f.poll)
	defer tick.Stop()
	misses := 0
	for {
		p.update(t)
		if t.State.Done() {
			break
		}
		select {
		case <-ctx.Done():
			return follow(waitStopped(ctx, f.waitFor))
		case <-tick.C:
		}
		nt, err := call(ctx, &f.apiFlags, func(ctx context.Context) (operations.Task, error) { return cl.Task(ctx, t.ID) })
		if ctx.Err() != nil {
			return follow(waitStopped(ctx, f.waitFor))
		}
		var ee *exitError
		if err != nil && errors.As(err, &ee) && ee.code == exitUnreachable && misses < maxPollMisses {
			misses++
			fmt.Fprintf(cmd.ErrOrStderr(), "daemon not answering (%d/%d), still following task %s\n", misses, maxPollMisses, t.ID)
			continue
		}
		if err != nil {
			return err
		}
		misses = 0
		t = nt
	}
	p.finish(t)
	if f.json() {
		if err := writeJSONOut(cmd.OutOrStdout(), t); err != nil {
			return err
		}
	}
	return taskExit(t)
}

func waitStopped(ctx context.Context, waitFor time.Duration) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Sprintf("stopped following after --wait-timeout %v", waitFor)
	}
	return "stopped following (interrupted)"
}

// completeTaskIDs completes task ids from the daemon, newest first.
func completeTaskIDs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	file, _ := cmd.Flags().GetString("config")
	cfg, err := loadConfig(file)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cl, err := opClient(cfg)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ts, err := cl.Tasks(ctx, "")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for i := len(ts) - 1; i >= 0; i-- {
		if len(ts[i].ID) >= len(toComplete) && ts[i].ID[:len(toComplete)] == toComplete {
			out = append(out, ts[i].ID+"\t"+string(ts[i].Op)+" "+ts[i].Host+" ("+string(ts[i].State)+")")
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
}

// showTaskAfter runs one task call against the daemon and prints the task
// it returns (text, or JSON with -o json).
func showTaskAfter(cmd *cobra.Command, f *apiFlags, do func(context.Context, *api.Client) (operations.Task, error)) error {
	_, cl, err := f.connect()
	if err != nil {
		return err
	}
	t, err := call(cmd.Context(), f, func(ctx context.Context) (operations.Task, error) { return do(ctx, cl) })
	if err != nil {
		return err
	}
	if f.json() {
		return writeJSONOut(cmd.OutOrStdout(), t)
	}
	printTask(cmd.OutOrStdout(), t)
	return nil
}
