// Package lab builds a small cluster of real parts on one Linux machine, as
// root: compute hosts running their own libvirtd and real QEMU (TCG)
// guests, a BMC per host (OpenIPMI ipmi_sim through e2e/ipmisim, or
// cmd/chime-redfish-sim), shared storage, and a controller namespace where
// the daemon under test runs. Tests and `make demo` (cmd/chime-lab) use it.
//
// # Topology
//
// Everything lives in network namespaces named after Config.Name (N):
//
//	N-sw    the switch: bridges br-mgmt (10.77.0.0/24) and br-bmc (10.78.0.0/24)
//	N-ctl   the controller: eth0 10.77.0.2 (mgmt), eth1 10.78.0.2 (bmc)
//	N-hI    host I: eth0 10.77.0.(10+I), switch port m-hostI
//	N-bI    host I's BMC: eth0 10.78.0.(10+I), switch port b-hostI; IPMI on
//	        UDP 623, Redfish on HTTPS 443 (self-signed, Host.BMC.CAFile).
//	        A BMCBoth host has its IPMI BMC there and its Redfish BMC on a
//	        second address of the same eth0, 10.78.0.(110+I).
//
// The root namespace gets no lab address and no lab route; all lab traffic
// stays inside these namespaces (run clients with Controller.Command).
//
// A host is a power supply loop (Host.Dir/supervisor.sh, in the host's
// netns) that boots the host while the power flag Host.Dir/power_on exists:
// `unshare --fork --kill-child --pid --uts --mount --propagation private`
// runs Host.Dir/host-init.sh as the host's PID 1, which mounts a fresh /proc
// and a tmpfs /run, bind-mounts per-host directories over /etc/libvirt,
// /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt,
// and lab copies over /etc/passwd and /etc/group (with the libvirt-qemu
// user Debian's libvirtd needs) and /etc/hosts, runs the optional
// Config.PrepareBootCommand (chime-agent prepare-boot), then starts
// `libvirtd --listen` (TCP 16509 on its lab address, no auth;
// Host.LibvirtURI), the optional agent (Config.AgentCommand), and reaps
// children forever. The
// per-host directories persist across power cycles (defined domains stay
// defined) except Host.Dir/run, which is emptied at each boot like a real
// /run. Local storage is /var/lib/libvirt/images inside the host; shared
// storage is SharedDir(), the same path in every host.
//
// Each power-on writes a new boot id to Host.Dir/boot_id and bind-mounts it
// over BootIDPath (/proc/sys/kernel/random/boot_id) inside the host, so an
// agent reading the usual file sees reboots.
//
// # Power and chassis control
//
// Host.ChassisControl is the one path that changes power; the BMCs call it
// and so do PowerLoss and PowerOn. Every BMC of a host (Host.BMCs: one, or
// IPMI and Redfish for a BMCBoth host) calls the same program, so either
// one powers the host off or on and both read the same state:
//
//	PROG [0x20] get power    prints power:1 or power:0
//	PROG [0x20] set power 0  host NIC down, SIGKILL the host's PID 1 (the
//	                         kernel kills libvirtd, QEMU, agent), wait until
//	                         it is dead, then return
//	PROG [0x20] set power 1  NIC up, set the flag, wake the supply; returns
//	                         at once (the boot takes ~0.5 s)
//	PROG set reset 1 / set shutdown 1   off+on / off
//
// A powered-off host answers neither ping nor TCP. A power-on also clears a
// Hang; it does not undo CutNetwork (the cable is at the switch).
//
// # Faults
//
// PowerLoss/PowerOn, Hang/Unhang (nftables drop-all in the host netns plus
// SIGSTOP of all its processes; the BMC still reports on), CutNetwork/
// RestoreNetwork (the switch port goes down; the host and its BMC keep
// running), BlockBMC/BlockBMCVia/UnblockBMC (nftables drop on every BMC's,
// or one BMC's, address and port in the BMC netns), KillAgent. Each is one call; nftables tables only ever live in
// lab namespaces.
//
// # Caller contract
//
// Start needs root and RequiredTools; it sweeps leftovers of the same Name
// first (so Name must be unique among labs running at once: tests pick
// their own, e.g. "chlabt"), and returns only when every host's libvirtd answers over TCP from
// the controller and on its socket. Every process the lab starts carries
// CHIME_LAB=Name in its environment or lives in a lab namespace, and dies
// with the process that called Start (parent-death signals down to the
// host's PID namespace): the caller must stay alive while it uses the lab
// and must Close it (t.Cleanup). Close kills everything by PID, deletes the
// namespaces and keeps Dir (logs). Sweep(Name) removes what a killed owner
// left (namespaces, stray processes, mounts); Leftovers reports what still
// exists, for tests asserting nothing is left. Attach(Dir) opens a lab
// another process owns (chime-lab show/down).
//
// BMC passwords live in Host.BMC.PasswordFile (0600) and in ipmi_sim's
// lan.conf (0600); they are never on a command line. IPMI clients must use
// cipher suite 3 (`ipmitool -I lanplus -C 3 -f PWFILE`).
//
// VMs: CreateVM makes a qcow2 disk (shared or local), defines a
// `<domain type='qemu'>` guest (64 MiB, 1 vCPU, no OS, no graphics) and
// starts it. QEMU's image lock stays on, so a second start of the same
// disk on another host fails with LockErrorText — the lab's split-brain
// detector. Virsh talks to a host's libvirtd over its unix socket
// (Host.LibvirtSocket), which works while the host's network is cut.
package lab
