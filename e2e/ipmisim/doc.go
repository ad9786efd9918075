// Package ipmisim starts and stops a real OpenIPMI BMC simulator (ipmi_sim,
// OpenIPMI 2.0.33 as packaged by Debian) for tests, the lab and the fence
// benchmark.
//
// # Caller contract
//
// Start writes lan.conf and emu.cmd into Config.StateDir (created, 0700; the
// files are 0600 because lan.conf holds the password), runs
//
//	ipmi_sim -n -c STATEDIR/lan.conf -f STATEDIR/emu.cmd -s STATEDIR
//
// optionally under `ip netns exec NETNS`, and returns only once the BMC
// answers an RMCP Get Channel Authentication Capabilities request on
// Addr:Port. On failure it returns an error carrying the tail of the
// simulator's log and leaves no process behind. The password is never put on
// a command line: it lives in lan.conf and in PasswordFile (0600), which
// clients read with `ipmitool -f` or fence_ipmilan's password script.
//
// Stop sends SIGTERM to the simulator's PID (SIGKILL after a grace period),
// waits for it to exit, and may be called any number of times. Callers own
// the Sim and must Stop it (t.Cleanup in tests).
//
// Port 0 picks a free UDP port on Addr before starting, because ipmi_sim
// cannot bind port 0 itself and report which port it got. The pick can race
// with another process; Start retries a few times with a fresh port when the
// simulator exits before answering.
//
// # Clients
//
// ipmi_sim 2.0.33 supports RMCP+ cipher suites up to 3 (RAKP-HMAC-SHA1,
// HMAC-SHA1-96, AES-CBC-128); suite 17 fails with "invalid authentication
// algorithm". Clients must say so: `ipmitool -I lanplus -C 3`. Without an
// explicit suite, ipmitool's and go-ipmi's discovery stalls about 10 s per
// call. The configured user has admin as its maximum privilege, so operator
// and admin sessions both work.
//
// # chassis_control programs
//
// The simulator's power state is not its own: every chassis command runs the
// program named by Config.ChassisControl through popen (so through /bin/sh),
// with arguments appended. This package configures the program path with no
// device argument, so the program is invoked as
//
//	PROG get power            -> must print "power:1" or "power:0", exit 0
//	PROG set power 0|1        -> change the state, print nothing, exit 0
//	PROG set shutdown 1       -> ACPI soft-off request (chassis power soft)
//	PROG set reset 1          -> reset pulse (chassis power reset)
//
// Chassis power cycle is "set power 0", then about one second later
// "get power" and "set power 1". A non-zero exit makes the BMC answer the
// command with an error completion code. The stock OpenIPMI example
// (ipmi_sim_chassiscontrol) expects a device argument first ("PROG 0x20 get
// power"); programs shared with that convention should skip a leading
// argument that starts with "0x", as WriteFilePowerControl's script does.
//
// ipmi_sim reads the program's stdout to EOF and waits for it: anything the
// program starts in the background must redirect its stdout (and stderr),
// or every IPMI request to the simulator blocks.
//
// With ChassisControl empty, Start writes WriteFilePowerControl's script
// into StateDir/power and uses it: the power state is the file
// StateDir/power/state ("1" on, "0" off), initially on.
package ipmisim
