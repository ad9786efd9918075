package configs

import "time"

// FenceLevelType is how one fence level acts on a host.
type FenceLevelType string

const (
	// LevelAgentDrain asks the host's agent to stop every domain; verified
	// when the agent reports none running.
	LevelAgentDrain FenceLevelType = "agent-drain"
	// LevelIPMI powers the host off through its IPMI BMC; verified when the
	// chassis reads back Off.
	LevelIPMI FenceLevelType = "ipmi"
	// LevelRedfish powers the host off through its Redfish BMC (ForceOff);
	// verified when PowerState reads back Off.
	LevelRedfish FenceLevelType = "redfish"
)

// BMCType is the BMC a level needs, or "" for agent-drain.
func (t FenceLevelType) BMCType() BMCType {
	switch t {
	case LevelIPMI:
		return BMCIPMI
	case LevelRedfish:
		return BMCRedfish
	}
	return ""
}

// FenceLevel is one step of a fencing policy. In YAML a bare string
// (`ipmi`) is a level with the policy's default timeout and retries.
type FenceLevel struct {
	Type    FenceLevelType `mapstructure:"type" json:"type" yaml:"type"`
	Timeout time.Duration  `mapstructure:"timeout" json:"timeout,omitempty" yaml:"timeout,omitempty"`
	Retries *int           `mapstructure:"retries" json:"retries,omitempty" yaml:"retries,omitempty"`
	// SettleDelay waits after Off is first read before trusting it, for BMCs
	// known to report Off early.
	SettleDelay time.Duration `mapstructure:"settle_delay" json:"settle_delay,omitempty" yaml:"settle_delay,omitempty"`
}

// OnIsolation is what to do with a host that is silent, answers no probe,
// and whose BMC says power is on: the patent's "network congestion or hung
// host" case.
type OnIsolation string

const (
	// IsolationAlert only alerts (the default).
	IsolationAlert OnIsolation = "alert"
	// IsolationFence powers the host off through its BMC levels after
	// isolation_grace (outside a storm), verifies Off, then evacuates, as
	// for a host-down verdict; with action: reboot it is powered on again.
	IsolationFence OnIsolation = "fence"
	// IsolationReboot powers the host off, verifies Off, then on: a reboot
	// is what usually cures a hung kernel. It comes back drained.
	IsolationReboot OnIsolation = "reboot"
)

// Fences reports whether the policy powers an isolated host off.
func (o OnIsolation) Fences() bool { return o == IsolationFence || o == IsolationReboot }

// FenceAction is what a fence does to the host's power.
type FenceAction string

const (
	ActionOff    FenceAction = "off"
	ActionReboot FenceAction = "reboot" // off, verify, on; the host stays drained
)

// StormGuardSpec is the partial form of StormGuard.
type StormGuardSpec struct {
	MaxUnreachableFraction     *float64       `mapstructure:"max_unreachable_fraction" json:"max_unreachable_fraction,omitempty" yaml:"max_unreachable_fraction,omitempty"`
	MaxRackUnreachableFraction *float64       `mapstructure:"max_rack_unreachable_fraction" json:"max_rack_unreachable_fraction,omitempty" yaml:"max_rack_unreachable_fraction,omitempty"`
	Window                     *time.Duration `mapstructure:"window" json:"window,omitempty" yaml:"window,omitempty"`
}

// PolicySpec is a policy layer: every field is optional, and a set field
// replaces the one below it. Levels are replaced as a whole list, never
// merged by index, so an override cannot produce a level order nobody wrote.
type PolicySpec struct {
	Levels       []FenceLevel   `mapstructure:"levels" json:"levels,omitempty" yaml:"levels,omitempty"`
	LevelTimeout *time.Duration `mapstructure:"level_timeout" json:"level_timeout,omitempty" yaml:"level_timeout,omitempty"`
	LevelRetries *int           `mapstructure:"level_retries" json:"level_retries,omitempty" yaml:"level_retries,omitempty"`
	Action       *FenceAction   `mapstructure:"action" json:"action,omitempty" yaml:"action,omitempty"`
	Evacuate     *bool          `mapstructure:"evacuate" json:"evacuate,omitempty" yaml:"evacuate,omitempty"`
	// TrustAgentDrain lets an evacuation start on its own when an agent's
	// drain is the only proof (default false): the agent-drain level
	// powers nothing off, so the proof is the word of a host that may be
	// compromised or half-alive. Without it the host is fenced and
	// drained, and an operator rebuilds.
	TrustAgentDrain            *bool          `mapstructure:"trust_agent_drain" json:"trust_agent_drain,omitempty" yaml:"trust_agent_drain,omitempty"`
	OnIsolation                *OnIsolation   `mapstructure:"on_isolation" json:"on_isolation,omitempty" yaml:"on_isolation,omitempty"`
	IsolationGrace             *time.Duration `mapstructure:"isolation_grace" json:"isolation_grace,omitempty" yaml:"isolation_grace,omitempty"`
	MaxConcurrentFences        *int           `mapstructure:"max_concurrent_fences" json:"max_concurrent_fences,omitempty" yaml:"max_concurrent_fences,omitempty"`
	MaxConcurrentFencesPerRack *int           `mapstructure:"max_concurrent_fences_per_rack" json:"max_concurrent_fences_per_rack,omitempty" yaml:"max_concurrent_fences_per_rack,omitempty"`
	MinFenceInterval           *time.Duration `mapstructure:"min_fence_interval" json:"min_fence_interval,omitempty" yaml:"min_fence_interval,omitempty"`
	FenceReadinessInterval     *time.Duration `mapstructure:"fence_readiness_interval" json:"fence_readiness_interval,omitempty" yaml:"fence_readiness_interval,omitempty"`
	StormGuard                 StormGuardSpec `mapstructure:"storm_guard" json:"storm_guard,omitzero" yaml:"storm_guard,omitempty"`
}

// StormGuard pauses all decisions when too many hosts go silent at once:
// that looks like the daemon's own partition, not many dead hosts.
type StormGuard struct {
	MaxUnreachableFraction     float64       `json:"max_unreachable_fraction" yaml:"max_unreachable_fraction"`
	MaxRackUnreachableFraction float64       `json:"max_rack_unreachable_fraction" yaml:"max_rack_unreachable_fraction"`
	Window                     time.Duration `json:"window" yaml:"window"`
}

// Level is a resolved fence level: every field set.
type Level struct {
	Type        FenceLevelType `json:"type" yaml:"type"`
	Timeout     time.Duration  `json:"timeout" yaml:"timeout"`
	Retries     int            `json:"retries" yaml:"retries"`
	SettleDelay time.Duration  `json:"settle_delay" yaml:"settle_delay"`
}

// Policy is a host's effective fencing policy: every field set.
type Policy struct {
	// Name is the named policy it was built from.
	Name                       string        `json:"name" yaml:"name"`
	Levels                     []Level       `json:"levels" yaml:"levels"`
	Action                     FenceAction   `json:"action" yaml:"action"`
	Evacuate                   bool          `json:"evacuate" yaml:"evacuate"`
	TrustAgentDrain            bool          `json:"trust_agent_drain" yaml:"trust_agent_drain"`
	OnIsolation                OnIsolation   `json:"on_isolation" yaml:"on_isolation"`
	IsolationGrace             time.Duration `json:"isolation_grace" yaml:"isolation_grace"`
	MaxConcurrentFences        int           `json:"max_concurrent_fences" yaml:"max_concurrent_fences"`
	MaxConcurrentFencesPerRack int           `json:"max_concurrent_fences_per_rack" yaml:"max_concurrent_fences_per_rack"`
	MinFenceInterval           time.Duration `json:"min_fence_interval" yaml:"min_fence_interval"`
	FenceReadinessInterval     time.Duration `json:"fence_readiness_interval" yaml:"fence_readiness_interval"`
	StormGuard                 StormGuard    `json:"storm_guard" yaml:"storm_guard"`
}

func ptr[T any](v T) *T { return &v }

// BuiltinPolicy is the bottom layer: the safe choices an operator gets by
// saying nothing. Isolation only alerts; one fence at a time; no evacuation
// without an explicit `evacuate: true` would be too timid for an HA daemon,
// so evacuation is on, but only ever after a verified fence.
func BuiltinPolicy() PolicySpec {
	return PolicySpec{
		Levels:                     []FenceLevel{{Type: LevelIPMI}},
		LevelTimeout:               ptr(10 * time.Second),
		LevelRetries:               ptr(2),
		Action:                     ptr(ActionOff),
		Evacuate:                   ptr(true),
		TrustAgentDrain:            ptr(false),
		OnIsolation:                ptr(IsolationAlert),
		IsolationGrace:             ptr(2 * time.Minute),
		MaxConcurrentFences:        ptr(2),
		MaxConcurrentFencesPerRack: ptr(1),
		MinFenceInterval:           ptr(10 * time.Second),
		FenceReadinessInterval:     ptr(10 * time.Minute),
		StormGuard: StormGuardSpec{
			MaxUnreachableFraction:     ptr(0.5),
			MaxRackUnreachableFraction: ptr(1.0),
			Window:                     ptr(time.Minute),
		},
	}
}

// Overlay returns base with every field set in over replacing it.
func Overlay(base, over PolicySpec) PolicySpec {
	out := base
	if over.Levels != nil {
		out.Levels = append([]FenceLevel(nil), over.Levels...)
	}
	set(&out.LevelTimeout, over.LevelTimeout)
	set(&out.LevelRetries, over.LevelRetries)
	set(&out.Action, over.Action)
	set(&out.Evacuate, over.Evacuate)
	set(&out.TrustAgentDrain, over.TrustAgentDrain)
	set(&out.OnIsolation, over.OnIsolation)
	set(&out.IsolationGrace, over.IsolationGrace)
	set(&out.MaxConcurrentFences, over.MaxConcurrentFences)
	set(&out.MaxConcurrentFencesPerRack, over.MaxConcurrentFencesPerRack)
	set(&out.MinFenceInterval, over.MinFenceInterval)
	set(&out.FenceReadinessInterval, over.FenceReadinessInterval)
	set(&out.StormGuard.MaxUnreachableFraction, over.StormGuard.MaxUnreachableFraction)
	set(&out.StormGuard.MaxRackUnreachableFraction, over.StormGuard.MaxRackUnreachableFraction)
	set(&out.StormGuard.Window, over.StormGuard.Window)
	return out
}

func set[T any](dst **T, src *T) {
	if src != nil {
		v := *src
		*dst = &v
	}
}

// ResolvePolicy is the one place a host's effective policy is computed:
// built-in defaults, then `defaults`, then the named policy, then the rack's
// override, then the host's override. layers must start from a spec with
// every field set (BuiltinPolicy does), which Resolve relies on.
func ResolvePolicy(name string, layers ...PolicySpec) Policy {
	s := BuiltinPolicy()
	for _, l := range layers {
		s = Overlay(s, l)
	}
	p := Policy{
		Name:                       name,
		Action:                     *s.Action,
		Evacuate:                   *s.Evacuate,
		TrustAgentDrain:            *s.TrustAgentDrain,
		OnIsolation:                *s.OnIsolation,
		IsolationGrace:             *s.IsolationGrace,
		MaxConcurrentFences:        *s.MaxConcurrentFences,
		MaxConcurrentFencesPerRack: *s.MaxConcurrentFencesPerRack,
		MinFenceInterval:           *s.MinFenceInterval,
		FenceReadinessInterval:     *s.FenceReadinessInterval,
		StormGuard: StormGuard{
			MaxUnreachableFraction:     *s.StormGuard.MaxUnreachableFraction,
			MaxRackUnreachableFraction: *s.StormGuard.MaxRackUnreachableFraction,
			Window:                     *s.StormGuard.Window,
		},
	}
	for _, l := range s.Levels {
		lv := Level{Type: l.Type, Timeout: l.Timeout, Retries: *s.LevelRetries, SettleDelay: l.SettleDelay}
		if lv.Timeout == 0 {
			lv.Timeout = *s.LevelTimeout
		}
		if l.Retries != nil {
			lv.Retries = *l.Retries
		}
		p.Levels = append(p.Levels, lv)
	}
	return p
}
