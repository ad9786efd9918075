package evacuator

import (
	"context"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Hypervisor is what the evacuator needs from one host. Every call obeys
// its context's deadline (drivers/libvirt guarantees it even though
// go-libvirt does not).
type Hypervisor interface {
	Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)
	Domain(ctx context.Context, uuid string) (hypervisor.Domain, error)
	Define(ctx context.Context, xml string) (uuid string, err error)
	// SetAutostart turns libvirt's autostart on or off; Execute turns it
	// off before every start, so a rebuilt VM never has it.
	SetAutostart(ctx context.Context, uuid string, on bool) error
	Start(ctx context.Context, uuid string) error
	Destroy(ctx context.Context, uuid string) error
	Undefine(ctx context.Context, uuid string) error
	State(ctx context.Context, uuid string) (hypervisor.DomainState, error)
	NodeStats(ctx context.Context) (hypervisor.NodeStats, error)
	Events(ctx context.Context) <-chan hypervisor.Event
}
