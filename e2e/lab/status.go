package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chimestack/chime-fence/e2e/nsenter"
)

// BMCPower asks h's primary BMC (Host.BMC) over the lab network, from the
// controller namespace, whether the host is powered: ipmitool (lanplus,
// cipher suite 3) for IPMI, an HTTPS GET of the ComputerSystem for Redfish.
func (l *Lab) BMCPower(ctx context.Context, h Host) (on bool, err error) {
	return l.bmcPower(ctx, h, h.BMC)
}

// BMCPowerVia is BMCPower through h's BMC of type typ (BMCIPMI or
// BMCRedfish), for hosts with more than one.
func (l *Lab) BMCPowerVia(ctx context.Context, h Host, typ string) (on bool, err error) {
	b, ok := h.BMCOf(typ)
	if !ok {
		return false, fmt.Errorf("lab: %s: no %q BMC (it has %s)", h.Name, typ, h.BMCType())
	}
	return l.bmcPower(ctx, h, b)
}

func (l *Lab) bmcPower(ctx context.Context, h Host, b BMC) (on bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch b.Type {
	case BMCIPMI:
		out, err := l.Controller().Command(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2",
			"-H", b.Addr, "-p", strconv.Itoa(b.Port), "-U", b.User, "-f", b.PasswordFile,
			"chassis", "power", "status").CombinedOutput()
		s := strings.TrimSpace(string(out))
		switch {
		case err != nil:
			return false, fmt.Errorf("lab: %s: BMC %s:%d: ipmitool: %w: %s", h.Name, b.Addr, b.Port, err, s)
		case strings.HasSuffix(s, "is on"):
			return true, nil
		case strings.HasSuffix(s, "is off"):
			return false, nil
		}
		return false, fmt.Errorf("lab: %s: BMC %s:%d: unexpected answer %q", h.Name, b.Addr, b.Port, s)
	case BMCRedfish:
		return l.redfishPower(ctx, h, b)
	}
	return false, fmt.Errorf("lab: %s: unknown BMC type %q", h.Name, b.Type)
}

func (l *Lab) redfishPower(ctx context.Context, h Host, b BMC) (bool, error) {
	ca, err := os.ReadFile(b.CAFile)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC CA: %w", h.Name, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	pw, err := os.ReadFile(b.PasswordFile)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC password file: %w", h.Name, err)
	}
	ns := l.ctl.Netns
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := nsenter.Do(ns, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	defer tr.CloseIdleConnections()
	url := b.Endpoint + "/redfish/v1/Systems/" + b.SystemID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	req.SetBasicAuth(b.User, strings.TrimRight(string(pw), "\r\n"))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC %s: %w", h.Name, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("lab: %s: BMC %s: HTTP %d", h.Name, url, resp.StatusCode)
	}
	var sys struct{ PowerState string }
	if err := json.Unmarshal(body, &sys); err != nil {
		return false, fmt.Errorf("lab: %s: BMC %s: %w", h.Name, url, err)
	}
	switch sys.PowerState {
	case "On", "PoweringOff":
		return true, nil
	case "Off", "PoweringOn":
		return false, nil
	}
	return false, fmt.Errorf("lab: %s: BMC %s: PowerState %q", h.Name, url, sys.PowerState)
}

// HostStatus is one row of Status.
type HostStatus struct {
	Host Host
	// BMCPower is "on" or "off" as the BMC answered over the network, or
	// "error: ..." when it did not. A host with several BMCs is "on" or
	// "off" only when all of them agree.
	BMCPower string
	BootID   string // "" when off
	// VMs maps domain name to state; nil when libvirtd did not answer.
	VMs map[string]string
}

// Status queries every host's BMC and libvirtd.
func (l *Lab) Status(ctx context.Context) []HostStatus {
	out := make([]HostStatus, len(l.hosts))
	done := make(chan struct{}, len(l.hosts))
	for i, h := range l.hosts {
		go func() {
			defer func() { done <- struct{}{} }()
			st := HostStatus{Host: h.Host}
			st.BMCPower = l.bmcPowerAll(ctx, h.Host)
			st.BootID, _ = l.BootID(h.Host)
			if st.BootID != "" {
				vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				st.VMs, _ = l.Domains(vctx, h.Host)
				cancel()
			}
			out[i] = st
		}()
	}
	for range l.hosts {
		<-done
	}
	return out
}

// bmcPowerAll reads every BMC of h for Status.
func (l *Lab) bmcPowerAll(ctx context.Context, h Host) string {
	var each []string
	seen := map[string]bool{}
	for _, b := range h.AllBMCs() {
		v := "off"
		if on, err := l.bmcPower(ctx, h, b); err != nil {
			v = "error: " + err.Error()
		} else if on {
			v = "on"
		}
		seen[v] = true
		each = append(each, b.Type+" "+v)
	}
	switch {
	case len(each) == 0:
		return "error: no BMC"
	case len(seen) == 1:
		for v := range seen {
			return v
		}
	}
	return "error: BMCs disagree: " + strings.Join(each, ", ")
}

// WriteStatus prints sts as a table.
func WriteStatus(w io.Writer, sts []HostStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tMGMT ADDR\tBMC\tBMC POWER\tBOOT ID\tVMS")
	for _, s := range sts {
		boot := s.BootID
		if len(boot) > 8 {
			boot = boot[:8]
		}
		if boot == "" {
			boot = "-"
		}
		vms := "-"
		if s.VMs != nil {
			names := make([]string, 0, len(s.VMs))
			for n := range s.VMs {
				names = append(names, n)
			}
			sort.Strings(names)
			parts := make([]string, len(names))
			for i, n := range names {
				parts[i] = n + " (" + s.VMs[n] + ")"
			}
			vms = strings.Join(parts, ", ")
			if vms == "" {
				vms = "(none)"
			}
		}
		var bmcs []string
		for _, b := range s.Host.AllBMCs() {
			bmcs = append(bmcs, fmt.Sprintf("%s %s:%d", b.Type, b.Addr, b.Port))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Host.Name, s.Host.MgmtAddr,
			strings.Join(bmcs, " + "), s.BMCPower, boot, vms)
	}
	return tw.Flush()
}
