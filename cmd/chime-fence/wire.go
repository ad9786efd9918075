package main

import (
	"fmt"
	"net"
	"strconv"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/drivers/agent"
	"github.com/chimestack/chime-fence/drivers/ipmi"
	"github.com/chimestack/chime-fence/drivers/libvirt"
	"github.com/chimestack/chime-fence/drivers/redfish"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/fencer"
	"github.com/chimestack/chime-fence/readiness"
)

// The drivers must satisfy the interfaces their consumers own.
var (
	_ fencer.PowerController = (*ipmi.Client)(nil)
	_ fencer.PowerController = (*redfish.Client)(nil)
	_ evacuator.Hypervisor   = (*libvirt.Client)(nil)
	_ readiness.Checker      = (*agent.Client)(nil)
)

// powerController builds the BMC driver for one of a host's BMCs, reading
// its password now.
func powerController(h *configs.Host, b configs.BMC, log zerolog.Logger) (fencer.PowerController, error) {
	pw, err := b.Password().Read()
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	switch b.Type {
	case configs.BMCIPMI:
		return ipmi.New(ipmi.Config{
			Host: h.Name, Addr: b.Address, Port: b.Port,
			Username: b.Username, Password: pw, CipherSuites: b.CipherSuites,
		}, log)
	case configs.BMCRedfish:
		return redfish.New(redfish.Config{
			Host: h.Name, Endpoint: b.Scheme + "://" + net.JoinHostPort(b.Address, strconv.Itoa(b.Port)),
			Username: b.Username, Password: pw, SystemID: b.SystemID,
			Auth: b.Auth, Insecure: b.Insecure, CAFile: b.CAFile,
		}, log)
	}
	return nil, fmt.Errorf("host %s: unknown BMC type %q", h.Name, b.Type)
}

func agentClient(cfg *configs.Config, h *configs.Host) (*agent.Client, error) {
	ring, err := api.ReadAgentSecrets(cfg.Controller)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", h.Name, err)
	}
	return agent.New(agent.Config{Host: h.Name, URL: h.Agent.URL, Credentials: agent.Credentials(ring, h.Name)})
}

func libvirtClient(h *configs.Host, log zerolog.Logger) (*libvirt.Client, error) {
	return libvirt.New(libvirt.Config{Host: h.Name, Address: h.Libvirt.Address, URI: h.Libvirt.URI}, log)
}

// readinessTarget wires one host's fence levels and hypervisor for a dry
// run. A level whose driver cannot be built is still listed, with the
// reason, so the operator sees every configured level.
func readinessTarget(cfg *configs.Config, h *configs.Host, log zerolog.Logger) (readiness.Target, func()) {
	t := readiness.Target{
		Host:     h.Name,
		Storage:  evacuator.StorageRules{SharedPaths: cfg.Storage.SharedPaths, RBDShared: cfg.Storage.RBDShared},
		Endpoint: h.Libvirt.Address,
	}
	for _, l := range h.Effective.Levels {
		lv := readiness.Level{Type: l.Type}
		if l.Type == configs.LevelAgentDrain {
			lv.Endpoint = h.Agent.URL
			c, err := agentClient(cfg, h)
			if err != nil {
				lv.SetupErr = err
			} else {
				lv.Checker = c
			}
		} else {
			b, _ := h.BMC(l.Type.BMCType()) // presence checked by configs
			lv.Endpoint = net.JoinHostPort(b.Address, strconv.Itoa(b.Port))
			pc, err := powerController(h, b, log)
			if err != nil {
				lv.SetupErr = err
			} else {
				lv.Checker = pc
			}
		}
		t.Levels = append(t.Levels, lv)
	}
	closeFn := func() {}
	if lc, err := libvirtClient(h, log); err == nil {
		t.Hypervisor = lc
		closeFn = func() { _ = lc.Close() }
	}
	return t, closeFn
}
