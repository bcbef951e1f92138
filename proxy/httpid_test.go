package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// httpBackend serves h on a loopback port until the test ends and returns
// its address.
func httpBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String()
}

// startHTTPProxy runs an HTTPIdentityProxy to target until the test ends.
func startHTTPProxy(t *testing.T, target string, onErr func(error), mod ...func(*HTTPConfig)) (*HTTPIdentityProxy, context.CancelFunc, <-chan struct{}) {
	t.Helper()
	cfg := HTTPConfig{Target: target, ConnectTimeout: time.Second, ReadHeaderTimeout: 5 * time.Second, OnBackendError: onErr}
	for _, f := range mod {
		f(&cfg)
	}
	p, err := NewHTTPIdentityProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		p.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-stopped })
	return p, cancel, stopped
}

type served struct {
	read, written int64
	err           error
}

// serveOne hands the server end of a new TCP pair to p as identity and
// returns the client end and what Serve reports once done.
func serveOne(t *testing.T, p *HTTPIdentityProxy, identity string) (net.Conn, <-chan served) {
	t.Helper()
	c, s := tcpPair(t)
	out := make(chan served, 1)
	go func() {
		r, w, err := p.Serve(context.Background(), s, identity)
		out <- served{r, w, err}
	}()
	return c, out
}

// TestHTTPIdentityProxy: every request on a kept-alive connection reaches
// the backend with the connection's identity in IdentityHeader, whatever
// copies the client sent; Serve returns the bytes once the client leaves.
func TestHTTPIdentityProxy(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Got-Id", strings.Join(r.Header.Values(IdentityHeader), "|"))
		w.Header().Set("Got-Host", r.Host)
		io.Copy(w, r.Body)
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)

	const id = "spiffe://test.example/ns/web/sa/a"
	c, done := serveOne(t, p, id)
	br := bufio.NewReader(c)
	for i, forged := range [][]string{nil, {"spiffe://test.example/ns/admin/sa/root"}, {"x", "y"}} {
		req, _ := http.NewRequest("POST", "http://api.internal/x", strings.NewReader("body"))
		for _, f := range forged {
			req.Header.Add(IdentityHeader, f)
		}
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("Got-Id"); got != id || string(b) != "body" || resp.Header.Get("Got-Host") != "api.internal" {
			t.Errorf("request %d (forged %q): backend saw identity %q, host %q, body %q", i, forged, got, resp.Header.Get("Got-Host"), b)
		}
	}
	c.Close()
	select {
	case s := <-done:
		if s.read == 0 || s.written == 0 {
			t.Errorf("Serve counted %d bytes read, %d written", s.read, s.written)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the client closed")
	}
}

// TestHTTPIdentityProxyBackendDown: 502, and the hook says why.
func TestHTTPIdentityProxyBackendDown(t *testing.T) {
	addr := closedAddr(t)
	errs := make(chan error, 1)
	p, _, _ := startHTTPProxy(t, addr, func(err error) {
		select {
		case errs <- err:
		default:
		}
	})
	c, _ := serveOne(t, p, "spiffe://test.example/ns/web/sa/a")
	req, _ := http.NewRequest("GET", "http://api.internal/", nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("status %d, want 502", resp.StatusCode)
	}
	select {
	case err := <-errs:
		var oe *net.OpError
		if !errors.As(err, &oe) {
			t.Errorf("backend error %v, want the dial's net.OpError", err)
		}
	default:
		t.Error("OnBackendError was not called")
	}
}

// TestHTTPIdentityProxyStop: when Run's context ends, Run returns with a
// connection still open (it is closed), and Serve refuses new ones.
func TestHTTPIdentityProxyStop(t *testing.T) {
	if _, err := NewHTTPIdentityProxy(HTTPConfig{Target: "nohost"}); err == nil {
		t.Error("NewHTTPIdentityProxy accepted a target without a port")
	}
	p, cancel, stopped := startHTTPProxy(t, "127.0.0.1:1", nil)
	c, done := serveOne(t, p, "id")
	// Half a request: the connection is active, not idle.
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Run stopped")
	}
	c2, s2 := tcpPair(t)
	if r, w, _ := p.Serve(context.Background(), s2, "id"); r != 0 || w != 0 {
		t.Errorf("Serve after stop: %d/%d bytes", r, w)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("connection given to a stopped proxy: read %v, want EOF (closed)", err)
	}
}

// TestHTTPIdentityHeaderSpellings: no spelling of the identity header a
// client sends reaches the backend — case, duplicates, underscores (which
// CGI-style backends fold into dashes), a Connection: option naming it, a
// trailer — only the authenticated identity does.
func TestHTTPIdentityHeaderSpellings(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "hdr %v trailer %v", r.Header, r.Trailer)
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)
	c, _ := serveOne(t, p, "real-id")
	br := bufio.NewReader(c)
	for _, raw := range []string{
		"POST /a HTTP/1.1\r\nHost: x\r\nTrailer: X-Milagro-Client-Id\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Milagro-Client-Id: admin\r\n\r\n",
		"GET /b HTTP/1.1\r\nHost: x\r\nX_Milagro_Client_Id: admin\r\nx-milagro-client-id: admin\r\nConnection: X-Milagro-Client-Id\r\n\r\n",
		"GET /c HTTP/1.1\r\nHost: x\r\nx_MILAGRO-client_id: admin\r\n\r\n",
	} {
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), "admin") || !strings.Contains(string(b), "real-id") {
			t.Errorf("backend saw %s; want only the identity real-id", b)
		}
	}
}

// TestHTTPIdentityProxyHalfClose: a client that half-closes after its
// request (nc -N, HTTP/1.0 scripts) gets the answer, as in TCP mode. (A
// half-close and a client gone look alike, an EOF, so the backend request
// of a request that said it was the connection's last is not cancelled by
// that EOF; it is when the proxy closes the connection, at shutdown here.
// Any other request's is cancelled by the EOF: TestHTTPIdentityProxyClientGone.)
func TestHTTPIdentityProxyHalfClose(t *testing.T) {
	canceled := make(chan struct{}, 1)
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" {
			<-r.Context().Done()
			canceled <- struct{}{}
			return
		}
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "hello")
	}))
	p, stop, _ := startHTTPProxy(t, backend, nil)
	c, _ := serveOne(t, p, "id")
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.HasSuffix(string(b), "hello") {
		t.Errorf("half-closing client got %q, %v; want 200 hello", b, err)
	}

	c2, _ := serveOne(t, p, "id")
	io.WriteString(c2, "GET /wait HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c2.(*net.TCPConn).CloseWrite()
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Error("the backend request was not cancelled when the proxy closed its connection")
	}
}

// TestHTTPIdentityProxyClientGone: a client that gives up on a request
// (closes its connection, here after 100 ms) ends the backend request at
// once, as behind nginx or Envoy; before, it ran on (and held its stream)
// until the backend answered, for ever with a hung backend.
func TestHTTPIdentityProxyClientGone(t *testing.T) {
	canceled := make(chan struct{}, 1)
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			canceled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	var backendErrors atomic.Int32
	p, _, _ := startHTTPProxy(t, backend, func(error) { backendErrors.Add(1) })
	c, out := serveOne(t, p, "id")
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend request went on after its client left")
	}
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		t.Fatal("Serve still holds the connection of a client that left")
	}
	if n := backendErrors.Load(); n != 0 {
		t.Errorf("a client that left counted as %d backend errors", n)
	}
}

// TestHTTPIdentityProxyClientBodyErrors: an upload the client breaks off
// is the client's failure: 400 (to a client that still reads), and not
// reported as a backend error (it had marked a healthy backend down). A
// backend that fails is still reported: TestHTTPIdentityProxyBackendDown.
func TestHTTPIdentityProxyClientBodyErrors(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return
		}
		io.WriteString(w, "ok")
	}))
	var mu sync.Mutex
	var reported []error
	p, _, _ := startHTTPProxy(t, backend, func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() })
	for _, req := range []string{
		"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789",
		"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz",
	} {
		c, _ := serveOne(t, p, "id")
		io.WriteString(c, req)
		time.Sleep(100 * time.Millisecond) // the body is being forwarded
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(b), "HTTP/1.1 400") {
			t.Errorf("%q then EOF: got %q, want 400", req[:30], b)
		}
	}
	mu.Lock()
	if len(reported) != 0 {
		t.Errorf("the client's broken uploads were reported as backend errors: %v", reported)
	}
	mu.Unlock()

}

// TestHTTPIdentityProxyTransparent: the backend sees the app's request as
// sent, and the app the backend's answer: no Accept-Encoding added, no
// answer unpacked (Go's transport would ask for gzip and unpack it,
// dropping Content-Length and keeping the gzip version's ETag).
func TestHTTPIdentityProxyTransparent(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Got-Accept-Encoding", r.Header.Get("Accept-Encoding"))
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("Accept-Encoding") == "gzip" {
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", "6")
			w.Write([]byte("GZDATA"))
			return
		}
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("plain"))
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)
	for _, tc := range []struct{ ae, wantAE, wantBody, wantCE string }{
		{"", "", "plain", ""},
		{"gzip", "gzip", "GZDATA", "gzip"},
	} {
		c, _ := serveOne(t, p, "id")
		req := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
		if tc.ae != "" {
			req += "Accept-Encoding: " + tc.ae + "\r\n"
		}
		io.WriteString(c, req+"\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		c.Close()
		if got := resp.Header.Get("Got-Accept-Encoding"); got != tc.wantAE {
			t.Errorf("app sent Accept-Encoding %q: backend saw %q", tc.ae, got)
		}
		if string(body) != tc.wantBody || resp.Header.Get("Content-Encoding") != tc.wantCE || resp.ContentLength != int64(len(tc.wantBody)) {
			t.Errorf("app sent Accept-Encoding %q: got body %q, Content-Encoding %q, length %d; want %q, %q, %d",
				tc.ae, body, resp.Header.Get("Content-Encoding"), resp.ContentLength, tc.wantBody, tc.wantCE, len(tc.wantBody))
		}
	}
}

// TestHTTPIdentityProxyResponseTimeout: a backend that does not answer
// within ResponseTimeout gets the client a 504, reported as the backend's
// failure.
func TestHTTPIdentityProxyResponseTimeout(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	var backendErrors atomic.Int32
	p, _, _ := startHTTPProxy(t, backend, func(error) { backendErrors.Add(1) }, func(c *HTTPConfig) { c.ResponseTimeout = 300 * time.Millisecond })
	c, _ := serveOne(t, p, "id")
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); !strings.HasPrefix(string(b), "HTTP/1.1 504") {
		t.Errorf("got %q, want 504", b)
	}
	if n := backendErrors.Load(); n != 1 {
		t.Errorf("%d backend errors reported, want 1", n)
	}
}

// TestHTTPIdentityProxyErrorLogAndCount: net/http's own error lines go to
// ErrorLog (they went to the standard logger: plain text in a JSON log),
// and Count sees the bytes as they move, before the connection ends.
func TestHTTPIdentityProxyErrorLogAndCount(t *testing.T) {
	flushed := make(chan struct{})
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/short" {
			w.Header().Set("Content-Length", "100")
			w.Write([]byte("only nine"))
			return // net/http closes: the proxy's body copy fails
		}
		w.Write([]byte("first part\n"))
		w.(http.Flusher).Flush()
		<-flushed
	}))
	var logged syncBuf
	var up, down atomic.Int64
	p, _, _ := startHTTPProxy(t, backend, nil, func(c *HTTPConfig) {
		c.ErrorLog = log.New(&logged, "", 0)
		c.Count = func(isUp bool, n int) {
			if isUp {
				up.Add(int64(n))
			} else {
				down.Add(int64(n))
			}
		}
	})
	c, _ := serveOne(t, p, "id")
	io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l == "first part\n" || strings.HasSuffix(l, "first part\n") {
			break
		}
	}
	// The writer counts right after its write returns, which may be just
	// after the reader has the bytes: wait a little, the answer still open.
	deadline := time.Now().Add(2 * time.Second)
	for (up.Load() == 0 || down.Load() == 0) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if u, d := up.Load(), down.Load(); u == 0 || d == 0 {
		t.Errorf("while the answer streams, Count saw %d bytes up and %d down, want both > 0", u, d)
	}
	close(flushed)
	c.Close()

	c2, _ := serveOne(t, p, "id")
	io.WriteString(c2, "GET /short HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.ReadAll(c2)
	deadline = time.Now().Add(5 * time.Second)
	for !strings.Contains(logged.String(), "ReverseProxy read error") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logged.String(), "ReverseProxy read error") {
		t.Errorf("ErrorLog got %q, want net/http's body copy error", logged.String())
	}
}

// syncBuf is a bytes.Buffer safe for a logger's writes and a test's reads.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestHTTPIdentityProxyUpgrades: a WebSocket upgrade reaches the backend
// with the identity set (a forged copy removed) and then carries bytes
// both ways; any other upgrade (h2c) goes through as a plain request, or
// the backend would read requests this proxy never rewrote.
func TestHTTPIdentityProxyUpgrades(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			w.Header().Set("Got-Id", r.Header.Get(IdentityHeader))
			io.WriteString(w, "plain")
			return
		}
		if r.Header.Get(IdentityHeader) != "spiffe://a/b" || !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "bad upgrade: "+r.Header.Get("Upgrade")+" "+r.Header.Get(IdentityHeader), http.StatusBadRequest)
			return
		}
		c, brw, ok := switchToWebSocket(w)
		if !ok {
			return
		}
		defer c.Close()
		buf := make([]byte, 5)
		if _, err := io.ReadFull(brw, buf); err == nil {
			c.Write(append([]byte("echo:"), buf...))
		}
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)

	c, _ := serveOne(t, p, "spiffe://a/b")
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Milagro-Client-Id: forged\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("WebSocket upgrade: %v %v", resp, err)
	}
	io.WriteString(c, "hello")
	got := make([]byte, 10)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "echo:hello" {
		t.Errorf("after the upgrade: %q, %v; want echo:hello", got, err)
	}
	c.Close()

	c2, _ := serveOne(t, p, "spiffe://a/b")
	io.WriteString(c2, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n")
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "plain" || resp.Header.Get("Got-Id") != "spiffe://a/b" {
		t.Errorf("h2c upgrade: %d %q (identity %q), want a plain 200 with the identity", resp.StatusCode, body, resp.Header.Get("Got-Id"))
	}
}

// TestHTTPIdentityProxyRetiring: on a connection whose carrier is going
// away every final answer says Connection: close and the connection ends
// after it, an answer after a 103 too (its headers are cleared after the
// 1xx); a 101 does not (its connection is handed over).
func TestHTTPIdentityProxyRetiring(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "after hints")
		case "/ws":
			c, _, ok := switchToWebSocket(w)
			if !ok {
				return
			}
			defer c.Close()
		default:
			io.WriteString(w, "plain")
		}
	}))
	p, _, _ := startHTTPProxy(t, backend, nil, func(c *HTTPConfig) { c.Retiring = func(net.Conn) bool { return true } })
	for _, path := range []string{"/", "/hints"} {
		c, _ := serveOne(t, p, "id")
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c) // ends only if the proxy closes
		if err != nil {
			t.Errorf("%s: %v after %q, want the connection closed after the answer", path, err, b)
		}
		final := string(b[strings.LastIndex(string(b), "HTTP/1.1 "):])
		if !strings.Contains(final, "Connection: close") {
			t.Errorf("%s: final answer %q without Connection: close", path, final)
		}
	}
	c, _ := serveOne(t, p, "id")
	io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols || strings.Contains(strings.ToLower(strings.Join(resp.Header.Values("Connection"), ",")), "close") {
		t.Errorf("101 on a retiring connection: %v, %v; want an upgrade without Connection: close", resp, err)
	}
}

// switchToWebSocket is a test backend's side of a WebSocket upgrade: it
// takes the connection over and answers 101.
func switchToWebSocket(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, bool) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, false
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	brw.Flush()
	return c, brw, true
}

// TestHTTPIdentityProxyCloseRetiredIdle: CloseRetiredIdle closes the connections
// on a carrier going away that wait for their next request, and only
// those: not one of another carrier, not one whose request is being
// answered (it gets its answer), not one handed over to a WebSocket.
func TestHTTPIdentityProxyCloseRetiredIdle(t *testing.T) {
	release := make(chan struct{})
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			<-release
			io.WriteString(w, "slow")
		case "/ws":
			c, brw, ok := switchToWebSocket(w)
			if !ok {
				return
			}
			defer c.Close()
			io.Copy(c, brw) // echo
		default:
			io.WriteString(w, "plain")
		}
	}))
	var mu sync.Mutex
	retiring := map[net.Conn]bool{} // carriers that go away once goingAway is set
	var goingAway atomic.Bool
	p, _, _ := startHTTPProxy(t, backend, nil, func(c *HTTPConfig) {
		c.Retiring = func(c net.Conn) bool {
			mu.Lock()
			defer mu.Unlock()
			return goingAway.Load() && retiring[c]
		}
	})
	open := func(retire bool) (net.Conn, *bufio.Reader) {
		c, s := tcpPair(t)
		mu.Lock()
		retiring[s] = retire
		mu.Unlock()
		go p.Serve(context.Background(), s, "id")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(c net.Conn, br *bufio.Reader, path string) (string, error) {
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	idleC, idleR := open(true)
	otherC, otherR := open(false)
	busyC, busyR := open(true)
	wsC, wsR := open(true)
	for _, x := range []struct {
		c  net.Conn
		br *bufio.Reader
	}{{idleC, idleR}, {otherC, otherR}} {
		if b, err := get(x.c, x.br, "/"); err != nil || b != "plain" {
			t.Fatalf("first request: %q, %v", b, err)
		}
	}
	slow := make(chan string, 1)
	go func() {
		b, err := get(busyC, busyR, "/slow")
		if err != nil {
			b = err.Error()
		}
		slow <- b
	}()
	io.WriteString(wsC, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp, err := http.ReadResponse(wsR, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	waitFor(t, 5*time.Second, "the slow request at the backend and the idle connections idle", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.idle) == 2
	})

	goingAway.Store(true)
	if n := p.CloseRetiredIdle(); n != 1 {
		t.Errorf("CloseRetiredIdle closed %d connections, want 1", n)
	}
	if b, err := idleR.ReadByte(); err != io.EOF {
		t.Errorf("idle matching connection: read %q, %v; want EOF", b, err)
	}
	if b, err := get(otherC, otherR, "/"); err != nil || b != "plain" {
		t.Errorf("idle connection of another carrier: %q, %v; want it still served", b, err)
	}
	close(release)
	if b := <-slow; b != "slow" {
		t.Errorf("connection busy at CloseRetiredIdle: %q, want its answer", b)
	}
	io.WriteString(wsC, "still here")
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(wsR, buf); err != nil || string(buf) != "still here" {
		t.Errorf("WebSocket at CloseRetiredIdle: %q, %v; want its echo", buf, err)
	}
}

// TestClientBodyEOFSticky: a request body read to its end reads io.EOF
// again after net/http's server has closed it (when the answer's header
// is written), as the transport's last look at the body may come then;
// an error there made the transport close the backend connection and cut
// the answer short, about one keep-alive POST in 300 under load.
func TestClientBodyEOFSticky(t *testing.T) {
	got := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := &clientBody{ReadCloser: r.Body}
		if _, err := io.ReadAll(b); err != nil {
			got <- err
			return
		}
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush() // the server closes r.Body here
		_, err := b.Read(make([]byte, 1))
		got <- err
	}))
	defer srv.Close()
	resp, err := http.Post(srv.URL, "text/plain", strings.NewReader("the whole body"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := <-got; err != io.EOF {
		t.Errorf("read after the answer began: %v, want io.EOF", err)
	}
}

// TestHTTPIdentityProxyAnswerCut: a backend that breaks off an answer
// under way (it dies mid-body) is reported, as ErrAnswerCut, to
// OnBackendError and by Serve for the stream's line; the client reads a
// truncated answer, never a complete-looking one. An answer read whole
// reports nothing.
func TestHTTPIdentityProxyAnswerCut(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/whole" {
			io.WriteString(w, "whole")
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
		brw.Flush()
		c.Close()
	}))
	errs := make(chan error, 4)
	p, _, _ := startHTTPProxy(t, backend, func(err error) { errs <- err })
	for _, tc := range []struct {
		path string
		cut  bool
	}{{"/whole", false}, {"/cut", true}} {
		c, res := serveOne(t, p, "id")
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET "+tc.path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		// Cut: the header may not have left the proxy's buffer when the
		// connection is closed under it.
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		var b []byte
		if err == nil {
			b, err = io.ReadAll(resp.Body)
		}
		if tc.cut != (err != nil) {
			t.Errorf("%s: read %q, %v", tc.path, b, err)
		}
		c.Close()
		got := <-res
		if tc.cut != errors.Is(got.err, ErrAnswerCut) {
			t.Errorf("%s: Serve reported %v", tc.path, got.err)
		}
		if tc.cut {
			select {
			case err := <-errs:
				if !errors.Is(err, ErrAnswerCut) {
					t.Errorf("OnBackendError(%v), want ErrAnswerCut", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("OnBackendError was not called")
			}
		}
	}
	select {
	case err := <-errs:
		t.Errorf("another OnBackendError: %v", err)
	default:
	}
}

// TestHTTPIdentityProxyBackendConnPerConn: each served connection has
// backend connections of its own, as in TCP mode: its keep-alive requests
// share one, another client's (or another connection's) never do, so a
// backend that keeps a login per connection (NTLM, Negotiate) does not
// serve one client as another; and it is closed when its connection is.
func TestHTTPIdentityProxyBackendConnPerConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	login := map[string]string{} // backend connection → who logged in on it
	closed := map[string]bool{}
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			if u := r.Header.Get("Authorization"); u != "" {
				login[r.RemoteAddr] = u
			}
			fmt.Fprintf(w, "%s %s", r.RemoteAddr, login[r.RemoteAddr])
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				mu.Lock()
				closed[c.RemoteAddr().String()] = true
				mu.Unlock()
			}
		},
	}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	p, _, _ := startHTTPProxy(t, ln.Addr().String(), nil)

	get := func(c net.Conn, br *bufio.Reader, auth string) (conn, user string) {
		t.Helper()
		req := "GET / HTTP/1.1\r\nHost: x\r\n"
		if auth != "" {
			req += "Authorization: " + auth + "\r\n"
		}
		io.WriteString(c, req+"\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		conn, user, _ = strings.Cut(string(b), " ")
		return conn, user
	}
	a, aDone := serveOne(t, p, "spiffe://t/alice")
	a.SetDeadline(time.Now().Add(10 * time.Second))
	ar := bufio.NewReader(a)
	a1, _ := get(a, ar, "NTLM alice-admin")
	a2, who := get(a, ar, "")
	if a1 != a2 || who != "NTLM alice-admin" {
		t.Errorf("keep-alive requests of one connection: backend connections %s, %s (login %q); want one, still logged in", a1, a2, who)
	}
	b, _ := serveOne(t, p, "spiffe://t/bob")
	b.SetDeadline(time.Now().Add(10 * time.Second))
	b1, who := get(b, bufio.NewReader(b), "")
	if b1 == a1 || who != "" {
		t.Errorf("another client's request went on backend connection %s (login %q); alice's is %s", b1, who, a1)
	}
	a.Close()
	<-aDone
	waitFor(t, 5*time.Second, "alice's backend connection closed with hers", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return closed[a1] && !closed[b1]
	})
}

// TestHTTPIdentityProxyForwardedHeaders: X-Forwarded-* and Forwarded pass
// as the client sent them (TCP mode does not touch them), with this hop
// added to X-Forwarded-For; an Expect: 100-continue request gets one 100
// Continue, not the proxy's and the backend's.
func TestHTTPIdentityProxyForwardedHeaders(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "Expect"} {
			fmt.Fprintf(w, "%s=%s\n", h, strings.Join(r.Header.Values(h), "|"))
		}
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)
	c, _ := serveOne(t, p, "id")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"+
		"X-Forwarded-Host: shop.example\r\nForwarded: for=203.0.113.7;proto=https\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 100") {
		t.Fatalf("first line %q, %v; want 100 Continue", status, err)
	}
	br.ReadString('\n') // the 100's empty line
	io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil) // a second 100 would be read here
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	want := "X-Forwarded-For=203.0.113.7, 127.0.0.1\nX-Forwarded-Host=shop.example\nX-Forwarded-Proto=https\nForwarded=for=203.0.113.7;proto=https, for=127.0.0.1\nExpect=100-continue\n"
	if resp.StatusCode != 200 || string(b) != want {
		t.Errorf("HTTP %d, backend saw:\n%s\nwant:\n%s", resp.StatusCode, b, want)
	}
}

// TestHTTPIdentityProxyFlushesAtOnce: an answer's bytes reach the client
// as the backend sends them, Content-Length or not (ReverseProxy held a
// sized answer until 4 KiB had come).
func TestHTTPIdentityProxyFlushesAtOnce(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "later")
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)
	c, _ := serveOne(t, p, "id")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first" {
		t.Errorf("the answer's first bytes: %q, %v; want them before the rest is sent", buf, err)
	}
}

// TestHTTPIdentityProxyExpectRefusedEarly: a backend that refuses an
// Expect: 100-continue request on its header (a 413 after a moment's
// thought) has its answer reach the client before any 100 Continue, so
// the client never starts the upload (the proxy's own 100 went out at
// once, and the client uploaded megabytes before the 413).
func TestHTTPIdentityProxyExpectRefusedEarly(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
	}))
	p, _, _ := startHTTPProxy(t, backend, nil)
	c, _ := serveOne(t, p, "id")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n")
	status, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 413") {
		t.Errorf("first answer %q, %v; want the backend's 413, no 100 Continue before it", status, err)
	}
}
