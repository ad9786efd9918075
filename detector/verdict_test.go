package detector

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chimestack/chime-fence/power"
)

var (
	t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	th = Thresholds{HeartbeatInterval: 5 * time.Second, MissedHeartbeats: 3, ProbeTimeout: 2 * time.Second}
)

const window = 15 * time.Second

func sec(n int) time.Duration { return time.Duration(n) * time.Second }

// Heartbeat situations of the cross product, relative to now = t0.
var heartbeats = []struct {
	name string
	at   time.Time
	// stale: Decide must judge the host by probes and BMC.
	stale bool
}{
	{"fresh", t0.Add(-sec(3)), false},
	{"stale", t0.Add(-window - sec(10)), true},      // went stale 10s ago
	{"stale-long", t0.Add(-window - sec(45)), true}, // went stale 45s ago
	{"never", time.Time{}, true},
	{"future-within-window", t0.Add(sec(10)), false},
	{"future-beyond-window", t0.Add(window + sec(1)), false},
}

// evidenceAt gives the timestamp of evidence of a timing class for heartbeat
// hb, and whether Decide must count it. Each class is built to test one rule.
func evidenceAt(timing, hb string) (time.Time, bool) {
	switch timing {
	case "predates":
		switch hb {
		case "stale-long":
			return t0.Add(-sec(46)), false // 1s before the silence began (and too old)
		case "never":
			return t0.Add(-sec(11)), true // nothing to predate: 11s old counts
		}
		return t0.Add(-sec(11)), false // 1s before the silence began, only 11s old
	case "expired":
		return t0.Add(-window - sec(1)), false // after the silence (for stale-long), but 16s old
	case "ahead":
		return t0.Add(sec(1)), false
	case "current":
		return t0.Add(-sec(1)), true
	}
	panic("unknown timing " + timing)
}

type probeCase struct {
	name     string
	timing   string // "" = no probe
	answered bool
}

var probes = []probeCase{
	{"none", "", false},
	{"predates-answered", "predates", true},
	{"predates-silent", "predates", false},
	{"expired-answered", "expired", true},
	{"expired-silent", "expired", false},
	{"ahead-answered", "ahead", true},
	{"ahead-silent", "ahead", false},
	{"answered", "current", true},
	{"silent", "current", false},
}

type bmcCase struct {
	name      string
	timing    string // "" = nil reading
	reachable bool
	power     power.State
	err       string
	// provesOff: a countable reading of this kind proves the host is off.
	provesOff bool
	// unreadable: a countable reading of this kind proves nothing.
	unreadable bool
}

var bmcs = []bmcCase{
	{name: "nil"},
	{name: "predates-off", timing: "predates", reachable: true, power: power.Off, provesOff: true},
	{name: "expired-off", timing: "expired", reachable: true, power: power.Off, provesOff: true},
	{name: "ahead-off", timing: "ahead", reachable: true, power: power.Off, provesOff: true},
	{name: "unreachable", timing: "current", err: "bmc-unreachable: no route to host", unreadable: true},
	// A failed read whose Power field happens to hold Off must not count.
	{name: "unreachable-power-off", timing: "current", power: power.Off, err: "timeout", unreadable: true},
	{name: "unreachable-no-err-power-off", timing: "current", power: power.Off, unreadable: true},
	{name: "reachable-auth-error-power-off", timing: "current", reachable: true, power: power.Off, err: "bmc-auth-failed", unreadable: true},
	{name: "off", timing: "current", reachable: true, power: power.Off, provesOff: true},
	{name: "on", timing: "current", reachable: true, power: power.On},
	{name: "powering-off", timing: "current", reachable: true, power: power.PoweringOff},
	{name: "powering-on", timing: "current", reachable: true, power: power.PoweringOn},
	{name: "unknown", timing: "current", reachable: true, power: power.Unknown},
	{name: "out-of-range-power", timing: "current", reachable: true, power: power.State(42)},
}

// TestDecideCrossProduct runs every combination of heartbeat, probe and BMC
// situation and checks the verdict and requests against an oracle written
// from the DESIGN table, plus the safety property on its own.
func TestDecideCrossProduct(t *testing.T) {
	n := 0
	for _, hb := range heartbeats {
		for _, pc := range probes {
			for _, bc := range bmcs {
				n++
				name := fmt.Sprintf("hb=%s/probe=%s/bmc=%s", hb.name, pc.name, bc.name)
				s := Signals{LastHeartbeat: hb.at, BootID: "b1", PrevBootID: "b1"}
				probeCounts := false
				if pc.timing != "" {
					s.ProbeAt, probeCounts = evidenceAt(pc.timing, hb.name)
					s.ProbeAnswered = pc.answered
				}
				bmcCounts := false
				if bc.timing != "" {
					var at time.Time
					at, bmcCounts = evidenceAt(bc.timing, hb.name)
					s.BMC = &BMCReading{At: at, Reachable: bc.reachable, Power: bc.power, Err: bc.err}
				}

				d := Decide(s, th, t0)

				// Safety, stated independently of the oracle below.
				if d.Verdict == HostDown {
					ok := hb.stale && probeCounts && !pc.answered && bmcCounts && bc.provesOff
					if !ok {
						t.Errorf("%s: HostDown without a fresh silent probe and a fresh reachable BMC reading Off: %+v", name, d)
					}
				}

				var want Decision
				switch {
				case hb.name == "future-beyond-window":
					want = Decision{Verdict: Suspect, NeedProbe: true}
				case !hb.stale:
					want = Decision{Verdict: Healthy}
				case !probeCounts:
					want = Decision{Verdict: Suspect, NeedProbe: true, NeedBMC: !bmcCounts}
				case pc.answered:
					want = Decision{Verdict: AgentDown}
				case !bmcCounts:
					want = Decision{Verdict: Suspect, NeedBMC: true}
				case bc.unreadable:
					want = Decision{Verdict: Unprovable}
				case bc.provesOff:
					want = Decision{Verdict: HostDown}
				default:
					want = Decision{Verdict: IsolatedOrHung}
				}
				if d.Verdict != want.Verdict || d.NeedProbe != want.NeedProbe || d.NeedBMC != want.NeedBMC {
					t.Errorf("%s: got %s (needProbe=%t needBMC=%t), want %s (needProbe=%t needBMC=%t); reason: %s",
						name, d.Verdict, d.NeedProbe, d.NeedBMC, want.Verdict, want.NeedProbe, want.NeedBMC, d.Reason)
				}
				if d.Reason == "" {
					t.Errorf("%s: empty reason", name)
				}
			}
		}
	}
	if want := len(heartbeats) * len(probes) * len(bmcs); n != want {
		t.Fatalf("ran %d combinations, want %d", n, want)
	}
}

func at(d time.Duration) time.Time { return t0.Add(d) }

func bmcAt(d time.Duration, p power.State) *BMCReading {
	return &BMCReading{At: at(d), Reachable: true, Power: p}
}

// TestDecideNamed covers each DESIGN row and the edges, with the evidence the
// Reason must cite.
func TestDecideNamed(t *testing.T) {
	stale := at(-window - sec(10)) // silence began at t0-10s
	cases := []struct {
		name       string
		s          Signals
		now        time.Time
		want       Verdict
		needProbe  bool
		needBMC    bool
		reasonHas  []string
		reasonLack []string
	}{
		// DESIGN table rows.
		{name: "row fresh/any/any: healthy despite silent probe and BMC off",
			s:    Signals{LastHeartbeat: at(-sec(2)), ProbeAt: at(-sec(1)), BMC: bmcAt(-sec(1), power.Off)},
			want: Healthy, reasonHas: []string{"2s ago", "window 15s"}},
		{name: "row stale/answers/any: agent down even with BMC off",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(1)), ProbeAnswered: true, BMC: bmcAt(-sec(1), power.Off)},
			want: AgentDown, reasonHas: []string{"25s ago", "answered a probe 1s ago"}},
		{name: "row stale/silent/off: host down",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(2)), BMC: bmcAt(-sec(1), power.Off)},
			want: HostDown, reasonHas: []string{"25s ago", "no answer 2s ago", "power off 1s ago"}},
		{name: "row stale/silent/on: isolated or hung",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(2)), BMC: bmcAt(-sec(1), power.On)},
			want: IsolatedOrHung, reasonHas: []string{"power on", "not down"}},
		{name: "row stale/silent/unreachable: unprovable, error cited",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(2)), BMC: &BMCReading{At: at(-sec(1)), Err: "bmc-unreachable: dial tcp 10.0.0.9:623: i/o timeout"}},
			want: Unprovable, reasonHas: []string{"i/o timeout", "cannot prove"}},

		// Evidence gathering.
		{name: "stale, nothing gathered: ask for both",
			s:    Signals{LastHeartbeat: stale},
			want: Suspect, needProbe: true, needBMC: true, reasonHas: []string{"no probe result yet", "no BMC reading yet"}},
		{name: "stale, BMC already read off, no probe: probe only, still suspect",
			s:    Signals{LastHeartbeat: stale, BMC: bmcAt(-sec(1), power.Off)},
			want: Suspect, needProbe: true, reasonLack: []string{"BMC"}},
		{name: "stale, probe from before the silence is ignored",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(11)), ProbeAnswered: true},
			want: Suspect, needProbe: true, needBMC: true, reasonHas: []string{"predates the silence"}},
		{name: "never heard from: judged at once",
			s:    Signals{ProbeAt: at(-sec(1)), BMC: bmcAt(-sec(1), power.Off)},
			want: HostDown, reasonHas: []string{"no heartbeat ever"}},

		// Exact boundaries.
		{name: "heartbeat exactly one window old is fresh",
			s: Signals{LastHeartbeat: at(-window)}, want: Healthy},
		{name: "heartbeat one window + 1ns old is stale",
			s: Signals{LastHeartbeat: at(-window - 1)}, want: Suspect, needProbe: true, needBMC: true},
		{name: "evidence taken exactly when the heartbeat went stale does not count",
			s:    Signals{LastHeartbeat: stale, ProbeAt: stale.Add(window), BMC: &BMCReading{At: stale.Add(window), Reachable: true, Power: power.Off}},
			want: Suspect, needProbe: true, needBMC: true},
		{name: "evidence 1ns after the heartbeat went stale counts",
			s:    Signals{LastHeartbeat: stale, ProbeAt: stale.Add(window + 1), BMC: &BMCReading{At: stale.Add(window + 1), Reachable: true, Power: power.Off}},
			want: HostDown},
		{name: "evidence exactly one window old still counts",
			s:    Signals{LastHeartbeat: at(-sec(60)), ProbeAt: at(-window), BMC: bmcAt(-window, power.Off)},
			want: HostDown},
		{name: "BMC off one window + 1ns old is too old to fence on",
			s:    Signals{LastHeartbeat: at(-sec(60)), ProbeAt: at(-sec(1)), BMC: bmcAt(-window-1, power.Off)},
			want: Suspect, needBMC: true, reasonHas: []string{"too old"}},
		{name: "silent probe one window + 1ns old is too old",
			s:    Signals{LastHeartbeat: at(-sec(60)), ProbeAt: at(-window - 1), BMC: bmcAt(-sec(1), power.Off)},
			want: Suspect, needProbe: true, reasonHas: []string{"too old"}},
		{name: "evidence dated in the future does not count",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(1), BMC: bmcAt(1, power.Off)},
			want: Suspect, needProbe: true, needBMC: true, reasonHas: []string{"in the future"}},

		// Clock jumps.
		{name: "heartbeat exactly one window in the future is fresh",
			s: Signals{LastHeartbeat: at(window)}, want: Healthy, reasonHas: []string{"in the future"}},
		{name: "heartbeat one window + 1ns in the future is clock skew",
			s:    Signals{LastHeartbeat: at(window + 1), ProbeAt: at(-sec(1)), BMC: bmcAt(-sec(1), power.Off)},
			want: Suspect, needProbe: true, reasonHas: []string{"clock skew"}},

		// Reboot and faults.
		{name: "boot id changed: rebooted",
			s:    Signals{LastHeartbeat: at(-sec(1)), BootID: "b2", PrevBootID: "b1"},
			want: Rebooted, reasonHas: []string{`"b1" to "b2"`}},
		{name: "first boot id seen: healthy",
			s: Signals{LastHeartbeat: at(-sec(1)), BootID: "b1"}, want: Healthy},
		{name: "same boot id: healthy",
			s: Signals{LastHeartbeat: at(-sec(1)), BootID: "b1", PrevBootID: "b1"}, want: Healthy},
		{name: "boot id changed but heartbeat stale: judged as silent",
			s:    Signals{LastHeartbeat: stale, BootID: "b2", PrevBootID: "b1", ProbeAt: at(-sec(1)), BMC: bmcAt(-sec(1), power.On)},
			want: IsolatedOrHung},
		{name: "agent fault with fresh heartbeat: healthy, fault cited",
			s:    Signals{LastHeartbeat: at(-sec(1)), AgentFault: "libvirtd not responding"},
			want: Healthy, reasonHas: []string{"libvirtd not responding"}},
		{name: "reboot and fault together",
			s:    Signals{LastHeartbeat: at(-sec(1)), BootID: "b2", PrevBootID: "b1", AgentFault: "disk full"},
			want: Rebooted, reasonHas: []string{"disk full", "boot id changed"}},

		// Bad input.
		{name: "reachable BMC with an error proves nothing",
			s:    Signals{LastHeartbeat: stale, ProbeAt: at(-sec(1)), BMC: &BMCReading{At: at(-sec(1)), Reachable: true, Power: power.Off, Err: "bmc-auth-failed"}},
			want: Unprovable, reasonHas: []string{"bmc-auth-failed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			now := c.now
			if now.IsZero() {
				now = t0
			}
			d := Decide(c.s, th, now)
			if d.Verdict != c.want || d.NeedProbe != c.needProbe || d.NeedBMC != c.needBMC {
				t.Fatalf("got %s (needProbe=%t needBMC=%t), want %s (needProbe=%t needBMC=%t); reason: %s",
					d.Verdict, d.NeedProbe, d.NeedBMC, c.want, c.needProbe, c.needBMC, d.Reason)
			}
			for _, s := range c.reasonHas {
				if !strings.Contains(d.Reason, s) {
					t.Errorf("reason %q lacks %q", d.Reason, s)
				}
			}
			for _, s := range c.reasonLack {
				if strings.Contains(d.Reason, s) {
					t.Errorf("reason %q mentions %q", d.Reason, s)
				}
			}
		})
	}
}

// TestBMCFlapping: the core keeps no state, so across calls the verdict
// follows the latest reading, and reaches HostDown only on the Off one.
func TestBMCFlapping(t *testing.T) {
	s := Signals{LastHeartbeat: at(-window - sec(10)), ProbeAt: at(-sec(3))}
	steps := []struct {
		reading *BMCReading
		now     time.Time
		want    Verdict
	}{
		{bmcAt(-sec(2), power.On), t0, IsolatedOrHung},
		{bmcAt(0, power.Off), t0, HostDown},
		{bmcAt(sec(1), power.On), at(sec(1)), IsolatedOrHung},
		{bmcAt(sec(2), power.PoweringOff), at(sec(2)), IsolatedOrHung},
		{&BMCReading{At: at(sec(3)), Err: "timeout"}, at(sec(3)), Unprovable},
		{bmcAt(sec(4), power.Off), at(sec(4)), HostDown},
	}
	for i, st := range steps {
		s.BMC = st.reading
		if d := Decide(s, th, st.now); d.Verdict != st.want {
			t.Errorf("step %d (%s): got %s, want %s; reason: %s", i, st.reading.Power, d.Verdict, st.want, d.Reason)
		}
	}
}

// TestHeartbeatDuringBMCCheck: the BMC read starts while the host is silent,
// a heartbeat arrives before the answer, and the answer says off. The
// heartbeat wins; once that heartbeat goes stale too, the old answer no
// longer counts.
func TestHeartbeatDuringBMCCheck(t *testing.T) {
	s := Signals{LastHeartbeat: at(-window - sec(5)), ProbeAt: at(-sec(2))}
	if d := Decide(s, th, t0); d.Verdict != Suspect || !d.NeedBMC {
		t.Fatalf("before the read: got %+v, want Suspect asking for the BMC", d)
	}
	s.LastHeartbeat = at(sec(1))     // heartbeat while the read is in flight
	s.BMC = bmcAt(sec(2), power.Off) // the read answers afterwards
	if d := Decide(s, th, at(sec(2))); d.Verdict != Healthy {
		t.Fatalf("heartbeat arrived while the BMC read was in flight: got %s, want healthy; reason: %s", d.Verdict, d.Reason)
	}
	// The BMC answer older than the new heartbeat: still healthy.
	s.BMC = bmcAt(0, power.Off)
	if d := Decide(s, th, at(sec(3))); d.Verdict != Healthy {
		t.Fatalf("heartbeat newer than the BMC answer: got %s, want healthy; reason: %s", d.Verdict, d.Reason)
	}
	// That heartbeat goes stale: the earlier probe and BMC answer predate it.
	later := at(sec(1) + window + sec(1))
	d := Decide(s, th, later)
	if d.Verdict != Suspect || !d.NeedProbe || !d.NeedBMC {
		t.Fatalf("after the new heartbeat went stale: got %+v, want Suspect asking for probe and BMC", d)
	}
}

func TestInvalidThresholds(t *testing.T) {
	cases := []struct {
		th   Thresholds
		want []string
	}{
		{Thresholds{}, []string{"heartbeat interval must be > 0", "missed heartbeats must be >= 1", "probe timeout must be > 0"}},
		{Thresholds{HeartbeatInterval: -time.Second, MissedHeartbeats: 3, ProbeTimeout: time.Second}, []string{"heartbeat interval must be > 0, got -1s"}},
		{Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 0, ProbeTimeout: time.Second}, []string{"missed heartbeats must be >= 1, got 0"}},
		{Thresholds{HeartbeatInterval: time.Hour, MissedHeartbeats: 1 << 40, ProbeTimeout: time.Second}, []string{"overflows"}},
		{Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: 4 * time.Second}, []string{"probe timeout 4s must not exceed the window", "= 3s"}},
	}
	// Evidence that would be HostDown under valid thresholds.
	s := Signals{LastHeartbeat: at(-sec(600)), ProbeAt: at(-sec(1)), BMC: bmcAt(-sec(1), power.Off)}
	for _, c := range cases {
		err := c.th.Validate()
		if err == nil {
			t.Errorf("%+v: Validate accepted it", c.th)
			continue
		}
		d := Decide(s, c.th, t0)
		if d.Verdict != Unprovable || d.NeedProbe || d.NeedBMC {
			t.Errorf("%+v: Decide gave %+v, want Unprovable with no requests", c.th, d)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q lacks %q", c.th, err, w)
			}
			if !strings.Contains(d.Reason, w) {
				t.Errorf("%+v: reason %q lacks %q", c.th, d.Reason, w)
			}
		}
	}
	if err := th.Validate(); err != nil {
		t.Fatalf("test thresholds rejected: %v", err)
	}
	if got := (Thresholds{HeartbeatInterval: time.Second, MissedHeartbeats: 3, ProbeTimeout: 3 * time.Second}).Validate(); got != nil {
		t.Errorf("probe timeout equal to the window rejected: %v", got)
	}
}

func TestVerdictText(t *testing.T) {
	want := map[Verdict]string{
		Suspect: "suspect", Healthy: "healthy", Rebooted: "rebooted", AgentDown: "agent-down",
		IsolatedOrHung: "isolated-or-hung", Unprovable: "unprovable", HostDown: "host-down", Paused: "paused",
	}
	for v, name := range want {
		if v.String() != name {
			t.Errorf("%d.String() = %q, want %q", int(v), v.String(), name)
		}
		b, err := json.Marshal(v)
		if err != nil || string(b) != `"`+name+`"` {
			t.Errorf("json.Marshal(%s) = %s, %v", name, b, err)
		}
		var back Verdict = -1
		if err := json.Unmarshal(b, &back); err != nil || back != v {
			t.Errorf("round trip of %s gave %s, %v", name, back, err)
		}
	}
	if len(want) != len(verdictNames) {
		t.Errorf("test knows %d verdicts, package has %d", len(want), len(verdictNames))
	}
	var zero Decision
	if zero.Verdict != Suspect {
		t.Errorf("zero Verdict is %s, want suspect", zero.Verdict)
	}
	if s := Verdict(99).String(); s != "Verdict(99)" {
		t.Errorf("out of range String = %q", s)
	}
	if _, err := Verdict(99).MarshalText(); err == nil {
		t.Error("MarshalText accepted Verdict(99)")
	}
	var v Verdict
	err := v.UnmarshalText([]byte("dead"))
	if err == nil || !strings.Contains(err.Error(), `"dead"`) || !strings.Contains(err.Error(), "host-down") {
		t.Errorf("UnmarshalText(dead) error = %v, want it to name the input and the choices", err)
	}
}

// FuzzDecide checks on arbitrary times that Decide never panics, never
// returns Paused, and returns HostDown only when the timestamps themselves
// show a stale heartbeat and a countable silent probe and Off reading.
func FuzzDecide(f *testing.F) {
	f.Add(int64(-25), int64(-2), false, int64(-1), true, uint8(power.Off), "", int64(5), 3, int64(2))
	f.Add(int64(0), int64(0), false, int64(0), false, uint8(0), "x", int64(0), 0, int64(0))
	f.Add(int64(16), int64(-1), false, int64(-1), true, uint8(power.Off), "", int64(5), 3, int64(2))
	f.Fuzz(func(t *testing.T, hbS, probeS int64, answered bool, bmcS int64, reachable bool, pw uint8, errS string, ivS int64, missed int, ptS int64) {
		tt := Thresholds{HeartbeatInterval: time.Duration(ivS) * time.Second, MissedHeartbeats: missed, ProbeTimeout: time.Duration(ptS) * time.Second}
		s := Signals{ProbeAnswered: answered}
		if hbS != 0 {
			s.LastHeartbeat = t0.Add(time.Duration(hbS) * time.Second)
		}
		if probeS != 0 {
			s.ProbeAt = t0.Add(time.Duration(probeS) * time.Second)
		}
		if bmcS != 0 {
			s.BMC = &BMCReading{At: t0.Add(time.Duration(bmcS) * time.Second), Reachable: reachable, Power: power.State(pw), Err: errS}
		}
		d := Decide(s, tt, t0)
		if d.Verdict == Paused || d.Reason == "" {
			t.Fatalf("got %+v", d)
		}
		if d.Verdict != HostDown {
			return
		}
		w := tt.Window()
		countable := func(at time.Time) bool {
			if at.IsZero() || at.After(t0) || t0.Sub(at) > w {
				return false
			}
			return s.LastHeartbeat.IsZero() || at.After(s.LastHeartbeat.Add(w))
		}
		ok := tt.Validate() == nil &&
			(s.LastHeartbeat.IsZero() || t0.Sub(s.LastHeartbeat) > w) &&
			countable(s.ProbeAt) && !s.ProbeAnswered &&
			s.BMC != nil && countable(s.BMC.At) && s.BMC.Reachable && s.BMC.Err == "" && s.BMC.Power == power.Off
		if !ok {
			t.Fatalf("HostDown on %+v (BMC %+v) with %+v: %s", s, s.BMC, tt, d.Reason)
		}
	})
}
