package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Got-Id", strings.Join(r.Header.Values(IdentityHeader), "|"))
		w.Header().Set("Got-Host", r.Host)
		io.Copy(w, r.Body)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	p, _, _ := startHTTPProxy(t, ln.Addr().String(), nil)

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
