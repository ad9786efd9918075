package evacuator

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"reflect"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// DefaultGraphicsListen is where a rebuilt VM's console listens unless the
// rules say otherwise: the saved XML names an address of the dead host.
const DefaultGraphicsListen = "0.0.0.0"

// ErrLossyRewrite marks a domain XML that libvirtxml cannot carry over
// whole (an element or attribute it does not model). The caller decides
// whether defining the saved XML unchanged is acceptable instead.
var ErrLossyRewrite = errors.New("rewrite would lose part of the domain XML")

// RewriteRules say which host-specific parts of a saved domain XML change
// for its new host.
type RewriteRules struct {
	// GraphicsListen replaces the listen attribute of every VNC, SPICE and
	// RDP console and the address of each <listen type='address'>
	// ("" means DefaultGraphicsListen). A console or listener that names no
	// address keeps the target's default (qemu.conf), which is not the old
	// host's; network, socket and none listeners are unchanged.
	GraphicsListen string
	// BridgeMap renames the source bridge of <interface type='bridge'>:
	// the old host's bridge name to the target's. Bridges not listed are
	// unchanged.
	BridgeMap map[string]string
}

// Rewrite returns domainXML ready to define on another host. Everything
// but the consoles' listen addresses and mapped bridges is kept: name,
// UUID, disks, memory, vCPUs and metadata are checked after the rewrite,
// and any element or attribute libvirtxml could not carry over is an error
// rather than silently lost.
func Rewrite(domainXML string, r RewriteRules) (string, error) {
	listen := r.GraphicsListen
	if listen == "" {
		listen = DefaultGraphicsListen
	}
	if err := checkListen(listen); err != nil {
		return "", fmt.Errorf("rewrite domain XML: graphics listen %q: %w", listen, err)
	}
	for _, from := range slices.Sorted(maps.Keys(r.BridgeMap)) {
		if err := checkBridge(from); err != nil {
			return "", fmt.Errorf("rewrite domain XML: bridge map: source %q: %w", from, err)
		}
		if err := checkBridge(r.BridgeMap[from]); err != nil {
			return "", fmt.Errorf("rewrite domain XML: bridge map: %s → %q: %w", from, r.BridgeMap[from], err)
		}
	}

	var d libvirtxml.Domain
	if err := d.Unmarshal(domainXML); err != nil {
		return "", fmt.Errorf("rewrite domain XML: parse: %w", err)
	}
	if d.Devices != nil {
		for i := range d.Devices.Graphics {
			setListen(&d.Devices.Graphics[i], listen)
		}
		for i := range d.Devices.Interfaces {
			src := d.Devices.Interfaces[i].Source
			if src == nil || src.Bridge == nil {
				continue
			}
			if to, ok := r.BridgeMap[src.Bridge.Bridge]; ok {
				src.Bridge.Bridge = to
			}
		}
	}
	out, err := d.Marshal()
	if err != nil {
		return "", fmt.Errorf("rewrite domain XML of %s: marshal: %w", d.Name, err)
	}
	if err := sameDomain(domainXML, out); err != nil {
		return "", fmt.Errorf("rewrite domain XML of %s: %w", d.Name, err)
	}
	return out, nil
}

func setListen(g *libvirtxml.DomainGraphic, listen string) {
	var attr *string
	var listeners []libvirtxml.DomainGraphicListener
	switch {
	case g.VNC != nil:
		attr, listeners = &g.VNC.Listen, g.VNC.Listeners
	case g.Spice != nil:
		attr, listeners = &g.Spice.Listen, g.Spice.Listeners
	case g.RDP != nil:
		attr, listeners = &g.RDP.Listen, g.RDP.Listeners
	default:
		return // sdl, desktop, egl-headless, dbus: nothing listens on the network
	}
	if *attr != "" {
		*attr = listen
	}
	for _, l := range listeners {
		if l.Address != nil && l.Address.Address != "" {
			l.Address.Address = listen
		}
	}
}

// checkListen accepts what libvirt does: an IP address or a host name.
func checkListen(s string) error {
	if net.ParseIP(s) != nil {
		return nil
	}
	if len(s) > 253 {
		return errors.New("is neither an IP address nor a host name")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return errors.New("is neither an IP address nor a host name")
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return errors.New("is neither an IP address nor a host name")
			}
		}
	}
	return nil
}

// checkBridge applies Linux's rules for interface names.
func checkBridge(s string) error {
	switch {
	case s == "":
		return errors.New("empty bridge name")
	case len(s) > 15:
		return errors.New("longer than 15 bytes, which Linux does not allow for an interface name")
	case s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n\r\x00"):
		return errors.New("not a valid interface name")
	}
	return nil
}

// sameDomain checks that before and after differ only where Rewrite means
// them to: the same elements and attributes (libvirtxml drops what it does
// not model, which would lose a device silently), and the same identity,
// size, disks and metadata.
func sameDomain(before, after string) error {
	s1, err := xmlShape(before)
	if err != nil {
		return fmt.Errorf("read original: %w", err)
	}
	s2, err := xmlShape(after)
	if err != nil {
		return fmt.Errorf("read rewritten: %w", err)
	}
	if lost := shapeMissing(s1, s2); len(lost) > 0 {
		return fmt.Errorf("%w: libvirtxml drops %s", ErrLossyRewrite, strings.Join(lost, ", "))
	}
	if extra := shapeMissing(s2, s1); len(extra) > 0 {
		return fmt.Errorf("%w: libvirtxml adds %s", ErrLossyRewrite, strings.Join(extra, ", "))
	}
	var a, b libvirtxml.Domain
	if err := a.Unmarshal(before); err != nil {
		return fmt.Errorf("read original: %w", err)
	}
	if err := b.Unmarshal(after); err != nil {
		return fmt.Errorf("read rewritten: %w", err)
	}
	for _, c := range []struct {
		what string
		x, y any
	}{
		{"name", a.Name, b.Name},
		{"uuid", a.UUID, b.UUID},
		{"memory", a.Memory, b.Memory},
		{"vcpu", a.VCPU, b.VCPU},
		{"metadata", a.Metadata, b.Metadata},
		{"disks", domainDisks(a), domainDisks(b)},
	} {
		if !reflect.DeepEqual(c.x, c.y) {
			return fmt.Errorf("%w: %s changed in the round trip", ErrLossyRewrite, c.what)
		}
	}
	return nil
}

func domainDisks(d libvirtxml.Domain) []libvirtxml.DomainDisk {
	if d.Devices == nil {
		return nil
	}
	return d.Devices.Disks
}

// xmlShape counts each element path and each attribute on it (namespace
// declarations aside), outside <metadata>, whose content libvirtxml keeps
// as raw XML.
func xmlShape(doc string) (map[string]int, error) {
	counts := map[string]int{}
	dec := xml.NewDecoder(strings.NewReader(doc))
	var path []string
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return counts, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			path = append(path, t.Name.Local)
			if len(path) > 2 && path[1] == "metadata" {
				continue
			}
			p := strings.Join(path, "/")
			counts["<"+p+">"]++
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || a.Name.Local == "xmlns" && a.Name.Space == "" {
					continue
				}
				counts[p+"@"+a.Name.Local]++
			}
		case xml.EndElement:
			path = path[:len(path)-1]
		}
	}
}

// shapeMissing names what a has more of than b, sorted.
func shapeMissing(a, b map[string]int) []string {
	var out []string
	for k, n := range a {
		if b[k] < n {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
