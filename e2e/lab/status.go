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

// BMCPower asks h's BMC over the lab network, from the controller
// namespace, whether the host is powered: ipmitool (lanplus, cipher suite
// 3) for IPMI, an HTTPS GET of the ComputerSystem for Redfish.
func (l *Lab) BMCPower(ctx context.Context, h Host) (on bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch h.BMC.Type {
	case BMCIPMI:
		out, err := l.Controller().Command(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "2",
			"-H", h.BMC.Addr, "-p", strconv.Itoa(h.BMC.Port), "-U", h.BMC.User, "-f", h.BMC.PasswordFile,
			"chassis", "power", "status").CombinedOutput()
		s := strings.TrimSpace(string(out))
		switch {
		case err != nil:
			return false, fmt.Errorf("lab: %s: BMC %s:%d: ipmitool: %w: %s", h.Name, h.BMC.Addr, h.BMC.Port, err, s)
		case strings.HasSuffix(s, "is on"):
			return true, nil
		case strings.HasSuffix(s, "is off"):
			return false, nil
		}
		return false, fmt.Errorf("lab: %s: BMC %s:%d: unexpected answer %q", h.Name, h.BMC.Addr, h.BMC.Port, s)
	case BMCRedfish:
		return l.redfishPower(ctx, h)
	}
	return false, fmt.Errorf("lab: %s: unknown BMC type %q", h.Name, h.BMC.Type)
}

func (l *Lab) redfishPower(ctx context.Context, h Host) (bool, error) {
	ca, err := os.ReadFile(h.BMC.CAFile)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC CA: %w", h.Name, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	pw, err := os.ReadFile(h.BMC.PasswordFile)
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
	url := h.BMC.Endpoint + "/redfish/v1/Systems/" + h.BMC.SystemID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC: %w", h.Name, err)
	}
	req.SetBasicAuth(h.BMC.User, strings.TrimRight(string(pw), "\r\n"))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false, fmt.Errorf("lab: %s: BMC %s: %w", h.Name, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("lab: %s: BMC %s: HTTP %d", h.Name, url, resp.StatusCode)
	}
	var sys struct{ PowerState string }
	if err := json.Unmarshal(b, &sys); err != nil {
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
	// "error: ..." when it did not.
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
			if on, err := l.BMCPower(ctx, h.Host); err != nil {
				st.BMCPower = "error: " + err.Error()
			} else if on {
				st.BMCPower = "on"
			} else {
				st.BMCPower = "off"
			}
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
		fmt.Fprintf(tw, "%s\t%s\t%s %s:%d\t%s\t%s\t%s\n", s.Host.Name, s.Host.MgmtAddr,
			s.Host.BMC.Type, s.Host.BMC.Addr, s.Host.BMC.Port, s.BMCPower, boot, vms)
	}
	return tw.Flush()
}
