// Package detector decides what a host's silence means. This file set is its
// pure core: Decide maps one host's signals and the current time to a
// Verdict, implementing the table in DESIGN.md ("Signals and the verdict").
// It starts no goroutine, does no I/O and never reads the clock; the daemon
// (a later layer) gathers the signals, calls Decide, and acts on the answer.
//
// Caller contract:
//
//   - Pass every time in Signals and now from one clock, the daemon's own.
//     LastHeartbeat is when the daemon received the heartbeat, not the
//     agent's timestamp. A daemon that has just started and has no persisted
//     heartbeat should pass its start time, not the zero time, so that every
//     host gets one window to check in: zero means "never heard from" and is
//     judged like a stale heartbeat at once.
//   - ProbeAt is when a probe round concluded (an answer arrived, or every
//     probe reached ProbeTimeout); BMCReading.At is when the BMC answered or
//     the read failed. Decide only counts evidence taken after the heartbeat
//     went stale (strictly after LastHeartbeat + window), not after now, and
//     no older than one window. Anything else is asked for again through
//     Decision.NeedProbe / NeedBMC, and the verdict stays Suspect meanwhile.
//     Both may be set at once; the caller may run them in parallel.
//   - Keep only the latest probe result and the latest BMC reading. Decide
//     keeps no state: if the BMC flaps between on and off, the verdict follows
//     the reading passed in.
//   - HostDown is the only verdict that leads to a fence. Decide returns it
//     only when the heartbeat is stale, a countable probe round got no answer,
//     and a countable BMC reading was taken without error and says Off.
//     Nothing else (On, PoweringOff, Unknown, an unreachable or erroring BMC,
//     an old reading) ever yields HostDown.
//   - A fresh heartbeat wins over everything, including a BMC read that was
//     in flight when it arrived.
//   - A heartbeat dated up to one window in the future counts as fresh (small
//     clock steps); further in the future it is treated as unknown: Suspect,
//     NeedProbe, reason "clock skew". The caller must then re-stamp or wait
//     for the next heartbeat; Decide will not declare such a host down.
//   - AgentFault with a fresh heartbeat yields Healthy with the fault in the
//     Reason. The monitor's `error` state and the recovery hysteresis belong
//     to the state machine over time, not here.
//   - Paused (storm guard) is never returned by Decide: it is an aggregate
//     over all hosts that the daemon applies on top of the per-host verdicts.
//   - IsolatedOrHung leads to a fence only through IsolationFenceDue: the
//     host's on_isolation policy fences or reboots, the verdict has held,
//     unbroken and on evidence of this silence, for isolation_grace
//     (Monitor.IsolatedSince), and the storm guard is not paused. The
//     Engine hands such a host to Deps.OnHostDown once per hold
//     (DownEvent.Isolated); the fencer asks IsolationFenceDue again.
//   - A host never heard from (no heartbeat, none remembered) is not silent
//     before MonitorConfig.StartGrace after the daemon starts: agents beat
//     at their own pace until a daemon first answers them.
//   - Thresholds that fail Validate make Decide return Unprovable with the
//     problem in the Reason (never a fence); validate them at config load.
//
// Heartbeats are ordered by Order, pure and table-tested: a heartbeat is
// taken only if it is newer than the host's Mark, the newest taken (a later
// agent_start, or the same one and a higher seq), and, when
// MonitorConfig.MaxClockSkew is set (the daemon always sets it), its
// sent_at is within that of the daemon's clock and not before agent_start.
// Otherwise it is a duplicate (same mark: a retransmission), stale (older:
// a replay, or a forged beat overtook the agent, which then starts a new
// sequence on the ack's outcome), or skewed (refused with the reason).
// The Engine persists the Mark in the host memo, coalesced (a new
// agent_start at the next flush, a seq that only moved once a minute, all
// at shutdown), and restores it at start, so a restart reopens nothing a
// captured beat could use beyond the clock-skew window. Refused beats are
// alerted, once a minute per host and kind at most: AlertHeartbeatStale (a
// stale beat sent after the newest taken: that one was forged),
// AlertHeartbeatReplayed (sent before it: a replay or a delayed datagram),
// AlertHeartbeatSkewed.
//
// The Engine runs a Monitor per host around Decide. Its Step (every tick)
// and Reconfigure are serialised; Heartbeat may be called concurrently with
// both. Step decides exactly what ticking every host would, but visits only
// the hosts that can change at that tick (schedule.go), so its cost follows
// the hosts that are silent or due, not the cluster's size.
package detector
