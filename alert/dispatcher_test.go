package alert

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/chimestack/chime-fence/store"
)

func TestSignatureVerifiesWithTheSecretOnly(t *testing.T) {
	signed := newReceiver(t, nil)
	plain := newReceiver(t, nil)
	secret := []byte("k3y-for-hmac")
	h := newHarness(t, []Webhook{
		{Name: "signed", URL: signed.URL, Secret: secret},
		{Name: "plain", URL: plain.URL},
	}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceStarted, Host: "node-2", Summary: "fencing node-2",
		Details: map[string]any{"level": "ipmi", "big": int64(1) << 60}}))

	r := signed.waitRequests(t, 1)[0]
	sig := r.Header.Get(HeaderSignature)
	require.True(t, strings.HasPrefix(sig, "sha256="), "signature header %q", sig)
	assert.True(t, Verify(secret, r.Body, sig), "verifies with the webhook's secret")
	assert.False(t, Verify([]byte("another-key"), r.Body, sig), "fails with another secret")
	tampered := append([]byte(nil), r.Body...)
	tampered[len(tampered)-2] ^= 1
	assert.False(t, Verify(secret, tampered, sig), "fails on a changed body")
	assert.False(t, Verify(secret, r.Body, strings.TrimPrefix(sig, "sha256=")), "needs the sha256= prefix")
	assert.False(t, Verify(nil, r.Body, sig), "an empty secret verifies nothing")
	assert.Equal(t, Sign(secret, r.Body), sig)

	var ev Event
	require.NoError(t, json.Unmarshal(r.Body, &ev))
	assert.Equal(t, FenceStarted, ev.Type)
	assert.Equal(t, "node-2", ev.Host)
	assert.Equal(t, "lab", ev.Cluster, "cluster filled from Config")
	assert.Equal(t, Warning, ev.Severity, "default severity of fence.started")
	assert.Equal(t, t0, ev.At, "At from the dispatcher's clock")
	assert.Len(t, ev.ID, 32)
	assert.Equal(t, ev.ID, r.Header.Get(HeaderDelivery))
	assert.Equal(t, FenceStarted, r.Header.Get(HeaderEvent))
	assert.Equal(t, "application/json", r.Header.Get("Content-Type"))
	assert.Contains(t, string(r.Body), `"big":1152921504606846976`, "large integers stay exact")

	p := plain.waitRequests(t, 1)[0]
	assert.Empty(t, p.Header.Get(HeaderSignature), "no signature without a secret")
	assert.Equal(t, r.Body, p.Body, "the same event body to both")
}

func TestFilters(t *testing.T) {
	fence := newReceiver(t, nil)
	storm := newReceiver(t, nil)
	all := newReceiver(t, nil)
	h := newHarness(t, []Webhook{
		{Name: "fence", URL: fence.URL, Events: []string{"fence.*"}},
		{Name: "storm", URL: storm.URL, Events: []string{"storm.engaged", "config.*"}},
		{Name: "all", URL: all.URL},
	}, "")
	h.run(t)
	for _, typ := range []string{HostUnreachable, FenceStarted, StormEngaged, FenceSucceeded, StormCleared, ConfigReloadFailed} {
		require.NoError(t, h.d.Send(Event{Type: typ}))
	}
	types := func(rc *receiver, n int) []string {
		var out []string
		for _, r := range rc.waitRequests(t, n) {
			out = append(out, r.Header.Get(HeaderEvent))
		}
		return out
	}
	assert.Equal(t, []string{HostUnreachable, FenceStarted, StormEngaged, FenceSucceeded, StormCleared, ConfigReloadFailed}, types(all, 6),
		"no filter: every event, in order")
	assert.Equal(t, []string{FenceStarted, FenceSucceeded}, types(fence, 2))
	assert.Equal(t, []string{StormEngaged, ConfigReloadFailed}, types(storm, 2))
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Len(t, fence.Requests(), 2, "nothing else arrived")
	assert.Len(t, storm.Requests(), 2)
	assert.Equal(t, 2.0, h.counter(t, "fence", "delivered"))
	assert.Equal(t, 6.0, h.counter(t, "all", "delivered"))
}

func TestSendWithNoMatchingWebhookQueuesNothing(t *testing.T) {
	h := newHarness(t, []Webhook{{Name: "fence", URL: "http://127.0.0.1:9/x", Events: []string{"fence.*"}}}, "")
	require.NoError(t, h.d.Send(Event{Type: StormEngaged}))
	assert.Zero(t, h.pending(t))
	require.NoError(t, h.d.Send(Event{Type: FenceFailed}))
	assert.Equal(t, 1, h.pending(t), "a matching event is queued without Run")
	assert.Equal(t, map[string]int{"fence": 1}, h.d.Pending())
	assert.Equal(t, 1.0, h.gauge(t, "chime_fence_alert_outbox"))
}

func TestSendRefusesInvalidEvents(t *testing.T) {
	h := newHarness(t, []Webhook{{Name: "a", URL: "http://127.0.0.1:9/"}}, "")
	err := h.d.Send(Event{Summary: "no type"})
	require.ErrorContains(t, err, `event type is empty (summary "no type")`)
	err = h.d.Send(Event{Type: FenceFailed, Severity: "fatal"})
	require.ErrorContains(t, err, `severity "fatal" is not info, warning or critical`)
	err = h.d.Send(Event{Type: FenceFailed, Details: map[string]any{"ch": make(chan int)}})
	require.ErrorContains(t, err, "encode")
	assert.Zero(t, h.pending(t))
}

func TestRetriesWithBackoffThenSuccess(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) int {
		switch n {
		case 0:
			return http.StatusServiceUnavailable
		case 1:
			return http.StatusTooManyRequests
		case 2:
			return http.StatusRequestTimeout
		}
		return http.StatusNoContent
	})
	h := newHarness(t, []Webhook{{Name: "a", URL: rc.URL, Secret: []byte("s")}}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "first"}))
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "second"}))
	reqs := rc.waitRequests(t, 5)
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)

	for i := 1; i < 4; i++ {
		assert.Equal(t, reqs[0].Body, reqs[i].Body, "attempt %d re-sends the same body", i+1)
		assert.Equal(t, reqs[0].Header.Get(HeaderDelivery), reqs[i].Header.Get(HeaderDelivery), "same delivery id")
		assert.Equal(t, reqs[0].Header.Get(HeaderSignature), reqs[i].Header.Get(HeaderSignature))
	}
	assert.Contains(t, string(reqs[4].Body), `"summary":"second"`, "the second event waited behind the first")
	assert.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}, h.clock.Waits(), "exponential backoff")
	assert.Equal(t, 3.0, h.counter(t, "a", "retry"))
	assert.Equal(t, 2.0, h.counter(t, "a", "delivered"))
	assert.Zero(t, h.counter(t, "a", "dropped"))
	assert.Contains(t, h.logs.String(), "HTTP 503 Service Unavailable")
}

func TestRetriesExhaustedDropsWithALogLine(t *testing.T) {
	rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) int {
		if n == 1 {
			w.Header().Set("Retry-After", "7")
		}
		return http.StatusInternalServerError
	})
	h := newHarness(t, []Webhook{{Name: "a", URL: rc.URL, Retries: 3}}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: HostVerdict, Details: map[string]any{"verdict": "agent-down"}}))
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Equal(t, 1.0, h.counter(t, "a", "dropped"))
	assert.Len(t, rc.Requests(), 3, "Retries is the number of attempts")
	assert.Equal(t, []time.Duration{time.Second, 7 * time.Second}, h.clock.Waits(), "Retry-After beats a shorter backoff")
	assert.Equal(t, 2.0, h.counter(t, "a", "retry"))
	assert.Zero(t, h.pending(t))
	assert.Contains(t, h.logs.String(), `"message":"alert dropped: no attempt succeeded"`)
	assert.Contains(t, h.logs.String(), `"attempts":3`)
}

// TestCriticalEventsOutliveTheRetries: a fence, evacuation, unprovable or
// critical event is retried long past the webhook's Retries (they were
// dropped after ~30 s, while a pager was restarting), until it is
// delivered or MustDeliverFor has passed since it was created.
func TestCriticalEventsOutliveTheRetries(t *testing.T) {
	for _, ev := range []Event{
		{Type: FenceFailed}, {Type: FenceSucceeded}, {Type: EvacuationPartial}, {Type: EvacuationFinished},
		{Type: StormEngaged}, {Type: HostVerdict, Details: map[string]any{"verdict": "unprovable"}},
	} {
		t.Run(ev.Type, func(t *testing.T) {
			rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
				if n < 12 {
					return http.StatusBadGateway
				}
				return http.StatusOK
			})
			h := newHarnessWith(t, []Webhook{{Name: "a", URL: rc.URL, Retries: 3}}, "", func(c *Config) { c.MustDeliverFor = time.Hour })
			h.run(t)
			require.NoError(t, h.d.Send(ev))
			require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
			assert.Len(t, rc.Requests(), 13, "retried past Retries=3 until delivered")
			assert.Equal(t, 1.0, h.counter(t, "a", "delivered"))
			assert.Zero(t, h.counter(t, "a", "dropped"))
			assert.Zero(t, h.counter(t, "a", "expired"))
		})
	}
}

func TestCriticalEventExpiresAfterMustDeliverFor(t *testing.T) {
	rc := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusBadGateway })
	h := newHarnessWith(t, []Webhook{{Name: "a", URL: rc.URL, Retries: 3}}, "", func(c *Config) { c.MustDeliverFor = time.Minute })
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed}))
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Equal(t, 1.0, h.counter(t, "a", "expired"))
	assert.Zero(t, h.counter(t, "a", "dropped"))
	var waited time.Duration
	for _, w := range h.clock.Waits() {
		waited += w
	}
	assert.GreaterOrEqual(t, waited, time.Minute, "retried for the whole minute")
	assert.Less(t, waited, time.Minute+10*time.Second, "and not a backoff longer")
	assert.Contains(t, h.logs.String(), "critical alert given up")
}

func TestMustDeliver(t *testing.T) {
	for ev, want := range map[*Event]bool{
		{Type: FenceStarted}:      true,
		{Type: FenceFailed}:       true,
		{Type: FenceReadiness}:    false, // repeated by the next readiness check
		{Type: EvacuationStarted}: true,
		{Type: HostVerdict, Details: map[string]any{"verdict": "unprovable"}}: true,
		{Type: HostVerdict, Details: map[string]any{"verdict": "agent-down"}}: false,
		{Type: HostVerdict}:                         false,
		{Type: StormCleared, Severity: Info}:        false,
		{Type: HostUnreachable, Severity: Critical}: true,
	} {
		assert.Equal(t, want, mustDeliver(*ev), "%+v", *ev)
	}
}

func TestPermanentFailureIsNotRetried(t *testing.T) {
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		if n == 0 {
			return http.StatusBadRequest
		}
		return http.StatusOK
	})
	h := newHarness(t, []Webhook{{Name: "a", URL: rc.URL}}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "refused"}))
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "next"}))
	reqs := rc.waitRequests(t, 2)
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Contains(t, string(reqs[1].Body), `"summary":"next"`, "the refused event was not sent again")
	assert.Equal(t, 1.0, h.counter(t, "a", "failed"))
	assert.Equal(t, 1.0, h.counter(t, "a", "delivered"))
	assert.Zero(t, h.counter(t, "a", "retry"))
	assert.Empty(t, h.clock.Waits())
	assert.Contains(t, h.logs.String(), "HTTP 400 Bad Request")
}

func TestClassify(t *testing.T) {
	for code, want := range map[int]Outcome{
		200: Delivered, 201: Delivered, 204: Delivered, 299: Delivered,
		301: Permanent, 302: Permanent, 400: Permanent, 401: Permanent, 403: Permanent, 404: Permanent, 410: Permanent,
		408: Retry, 429: Retry, 500: Retry, 502: Retry, 503: Retry, 504: Retry,
	} {
		assert.Equal(t, want, Classify(code), "HTTP %d", code)
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	target := newReceiver(t, nil)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) int {
		w.Header().Set("Location", target.URL)
		return http.StatusFound
	})
	h := newHarness(t, []Webhook{{Name: "a", URL: rc.URL}}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed}))
	require.Eventually(t, func() bool { return h.counter(t, "a", "failed") == 1 }, waitFor, time.Millisecond)
	assert.Empty(t, target.Requests())
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {4, 8 * time.Second}, {5, 10 * time.Second}, {100, 10 * time.Second}} {
		assert.Equal(t, tc.want, Backoff(tc.n, time.Second, 10*time.Second), "n=%d", tc.n)
	}
	assert.Equal(t, 5*time.Minute, Backoff(1000, 2*time.Second, 5*time.Minute), "no overflow")
}

func TestRetryAfter(t *testing.T) {
	assert.Equal(t, 3*time.Second, retryAfter("3", t0))
	assert.Equal(t, 90*time.Second, retryAfter(t0.Add(90*time.Second).Format(http.TimeFormat), t0))
	assert.Zero(t, retryAfter("", t0))
	assert.Zero(t, retryAfter("soon", t0))
	assert.Zero(t, retryAfter("-4", t0))
	assert.Equal(t, 24*time.Hour, retryAfter("99999999999", t0), "capped, no overflow")
}

// TestOutboxSurvivesRestart: events queued while the receiver was down (a
// first attempt failed) are delivered by a new Dispatcher over the reopened
// store, keeping their attempt count.
func TestOutboxSurvivesRestart(t *testing.T) {
	down := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusBadGateway })
	h1 := newHarness(t, []Webhook{{Name: "a", URL: down.URL}}, "")
	h1.clock.hold = true // one attempt, then the retry waits until the "crash"
	stop := h1.run(t)
	require.NoError(t, h1.d.Send(Event{Type: FenceSucceeded, Summary: "one"}))
	require.Eventually(t, func() bool { return h1.counter(t, "a", "retry") >= 1 }, waitFor, time.Millisecond)
	stop()
	require.NoError(t, h1.d.Send(Event{Type: EvacuationStarted, Summary: "two"}), "Send works without Run")
	require.NoError(t, h1.st.Close())
	require.Len(t, down.Requests(), 1)

	up := newReceiver(t, nil)
	h2 := newHarness(t, []Webhook{{Name: "a", URL: up.URL}}, h1.path)
	left, err := h2.st.Outbox("a", 0)
	require.NoError(t, err)
	require.Len(t, left, 2)
	assert.Equal(t, 1, left[0].Attempts, "attempts survive the restart")
	assert.Contains(t, left[0].LastError, "HTTP 502")
	h2.run(t)
	reqs := up.waitRequests(t, 2)
	assert.Contains(t, string(reqs[0].Body), `"summary":"one"`)
	assert.Contains(t, string(reqs[1].Body), `"summary":"two"`)
	require.Eventually(t, func() bool { return h2.pending(t) == 0 }, waitFor, time.Millisecond)
	// The gauge follows the acknowledgement, a moment later.
	assert.Eventually(t, func() bool { return h2.gauge(t, "chime_fence_alert_outbox") == 0 }, waitFor, time.Millisecond)
}

// TestHangingReceiverDoesNotBlock: Send returns while a receiver hangs, the
// per-call timeout ends the attempt, and another webhook is not held up.
func TestHangingReceiverDoesNotBlock(t *testing.T) {
	hang := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) int {
		<-r.Context().Done() // until the client gives up
		return http.StatusOK
	})
	fast := newReceiver(t, nil)
	const timeout = 300 * time.Millisecond
	h := newHarness(t, []Webhook{
		{Name: "hang", URL: hang.URL, Timeout: timeout, Retries: 1},
		{Name: "fast", URL: fast.URL},
	}, "")
	h.run(t)

	start := time.Now()
	// Events that are dropped after Retries (fence events are retried for hours).
	require.NoError(t, h.d.Send(Event{Type: HostVerdict, Details: map[string]any{"verdict": "agent-down"}}))
	hang.waitRequests(t, 1) // the hanging POST is in flight
	require.NoError(t, h.d.Send(Event{Type: HostVerdict, Details: map[string]any{"verdict": "isolated-or-hung"}}), "Send while a POST hangs")
	fast.waitRequests(t, 2)
	assert.Less(t, time.Since(start), timeout, "the other webhook was served while the first hung")

	require.Eventually(t, func() bool { return h.counter(t, "hang", "dropped") == 2 }, waitFor, time.Millisecond)
	elapsed := time.Since(start)
	assert.GreaterOrEqual(t, elapsed, 2*timeout, "each attempt waited its timeout")
	assert.Less(t, elapsed, 2*timeout+5*time.Second, "and no longer")
	assert.Contains(t, h.logs.String(), "no answer within 300ms")
}

func TestAlertmanagerBody(t *testing.T) {
	rc := newReceiver(t, nil)
	h := newHarness(t, []Webhook{{Name: "am", URL: rc.URL, Format: FormatAlertmanager}}, "")
	h.run(t)
	at := t0.Add(time.Minute)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, At: at, Host: "node-3", CorrelationID: "corr-1",
		Summary: "every fence level failed", Details: map[string]any{"levels": []any{"ipmi: auth", "redfish: timeout"}}}))
	require.NoError(t, h.d.Send(Event{Type: StormCleared, At: at, Summary: "storm over"}))
	reqs := rc.waitRequests(t, 2)

	var got []map[string]any
	require.NoError(t, json.Unmarshal(reqs[0].Body, &got))
	require.Len(t, got, 1)
	a := got[0]
	assert.Equal(t, map[string]any{"alertname": "fence.failed", "event": "fence.failed", "severity": "critical",
		"host": "node-3", "cluster": "lab", "correlation_id": "corr-1"}, a["labels"])
	ann := a["annotations"].(map[string]any)
	assert.Equal(t, "every fence level failed", ann["summary"])
	var details map[string]any
	require.NoError(t, json.Unmarshal([]byte(ann["details"].(string)), &details), "details is a JSON string")
	assert.Equal(t, map[string]any{"levels": []any{"ipmi: auth", "redfish: timeout"}}, details)
	assert.Equal(t, "2026-03-01T12:01:00Z", a["startsAt"])
	assert.NotContains(t, a, "endsAt", "a firing event has no endsAt")
	assert.Equal(t, "", a["generatorURL"])
	assert.Len(t, a, 4)

	var cleared []map[string]any
	require.NoError(t, json.Unmarshal(reqs[1].Body, &cleared))
	assert.Equal(t, "2026-03-01T12:01:00Z", cleared[0]["endsAt"], "a resolving event is sent resolved")
	assert.Equal(t, map[string]any{"alertname": "storm.cleared", "event": "storm.cleared", "severity": "info", "cluster": "lab"},
		cleared[0]["labels"], "empty labels are left out")
	assert.Equal(t, map[string]any{"summary": "storm over"}, cleared[0]["annotations"])
	assert.Equal(t, reqs[1].Header.Get(HeaderEvent), StormCleared)
}

func TestSecretsNeverInLogsOrErrors(t *testing.T) {
	const (
		password = "pa55w0rd-in-url"
		token    = "t0ken-in-query"
		pathTok  = "T0KEN-IN-PATH"
		secret   = "hmac-s3cret-value"
	)
	rc := newReceiver(t, func(n int, _ http.ResponseWriter, _ *http.Request) int {
		return []int{500, 401}[min(n, 1)]
	})
	withCreds := func(base string) string {
		return strings.Replace(base, "http://", "http://user:"+password+"@", 1) + "/hooks/" + pathTok + "?token=" + token
	}
	closed := newReceiver(t, nil)
	closedURL := withCreds(closed.URL)
	closed.Close() // connection refused from now on

	h := newHarness(t, []Webhook{
		{Name: "status", URL: withCreds(rc.URL), Secret: []byte(secret)},
		{Name: "refused", URL: closedURL, Secret: []byte(secret), Retries: 2},
	}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: HostVerdict, Details: map[string]any{"verdict": "agent-down"}}))
	require.Eventually(t, func() bool {
		return h.counter(t, "status", "failed") == 1 && h.counter(t, "refused", "dropped") == 1
	}, waitFor, time.Millisecond)

	// Validation errors that quote the URL.
	var errs []string
	for _, w := range []Webhook{
		{Name: "", URL: withCreds("http://127.0.0.1:1"), Secret: []byte(secret)},
		{Name: "x", URL: strings.Replace(withCreds("http://127.0.0.1:1"), "http", "ftp", 1), Secret: []byte(secret)},
		{Name: "x", URL: "http://user:" + password + "@127.0.0.1:1/%zz?token=" + token, Secret: []byte(secret)},
		{Name: "x", URL: withCreds("http://127.0.0.1:1"), Secret: []byte(secret), Format: "bad"},
	} {
		err := h.d.Reconfigure([]Webhook{w})
		require.Error(t, err)
		errs = append(errs, err.Error())
		_, err = New(Config{Outbox: h.st, Webhooks: []Webhook{w}})
		require.Error(t, err)
		errs = append(errs, err.Error())
	}

	logs := h.logs.String()
	require.Contains(t, logs, "HTTP 401 Unauthorized", "the logs were captured")
	require.Contains(t, logs, "connection refused")
	require.Contains(t, logs, `"url":"http://***@127.0.0.1:`, "the redacted URL is logged")
	for _, text := range append(errs, logs) {
		for _, leak := range []string{password, token, pathTok, secret} {
			assert.NotContains(t, text, leak)
		}
	}
	assert.Contains(t, strings.Join(errs, "\n"), `webhook "x": format "bad"`)
	assert.Contains(t, strings.Join(errs, "\n"), `scheme must be http or https`)

	w := Webhook{Name: "p", URL: "http://127.0.0.1", Secret: []byte(secret)}
	for _, s := range []string{
		func() string { b, _ := json.Marshal(w); return string(b) }(),
		strings.Join([]string{w.Secret.String()}, ""),
	} {
		assert.NotContains(t, s, secret, "a Webhook printed by mistake")
	}
	assert.NotContains(t, sprintAll(w), secret)
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:8080":                       "http://127.0.0.1:8080",
		"http://127.0.0.1:8080/":                      "http://127.0.0.1:8080",
		"https://u:p@hooks.example:443/a/b?token=x#f": "https://***@hooks.example:443/***?***#***",
		"http://h/path":                               "http://h/***",
		"::not a url":                                 "[unparseable URL]",
		"":                                            "[unparseable URL]",
	} {
		assert.Equal(t, want, RedactURL(in), in)
	}
}

func TestReconfigure(t *testing.T) {
	old := newReceiver(t, func(int, http.ResponseWriter, *http.Request) int { return http.StatusServiceUnavailable })
	keep1 := newReceiver(t, nil)
	keep2 := newReceiver(t, nil)
	added := newReceiver(t, nil)
	h := newHarness(t, []Webhook{
		{Name: "gone", URL: old.URL, Retries: 1000},
		{Name: "keep", URL: keep1.URL},
	}, "")
	h.run(t)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "e1"}))
	keep1.waitRequests(t, 1)
	old.waitRequests(t, 1)

	err := h.d.Reconfigure([]Webhook{{Name: "keep", URL: keep2.URL}, {Name: "keep", URL: keep2.URL}})
	require.ErrorContains(t, err, `webhook "keep" is configured twice`)
	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "e2"}))
	keep1.waitRequests(t, 2) // a refused reconfigure changed nothing

	require.NoError(t, h.d.Reconfigure([]Webhook{
		{Name: "keep", URL: keep2.URL, Events: []string{"fence.*"}},
		{Name: "added", URL: added.URL},
	}))
	st, err := h.st.OutboxStats()
	require.NoError(t, err)
	assert.NotContains(t, st.Pending, "gone", "a removed webhook's entries are dropped")
	assert.GreaterOrEqual(t, h.counter(t, "gone", "dropped"), 2.0)
	assert.Contains(t, h.logs.String(), "webhook removed from the configuration")
	seen := len(old.Requests())

	require.NoError(t, h.d.Send(Event{Type: FenceFailed, Summary: "e3"}))
	require.NoError(t, h.d.Send(Event{Type: StormEngaged, Summary: "e4"}))
	assert.Contains(t, string(keep2.waitRequests(t, 1)[0].Body), `"summary":"e3"`, "the kept webhook uses its new URL")
	got := added.waitRequests(t, 2)
	assert.Contains(t, string(got[0].Body), `"summary":"e3"`)
	assert.Contains(t, string(got[1].Body), `"summary":"e4"`)
	require.Eventually(t, func() bool { return h.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Len(t, keep2.Requests(), 1, "the new filter applies")
	assert.Len(t, keep1.Requests(), 2, "the old URL gets nothing more")
	// Reconfigure cancels the removed sender's POST and waits for it, but a
	// request already on the wire may reach the receiver's handler just
	// after: at most one more. Were the sender still running, its retries
	// (After fires at once here) would pile up far beyond that.
	assert.LessOrEqual(t, len(old.Requests()), seen+1, "the removed webhook gets nothing more")
}

func TestRunDropsEntriesOfUnconfiguredWebhooks(t *testing.T) {
	h1 := newHarness(t, []Webhook{{Name: "old", URL: "http://127.0.0.1:9/"}, {Name: "a", URL: "http://127.0.0.1:9/"}}, "")
	require.NoError(t, h1.d.Send(Event{Type: FenceFailed}))
	require.NoError(t, h1.st.Close())

	rc := newReceiver(t, nil)
	h2 := newHarness(t, []Webhook{{Name: "a", URL: rc.URL}}, h1.path)
	h2.run(t)
	rc.waitRequests(t, 1)
	require.Eventually(t, func() bool { return h2.pending(t) == 0 }, waitFor, time.Millisecond)
	assert.Contains(t, h2.logs.String(), `"webhook":"old","dropped":1`)
	assert.Contains(t, h2.logs.String(), "webhook is no longer configured")
}

func TestRunTwiceIsRefused(t *testing.T) {
	h := newHarness(t, nil, "")
	h.run(t)
	require.Eventually(t, func() bool {
		h.d.mu.RLock()
		defer h.d.mu.RUnlock()
		return h.d.run != nil
	}, waitFor, time.Millisecond)
	require.ErrorContains(t, h.d.Run(t.Context()), "already running")
}

func TestConfigValidation(t *testing.T) {
	ok := "http://127.0.0.1:1/"
	for name, tc := range map[string]struct {
		whs  []Webhook
		want string
	}{
		"no name":     {[]Webhook{{URL: ok}}, "webhook with URL http://127.0.0.1:1: name is empty"},
		"no url":      {[]Webhook{{Name: "a"}}, `webhook "a": url is empty`},
		"no host":     {[]Webhook{{Name: "a", URL: "http:///x"}}, `webhook "a": url http:///*** has no host`},
		"bad glob":    {[]Webhook{{Name: "a", URL: ok, Events: []string{"fence.["}}}, `webhook "a": events: pattern "fence.[": syntax error in pattern`},
		"empty glob":  {[]Webhook{{Name: "a", URL: ok, Events: []string{""}}}, `webhook "a": events: empty pattern`},
		"misspelt":    {[]Webhook{{Name: "a", URL: ok, Events: []string{"fence.*", "storm_guard.*"}}}, `webhook "a": events: pattern "storm_guard.*" matches no event type (they are ` + strings.Join(Types, ", ") + ")"},
		"neg timeout": {[]Webhook{{Name: "a", URL: ok, Timeout: -time.Second}}, `webhook "a": timeout -1s is negative`},
		"neg retries": {[]Webhook{{Name: "a", URL: ok, Retries: -1}}, `webhook "a": retries -1 is negative`},
		"twice":       {[]Webhook{{Name: "a", URL: ok}, {Name: "a", URL: ok}}, `webhook "a" is configured twice`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(Config{Outbox: &store.Store{}, Webhooks: tc.whs})
			require.Error(t, err)
			assert.Equal(t, "alert: "+tc.want, err.Error())
		})
	}
	_, err := New(Config{})
	require.ErrorContains(t, err, "Config.Outbox is nil")
	_, err = New(Config{Outbox: &store.Store{}, BackoffInitial: time.Minute, BackoffMax: time.Second})
	require.ErrorContains(t, err, "BackoffMax 1s is below BackoffInitial 1m0s")

	// Defaults are filled in, and the caller's slice is not changed.
	whs := []Webhook{{Name: "a", URL: ok, Events: []string{"fence.*"}}}
	d, err := New(Config{Outbox: &store.Store{}, Webhooks: whs})
	require.NoError(t, err)
	w := d.hooks["a"].wh.Load()
	assert.Equal(t, DefaultTimeout, w.Timeout)
	assert.Equal(t, DefaultRetries, w.Retries)
	assert.Equal(t, FormatChime, w.Format)
	assert.Zero(t, whs[0].Timeout)
}

func TestEventDefaults(t *testing.T) {
	ev := Event{Type: "custom.thing"}
	require.NoError(t, ev.normalize(t0.In(time.FixedZone("z", 3600)), "c1"))
	assert.Equal(t, Warning, ev.Severity, "unknown types default to warning")
	assert.Equal(t, time.UTC, ev.At.Location())
	assert.Equal(t, "c1", ev.Cluster)
	keep := Event{Type: FenceFailed, ID: "mine", Cluster: "other", Severity: Info, At: t0.Add(time.Hour)}
	require.NoError(t, keep.normalize(t0, "c1"))
	assert.Equal(t, Event{Type: FenceFailed, ID: "mine", Cluster: "other", Severity: Info, At: t0.Add(time.Hour)}, keep)
	assert.NotEqual(t, NewEventID(), NewEventID())
	for typ := range defaultSeverity {
		assert.Contains(t, []string{Info, Warning, Critical}, defaultSeverity[typ], typ)
	}
}

func sprintAll(w Webhook) string {
	return fmt.Sprintf("%v %+v %#v %s %x", w, w, w, w.Secret, w.Secret)
}
