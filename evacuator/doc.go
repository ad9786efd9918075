// Package evacuator decides which of a failed host's VMs can move and where,
// and (in later work) executes the rebuilds.
//
// This file set holds the pure parts: ParseVM reads a saved domain XML into
// a VM with its size, its chime-fence metadata and the classification of
// every disk (shared path, Ceph RBD, or local); Hypervisor is the interface
// the evacuator needs from a host's hypervisor, which drivers/libvirt
// satisfies without importing this package.
//
// A VM is evacuable only when every disk is reachable from every host, no
// device ties it to its old host, and its metadata does not opt it out: a
// VM rebuilt on a copy of local storage would silently lose data.
//
// Execute runs an evacuation Task. The safety rule: no VM is rebuilt unless
// its source host was fenced and the fence verified (power read back off,
// or the agent reported no domain running), or an operator confirmed the
// host down; Execute refuses a task whose Fence is empty (ErrNotFenced) and
// does nothing. Every step of every VM is journaled before the call it
// announces (defining, starting) and after it (defined, running); a call
// happens only after its journal write returned nil. On restart the open
// tasks are passed to Execute again: each VM resumes from its step after
// asking its target what it has (running: done, never started twice;
// defined: start; missing: define). Before every start each reachable peer
// but the fenced host (proven down: never asked) is asked whether it runs
// the UUID, each within GuardTimeout; if one does the VM is refused and
// alerted. A VM whose start may have happened on a target that cannot
// then be confirmed stopped is not moved, so it cannot run twice, and not
// given up either: it stays in cleanup on that target (Task.Unconfirmed),
// alerted once, and every later pass asks the target again until the copy
// is confirmed stopped (then the next host) or found running (then done).
// A VM that failed on every target with each copy confirmed removed is
// failed with Retry; a task with such VMs, unconfirmed ones or with
// Unplaced.Waiting ones
// ends its pass as TaskWaiting (still open) for the caller to re-plan,
// instead of finishing.
// libvirt autostart is turned off before every start (a definition the
// target kept may have it on): a rebuilt VM never starts by itself when
// its new host powers on. A VM whose capture says autostart is on is not
// evacuable (WithAutostart).
//
// Place plans a whole failed host at once and does no I/O: the caller
// gathers the candidates (admin enabled, monitor normal, capacity,
// allocated vCPUs and memory, free memory, CPU load from two NodeStats;
// Capture.SampleStale measures what is missing or stale at plan time),
// and Place returns every VM exactly once, either assigned to a host with
// up to 3 alternatives or unplaced with a reason an operator can act on.
// Capacity includes the plan in progress, so the plan as a whole never
// overcommits a host beyond the limits or puts two VMs of one
// anti-affinity group together, and never names FailedHost. The plan is
// only valid for the snapshot it was made from: after a failed start or a
// restart, plan again from fresh candidates rather than reuse
// Alternatives blindly. Place does not check that the source host is
// fenced; the caller must not act on a plan until the journal says so.
//
// Rewrite prepares a saved domain XML for its new host: consoles listen on
// 0.0.0.0 (or the configured address) instead of the dead host's address,
// and mapped bridges are renamed. It keeps name, UUID, disks and metadata,
// and fails with ErrLossyRewrite rather than define a domain that
// libvirtxml could not carry over whole.
package evacuator
