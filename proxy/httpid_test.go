package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
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
func startHTTPProxy(t *testing.T, target string, onErr func(error)) (*HTTPIdentityProxy, context.CancelFunc, <-chan struct{}) {
	t.Helper()
	p, err := NewHTTPIdentityProxy(HTTPConfig{Target: target, ConnectTimeout: time.Second,
		ReadHeaderTimeout: 5 * time.Second, OnBackendError: onErr})
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

type served struct{ read, written int64 }

// serveOne hands the server end of a new TCP pair to p as identity and
// returns the client end and what Serve reports once done.
func serveOne(t *testing.T, p *HTTPIdentityProxy, identity string) (net.Conn, <-chan served) {
	t.Helper()
	c, s := tcpPair(t)
	out := make(chan served, 1)
	go func() {
		r, w := p.Serve(context.Background(), s, identity)
		out <- served{r, w}
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
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
	if r, w := p.Serve(context.Background(), s2, "id"); r != 0 || w != 0 {
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
// half-close and a client gone look alike, an EOF, so a backend request
// is not cancelled by that EOF; it is when the proxy closes the
// connection: at shutdown here, or at the stream's idle timeout.)
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
	io.WriteString(c2, "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case <-canceled:
	case <-time.After(5 * time.Second):
		t.Error("the backend request was not cancelled when the proxy closed its connection")
	}
}
