package alert

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Request headers.
const (
	HeaderSignature = "X-Chime-Signature" // sha256=<hex HMAC-SHA256 of the body>
	HeaderEvent     = "X-Chime-Event"     // the event type
	HeaderDelivery  = "X-Chime-Delivery"  // the event ID, the same on every retry
)

const signaturePrefix = "sha256="

// Sign returns the X-Chime-Signature value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return signaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether header is the X-Chime-Signature of body under
// secret, comparing in constant time. An empty secret verifies nothing
// (false): a webhook without a secret sends no signature.
func Verify(secret, body []byte, header string) bool {
	if len(secret) == 0 {
		return false
	}
	hexSig, ok := strings.CutPrefix(header, signaturePrefix)
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}

// AlertmanagerAlert is one element of the Alertmanager v2 POST
// /api/v2/alerts body.
type AlertmanagerAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       *time.Time        `json:"endsAt,omitempty"`
	GeneratorURL string            `json:"generatorURL"`
}

// body renders the stored event (the Event's JSON) in format.
func body(format string, stored json.RawMessage) (ev Event, out []byte, err error) {
	dec := json.NewDecoder(bytes.NewReader(stored))
	dec.UseNumber() // keep large integers in Details exact
	if err := dec.Decode(&ev); err != nil {
		return ev, nil, fmt.Errorf("stored event does not decode: %w", err)
	}
	if format != FormatAlertmanager {
		// The stored bytes are the event as Send marshalled it.
		return ev, stored, nil
	}
	out, err = json.Marshal([]AlertmanagerAlert{alertmanager(ev)})
	return ev, out, err
}

// alertmanager maps an event to an alert. Every event is its own alert
// (the event label keeps, say, fence.started and fence.succeeded apart);
// resolving types are sent already resolved (endsAt = At), the others
// without endsAt, so Alertmanager resolves them after its resolve_timeout.
func alertmanager(ev Event) AlertmanagerAlert {
	labels := map[string]string{
		"alertname": ev.Type,
		"event":     ev.Type,
		"severity":  ev.Severity,
	}
	// Alertmanager treats an empty label as absent; leave them out.
	for k, v := range map[string]string{"host": ev.Host, "cluster": ev.Cluster, "correlation_id": ev.CorrelationID} {
		if v != "" {
			labels[k] = v
		}
	}
	ann := map[string]string{"summary": ev.Summary}
	if len(ev.Details) > 0 {
		if d, err := json.Marshal(ev.Details); err == nil {
			ann["details"] = string(d)
		}
	}
	a := AlertmanagerAlert{Labels: labels, Annotations: ann, StartsAt: ev.At}
	if resolving[ev.Type] {
		at := ev.At
		a.EndsAt = &at
	}
	return a
}
