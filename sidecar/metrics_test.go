package sidecar

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// statusAddr waits for the "… ready" log line and returns its status field.
func statusAddr(t *testing.T, b *logBuf, msg string) string {
	t.Helper()
	var addr string
	waitFor(t, 5*time.Second, msg+" line", func() bool {
		for _, l := range logLines(t, b, msg) {
			addr, _ = l["status"].(string)
		}
		return addr != ""
	})
	return addr
}

func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// TestStatusBackendsCached: /_status reads the backends' state as last
// checked (a probe every few seconds, all routes at once, and every
// stream's own dial); scraping it costs the backends nothing, and an
// unresponsive backend does not slow it.
func TestStatusBackendsCached(t *testing.T) {
	var accepts atomic.Int64
	backend := tcpBackend(t, func(*net.TCPConn) { accepts.Add(1) })
	// A listener whose backlog is full: connection attempts hang.
	stuck, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	for range 10000 {
		c, err := net.DialTimeout("tcp", stuck.Addr().String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		defer c.Close()
	}
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) {
		s.Status = "127.0.0.1:0"
		s.Routes = map[string]string{"a": backend, "b": backend, "s1": stuck.Addr().String(), "s2": stuck.Addr().String()}
	})
	st := statusAddr(t, p.sLog, "server ready")
	var doc StatusInfo
	waitFor(t, 5*time.Second, "every backend checked", func() bool {
		_, b := httpGet(t, "http://"+st+"/_status")
		doc = StatusInfo{}
		return json.Unmarshal(b, &doc) == nil && len(doc.Backends) == 5
	})
	for i, want := range []struct {
		name string
		ok   bool
	}{{"(default)", true}, {"a", true}, {"b", true}, {"s1", false}, {"s2", false}} {
		if r := doc.Backends[i]; r.Name != want.name || r.OK != want.ok || r.CheckedAt.IsZero() {
			t.Errorf("backend %d: %+v, want %s ok=%v with checked_at", i, r, want.name, want.ok)
		}
	}
	before := accepts.Load()
	start := time.Now()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { httpGet(t, "http://"+st+"/_status") })
	}
	wg.Wait()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("50 GET /_status took %v with unresponsive backends", d)
	}
	// The backend counts a probe's connection when it accepts it, maybe
	// after the probe has moved on: the first probe may land here, and at
	// most one more (one address for those 3 routes) if 5 s have passed.
	if got := accepts.Load() - before; got > 2 {
		t.Errorf("50 GET /_status made %d backend connections", got)
	}
}

// TestBytesCountedLive: milagro_bytes_total moves while a connection is
// open, not only when it ends.
func TestBytesCountedLive(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), nil)
	c := p.dialApp(t)
	for range 100 {
		if err := pingEcho(c); err != nil {
			t.Fatal(err)
		}
	}
	// A write is counted right after it returns, which may be just after
	// the echo it carried has reached the app: wait for that moment.
	for _, m := range []*Metrics{p.srv.m, p.cli.m} {
		var up, down float64
		if !eventuallyTrue(2*time.Second, func() bool { up, down = counter(t, m.up), counter(t, m.down); return up == 400 && down == 400 }) {
			t.Errorf("open connection, 100 × 4 bytes each way: milagro_bytes_total up %v, down %v", up, down)
		}
	}
	c.Close()
	waitFor(t, 5*time.Second, "the stream closed", func() bool { return gauge(t, p.srv.m.Streams) == 0 })
	if up := counter(t, p.srv.m.up); up != 400 {
		t.Errorf("after the close: up %v, want 400 (not counted twice)", up)
	}
}

// TestCountersStartAtZero: the series an alert watches exist from the
// start, so that increase() sees the first failure.
func TestCountersStartAtZero(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.Status = "127.0.0.1:0" })
	_, b := httpGet(t, "http://"+statusAddr(t, p.sLog, "server ready")+"/_metrics/prometheus")
	for _, want := range []string{`milagro_key_reloads_total{result="error",role="server"} 0`,
		`milagro_handshakes_total{result="timeout",role="server"} 0`, `milagro_handshakes_total{result="overloaded",role="server"} 0`,
		`milagro_streams_total{result="unreachable",role="server"} 0`, `milagro_conns_over_limit_total{role="server"} 0`,
		`milagro_http_backend_errors_total{role="server"} 0`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("no %s at start", want)
		}
	}
}

// TestHTTPModeBackendErrors: in --http mode a backend that is down is
// counted (and shown in /_status), although the stream itself is fine.
func TestHTTPModeBackendErrors(t *testing.T) {
	p := startPair(t, closedAddr(t), func(s *ServerConfig, _ *ClientConfig) { s.HTTP = true })
	c := p.dialApp(t)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("HTTP %d, want 502", resp.StatusCode)
	}
	if n := counter(t, p.srv.m.BackendErrors); n != 1 {
		t.Errorf("milagro_http_backend_errors_total = %v, want 1", n)
	}
	if st := p.srv.status(true); len(st.Backends) != 1 || st.Backends[0].OK {
		t.Errorf("/_status backends %+v, want the target not ok", st.Backends)
	}
}

// TestOverLimitCountedNotFlooding: connections past --max-conns are
// counted; the log says so at most once a second.
func TestOverLimitCountedNotFlooding(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxConns = 1 })
	hold, err := net.Dial("tcp", p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, 5*time.Second, "the held connection accepted", func() bool { return counter(t, p.srv.m.Accepts) == 1 })
	for range 20 {
		c, err := net.Dial("tcp", p.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}
	if n := counter(t, p.srv.m.OverLimit); n != 20 {
		t.Errorf("milagro_conns_over_limit_total = %v, want 20", n)
	}
	if n := len(logLines(t, p.sLog, "connection limit reached; closing")); n < 1 || n > 3 {
		t.Errorf("%d log lines for 20 refusals in well under 3 s, want 1 to 3", n)
	}
}

// TestHandshakeClosedResult: a connection closed before any handshake (a
// TCP health check, a port scan) is counted as "closed", not "error".
func TestHandshakeClosedResult(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), nil)
	c, err := net.Dial("tcp", p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	waitFor(t, 5*time.Second, "the closed handshake counted", func() bool {
		return counter(t, p.srv.m.Handshakes.WithLabelValues("closed")) == 1
	})
	if n := counter(t, p.srv.m.Handshakes.WithLabelValues("error")); n != 0 {
		t.Errorf("handshakes_total{result=error} = %v", n)
	}
}

// closedAddr returns a loopback address where nothing listens, for as long
// as the test runs: a socket bound to it and never listening holds the
// port, so no other listener takes it, and connections are refused.
func closedAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// eventuallyTrue polls cond every 5 ms for up to d.
func eventuallyTrue(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}
