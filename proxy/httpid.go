package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
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
	// OnBackendError, if set, is told why a request got 502 Bad Gateway
	// (or 504): the backend failed it; or, with an error wrapping
	// ErrAnswerCut, why an answer already under way broke off (the
	// client reads a truncated answer). A request its client abandoned
	// (the connection closed, or the body broke off) is not the backend's
	// failure and is not reported.
	OnBackendError func(error)
	// Count, if set, is called as bytes move on the served connections:
	// up is what the client sent (read), else what it was sent.
	Count func(up bool, n int)
	// ResponseTimeout bounds the wait for the backend's response header
	// (504 Gateway Timeout after it); 0: no bound.
	ResponseTimeout time.Duration
	// ErrorLog receives net/http's own error lines (a body copy cut
	// short, a handler panic); nil: the standard logger.
	ErrorLog *log.Logger
	// Retiring, if set, reports whether a served connection's carrier is
	// going away (a secure session past its age): answers on it then
	// say Connection: close, so that the app's keep-alive connection
	// ends and its next one goes to a new session.
	Retiring func(net.Conn) bool
}

// ErrAnswerCut: reading a backend's answer failed after its header had
// been passed on: the client got a truncated answer.
var ErrAnswerCut = errors.New("backend answer cut short")

// backendBody reports the first error reading a backend's answer body
// that is not the client's doing (its request's context still live).
type backendBody struct {
	io.ReadCloser
	ctx    context.Context
	once   sync.Once
	report func(error)
}

func (b *backendBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.ctx.Err() == nil {
		b.once.Do(func() { b.report(fmt.Errorf("%w: %w", ErrAnswerCut, err)) })
	}
	return n, err
}

// clientBodyError is an error reading a request's body from the client:
// the client broke off an upload (or sent a malformed chunked body). The
// backend request fails with it, but the backend did nothing wrong.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string {
	return "read request body from the client: " + e.err.Error()
}
func (e *clientBodyError) Unwrap() error { return e.err }

// clientBody tags the errors of a request body read from the client, and
// remembers one: the client's EOF also cancels the request, so the error
// the backend request ends with may be that cancellation instead.
//
// Its EOF is sticky. net/http's server closes a request's body when the
// answer's header is written, and the transport, having sent the whole
// body, may read it once more to see its end only after that (its write
// loop and the answer race): that read would fail ("invalid Read on closed
// Body"), and the transport would close the backend connection under the
// answer being copied, cutting it short (golang/go#40747).
type clientBody struct {
	io.ReadCloser
	failed atomic.Bool
	eof    atomic.Bool
}

func (b *clientBody) Read(p []byte) (int, error) {
	if b.eof.Load() {
		return 0, io.EOF
	}
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	if err != nil && err != io.EOF {
		b.failed.Store(true)
		err = &clientBodyError{err}
	}
	return n, err
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
	count func(up bool, n int)
	once  sync.Once

	mu       sync.Mutex
	idle     map[*identityConn]struct{} // served connections between requests
	retiring func(net.Conn) bool        // HTTPConfig.Retiring
}

// retiredLinger is how long the app may keep a retired idle connection
// open after it has been closed here (see closeRetired).
const retiredLinger = 2 * time.Second

// closeRetired closes a served connection that carries no request, on a
// carrier going away. Over a secure stream the app's end is reset if the
// app has not closed it within retiredLinger: an HTTP client pool that
// notices a closed connection only at its next use would otherwise hold
// the stream, and the old session, until then.
func closeRetired(ic *identityConn) {
	if c, ok := ic.Conn.(interface{ CloseOrReset(time.Duration) error }); ok {
		_ = c.CloseOrReset(retiredLinger)
	}
	ic.Close()
}

type identityKey struct{}

// servedConn is the served connection a request (or its backend request,
// whose context derives from it) came on.
func servedConn(ctx context.Context) (*identityConn, bool) {
	ic, ok := ctx.Value(identityKey{}).(*identityConn)
	return ic, ok
}

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
	p := &HTTPIdentityProxy{conns: make(chan net.Conn), stop: make(chan struct{}), count: cfg.Count, idle: make(map[*identityConn]struct{}), retiring: cfg.Retiring}
	p.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: cfg.KeepAlive}
			return d.DialContext(ctx, network, addr)
		},
		// The template of each served connection's own transport
		// (identityConn.transport), whose requests come one at a time.
		MaxIdleConnsPerHost: 1,
		// No idle timeout of its own: the served connection's (IdleTimeout)
		// bounds the pair, and its Close closes the backend connection.
		// One dropped under it would lose a per-connection login.
		IdleConnTimeout: 0,
		// With Expect: 100-continue the body goes to the backend, and the
		// client gets net/http's 100 Continue, only once the backend has
		// said 100 (or after a second, for one that ignores Expect): an
		// early refusal (413, 401) stops the upload before it starts.
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: cfg.ResponseTimeout,
		// What the app asked for, byte for byte: Go's transport would
		// otherwise ask for gzip itself and unpack the answer, dropping
		// Content-Length and leaving the gzip version's ETag on it.
		DisableCompression: true,
	}
	// retiring: the answer to r says Connection: close (net/http then
	// closes after it), checked when the answer is made.
	retiring := func(r *http.Request) bool {
		ic, ok := servedConn(r.Context())
		return ok && cfg.Retiring != nil && cfg.Retiring(ic.Conn)
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
			if ic, ok := servedConn(r.In.Context()); ok {
				r.Out.Header.Set(IdentityHeader, ic.identity)
			}
			// ReverseProxy drops these before Rewrite: pass them as the
			// client's app sent them, as TCP mode does (what it asserts,
			// not authenticated: the identity header is), and add this
			// hop to X-Forwarded-For and Forwarded, as a reverse proxy does
			// (RFC 7239 §4).
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"} {
				if v := r.In.Header.Values(h); len(v) > 0 {
					r.Out.Header[h] = slices.Clone(v)
				}
			}
			if ip, _, err := net.SplitHostPort(r.In.RemoteAddr); err == nil {
				xff := ip
				if prior := r.Out.Header.Values("X-Forwarded-For"); len(prior) > 0 {
					xff = strings.Join(prior, ", ") + ", " + ip
				}
				r.Out.Header.Set("X-Forwarded-For", xff)
				if prior := r.Out.Header.Values("Forwarded"); len(prior) > 0 {
					elem := "for=" + ip
					if strings.Contains(ip, ":") {
						elem = `for="[` + ip + `]"`
					}
					r.Out.Header.Set("Forwarded", strings.Join(prior, ", ")+", "+elem)
				}
			}
		},
		// Each served connection has its backend connection(s) of its
		// own, closed with it, as in TCP mode: a backend that keeps state
		// per connection (NTLM or Negotiate logins, a session bound to
		// the socket) never serves one client's request on another's.
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if ic, ok := servedConn(r.Context()); ok {
				return ic.transport(p.tr).RoundTrip(r)
			}
			return p.tr.RoundTrip(r)
		}),
		// Bytes go on as they come, as in TCP mode (a slow answer with a
		// Content-Length was held until 4 KiB had arrived).
		FlushInterval: -1,
		ErrorLog:      cfg.ErrorLog,
		// After the hop-by-hop headers are removed and any 1xx answer's
		// headers cleared; not on a 101, whose connection is handed over.
		ModifyResponse: func(res *http.Response) error {
			if res.StatusCode == http.StatusSwitchingProtocols {
				return nil // its Body is the connection, handed over as it is
			}
			if retiring(res.Request) {
				res.Header.Set("Connection", "close")
			}
			if ic, ok := servedConn(res.Request.Context()); ok && res.Body != nil && res.Body != http.NoBody {
				res.Body = &backendBody{ReadCloser: res.Body, ctx: res.Request.Context(), report: func(err error) {
					ic.fail(err)
					if cfg.OnBackendError != nil {
						cfg.OnBackendError(err)
					}
				}}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if retiring(r) {
				w.Header().Set("Connection", "close")
			}
			var cbe *clientBodyError
			cb, _ := r.Body.(*clientBody)
			switch {
			case errors.As(err, &cbe) || cb != nil && cb.failed.Load():
				http.Error(w, "incomplete request body", http.StatusBadRequest)
			case r.Context().Err() != nil:
				// The client closed its connection (see the handler): a
				// client that is gone reads nothing; one that only
				// half-closed learns why (the EOF may also have cut its
				// body before the body's own error came through).
				http.Error(w, "request cancelled: the connection was closed before the answer (a request that half-closes must say Connection: close)", http.StatusBadRequest)
			case isTimeout(err):
				if cfg.OnBackendError != nil {
					cfg.OnBackendError(err)
				}
				http.Error(w, "backend timed out", http.StatusGatewayTimeout)
			default:
				if cfg.OnBackendError != nil {
					cfg.OnBackendError(err)
				}
				http.Error(w, "backend unreachable", http.StatusBadGateway)
			}
		},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// net/http cancels a request when its connection reads EOF.
			// That is how a client that gives up (closes) is seen, and
			// the backend request then ends, as it would behind nginx or
			// Envoy. A request that says it is the connection's last
			// (HTTP/1.0, Connection: close) may be followed by a
			// half-close (nc -N, scripts) and still reads the answer:
			// its backend request ends only when the connection is
			// closed. (A context with a Done channel also keeps
			// ReverseProxy off CloseNotify, which fires on that EOF.)
			ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
			defer cancel()
			if ic, ok := servedConn(r.Context()); ok {
				eof := r.Context().Done() // net/http's: EOF or a reset
				if r.Close {
					eof = nil
				}
				go func() { // ends with the request (cancel) at the latest
					select {
					case <-ic.done:
						cancel()
					case <-eof:
						cancel()
					case <-ctx.Done():
					}
				}()
			}
			r = r.WithContext(ctx)
			// Only WebSocket may take the connection over: after any
			// other upgrade (h2c) the backend would read requests this
			// proxy never rewrote, with the client's own identity
			// header. The others go through as plain requests.
			if up := r.Header.Get("Upgrade"); up != "" && !strings.EqualFold(strings.TrimSpace(up), "websocket") {
				r.Header.Del("Upgrade")
			}
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = &clientBody{ReadCloser: r.Body}
			}
			// The backend's 100 Continue is not passed on: net/http sends
			// the client its own when the transport reads the body, which
			// it does after the backend's (ExpectContinueTimeout).
			rp.ServeHTTP(no100{w}, r)
		}),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		ErrorLog:          cfg.ErrorLog,
		ConnState:         p.trackIdle,
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
// written to it, and the first answer on it that the backend cut short
// (ErrAnswerCut), if any. If ctx ends or the proxy stops before taking
// conn, conn is closed and nothing was served.
func (p *HTTPIdentityProxy) Serve(ctx context.Context, conn net.Conn, identity string) (read, written int64, err error) {
	ic := &identityConn{Conn: conn, identity: identity, count: p.count, done: make(chan struct{})}
	select {
	case p.conns <- ic:
	case <-ctx.Done():
		conn.Close()
		return 0, 0, nil
	case <-p.stop:
		conn.Close()
		return 0, 0, nil
	}
	<-ic.done
	if e := ic.err.Load(); e != nil {
		err = *e
	}
	return ic.read.Load(), ic.written.Load(), err
}

// identityConn is a served connection: its peer's identity, byte counts,
// and done, closed when net/http closes it.
type identityConn struct {
	net.Conn
	identity      string
	count         func(up bool, n int) // nil: not counted as the bytes move
	read, written atomic.Int64
	err           atomic.Pointer[error] // the first answer cut short
	once          sync.Once
	done          chan struct{}

	trMu   sync.Mutex
	tr     *http.Transport // its backend connections (transport)
	closed bool
}

func (c *identityConn) fail(err error) { c.err.CompareAndSwap(nil, &err) }

// transport is c's own transport to the backend, a copy of base made at
// its first request.
func (c *identityConn) transport(base *http.Transport) *http.Transport {
	c.trMu.Lock()
	defer c.trMu.Unlock()
	if c.tr == nil {
		// A request after Close (net/http's last Close after the
		// handler closes what it leaves) is not special-cased here.
		c.tr = base.Clone()
	}
	return c.tr
}

// no100 drops a 100 Continue written to it (other 1xx answers, such as
// 103 Early Hints, pass).
type no100 struct{ http.ResponseWriter }

func (w no100) WriteHeader(code int) {
	if code != http.StatusContinue {
		w.ResponseWriter.WriteHeader(code)
	}
}

// Unwrap lets http.ResponseController (ReverseProxy's flushes and
// hijacks) reach the connection's writer.
func (w no100) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// roundTripFunc is a function as an http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (c *identityConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	if c.count != nil && n > 0 {
		c.count(true, n)
	}
	return n, err
}

func (c *identityConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	if c.count != nil && n > 0 {
		c.count(false, n)
	}
	return n, err
}

// Close closes the connection and its idle backend connection; one still
// in use is closed when it turns idle (the transport's CloseIdleConnections
// stays in force while no request comes), and net/http calls Close once
// more after the connection's last handler, which closes any left.
func (c *identityConn) Close() error {
	err := c.Conn.Close()
	c.trMu.Lock()
	c.closed = true
	tr := c.tr
	c.trMu.Unlock()
	if tr != nil {
		tr.CloseIdleConnections()
	}
	c.once.Do(func() { close(c.done) })
	return err
}

// isTimeout reports whether err is a timeout: the backend did not answer
// (or could not be dialled) in time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
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

// trackIdle keeps the set of served connections waiting for their next
// request (net/http's StateIdle), for CloseRetiredIdle; and closes one that
// turns idle on a carrier going away (its answer's header went out before
// the carrier began to go away, without Connection: close).
func (p *HTTPIdentityProxy) trackIdle(c net.Conn, st http.ConnState) {
	ic, ok := c.(*identityConn)
	if !ok {
		return
	}
	if st == http.StateIdle && p.retiring != nil && p.retiring(ic.Conn) {
		closeRetired(ic)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if st == http.StateIdle {
		p.idle[ic] = struct{}{}
	} else {
		delete(p.idle, ic)
	}
}

// CloseRetiredIdle closes the served keep-alive connections that are
// waiting for their next request on a carrier going away
// (HTTPConfig.Retiring), and returns how many: call it when a carrier
// begins to go away (a secure session past its age). The connections busy
// on it say Connection: close with their answers, or are closed when they
// turn idle (trackIdle); the idle ones would otherwise hold it until their
// client closes them or IdleTimeout. A psk stream's app end is reset if
// the app has not closed it within a few seconds. As with any server's
// idle timeout, a request already on its way meets a closed connection,
// which an HTTP client retries when the request is idempotent
// (net/http.Server.Shutdown closes idle connections the same way).
func (p *HTTPIdentityProxy) CloseRetiredIdle() int {
	if p.retiring == nil {
		return 0
	}
	p.mu.Lock()
	var closing []*identityConn
	for ic := range p.idle {
		if p.retiring(ic.Conn) {
			closing = append(closing, ic)
			delete(p.idle, ic)
		}
	}
	p.mu.Unlock()
	for _, ic := range closing {
		closeRetired(ic)
	}
	return len(closing)
}

// Drain turns keep-alive off for a shutdown: idle connections are closed
// now, busy ones after their current response.
func (p *HTTPIdentityProxy) Drain() { p.srv.SetKeepAlivesEnabled(false) }
