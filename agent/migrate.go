package agent

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/chimestack/chime-fence/heartbeat"
)

// MigrationsFile in the state directory records the migrations chime-agent
// migrate ran, until the daemon acknowledged them (and a while after).
const MigrationsFile = "migrations.json"

// keepMigrations bounds the records kept; reported ones go first.
const keepMigrations = 200

// MigrationRecord is one local migration and whether the daemon has it.
type MigrationRecord struct {
	heartbeat.LocalMigration
	Reported bool `json:"reported"`
}

// readMigrations reads the records; none when the file does not exist.
func readMigrations(dir string) ([]MigrationRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, MigrationsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("local migrations: %w", err)
	}
	var recs []MigrationRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		return nil, fmt.Errorf("local migrations: %s does not decode: %w", filepath.Join(dir, MigrationsFile), err)
	}
	return recs, nil
}

// updateMigrations applies fn to the records under the state directory's
// lock and writes them back durably.
func updateMigrations(dir string, fn func([]MigrationRecord) []MigrationRecord) error {
	if dir == "" {
		return errors.New("local migrations: no state directory")
	}
	f, err := lockDir(dir)
	if err != nil {
		return fmt.Errorf("local migrations: %w", err)
	}
	defer f.Close()
	recs, err := readMigrations(dir)
	if err != nil {
		return err
	}
	recs = fn(recs)
	// Oldest reported records go first, then (only past the bound) the
	// oldest unreported ones.
	for len(recs) > keepMigrations {
		i := slices.IndexFunc(recs, func(r MigrationRecord) bool { return r.Reported })
		if i < 0 {
			i = 0
		}
		recs = slices.Delete(recs, i, i+1)
	}
	if err := writeFileSync(dir, MigrationsFile, recs); err != nil {
		return fmt.Errorf("local migrations: write %s: %w", filepath.Join(dir, MigrationsFile), err)
	}
	return nil
}

// RecordMigrations appends migrations (durably) for the agent to report.
// A record without ID gets a random one.
func RecordMigrations(dir string, ms ...heartbeat.LocalMigration) error {
	return updateMigrations(dir, func(recs []MigrationRecord) []MigrationRecord {
		for _, m := range ms {
			if m.ID == "" {
				m.ID = newID()
			}
			recs = append(recs, MigrationRecord{LocalMigration: m})
		}
		return recs
	})
}

// PendingMigrations are the records the daemon has not acknowledged,
// oldest first, at most heartbeat.MaxLocalMigrations.
func PendingMigrations(dir string) ([]heartbeat.LocalMigration, error) {
	if dir == "" {
		return nil, nil
	}
	recs, err := readMigrations(dir)
	if err != nil {
		return nil, err
	}
	var out []heartbeat.LocalMigration
	for _, r := range recs {
		if !r.Reported && len(out) < heartbeat.MaxLocalMigrations {
			out = append(out, r.LocalMigration)
		}
	}
	return out, nil
}

// AckMigrations marks the records the daemon acknowledged as reported.
func AckMigrations(dir string, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	return updateMigrations(dir, func(recs []MigrationRecord) []MigrationRecord {
		for i := range recs {
			if slices.Contains(ids, recs[i].ID) {
				recs[i].Reported = true
			}
		}
		return recs
	})
}

func newID() string {
	var b [8]byte
	if f, err := os.Open("/dev/urandom"); err == nil {
		_, _ = io.ReadFull(f, b[:])
		_ = f.Close()
	}
	return hex.EncodeToString(b[:])
}

// Iface is a network interface as a migration path check sees it.
type Iface struct {
	Name string
	// Up is the administrative flag; Oper is /sys/class/net/NAME/operstate
	// ("up", "down", "lowerlayerdown", "unknown" for loopback-like ones).
	Up    bool
	Oper  string
	Addrs []*net.IPNet
}

// Route is one IPv4 route of the kernel's main table.
type Route struct {
	Iface  string
	Dst    *net.IPNet
	Metric uint32
}

// CheckMigrationPath checks that traffic to dest leaves by ifc: ifc is up
// with a carrier and an address, dest is not this host, and dest is in a
// subnet of ifc or the best matching route goes through ifc. It returns
// ifc's address on the way (the source of the migration traffic). ifaces
// are all the host's interfaces (to recognise its own addresses).
func CheckMigrationPath(ifc Iface, ifaces []Iface, routes []Route, dest net.IP) (net.IP, error) {
	switch {
	case dest == nil:
		return nil, errors.New("no destination address")
	case dest.IsLoopback() || dest.IsUnspecified() || dest.IsMulticast():
		return nil, fmt.Errorf("destination %s is not a host address", dest)
	case !ifc.Up:
		return nil, fmt.Errorf("interface %s is administratively down", ifc.Name)
	case ifc.Oper != "" && ifc.Oper != "up" && ifc.Oper != "unknown":
		return nil, fmt.Errorf("interface %s has no link (operstate %s): is its cable or switch port down?", ifc.Name, ifc.Oper)
	}
	for _, i := range ifaces {
		for _, a := range i.Addrs {
			if a.IP.Equal(dest) {
				return nil, fmt.Errorf("destination %s is this host's own address (on %s)", dest, i.Name)
			}
		}
	}
	var src net.IP
	for _, a := range ifc.Addrs {
		if (a.IP.To4() == nil) != (dest.To4() == nil) {
			continue
		}
		if src == nil {
			src = a.IP
		}
		if a.Contains(dest) {
			return a.IP, nil
		}
	}
	if src == nil {
		return nil, fmt.Errorf("interface %s has no %s address", ifc.Name, family(dest))
	}
	if dest.To4() == nil {
		return nil, fmt.Errorf("destination %s is not on a subnet of %s (only directly connected IPv6 destinations are checked)", dest, ifc.Name)
	}
	best, bestLen := -1, -1
	for i, r := range routes {
		if !r.Dst.Contains(dest) {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if ones > bestLen || ones == bestLen && r.Metric < routes[best].Metric {
			best, bestLen = i, ones
		}
	}
	switch {
	case best < 0:
		return nil, fmt.Errorf("no route to destination %s", dest)
	case routes[best].Iface != ifc.Name:
		return nil, fmt.Errorf("destination %s is reached through %s (route %s), not through %s", dest, routes[best].Iface, routes[best].Dst, ifc.Name)
	}
	return src, nil
}

func family(ip net.IP) string {
	if ip.To4() != nil {
		return "IPv4"
	}
	return "IPv6"
}

// LookupIfaces reads every interface of this host, with its operstate.
func LookupIfaces() ([]Iface, error) {
	nis, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	out := make([]Iface, 0, len(nis))
	for _, ni := range nis {
		ifc := Iface{Name: ni.Name, Up: ni.Flags&net.FlagUp != 0}
		if b, err := os.ReadFile(filepath.Join("/sys/class/net", ni.Name, "operstate")); err == nil {
			ifc.Oper = strings.TrimSpace(string(b))
		}
		addrs, err := ni.Addrs()
		if err != nil {
			return nil, fmt.Errorf("interface %s: addresses: %w", ni.Name, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				ifc.Addrs = append(ifc.Addrs, n)
			}
		}
		out = append(out, ifc)
	}
	return out, nil
}

// ReadRoutes parses /proc/net/route (IPv4, main table).
func ReadRoutes(r io.Reader) ([]Route, error) {
	sc := bufio.NewScanner(r)
	var out []Route
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 8 {
			continue // header
		}
		dst, err1 := hexIPv4(f[1])
		mask, err2 := hexIPv4(f[7])
		var metric uint32
		_, err3 := fmt.Sscanf(f[6], "%d", &metric)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("route table line %q: %w", sc.Text(), err)
		}
		out = append(out, Route{Iface: f[0], Dst: &net.IPNet{IP: dst, Mask: net.IPMask(mask)}, Metric: metric})
	}
	return out, sc.Err()
}

// hexIPv4 decodes /proc/net/route's little-endian hex addresses.
func hexIPv4(s string) (net.IP, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 4 {
		return nil, fmt.Errorf("%q is not a hex IPv4 address", s)
	}
	v := binary.LittleEndian.Uint32(b)
	ip := make(net.IP, 4)
	binary.BigEndian.PutUint32(ip, v)
	return ip, nil
}
