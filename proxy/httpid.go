package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// IdentityHeader carries the authenticated client identity to an HTTP
// backend (the server's --http mode). Any copy the client sends is removed
// first.
const IdentityHeader = "X-Milagro-Client-Id"

// HTTPConfig configures an HTTPIdentityProxy.
type HTTPConfig struct {
	Target         string        // backend: HOST:PORT or unix:PATH
	ConnectTimeout time.Duration // backend dial
	KeepAlive      time.Duration // backend TCP keep-alive: 0 Go's default, negative off
	// ReadHeaderTimeout bounds reading a request's header; IdleTimeout
	// closes a connection with no request for that long (0: none).
	ReadHeaderTimeout, IdleTimeout time.Duration
	// OnBackendError, if set, is told why a request got 502 Bad Gateway.
	OnBackendError func(error)
}

// HTTPIdentityProxy serves HTTP on connections whose peer is already
// authenticated (secure streams) and forwards every request to one backend
// with IdentityHeader set to that connection's identity. Keep-alive
// connections carry many requests; each is rewritten.
type HTTPIdentityProxy struct {
	srv   *http.Server
	tr    *http.Transport
	conns chan net.Conn
	stop  chan struct{}
	once  sync.Once
}

type identityKey struct{}

// NewHTTPIdentityProxy builds the proxy; Run serves.
func NewHTTPIdentityProxy(cfg HTTPConfig) (*HTTPIdentityProxy, error) {
	network, addr, err := ParseAddr(cfg.Target)
	if err != nil {
		return nil, err
	}
	u := &url.URL{Scheme: "http", Host: addr}
	if network == "unix" {
		u.Host = "backend"
	}
	p := &HTTPIdentityProxy{conns: make(chan net.Conn), stop: make(chan struct{})}
	p.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: cfg.KeepAlive}
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			// Every spelling of the header goes, X_Milagro_Client_Id too:
			// CGI-style backends (HTTP_X_MILAGRO_CLIENT_ID) fold _ into -.
			for k := range r.Out.Header {
				if strings.EqualFold(strings.ReplaceAll(k, "_", "-"), IdentityHeader) {
					delete(r.Out.Header, k)
				}
			}
			if ic, ok := r.In.Context().Value(identityKey{}).(*identityConn); ok {
				r.Out.Header.Set(IdentityHeader, ic.identity)
			}
		},
		Transport: p.tr,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if cfg.OnBackendError != nil {
				cfg.OnBackendError(err)
			}
			http.Error(w, "backend unreachable", http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// net/http cancels a request when its connection reads EOF,
			// but a client that half-closes after its request (nc -N,
			// HTTP/1.0 scripts) still reads the answer: the backend
			// request ends only when the connection is closed. (A
			// context with a Done channel also keeps ReverseProxy off
			// CloseNotify, which fires on that EOF too.)
			ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
			defer cancel()
			if ic, ok := r.Context().Value(identityKey{}).(*identityConn); ok {
				go func() { // ends with the request (cancel) at the latest
					select {
					case <-ic.done:
						cancel()
					case <-ctx.Done():
					}
				}()
			}
			rp.ServeHTTP(w, r.WithContext(ctx))
		}),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if ic, ok := c.(*identityConn); ok {
				return context.WithValue(ctx, identityKey{}, ic)
			}
			return ctx
		},
	}
	return p, nil
}

// Run serves the connections handed to Serve until ctx ends, then shuts
// the server down (in-flight requests get a second) and returns.
func (p *HTTPIdentityProxy) Run(ctx context.Context) {
	ln := &chanListener{ch: p.conns, done: p.stop}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = p.srv.Serve(ln)
	}()
	<-ctx.Done()
	p.once.Do(func() { close(p.stop) })
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if p.srv.Shutdown(sctx) != nil {
		_ = p.srv.Close() // requests still running after the second: cut
	}
	<-served
	p.tr.CloseIdleConnections()
}

// Serve hands conn, whose peer is identity, to the proxy and returns once
// the proxy is done with it (conn is closed), with the bytes read from and
// written to it. If ctx ends or the proxy stops before taking conn, conn
// is closed and nothing was served.
func (p *HTTPIdentityProxy) Serve(ctx context.Context, conn net.Conn, identity string) (read, written int64) {
	ic := &identityConn{Conn: conn, identity: identity, done: make(chan struct{})}
	select {
	case p.conns <- ic:
	case <-ctx.Done():
		conn.Close()
		return 0, 0
	case <-p.stop:
		conn.Close()
		return 0, 0
	}
	<-ic.done
	return ic.read.Load(), ic.written.Load()
}

// identityConn is a served connection: its peer's identity, byte counts,
// and done, closed when net/http closes it.
type identityConn struct {
	net.Conn
	identity      string
	read, written atomic.Int64
	once          sync.Once
	done          chan struct{}
}

func (c *identityConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *identityConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *identityConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// chanListener is a net.Listener whose connections come from a channel.
type chanListener struct {
	ch   chan net.Conn
	done <-chan struct{}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// Drain turns keep-alive off for a shutdown: idle connections are closed
// now, busy ones after their current response.
func (p *HTTPIdentityProxy) Drain() { p.srv.SetKeepAlivesEnabled(false) }
