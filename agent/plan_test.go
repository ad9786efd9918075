package agent

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/heartbeat"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/node"
)

const (
	u1 = "00000000-0000-4000-8000-000000000001"
	u2 = "00000000-0000-4000-8000-000000000002"
	u3 = "00000000-0000-4000-8000-000000000003"
)

// Every shut-off reason libvirt names (drivers/libvirt), plus ones this
// version cannot know.
var allReasons = []string{"unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot", "daemon", "reason-42", ""}

var allStates = []hypervisor.DomainState{hypervisor.StateUnknown, hypervisor.StateRunning, hypervisor.StatePaused,
	hypervisor.StateShutoff, hypervisor.StateCrashed, hypervisor.StateOther}

func assigned(s node.AdminState, uuids ...string) *heartbeat.Assignment {
	a := &heartbeat.Assignment{Host: "n1", AdminState: s, Revision: 7}
	for i, u := range uuids {
		a.Domains = append(a.Domains, heartbeat.AssignedDomain{UUID: u, Name: fmt.Sprintf("vm%d", i+1)})
	}
	return a
}

func dom(uuid string, st hypervisor.DomainState, reason string) hypervisor.Domain {
	return hypervisor.Domain{UUID: uuid, Name: "local-" + uuid[len(uuid)-1:], State: st, Reason: reason, Persistent: true}
}

// TestPlanOneDomainEveryCase walks the whole cross product for a single
// assigned domain: admin state (and "unknown") × local state × reason, plus
// "not defined here". The expected action is spelled out per case so a
// change to any rule shows up as a failing row.
func TestPlanOneDomainEveryCase(t *testing.T) {
	restart := map[string]bool{"crashed": true, "failed": true, "unknown": true, "daemon": true}
	admins := []*node.AdminState{nil, ptr(node.Enabled), ptr(node.Disabled), ptr(node.Drained)}
	n := 0
	for _, adm := range admins {
		admName := "unknown"
		var a *heartbeat.Assignment
		if adm != nil {
			admName = adm.String()
			a = assigned(*adm, u1)
		}
		mayStart := adm != nil && *adm != node.Drained

		t.Run(admName+"/not-defined", func(t *testing.T) {
			got := Plan(a, []hypervisor.Domain{dom(u2, hypervisor.StateShutoff, "crashed")})
			if !mayStart {
				assert.Empty(t, got)
				return
			}
			require.Len(t, got, 1)
			assert.Equal(t, Action{Kind: Missing, UUID: u1, Name: "vm1", Reason: "assigned to this host but not defined in libvirt here"}, got[0])
		})
		n++
		for _, st := range allStates {
			reasons := []string{""}
			if st == hypervisor.StateShutoff {
				reasons = allReasons
			}
			for _, r := range reasons {
				n++
				t.Run(fmt.Sprintf("%s/%s(%s)", admName, st, r), func(t *testing.T) {
					got := Plan(a, []hypervisor.Domain{dom(u1, st, r)})
					var want ActionKind
					switch {
					case !mayStart, st.Active() && st != hypervisor.StateUnknown:
						want = 0
					case st == hypervisor.StateShutoff && restart[r]:
						want = Start
					default:
						want = Hold
					}
					if want == 0 {
						assert.Empty(t, got)
						return
					}
					require.Len(t, got, 1)
					assert.Equal(t, want, got[0].Kind, "reason given: %s", got[0].Reason)
					assert.Equal(t, u1, got[0].UUID)
					assert.Equal(t, "local-1", got[0].Name, "the name libvirt uses is the one logged")
					assert.NotEmpty(t, got[0].Reason)
					if st == hypervisor.StateShutoff {
						assert.Contains(t, got[0].Reason, "("+r+")")
					}
				})
			}
		}
	}
	assert.Equal(t, 4*(1+len(allStates)-1+len(allReasons)), n, "every combination was tried")
}

func ptr[T any](v T) *T { return &v }

func TestPlanNeverStartsWithoutKnownAdminStateOrWhenDrained(t *testing.T) {
	local := []hypervisor.Domain{dom(u1, hypervisor.StateShutoff, "crashed"), dom(u2, hypervisor.StateShutoff, "unknown")}
	assert.Nil(t, Plan(nil, local), "admin state unknown")
	assert.Nil(t, Plan(assigned(node.Drained, u1, u2), local), "drained")
	assert.Nil(t, Plan(assigned(node.AdminState(9), u1, u2), local), "an admin state this version does not know")
	assert.Len(t, Plan(assigned(node.Disabled, u1, u2), local), 2, "disabled still manages its domains")
}

func TestPlanManyDomains(t *testing.T) {
	a := assigned(node.Enabled, u1, u2, u3, u1) // u1 twice: decided once
	local := []hypervisor.Domain{
		dom(u3, hypervisor.StateShutoff, "destroyed"),
		dom(u1, hypervisor.StateShutoff, "crashed"),
		dom("00000000-0000-4000-8000-000000000009", hypervisor.StateShutoff, "crashed"), // not assigned
	}
	got := Plan(a, local)
	require.Len(t, got, 3)
	assert.Equal(t, []ActionKind{Start, Missing, Hold}, []ActionKind{got[0].Kind, got[1].Kind, got[2].Kind}, "assignment order")
	assert.Equal(t, []string{u1, u2, u3}, []string{got[0].UUID, got[1].UUID, got[2].UUID})
	for _, act := range got {
		assert.NotEqual(t, "00000000-0000-4000-8000-000000000009", act.UUID, "a local domain not assigned is never touched")
	}
}

func TestPlanEmpty(t *testing.T) {
	assert.Empty(t, Plan(assigned(node.Enabled), []hypervisor.Domain{dom(u1, hypervisor.StateShutoff, "crashed")}))
	assert.Empty(t, Plan(assigned(node.Enabled, u1), []hypervisor.Domain{dom(u1, hypervisor.StateRunning, "")}))
}

func TestRestartableReason(t *testing.T) {
	for _, r := range allReasons {
		want := r == "crashed" || r == "failed" || r == "unknown" || r == "daemon"
		assert.Equal(t, want, RestartableReason(r), r)
	}
}

func TestActionKindString(t *testing.T) {
	assert.Equal(t, "start", Start.String())
	assert.Equal(t, "missing", Missing.String())
	assert.Equal(t, "hold", Hold.String())
	assert.Equal(t, "ActionKind(0)", ActionKind(0).String())
}

// TestStopsSurviveLibvirtdRestart: libvirtd forgets why an inactive domain
// stopped when it restarts (measured: "destroyed" reads "unknown"
// afterwards). Stops keeps "destroyed", so reconcile still holds it.
func TestStopsSurviveLibvirtdRestart(t *testing.T) {
	var s Stops
	a := assigned(node.Enabled, u1, u2)

	// Operator destroyed u1; u2 crashed.
	got, s := s.Observe([]hypervisor.Domain{dom(u1, hypervisor.StateShutoff, "destroyed"), dom(u2, hypervisor.StateShutoff, "crashed")})
	assert.Equal(t, "destroyed", got[0].Reason)
	assert.Equal(t, Stops{u1: "destroyed"}, s)

	// libvirtd restarted: both read "unknown".
	restarted := []hypervisor.Domain{dom(u1, hypervisor.StateShutoff, "unknown"), dom(u2, hypervisor.StateShutoff, "unknown")}
	got, s = s.Observe(restarted)
	assert.Equal(t, "unknown", restarted[0].Reason, "Observe does not modify its input")
	assert.Equal(t, "destroyed", got[0].Reason, "remembered")
	assert.Equal(t, "unknown", got[1].Reason, "a crash is not remembered as on purpose")
	plan := Plan(a, got)
	require.Len(t, plan, 2)
	assert.Equal(t, Hold, plan[0].Kind)
	assert.Equal(t, Start, plan[1].Kind)

	// Still remembered at the next listing.
	got, s = s.Observe(restarted)
	assert.Equal(t, "destroyed", got[0].Reason)

	// The operator starts it again: forgotten, so a later crash or power
	// cycle restarts it.
	_, s = s.Observe([]hypervisor.Domain{dom(u1, hypervisor.StateRunning, "")})
	assert.Empty(t, s)
	got, _ = s.Observe(restarted)
	assert.Equal(t, "unknown", got[0].Reason)
}

func TestStopsForgetUndefinedAndCrashed(t *testing.T) {
	s := Stops{u1: "shutdown", u2: "saved"}
	_, next := s.Observe([]hypervisor.Domain{dom(u2, hypervisor.StateShutoff, "crashed")})
	assert.Empty(t, next, "u1 was undefined, u2 crashed since")
	assert.Equal(t, Stops{u1: "shutdown", u2: "saved"}, s, "Observe does not modify its receiver")
}
