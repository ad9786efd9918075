package operations

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

// DrainDeps are what the drain executor acts through. SetAdmin and
// Domains are required; AgentDrain and Destroy may be nil (that path is
// then skipped).
type DrainDeps struct {
	SetAdmin SetAdmin
	// AgentDrain asks the host's chime-agent to drain (drivers/agent
	// Client.Drain): it writes the agent's local drain marker and destroys
	// every active domain. It returns one line per domain, and an error when
	// the agent could not be reached or a domain is still active.
	AgentDrain func(ctx context.Context, host string) ([]VMProgress, error)
	// Domains lists the host's domains through its libvirtd: the read-back.
	Domains func(ctx context.Context, host string) ([]hypervisor.Domain, error)
	// Destroy stops one domain through the host's libvirtd (hard power-off
	// of the guest), for what the agent did not stop.
	Destroy func(ctx context.Context, host, uuid string) error
}

// DrainExecutor marks the host drained first (from then on its agent
// starts nothing, even after a reboot), then stops every domain through
// the agent, then through libvirt for any the agent did not stop, and
// succeeds only when a read-back lists no active domain. The read-back is
// libvirt's; when libvirtd cannot be reached the agent's own read-back
// after a successful agent drain is accepted (and said so in the result).
func DrainExecutor(d DrainDeps) Executor {
	return func(ctx context.Context, t Task, report Report) (string, error) {
		if d.SetAdmin == nil || d.Domains == nil {
			return "", errors.New("drain is not wired: SetAdmin and Domains are required")
		}
		if _, err := d.SetAdmin(t.Host, node.Drained, AdminReason(t)); err != nil {
			return "", fmt.Errorf("mark %s drained (nothing was stopped): %w", t.Host, err)
		}
		var notes []string
		agentErr := errors.New("no agent drain wired")
		if d.AgentDrain != nil {
			var lines []VMProgress
			lines, agentErr = d.AgentDrain(ctx, t.Host)
			report(lines...)
		}
		if agentErr != nil {
			notes = append(notes, "agent drain failed: "+agentErr.Error())
		}

		doms, err := d.Domains(ctx, t.Host)
		if err != nil {
			if agentErr == nil {
				return fmt.Sprintf("host %s drained by its agent, which read back no active domain (libvirt read-back unavailable: %v)", t.Host, err), nil
			}
			return "", fmt.Errorf("host %s is marked drained but whether its VMs stopped is unknown: %s; libvirt: %w (fence or confirm-down it)",
				t.Host, strings.Join(notes, "; "), err)
		}
		var destroyed []string
		for _, dom := range doms {
			if !dom.State.Active() {
				continue
			}
			if d.Destroy == nil {
				report(VMProgress{UUID: dom.UUID, Name: dom.Name, State: VMFailed, Detail: "still " + dom.State.String() + "; no libvirt destroy wired"})
				continue
			}
			report(VMProgress{UUID: dom.UUID, Name: dom.Name, State: VMRunning, Detail: "destroying through libvirt"})
			if err := d.Destroy(ctx, t.Host, dom.UUID); err != nil {
				report(VMProgress{UUID: dom.UUID, Name: dom.Name, State: VMFailed, Detail: "libvirt destroy: " + err.Error()})
				continue
			}
			destroyed = append(destroyed, dom.Name)
			report(VMProgress{UUID: dom.UUID, Name: dom.Name, State: VMDone, Detail: "destroyed through libvirt"})
		}
		// Read back again: only an empty list of active domains is a drain.
		after, err := d.Domains(ctx, t.Host)
		if err != nil {
			return "", fmt.Errorf("host %s is marked drained; read-back through libvirt failed: %w", t.Host, err)
		}
		var still []string
		defined := 0
		for _, dom := range after {
			if dom.State.Active() {
				still = append(still, fmt.Sprintf("%s (%s)", dom.Name, dom.State))
				report(VMProgress{UUID: dom.UUID, Name: dom.Name, State: VMFailed, Detail: "still " + dom.State.String() + " after the drain"})
			} else {
				defined++
			}
		}
		if len(still) > 0 {
			return "", fmt.Errorf("host %s is marked drained but %d domain(s) still active: %s", t.Host, len(still), strings.Join(still, ", "))
		}
		res := fmt.Sprintf("host %s drained: no active domain (read back through libvirt, %d defined)", t.Host, defined)
		if len(destroyed) > 0 {
			res += fmt.Sprintf("; destroyed through libvirt: %s", strings.Join(destroyed, ", "))
		}
		if len(notes) > 0 {
			res += "; " + strings.Join(notes, "; ")
		}
		return res, nil
	}
}
