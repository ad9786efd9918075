package recovery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// The operator's operations (fence, confirm-down, rebuild) run the same
// pipeline as a host-down verdict, with the operator's task id as the
// correlation id. Their caller holds the host's lock (operations.Manager);
// these methods never take it.

// ErrRefused: the host's state does not allow the operation now. The
// operations package checks first; this is the last look, at run time.
var ErrRefused = errors.New("refused")

// FenceNow fences host because an operator asked: the host's fence levels,
// verified by read-back, under the same admission limits as an automatic
// fence; a verified fence drains the host. It evacuates nothing: the
// operator rebuilds when ready.
func (c *Coordinator) FenceNow(ctx context.Context, host, taskID, actor, reason string) (string, error) {
	log := c.log.With().Str("host", host).Str("correlation_id", taskID).Str("actor", actor).Logger()
	st, err := c.deps.Cluster.Host(host)
	if err != nil {
		return "", err
	}
	setup, err := c.deps.Setup(host)
	if err != nil {
		return "", fmt.Errorf("fence setup of %s: %w", host, err)
	}
	adm, done := c.admit(host, st.Rack, setup.Limits, c.deps.Now())
	if !adm.OK {
		return "", fmt.Errorf("%w: fence limits: %s", ErrRefused, adm.Reason)
	}
	defer done()
	why := fmt.Sprintf("operator %s asked (task %s): %s", actor, taskID, orNone(reason))
	rec, err := c.fence(ctx, host, st.Rack, taskID, why, st.Monitor.String(), setup, log)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s fenced: %s; the host is drained (rebuild moves its VMs)", host, recordProof(rec)), nil
}

// ConfirmDown records an operator's word that host is off when no fence
// level could prove it (a dead BMC): who, why and when go into the fence
// journal as a confirmed fence, the host is drained, and the evacuation
// the fence would have unlocked runs if the host's policy evacuates.
// progress sees the evacuation task as it advances.
func (c *Coordinator) ConfirmDown(ctx context.Context, host, taskID, actor, reason string, progress func(evacuator.Task)) (string, error) {
	log := c.log.With().Str("host", host).Str("correlation_id", taskID).Str("actor", actor).Logger()
	if reason == "" {
		return "", fmt.Errorf("%w: confirm-down of %s needs a reason", ErrRefused, host)
	}
	st, err := c.deps.Cluster.Host(host)
	if err != nil {
		return "", err
	}
	if st.Monitor != node.Unreachable {
		return "", fmt.Errorf("%w: %s is %s, not unreachable: a host that answers is not confirmed down", ErrRefused, host, st.Monitor)
	}
	now := c.deps.Now()
	summary := fmt.Sprintf("%s confirmed down by %s: %s", host, actor, reason)
	rec := store.FenceRecord{Host: host, CorrelationID: taskID, State: store.FenceConfirmed, Action: "confirm-down",
		Started: now, Finished: now, Reason: summary}
	if err := c.deps.Journal.PutFence(rec); err != nil {
		return "", fmt.Errorf("journal the confirmation of %s: %w", host, err)
	}
	c.record(store.Record{At: now, Host: host, Kind: "fence", From: st.Monitor.String(), To: "confirmed", CorrelationID: taskID, Reason: summary})
	if _, err := c.deps.Cluster.SetAdminState(host, node.Drained, "confirmed down ("+taskID+"): "+summary); err != nil {
		log.Error().Err(err).Msg("confirmed down but the host could not be marked drained")
	}
	c.alert(alert.Event{Type: alert.FenceSucceeded, Severity: "warning", At: now, Host: host, CorrelationID: taskID,
		Summary: summary, Details: map[string]any{"confirmed_by": actor, "reason": reason}})
	log.Warn().Msg(summary)
	setup, err := c.deps.Setup(host)
	if err != nil || !setup.Evacuate {
		return summary + "; the policy does not evacuate (or could not be read): rebuild moves its VMs", nil
	}
	rep, err := c.evacuate(ctx, rec, progress, log)
	if err != nil {
		return "", fmt.Errorf("%s; evacuation did not run: %w", summary, err)
	}
	return summary + "; " + rep.Summary(host), evacuationErr(rep)
}

// Rebuild recreates a drained host's VMs on other hosts (or on target)
// from their saved XML, as an evacuation. It needs proof the VMs do not
// run on host: a proven fence newer than the host's last heartbeat, or a
// heartbeating host that reports no running domain (drained by an
// operator). Local-disk VMs stay, reported.
func (c *Coordinator) Rebuild(ctx context.Context, host, target, taskID, actor string, progress func(evacuator.Task)) (string, error) {
	log := c.log.With().Str("host", host).Str("correlation_id", taskID).Str("actor", actor).Logger()
	st, err := c.deps.Cluster.Host(host)
	if err != nil {
		return "", err
	}
	if st.Admin != node.Drained {
		return "", fmt.Errorf("%w: %s is %s: rebuild only from drained (drain it, or fence it, first)", ErrRefused, host, st.Admin)
	}
	fences, err := c.deps.Journal.Fences()
	if err != nil {
		return "", fmt.Errorf("read the fence journal: %w", err)
	}
	var proof string
	switch prev, ok := fences[host]; {
	case ok && prev.Proven() && provenSinceHeartbeat(prev, st):
		proof = fenceProof(prev)
	case st.Monitor != node.Normal && st.Monitor != node.Error:
		// Without a fence, only the host's own word says nothing runs
		// there, and a host that is not heartbeating now cannot give it.
		return "", fmt.Errorf("%w: %s is %s and no fence proves it off since its last heartbeat: fence or confirm-down first", ErrRefused, host, st.Monitor)
	case st.Active < 0:
		return "", fmt.Errorf("%w: %s has not listed its domains since the daemon started: wait for its heartbeat", ErrRefused, host)
	case st.Active > 0:
		return "", fmt.Errorf("%w: %s still reports %d running domain(s): drain it first", ErrRefused, host, st.Active)
	default:
		proof = fmt.Sprintf("drained, and its agent reported no running domain at %s", st.LastHeartbeat.Format(time.RFC3339Nano))
	}
	rep, err := c.runEvacuation(ctx, EvacuationRequest{TaskID: "rebuild-" + host + "-" + taskID, Host: host,
		CorrelationID: taskID, Fence: proof, Target: target, Progress: progress}, log)
	if err != nil {
		return "", err
	}
	return rep.Summary(host), evacuationErr(rep)
}

// evacuationErr fails the operator's task when a VM that should have moved
// did not; VMs that stay by design (local disk, evacuate="false") do not.
func evacuationErr(rep EvacuationReport) error {
	if len(rep.Failed) == 0 && rep.State != "failed" {
		return nil
	}
	return fmt.Errorf("evacuation %s: %d VM(s) failed to start elsewhere", rep.State, len(rep.Failed))
}

func orNone(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}
