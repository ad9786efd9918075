package heartbeatbench

import (
	"slices"
	"time"

	"github.com/chimestack/chime-fence/store"
)

// unreachable is the monitor state a stopped host must reach.
const unreachable = "unreachable"

// Detection is what the daemon's history says about the stopped sample.
type Detection struct {
	// Delays maps each detected stopped host to the time from its last
	// acknowledged heartbeat (as sent) to its first "unreachable" record.
	Delays map[string]time.Duration
	// Undetected are stopped hosts with no "unreachable" record yet.
	Undetected []string
	// Unmeasured are stopped hosts that never had a heartbeat acknowledged.
	Unmeasured []string
	// False are hosts that became unreachable while heartbeating: not
	// stopped at all, or stopped but declared before their last ack.
	False []string
}

// Detect matches monitor records against the stopped hosts and the send
// time of their last acknowledged heartbeat.
func Detect(stopped map[string]time.Time, recs []store.Record) Detection {
	d := Detection{Delays: map[string]time.Duration{}}
	first := map[string]time.Time{}
	falseSet := map[string]bool{}
	for _, r := range recs {
		if r.Kind != "monitor" || r.To != unreachable {
			continue
		}
		last, isStopped := stopped[r.Host]
		if !isStopped || (!last.IsZero() && r.At.Before(last)) {
			falseSet[r.Host] = true
			continue
		}
		if f, ok := first[r.Host]; !ok || r.At.Before(f) {
			first[r.Host] = r.At
		}
	}
	for h, last := range stopped {
		at, ok := first[h]
		switch {
		case last.IsZero():
			d.Unmeasured = append(d.Unmeasured, h)
		case !ok:
			d.Undetected = append(d.Undetected, h)
		default:
			d.Delays[h] = at.Sub(last)
		}
	}
	for h := range falseSet {
		d.False = append(d.False, h)
	}
	slices.Sort(d.Undetected)
	slices.Sort(d.Unmeasured)
	slices.Sort(d.False)
	return d
}

// DelayList returns the delays, for Distribution.
func (d Detection) DelayList() []time.Duration {
	out := make([]time.Duration, 0, len(d.Delays))
	for _, v := range d.Delays {
		out = append(out, v)
	}
	return out
}
