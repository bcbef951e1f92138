package sidecar

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/proxy"
)

// Metrics are the Prometheus series of one sidecar.
type Metrics struct {
	Registry          *prometheus.Registry
	Accepts           prometheus.Counter
	Handshakes        *prometheus.CounterVec // result
	HandshakeDuration prometheus.Histogram
	Sessions          prometheus.Gauge
	Streams           prometheus.Gauge
	StreamsTotal      *prometheus.CounterVec // result
	Bytes             *prometheus.CounterVec // direction
	Reloads           *prometheus.CounterVec // result
	KeyExpiry         *prometheus.GaugeVec   // kind
}

// NewMetrics registers the sidecar's metrics for role ("server"/"client").
func NewMetrics(role string) *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	l := prometheus.Labels{"role": role}
	m := &Metrics{
		Registry: r,
		Accepts: prometheus.NewCounter(prometheus.CounterOpts{Name: "milagro_accepts_total", ConstLabels: l,
			Help: "Connections accepted on the listener."}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "milagro_handshakes_total", ConstLabels: l,
			Help: "Secure handshakes (mpinkex and DTLS) by result."}, []string{"result"}),
		HandshakeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "milagro_handshake_duration_seconds", ConstLabels: l,
			Help: "Duration of successful secure handshakes.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "milagro_sessions_open", ConstLabels: l,
			Help: "Secure sessions open."}),
		Streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "milagro_streams_open", ConstLabels: l,
			Help: "Proxied connections (streams) open."}),
		StreamsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "milagro_streams_total", ConstLabels: l,
			Help: "Proxied connections by result."}, []string{"result"}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "milagro_bytes_total", ConstLabels: l,
			Help: "Plaintext bytes proxied, by direction (up: towards the server backend)."}, []string{"direction"}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "milagro_key_reloads_total", ConstLabels: l,
			Help: "Key directory reloads by result."}, []string{"result"}),
		KeyExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "milagro_key_expiry_timestamp_seconds", ConstLabels: l,
			Help: "Unix time when the loaded keys expire, by kind (set, permit)."}, []string{"kind"}),
	}
	r.MustRegister(m.Accepts, m.Handshakes, m.HandshakeDuration, m.Sessions, m.Streams, m.StreamsTotal, m.Bytes, m.Reloads, m.KeyExpiry)
	return m
}

// observeKeys publishes the expiry of the keys in force.
func (m *Metrics) observeKeys(k *Keys) {
	m.KeyExpiry.WithLabelValues("set").Set(float64(k.ExpiresAt.Unix()))
	if t := k.PermitExpiry(); !t.IsZero() {
		m.KeyExpiry.WithLabelValues("permit").Set(float64(t.Unix()))
	} else {
		m.KeyExpiry.DeleteLabelValues("permit") // a set without permits: no stale date
	}
}

// streamClosed counts a proxied stream that has ended (its bytes and
// result) and returns its "stream closed" log event (info, with the error
// if it did not end cleanly); the caller adds who and where.
func (m *Metrics) streamClosed(log zerolog.Logger, start time.Time, st proxy.Stats, err error) *zerolog.Event {
	m.Bytes.WithLabelValues("up").Add(float64(st.AToB))
	m.Bytes.WithLabelValues("down").Add(float64(st.BToA))
	result, ev := "ok", log.Info()
	if err != nil {
		result, ev = "error", log.Info().Err(err)
	}
	m.StreamsTotal.WithLabelValues(result).Inc()
	return ev.Int64("bytes_up", st.AToB).Int64("bytes_down", st.BToA).Dur("duration", time.Since(start))
}
