// Package migration empties a host by live migration: NewPlan decides
// which VMs move where, Execute moves them.
//
// NewPlan is pure. It reads each domain's definition (evacuator.ParseVM
// plus the disk source types), decides per VM: live move, offline move of
// a shut-off VM's definition, copy of its local file disks (only with
// MigrateLocalDiskVMs), or skipped with a reason. It then places the whole
// host at once with evacuator.Place (or on the operator's Target alone)
// and fails with ErrNoCapacity if any VM that should move does not fit:
// the caller must then move nothing (the seed: a target that cannot take
// every VM fails the migration).
//
// Execute is the shell. The caller contract:
//   - Config.Hosts gives a driver per host name; Config.Endpoint gives the
//     destination URIs AS THE SOURCE HOST SEES THEM (the source's libvirtd
//     connects to the destination: peer to peer).
//   - Targets receiving disk copies are prepared first (a transient
//     storage pool where libvirt needs one); if one cannot be, nothing
//     moves.
//   - Each VM counts as moved only after a read-back: running (or, for an
//     offline move, defined) and persistent on the target, not active on
//     the source. A failed or aborted migration call whose VM reads back
//     on the target counts as moved; a successful call that does not read
//     back counts as failed.
//   - Config.Moved runs for each verified VM before its line says done:
//     the daemon records the VM's new home there (Relocate), so the
//     agents' assignments follow the VM.
//   - When ctx ends, running migrations are aborted (the driver aborts the
//     libvirt job) and read back; VMs not started stay pending.
//
// Operation wraps both as the daemon's `host migrate` executor
// (operations.Executor): the daemon gives it the source's domains, the
// cluster's candidates, limits and storage rules, and Execute's Config
// (drivers, endpoints, the Moved hook).
//
// Progress lines use the operations package's VM states (pending,
// running, done, failed, skipped), so the daemon maps them one to one.
package migration
