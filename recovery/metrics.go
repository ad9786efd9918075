package recovery

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chimestack/chime-fence/fencer"
)

// Metrics are the recovery pipeline's Prometheus series: fences (whole and
// per level attempt) and evacuations (whole and per VM). A nil *Metrics
// records nothing.
type Metrics struct {
	fences       *prometheus.CounterVec
	fenceTime    *prometheus.HistogramVec
	attempts     *prometheus.CounterVec
	attemptTime  *prometheus.HistogramVec
	evacuations  *prometheus.CounterVec
	evacTime     *prometheus.HistogramVec
	vms          *prometheus.CounterVec
	fencesActive prometheus.Gauge
}

// Fence and evacuation results as labels.
const (
	resultVerified = "verified"
	resultFailed   = "failed"
)

// NewMetrics registers the series on reg (the daemon's private registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	// Fences take tens of milliseconds to tens of seconds (a slow BMC's
	// level timeout); evacuations seconds to minutes.
	fenceBuckets := []float64{.025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
	evacBuckets := []float64{.5, 1, 2, 5, 10, 30, 60, 120, 300, 600}
	m := &Metrics{
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chime_fence_fences_total",
			Help: "Fences run, by result: verified (a level read the host back as fenced) or failed (every level failed).",
		}, []string{"result"}),
		fenceTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chime_fence_fence_duration_seconds", Buckets: fenceBuckets,
			Help: "From the fence's start to its verified read-back, or to the last level's failure.",
		}, []string{"result"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chime_fence_fence_attempts_total",
			Help: "Fence level attempts, by level (ipmi, redfish, agent-drain) and result (verified, failed).",
		}, []string{"level", "result"}),
		attemptTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chime_fence_fence_attempt_duration_seconds", Buckets: fenceBuckets,
			Help: "One fence level attempt: action plus read-backs, by level and result.",
		}, []string{"level", "result"}),
		evacuations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chime_fence_evacuations_total",
			Help: "Evacuations finished, by state: done, partial, failed, error (did not run).",
		}, []string{"state"}),
		evacTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "chime_fence_evacuation_duration_seconds", Buckets: evacBuckets,
			Help: "From the evacuation's start (after the verified fence) to its last VM's result, by state.",
		}, []string{"state"}),
		vms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chime_fence_evacuated_vms_total",
			Help: "VMs of evacuations, by result: running (on a new host), failed (tried, not running), not_moved (not evacuable or no capacity).",
		}, []string{"result"}),
		fencesActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chime_fence_fences_in_flight",
			Help: "Fences running now.",
		}),
	}
	for _, r := range []string{resultVerified, resultFailed} {
		m.fences.WithLabelValues(r)
	}
	for _, r := range []string{"running", "failed", "not_moved"} {
		m.vms.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.fences, m.fenceTime, m.attempts, m.attemptTime, m.evacuations, m.evacTime, m.vms, m.fencesActive} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("recovery: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) fenceStarted() {
	if m != nil {
		m.fencesActive.Inc()
	}
}

// fenceEnded records a fence's result; took is its wall time as the
// coordinator measured it (a result whose levels never ran still counts).
func (m *Metrics) fenceEnded(res fencer.Result, took time.Duration) {
	if m == nil {
		return
	}
	m.fencesActive.Dec()
	r := resultFailed
	if res.Verified {
		r = resultVerified
	}
	m.fences.WithLabelValues(r).Inc()
	m.fenceTime.WithLabelValues(r).Observe(took.Seconds())
	for _, a := range res.Attempts {
		ar := resultFailed
		if a.Verified {
			ar = resultVerified
		}
		m.attempts.WithLabelValues(a.Level, ar).Inc()
		m.attemptTime.WithLabelValues(a.Level, ar).Observe(a.Elapsed.Seconds())
	}
}

func (m *Metrics) evacuationEnded(rep EvacuationReport, state string, took time.Duration) {
	if m == nil {
		return
	}
	m.evacuations.WithLabelValues(state).Inc()
	m.evacTime.WithLabelValues(state).Observe(took.Seconds())
	m.vms.WithLabelValues("running").Add(float64(len(rep.Running)))
	m.vms.WithLabelValues("failed").Add(float64(len(rep.Failed)))
	m.vms.WithLabelValues("not_moved").Add(float64(len(rep.Unplaced)))
}
