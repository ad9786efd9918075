package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

// hypervisors keeps one libvirt client per host for the inventory capture
// and the rebuilds; configure replaces them on a reload.
type hypervisors struct {
	log zerolog.Logger

	mu      sync.Mutex
	cfg     *configs.Config
	clients map[string]*libvirt.Client
}

func newHypervisors(log zerolog.Logger) *hypervisors {
	return &hypervisors{log: log, clients: map[string]*libvirt.Client{}}
}

func (h *hypervisors) configure(cfg *configs.Config) {
	h.mu.Lock()
	old := h.clients
	h.cfg, h.clients = cfg, map[string]*libvirt.Client{}
	h.mu.Unlock()
	// In the background: closing a client waits for its call in flight,
	// and a hung host's libvirtd holds one until the call times out. A
	// reload (SIGHUP) must not stall behind it: the lab measured 7 s
	// between the signal and a switch to enforce with one host hung.
	for _, c := range old {
		go func() { _ = c.Close() }()
	}
}

// get builds the host's client on first use.
func (h *hypervisors) get(host string) (evacuator.Hypervisor, error) { return h.client(host) }

// client is get with the concrete driver (migration needs more of it).
func (h *hypervisors) client(host string) (*libvirt.Client, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.clients[host]; ok {
		return c, nil
	}
	hc, ok := h.cfg.Host(host)
	if !ok {
		return nil, fmt.Errorf("host %q is not configured", host)
	}
	c, err := libvirtClient(hc, h.log)
	if err != nil {
		return nil, err
	}
	h.clients[host] = c
	return c, nil
}

// close closes every client before the daemon exits (as before the
// background close in configure: a stop waits for calls in flight).
func (h *hypervisors) close() {
	h.mu.Lock()
	old := h.clients
	h.clients = map[string]*libvirt.Client{}
	h.mu.Unlock()
	for _, c := range old {
		_ = c.Close()
	}
}

func (h *hypervisors) config() *configs.Config {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cfg
}

// fenceSetup maps a host's effective policy onto the fencer's plan,
// building fresh BMC drivers (and reading their passwords) now, so a
// reloaded config or a rotated password applies to the next fence.
func fenceSetup(cfg *configs.Config, host string, log zerolog.Logger) (recovery.FenceSetup, error) {
	h, ok := cfg.Host(host)
	if !ok {
		return recovery.FenceSetup{}, fmt.Errorf("host %q is not configured", host)
	}
	pol := h.Effective
	p := fencer.Plan{Host: h.Name, Rack: h.Rack, Action: fencer.ActionOff}
	if pol.Action == configs.ActionReboot {
		p.Action = fencer.ActionReboot
	}
	for _, l := range pol.Levels {
		lp := fencer.LevelPlan{Name: string(l.Type), Timeout: l.Timeout, Retries: l.Retries, Settle: l.SettleDelay}
		if l.Type == configs.LevelAgentDrain {
			c, err := agentClient(cfg, h)
			if err != nil {
				lp.SetupErr = err
			} else {
				lp.Drainer = agentDrainer{c}
			}
		} else {
			b, _ := h.BMC(l.Type.BMCType()) // presence checked by configs
			pc, err := powerController(h, b, log)
			if err != nil {
				lp.SetupErr = err
			} else {
				lp.Power = pc
			}
		}
		p.Levels = append(p.Levels, lp)
	}
	return recovery.FenceSetup{Plan: p, Evacuate: pol.Evacuate, TrustAgentDrain: pol.TrustAgentDrain, Isolation: isolationPolicy(pol), Limits: fencer.Limits{
		MaxConcurrent: pol.MaxConcurrentFences, MaxConcurrentPerRack: pol.MaxConcurrentFencesPerRack, MinInterval: pol.MinFenceInterval}}, nil
}

// isolationPolicy maps on_isolation and isolation_grace onto the
// detector's terms; configs has validated the value.
func isolationPolicy(pol configs.Policy) detector.IsolationPolicy {
	a, err := detector.ParseIsolationAction(string(pol.OnIsolation))
	if err != nil {
		a = detector.IsolationAlert // unreachable after validation; never fence on a value nobody checked
	}
	return detector.IsolationPolicy{Action: a, Grace: pol.IsolationGrace}
}

// candidates describes every host but the failed one for the scheduler:
// eligibility from the admin and monitor states, capacity and load from
// samples (the last capture's, or one taken at plan time). A host the
// daemon has not judged yet (monitor unknown: it just started) is
// eligible only when its libvirt answered a sample now: that answer is
// what says it is alive. Pure.
func candidates(st daemon.Status, failed string, samples map[string]evacuator.SampleResult) []evacuator.Candidate {
	out := make([]evacuator.Candidate, 0, len(st.Hosts))
	for _, h := range st.Hosts {
		c := evacuator.Candidate{Name: h.Name, Rack: h.Rack, Eligible: true, FreeMemoryMiB: -1, Load: -1}
		s := samples[h.Name]
		switch {
		case h.Name == failed:
			c.Eligible, c.Why = false, "is the failed host"
		case h.Admin != node.Enabled:
			c.Eligible, c.Why = false, "admin "+h.Admin.String()
		case h.Monitor == node.Unknown && !(s.OK && s.Sampled):
			c.Eligible, c.Why = false, "monitor unknown (not judged yet) and libvirt did not answer a sample at plan time"
		case h.Monitor != node.Normal && h.Monitor != node.Unknown:
			c.Eligible, c.Why = false, "monitor "+h.Monitor.String()
		}
		if s.OK {
			l := s.Load
			c.CPUs, c.MemoryMiB, c.FreeMemoryMiB, c.Load = l.CPUs, l.MemoryMiB, l.FreeMemoryMiB, l.Load
			c.UsedVCPUs, c.UsedMemoryMiB = l.UsedVCPUs, l.UsedMemoryMiB
		} else if c.Eligible {
			why := "capacity unknown: no libvirt sample"
			if s.Err != nil {
				why = "capacity unknown: libvirt did not answer a sample at plan time: " + s.Err.Error()
			}
			c.Eligible, c.Why = false, why
		}
		out = append(out, c)
	}
	return out
}

// sampler measures capacity for a plan; *evacuator.Capture is one.
type sampler interface {
	SampleStale(ctx context.Context, hosts []string, maxAge time.Duration, fresh func(string) bool) map[string]evacuator.SampleResult
}

// planCandidates is candidates on samples no older than the plan allows:
// every host that could take a VM (enabled, monitor normal or not judged
// yet) whose last sample is missing or older than
// evacuator.DefaultPlanSampleAge is sampled now, in parallel, within
// evacuator.DefaultPlanSampleTimeout. A plan never fails on "capacity
// unknown" for a host whose libvirt answers.
func planCandidates(ctx context.Context, st daemon.Status, failed string, s sampler) []evacuator.Candidate {
	var hosts []string
	unknown := map[string]bool{}
	for _, h := range st.Hosts {
		if h.Name == failed || h.Admin != node.Enabled || (h.Monitor != node.Normal && h.Monitor != node.Unknown) {
			continue
		}
		hosts = append(hosts, h.Name)
		unknown[h.Name] = h.Monitor == node.Unknown
	}
	ctx, cancel := context.WithTimeout(ctx, evacuator.DefaultPlanSampleTimeout)
	defer cancel()
	samples := s.SampleStale(ctx, hosts, evacuator.DefaultPlanSampleAge, func(h string) bool { return unknown[h] })
	return candidates(st, failed, samples)
}

func schedulerLimits(cfg *configs.Config) evacuator.Limits {
	s := cfg.Scheduler
	return evacuator.Limits{CPUOvercommit: s.CPUOvercommit, MemoryOvercommit: s.MemoryOvercommit,
		ReservedCPUs: s.ReservedCPUs, ReservedMemoryMiB: int64(s.ReservedMemoryMiB)}
}

func storageRules(cfg *configs.Config) evacuator.StorageRules {
	return evacuator.StorageRules{SharedPaths: cfg.Storage.SharedPaths, RBDShared: cfg.Storage.RBDShared}
}

// rewriteFor adapts a saved domain to its target host.
func rewriteFor(cfg func() *configs.Config) func(xml, target string) (string, error) {
	return func(xml, target string) (string, error) {
		c := cfg()
		r := evacuator.RewriteRules{GraphicsListen: c.Scheduler.GraphicsListen}
		if h, ok := c.Host(target); ok {
			r.BridgeMap = h.Bridges
		}
		return evacuator.Rewrite(xml, r)
	}
}

// agentDrainer is the agent-drain fence level's view of an agent.
type agentDrainer struct{ c *agent.Client }

func (a agentDrainer) Drain(ctx context.Context) (int, error) {
	res, err := a.c.Drain(ctx)
	stopped := 0
	for _, d := range res.Domains {
		if d.Action == "destroyed" {
			stopped++
		}
	}
	return stopped, err
}

func (a agentDrainer) Running(ctx context.Context) (int, error) {
	st, err := a.c.Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Running(), nil
}

// alertHooks reads every webhook's secret now, so a missing secret file
// fails the start (or the reload) instead of the first alert.
func alertHooks(cfg *configs.Config) ([]alert.Webhook, error) {
	out := make([]alert.Webhook, 0, len(cfg.Alerts.Webhooks))
	for _, w := range cfg.Alerts.Webhooks {
		h := alert.Webhook{Name: w.Name, URL: w.URL, Events: w.Events, Timeout: w.Timeout, Retries: w.Retries, Format: w.Format}
		if w.SecretFile != "" {
			s, err := configs.Secret{What: "webhook " + w.Name + " secret", File: w.SecretFile}.Read()
			if err != nil {
				return nil, err
			}
			h.Secret = []byte(s)
		}
		out = append(out, h)
	}
	return out, nil
}

func captureConfig(cfg *configs.Config) evacuator.CaptureConfig {
	dir := cfg.Storage.InventoryDir
	if dir == "-" {
		dir = ""
	}
	// Spread the first captures, so a daemon (re)starting with thousands of
	// hosts does not dial every libvirtd in the same second, but only as
	// far as the cluster's size needs (20ms a host, at most 30s): until a
	// host is captured once its VMs can only be rebuilt from the mirror.
	// A host not healthy yet (the daemon just started and has not judged
	// it) is looked at again every second: that look costs no I/O.
	spread := min(cfg.Storage.InventoryInterval, 30*time.Second, time.Duration(len(cfg.Hosts))*20*time.Millisecond)
	return evacuator.CaptureConfig{Interval: cfg.Storage.InventoryInterval, MirrorDir: dir, Storage: storageRules(cfg),
		StartSpread: spread, HealthPoll: time.Second}
}

// crashEnv is for the lab's crash test only: the daemon SIGKILLs itself
// after the evacuation journal's Nth write, so the test proves a restart
// resumes from every step.
const crashEnv = "CHIME_FENCE_TEST_CRASH_AFTER_JOURNAL_WRITE"

func crashHook(log zerolog.Logger) func(n int) {
	v := os.Getenv(crashEnv)
	if v == "" {
		return nil
	}
	at, err := strconv.Atoi(v)
	if err != nil || at < 1 {
		log.Error().Str(crashEnv, v).Msg("ignored: not a positive integer")
		return nil
	}
	log.Warn().Int("write", at).Msgf("%s is set: this daemon will kill itself after that evacuation journal write", crashEnv)
	return func(n int) {
		// Every write is logged: the test learns how many writes a run
		// took when the crash point lies beyond them.
		log.Info().Int("write", n).Msgf("crash test: evacuation journal write %d", n)
		if n == at {
			log.Warn().Int("write", n).Msg("crash test: SIGKILL now")
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}

// crashFenceEnv is the lab crash test's hook before the evacuation: the
// daemon SIGKILLs itself right after the first fence record in the named
// state ("fencing": the intent, before any BMC is touched; "verified":
// the proof, before the host is marked drained and the plan is made) is
// durable.
const crashFenceEnv = "CHIME_FENCE_TEST_CRASH_AFTER_FENCE_WRITE"

// crashFenceJournal returns j, wrapped when crashFenceEnv is set.
func crashFenceJournal(j recovery.Journal, log zerolog.Logger) recovery.Journal {
	v := os.Getenv(crashFenceEnv)
	if v == "" {
		return j
	}
	if v != store.FenceInFlight && v != store.FenceVerified {
		log.Error().Str(crashFenceEnv, v).Msgf("ignored: want %q or %q", store.FenceInFlight, store.FenceVerified)
		return j
	}
	log.Warn().Str("state", v).Msgf("%s is set: this daemon will kill itself after writing a fence record in that state", crashFenceEnv)
	return crashJournal{Journal: j, at: v, log: log}
}

type crashJournal struct {
	recovery.Journal
	at  string
	log zerolog.Logger
}

func (c crashJournal) PutFence(r store.FenceRecord) error {
	err := c.Journal.PutFence(r)
	if err == nil && r.State == c.at {
		c.log.Warn().Str("host", r.Host).Str("state", r.State).Msg("crash test: SIGKILL now")
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	return err
}

// evacuationAlertType is the event type of an evacuator alert kind: the
// split-brain guard's refusal is the declared split_brain.refused.
func evacuationAlertType(kind string) string {
	if kind == evacuator.AlertSplitBrain {
		return alert.SplitBrainRefused
	}
	return kind
}

// reportedAutostart is the captured records with autostart as the host's
// last heartbeat reported it, when one did (known): it is newer than a
// capture, which runs once a minute. Pure; recs is not modified.
func reportedAutostart(recs []store.DomainRecord, on map[string]bool, known bool) []store.DomainRecord {
	if !known {
		return recs
	}
	out := make([]store.DomainRecord, len(recs))
	for i, r := range recs {
		r.Autostart = on[r.UUID]
		out[i] = r
	}
	return out
}

func newCoordinator(cfg *configs.Config, hv *hypervisors, st *store.Store, d *daemon.Daemon, capture *evacuator.Capture,
	alerts *alert.Dispatcher, reg prometheus.Registerer, lock func(host, owner string) (func(), error), log zerolog.Logger) (*recovery.Coordinator, *recovery.Evacuation, error) {
	metrics, err := recovery.NewMetrics(reg)
	if err != nil {
		return nil, nil, err
	}
	send := func(ev alert.Event) {
		if err := alerts.Send(ev); err != nil {
			log.Error().Err(err).Str("type", ev.Type).Msg("alert not queued")
		}
	}
	evac := &recovery.Evacuation{D: recovery.EvacuationDeps{
		Homes: d.Homes,
		// The last heartbeat's autostart is fresher than the capture's.
		Saved: func(host string) ([]store.DomainRecord, error) {
			recs, err := st.Inventory(host)
			on, known := d.AutostartOn(host)
			return reportedAutostart(recs, on, known), err
		},
		Candidates: func(ctx context.Context, failed string) []evacuator.Candidate {
			return planCandidates(ctx, d.Status(), failed, capture)
		},
		Storage: storageRules(cfg),
		Limits:  schedulerLimits(cfg),
		Tasks:   evacuator.StoreJournal{S: st},
		Mirror: func(host, uuid string) (string, time.Time, bool, error) {
			return evacuator.ReadMirror(captureConfig(hv.config()).MirrorDir, host, uuid)
		},
		Exec: evacuator.ExecDeps{
			Hypervisor: hv.get,
			// Every host that can answer: an unreachable one (the fenced
			// host among them) would only hold each start up until the
			// call timeout, and is skipped by the guard anyway.
			Peers: func() []string {
				var out []string
				for _, h := range d.Status().Hosts {
					if h.Monitor != node.Unreachable {
						out = append(out, h.Name)
					}
				}
				return out
			},
			Rewrite:       rewriteFor(hv.config),
			Clock:         evacuator.RealClock{},
			PerTarget:     cfg.Scheduler.RebuildsPerTarget,
			VerifyTimeout: cfg.Scheduler.StartTimeout,
			OnVMRunning: func(t evacuator.Task, vm evacuator.VMTask) error {
				return d.Relocate(vm.UUID, vm.Name, t.Host, vm.Target, time.Now())
			},
			Alert: func(kind, summary string) {
				send(alert.Event{Type: evacuationAlertType(kind), Severity: "critical", At: time.Now(), Cluster: cfg.Cluster.Name, Summary: summary})
			},
			AfterSave: crashHook(log),
			Log:       log,
		},
		Now: time.Now,
		Log: log,
	}}
	coord, err := recovery.New(recovery.Config{Cluster: cfg.Cluster.Name}, recovery.Deps{
		Cluster: d, Journal: crashFenceJournal(st, log),
		Setup: func(host string) (recovery.FenceSetup, error) { return fenceSetup(hv.config(), host, log) },
		Fence: func(ctx context.Context, p fencer.Plan) fencer.Result {
			return fencer.Run(ctx, p, fencer.RealClock{}, log) // Run names its component
		},
		Evacuator: evac, Alert: send, Now: time.Now, Log: log, Metrics: metrics, Lock: lock,
	})
	return coord, evac, err
}
