package sidecar

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/proxy"
)

// Metrics are the Prometheus series of one sidecar.
type Metrics struct {
	quietConns bool // --quiet conns: a clean stream's line at debug level

	Registry          *prometheus.Registry
	Accepts           prometheus.Counter
	OverLimit         prometheus.Counter
	BackendErrors     prometheus.Counter     // --http
	Handshakes        *prometheus.CounterVec // result
	HandshakeDuration prometheus.Histogram
	Sessions          prometheus.Gauge
	Streams           prometheus.Gauge
	StreamsTotal      *prometheus.CounterVec // result
	Bytes             *prometheus.CounterVec // direction
	up, down          prometheus.Counter     // Bytes' two series
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
		BackendErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "milagro_http_backend_errors_total", ConstLabels: l,
			Help: "HTTP requests (--http) answered 502 because the backend could not be reached or failed."}),
		OverLimit: prometheus.NewCounter(prometheus.CounterOpts{Name: "milagro_conns_over_limit_total", ConstLabels: l,
			Help: "Accepted connections closed at once because --max-conns were open."}),
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "milagro_handshakes_total", ConstLabels: l,
			Help: "Secure handshakes (mpinkex and DTLS) by result."}, []string{"result"}),
		HandshakeDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "milagro_handshake_duration_seconds", ConstLabels: l,
			Help: "Duration of successful secure handshakes (the client's includes its TCP connect).", Buckets: handshakeBuckets}),
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
	r.MustRegister(m.Accepts, m.OverLimit, m.BackendErrors, m.Handshakes, m.HandshakeDuration, m.Sessions, m.Streams, m.StreamsTotal, m.Bytes, m.Reloads, m.KeyExpiry)
	m.up, m.down = m.Bytes.WithLabelValues("up"), m.Bytes.WithLabelValues("down")
	// Every known series exists from the start, at 0: an alert on
	// increase() sees the first failure, and ratios read 0, not "no data".
	for _, r := range handshakeResults {
		m.Handshakes.WithLabelValues(r)
	}
	for _, r := range streamResults {
		m.StreamsTotal.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error"} {
		m.Reloads.WithLabelValues(r)
	}
	return m
}

// handshakeBuckets fit handshakes of 1–50 ms (a cold one costs ~5 ms of
// CPU here, more over a real network), with room for slow ones.
var handshakeBuckets = []float64{0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// The result labels of milagro_handshakes_total and milagro_streams_total.
var (
	handshakeResults = []string{"ok", "unauthorized", "auth_failed", "bad_message", "overloaded", "refused", "key_mismatch",
		"timeout", "closed", "error", "connect_failed"}
	streamResults = []string{"ok", "error", "idle_timeout", "refused", "unreachable", "upstream_down", "bad_header", "over_limit",
		"no_route", "bad_request"}
)

// countBytes is proxy.StartCounting's count: bytes are counted as they
// move, so that rate() shows the traffic of long connections too (aToB is
// up: both sidecars pipe with the client's side first).
func (m *Metrics) countBytes(aToB bool, n int) {
	if aToB {
		m.up.Add(float64(n))
	} else {
		m.down.Add(float64(n))
	}
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

// streamClosed counts a proxied stream that has ended (its result, and its
// bytes unless countBytes has counted them as they moved) and returns its
// "stream closed" log event (info, with the error if it did not end
// cleanly); the caller adds who and where.
func (m *Metrics) streamClosed(log zerolog.Logger, start time.Time, st proxy.Stats, err error, bytesCounted bool) *zerolog.Event {
	if !bytesCounted {
		m.up.Add(float64(st.AToB))
		m.down.Add(float64(st.BToA))
	}
	result, ev := "ok", log.Info()
	switch {
	case err == nil && m.quietConns:
		ev = log.Debug() // --quiet conns
	case errors.Is(err, proxy.ErrIdleTimeout):
		result, ev = "idle_timeout", log.Info().Err(err)
	case err != nil:
		result, ev = "error", log.Info().Err(err)
	}
	m.StreamsTotal.WithLabelValues(result).Inc()
	return ev.Int64("bytes_up", st.AToB).Int64("bytes_down", st.BToA).Dur("duration", time.Since(start))
}
