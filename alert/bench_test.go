package alert

import (
	"testing"
)

// BenchmarkSend: the cost the core pays per alert (validate, encode, one
// durable outbox write for two webhooks), nobody delivering.
func BenchmarkSend(b *testing.B) {
	h := newHarness(b, []Webhook{
		{Name: "a", URL: "http://127.0.0.1:9/"},
		{Name: "b", URL: "http://127.0.0.1:9/", Format: FormatAlertmanager},
	}, "")
	ev := Event{Type: FenceFailed, Host: "node-1", Summary: "every level failed",
		Details: map[string]any{"levels": []string{"ipmi: auth failed", "redfish: timeout"}}}
	b.ResetTimer()
	for b.Loop() {
		if err := h.d.Send(ev); err != nil {
			b.Fatal(err)
		}
	}
}
