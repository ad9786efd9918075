package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/store"
)

// timelineRow is one line of `history -o timeline`: a recorded transition,
// or a moment a record's evidence names (the last heartbeat before a
// silence, a BMC reading), which has no record of its own.
type timelineRow struct {
	At   time.Time
	Host string
	What string // kind, or "heartbeat"/"bmc" for evidence moments
	Text string
	// By is when the record that first named this moment was made (At
	// for a record's own row): a window of history shows what it revealed.
	By time.Time
}

// timelineEvidence is the part of a detector record's evidence the
// timeline reads; other kinds' evidence simply does not match.
type timelineEvidence struct {
	LastHeartbeat time.Time `json:"last_heartbeat"`
	SilentSince   time.Time `json:"silent_since"`
	BMC           *struct {
		At        time.Time `json:"at"`
		Reachable bool      `json:"reachable"`
		Power     string    `json:"power"`
		Err       string    `json:"error"`
	} `json:"bmc"`
}

// timelineRows orders the records of recs made at or after from (all when
// from is zero) and the evidence moments they first name by time (records
// keep their order on ties, evidence moments come first). Each evidence
// moment appears once, however many records repeat it, and only if the
// first record naming it is in the window: recs should reach back before
// from, so a moment already reported is not reported again.
func timelineRows(recs []store.Record, from time.Time) []timelineRow {
	var rows []timelineRow
	seen := map[string]bool{}
	moment := func(r timelineRow) {
		k := r.Host + "\x00" + r.What + "\x00" + r.At.UTC().Format(time.RFC3339Nano)
		if !seen[k] {
			seen[k] = true
			rows = append(rows, r)
		}
	}
	for _, r := range recs {
		var ev timelineEvidence
		if len(r.Evidence) > 0 && r.Evidence[0] == '{' && json.Unmarshal(r.Evidence, &ev) == nil {
			// Only a silence makes the last heartbeat a moment worth a line.
			if !ev.SilentSince.IsZero() && !ev.LastHeartbeat.IsZero() {
				moment(timelineRow{At: ev.LastHeartbeat, Host: r.Host, What: "heartbeat", Text: "last heartbeat before the silence", By: r.At})
			}
			if b := ev.BMC; b != nil && !b.At.IsZero() {
				text := "BMC says power " + b.Power
				switch {
				case b.Err != "":
					text = "BMC read failed: " + b.Err
				case !b.Reachable:
					text = "BMC unreachable"
				}
				moment(timelineRow{At: b.At, Host: r.Host, What: "bmc", Text: text, By: r.At})
			}
		}
		rows = append(rows, timelineRow{At: r.At, Host: r.Host, What: r.Kind, Text: recordText(r), By: r.At})
	}
	if !from.IsZero() {
		kept := rows[:0]
		for _, r := range rows {
			if !r.By.Before(from) {
				kept = append(kept, r)
			}
		}
		rows = kept
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].At.Before(rows[j].At) })
	return rows
}

// recordText is "from → to: reason", or just the reason when it already
// names the change (an evicted UUID, "partial", both boot ids).
func recordText(r store.Record) string {
	reason := strings.ReplaceAll(r.Reason, "\n", " ")
	if reason != "" && strings.Contains(reason, r.To) && strings.Contains(reason, r.From) {
		return reason
	}
	change := r.To
	if r.From != "" {
		change = r.From + " → " + r.To
	}
	if reason == "" {
		return change
	}
	return change + ": " + reason
}

// timelineOffset formats d as signed seconds with milliseconds ("+1.234s",
// "-0.050s"), which sorts numerically (sort -g) with other such lines.
func timelineOffset(d time.Duration) string {
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	ms := d.Round(time.Millisecond).Milliseconds()
	return fmt.Sprintf("%s%d.%03ds", sign, ms/1000, ms%1000)
}

// printTimeline writes timelineRows(recs, from) as "OFFSET  HOST  WHAT
// TEXT", offsets from from (the first row's time when from is zero).
func printTimeline(w io.Writer, recs []store.Record, from time.Time) {
	rows := timelineRows(recs, from)
	if len(rows) == 0 {
		return
	}
	zero := from
	if zero.IsZero() {
		zero = rows[0].At
	}
	for _, r := range rows {
		host := r.Host
		if host == "" {
			host = "-"
		}
		fmt.Fprintf(w, "%9s  %-6s %-10s %s\n", timelineOffset(r.At.Sub(zero)), host, r.What, r.Text)
	}
}

// parseSince reads --since: an RFC 3339 time, or a duration meaning that
// long before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: a duration means that long ago and must not be negative", s)
		}
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want an RFC 3339 time (2006-01-02T15:04:05.000Z07:00) or a duration ago (10m)", s)
}

// recordsSince keeps the records at or after t (all when t is zero).
func recordsSince(recs []store.Record, t time.Time) []store.Record {
	if t.IsZero() {
		return recs
	}
	out := recs[:0:0]
	for _, r := range recs {
		if !r.At.Before(t) {
			out = append(out, r)
		}
	}
	return out
}
