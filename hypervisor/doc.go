// Package hypervisor is the shared vocabulary between the evacuator (and
// the detector and agent) and hypervisor drivers such as drivers/libvirt:
// a domain as the hypervisor reports it, node statistics, lifecycle events,
// and the kinds of failure a hypervisor call can end in.
//
// Like package power it is a leaf, so the core and the drivers can both use
// it without importing each other. It holds data only; no I/O.
package hypervisor
