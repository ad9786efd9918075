package alert

import "github.com/prometheus/client_golang/prometheus"

// Results of chime_fence_alert_deliveries_total.
const (
	resultDelivered = "delivered" // 2xx
	resultRetry     = "retry"     // an attempt failed and another is scheduled
	resultFailed    = "failed"    // refused by the receiver (4xx, 3xx) or unrenderable: not retried
	resultDropped   = "dropped"   // retries exhausted, or the webhook was removed with entries pending
	resultExpired   = "expired"   // an event MustDeliver names, retried for MustDeliverFor in vain
)

type metrics struct {
	deliveries *prometheus.CounterVec
	pending    prometheus.GaugeFunc
	overflow   prometheus.CounterFunc
}

func newMetrics(d *Dispatcher) metrics {
	return metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chime_fence_alert_deliveries_total",
			Help: "Alert delivery results per webhook: delivered, retry (an attempt failed, another is scheduled), failed (refused, not retried), dropped (retries exhausted or webhook removed), expired (a fence, evacuation, unprovable or critical event retried for hours in vain).",
		}, []string{"webhook", "result"}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chime_fence_alert_outbox",
			Help: "Alert deliveries waiting in the durable outbox, all webhooks.",
		}, func() float64 { return float64(d.stats.Load().Total) }),
		overflow: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "chime_fence_alert_outbox_overflow_total",
			Help: "Alert deliveries dropped because the outbox was full (oldest first); persisted across restarts.",
		}, func() float64 { return float64(d.stats.Load().Dropped) }),
	}
}

func (m metrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.deliveries, m.pending, m.overflow} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// init makes webhook's series exist (at 0) before its first delivery.
func (m metrics) init(webhook string) {
	for _, r := range []string{resultDelivered, resultRetry, resultFailed, resultDropped, resultExpired} {
		m.deliveries.WithLabelValues(webhook, r)
	}
}
