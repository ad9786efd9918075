// Package e2e holds chime-fence's end-to-end tests: real libvirtd and QEMU
// hosts, real IPMI (ipmi_sim) and Redfish (chime-redfish-sim) BMCs and real
// network partitions, built by package e2e/lab. They need root; without it
// they skip and say so.
package e2e
