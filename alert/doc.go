// Package alert sends events (host unreachable, verdicts, fences,
// evacuations, storm guard, failed reloads) to HTTP webhooks, through a
// durable outbox in the state store so an alert survives a daemon restart.
//
// Caller contract:
//
//   - New(Config) validates the webhooks (names unique, http/https URLs,
//     valid globs, format chime or alertmanager) and does no I/O. Errors
//     name the webhook and the field; URLs in errors and logs are redacted
//     to scheme://host (RedactURL), and the secret never appears.
//   - Send(ev) is the only call the core makes. It writes one outbox entry
//     per webhook whose Events globs match ev.Type (path.Match; none = all)
//     in one store transaction, wakes those webhooks' senders and returns.
//     It never waits on the network, so a dead receiver cannot hold up a
//     fence. It returns an error only for an invalid event or a failed
//     outbox write: log it and carry on. An event is queued with the
//     webhooks configured at the moment of Send.
//   - Run(ctx) delivers until ctx is done: one goroutine per webhook,
//     entries in order (a retrying head entry holds back the ones behind
//     it). Each attempt is one POST bounded by the webhook's Timeout,
//     with X-Chime-Event (type), X-Chime-Delivery (the event ID, the same
//     on every retry) and, when a secret is set, X-Chime-Signature:
//     sha256=<hex HMAC-SHA256 of the exact body>; receivers check it with
//     Verify. 2xx: delivered, removed. 408, 429, 5xx, network errors and
//     timeouts: retried after Backoff (honouring Retry-After up to
//     BackoffMax) until Retries attempts, then dropped with a log line.
//     Events whose loss would hide a fence or an evacuation (fence.*
//     but readiness, evacuation.*, an unprovable verdict, anything
//     critical: mustDeliver) are retried until MustDeliverFor (12 h) has
//     passed since they were queued, then given up as "expired".
//     Other statuses (3xx: redirects are not followed; 4xx): dropped at
//     once. Every outcome is logged and counted in
//     chime_fence_alert_deliveries_total{webhook,result}.
//   - Delivery is at least once: a crash between a 2xx and the outbox
//     removal sends the event again with the same X-Chime-Delivery.
//     Attempts are recorded in the outbox, so a restart neither forgets
//     an event nor resets its retry count; at start Run drops (with a log
//     line) the entries of webhooks no longer configured.
//   - Reconfigure(webhooks) (SIGHUP) validates first and changes nothing
//     on error. A webhook that keeps its Name keeps its queue and uses the
//     new URL, secret, format, timeout and retries from its next attempt;
//     a removed one's pending entries are dropped with a log line.
//   - The outbox is bounded by the store (store.MaxOutboxEntries, oldest
//     dropped, counted in chime_fence_alert_outbox_overflow_total); the
//     chime_fence_alert_outbox gauge is the number of pending entries.
//   - Only backoff waits use Config.After, so tests drive retries with a
//     fake clock; HTTP timeouts run on the real clock.
package alert
