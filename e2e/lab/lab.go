package lab

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/e2e/ipmisim"
)

//go:embed scripts/*.sh
var scriptFS embed.FS

var scripts = template.Must(template.New("").Funcs(template.FuncMap{"q": shq}).ParseFS(scriptFS, "scripts/*.sh"))

// Lab network layout. The subnets exist only inside the lab's namespaces,
// so labs with different names never see each other's addresses.
const (
	mgmtNet    = "10.77.0."
	bmcNet     = "10.78.0."
	ctlOctet   = 2
	hostOctet0 = 10 // host i (1-based) is .(10+i) on both networks
	// A host's second BMC (BMCBoth: its Redfish one) is 10.78.0.(110+i),
	// a second address in the same BMC namespace.
	bmc2Octet0  = 110
	LibvirtPort = 16509
	IPMIPort    = 623
	RedfishPort = 443
	// BootIDPath is where a host's processes read its boot id; it changes at
	// every power-on.
	BootIDPath = "/proc/sys/kernel/random/boot_id"
	// LockErrorText is part of QEMU's refusal to open a disk image another
	// QEMU holds: the lab's split-brain detector.
	LockErrorText = `Failed to get "write" lock`

	hangTable  = "chimelab_hang"
	blockTable = "chimelab_block"
	markerFile = ".chime-lab"
	stateFile  = "state.json"
)

// Host is one compute host of the lab.
type Host struct {
	Name  string // "host1", "host2", ...
	Index int    // 1-based
	// Netns is the host's network namespace; its NIC is eth0.
	Netns    string
	MgmtAddr string
	// LibvirtURI reaches the host's libvirtd from the controller namespace.
	LibvirtURI string
	// LibvirtSocket is libvirtd's unix socket, usable from the root
	// namespace (qemu:///system?socket=...) even while the network is cut.
	LibvirtSocket string
	// BMC is the host's primary BMC: its only one, or for a BMCBoth host
	// the IPMI one. Always BMCs[0].
	BMC BMC
	// BMCs lists every BMC of the host, primary first: one entry, or for
	// a BMCBoth host IPMI then Redfish. All of them control the same power
	// (Host.ChassisControl).
	BMCs []BMC
	// Dir holds the host's persistent state and logs.
	Dir string
	// AgentLog collects the agent's stdout and stderr across boots.
	AgentLog string
	// ChassisControl is the host's chassis_control program (see doc.go).
	ChassisControl string
}

// BMC is a host's baseboard management controller.
type BMC struct {
	Type  string // BMCIPMI or BMCRedfish
	Netns string
	Addr  string
	Port  int
	User  string
	// PasswordFile holds the password and a newline (0600).
	PasswordFile string
	// Endpoint is the Redfish base URL ("https://ADDR:PORT"), "" for IPMI.
	Endpoint string
	// CAFile is the Redfish BMC's self-signed certificate, "" for IPMI.
	CAFile string
	// SystemID is the Redfish ComputerSystem id, "" for IPMI.
	SystemID string
}

// AllBMCs is h.BMCs, or h.BMC alone for a Host value built without BMCs.
func (h Host) AllBMCs() []BMC {
	if len(h.BMCs) > 0 {
		return h.BMCs
	}
	if h.BMC.Type != "" {
		return []BMC{h.BMC}
	}
	return nil
}

// BMCOf returns h's BMC of type typ (BMCIPMI or BMCRedfish).
func (h Host) BMCOf(typ string) (BMC, bool) {
	for _, b := range h.AllBMCs() {
		if b.Type == typ {
			return b, true
		}
	}
	return BMC{}, false
}

// BMCType is h's entry in Config.BMCTypes: BMCIPMI, BMCRedfish, or
// BMCBoth for a host with both.
func (h Host) BMCType() string {
	if bs := h.AllBMCs(); len(bs) > 1 {
		return BMCBoth
	}
	return h.BMC.Type
}

// Controller is the namespace where the daemon under test runs, attached
// to both lab networks.
type Controller struct {
	Netns    string
	MgmtAddr string
	BMCAddr  string
	name     string
}

// Command returns a command that runs argv inside the controller namespace
// (ip netns exec), marked as the lab's so Close and Sweep find it.
func (c Controller) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.Netns, name}, args...)...)
	cmd.Env = append(os.Environ(), envLab+"="+c.name)
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	cfg   Config
	log   zerolog.Logger
	hosts []*host
	ctl   Controller
	owned bool // processes are children of this process

	// Attached labs only: what the owner recorded.
	attachedPIDs []int
	ownerPID     int

	mu     sync.Mutex
	closed bool
}

type host struct {
	Host
	sup     *exec.Cmd
	supDone chan struct{}
	ipmi    *ipmisim.Sim
	rf      *exec.Cmd
	rfDone  chan struct{}
}

// state is what Start records in Dir/state.json for Attach.
type state struct {
	Name       string     `json:"name"`
	Dir        string     `json:"dir"`
	OwnerPID   int        `json:"owner_pid"`
	Controller Controller `json:"controller"`
	Hosts      []Host     `json:"hosts"`
	PIDs       []int      `json:"pids"`
}

// Start builds and boots a lab. It first sweeps leftovers of a previous run
// with the same Name. On error everything started so far is removed. The
// lab's processes die with the calling process (parent-death signals), so
// the caller must keep running while the lab is used and must Close it.
func Start(ctx context.Context, cfg Config) (*Lab, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := checkTools(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab: Start needs root (network namespaces, mounts)")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	l := &Lab{cfg: cfg, log: cfg.Log.With().Str("component", "lab").Str("lab", cfg.Name).Logger(), owned: true}
	if err := Sweep(cfg.Name); err != nil {
		return nil, fmt.Errorf("lab %s: sweep leftovers: %w", cfg.Name, err)
	}
	t0 := time.Now()
	if err := l.start(ctx); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
		return nil, err
	}
	l.log.Info().Dur("took", time.Since(t0)).Int("hosts", len(l.hosts)).Msg("lab up")
	return l, nil
}

func checkTools() error {
	var missing []string
	for _, t := range RequiredTools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("lab: missing tools %s (Debian packages: openipmi ipmitool libvirt-daemon libvirt-clients qemu-system-x86 qemu-utils iproute2 nftables util-linux)", strings.Join(missing, ", "))
	}
	return nil
}

// RequiredTools are the programs a lab needs on PATH.
var RequiredTools = []string{"ip", "nft", "unshare", "setpriv", "flock", "timeout", "hostname",
	"libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "ipmi_sim", "ipmitool"}

func (l *Lab) start(ctx context.Context) error {
	cfg := l.cfg
	if err := prepareDir(cfg); err != nil {
		return err
	}
	n := cfg.Name
	l.ctl = Controller{Netns: n + "-ctl", MgmtAddr: addr(mgmtNet, ctlOctet), BMCAddr: addr(bmcNet, ctlOctet), name: n}
	pwFile := filepath.Join(cfg.Dir, "bmc", "password")
	for i := 1; i <= cfg.Hosts; i++ {
		name := "host" + strconv.Itoa(i)
		hd := filepath.Join(cfg.Dir, "hosts", name)
		h := &host{Host: Host{
			Name: name, Index: i, Netns: fmt.Sprintf("%s-h%d", n, i),
			MgmtAddr:       addr(mgmtNet, hostOctet0+i),
			Dir:            hd,
			LibvirtSocket:  filepath.Join(hd, "run", "libvirt-sock"),
			AgentLog:       filepath.Join(hd, "agent.log"),
			ChassisControl: filepath.Join(hd, "chassis-control"),
		}}
		h.LibvirtURI = "qemu+tcp://" + h.MgmtAddr + "/system"
		types := []string{cfg.bmcType(i - 1)}
		if types[0] == BMCBoth {
			types = []string{BMCIPMI, BMCRedfish}
		}
		for k, typ := range types {
			b := BMC{Type: typ, Netns: fmt.Sprintf("%s-b%d", n, i),
				Addr: addr(bmcNet, hostOctet0+i), User: cfg.BMCUser, PasswordFile: pwFile}
			if k > 0 {
				b.Addr = addr(bmcNet, bmc2Octet0+i)
			}
			if typ == BMCIPMI {
				b.Port = IPMIPort
			} else {
				b.Port = RedfishPort
				b.SystemID = name
				b.Endpoint = fmt.Sprintf("https://%s:%d", b.Addr, b.Port)
			}
			h.BMCs = append(h.BMCs, b)
		}
		h.BMC = h.BMCs[0]
		l.hosts = append(l.hosts, h)
	}
	// Before any lab address exists, so none is ever reachable from the
	// root namespace.
	if err := l.isolate(ctx); err != nil {
		return err
	}
	if err := l.buildNetwork(ctx); err != nil {
		return err
	}
	for _, h := range l.hosts {
		if err := l.writeHost(h); err != nil {
			return err
		}
	}
	if err := l.startBMCs(ctx, pwFile); err != nil {
		return err
	}
	for _, h := range l.hosts {
		if err := os.WriteFile(filepath.Join(h.Dir, "power_on"), nil, 0o644); err != nil {
			return fmt.Errorf("lab: %s: power flag: %w", h.Name, err)
		}
		if err := l.startSupervisor(h); err != nil {
			return err
		}
	}
	// The first host that fails ends the wait for the others: its error is
	// the answer, theirs would only say they were cancelled.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(l.hosts))
	for _, h := range l.hosts {
		go func() { errc <- l.warm(wctx, h.Host) }()
	}
	var errs []error
	for range l.hosts {
		err := <-errc
		if err != nil && (len(errs) == 0 || !errors.Is(err, context.Canceled)) {
			errs = append(errs, err)
			cancel()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return l.writeState()
}

func addr(net string, octet int) string { return net + strconv.Itoa(octet) }

// ControllerMgmtAddr is the controller's address on the management network
// of every lab (labs are isolated from each other by their namespaces).
var ControllerMgmtAddr = addr(mgmtNet, ctlOctet)

// prepareDir creates cfg.Dir fresh. A non-empty directory is only wiped when
// it carries the lab marker.
func prepareDir(cfg Config) error {
	ents, err := os.ReadDir(cfg.Dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("lab: Dir: %w", err)
	case len(ents) > 0:
		if _, err := os.Stat(filepath.Join(cfg.Dir, markerFile)); err != nil {
			return fmt.Errorf("lab: Dir %s is not empty and not a lab directory (no %s)", cfg.Dir, markerFile)
		}
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(cfg.Dir, e.Name())); err != nil {
				return fmt.Errorf("lab: wipe old lab dir: %w", err)
			}
		}
	}
	for _, d := range []string{"", "bmc", "etc", "shared", "vms"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return fmt.Errorf("lab: Dir: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, markerFile), []byte(cfg.Name+"\n"), 0o644); err != nil {
		return fmt.Errorf("lab: Dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Dir, "bmc", "password"), []byte(cfg.BMCPassword+"\n"), 0o600); err != nil {
		return fmt.Errorf("lab: BMC password file: %w", err)
	}
	return writeAccounts(filepath.Join(cfg.Dir, "etc"))
}

// writeAccounts copies /etc/passwd and /etc/group for the hosts, adding the
// libvirt-qemu user and group Debian's libvirtd refuses to start without.
func writeAccounts(dir string) error {
	for _, f := range []struct{ name, line string }{
		{"passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin"},
		{"group", "libvirt-qemu:x:64055:libvirt-qemu"},
	} {
		b, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			return fmt.Errorf("lab: accounts: %w", err)
		}
		s := string(b)
		if !strings.Contains("\n"+s, "\nlibvirt-qemu:") {
			if s != "" && !strings.HasSuffix(s, "\n") {
				s += "\n"
			}
			s += f.line + "\n"
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(s), 0o644); err != nil {
			return fmt.Errorf("lab: accounts: %w", err)
		}
	}
	return nil
}

// buildNetwork creates the switch (two bridges), the controller, and a
// namespace per host and per BMC, each wired to its bridge by a veth pair.
func (l *Lab) buildNetwork(ctx context.Context) error {
	sw := l.cfg.Name + "-sw"
	cmds := [][]string{
		{"ip", "netns", "add", sw},
		{"ip", "-n", sw, "link", "set", "lo", "up"},
		{"ip", "-n", sw, "link", "add", "br-mgmt", "type", "bridge"},
		{"ip", "-n", sw, "link", "add", "br-bmc", "type", "bridge"},
		{"ip", "-n", sw, "link", "set", "br-mgmt", "up"},
		{"ip", "-n", sw, "link", "set", "br-bmc", "up"},
		{"ip", "netns", "add", l.ctl.Netns},
	}
	cmds = append(cmds, plug(sw, "br-mgmt", "m-ctl", l.ctl.Netns, "eth0", l.ctl.MgmtAddr)...)
	cmds = append(cmds, plug(sw, "br-bmc", "b-ctl", l.ctl.Netns, "eth1", l.ctl.BMCAddr)...)
	for _, h := range l.hosts {
		cmds = append(cmds, []string{"ip", "netns", "add", h.Netns}, []string{"ip", "netns", "add", h.BMC.Netns})
		cmds = append(cmds, plug(sw, "br-mgmt", "m-"+h.Name, h.Netns, "eth0", h.MgmtAddr)...)
		cmds = append(cmds, plug(sw, "br-bmc", "b-"+h.Name, h.BMC.Netns, "eth0", h.BMC.Addr)...)
		for _, b := range h.BMCs[1:] {
			cmds = append(cmds, []string{"ip", "-n", b.Netns, "addr", "add", b.Addr + "/24", "dev", "eth0"})
		}
	}
	for _, c := range cmds {
		if _, err := run(ctx, c...); err != nil {
			return fmt.Errorf("lab: network: %w", err)
		}
	}
	return nil
}

// plug connects namespace ns to bridge br in the switch namespace sw.
func plug(sw, br, port, ns, dev, ip string) [][]string {
	return [][]string{
		{"ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns},
		{"ip", "-n", sw, "link", "set", port, "master", br, "up"},
		{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev},
		{"ip", "-n", ns, "link", "set", dev, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	}
}

// writeHost lays out a host's directories, libvirt configuration and
// scripts.
func (l *Lab) writeHost(h *host) error {
	for _, d := range []string{"etc", "run", "lib/images", "cache", "log", "stash"} {
		if err := os.MkdirAll(filepath.Join(h.Dir, d), 0o755); err != nil {
			return fmt.Errorf("lab: %s: %w", h.Name, err)
		}
	}
	uuid := make([]byte, 16)
	_, _ = rand.Read(uuid)
	uuid[6] = uuid[6]&0x0f | 0x40
	uuid[8] = uuid[8]&0x3f | 0x80
	files := map[string]string{
		"etc/libvirtd.conf": fmt.Sprintf(libvirtdConf, h.MgmtAddr, LibvirtPort,
			fmt.Sprintf("%x-%x-%x-%x-%x", uuid[0:4], uuid[4:6], uuid[6:8], uuid[8:10], uuid[10:])),
		"etc/qemu.conf": qemuConf,
	}
	// libvirtd resolves its own host name; answer locally.
	etcHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		return fmt.Errorf("lab: %s: %w", h.Name, err)
	}
	files["hosts"] = string(etcHosts) + "\n# chime-fence lab\n" + h.MgmtAddr + " " + h.Name + "\n"
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(h.Dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("lab: %s: %w", h.Name, err)
		}
	}
	quoted := func(what string, cmd func(Host) []string) (string, error) {
		if cmd == nil {
			return "", nil
		}
		argv := cmd(h.Host)
		if len(argv) == 0 {
			return "", fmt.Errorf("lab: %s: %s returned an empty argv", h.Name, what)
		}
		q := make([]string, len(argv))
		for i, a := range argv {
			q[i] = shq(a)
		}
		return strings.Join(q, " "), nil
	}
	agent, err := quoted("AgentCommand", l.cfg.AgentCommand)
	if err != nil {
		return err
	}
	prepareBoot, err := quoted("PrepareBootCommand", l.cfg.PrepareBootCommand)
	if err != nil {
		return err
	}
	data := map[string]string{
		"Host": h.Name, "HostDir": h.Dir, "Netns": h.Netns, "HangTable": hangTable,
		"Passwd": filepath.Join(l.cfg.Dir, "etc", "passwd"), "Group": filepath.Join(l.cfg.Dir, "etc", "group"),
		"Agent": agent, "PrepareBoot": prepareBoot, "HostAddr": h.MgmtAddr, "CtlAddr": l.ctl.MgmtAddr,
	}
	if l.cfg.initPrelude != nil {
		data["Prelude"] = l.cfg.initPrelude(h.Host)
	}
	for tmpl, out := range map[string]string{
		"supervisor.sh": "supervisor.sh", "host-init.sh": "host-init.sh", "chassis-control.sh": "chassis-control",
		"mountpoints.sh": "mountpoints.sh",
	} {
		var b strings.Builder
		if err := scripts.ExecuteTemplate(&b, tmpl, data); err != nil {
			return fmt.Errorf("lab: %s: %s: %w", h.Name, tmpl, err)
		}
		if err := os.WriteFile(filepath.Join(h.Dir, out), []byte(b.String()), 0o755); err != nil {
			return fmt.Errorf("lab: %s: %w", h.Name, err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(h.Dir, "power.fifo"), 0o600); err != nil {
		return fmt.Errorf("lab: %s: power fifo: %w", h.Name, err)
	}
	return nil
}

// libvirtd.conf: private socket dir, no auth on the socket, plain TCP on
// the host's lab address (the lab network is private to the namespaces).
const libvirtdConf = `# written by chime-fence e2e/lab
unix_sock_dir = "/run/libvirt"
auth_unix_rw = "none"
auth_unix_ro = "none"
listen_tls = 0
listen_tcp = 1
listen_addr = "%s"
tcp_port = "%d"
auth_tcp = "none"
host_uuid = "%s"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`

// qemu.conf for QEMU as plain root in a sandbox without cgroups, seccomp,
// security drivers or virtlogd; QEMU's own image locking stays on.
const qemuConf = `# written by chime-fence e2e/lab
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
seccomp_sandbox = 0
security_driver = "none"
stdio_handler = "file"
`

// startSupervisor starts the host's power supply loop inside its netns.
func (l *Lab) startSupervisor(h *host) error {
	logf, err := os.OpenFile(filepath.Join(h.Dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("lab: %s: %w", h.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", "netns", "exec", h.Netns, "sh", filepath.Join(h.Dir, "supervisor.sh"))
	cmd.Env = append(os.Environ(), envLab+"="+l.cfg.Name, envHost+"="+h.Name)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The lab lives as long as its owner: a killed test leaves no host
	// running (namespaces are removed by the next Start's Sweep).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: %s: start supervisor: %w", h.Name, err)
	}
	h.sup, h.supDone = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(h.supDone) }()
	return nil
}

// WaitReady waits until h's libvirtd answers over TCP from the controller
// namespace and on its unix socket, or ctx ends.
func (l *Lab) WaitReady(ctx context.Context, h Host) error {
	return l.waitLibvirt(ctx, h, true, false)
}

// warm waits until h is ready, then has its libvirtd probe QEMU's
// capabilities: a fresh libvirtd does that on its first define (about a
// second), which a cluster's hosts did long ago and a lab's would
// otherwise do in the middle of the first evacuation onto them. The cache
// lives in the host's directory, so a power cycle keeps it.
// Unlike WaitReady it fails as soon as the host's boot has: its init
// exited or libvirtd died (HostError, quoting the boot log).
func (l *Lab) warm(ctx context.Context, h Host) error {
	if err := l.waitLibvirt(ctx, h, true, true); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := l.Virsh(cctx, h, "domcapabilities"); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return fmt.Errorf("lab: %s: %w", h.Name, ctx.Err())
		}
		return hostError(h, "QEMU capabilities", fmt.Errorf("virsh domcapabilities: %w", err))
	}
	return nil
}

// WaitBooted waits until h's libvirtd answers on its unix socket, or ctx
// ends; unlike WaitReady it does not need h's network.
func (l *Lab) WaitBooted(ctx context.Context, h Host) error {
	return l.waitLibvirt(ctx, h, false, false)
}

// waitLibvirt polls h's libvirtd; with booting (Start) a failed boot ends
// the wait at once instead of at ctx's deadline.
func (l *Lab) waitLibvirt(ctx context.Context, h Host, tcp, booting bool) error {
	var last error
	for {
		last = l.probeLibvirt(ctx, h, tcp)
		if last == nil {
			return nil
		}
		if booting {
			if err := bootFailure(h); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return hostError(h, "libvirtd", fmt.Errorf("not answering: %w (last: %v)", ctx.Err(), last))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (l *Lab) probeLibvirt(ctx context.Context, h Host, tcp bool) error {
	if tcp {
		if err := tcpProbe(ctx, l.ctl.Netns, h.MgmtAddr, LibvirtPort, 300*time.Millisecond); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := l.Virsh(cctx, h, "uri")
	return err
}

// startBMCs starts every BMC of every host in its namespace, in parallel.
// A host's BMCs share its chassis control program, so they drive one
// power supply.
func (l *Lab) startBMCs(ctx context.Context, pwFile string) error {
	var rfBin string
	n := 0
	for _, h := range l.hosts {
		for _, b := range h.BMCs {
			n++
			if b.Type == BMCRedfish && rfBin == "" {
				var err error
				if rfBin, err = l.redfishBinary(ctx); err != nil {
					return err
				}
			}
		}
	}
	errc := make(chan error, n)
	for _, h := range l.hosts {
		for k, b := range h.BMCs {
			go func() {
				if b.Type == BMCIPMI {
					errc <- l.startIPMI(ctx, h, b)
				} else {
					errc <- l.startRedfish(ctx, h, k, rfBin, pwFile)
				}
			}()
		}
	}
	var errs []error
	for range n {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func (l *Lab) startIPMI(ctx context.Context, h *host, b BMC) error {
	sim, err := ipmisim.Start(ctx, ipmisim.Config{
		Addr: b.Addr, Port: b.Port, User: b.User, Password: l.cfg.BMCPassword,
		StateDir: filepath.Join(l.cfg.Dir, "bmc", h.Name), ChassisControl: h.ChassisControl,
		Netns: b.Netns,
	})
	if err != nil {
		return fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	l.mu.Lock()
	h.ipmi = sim
	l.mu.Unlock()
	return nil
}

// writeState records the lab for Attach (chime-lab show/down).
func (l *Lab) writeState() error {
	st := state{Name: l.cfg.Name, Dir: l.cfg.Dir, OwnerPID: os.Getpid(), Controller: l.ctl}
	for _, h := range l.hosts {
		st.Hosts = append(st.Hosts, h.Host)
		if h.sup != nil {
			st.PIDs = append(st.PIDs, h.sup.Process.Pid)
		}
		if h.ipmi != nil {
			st.PIDs = append(st.PIDs, h.ipmi.PID())
		}
		if h.rf != nil {
			st.PIDs = append(st.PIDs, h.rf.Process.Pid)
		}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("lab: state: %w", err)
	}
	if err := os.WriteFile(filepath.Join(l.cfg.Dir, stateFile), b, 0o644); err != nil {
		return fmt.Errorf("lab: state: %w", err)
	}
	return nil
}

// Attach opens the lab recorded in dir by a Start in another process
// (chime-lab show/down). Every method works on it; Close on an attached lab
// kills the recorded processes by PID and sweeps.
func Attach(dir string) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("lab: attach %s: %w", dir, err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("lab: attach %s: %s: %w", dir, stateFile, err)
	}
	cfg, err := Config{Name: st.Name, Dir: st.Dir, Hosts: len(st.Hosts), BMCPassword: "unused"}.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("lab: attach %s: %w", dir, err)
	}
	st.Controller.name = st.Name
	l := &Lab{cfg: cfg, ctl: st.Controller, log: zerolog.Nop()}
	for _, h := range st.Hosts {
		if len(h.BMCs) == 0 && h.BMC.Type != "" { // state written before BMCs existed
			h.BMCs = []BMC{h.BMC}
		}
		l.hosts = append(l.hosts, &host{Host: h})
	}
	l.attachedPIDs = st.PIDs
	l.ownerPID = st.OwnerPID
	return l, nil
}

// Name is the lab's name (namespace prefix).
func (l *Lab) Name() string { return l.cfg.Name }

// Dir is the lab's state directory.
func (l *Lab) Dir() string { return l.cfg.Dir }

// OwnerPID is the process that started the lab.
func (l *Lab) OwnerPID() int {
	if l.owned {
		return os.Getpid()
	}
	return l.ownerPID
}

// Hosts returns the lab's hosts in order (host1 first).
func (l *Lab) Hosts() []Host {
	out := make([]Host, len(l.hosts))
	for i, h := range l.hosts {
		out[i] = h.Host
	}
	return out
}

// Host returns the host with the given name.
func (l *Lab) Host(name string) (Host, error) {
	h, err := l.host(Host{Name: name})
	if err != nil {
		return Host{}, err
	}
	return h.Host, nil
}

func (l *Lab) host(h Host) (*host, error) {
	for _, x := range l.hosts {
		if x.Name == h.Name {
			return x, nil
		}
	}
	return nil, fmt.Errorf("lab %s: no host %q", l.cfg.Name, h.Name)
}

// Controller returns the controller namespace.
func (l *Lab) Controller() Controller { return l.ctl }

// SharedDir is the lab's shared storage: the same path in every host.
func (l *Lab) SharedDir() string { return filepath.Join(l.cfg.Dir, "shared") }
