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
// The root namespace gets no lab address. While a lab is up, it gets an
// `unreachable` route for each lab subnet (Subnets: 10.77.0.0/24 and
// 10.78.0.0/24; there is no storage network) through package
// e2e/blackhole: Start installs them before any lab address exists, and
// Sweep (so Close) removes them unless another live lab or the heartbeat
// bench still claims them (one claim file per owner under
// /run/chime-blackhole; a claim whose process died no longer counts). A
// client run in the root namespace by mistake, say chime-fence status with
// the lab's config, fails at once with "no route to host" instead of
// leaving the machine by its default route. All lab traffic stays inside
// these namespaces: run clients with Controller.Command (chime-lab exec).
// Start also indexes the lab as a symlink IndexDir/Name → Dir (Lookup,
// Running; chime-lab exec --lab NAME); Sweep removes it, and IndexDir when
// it is empty.
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
// /run.
//
// The lab needs no directory of the machine's own beyond the ordinary
// Debian tree: /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt
// exist only where libvirt-daemon-system is installed, which the lab does
// not require. When one of those mount points (or /etc/libvirt) is
// missing, Host.Dir/mountpoints.sh, run by host-init.sh, covers its parent
// inside the host's mount namespace with a tmpfs holding the parent's
// other entries (bind-mounted from the original; symlinks copied) and an
// empty directory for it. Nothing is created on the machine's filesystems,
// so there is nothing to remove at Close; it all vanishes with the host's
// mount namespace at power-off. scripts/fresh-machine.sh hides those
// directories (and /run/libvirt) from a command, and the demo's test runs
// through it. Local storage is /var/lib/libvirt/images inside the host; shared
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
// their own, e.g. "chlabt"), and returns only when every host's libvirtd
// answers over TCP from the controller and on its socket. A host that
// cannot get there fails Start at once, not at ctx's deadline: its init
// exited (the power supply logs "down rc=N"; at Start nothing powers a
// host off), or its init has run for 3 s without a libvirtd. The error is
// a *HostError naming the host, the step ("boot", "libvirtd", "QEMU
// capabilities") and quoting the last lines of its boot log
// (Host.Dir/console.log, and libvirtd's output from the libvirtd step
// on), in plain text; the first failing host ends the wait for the others. Every process the lab starts carries
// CHIME_LAB=Name in its environment or lives in a lab namespace, and dies
// with the process that called Start (parent-death signals down to the
// host's PID namespace): the caller must stay alive while it uses the lab
// and must Close it (t.Cleanup). Close kills everything by PID, deletes the
// namespaces and keeps Dir (logs). Sweep(Name) removes what a killed owner
// left (namespaces, stray processes, mounts); Leftovers reports what still
// exists (the root namespace routes and the index entry included), for
// tests asserting nothing is left. Attach(Dir) opens a lab
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
