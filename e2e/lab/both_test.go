package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLabBothBMCs: a host with an IPMI and a Redfish BMC has one power
// supply. Off through Redfish kills it and ipmi_sim reads off; on through
// IPMI boots it and Redfish reads On.
func TestLabBothBMCs(t *testing.T) {
	skipUnlessLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	l := startLab(t, ctx, Config{Name: "chlabb", Dir: t.TempDir(), Hosts: 2,
		BMCTypes: []string{BMCBoth, BMCRedfish}})
	h, h2 := l.Hosts()[0], l.Hosts()[1]

	require.Len(t, h.BMCs, 2)
	assert.Equal(t, BMCBoth, h.BMCType())
	assert.Equal(t, h.BMCs[0], h.BMC, "the primary BMC is BMCs[0]")
	ipmi, rf := h.BMCs[0], h.BMCs[1]
	assert.Equal(t, BMCIPMI, ipmi.Type)
	assert.Equal(t, BMCRedfish, rf.Type)
	assert.Equal(t, ipmi.Netns, rf.Netns, "one BMC namespace per host")
	assert.Equal(t, "10.78.0.11", ipmi.Addr)
	assert.Equal(t, "10.78.0.111", rf.Addr)
	assert.Equal(t, "https://10.78.0.111:443", rf.Endpoint)
	assert.NotEmpty(t, rf.CAFile)
	assert.Equal(t, "host1", rf.SystemID)
	got, ok := h.BMCOf(BMCRedfish)
	require.True(t, ok)
	assert.Equal(t, rf, got)
	require.Len(t, h2.BMCs, 1, "a single-BMC host")
	assert.Equal(t, h2.BMC, h2.BMCs[0])
	assert.Equal(t, BMCRedfish, h2.BMCType())
	_, err := l.BMCPowerVia(ctx, h2, BMCIPMI)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `host2: no "ipmi" BMC`)

	// The Attach view (chime-lab show/down) carries both BMCs.
	att, err := Attach(l.Dir())
	require.NoError(t, err)
	ah, err := att.Host("host1")
	require.NoError(t, err)
	assert.Equal(t, h.BMCs, ah.BMCs)

	pw, err := os.ReadFile(ipmi.PasswordFile)
	require.NoError(t, err)
	password := strings.TrimSpace(string(pw))
	for _, p := range labProcs(l.Name()) {
		assert.NotContains(t, cmdline(p), password, "password on the command line of pid %d", p)
	}

	do := redfishDo(t, ctx, l, rf)
	sys := rf.Endpoint + "/redfish/v1/Systems/" + rf.SystemID
	redfishState := func() string {
		code, b := do("GET", sys, "")
		require.Equal(t, 200, code, string(b))
		var s struct{ PowerState string }
		require.NoError(t, json.Unmarshal(b, &s))
		return s.PowerState
	}
	out, err := ipmitool(ctx, l, h, "chassis", "power", "status")
	require.NoError(t, err, out)
	assert.Equal(t, "Chassis Power is on", out)
	assert.Equal(t, "On", redfishState())
	assert.Equal(t, "on", l.Status(ctx)[0].BMCPower)
	boot1, err := l.BootID(h)
	require.NoError(t, err)

	// Off through Redfish: the host is dead, and the IPMI BMC says so.
	pids := l.HostPIDs(h)
	require.NotEmpty(t, pids)
	code, b := do("POST", sys+"/Actions/ComputerSystem.Reset", `{"ResetType":"ForceOff"}`)
	require.Equal(t, 204, code, string(b))
	for _, p := range pids {
		assert.False(t, alive(p), "process %d survived Redfish ForceOff", p)
	}
	assert.Empty(t, l.HostPIDs(h))
	assert.False(t, l.HostPowered(h))
	ping, tcp := reachable(ctx, l, h)
	assert.False(t, ping || tcp, "powered-off host answers")
	out, err = ipmitool(ctx, l, h, "chassis", "power", "status")
	require.NoError(t, err, out)
	assert.Equal(t, "Chassis Power is off", out)
	on, err := l.BMCPowerVia(ctx, h, BMCIPMI)
	require.NoError(t, err)
	assert.False(t, on)
	assert.Equal(t, "Off", redfishState())
	assert.Equal(t, "off", l.Status(ctx)[0].BMCPower)

	// On through IPMI: the host boots, and the Redfish BMC says so.
	out, err = ipmitool(ctx, l, h, "chassis", "power", "on")
	require.NoError(t, err, out)
	require.NoError(t, l.WaitReady(ctx, h))
	boot2, err := l.BootID(h)
	require.NoError(t, err)
	assert.NotEqual(t, boot1, boot2, "a new boot")
	assert.Equal(t, "On", redfishState())
	on, err = l.BMCPowerVia(ctx, h, BMCRedfish)
	require.NoError(t, err)
	assert.True(t, on)

	// Blocking one BMC leaves the other answering; BlockBMC blocks both.
	// A blocked BMC only times out, so give those reads a short deadline.
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		t.Cleanup(cancel)
		return c
	}
	require.NoError(t, l.BlockBMCVia(ctx, h, BMCRedfish))
	_, err = l.BMCPowerVia(short(), h, BMCRedfish)
	require.Error(t, err, "blocked Redfish BMC answered")
	assert.NotContains(t, err.Error(), password)
	on, err = l.BMCPowerVia(ctx, h, BMCIPMI)
	require.NoError(t, err, "the IPMI BMC is not blocked")
	assert.True(t, on)
	assert.Contains(t, l.Status(short())[0].BMCPower, "error: BMCs disagree: ipmi on, redfish error")
	require.NoError(t, l.UnblockBMC(ctx, h))
	on, err = l.BMCPowerVia(ctx, h, BMCRedfish)
	require.NoError(t, err)
	assert.True(t, on)
	require.NoError(t, l.BlockBMC(ctx, h))
	_, err = l.BMCPowerVia(short(), h, BMCIPMI)
	assert.Error(t, err, "BlockBMC leaves the IPMI BMC answering")
	_, err = l.BMCPowerVia(short(), h, BMCRedfish)
	assert.Error(t, err, "BlockBMC leaves the Redfish BMC answering")
	require.NoError(t, l.UnblockBMC(ctx, h))
	assert.Equal(t, "on", l.Status(ctx)[0].BMCPower)

	var tab bytes.Buffer
	require.NoError(t, WriteStatus(&tab, l.Status(ctx)))
	assert.Contains(t, tab.String(), "ipmi 10.78.0.11:623 + redfish 10.78.0.111:443")
}
