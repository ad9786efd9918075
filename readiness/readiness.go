package readiness

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/power"
)

// Checker is one fence level's dry run; it never acts.
type Checker interface {
	Check(ctx context.Context) (power.State, error)
}

// DomainLister lists a host's domains.
type DomainLister interface {
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
}

// Level is one fence level to check. Checker is nil when the level could
// not even be built (a missing password file); SetupErr says why.
type Level struct {
	Type     configs.FenceLevelType
	Endpoint string // shown to the operator: address:port or URL
	Checker  Checker
	SetupErr error
}

// Target is everything to check for one host.
type Target struct {
	Host       string
	Levels     []Level
	Hypervisor DomainLister // nil to skip
	Endpoint   string       // libvirt address, for the report
	Storage    evacuator.StorageRules
	Timeout    time.Duration // per check; default 10s
}

// LevelReport is one fence level's result.
type LevelReport struct {
	Index       int                    `json:"index"`
	Type        configs.FenceLevelType `json:"type"`
	Endpoint    string                 `json:"endpoint"`
	Usable      bool                   `json:"usable"`
	Power       power.State            `json:"power"`
	Latency     time.Duration          `json:"latency_ns"`
	LatencyText string                 `json:"latency"`
	Error       string                 `json:"error,omitempty"`
	Kind        string                 `json:"error_kind,omitempty"`
}

// DomainReport is one domain and whether it could move.
type DomainReport struct {
	evacuator.VM
	State hypervisor.DomainState `json:"state"`
	// Autostart: libvirt's autostart is on, so the VM is not evacuable
	// (evacuator.WithAutostart) until chime-agent turns it off.
	Autostart bool   `json:"autostart,omitempty"`
	Error     string `json:"error,omitempty"` // XML we could not read
}

// LibvirtReport is the hypervisor check.
type LibvirtReport struct {
	Endpoint    string        `json:"endpoint"`
	Reachable   bool          `json:"reachable"`
	Latency     time.Duration `json:"latency_ns"`
	LatencyText string        `json:"latency"`
	Error       string        `json:"error,omitempty"`
}

// Report is the dry run's result.
type Report struct {
	Host    string         `json:"host"`
	At      time.Time      `json:"at"`
	Levels  []LevelReport  `json:"fence_levels"`
	Libvirt *LibvirtReport `json:"libvirt,omitempty"`
	Domains []DomainReport `json:"domains"`
	// Ready: at least one fence level is usable and read power back.
	Ready   bool   `json:"ready"`
	Summary string `json:"summary"`
}

// Run checks everything concurrently, each check under its own timeout.
// now is the clock (time.Now in production).
func Run(ctx context.Context, t Target, now func() time.Time) Report {
	if t.Timeout <= 0 {
		t.Timeout = 10 * time.Second
	}
	r := Report{Host: t.Host, At: now(), Levels: make([]LevelReport, len(t.Levels))}
	var wg sync.WaitGroup
	for i, l := range t.Levels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Levels[i] = checkLevel(ctx, i+1, l, t.Timeout, now)
		}()
	}
	if t.Hypervisor != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lr, doms := checkLibvirt(ctx, t, now)
			r.Libvirt, r.Domains = &lr, doms
		}()
	}
	wg.Wait()
	r.Ready, r.Summary = summarize(r)
	return r
}

func checkLevel(ctx context.Context, idx int, l Level, timeout time.Duration, now func() time.Time) LevelReport {
	lr := LevelReport{Index: idx, Type: l.Type, Endpoint: l.Endpoint}
	if l.Checker == nil {
		lr.Error = fmt.Sprint(l.SetupErr)
		lr.Kind = power.KindOf(l.SetupErr).String()
		return lr
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := now()
	st, err := l.Checker.Check(ctx)
	lr.Latency = now().Sub(start)
	lr.LatencyText = round(lr.Latency)
	lr.Power = st
	if err != nil {
		lr.Error = err.Error()
		lr.Kind = power.KindOf(err).String()
		return lr
	}
	// A level is usable only if it can verify: power must read as a real
	// state, not Unknown.
	lr.Usable = st != power.Unknown
	if !lr.Usable {
		lr.Error = "power state not readable"
	}
	return lr
}

func checkLibvirt(ctx context.Context, t Target, now func() time.Time) (LibvirtReport, []DomainReport) {
	lr := LibvirtReport{Endpoint: t.Endpoint}
	ctx, cancel := context.WithTimeout(ctx, t.Timeout)
	defer cancel()
	start := now()
	doms, err := t.Hypervisor.Domains(ctx, true)
	lr.Latency = now().Sub(start)
	lr.LatencyText = round(lr.Latency)
	if err != nil {
		lr.Error = err.Error()
		return lr, nil
	}
	lr.Reachable = true
	out := make([]DomainReport, 0, len(doms))
	for _, d := range doms {
		dr := DomainReport{State: d.State, Autostart: d.Autostart}
		vm, err := evacuator.ParseVM(d.XML, t.Storage)
		if err != nil {
			dr.VM = evacuator.VM{UUID: d.UUID, Name: d.Name, Reason: "domain XML unreadable"}
			dr.Error = err.Error()
		} else {
			dr.VM = vm
		}
		dr.VM = evacuator.WithAutostart(dr.VM, d.Autostart)
		out = append(out, dr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return lr, out
}

func summarize(r Report) (bool, string) {
	var usable []string
	for _, l := range r.Levels {
		if l.Usable {
			usable = append(usable, string(l.Type))
		}
	}
	if len(r.Levels) == 0 {
		return false, "not ready: the host's policy has no fence levels"
	}
	if len(usable) == 0 {
		var why []string
		for _, l := range r.Levels {
			why = append(why, fmt.Sprintf("%s: %s", l.Type, l.Error))
		}
		return false, fmt.Sprintf("not ready: none of %d fence level(s) is usable (%s)", len(r.Levels), strings.Join(why, "; "))
	}
	s := fmt.Sprintf("ready: %d of %d fence level(s) usable (%s)", len(usable), len(r.Levels), strings.Join(usable, ", "))
	if r.Libvirt != nil && r.Libvirt.Reachable {
		n := 0
		for _, d := range r.Domains {
			if d.Evacuable {
				n++
			}
		}
		s += fmt.Sprintf("; %d of %d domain(s) evacuable", n, len(r.Domains))
		var auto []string
		for _, d := range r.Domains {
			if d.Autostart {
				auto = append(auto, d.Name)
			}
		}
		if len(auto) > 0 {
			s += fmt.Sprintf("; %s: %s (chime-agent turns it off)", evacuator.AutostartReason, strings.Join(auto, ", "))
		}
	} else if r.Libvirt != nil {
		s += "; libvirt unreachable, domains unknown"
	}
	return true, s
}

func round(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.String()
}
