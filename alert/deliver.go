package alert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/chimestack/chime-fence/store"
)

// batch is how many entries a sender reads from the outbox at a time.
const batch = 64

// Outcome classifies one delivery attempt.
type Outcome int

const (
	// Delivered: 2xx.
	Delivered Outcome = iota
	// Retry: a network error, a timeout, 408, 429 or 5xx.
	Retry
	// Permanent: any other status (3xx, 4xx); retrying would not help.
	Permanent
)

func (o Outcome) String() string {
	switch o {
	case Delivered:
		return "delivered"
	case Retry:
		return "retry"
	case Permanent:
		return "permanent"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Classify maps an HTTP status to an Outcome.
func Classify(status int) Outcome {
	switch {
	case status >= 200 && status < 300:
		return Delivered
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
		return Retry
	}
	return Permanent
}

// Backoff is the wait after failed attempt n (1-based): initial·2^(n-1),
// at most maxWait.
func Backoff(n int, initial, maxWait time.Duration) time.Duration {
	if n < 1 {
		n = 1
	}
	d := initial
	for i := 1; i < n; i++ {
		if d >= maxWait/2 {
			return maxWait
		}
		d *= 2
	}
	return min(d, maxWait)
}

// mustDeliver names the events whose loss would hide a fence or an
// evacuation from the operator: fence.* and evacuation.* events, a verdict
// that nothing can be proven (the host waits for a human), and anything
// critical. They are retried for MustDeliverFor, not Retries attempts.
func mustDeliver(ev Event) bool {
	switch {
	case ev.Severity == Critical,
		strings.HasPrefix(ev.Type, "fence.") && ev.Type != FenceReadiness,
		strings.HasPrefix(ev.Type, "evacuation."):
		return true
	case ev.Type == HostVerdict:
		v, _ := ev.Details["verdict"].(string)
		return v == "unprovable"
	}
	return false
}

// giveUp decides, after a failed attempt (e.Attempts already counts it),
// whether e is given up: "" to retry, resultDropped when an ordinary
// event has used its retries, resultExpired when an event MustDeliver
// names has been retried for mustFor since it was created.
func giveUp(ev Event, e store.OutboxEntry, retries int, now time.Time, mustFor time.Duration) string {
	if mustDeliver(ev) {
		if !e.Created.IsZero() && now.Sub(e.Created) >= mustFor {
			return resultExpired
		}
		return ""
	}
	if e.Attempts >= retries {
		return resultDropped
	}
	return ""
}

// loop delivers s's queue in order until ctx is done. The head entry
// blocks the ones behind it while it waits for a retry: receivers see
// events in the order they happened.
func (d *Dispatcher) loop(ctx context.Context, s *sender) {
	storeFailures := 0
	for ctx.Err() == nil {
		entries, err := d.out.Outbox(s.name, batch)
		if err != nil {
			storeFailures++
			d.log.Error().Err(err).Str("webhook", s.name).Msg("cannot read the alert outbox; retrying")
			d.sleep(ctx, Backoff(storeFailures, d.boInit, d.boMax))
			continue
		}
		storeFailures = 0
		if len(entries) == 0 {
			select {
			case <-s.wake:
			case <-ctx.Done():
			}
			continue
		}
		for _, e := range entries {
			// Capped: NextAt came from a wall clock that may have jumped
			// back since (e.g. across a restart).
			if wait := min(e.NextAt.Sub(d.now()), d.boMax); wait > 0 && !d.sleep(ctx, wait) {
				return
			}
			if !d.attempt(ctx, s, e) {
				break // e is still the head: re-read and wait for its NextAt
			}
		}
	}
}

// sleep waits d on the dispatcher's clock; false if ctx ended first.
func (d *Dispatcher) sleep(ctx context.Context, wait time.Duration) bool {
	select {
	case <-d.after(wait):
		return true
	case <-ctx.Done():
		return false
	}
}

// attempt makes one delivery attempt of e and records its result in the
// outbox. It returns true when e left the outbox (delivered or given up).
func (d *Dispatcher) attempt(ctx context.Context, s *sender, e store.OutboxEntry) bool {
	wh := s.wh.Load()
	log := d.log.With().Str("webhook", wh.Name).Str("url", RedactURL(wh.URL)).Uint64("entry", e.ID).Logger()
	ev, body, err := body(wh.Format, e.Event)
	if err != nil {
		log.Error().Err(err).Msg("alert dropped: its stored event cannot be rendered")
		return d.finish(ctx, log, e, resultFailed)
	}
	log = log.With().Str("event", ev.Type).Str("event_id", ev.ID).Int("attempt", e.Attempts+1).Logger()

	start := time.Now()
	outcome, retryAfter, err := d.post(ctx, wh, ev, body)
	if ctx.Err() != nil {
		return false // cancelled by shutdown or removal: not the receiver's fault, not counted
	}
	elapsed := time.Since(start)
	switch outcome {
	case Delivered:
		log.Info().Dur("took", elapsed).Msg("alert delivered")
		return d.finish(ctx, log, e, resultDelivered)
	case Permanent:
		log.Error().Str("error", err.Error()).Msg("alert dropped: the receiver refused it (not retried)")
		return d.finish(ctx, log, e, resultFailed)
	}
	e.Attempts++
	switch give := giveUp(ev, e, wh.Retries, d.now(), d.mustFor); give {
	case resultDropped:
		log.Error().Str("error", err.Error()).Int("attempts", e.Attempts).Msg("alert dropped: no attempt succeeded")
		return d.finish(ctx, log, e, give)
	case resultExpired:
		log.Error().Str("error", err.Error()).Int("attempts", e.Attempts).Dur("retried_for", d.mustFor).
			Msg("critical alert given up: not delivered in all that time")
		return d.finish(ctx, log, e, give)
	}
	wait := Backoff(e.Attempts, d.boInit, d.boMax)
	if retryAfter > wait {
		wait = min(retryAfter, d.boMax)
	}
	e.NextAt = d.now().Add(wait)
	e.LastError = err.Error()
	if uerr := d.out.UpdateOutbox(e); uerr != nil {
		if errors.Is(uerr, store.ErrOutboxEntryGone) {
			return true // dropped meanwhile (outbox bound or webhook removed)
		}
		log.Error().Err(uerr).Msg("cannot record a failed alert attempt in the outbox")
		d.sleep(ctx, d.boInit)
		return false
	}
	d.m.deliveries.WithLabelValues(wh.Name, resultRetry).Inc()
	log.Warn().Str("error", e.LastError).Dur("retry_in", wait).Msg("alert not delivered; will retry")
	return false
}

// finish removes e from the outbox and counts result. If the removal
// fails, e stays and will be sent again: delivery is at least once.
func (d *Dispatcher) finish(ctx context.Context, log zerolog.Logger, e store.OutboxEntry, result string) bool {
	d.m.deliveries.WithLabelValues(e.Webhook, result).Inc()
	if err := d.out.AckOutbox(e.ID); err != nil {
		log.Error().Err(err).Msg("cannot remove an alert from the outbox; it may be sent again")
		d.sleep(ctx, d.boInit) // not a hot loop of re-sends while the store is failing
		return false
	}
	d.refreshStats()
	return true
}

// post sends one request. The returned error never holds the URL's
// credentials or the secret.
func (d *Dispatcher) post(ctx context.Context, wh *Webhook, ev Event, body []byte) (Outcome, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, wh.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.URL, bytes.NewReader(body))
	if err != nil {
		return Permanent, 0, fmt.Errorf("POST %s: build request: %s", RedactURL(wh.URL), scrub(unwrapURLError(err).Error(), wh))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "chime-fence")
	req.Header.Set(HeaderEvent, ev.Type)
	req.Header.Set(HeaderDelivery, ev.ID)
	if len(wh.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(wh.Secret, body))
	}
	resp, err := d.client.Do(req)
	if err != nil {
		err = unwrapURLError(err)
		if errors.Is(err, context.DeadlineExceeded) {
			return Retry, 0, fmt.Errorf("POST %s: no answer within %s", RedactURL(wh.URL), wh.Timeout)
		}
		return Retry, 0, fmt.Errorf("POST %s: %s", RedactURL(wh.URL), scrub(err.Error(), wh))
	}
	// Drain (bounded) so the connection can be reused. The status decides,
	// whatever happens to the rest of the body.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	outcome := Classify(resp.StatusCode)
	if outcome == Delivered {
		return Delivered, 0, nil
	}
	return outcome, retryAfter(resp.Header.Get("Retry-After"), d.now()),
		fmt.Errorf("POST %s: HTTP %d %s", RedactURL(wh.URL), resp.StatusCode, http.StatusText(resp.StatusCode))
}

func unwrapURLError(err error) error {
	// url.Error's text repeats the URL (password masked, query and path
	// not): keep only the cause.
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// scrub removes the URL's secrets from text, in case a cause quotes them.
func scrub(text string, wh *Webhook) string {
	secrets := []string{wh.URL}
	if u, err := url.Parse(wh.URL); err == nil {
		if p, ok := u.User.Password(); ok && p != "" {
			secrets = append(secrets, p)
		}
		if u.User != nil && u.User.Username() != "" {
			secrets = append(secrets, u.User.Username())
		}
		if u.RawQuery != "" {
			secrets = append(secrets, u.RawQuery)
		}
		if len(u.Path) > 1 {
			secrets = append(secrets, u.Path)
		}
	}
	if len(wh.Secret) > 0 {
		secrets = append(secrets, string(wh.Secret))
	}
	for i, s := range secrets {
		// Short fragments (a user "a") would garble the text, not protect it.
		if i == 0 || len(s) >= 4 {
			text = strings.ReplaceAll(text, s, "***")
		}
	}
	return text
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or unparseable.
func retryAfter(h string, now time.Time) time.Duration {
	if h == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(h)); err == nil && secs > 0 {
		return time.Duration(min(secs, 86400)) * time.Second
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
