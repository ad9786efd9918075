// Package libvirt is the hypervisor driver: it talks to one host's libvirtd
// over the RPC protocol (github.com/digitalocean/go-libvirt), in the terms of
// package hypervisor.
//
// go-libvirt takes no context and sends no keepalives, so a call to a host
// that died or was cut off blocks until TCP gives up, minutes later. Client
// therefore runs every call under a context deadline (its own CallTimeout if
// the caller's context has none): when the deadline passes it closes the
// connection, which unblocks every request in flight on it, and the next
// call dials again. One connection per host is shared by concurrent calls
// (go-libvirt multiplexes them); a timeout of one call therefore fails the
// others on that connection too, which is what we want when the host is
// gone.
//
// Events streams domain lifecycle events and keeps the subscription alive:
// it pings libvirtd on an interval, reconnects with backoff when the
// connection dies, resubscribes, and marks the first event after a reconnect
// so the consumer re-lists the domains it may have missed changes to.
//
// Migrate is a peer-to-peer live migration driven by this host's libvirtd
// (it connects to the destination's libvirtd itself, so the destination
// URI is as this host sees it). It runs on its own connection: a
// cancelled or timed-out migration is aborted with DomainAbortJob (closing
// the RPC alone would leave libvirtd migrating), and an abort that comes
// after the switch-over lets it complete, so callers read back where the
// domain runs. Measured on the lab (libvirt 9.0, QEMU TCG): libvirt
// refuses a disk on a file system it does not know as shared ("Migration
// without shared storage is unsafe") unless AllowUnsafe, and creates
// copies of local disks only inside an active storage pool on the
// destination ("no storage pool with matching target path"), which
// PrepareCopyTargets provides as a transient pool.
package libvirt
