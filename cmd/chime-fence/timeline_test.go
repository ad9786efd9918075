package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/api"
	"github.com/chimestack/chime-fence/detector"
	"github.com/chimestack/chime-fence/store"
)

var tlZero = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func tlAt(ms int) time.Time { return tlZero.Add(time.Duration(ms) * time.Millisecond) }

func tlEv(s string, a ...any) []byte { return []byte(fmt.Sprintf(s, a...)) }

// tlPowerLoss is the history of a host that lost power, as the daemon
// records it (evidence abridged).
func tlPowerLoss() []store.Record {
	hb, bmc := tlAt(-113).Format(time.RFC3339Nano), tlAt(500).Format(time.RFC3339Nano)
	silent := tlAt(487).Format(time.RFC3339Nano)
	return []store.Record{
		{At: tlAt(495), Host: "host1", Kind: "monitor", From: "normal", To: "suspect", Reason: "no heartbeat for 608ms (window 600ms)",
			Evidence: tlEv(`{"last_heartbeat":%q,"silent_since":%q,"monitor":"suspect","verdict":"suspect"}`, hb, silent)},
		{At: tlAt(705), Host: "host1", Kind: "monitor", From: "suspect", To: "unreachable", Reason: "host answered no probe",
			Evidence: tlEv(`{"last_heartbeat":%q,"silent_since":%q,"bmc":{"at":%q,"reachable":true,"power":"off"}}`, hb, silent, bmc)},
		{At: tlAt(705), Host: "host1", Kind: "verdict", From: "suspect", To: "host-down", Reason: "BMC reported power off 205ms ago",
			Evidence: tlEv(`{"last_heartbeat":%q,"silent_since":%q,"bmc":{"at":%q,"reachable":true,"power":"off"}}`, hb, silent, bmc)},
		{At: tlAt(735), Host: "host1", Kind: "fence", From: "fencing", To: "verified", Reason: "host1 fenced: ipmi verified power off in 29ms",
			Evidence: tlEv(`[{"level":"ipmi","try":1,"verified":true}]`)},
		{At: tlAt(1449), Host: "host1", Kind: "evacuation", To: "partial", Reason: "evacuation of host1 partial: 3 running elsewhere\nscratch: local",
			Evidence: tlEv(`{"task_id":"t","state":"partial"}`)},
		// After power-on: heartbeats again, no silence, so no heartbeat line.
		{At: tlAt(12000), Host: "host1", Kind: "reboot", From: "b1", To: "b2", Reason: "boot id changed",
			Evidence: tlEv(`{"last_heartbeat":%q,"monitor":"error"}`, tlAt(12000).Format(time.RFC3339Nano))},
	}
}

func TestTimelineRowsAddEvidenceMomentsOnceInOrder(t *testing.T) {
	rows := timelineRows(tlPowerLoss(), time.Time{})
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%d %s %s", r.At.Sub(tlZero).Milliseconds(), r.What, r.Text))
	}
	assert.Equal(t, []string{
		"-113 heartbeat last heartbeat before the silence",
		"495 monitor normal → suspect: no heartbeat for 608ms (window 600ms)",
		"500 bmc BMC says power off",
		"705 monitor suspect → unreachable: host answered no probe",
		"705 verdict suspect → host-down: BMC reported power off 205ms ago",
		"735 fence fencing → verified: host1 fenced: ipmi verified power off in 29ms",
		"1449 evacuation evacuation of host1 partial: 3 running elsewhere scratch: local",
		"12000 reboot b1 → b2: boot id changed",
	}, got)
}

func TestTimelineBMCFailures(t *testing.T) {
	recs := []store.Record{
		{At: tlAt(10), Host: "h", Kind: "verdict", To: "unknown", Evidence: tlEv(`{"bmc":{"at":%q,"reachable":true,"power":"unknown","error":"auth: password rejected"}}`, tlAt(5).Format(time.RFC3339Nano))},
		{At: tlAt(20), Host: "h", Kind: "verdict", To: "unknown", Evidence: tlEv(`{"bmc":{"at":%q,"reachable":false,"power":"unknown"}}`, tlAt(15).Format(time.RFC3339Nano))},
		{At: tlAt(30), Host: "h", Kind: "storm", To: "paused", Evidence: tlEv(`not json`)},
	}
	rows := timelineRows(recs, time.Time{})
	require.Len(t, rows, 5)
	assert.Equal(t, "BMC read failed: auth: password rejected", rows[0].Text)
	assert.Equal(t, "BMC unreachable", rows[2].Text)
	assert.Equal(t, "paused", rows[4].Text, "unreadable evidence is ignored, the record stays")
}

func TestTimelineWindowShowsWhatItsRecordsReveal(t *testing.T) {
	recs := tlPowerLoss()
	// From 600 ms: the heartbeat moment (-113) was first named by the
	// record at 495, before the window; the BMC reading (500) by the
	// record at 705, inside it.
	rows := timelineRows(recs, tlAt(600))
	var got []string
	for _, r := range rows {
		got = append(got, fmt.Sprintf("%d %s", r.At.Sub(tlZero).Milliseconds(), r.What))
	}
	assert.Equal(t, []string{"500 bmc", "705 monitor", "705 verdict", "735 fence", "1449 evacuation", "12000 reboot"}, got)

	rows = timelineRows(recs, tlAt(495))
	assert.Equal(t, "heartbeat", rows[0].What, "the record naming it is in the window")
	assert.Empty(t, timelineRows(recs, tlAt(12001)))
}

func TestRecordText(t *testing.T) {
	for _, tc := range []struct {
		r    store.Record
		want string
	}{
		{store.Record{From: "normal", To: "suspect", Reason: "no heartbeat"}, "normal → suspect: no heartbeat"},
		{store.Record{To: "partial", Reason: "evacuation of h partial: 3 running"}, "evacuation of h partial: 3 running"},
		{store.Record{To: "u-1", Reason: "agent destroyed domain web1 (u-1)"}, "agent destroyed domain web1 (u-1)"},
		{store.Record{From: "b1", To: "b2", Reason: "boot id changed from b1 to b2"}, "boot id changed from b1 to b2"},
		{store.Record{From: "enabled", To: "drained", Reason: "fenced: drained"}, "enabled → drained: fenced: drained"},
		{store.Record{From: "a", To: "b"}, "a → b"},
		{store.Record{To: "ready", Reason: "ready:\n1 of 1"}, "ready: 1 of 1"},
	} {
		assert.Equal(t, tc.want, recordText(tc.r))
	}
}

func TestTimelineOffsetFormat(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                         "+0.000s",
		1234 * time.Millisecond:   "+1.234s",
		-50 * time.Millisecond:    "-0.050s",
		72*time.Second + 5*1e6:    "+72.005s",
		1500 * time.Microsecond:   "+0.002s",
		-1499 * time.Microsecond:  "-0.001s",
		3*time.Minute + 999*1e6:   "+180.999s",
		9*time.Second + 999_600e3: "+10.000s",
		-(9*time.Second + 999e6):  "-9.999s",
		500 * time.Microsecond:    "+0.001s",
	} {
		assert.Equal(t, want, timelineOffset(d), "%v", d)
	}
}

func TestPrintTimelineOffsetsFromZeroOrFirstRow(t *testing.T) {
	var b bytes.Buffer
	printTimeline(&b, tlPowerLoss(), tlZero)
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	require.Len(t, lines, 8)
	assert.Equal(t, "  -0.113s  host1  heartbeat  last heartbeat before the silence", lines[0])
	assert.Equal(t, "  +0.735s  host1  fence      fencing → verified: host1 fenced: ipmi verified power off in 29ms", lines[5])
	assert.Equal(t, " +12.000s  host1  reboot     b1 → b2: boot id changed", lines[7])

	b.Reset()
	printTimeline(&b, tlPowerLoss(), time.Time{})
	assert.True(t, strings.HasPrefix(b.String(), "  +0.000s  host1  heartbeat"), b.String())

	b.Reset()
	printTimeline(&b, nil, tlZero)
	assert.Empty(t, b.String())
}

func TestParseSince(t *testing.T) {
	now := tlZero
	got, err := parseSince("2026-03-01T11:59:58.250+00:00", now)
	require.NoError(t, err)
	assert.True(t, got.Equal(tlAt(-1750)), got)
	got, err = parseSince("10m", now)
	require.NoError(t, err)
	assert.True(t, got.Equal(now.Add(-10*time.Minute)))
	for _, bad := range []string{"yesterday", "2026-03-01 12:00", "-5m", "12:00"} {
		_, err := parseSince(bad, now)
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), fmt.Sprintf("--since %q", bad))
	}
}

func TestRecordsSinceKeepsAtOrAfter(t *testing.T) {
	recs := tlPowerLoss()
	assert.Len(t, recordsSince(recs, time.Time{}), len(recs))
	kept := recordsSince(recs, tlAt(705))
	require.Len(t, kept, 5)
	assert.Equal(t, "unreachable", kept[0].To)
	assert.Equal(t, "suspect", recs[0].To, "the input is not modified")
	assert.Empty(t, recordsSince(recs, tlAt(20000)))
}

func TestHistoryFlagErrors(t *testing.T) {
	file := daemonConfig(t, t.TempDir(), freePort(t))
	code, _, errOut := runCLI("history", "-c", file, "-o", "yaml")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `--output "yaml": must be text, json or timeline`)
	code, _, errOut = runCLI("history", "-c", file, "--since", "last tuesday")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, `--since "last tuesday"`)
}

// TestHistoryTimelineFromDaemon: a real daemon's records of an agent that
// stopped, as a timeline from a chosen moment.
func TestHistoryTimelineFromDaemon(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	file := daemonConfig(t, dir, port)
	c := &api.Client{Base: fmt.Sprintf("http://127.0.0.1:%d", port), Token: "api.token-secret-0123456789abcdef"}
	startDaemon(t, file, c)

	others := beater(t, c.Base, "h1", "h3") // one silent host of three: no storm
	defer others()
	stop := beater(t, c.Base, "h2")
	require.Eventually(t, func() bool { v, _ := hostStatus(t, c, "h2"); return v == detector.Healthy },
		5*time.Second, 20*time.Millisecond)
	// The detector's recorder writes history just after the status
	// changes: wait for the record, so the healthy records are strictly
	// before the mark (under load the mark came first).
	require.Eventually(t, func() bool {
		recs, err := c.History(context.Background(), store.Query{Host: "h2"})
		return err == nil && slices.ContainsFunc(recs, func(r store.Record) bool { return r.To == "normal" })
	}, 5*time.Second, 20*time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	mark := time.Now()
	stop()
	require.Eventually(t, func() bool { v, _ := hostStatus(t, c, "h2"); return v == detector.AgentDown },
		5*time.Second, 20*time.Millisecond)
	// The status shows a verdict a moment before the recorder has written
	// it (the detector records asynchronously): wait for the history.
	var all []store.Record
	require.Eventually(t, func() bool {
		recs, err := c.History(context.Background(), store.Query{Host: "h2"})
		all = recs
		return err == nil && len(recs) > 0 && recs[len(recs)-1].To == detector.AgentDown.String()
	}, 5*time.Second, 20*time.Millisecond)
	var before int
	for _, r := range all {
		if r.At.Before(mark) {
			before++
		}
	}
	require.NotZero(t, before, "records before the mark exist, so the filter is tested")

	code, out, errOut := runCLI("history", "h2", "-c", file, "-o", "timeline", "--since", mark.Format(time.RFC3339Nano))
	require.Equal(t, exitOK, code, errOut)
	assert.NotContains(t, out, "unknown → normal", "records before --since are left out")
	line := regexp.MustCompile(`(?m)^ +([+-]\d+\.\d{3})s  h2 +(\S+) +(.*)$`)
	ms := line.FindAllStringSubmatch(out, -1)
	require.NotEmpty(t, ms, out)
	assert.Len(t, ms, strings.Count(out, "\n"), "every line is a timeline row:\n%s", out)
	whats := map[string]string{}
	for _, m := range ms {
		whats[m[2]] = m[1]
		if m[2] != "heartbeat" { // an evidence moment may precede --since
			assert.Regexp(t, `^[+]`, m[1], "records at or after --since have non-negative offsets: %s", m[0])
		}
	}
	assert.Contains(t, out, "normal → suspect")
	assert.Contains(t, out, "suspect → agent-down")
	_, hasHB := whats["heartbeat"]
	assert.True(t, hasHB, "the last heartbeat before the silence has its own line:\n%s", out)
}
