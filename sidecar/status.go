package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"

	"github.com/milagro-sc/milagro/proxy"
)

// StatusInfo is the /_status document.
type StatusInfo struct {
	Role       string       `json:"role"`
	Identity   string       `json:"identity"`
	Domain     string       `json:"domain"`
	Listen     string       `json:"listen"`
	Forward    string       `json:"forward_proxy,omitempty"` // the client's --forward-proxy address
	Ready      bool         `json:"ready"`
	Draining   bool         `json:"draining"`
	Keys       KeysStatus   `json:"keys"`
	Sessions   int          `json:"sessions"`
	Streams    int          `json:"streams"`
	Handshakes int64        `json:"handshakes_in_flight"`
	Backends   []Reachable  `json:"backends,omitempty"`
	Upstreams  []PoolStatus `json:"upstreams,omitempty"`
	Time       time.Time    `json:"time"`
}

// KeysStatus describes the keys in force and the last reload.
type KeysStatus struct {
	Generation   string    `json:"generation"`
	LoadedAt     time.Time `json:"loaded_at"`
	IssuedAt     time.Time `json:"issued_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	PermitEpochs []uint64  `json:"permit_epochs,omitempty"`
	PermitExpiry time.Time `json:"permit_expires_at,omitzero"`
	LastReload   time.Time `json:"last_reload"`
	LastSource   string    `json:"last_reload_source"`
	LastError    string    `json:"last_reload_error,omitempty"`
	LastFailed   string    `json:"last_reload_failed_generation,omitempty"` // the generation that failed to load
	Watching     bool      `json:"watching"`                                // an inotify watch on the folder (false: the 5 s poll finds changes)
}

// Reachable is what the last dial of a backend found: a stream's own, or
// a probe of /_status's (see backendProbeInterval).
type Reachable struct {
	Name      string    `json:"name"`
	Address   string    `json:"address"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checked_at"`
}

// PoolStatus describes the sessions to one upstream (one address and
// expected identity, however many routes use it).
type PoolStatus struct {
	Upstream string          `json:"upstream"`
	VerifyID string          `json:"verify_id"`
	ServerID string          `json:"server_id,omitempty"` // the identity asked for, when verify-id is a pattern and --server-id names one
	Routes   []string        `json:"routes"`              // the destinations (and "--target") that use it
	Stats    proxy.PoolStats `json:"stats"`
}

func keysStatus(ks *Keystore) KeysStatus {
	k := ks.Current()
	lr := ks.LastReload()
	utc := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.UTC()
	}
	s := KeysStatus{Generation: k.Generation, LoadedAt: utc(k.LoadedAt), IssuedAt: utc(k.IssuedAt), ExpiresAt: utc(k.ExpiresAt),
		PermitExpiry: utc(k.PermitExpiry()), LastReload: utc(lr.At), LastSource: lr.Source, Watching: ks.Watching()}
	for _, p := range k.Permits {
		s.PermitEpochs = append(s.PermitEpochs, p.Epoch)
	}
	if lr.Err != nil {
		s.LastError, s.LastFailed = lr.Err.Error(), lr.Failed
	}
	return s
}

// maxStatusConns bounds the status endpoint's open connections.
const maxStatusConns = 64

// serveStatus runs the status endpoint until ctx ends.
// With pprof, Go's runtime profiles are served under /debug/pprof/ as well
// (heap, goroutine, CPU profile, …): they show internals but never key
// material, which the sidecar keeps out of anything it formats. With
// shutdown (--enable-shutdown), POST /_shutdown from a loopback address
// calls it with the caller's address and answers 202: the drain has begun
// (the endpoint stays up until the drain ends, /readyz answers 503
// meanwhile); from any other address it answers 403.
func serveStatus(ctx context.Context, ln net.Listener, m *Metrics, pprofOn bool, status func(full bool) StatusInfo, shutdown func(from string), log zerolog.Logger) error {
	mux := http.NewServeMux()
	if shutdown != nil {
		mux.HandleFunc("POST /_shutdown", func(w http.ResponseWriter, r *http.Request) {
			// Only from this host (in Kubernetes: a container of the
			// same pod, which shares its network): the status address
			// is reachable by the kubelet's probes, and so by others.
			if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !net.ParseIP(host).IsLoopback() {
				http.Error(w, "/_shutdown is served to loopback callers only\n", http.StatusForbidden)
				return
			}
			shutdown(r.RemoteAddr)
			w.WriteHeader(http.StatusAccepted)
			w.Write([]byte("draining\n"))
		})
	}
	if pprofOn {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /_status", func(w http.ResponseWriter, r *http.Request) {
		st := status(true)
		w.Header().Set("Content-Type", "application/json")
		if !st.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if st := status(false); !st.Ready {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /_metrics/prometheus", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	// Bounded like the data plane: idle keep-alive connections end, and
	// at most maxStatusConns are open (probes and scrapers need a few).
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second,
		ErrorLog: stdLogger(log.With().Str("component", "status").Logger())}
	if pprofOn {
		srv.WriteTimeout = 70 * time.Second // /debug/pprof/profile?seconds=60
	}
	ln = netutil.LimitListener(ln, maxStatusConns)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
