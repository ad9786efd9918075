package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// chassis runs h's chassis_control program, the path ipmi_sim and the
// Redfish simulator use.
func (l *Lab) chassis(ctx context.Context, h Host, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := run(cctx, append([]string{h.ChassisControl}, args...)...)
	if err != nil {
		return out, fmt.Errorf("lab: %s: chassis control: %w", h.Name, err)
	}
	return out, nil
}

// PowerLoss cuts h's power as its BMC would: the NIC goes down and the
// host's whole PID namespace (libvirtd, QEMU, agent) is killed before it
// returns. The BMC keeps running and reports power off.
func (l *Lab) PowerLoss(ctx context.Context, h Host) error {
	_, err := l.chassis(ctx, h, "set", "power", "0")
	return err
}

// PowerOn powers h on (new boot id) and waits until its libvirtd answers
// on its unix socket (WaitBooted; call WaitReady to also wait for TCP).
func (l *Lab) PowerOn(ctx context.Context, h Host) error {
	if _, err := l.chassis(ctx, h, "set", "power", "1"); err != nil {
		return err
	}
	return l.WaitBooted(ctx, h)
}

// HostPowered reports h's power state as its BMC sees it.
func (l *Lab) HostPowered(h Host) bool {
	_, err := os.Stat(filepath.Join(h.Dir, "power_on"))
	return err == nil
}

// BootID is h's current boot id (what BootIDPath shows inside the host),
// or an error when it is off.
func (l *Lab) BootID(h Host) (string, error) {
	if initPID(h) == 0 {
		return "", fmt.Errorf("lab: %s: host is not running", h.Name)
	}
	b, err := os.ReadFile(filepath.Join(h.Dir, "boot_id"))
	if err != nil {
		return "", fmt.Errorf("lab: %s: boot id: %w", h.Name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// HostPIDs lists the processes (root-namespace PIDs) running in h's PID
// namespace; empty when h is off.
func (l *Lab) HostPIDs(h Host) []int {
	init := initPID(h)
	if init == 0 {
		return nil
	}
	ns := nsID(init, "pid")
	var out []int
	for _, p := range pids() {
		if alive(p) && nsID(p, "pid") == ns {
			out = append(out, p)
		}
	}
	return out
}

// QEMUPIDs lists h's running QEMU processes.
func (l *Lab) QEMUPIDs(h Host) []int {
	var out []int
	for _, p := range l.HostPIDs(h) {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/comm"); err == nil && strings.HasPrefix(string(b), "qemu-system") {
			out = append(out, p)
		}
	}
	return out
}

// Hang makes h silent while its BMC still reports power on: all its
// traffic is dropped (nftables in its namespace) and every process of it
// is stopped (SIGSTOP).
func (l *Lab) Hang(ctx context.Context, h Host) error {
	rules := fmt.Sprintf(`table inet %s {
	chain in { type filter hook input priority -300; policy drop; }
	chain out { type filter hook output priority -300; policy drop; }
}
`, hangTable)
	if err := nftApply(ctx, h.Netns, rules); err != nil {
		return fmt.Errorf("lab: %s: hang: %w", h.Name, err)
	}
	// Stop until a pass finds nothing new (a process may fork meanwhile).
	stopped := map[int]bool{}
	for pass := 0; pass < 5; pass++ {
		fresh := 0
		for _, p := range l.HostPIDs(h) {
			if !stopped[p] {
				_ = syscall.Kill(p, syscall.SIGSTOP)
				stopped[p] = true
				fresh++
			}
		}
		if fresh == 0 {
			break
		}
	}
	if len(stopped) == 0 {
		return fmt.Errorf("lab: %s: hang: host is not running", h.Name)
	}
	return nil
}

// Unhang resumes h's processes and lets its traffic through again.
func (l *Lab) Unhang(ctx context.Context, h Host) error {
	for _, p := range l.HostPIDs(h) {
		_ = syscall.Kill(p, syscall.SIGCONT)
	}
	if err := nftDelete(ctx, h.Netns, hangTable); err != nil {
		return fmt.Errorf("lab: %s: unhang: %w", h.Name, err)
	}
	return nil
}

// CutNetwork unplugs h's cable at the switch: the host keeps running but
// nothing reaches it. Its BMC stays reachable.
func (l *Lab) CutNetwork(ctx context.Context, h Host) error {
	_, err := run(ctx, "ip", "-n", l.cfg.Name+"-sw", "link", "set", "m-"+h.Name, "down")
	if err != nil {
		return fmt.Errorf("lab: %s: cut network: %w", h.Name, err)
	}
	return nil
}

// RestoreNetwork plugs h's cable back in.
func (l *Lab) RestoreNetwork(ctx context.Context, h Host) error {
	_, err := run(ctx, "ip", "-n", l.cfg.Name+"-sw", "link", "set", "m-"+h.Name, "up")
	if err != nil {
		return fmt.Errorf("lab: %s: restore network: %w", h.Name, err)
	}
	return nil
}

// BlockBMC drops all traffic to every BMC of h (nftables in the BMC
// namespace, matching each BMC's address and port); the BMC processes keep
// running.
func (l *Lab) BlockBMC(ctx context.Context, h Host) error {
	return l.blockBMCs(ctx, h, blockTable, h.AllBMCs())
}

// BlockBMCVia drops traffic to h's BMC of type typ only (BMCIPMI or
// BMCRedfish), for hosts with more than one; UnblockBMC lifts it.
func (l *Lab) BlockBMCVia(ctx context.Context, h Host, typ string) error {
	b, ok := h.BMCOf(typ)
	if !ok {
		return fmt.Errorf("lab: %s: block BMC: no %q BMC (it has %s)", h.Name, typ, h.BMCType())
	}
	return l.blockBMCs(ctx, h, blockTable+"_"+typ, []BMC{b})
}

func (l *Lab) blockBMCs(ctx context.Context, h Host, table string, bs []BMC) error {
	if len(bs) == 0 {
		return fmt.Errorf("lab: %s: block BMC: host has no BMC", h.Name)
	}
	var rules strings.Builder
	fmt.Fprintf(&rules, "table inet %s {\n\tchain in {\n\t\ttype filter hook input priority -300;\n", table)
	for _, b := range bs {
		fmt.Fprintf(&rules, "\t\tip daddr %s udp dport %d drop\n\t\tip daddr %s tcp dport %d drop\n", b.Addr, b.Port, b.Addr, b.Port)
	}
	rules.WriteString("\t}\n}\n")
	if err := nftApply(ctx, h.BMC.Netns, rules.String()); err != nil {
		return fmt.Errorf("lab: %s: block BMC: %w", h.Name, err)
	}
	return nil
}

// UnblockBMC lets traffic reach every BMC of h again (undoes BlockBMC and
// BlockBMCVia).
func (l *Lab) UnblockBMC(ctx context.Context, h Host) error {
	tables := []string{blockTable}
	for _, b := range h.AllBMCs() {
		tables = append(tables, blockTable+"_"+b.Type)
	}
	for _, t := range tables {
		if err := nftDelete(ctx, h.BMC.Netns, t); err != nil {
			return fmt.Errorf("lab: %s: unblock BMC: %w", h.Name, err)
		}
	}
	return nil
}

// AgentPID is the PID (root namespace) of h's agent, 0 if none runs.
func (l *Lab) AgentPID(h Host) int {
	for _, p := range l.HostPIDs(h) {
		if hasEnv(p, envAgent+"=1") {
			return p
		}
	}
	return 0
}

// KillAgent kills h's agent (SIGKILL) and waits until it is gone; it is
// not restarted until the next power-on.
func (l *Lab) KillAgent(ctx context.Context, h Host) error {
	var ps []int
	for _, p := range l.HostPIDs(h) {
		if hasEnv(p, envAgent+"=1") {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return fmt.Errorf("lab: %s: no agent running", h.Name)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := killWait(cctx, ps); err != nil {
		return fmt.Errorf("lab: %s: kill agent: %w", h.Name, err)
	}
	return nil
}

func nftApply(ctx context.Context, netns, rules string) error {
	f, err := os.CreateTemp("", "chimelab-nft-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(rules); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = run(ctx, "ip", "netns", "exec", netns, "nft", "-f", f.Name())
	return err
}

// nftDelete removes a table; a table that is not there is fine.
func nftDelete(ctx context.Context, netns, table string) error {
	out, err := run(ctx, "ip", "netns", "exec", netns, "nft", "list", "tables")
	if err != nil {
		return err
	}
	found := false
	for _, line := range strings.Split(out, "\n") {
		found = found || strings.TrimSpace(line) == "table inet "+table
	}
	if !found {
		return nil
	}
	_, err = run(ctx, "ip", "netns", "exec", netns, "nft", "delete", "table", "inet", table)
	return err
}
