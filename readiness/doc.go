// Package readiness is the dry run of a host's failure handling: can each
// of its fence levels be used right now (BMC or agent reachable,
// credentials accepted, power state readable, off permitted), is its
// libvirtd reachable, and which of its domains could be evacuated.
//
// It never changes power or VM state: it only calls Check on fence levels
// (a contract of fencer.PowerController) and lists domains. `chime-fence
// test-node` prints a Report; the daemon's periodic fence-readiness check
// (detection) alerts on one that is not Ready.
package readiness
