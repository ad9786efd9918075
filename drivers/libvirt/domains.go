package libvirt

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Ping checks that libvirtd answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "libvirt: ping", func(l *golibvirt.Libvirt) error {
		_, err := l.ConnectGetLibVersion()
		return err
	})
}

// Domains lists every domain with its state and, if withXML, its inactive
// secure XML: the definition a rebuild would use.
func (c *Client) Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error) {
	var out []hypervisor.Domain
	err := c.call(ctx, "libvirt: list domains", func(l *golibvirt.Libvirt) error {
		doms, _, err := l.ConnectListAllDomains(1, 0)
		if err != nil {
			return err
		}
		out = make([]hypervisor.Domain, 0, len(doms))
		for _, d := range doms {
			hd, err := describe(l, d, withXML)
			if golibvirt.IsNotFound(err) {
				continue // undefined while we listed
			}
			if err != nil {
				return fmt.Errorf("domain %s: %w", d.Name, err)
			}
			out = append(out, hd)
		}
		return nil
	})
	return out, err
}

func describe(l *golibvirt.Libvirt, d golibvirt.Domain, withXML bool) (hypervisor.Domain, error) {
	st, reason, err := l.DomainGetState(d, 0)
	if err != nil {
		return hypervisor.Domain{}, err
	}
	pers, err := l.DomainIsPersistent(d)
	if err != nil {
		return hypervisor.Domain{}, err
	}
	auto, err := l.DomainGetAutostart(d)
	if err != nil {
		return hypervisor.Domain{}, err
	}
	hd := hypervisor.Domain{UUID: FormatUUID(d.UUID), Name: d.Name, State: mapState(st), Reason: stopReason(st, reason),
		Persistent: pers == 1, Autostart: auto != 0}
	if withXML {
		x, err := l.DomainGetXMLDesc(d, golibvirt.DomainXMLSecure|golibvirt.DomainXMLInactive)
		if err != nil {
			return hypervisor.Domain{}, err
		}
		hd.XML = x
	}
	return hd, nil
}

// Domain looks one domain up by UUID, with its XML.
func (c *Client) Domain(ctx context.Context, uuid string) (hypervisor.Domain, error) {
	u, err := ParseUUID(uuid)
	if err != nil {
		return hypervisor.Domain{}, &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: c.cfg.Host, Step: "libvirt: lookup", Err: err}
	}
	var hd hypervisor.Domain
	err = c.call(ctx, "libvirt: lookup "+uuid, func(l *golibvirt.Libvirt) error {
		d, err := l.DomainLookupByUUID(u)
		if err != nil {
			return err
		}
		hd, err = describe(l, d, true)
		return err
	})
	return hd, err
}

// Define defines (or redefines) a persistent domain from XML, validated
// against libvirt's schema, and returns its UUID.
func (c *Client) Define(ctx context.Context, xml string) (string, error) {
	var uuid string
	for try := 1; ; try++ {
		err := c.call(ctx, "libvirt: define", func(l *golibvirt.Libvirt) error {
			d, err := l.DomainDefineXMLFlags(xml, golibvirt.DomainDefineValidate)
			uuid = FormatUUID(d.UUID)
			return err
		})
		// A libvirtd that just started can fail to load its own schema
		// when several validating defines arrive at once (libvirt 9.0 +
		// libxml2 2.9: "Unable to parse RNG"); the XML was never judged,
		// so asking again once is safe.
		if err == nil || try == 2 || !schemaLoadFailed(err) || ctx.Err() != nil {
			return uuid, err
		}
		c.log.Warn().Err(err).Msg("libvirtd could not load its domain schema; defining again")
	}
}

func schemaLoadFailed(err error) bool {
	return strings.Contains(err.Error(), "Unable to parse RNG")
}

// Start starts a defined domain.
func (c *Client) Start(ctx context.Context, uuid string) error {
	return c.onDomain(ctx, "start", uuid, func(l *golibvirt.Libvirt, d golibvirt.Domain) error {
		return l.DomainCreate(d)
	})
}

// SetAutostart turns libvirt's autostart of a domain on or off. Off is
// what chime-fence wants everywhere: a host that comes back after a fence
// must not start copies of VMs that now run elsewhere before its agent
// has heard from the daemon.
func (c *Client) SetAutostart(ctx context.Context, uuid string, on bool) error {
	op := "autostart off"
	var v int32
	if on {
		op, v = "autostart on", 1
	}
	return c.onDomain(ctx, op, uuid, func(l *golibvirt.Libvirt, d golibvirt.Domain) error {
		return l.DomainSetAutostart(d, v)
	})
}

// Destroy stops a domain at once (pulls its virtual power).
func (c *Client) Destroy(ctx context.Context, uuid string) error {
	return c.onDomain(ctx, "destroy", uuid, func(l *golibvirt.Libvirt, d golibvirt.Domain) error {
		return l.DomainDestroyFlags(d, 0)
	})
}

// Undefine removes a domain's persistent definition (and managed save and
// NVRAM, which would otherwise refuse the undefine).
func (c *Client) Undefine(ctx context.Context, uuid string) error {
	return c.onDomain(ctx, "undefine", uuid, func(l *golibvirt.Libvirt, d golibvirt.Domain) error {
		return l.DomainUndefineFlags(d, golibvirt.DomainUndefineManagedSave|golibvirt.DomainUndefineNvram)
	})
}

// State reads one domain's state.
func (c *Client) State(ctx context.Context, uuid string) (hypervisor.DomainState, error) {
	var st hypervisor.DomainState
	err := c.onDomain(ctx, "state", uuid, func(l *golibvirt.Libvirt, d golibvirt.Domain) error {
		s, _, err := l.DomainGetState(d, 0)
		st = mapState(s)
		return err
	})
	return st, err
}

func (c *Client) onDomain(ctx context.Context, op, uuid string, fn func(*golibvirt.Libvirt, golibvirt.Domain) error) error {
	step := "libvirt: " + op + " " + uuid
	u, err := ParseUUID(uuid)
	if err != nil {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: c.cfg.Host, Step: step, Err: err}
	}
	return c.call(ctx, step, func(l *golibvirt.Libvirt) error {
		d, err := l.DomainLookupByUUID(u)
		if err != nil {
			return err
		}
		return fn(l, d)
	})
}

// NodeStats reads capacity and cumulative CPU time; CPU load is the delta
// of two snapshots (hypervisor.CPULoad).
func (c *Client) NodeStats(ctx context.Context) (hypervisor.NodeStats, error) {
	var ns hypervisor.NodeStats
	err := c.call(ctx, "libvirt: node stats", func(l *golibvirt.Libvirt) error {
		_, memKiB, cpus, _, _, _, _, _, err := l.NodeGetInfo()
		if err != nil {
			return err
		}
		free, err := l.NodeGetFreeMemory()
		if err != nil {
			return err
		}
		_, n, err := l.NodeGetCPUStats(int32(golibvirt.NodeCPUStatsAllCpus), 0, 0)
		if err != nil {
			return err
		}
		params, _, err := l.NodeGetCPUStats(int32(golibvirt.NodeCPUStatsAllCpus), n, 0)
		if err != nil {
			return err
		}
		ns = hypervisor.NodeStats{At: time.Now(), CPUs: int(cpus), MemoryKiB: memKiB, FreeKiB: free / 1024}
		for _, p := range params {
			switch p.Field {
			case golibvirt.NodeCPUStatsIdle, golibvirt.NodeCPUStatsIowait:
				ns.IdleNs += p.Value
			case golibvirt.NodeCPUStatsKernel, golibvirt.NodeCPUStatsUser:
				ns.BusyNs += p.Value
			}
		}
		return nil
	})
	return ns, err
}

func mapState(s int32) hypervisor.DomainState {
	switch golibvirt.DomainState(s) {
	case golibvirt.DomainRunning:
		return hypervisor.StateRunning
	case golibvirt.DomainPaused:
		return hypervisor.StatePaused
	case golibvirt.DomainShutoff:
		return hypervisor.StateShutoff
	case golibvirt.DomainCrashed:
		return hypervisor.StateCrashed
	case golibvirt.DomainNostate:
		return hypervisor.StateUnknown
	}
	return hypervisor.StateOther
}

var shutoffReasons = map[golibvirt.DomainShutoffReason]string{
	golibvirt.DomainShutoffUnknown:      "unknown",
	golibvirt.DomainShutoffShutdown:     "shutdown",
	golibvirt.DomainShutoffDestroyed:    "destroyed",
	golibvirt.DomainShutoffCrashed:      "crashed",
	golibvirt.DomainShutoffMigrated:     "migrated",
	golibvirt.DomainShutoffSaved:        "saved",
	golibvirt.DomainShutoffFailed:       "failed",
	golibvirt.DomainShutoffFromSnapshot: "from-snapshot",
	golibvirt.DomainShutoffDaemon:       "daemon",
}

// stopReason names why a shut-off domain stopped; "" for other states.
func stopReason(state, reason int32) string {
	if golibvirt.DomainState(state) != golibvirt.DomainShutoff {
		return ""
	}
	if r, ok := shutoffReasons[golibvirt.DomainShutoffReason(reason)]; ok {
		return r
	}
	return fmt.Sprintf("reason-%d", reason)
}

// FormatUUID prints a libvirt UUID in its canonical 8-4-4-4-12 form.
func FormatUUID(u golibvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// ParseUUID accepts the canonical form, with or without dashes.
func ParseUUID(s string) (golibvirt.UUID, error) {
	var u golibvirt.UUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(u) {
		return u, fmt.Errorf("%q is not a UUID", s)
	}
	copy(u[:], b)
	return u, nil
}
