package readiness

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/configs"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/power"
)

type checkFunc func(ctx context.Context) (power.State, error)

func (f checkFunc) Check(ctx context.Context) (power.State, error) { return f(ctx) }

type listFunc func(ctx context.Context, withXML bool) ([]hypervisor.Domain, error)

func (f listFunc) Domains(ctx context.Context, withXML bool) ([]hypervisor.Domain, error) {
	return f(ctx, withXML)
}

func answers(st power.State) Checker {
	return checkFunc(func(context.Context) (power.State, error) { return st, nil })
}
func fails(err error) Checker {
	return checkFunc(func(context.Context) (power.State, error) { return power.Unknown, err })
}

// fakeNow advances 5ms per call, so latencies are deterministic.
func fakeNow() func() time.Time {
	var mu sync.Mutex
	t := time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(5 * time.Millisecond)
		return t
	}
}

func TestReadinessLevels(t *testing.T) {
	authErr := power.Errorf(power.KindAuth, "n1", "ipmi: open session", "rejected")
	unreach := power.Errorf(power.KindUnreachable, "n1", "redfish: connect", "connection refused")
	for _, tc := range []struct {
		name    string
		levels  []Level
		ready   bool
		usable  []bool
		summary string
	}{
		{"one good level", []Level{{Type: configs.LevelIPMI, Checker: answers(power.On)}}, true, []bool{true},
			"ready: 1 of 1 fence level(s) usable (ipmi)"},
		{"off host still fenceable", []Level{{Type: configs.LevelIPMI, Checker: answers(power.Off)}}, true, []bool{true},
			"ready: 1 of 1 fence level(s) usable (ipmi)"},
		{"first fails, second works", []Level{{Type: configs.LevelIPMI, Checker: fails(authErr)}, {Type: configs.LevelRedfish, Checker: answers(power.On)}}, true, []bool{false, true},
			"ready: 1 of 2 fence level(s) usable (redfish)"},
		{"all fail", []Level{{Type: configs.LevelIPMI, Checker: fails(authErr)}, {Type: configs.LevelRedfish, Checker: fails(unreach)}}, false, []bool{false, false},
			"not ready: none of 2 fence level(s) is usable (ipmi: host n1: ipmi: open session: bmc-auth-failed: rejected; redfish: host n1: redfish: connect: bmc-unreachable: connection refused)"},
		{"unknown power is not usable", []Level{{Type: configs.LevelIPMI, Checker: answers(power.Unknown)}}, false, []bool{false},
			"not ready: none of 1 fence level(s) is usable (ipmi: power state not readable)"},
		{"level could not be built", []Level{{Type: configs.LevelIPMI, SetupErr: errors.New("bmc ipmi password: file /x: no such file")}}, false, []bool{false},
			"not ready: none of 1 fence level(s) is usable (ipmi: bmc ipmi password: file /x: no such file)"},
		{"no levels", nil, false, nil, "not ready: the host's policy has no fence levels"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Run(context.Background(), Target{Host: "n1", Levels: tc.levels}, fakeNow())
			assert.Equal(t, tc.ready, r.Ready)
			assert.Equal(t, tc.summary, r.Summary)
			var usable []bool
			for i, l := range r.Levels {
				usable = append(usable, l.Usable)
				assert.Equal(t, i+1, l.Index)
			}
			assert.Equal(t, tc.usable, usable)
		})
	}
}

func TestReadinessKindAndLatency(t *testing.T) {
	r := Run(context.Background(), Target{Host: "n1", Levels: []Level{
		{Type: configs.LevelIPMI, Checker: fails(power.Errorf(power.KindAuth, "n1", "s", "x"))},
	}}, fakeNow())
	assert.Equal(t, "bmc-auth-failed", r.Levels[0].Kind)
	assert.Equal(t, 5*time.Millisecond, r.Levels[0].Latency)
	assert.Equal(t, "5ms", r.Levels[0].LatencyText)
}

func TestReadinessCheckHasItsOwnDeadline(t *testing.T) {
	hang := checkFunc(func(ctx context.Context) (power.State, error) {
		<-ctx.Done()
		return power.Unknown, power.Errorf(power.KindTimeout, "n1", "ipmi: chassis status", "%v", ctx.Err())
	})
	start := time.Now()
	r := Run(context.Background(), Target{Host: "n1", Timeout: 50 * time.Millisecond, Levels: []Level{
		{Type: configs.LevelIPMI, Checker: hang}, {Type: configs.LevelRedfish, Checker: answers(power.On)},
	}}, time.Now)
	assert.Less(t, time.Since(start), 2*time.Second)
	assert.False(t, r.Levels[0].Usable)
	assert.Equal(t, "timeout", r.Levels[0].Kind)
	assert.True(t, r.Ready)
}

func TestReadinessDomains(t *testing.T) {
	lister := listFunc(func(_ context.Context, withXML bool) ([]hypervisor.Domain, error) {
		require.True(t, withXML, "classification needs the XML")
		return []hypervisor.Domain{
			{Name: "web", UUID: "u1", State: hypervisor.StateRunning, XML: xmlFor("web", "11111111-1111-1111-1111-111111111111", "/shared/web.qcow2")},
			{Name: "db", UUID: "u2", State: hypervisor.StateShutoff, XML: xmlFor("db", "22222222-2222-2222-2222-222222222222", "/var/lib/libvirt/images/db.qcow2")},
			{Name: "broken", UUID: "u3", XML: "<domain"},
		}, nil
	})
	r := Run(context.Background(), Target{
		Host: "n1", Levels: []Level{{Type: configs.LevelIPMI, Checker: answers(power.On)}},
		Hypervisor: lister, Endpoint: "10.0.0.1:16509",
		Storage: evacuator.StorageRules{SharedPaths: []string{"/shared"}},
	}, fakeNow())
	require.NotNil(t, r.Libvirt)
	assert.True(t, r.Libvirt.Reachable)
	require.Len(t, r.Domains, 3)
	byName := map[string]DomainReport{}
	for _, d := range r.Domains {
		byName[d.Name] = d
	}
	assert.True(t, byName["web"].Evacuable)
	assert.Equal(t, hypervisor.StateRunning, byName["web"].State)
	assert.False(t, byName["db"].Evacuable)
	assert.Contains(t, byName["db"].Reason, "disk vda is on local storage")
	assert.False(t, byName["broken"].Evacuable)
	assert.Contains(t, byName["broken"].Error, "parse domain XML")
	assert.Equal(t, "ready: 1 of 1 fence level(s) usable (ipmi); 1 of 3 domain(s) evacuable", r.Summary)
}

// TestReadinessNamesAutostart: a VM with libvirt autostart on is not
// evacuable, and the summary (test-node, the daemon's fence-readiness
// record) names it.
func TestReadinessNamesAutostart(t *testing.T) {
	lister := listFunc(func(_ context.Context, _ bool) ([]hypervisor.Domain, error) {
		return []hypervisor.Domain{
			{Name: "web", UUID: "u1", State: hypervisor.StateRunning, Autostart: true, XML: xmlFor("web", "11111111-1111-1111-1111-111111111111", "/shared/web.qcow2")},
			{Name: "app", UUID: "u2", State: hypervisor.StateRunning, XML: xmlFor("app", "22222222-2222-2222-2222-222222222222", "/shared/app.qcow2")},
		}, nil
	})
	r := Run(context.Background(), Target{
		Host: "n1", Levels: []Level{{Type: configs.LevelIPMI, Checker: answers(power.On)}},
		Hypervisor: lister, Storage: evacuator.StorageRules{SharedPaths: []string{"/shared"}},
	}, fakeNow())
	require.Len(t, r.Domains, 2)
	assert.Equal(t, "app", r.Domains[0].Name)
	assert.True(t, r.Domains[0].Evacuable)
	assert.False(t, r.Domains[1].Evacuable)
	assert.True(t, r.Domains[1].Autostart)
	assert.Equal(t, evacuator.AutostartReason, r.Domains[1].Reason)
	assert.Equal(t, "ready: 1 of 1 fence level(s) usable (ipmi); 1 of 2 domain(s) evacuable; "+
		"autostart on: would start again on its old host: web (chime-agent turns it off)", r.Summary)
}

func TestReadinessLibvirtDown(t *testing.T) {
	lister := listFunc(func(context.Context, bool) ([]hypervisor.Domain, error) {
		return nil, &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "n1", Step: "libvirt: connect", Err: errors.New("no route to host")}
	})
	r := Run(context.Background(), Target{Host: "n1", Levels: []Level{{Type: configs.LevelIPMI, Checker: answers(power.Off)}}, Hypervisor: lister}, fakeNow())
	assert.False(t, r.Libvirt.Reachable)
	assert.Contains(t, r.Libvirt.Error, "no route to host")
	assert.True(t, r.Ready, "a dead host's libvirt is down; fencing is what matters")
	assert.Equal(t, "ready: 1 of 1 fence level(s) usable (ipmi); libvirt unreachable, domains unknown", r.Summary)
}

func xmlFor(name, uuid, path string) string {
	return strings.NewReplacer("NAME", name, "UUID", uuid, "PATH", path).Replace(
		`<domain type='qemu'><name>NAME</name><uuid>UUID</uuid><memory unit='MiB'>64</memory><vcpu>1</vcpu><devices><disk type='file' device='disk'><source file='PATH'/><target dev='vda'/></disk></devices></domain>`)
}
