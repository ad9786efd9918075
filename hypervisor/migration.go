package hypervisor

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Migration asks a host's hypervisor to move one of its domains to another
// host, the source driving the transfer (libvirt peer to peer). The source
// host's libvirtd connects to the destination itself, so every address here
// is as the SOURCE host sees it, not as the caller does.
type Migration struct {
	// UUID is the domain to move.
	UUID string `json:"uuid"`
	// DestURI is the destination libvirtd's connection URI, e.g.
	// qemu+tcp://10.0.0.12/system.
	DestURI string `json:"dest_uri"`
	// DataURI is where the memory (and disk) stream goes, tcp://ADDR or
	// tcp://ADDR:PORT: the network the data crosses. "" lets the
	// destination name itself by its hostname, which must then resolve on
	// the source.
	DataURI string `json:"data_uri,omitempty"`
	// CopyDisks lists the disk targets ("vda") whose storage is copied to
	// the destination (storage that only the source can reach). Every other
	// disk must be shared. The destination must be able to create the
	// copies (see the driver).
	CopyDisks []string `json:"copy_disks,omitempty"`
	// Offline moves the definition of a shut-off domain; nothing runs, no
	// storage is copied.
	Offline bool `json:"offline,omitempty"`
	// AllowUnsafe skips libvirt's own check that disks not copied are on
	// a file system it recognises as shared (NFS, GFS2, Ceph, ...). Only
	// for storage chime-fence's configuration calls shared but libvirt
	// cannot tell, e.g. a cluster block device or a test lab's directory:
	// with truly local storage it corrupts the guest's disk.
	AllowUnsafe bool `json:"allow_unsafe,omitempty"`
	// BandwidthMiBs caps the transfer in MiB/s; 0 is libvirt's default
	// (unlimited).
	BandwidthMiBs uint64 `json:"bandwidth_mibs,omitempty"`
}

var diskTargetRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,31}$`)

// Validate names every field that makes the migration impossible to ask
// for.
func (m Migration) Validate() error {
	var errs []error
	if m.UUID == "" {
		errs = append(errs, errors.New("migration: uuid is empty"))
	}
	if m.DestURI == "" {
		errs = append(errs, errors.New("migration: dest_uri is empty"))
	} else if u, err := url.Parse(m.DestURI); err != nil || u.Scheme == "" || u.Host == "" {
		errs = append(errs, fmt.Errorf("migration: dest_uri %q: want a libvirt URI with a host, e.g. qemu+tcp://10.0.0.12/system", m.DestURI))
	} else if u.User != nil {
		if _, has := u.User.Password(); has {
			// Never echo it: the URI would carry it into logs.
			errs = append(errs, errors.New("migration: dest_uri must not carry a password"))
		}
	}
	if m.DataURI != "" {
		u, err := url.Parse(m.DataURI)
		switch {
		case err != nil || u.Scheme != "tcp" || u.Hostname() == "" || u.Path != "" || u.User != nil:
			errs = append(errs, fmt.Errorf("migration: data_uri %q: want tcp://ADDR or tcp://ADDR:PORT", m.DataURI))
		}
	}
	seen := map[string]bool{}
	for _, d := range m.CopyDisks {
		switch {
		case !diskTargetRE.MatchString(d):
			errs = append(errs, fmt.Errorf("migration: copy_disks: %q is not a disk target name like vda", d))
		case seen[d]:
			errs = append(errs, fmt.Errorf("migration: copy_disks: %s is listed twice", d))
		}
		seen[d] = true
	}
	if m.Offline && len(m.CopyDisks) > 0 {
		errs = append(errs, errors.New("migration: an offline migration cannot copy storage (start the domain, or copy its disks by hand)"))
	}
	return errors.Join(errs...)
}

// String names the migration for logs and errors.
func (m Migration) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s to %s", m.UUID, m.DestURI)
	if m.DataURI != "" {
		fmt.Fprintf(&b, " (data over %s)", m.DataURI)
	}
	if len(m.CopyDisks) > 0 {
		fmt.Fprintf(&b, " copying %s", strings.Join(m.CopyDisks, ","))
	}
	if m.Offline {
		b.WriteString(" offline")
	}
	return b.String()
}

// MigrationProgress is a snapshot of a running migration job, as libvirt
// reports it on the source. Byte counts; zero when libvirt did not say.
type MigrationProgress struct {
	UUID    string        `json:"uuid"`
	Elapsed time.Duration `json:"elapsed"`
	// Data* cover everything sent (memory plus copied disks).
	DataTotal     uint64 `json:"data_total"`
	DataProcessed uint64 `json:"data_processed"`
	DataRemaining uint64 `json:"data_remaining"`
	MemoryTotal   uint64 `json:"memory_total"`
	MemoryDone    uint64 `json:"memory_processed"`
	DiskTotal     uint64 `json:"disk_total"`
	DiskDone      uint64 `json:"disk_processed"`
}

// Percent is how much of the data is sent, 0..100; memory is sent again
// while the guest dirties it, so it may go down.
func (p MigrationProgress) Percent() float64 {
	if p.DataTotal == 0 {
		return 0
	}
	done := p.DataTotal - min(p.DataRemaining, p.DataTotal)
	return 100 * float64(done) / float64(p.DataTotal)
}
