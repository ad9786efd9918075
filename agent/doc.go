// Package agent is chime-agent, the process on every compute host: it
// heartbeats to the daemon, checks the host's health, holds the host's
// assignment (admin state and the domains that should run here), restarts
// domains whose QEMU died, and answers the daemon's status requests.
//
// # Pieces
//
//   - Plan (plan.go) is the pure reconcile decision: assignment + local
//     domains → actions (Start, Missing, Hold). Stops restores reasons
//     libvirtd forgets when it restarts.
//   - Agent (agent.go) is the shell: four loops (health checks, heartbeat,
//     assignment fetch, reconcile) over two small interfaces it defines,
//     Hypervisor (drivers/libvirt.Client) and Daemon (DaemonClient). Give
//     health checks their own libvirt connection (Config.Checks): the
//     driver drops a connection whose call timed out.
//   - UDPClient (udp.go) is the Daemon that sends heartbeats as sealed
//     UDP datagrams (heartbeat.Sealer) over one connected socket and the
//     rest through the DaemonClient it wraps: the assignment, heartbeats
//     too large for a datagram, and in auto mode a beat UDP does not
//     answer within half the interval (at most 1 s). transportPolicy
//     (transport.go, pure, clock passed in) makes HTTP sticky for 10
//     minutes after 3 such beats in a row that HTTP delivered. A reply
//     counts only if it opens with the token's key and answers the beat
//     sent (host, agent start, seq); its ack is applied as an HTTP ack is,
//     and its refusal is an error as an HTTP 4xx is (no HTTP retry).
//   - NewHandler/Serve (server.go) is the HTTP API (GET /v1/status and
//     POST /v1/drain with a bearer token, GET /healthz).
//   - evict.go gets rid of evicted domains (Assignment.Evicted: rebuilt
//     elsewhere while this host was fenced); drain.go is the local drain
//     (marker file, DrainLocal, MarkerLifts), shared with chime-agent
//     drain.
//   - autostart.go keeps libvirt autostart off (autostartLoop, fed by
//     every health-check listing) and notices evicted domains active
//     here; boot.go is chime-agent prepare-boot (PrepareBoot, BootReason),
//     run before libvirtd at boot.
//
// # Safety rules (the caller can rely on them)
//
//   - No domain is ever started while the admin state is not known: before
//     the first assignment arrives (the daemon unreachable at start; the
//     agent retries with backoff and heartbeats meanwhile), and while the
//     held assignment is stale (an ack named another revision; the new one
//     is being fetched). Both count as drained for reconcile.
//   - No domain is started while the host is drained, and the admin state
//     is checked again right before each start (an ack may drain the host
//     during a reconcile round).
//   - Only domains in the assignment, defined locally, and shut off for a
//     reason that means QEMU died or the host restarted (RestartableReason)
//     are started. A domain assigned but not defined here is logged, never
//     created. Domains not in the assignment are never touched.
//   - Evicted domains: at start the assignment is fetched (one attempt,
//     at most 10 s) BEFORE the first heartbeat, and every evicted domain
//     defined here is destroyed (if active) and undefined before the first
//     heartbeat and before any reconcile; later assignments' evicted
//     domains are cleaned up at the start of the next reconcile round. A
//     domain is never undefined unless its destroy succeeded (or it was
//     not active); one libvirt does not list is done. An evicted domain is
//     never started, even if the daemon also assigns it. Failures are
//     heartbeat faults (Health.Evictions, naming domain and error, so the
//     daemon shows the host in error) and are retried every heartbeat
//     interval. A heartbeat whose listing shows an evicted domain always
//     carries a fault for it, so the host never reports ready with one:
//     at a power-on libvirtd often is not up yet when the agent starts
//     (measured in the lab: the first cleanup fails "no such file" on the
//     socket about two runs in three); the copy then goes within a
//     heartbeat interval of libvirtd answering. Only a current (non-stale) assignment's list is acted on:
//     a domain moved back here must not be destroyed from an old list.
//   - Local drain: a drain (POST /v1/drain, chime-agent drain) writes
//     <StateDir>/drained.json durably BEFORE it stops anything, then
//     destroys every active domain. While the marker exists (or cannot be
//     read) no domain is started, in this process or any later one,
//     whatever the daemon says. It is removed only when a current
//     assignment says enabled or disabled with AdminSince after the drain
//     (and after the admin state the agent knew when it drained; see
//     MarkerLifts). Starts and marker writes are serialised by a lock
//     (a mutex plus flock on <StateDir>/.lock, shared with chime-agent
//     drain), so a drain's listing sees every domain the agent started.
//   - When the daemon cannot be reached after an assignment was fetched,
//     the agent keeps acting on the last one it holds (the seed's
//     in-memory copy).
//   - A heartbeat never waits for a health check: checks run in their own
//     goroutines under CheckTimeout and the heartbeat carries the latest
//     results; a check past its deadline reports not OK, "timed out". A
//     check stuck in a syscall (a hung NFS mount) is not started again
//     until it returns.
//   - Heartbeat.Domains is null when the last listing failed or timed out
//     (health.libvirt is then not OK): "unknown", never "no domains".
//     Status fails (HTTP 503) rather than answer an empty list it did not
//     read from libvirt, since the daemon uses it to verify a fence.
//   - Health.IOErrors counts failed storage probes (errors and timeouts)
//     since the last heartbeat the daemon acknowledged. Domains paused on
//     an I/O error are not counted: drivers/libvirt reports reasons only
//     for shut-off domains.
//   - libvirt autostart is turned off for every domain defined on the host
//     (autostart.go), assigned or not, whatever the admin state, as soon
//     as a health-check listing shows it on (within a heartbeat interval),
//     and retried after every listing while it fails. Why every domain:
//     the daemon may evacuate any domain of a host it fenced, and a copy
//     libvirtd autostarts when the host powers on again would run beside
//     the rebuilt one; the agent starts what the daemon assigns itself.
//     Heartbeats report each domain's autostart as libvirt last said.
//   - prepare-boot (boot.go, chime-agent prepare-boot) runs before
//     libvirtd on every boot and removes every autostart link, without
//     libvirtd or the daemon. The persisted state (drain marker, last
//     admin state) only explains it in the log: no persisted state proves
//     a domain may run, since the host may have been fenced and its VMs
//     rebuilt elsewhere while it was off. It fails (libvirtd must not
//     start) when a link cannot be removed.
//   - An evicted domain that a listing shows active (a copy started after
//     the cleanup) is logged as a split brain and destroyed by a reconcile
//     round triggered at once, not at the next reconcile interval.
//   - The token is never logged and never appears in errors.
//
// # What libvirt reports (measured in the lab, libvirt 9.0)
//
// kill -9 of a domain's QEMU: "shut off (crashed)", also when libvirtd was
// down at the time and reconnected later. Power cycle of the host: "shut
// off (unknown)". virsh destroy: "destroyed"; managedsave: "saved", kept
// even after managedsave-remove. A domain defined but never started, and
// any inactive domain after libvirtd restarts, reads "unknown"; Stops
// keeps an on-purpose reason across a libvirtd restart for as long as the
// agent runs. A start issued right after a kill -9 once failed under load
// ("qemu unexpectedly closed the monitor") and left the domain "shut off
// (failed)"; "failed" is restartable, so the next round starts it.
//
// Answers from the daemon without an admin_state field are refused: the
// field's zero value is "enabled".
package agent
