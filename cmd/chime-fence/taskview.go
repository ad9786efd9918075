package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/operations"
)

const timeFmt = "2006-01-02 15:04:05"

// progress prints a task's live progress: a header once, then a line each
// time a VM's state, target or detail changes, then the result. It holds
// only what it has printed, so feeding it the same snapshot twice prints
// nothing new.
type progress struct {
	w      io.Writer
	header bool
	seen   map[string]operations.VMProgress
	done   bool
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, seen: map[string]operations.VMProgress{}}
}

// vmKey matches operations' rule: a VM is its UUID, else its name.
func vmKey(v operations.VMProgress) string {
	if v.UUID != "" {
		return "u:" + v.UUID
	}
	return "n:" + v.Name
}

func (p *progress) update(t operations.Task) {
	if !p.header {
		p.header = true
		fmt.Fprintf(p.w, "task %s: %s\n", t.ID, taskWhat(t))
	}
	width := 0
	for _, v := range t.Progress {
		width = max(width, len(v.Name))
	}
	for _, v := range t.Progress {
		k := vmKey(v)
		if old, ok := p.seen[k]; ok && old.State == v.State && old.Target == v.Target && old.Detail == v.Detail {
			continue
		}
		p.seen[k] = v
		fmt.Fprintln(p.w, vmLine(v, width))
	}
}

// finish prints the result line once.
func (p *progress) finish(t operations.Task) {
	if p.done {
		return
	}
	p.done = true
	line := fmt.Sprintf("task %s %s", t.ID, t.State)
	if !t.Finished.IsZero() && !t.Created.IsZero() {
		line += " after " + t.Finished.Sub(t.Created).Round(time.Millisecond).String()
	}
	switch {
	case t.Error != "":
		line += ": " + t.Error
	case t.Result != "":
		line += ": " + t.Result
	}
	if len(t.Progress) > 0 {
		line += " [" + vmSummary(t) + "]"
	}
	fmt.Fprintln(p.w, line)
}

// taskWhat is "drain r1-node1 by alice (reason …)" and the like.
func taskWhat(t operations.Task) string {
	s := string(t.Op) + " " + t.Host
	if t.Target != "" {
		s += " → " + t.Target
	}
	if t.MigrateLocalDiskVMs {
		s += " (with local-disk VMs)"
	}
	if t.Actor != "" {
		s += " by " + t.Actor
	}
	if t.Reason != "" {
		s += ": " + oneLine(t.Reason)
	}
	return s
}

func vmLine(v operations.VMProgress, width int) string {
	var b strings.Builder
	b.WriteString("  ")
	if !v.At.IsZero() {
		b.WriteString(v.At.Local().Format("15:04:05") + " ")
	}
	fmt.Fprintf(&b, "%-*s  %-7s", width, v.Name, v.State)
	if v.Target != "" {
		b.WriteString("  → " + v.Target)
	}
	if v.Detail != "" {
		b.WriteString("  " + oneLine(v.Detail))
	}
	return strings.TrimRight(b.String(), " ")
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// countVMs counts a task's VMs by state.
func countVMs(t operations.Task) map[string]int {
	n := map[string]int{}
	for _, v := range t.Progress {
		n[v.State]++
	}
	return n
}

// vmSummary is "2 done, 1 failed, 1 skipped" in a fixed order.
func vmSummary(t operations.Task) string {
	n := countVMs(t)
	var parts []string
	for _, st := range []string{operations.VMDone, operations.VMFailed, operations.VMSkipped, operations.VMRunning, operations.VMPending} {
		if n[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	if len(parts) == 0 {
		return "no VMs"
	}
	return strings.Join(parts, ", ")
}

func printTask(w io.Writer, t operations.Task) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Task:\t%s\n", t.ID)
	fmt.Fprintf(tw, "Operation:\t%s %s\n", t.Op, t.Host)
	if t.Target != "" {
		fmt.Fprintf(tw, "Target:\t%s\n", t.Target)
	}
	if t.MigrateLocalDiskVMs {
		fmt.Fprintf(tw, "Local-disk VMs:\tmigrated too\n")
	}
	fmt.Fprintf(tw, "Actor:\t%s\n", t.Actor)
	if t.Reason != "" {
		fmt.Fprintf(tw, "Reason:\t%s\n", oneLine(t.Reason))
	}
	fmt.Fprintf(tw, "State:\t%s\n", t.State)
	fmt.Fprintf(tw, "Created:\t%s\n", fmtTime(t.Created))
	if !t.Finished.IsZero() {
		fmt.Fprintf(tw, "Finished:\t%s (took %s)\n", fmtTime(t.Finished), t.Finished.Sub(t.Created).Round(time.Millisecond))
	} else {
		fmt.Fprintf(tw, "Updated:\t%s\n", fmtTime(t.Updated))
	}
	if t.Result != "" {
		fmt.Fprintf(tw, "Result:\t%s\n", oneLine(t.Result))
	}
	if t.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", oneLine(t.Error))
	}
	fmt.Fprintf(tw, "VMs:\t%s\n", vmSummary(t))
	tw.Flush()
	if len(t.Progress) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tUUID\tSTATE\tTARGET\tAT\tDETAIL")
	for _, v := range t.Progress {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, dash(v.UUID), v.State, dash(v.Target), fmtTime(v.At), oneLine(v.Detail))
	}
	tw.Flush()
}

func printTasks(w io.Writer, ts []operations.Task) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOST\tOP\tSTATE\tACTOR\tCREATED\tVMS\tRESULT")
	for _, t := range ts {
		res := t.Result
		if t.Error != "" {
			res = t.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Host, t.Op, t.State, dash(t.Actor), fmtTime(t.Created), vmSummary(t), oneLine(res))
	}
	tw.Flush()
}

func printHosts(w io.Writer, hs []api.HostInfo) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tRACK\tADMIN\tMONITOR\tHEARTBEAT\tVERDICT\tREADINESS\tFENCE\tTASK\tDOMAINS")
	for _, h := range hs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", h.Name, dash(h.Rack), h.Admin, h.Monitor, heartbeatAge(h),
			h.Verdict, readyWord(h), fenceShort(h.Fence), lockShort(h.Lock), h.Domains)
	}
	tw.Flush()
}

func printHost(w io.Writer, h api.HostInfo) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Host:\t%s\n", h.Name)
	fmt.Fprintf(tw, "Rack:\t%s\n", dash(h.Rack))
	fmt.Fprintf(tw, "Admin:\t%s\n", h.Admin)
	fmt.Fprintf(tw, "Monitor:\t%s\n", h.Monitor)
	if h.Fault != "" {
		fmt.Fprintf(tw, "Fault:\t%s\n", oneLine(h.Fault))
	}
	fmt.Fprintf(tw, "Heartbeat:\t%s\n", heartbeatAge(h))
	if h.AgentVersion != "" {
		fmt.Fprintf(tw, "Agent:\t%s\n", h.AgentVersion)
	}
	if h.LastRefused != "" {
		fmt.Fprintf(tw, "Refused heartbeat:\t%s (%s)\n", oneLine(h.LastRefused), h.LastRefusedAt.Format(time.RFC3339))
	}
	v := h.Verdict.String()
	if h.VerdictReason != "" {
		v += ": " + oneLine(h.VerdictReason)
	}
	fmt.Fprintf(tw, "Verdict:\t%s\n", v)
	if h.Incident != "" {
		fmt.Fprintf(tw, "Incident:\t%s\n", h.Incident)
	}
	r := readyWord(h)
	if h.Readiness != nil && h.Readiness.Summary != "" {
		r += ": " + oneLine(h.Readiness.Summary)
	}
	fmt.Fprintf(tw, "Fence readiness:\t%s\n", r)
	if h.NotEvacuable != "" {
		fmt.Fprintf(tw, "Evacuation:\t%s\n", h.NotEvacuable)
	}
	if f := h.Fence; f != nil {
		s := f.State
		if f.Proven {
			s += " (proven)"
		}
		if f.Level != "" {
			s += ", level " + f.Level
		}
		if !f.Finished.IsZero() {
			s += ", " + fmtTime(f.Finished)
		} else if !f.Started.IsZero() {
			s += ", started " + fmtTime(f.Started)
		}
		if f.Reason != "" {
			s += ": " + oneLine(f.Reason)
		}
		fmt.Fprintf(tw, "Last fence:\t%s\n", s)
	} else {
		fmt.Fprintf(tw, "Last fence:\tnone\n")
	}
	if h.Lock != nil {
		fmt.Fprintf(tw, "Locked by:\t%s since %s\n", h.Lock, fmtTime(h.Lock.Since))
	} else {
		fmt.Fprintf(tw, "Locked by:\tnothing\n")
	}
	fmt.Fprintf(tw, "Domains:\t%d\n", h.Domains)
	if h.Active >= 0 {
		fmt.Fprintf(tw, "Active:\t%d (last heartbeat)\n", h.Active)
	}
	for _, d := range h.Assigned {
		fmt.Fprintf(tw, "  %s\t%s\n", d.Name, d.UUID)
	}
	for _, d := range h.Evicted {
		fmt.Fprintf(tw, "  %s\t%s (runs elsewhere: to be destroyed and undefined here)\n", d.Name, d.UUID)
	}
	tw.Flush()
}

func heartbeatAge(h api.HostInfo) string {
	if h.LastHeartbeat.IsZero() {
		return "never"
	}
	return time.Duration(h.HeartbeatAge).Round(time.Millisecond).String() + " ago"
}

func readyWord(h api.HostInfo) string {
	switch {
	case h.Readiness == nil:
		return "unchecked"
	case h.Readiness.Ready:
		return "ready"
	}
	return "NOT READY"
}

func fenceShort(f *api.FenceSummary) string {
	if f == nil {
		return "-"
	}
	if f.Proven {
		return f.State + " (proven)"
	}
	return f.State
}

func lockShort(h *operations.Holder) string {
	if h == nil {
		return "-"
	}
	if h.TaskID != "" {
		return string(h.Op) + " " + h.TaskID
	}
	return h.Owner
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(timeFmt)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
