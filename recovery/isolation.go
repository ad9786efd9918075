package recovery

import (
	"errors"
	"fmt"
	"time"

	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/fencer"
)

// errNoPowerLevel: an isolated host's fence has no BMC level to prove Off.
var errNoPowerLevel = errors.New("no ipmi or redfish level: an isolated or hung host is fenced only by a BMC whose power reads back Off")

// IsolationPlan is the fence plan of an isolated or hung host, made from the
// host's own plan. Only power levels are kept: the host answers nothing, so
// an agent-drain level cannot reach it, and an agent's word that no domain
// runs would not prove a hung QEMU dead anyway; a BMC read-back of power Off
// does, because nothing runs on a host without power. on_isolation reboot
// powers it back on after the verified Off (a reboot is what usually cures a
// hung kernel); fence keeps the policy's action. Pure.
func IsolationPlan(p fencer.Plan, a detector.IsolationAction) (fencer.Plan, error) {
	out := p
	out.Levels = nil
	for _, l := range p.Levels {
		if l.Name != fencer.LevelAgentDrain {
			out.Levels = append(out.Levels, l)
		}
	}
	if len(out.Levels) == 0 {
		return out, errNoPowerLevel
	}
	if a == detector.IsolationReboot {
		out.Action = fencer.ActionReboot
	}
	return out, nil
}

// stillActs is the re-check just before a fence: the host's verdict must
// still call for one. Host-down always does; isolated-or-hung does when its
// policy fences and the verdict has held for the grace (IsolationFenceDue).
// Nothing does while the storm guard is paused. It returns "" when the
// fence may go ahead, else why not. Pure.
func stillActs(st daemon.HostStatus, storm detector.StormStatus, iso detector.IsolationPolicy, now time.Time) string {
	if storm.Paused {
		return "storm guard paused: " + storm.Reason
	}
	switch st.Verdict {
	case detector.HostDown:
		return ""
	case detector.IsolatedOrHung:
		if due, _, why := detector.IsolationFenceDue(st.Verdict, st.IsolatedSince, iso, storm.Paused, now); !due {
			return "verdict is isolated-or-hung but no fence is due: " + why
		}
		return ""
	}
	return fmt.Sprintf("verdict is now %s (%s)", st.Verdict, st.VerdictReason)
}
