// Package operations is the operator's side of the daemon: the host admin
// state machine (Check, pure) and the Manager that runs each accepted
// operation as an asynchronous task holding the host's lock.
//
// The rules Check enforces (each refusal is ErrConflict naming the reason,
// unless said otherwise):
//
//   - Request shape (Validate, ErrInvalid): a known op, a host, an actor;
//     target only on migrate and rebuild and never the host itself;
//     migrate_local_disk_vms only on migrate; a reason (at most
//     MaxReasonBytes of UTF-8) required on confirm-down.
//   - A host not in the configuration is ErrNotFound.
//   - Lock first: while a task (or a TryLock owner such as the automatic
//     recovery) holds the host, every operation on it is refused with the
//     holder's task id and op. Nothing is queued.
//   - enable: from disabled or drained (enabled → "already enabled"). Any
//     monitor state: it only changes what the agent may start.
//   - disable: from enabled only (drained must be enabled first).
//   - drain: from enabled or disabled; refused when the host is
//     unreachable ("use fence or confirm-down": nothing could stop its VMs
//     and read back that they stopped). Suspect, error and unknown hosts
//     may be drained: the executor fails if it cannot read back.
//   - rebuild: only from drained. A host that does not heartbeat (suspect,
//     unreachable, unknown) needs a proven fence (verified or confirmed,
//     newer than its last heartbeat): "fence or confirm-down first". A
//     heartbeating host must report no running domain.
//   - migrate: from enabled or disabled, and the host heartbeats (normal
//     or error: a host with a storage fault is a reason to migrate).
//   - migrate/rebuild target, if named: a known host (else ErrInvalid),
//     enabled, normal, and not locked.
//   - fence: any admin and monitor state; refused while the storm guard is
//     paused (the daemon may be the one cut off) or the daemon is in
//     observe mode, unless forced. A fence already running holds the
//     lock, so it is refused by it.
//   - confirm-down: only when the host is unreachable (never forced: a
//     host the daemon hears from is alive); reason required; refused when
//     the BMC read power on during the host's current silence, or while
//     the storm guard is paused, unless forced.
//   - force (fence and confirm-down only) needs a reason; Overrides lists
//     what it overrides, and the task records it (Task.Overridden).
//
// Manager contract:
//
//   - View is called without the Manager's lock held (it may call into the
//     daemon and the detector); a lock on the host or target released
//     meanwhile makes Start read the view again (up to viewAttempts), so a
//     state change made under TryLock is never checked stale.
//   - Start validates, checks against View and the locks, takes the lock,
//     persists the task (store.PutOpTask) and a history record (kind
//     "operation", correlation id = task id, actor and reason in the text
//     and the evidence), then runs the executor in its own goroutine under
//     a deadline (Config.Timeouts, else DefaultTimeouts). A refusal records
//     nothing.
//   - Progress lines (Report) are merged per VM and persisted on each call.
//   - The end (succeeded, failed, interrupted) and the lock's release are
//     one step for observers (Task, Lock, Start): whoever sees the task
//     done may start the next operation. Then the end is persisted and
//     recorded in the history, and Wait is woken.
//   - An executor that panics fails its task; it does not crash the daemon.
//   - Close cancels running executors (their tasks end interrupted) and
//     waits for them. A task the store still marks running when New runs
//     (the daemon died) is marked interrupted with RestartedReason; nothing
//     resumes by itself.
//   - TryLock gives work outside the Manager (recovery's fence and
//     evacuation) the same per-host lock, without a task. It never waits,
//     and may be called from anywhere, View included. An executor must not
//     TryLock its own host: its task already holds the lock.
//   - Now is injected; nothing reads the wall clock.
//
// Executors are injected per op. This package provides AdminExecutor
// (enable, disable) and DrainExecutor; rebuild, fence, confirm-down and
// migrate executors live with the code they reuse (recovery/, evacuator/).
package operations
