package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/drivers/probe"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/node"
	"github.com/chimestack/chime-fence/operations"
	"github.com/chimestack/chime-fence/recovery"
	"github.com/chimestack/chime-fence/store"
)

func newDaemonCmd() *cobra.Command {
	var file, level string
	c := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon: detection, verdicts, fencing, evacuation, alerts, API",
		Long: `daemon watches every configured host: it takes agents' heartbeats, probes
hosts whose heartbeats stop, reads their BMCs, and records a verdict for each
with its evidence. In mode enforce a host-down verdict is fenced (each level
verified by reading the power state back), the host is marked drained, and
its VMs are rebuilt on healthy hosts from their saved domain XML. In mode
observe it is only recorded as "would fence".

SIGHUP reloads the configuration (a bad one is refused and the old one kept);
SIGTERM or SIGINT stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lvl, err := zerolog.ParseLevel(level)
			if err != nil {
				return usageErr(fmt.Errorf("--log-level %q: %w", level, err))
			}
			log := zerolog.New(cmd.ErrOrStderr()).Level(lvl).With().Timestamp().Logger()
			// For benchmarks: CHIME_FENCE_CPUPROFILE=FILE profiles the whole run.
			if f := os.Getenv("CHIME_FENCE_CPUPROFILE"); f != "" {
				stopProfile, err := startCPUProfile(f)
				if err != nil {
					return failureErr(err)
				}
				defer stopProfile()
			}
			if f := os.Getenv("CHIME_FENCE_MEMPROFILE"); f != "" {
				defer writeHeapProfile(f, log)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			return runDaemon(ctx, file, hup, log)
		},
	}
	c.Flags().StringVarP(&file, "config", "c", defaultConfig(), "configuration file")
	c.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error")
	c.SetContext(context.Background())
	return c
}

func readToken(what, file string) (string, error) {
	if file == "" {
		return "", usageErr(fmt.Errorf("controller.%s_token_file is not set: the daemon never serves an unauthenticated API", what))
	}
	t, err := configs.Secret{What: what + " token", File: file}.Read()
	if err != nil {
		return "", usageErr(err)
	}
	return t, nil
}

func runDaemon(ctx context.Context, file string, hup <-chan os.Signal, log zerolog.Logger) error {
	cs, err := configs.NewStore(file)
	if err != nil {
		return usageErr(err)
	}
	cfg := cs.Current()
	tokens, err := api.ReadTokens(cfg.Controller)
	if err != nil {
		return usageErr(err)
	}
	tlsCfg, err := api.TLSConfig(cfg.Controller)
	if err != nil {
		return usageErr(err)
	}
	if cfg.Controller.StateDir == "" {
		return usageErr(errors.New("controller.state_dir is not set: the daemon keeps its history and admin states there"))
	}
	ln, err := net.Listen("tcp", cfg.Controller.Listen)
	if err != nil {
		return failureErr(fmt.Errorf("listen on controller.listen %s: %w", cfg.Controller.Listen, err))
	}
	defer ln.Close()
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	// Agents' heartbeat datagrams; "" shares the API's address and the
	// port it actually bound.
	var hbConn *net.UDPConn
	if addr, on := cfg.Controller.HeartbeatUDPAddr(ln.Addr()); on {
		if hbConn, err = api.ListenHeartbeats(addr); err != nil {
			how := ""
			if cfg.Controller.HeartbeatUDPListen == "" {
				how = ` is "": controller.listen's address`
			}
			return failureErr(fmt.Errorf("listen for UDP heartbeats on %s (controller.heartbeat_udp_listen%s; \"off\" takes heartbeats over HTTP only): %w", addr, how, err))
		}
		defer hbConn.Close()
	}

	st, err := store.Open(store.Path(cfg.Controller.StateDir), store.Options{})
	if err != nil {
		return failureErr(err)
	}
	defer st.Close()
	memos, err := st.HostMemos()
	if err != nil {
		return failureErr(err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	hooks, err := alertHooks(cfg)
	if err != nil {
		return usageErr(err)
	}
	alerts, err := alert.New(alert.Config{Webhooks: hooks, Outbox: st, Cluster: cfg.Cluster.Name, Log: log, Registerer: reg})
	if err != nil {
		return failureErr(err)
	}
	drv := newHostDrivers(probe.New(probe.Options{Log: log}), log)
	drv.configure(cfg)
	var coord *recovery.Coordinator // set before the engine runs
	eng, err := detector.NewEngine(engineConfig(cfg), detector.Deps{
		Prober: drv, Refs: drv, Power: drv, Readiness: drv,
		History: st, Memos: st, Alerter: detectorAlerts{cluster: cfg.Cluster.Name, send: alerts.Send, log: log.With().Str("component", "alert").Logger()}, Log: log,
		OnHostDown: func(ev detector.DownEvent) { coord.HostDown(ev) },
	}, memos)
	if err != nil {
		return usageErr(err)
	}
	d, err := daemon.New(st, eng, func() time.Duration { return cs.Current().Detection.HeartbeatInterval }, nil, log)
	if err != nil {
		return failureErr(err)
	}
	hv := newHypervisors(log)
	hv.configure(cfg)
	defer hv.close()
	stale := newStaleCopies(hv.get, func(ev alert.Event) {
		if err := alerts.Send(ev); err != nil {
			log.Error().Err(err).Str("type", ev.Type).Msg("alert not queued")
		}
	}, func(r store.Record) {
		if _, err := st.Append(r); err != nil {
			log.Error().Err(err).Str("host", r.Host).Msg("cannot record the stale copy's destroy in history")
		}
	}, cfg.Cluster.Name, log)
	defer stale.wait()
	d.OnStaleCopy(stale.seen)
	d.OnDoubleRun(stale.double)
	capture, err := evacuator.NewCapture(captureConfig(cfg), evacuator.CaptureDeps{Store: st, Hypervisor: hv.get,
		Healthy: func(h string) bool { s, ok := eng.Host(h); return ok && s.Monitor == node.Normal }, Log: log})
	if err != nil {
		return failureErr(err)
	}
	if err := capture.SetHosts(cfg.HostNames()); err != nil {
		return usageErr(err)
	}
	var ops *operations.Manager // set before anything runs
	coord, evac, err := newCoordinator(cfg, hv, st, d, capture, alerts, reg,
		func(host, owner string) (func(), error) { return ops.TryLock(host, owner) }, log)
	if err != nil {
		return failureErr(err)
	}
	ops, err = newOperations(cs, st, d, coord, hv, migrateExecutor(cs, d, capture, hv, log), log)
	if err != nil {
		return failureErr(err)
	}
	defer ops.Close()
	var engRunning atomic.Bool
	srv, err := api.New(d, tokens, reg, log, api.WithOperations(taskBackend{Manager: ops, evac: evac, tasks: evacuator.StoreJournal{S: st}}), api.WithFences(st),
		api.WithEvacuability(notEvacuable(d.Homes, st.Inventory, func(host, uuid string) (string, time.Time, bool, error) {
			return evacuator.ReadMirror(captureConfig(hv.config()).MirrorDir, host, uuid)
		})),
		api.WithReadiness(func() []string {
			var p []string
			if err := st.Probe(time.Now()); err != nil {
				p = append(p, "journal not writable: "+err.Error())
			}
			if !engRunning.Load() {
				p = append(p, "detector is not running")
			}
			return p
		}))
	if err != nil {
		return failureErr(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	engDone := make(chan struct{})
	var workers sync.WaitGroup
	for _, run := range []func(context.Context) error{alerts.Run, capture.Run, coord.Run} {
		workers.Add(1)
		go func() { defer workers.Done(); _ = run(ctx) }()
	}
	defer workers.Wait()
	engRunning.Store(true)
	go func() { defer close(engDone); defer engRunning.Store(false); _ = eng.Run(ctx) }()
	srvErr := make(chan error, 1)
	go func() { srvErr <- hs.Serve(ln) }()
	var udpErr chan error // nil (never ready) when UDP heartbeats are off
	udpAddr := "off"
	if hbConn != nil {
		udpErr, udpAddr = make(chan error, 1), hbConn.LocalAddr().String()
		udpDone := make(chan struct{})
		go func() { defer close(udpDone); udpErr <- srv.ServeHeartbeats(ctx, hbConn) }()
		defer func() { cancel(); <-udpDone }()
	}

	dlog := log.With().Str("component", "daemon").Logger()
	if cfg.Mode != configs.ModeEnforce {
		dlog.Warn().Msg("mode observe: host-down verdicts are recorded as \"would fence\"; nothing is fenced or moved")
	}
	dlog.Info().Str("listen", ln.Addr().String()).Str("heartbeat_udp", udpAddr).Int("hosts", len(cfg.Hosts)).Str("mode", string(cfg.Mode)).
		Str("state", st.Path()).Msg("daemon started")
	for {
		select {
		case <-hup:
			prev := cs.Current()
			next, err := cs.Reload()
			if err != nil {
				dlog.Error().Err(err).Msg("config reload refused; keeping the running configuration")
				_ = alerts.Send(alert.Event{Type: alert.ConfigReloadFailed, Severity: "warning", At: time.Now(), Cluster: cfg.Cluster.Name,
					Summary: "config reload refused; the running configuration is kept: " + err.Error()})
				continue
			}
			if nh, err := alertHooks(next); err != nil {
				dlog.Error().Err(err).Msg("config reload: webhook secrets unreadable; keeping the running configuration")
				continue
			} else {
				if err := alerts.Reconfigure(nh); err != nil {
					dlog.Error().Err(err).Msg("config reload: webhooks refused")
				}
			}
			drv.configure(next)
			hv.configure(next)
			if err := capture.SetHosts(next.HostNames()); err != nil {
				dlog.Error().Err(err).Msg("config reload: inventory capture refused the host list")
			}
			if prev.Mode != next.Mode {
				// Logged before the detector acts on it: switching to enforce
				// hands over every verdict that already calls for a fence.
				dlog.Warn().Str("from", string(prev.Mode)).Str("to", string(next.Mode)).Msgf("config reload: mode %s → %s", prev.Mode, next.Mode)
			}
			if err := eng.Reconfigure(engineConfig(next)); err != nil {
				dlog.Error().Err(err).Msg("config reload: detector refused the new thresholds")
				continue
			}
			dlog.Info().Int("hosts", len(next.Hosts)).Msg("configuration reloaded")
		case err := <-srvErr:
			cancel()
			<-engDone
			return failureErr(fmt.Errorf("API server: %w", err))
		case err := <-udpErr:
			cancel()
			_ = hs.Close()
			<-engDone
			return failureErr(fmt.Errorf("UDP heartbeats: %w", err))
		case <-ctx.Done():
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = hs.Shutdown(sctx)
			scancel()
			<-engDone
			dlog.Info().Msg("daemon stopped")
			return nil
		}
	}
}

// agentDefaultInterval is chime-agent's --heartbeat-interval default, the
// pace of an agent the daemon has not answered yet.
const agentDefaultInterval = 5 * time.Second

// engineConfig maps the configuration onto the detector's tuning.
func engineConfig(cfg *configs.Config) detector.EngineConfig {
	def := configs.Overlay(configs.BuiltinPolicy(), cfg.Defaults)
	ec := detector.EngineConfig{
		Monitor: detector.MonitorConfig{
			Thresholds: detector.Thresholds{HeartbeatInterval: cfg.Detection.HeartbeatInterval,
				MissedHeartbeats: cfg.Detection.MissedHeartbeats, ProbeTimeout: cfg.Detection.ProbeTimeout},
			RecoveryHeartbeats: cfg.Detection.RecoveryHeartbeats,
			Settle:             cfg.Detection.HeartbeatInterval,
			MaxClockSkew:       cfg.Detection.HeartbeatMaxClockSkew,
			// Agents beat at their own pace (chime-agent's default 5 s)
			// until the daemon's first answer names detection's interval:
			// one window at that pace before a host never heard from since
			// the start counts as silent.
			StartGrace: time.Duration(cfg.Detection.MissedHeartbeats) * max(cfg.Detection.HeartbeatInterval, agentDefaultInterval),
		},
		Storm: detector.StormGuard{MaxFraction: *def.StormGuard.MaxUnreachableFraction, Window: *def.StormGuard.Window,
			MaxRackFraction: map[string]float64{}},
		References: len(cfg.Detection.ReferenceAddresses),
		Enforce:    cfg.Mode == configs.ModeEnforce,
	}
	for i := range cfg.Hosts {
		h := &cfg.Hosts[i]
		ec.Hosts = append(ec.Hosts, detector.HostConfig{Name: h.Name, Rack: h.Rack, ReadinessInterval: h.Effective.FenceReadinessInterval,
			Isolation: isolationPolicy(h.Effective)})
		if _, ok := ec.Storm.MaxRackFraction[h.Rack]; !ok {
			ec.Storm.MaxRackFraction[h.Rack] = h.Effective.StormGuard.MaxRackUnreachableFraction
		}
	}
	return ec
}

// detectorAlerts turns the detector's alerts into webhook events.
type detectorAlerts struct {
	cluster string
	send    func(alert.Event) error
	log     zerolog.Logger
}

func (a detectorAlerts) Alert(_ context.Context, al detector.Alert) {
	ev := alert.Event{At: al.At, Cluster: a.cluster, Host: al.Host, CorrelationID: al.CorrelationID, Summary: al.Summary,
		Type: alert.HostVerdict, Severity: "warning", Details: map[string]any{"verdict": al.Kind}}
	switch {
	case al.Kind == "host-down":
		ev.Type, ev.Severity = alert.HostUnreachable, "critical"
	case al.Kind == detector.AlertStormPaused:
		ev.Type, ev.Severity = alert.StormEngaged, "critical"
	case al.Kind == detector.AlertStormCleared:
		ev.Type, ev.Severity = alert.StormCleared, "info"
	case al.Kind == "readiness":
		ev.Type = alert.FenceReadiness
	case al.Kind == detector.AlertHeartbeatStale:
		ev.Type, ev.Severity = alert.HeartbeatRefused, "critical"
	case al.Kind == detector.AlertHeartbeatSkewed || al.Kind == detector.AlertHeartbeatReplayed:
		ev.Type = alert.HeartbeatRefused
	}
	a.log.Warn().Str("host", al.Host).Str("kind", al.Kind).Str("correlation_id", al.CorrelationID).Msg(al.Summary)
	if err := a.send(ev); err != nil {
		a.log.Error().Err(err).Msg("alert not queued")
	}
}

func startCPUProfile(file string) (func(), error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("CHIME_FENCE_CPUPROFILE: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("CHIME_FENCE_CPUPROFILE: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// writeHeapProfile writes the live heap as the daemon stops (benchmarks).
func writeHeapProfile(file string, log zerolog.Logger) {
	f, err := os.Create(file)
	if err != nil {
		log.Error().Err(err).Msg("CHIME_FENCE_MEMPROFILE")
		return
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		log.Error().Err(err).Msg("CHIME_FENCE_MEMPROFILE")
	}
}
