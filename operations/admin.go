package operations

import (
	"context"
	"fmt"

	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/store"
)

// SetAdmin changes a host's admin state with a history reason;
// (*daemon.Daemon).SetAdminState is one.
type SetAdmin func(host string, st node.AdminState, reason string) (store.Record, error)

// AdminReason is the history reason of an admin change made by task t.
func AdminReason(t Task) string {
	s := fmt.Sprintf("%s by %s (task %s)", t.Op, t.Actor, t.ID)
	if t.Reason != "" {
		s += ": " + t.Reason
	}
	return s
}

// AdminExecutor is the enable and disable executor: it sets the host's
// admin state to st. Agents learn it from their next heartbeat's ack.
func AdminExecutor(set SetAdmin, st node.AdminState) Executor {
	return func(ctx context.Context, t Task, _ Report) (string, error) {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		rec, err := set(t.Host, st, AdminReason(t))
		if err != nil {
			return "", fmt.Errorf("set admin state of %s to %s: %w", t.Host, st, err)
		}
		return fmt.Sprintf("host %s is %s (was %s)", t.Host, st, rec.From), nil
	}
}
