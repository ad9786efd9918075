// Package heartbeatbench is the detector's scale bench (`make
// bench-heartbeats`): thousands of simulated agents heartbeating into one
// real chime-fence daemon, then a sample of them going silent.
//
// Run, in order:
//
//  1. writes a config (WriteConfig) with Options.Hosts hosts on
//     10.200.0.0/16, an agent-drain-only policy (no BMC), hourly fence
//     readiness checks, detection heartbeat_interval 1 s × 3 missed,
//     probe_timeout 200 ms, mode observe, state in a temp directory and
//     the cluster secret and API token files 0600 (each simulated agent
//     presents its own host's credential derived from the secret);
//     checks it with configs.Load;
//  2. makes 10.200.0.0/16 (Subnet) unreachable from the root namespace
//     for the bench's lifetime (package e2e/blackhole: an `unreachable`
//     route, removed at the end unless a lab or another bench still
//     claims it), creates a network namespace with only lo up and starts
//     the daemon in
//     it (`ip netns exec`, which execs in place, so the PID is the
//     daemon's). Nothing the bench or the daemon sends leaves that
//     namespace: host addresses have no route there, so the daemon's
//     probes fail at once with ENETUNREACH;
//  3. starts the Generator: one goroutine and one socket per agent,
//     dialled inside the namespace (e2e/nsenter), each agent heartbeating
//     every interval from a random start offset. Over Options.Transport
//     "udp" (default) the socket is a connected UDP socket to the daemon's
//     API address (its default UDP heartbeat address); the agent seals
//     each heartbeat with heartbeat.Sealer, as chime-agent does, and waits
//     up to half the interval (at most 1 s) for the Reply that answers it.
//     Over "http" it is a keep-alive HTTP/1.1 connection. A run whose
//     warm-up saw no acknowledged heartbeat stops there, naming the errors;
//  4. measures the steady phase (after Options.Warmup until
//     Options.Duration): the daemon's CPU from /proc/PID/stat
//     (utime+stime over wall time, as a share of one core) and the bench
//     process's own CPU separately, ack throughput and latency, how far
//     behind schedule the generator sent (its own bottleneck check), failed
//     heartbeats by cause, and the daemon's chime_fence_heartbeats_total by
//     result and transport;
//  5. stops a random sample of Options.Stop agents, keeping each one's last
//     acknowledged heartbeat (its send time, so the delay is never
//     flattered), and polls GET /v1/history?kind=monitor until each has an
//     "unreachable" record; the detection delay is that record's At minus
//     the last acked send;
//  6. keeps the other agents running for Options.Settle, then counts hosts
//     that went unreachable while heartbeating (must be none) and
//     storm-guard records, and reads the daemon's peak RSS (VmHWM).
//
// The daemon is stopped by PID (SIGTERM, then SIGKILL) and the namespace
// deleted before Run returns, also on error or when ctx is cancelled; the
// daemon also gets PR_SET_PDEATHSIG so a killed bench cannot leave it
// running. Needs root and iproute2.
package heartbeatbench
