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
package evacuator
