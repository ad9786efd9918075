// Package fencebench measures the time from "decide to fence" to "power
// read back Off" on a real OpenIPMI ipmi_sim BMC on 127.0.0.1, for
// chime-fence's IPMI driver and for Debian's fence_ipmilan on the same BMC.
//
// Run starts one ipmi_sim (file-backed power), then alternates the two
// fencers for Options.Runs runs each, powering the host back on (and
// reading it back On) between runs so every run fences a running host:
//
//   - chime-fence: fencer.PowerOff over drivers/ipmi: hard off, then PowerStatus every 50 ms until
//     it reads Off (read-back verified);
//   - fence_ipmilan -o off with lanplus, cipher 3, operator privilege,
//     options on stdin (the password never on our argv), which itself powers
//     off and polls status until off.
//
// Each run is also checked against the simulator's power file. The caller
// owns ctx; Run stops the simulator before returning.
package fencebench
