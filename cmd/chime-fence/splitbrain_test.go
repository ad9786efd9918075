package main

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/alert"
	"github.com/chimestack/chime-fence/daemon"
	"github.com/chimestack/chime-fence/evacuator"
	"github.com/chimestack/chime-fence/hypervisor"
	"github.com/chimestack/chime-fence/store"
)

// destroyHV is an evacuator.Hypervisor whose Destroy is recorded; any
// other call panics (the embedded nil interface).
type destroyHV struct {
	evacuator.Hypervisor
	host string
	mu   sync.Mutex
	got  []string
	err  error
}

func (h *destroyHV) Destroy(_ context.Context, uuid string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, h.host+" "+uuid)
	return h.err
}

func (h *destroyHV) calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.got...)
}

type sbRig struct {
	hvs    map[string]*destroyHV
	mu     sync.Mutex
	events []alert.Event
	recs   []store.Record
	s      *staleCopies
}

func newSBRig() *sbRig {
	r := &sbRig{hvs: map[string]*destroyHV{"h1": {host: "h1"}, "h2": {host: "h2"}}}
	r.s = newStaleCopies(func(h string) (evacuator.Hypervisor, error) {
		if hv, ok := r.hvs[h]; ok {
			return hv, nil
		}
		return nil, errors.New("no such host")
	}, func(ev alert.Event) { r.mu.Lock(); r.events = append(r.events, ev); r.mu.Unlock() },
		func(rec store.Record) { r.mu.Lock(); r.recs = append(r.recs, rec); r.mu.Unlock() }, "c1", zerolog.Nop())
	r.s.now = func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }
	return r
}

const sbUUID = "6f1c2a9e-0000-4000-8000-000000000001"

// TestStaleCopyDestroyedOnTheOldHostAndAlerted: a VM active on its old
// host and on its home: one critical split_brain.detected naming both
// hosts, the old host's copy destroyed, the home's never touched, a
// history record.
func TestStaleCopyDestroyedOnTheOldHostAndAlerted(t *testing.T) {
	r := newSBRig()
	r.s.seen(daemon.StaleCopy{UUID: sbUUID, Name: "web", Host: "h1", Home: "h2", HomeActive: true})
	r.s.wait()
	assert.Equal(t, []string{"h1 " + sbUUID}, r.hvs["h1"].calls())
	assert.Empty(t, r.hvs["h2"].calls(), "the copy on the VM's home is never destroyed")
	require.Len(t, r.events, 1)
	ev := r.events[0]
	assert.Equal(t, alert.SplitBrainDetected, ev.Type)
	assert.Equal(t, alert.Critical, ev.Severity)
	assert.Equal(t, "h1", ev.Host)
	assert.Equal(t, map[string]any{"uuid": sbUUID, "name": "web", "stale_host": "h1", "home": "h2"}, ev.Details)
	assert.Contains(t, ev.Summary, "active on h1, the host it was evacuated from, and on its home h2")
	require.Len(t, r.recs, 1)
	assert.Equal(t, SplitBrainKind, r.recs[0].Kind)
	assert.Equal(t, "destroyed", r.recs[0].To)
	assert.Equal(t, "h1", r.recs[0].Host)
}

// TestStaleCopyNotRunningAtHomeIsDestroyedWithoutAlert: the home does not
// run it: not two hosts; destroyed all the same (it is evicted there).
func TestStaleCopyNotRunningAtHomeIsDestroyedWithoutAlert(t *testing.T) {
	r := newSBRig()
	r.s.seen(daemon.StaleCopy{UUID: sbUUID, Name: "web", Host: "h1", Home: "h2"})
	r.s.wait()
	assert.Equal(t, []string{"h1 " + sbUUID}, r.hvs["h1"].calls())
	assert.Empty(t, r.events)
}

// TestStaleCopyFailedDestroyIsRetriedAlertedOnce: libvirt on the old host
// fails: every later sighting retries; the alert is sent once.
func TestStaleCopyFailedDestroyIsRetriedAlertedOnce(t *testing.T) {
	r := newSBRig()
	r.hvs["h1"].err = &hypervisor.Error{Kind: hypervisor.KindUnreachable, Host: "h1", Step: "destroy"}
	sc := daemon.StaleCopy{UUID: sbUUID, Name: "web", Host: "h1", Home: "h2", HomeActive: true}
	for range 3 {
		r.s.seen(sc)
		r.s.wait()
	}
	assert.Len(t, r.hvs["h1"].calls(), 3, "retried at every sighting")
	assert.Len(t, r.events, 1, "alerted once")
	assert.Empty(t, r.recs, "nothing destroyed, nothing recorded")
	r.hvs["h1"].err = &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: "h1", Step: "destroy", Err: errors.New("domain is not running")}
	r.s.seen(sc)
	r.s.wait()
	require.Len(t, r.recs, 1, "already stopped (by the agent's eviction path) counts as done")
	assert.Equal(t, "already-stopped", r.recs[0].To)
}

func TestReportedAutostart(t *testing.T) {
	recs := []store.DomainRecord{{UUID: "a", Autostart: true}, {UUID: "b"}}
	assert.Equal(t, recs, reportedAutostart(recs, nil, false), "no heartbeat listing: the capture's")
	assert.Equal(t, []store.DomainRecord{{UUID: "a"}, {UUID: "b", Autostart: true}},
		reportedAutostart(recs, map[string]bool{"b": true}, true), "the heartbeat's wins")
	assert.True(t, recs[0].Autostart, "input untouched")
}

func TestEvacuationAlertType(t *testing.T) {
	assert.Equal(t, alert.SplitBrainRefused, evacuationAlertType(evacuator.AlertSplitBrain), "the guard's refusal has a declared type")
	assert.Equal(t, evacuator.AlertUnsafe, evacuationAlertType(evacuator.AlertUnsafe))
}

// TestDoubleRunAlertedNotDestroyed: a VM running on two hosts neither of
// which it was evacuated from: alerted once it lasted doubleConfirm (a
// live migration's skewed snapshots do not), both hosts named, either
// order one incident; again only after doubleRealert; nothing destroyed.
func TestDoubleRunAlertedNotDestroyed(t *testing.T) {
	r := newSBRig()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	r.s.now = func() time.Time { return now }
	seen := func(host, other string) {
		r.s.double(daemon.DoubleRun{UUID: sbUUID, Name: "web", Host: host, Home: other})
	}

	seen("h2", "h1")
	now = now.Add(time.Second)
	seen("h1", "h2")
	assert.Empty(t, r.events, "a migration's two ends can both read running for a moment")
	now = now.Add(doubleConfirm + time.Second) // a gap: starts over
	seen("h1", "h2")
	assert.Empty(t, r.events)
	for range 4 {
		now = now.Add(doubleConfirm / 3)
		seen("h2", "h1")
	}
	require.Len(t, r.events, 1, "lasted: one incident")
	assert.Equal(t, alert.SplitBrainDetected, r.events[0].Type)
	assert.Equal(t, alert.Critical, r.events[0].Severity)
	assert.Equal(t, []string{"h1", "h2"}, r.events[0].Details["hosts"])
	assert.Contains(t, r.events[0].Summary, "destroys neither")
	for now2 := now.Add(doubleRealert); now.Before(now2); {
		now = now.Add(doubleConfirm / 3)
		seen("h1", "h2")
	}
	assert.Len(t, r.events, 2, "alerted again while it goes on")
	r.s.wait()
	assert.Empty(t, r.hvs["h1"].calls())
	assert.Empty(t, r.hvs["h2"].calls(), "nothing destroyed")
}
