package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/rs/zerolog"
)

// BMC types a lab host can have. A BMCBoth host has an IPMI BMC (its
// primary, Host.BMC) and a Redfish BMC (Host.BMCs[1]) that drive the same
// power supply, like a server whose BMC speaks both protocols.
const (
	BMCIPMI    = "ipmi"
	BMCRedfish = "redfish"
	BMCBoth    = "ipmi+redfish"
)

// DefaultName is the namespace/process prefix used when Config.Name is "".
const DefaultName = "chlab"

// MaxHosts bounds Config.Hosts; addresses are .11 to .(10+MaxHosts).
const MaxHosts = 50

// Config describes a lab. Only Dir and Hosts are required.
type Config struct {
	// Name prefixes every namespace ("NAME-sw", "NAME-h1", ...) and marks
	// every process the lab starts (environment CHIME_LAB=NAME), so Sweep
	// can find a killed run's leftovers. Lower-case letters and digits,
	// starting with a letter, at most 10 characters. "" = DefaultName.
	Name string
	// Dir is the lab's state directory (absolute). Hosts' libvirt state,
	// disks, logs and BMC state live below it; it must not exist, be empty,
	// or be a previous lab's directory (which is wiped). The shared storage
	// is Dir/shared. It must not lie under a path the hosts overmount
	// (/etc/libvirt, /run, /var/lib/libvirt, ...).
	Dir string
	// Hosts is the number of compute hosts, 1..MaxHosts.
	Hosts int
	// BMCTypes gives host i (0-based) a BMCIPMI, BMCRedfish or BMCBoth
	// BMC; hosts past the end of the slice get BMCIPMI.
	BMCTypes []string
	// BMCUser and BMCPassword are the admin account of every BMC.
	// Defaults: "admin" and a random password. The password is written to
	// Dir/bmc/password (0600); it never appears on a command line.
	BMCUser, BMCPassword string
	// AgentCommand, if set, gives the argv of a process started inside the
	// host at every power-on (after libvirtd), with stdout and stderr
	// appended to Host.AgentLog. It runs in the host's namespaces with
	// CHIME_LAB_AGENT=1, CHIME_LAB_HOST (host name), CHIME_LAB_HOST_ADDR
	// (its mgmt address) and CHIME_LAB_CONTROLLER_ADDR (the controller's
	// mgmt address) in its environment.
	AgentCommand func(Host) []string
	// PrepareBootCommand, if set, gives the argv of a command run inside
	// the host at every power-on BEFORE libvirtd starts (chime-agent
	// prepare-boot, as its systemd unit orders it), output appended to
	// Host.AgentLog. libvirtd starts after it whether it succeeded or not.
	PrepareBootCommand func(Host) []string
	// RedfishSim is the chime-redfish-sim binary for BMCRedfish hosts; ""
	// builds ./cmd/chime-redfish-sim of this module with `go build` into
	// Dir/bin (needs the module source and a Go toolchain).
	RedfishSim string
	// RedfishArgs are extra flags for every Redfish simulator, e.g.
	// "--off-lag=2s" or "--max-sessions=2".
	RedfishArgs []string
	// Log receives progress events (component=lab). Zero value: silent.
	Log zerolog.Logger

	// initPrelude, for tests, gives shell lines a host's init runs first
	// (a deliberately broken boot).
	initPrelude func(Host) string
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// Paths a host bind-mounts over or replaces; the lab dir must be outside.
var overmounted = []string{"/etc/libvirt", "/etc/passwd", "/etc/group", "/run",
	"/var/run", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt", "/proc", "/sys", "/dev"}

// withDefaults validates c and fills defaults; every problem is reported.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.Name == "" {
		c.Name = DefaultName
	}
	if !nameRE.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("lab: Name %q: want 1-10 lower-case letters or digits starting with a letter", c.Name))
	}
	switch {
	case c.Dir == "":
		errs = append(errs, errors.New("lab: Dir is required"))
	case !filepath.IsAbs(c.Dir):
		errs = append(errs, fmt.Errorf("lab: Dir %q is not absolute", c.Dir))
	case strings.ContainsAny(c.Dir, "\"\\\n' "):
		errs = append(errs, fmt.Errorf("lab: Dir %q must not contain quotes, backslashes, spaces or newlines", c.Dir))
	default:
		c.Dir = filepath.Clean(c.Dir)
		for _, p := range overmounted {
			if c.Dir == p || strings.HasPrefix(c.Dir, p+"/") {
				errs = append(errs, fmt.Errorf("lab: Dir %q lies under %s, which lab hosts overmount", c.Dir, p))
			}
		}
		if c.Dir == "/" {
			errs = append(errs, errors.New("lab: Dir must not be /"))
		}
	}
	if c.Hosts < 1 || c.Hosts > MaxHosts {
		errs = append(errs, fmt.Errorf("lab: Hosts %d out of range 1..%d", c.Hosts, MaxHosts))
	}
	if len(c.BMCTypes) > c.Hosts && c.Hosts >= 1 {
		errs = append(errs, fmt.Errorf("lab: BMCTypes has %d entries for %d hosts", len(c.BMCTypes), c.Hosts))
	}
	for i, t := range c.BMCTypes {
		if t != BMCIPMI && t != BMCRedfish && t != BMCBoth {
			errs = append(errs, fmt.Errorf("lab: BMCTypes[%d] %q: want %q, %q or %q", i, t, BMCIPMI, BMCRedfish, BMCBoth))
		}
	}
	if c.BMCUser == "" {
		c.BMCUser = "admin"
	}
	if len(c.BMCUser) > 16 || strings.ContainsAny(c.BMCUser, "\"\\\n\r\t '") {
		errs = append(errs, fmt.Errorf("lab: BMCUser %q: at most 16 bytes, no quotes, backslashes or whitespace", c.BMCUser))
	}
	if c.BMCPassword == "" {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			errs = append(errs, fmt.Errorf("lab: random BMC password: %w", err))
		}
		c.BMCPassword = hex.EncodeToString(b)
	}
	// Never echo the password itself.
	if len(c.BMCPassword) > 20 || strings.ContainsAny(c.BMCPassword, "\"\\\n\r\t ") {
		errs = append(errs, errors.New("lab: BMCPassword: at most 20 bytes (IPMI limit), no quotes, backslashes or whitespace"))
	}
	return c, errors.Join(errs...)
}

// bmcType is the BMC type of host index i (0-based).
func (c Config) bmcType(i int) string {
	if i < len(c.BMCTypes) {
		return c.BMCTypes[i]
	}
	return BMCIPMI
}
