// Package recovery closes the loop from a host-down verdict to the host's
// VMs running elsewhere: it re-checks the verdict and the storm guard,
// admits the fence under the policy's limits, journals the intent, runs the
// fence levels (fencer.Run), journals the outcome, marks the host drained,
// plans the evacuation (evacuator.Place over the saved domain XML) and runs
// it (evacuator.Execute), alerting at each step.
//
// Caller contract:
//
//   - HostDown never blocks and may be called with the detector's locks
//     held: it only queues the host. Run does the work; nothing happens
//     before Run is called.
//   - A fence starts only when, at that moment, the detector still says
//     host-down for the host, or isolated-or-hung held for the policy's
//     isolation_grace under on_isolation fence or reboot
//     (detector.IsolationFenceDue), and the storm guard is not paused. The
//     fence record (store.FenceInFlight) is durable before any BMC is
//     touched.
//   - An isolated-or-hung host is fenced through its power levels only
//     (IsolationPlan): its BMC reads power on, so only an Off read by
//     that BMC after the power-off proves its QEMUs dead; agent-drain is
//     dropped, and a policy with no power level fails the fence.
//   - A rebuild starts only after the journal holds a proven fence
//     (verified by read-back, or confirmed by an operator) that is newer
//     than the host's last heartbeat. A host that heartbeats after its
//     fence is a new incident: it is never evacuated on the old proof.
//   - The evacuation task's id is derived from the fence's incident, so a
//     restarted daemon resumes the same task instead of planning a second
//     one (Resume at start, and again whenever the verdict repeats).
//   - A failed fence (no level verified) is alerted with every reason and
//     leaves the host unreachable as it was; it is not retried behind the
//     operator's back beyond the fencer's own level retries.
//   - An evacuation ends only when every evacuable VM runs or an operator
//     cancels it (Evacuation.Cancel): VMs not placed (no room, no eligible
//     host, no saved XML) or failed on every target wait in the task
//     (evacuator.TaskWaiting) and are re-planned from fresh candidates
//     with back-off (RetryMin doubling to RetryMax) and whenever the
//     candidates' eligibility or capacity changes. EvacuationRequest.
//     Waiting (evacuation.partial) fires once per task; the end is
//     alerted as evacuation.finished when it was. Every write that changes
//     what the API shows of a task (plan, waiting, re-plan, end, cancel)
//     carries its history record in the same transaction.
//   - An automatic fence stops between levels when the host heartbeats
//     again after it began, or the storm guard pauses (Plan.StillNeeded).
//   - An evacuation starts (or resumes) at once, also right after a
//     restart: the plan samples its candidates' libvirt (a host the daemon
//     has not judged yet is a target only if it answers now), a resumed
//     VM asks its target directly, and the fenced host's proof in the
//     journal is all the split-brain guard needs about it.
//   - Deps.Lock, when set, is the operator operations' host lock: an
//     incident for a host an operator's task holds waits for it.
//   - FenceNow, ConfirmDown and Rebuild are the operator's entry points.
//     Their caller holds the host's lock; they never take it. FenceNow
//     drains but moves nothing; ConfirmDown journals a confirmed fence with
//     who and why and runs the evacuation the policy wants; Rebuild needs
//     a drained host and a proof that nothing runs there.
package recovery
