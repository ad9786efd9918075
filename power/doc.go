// Package power is the shared vocabulary between the fencer and the BMC
// drivers: a host's power state as a BMC reports it, and the kinds of failure
// a BMC call can end in.
//
// It is a leaf: it imports nothing of chime-fence, so drivers (which must
// never import the core) and the core (which must never import a driver)
// can both use it. The fencer's PowerController interface is written in
// these terms, and drivers satisfy it structurally.
package power
