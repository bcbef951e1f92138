package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/proxy"
	"github.com/milagro-sc/milagro/psk"
)

// fwdPair starts a server sidecar in front of backend and a client sidecar
// with only a CONNECT forward proxy whose routes map dests ("HOST:PORT" or
// "HOST:PORT#TARGET") to it, through via(upstream) if via is set; smod,
// if set, changes the server's configuration. It returns the forward
// proxy's address and the client's log.
func fwdPair(t *testing.T, backend string, dests []string, via func(string) string, smod ...func(*ServerConfig)) (string, *logBuf) {
	t.Helper()
	_, fwd, cl := fwdPairClient(t, backend, dests, via, smod...)
	return fwd, cl
}

// fwdPairClient is fwdPair, with the client (its metrics).
func fwdPairClient(t *testing.T, backend string, dests []string, via func(string) string, smod ...func(*ServerConfig)) (*Client, string, *logBuf) {
	t.Helper()
	f := sharedKeys(t)
	scfg := DefaultServerConfig()
	scfg.Listen, scfg.Target, scfg.Keys = "127.0.0.1:0", backend, f.serverDir(t, fxServerID)
	scfg.AllowIDs = []string{"spiffe://test.example/ns/web/**"}
	for _, m := range smod {
		m(scfg)
	}
	slog, _ := bufLogs(t, "server")
	srv, err := NewServer(scfg, slog)
	if err != nil {
		t.Fatal(err)
	}
	run(t, srv.Run, nil)
	up := waitAddr(t, srv.Addr)
	if via != nil {
		up = via(up)
	}
	ccfg := DefaultClientConfig()
	ccfg.Listen, ccfg.Keys, ccfg.ForwardProxy = "", f.clientDir(t, fxClientID), "127.0.0.1:0"
	ccfg.KeepAlive = -1
	ccfg.Routes = map[string]Route{}
	for _, d := range dests {
		d, target, _ := strings.Cut(d, "#")
		ccfg.Routes[d] = Route{Upstream: up, VerifyID: fxServerID, Target: target}
	}
	clog, cl := bufLogs(t, "client")
	cli, err := NewClient(ccfg, clog)
	if err != nil {
		t.Fatal(err)
	}
	run(t, cli.Run, nil)
	return cli, waitAddr(t, cli.ForwardProxyAddr), cl
}

// connect sends head (and early bytes) on a new connection to fwd and
// reads the answer's head.
func connect(t *testing.T, fwd, head string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, head)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("%q: %v", head, err)
	}
	return c, br, resp
}

// TestConnectAnswers: the forward proxy tunnels CONNECT HOST:PORT to its
// route (IPv6 literals and host names in any case, bytes sent right behind
// the head included) and answers every other request with a status that
// says why, and a log line.
func TestConnectAnswers(t *testing.T) {
	fwd, cl := fwdPair(t, echoBackend(t, 0), []string{"echo.internal:7", "[0:0::1]:443"}, nil)
	for _, tc := range []struct {
		head string
		code int
		log  string
	}{
		{"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\nearly", 200, ""},
		{"CONNECT ECHO.INTERNAL:7 HTTP/1.1\r\n\r\nearly", 200, ""},
		{"CONNECT echo.internal:7 HTTP/1.1\r\n\r\n", 200, ""},
		{"CONNECT nowhere.internal:80 HTTP/1.1\r\n\r\n", 403, "CONNECT refused: no route"},
		{"CONNECT echo.internal HTTP/1.1\r\n\r\n", 400, "the target is not HOST:PORT"},
		{"CONNECT http://echo.internal:7/ HTTP/1.1\r\n\r\n", 400, "the target is not HOST:PORT"},
		{"CONNECT / HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n", 400, "the target is not HOST:PORT"},
		{"GET http://echo.internal:7/ HTTP/1.1\r\nHost: echo.internal:7\r\n\r\n", 405, "not a CONNECT request"},
		{"garbage\r\n\r\n", 400, "malformed"},
		{"CONNECT echo.internal:7 HTTP/1.1\r\nX-Pad: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 400, "oversized"},
	} {
		c, br, resp := connect(t, fwd, tc.head)
		if resp.StatusCode != tc.code {
			t.Errorf("%.40q: HTTP %d, want %d", tc.head, resp.StatusCode, tc.code)
			continue
		}
		if tc.code == 200 {
			io.WriteString(c, "+more")
			c.(*net.TCPConn).CloseWrite()
			_, early, _ := strings.Cut(tc.head, "\r\n\r\n")
			if got, err := io.ReadAll(br); err != nil || string(got) != early+"+more" {
				t.Errorf("%.40q: tunnel echoed %q, %v; want %q", tc.head, got, err, early+"+more")
			}
			continue
		}
		if allow := resp.Header.Get("Allow"); (tc.code == 405) != (allow == "CONNECT") {
			t.Errorf("%.40q: HTTP %d with Allow %q (a 405 says Allow: CONNECT)", tc.head, tc.code, allow)
		}
		waitFor(t, 5*time.Second, "the log line "+tc.log, func() bool { return strings.Contains(cl.String(), tc.log) })
	}
}

// TestConnectHandshakeRefused: a CONNECT whose upstream refuses this
// client's handshake (its --allow-id) is answered 403 with a body that
// says so, not 502 "unreachable", which would send its user looking at
// the network.
func TestConnectHandshakeRefused(t *testing.T) {
	_, fwd, cl := fwdPairClient(t, echoBackend(t, 0), []string{"x.internal:1"}, nil, func(s *ServerConfig) {
		s.AllowIDs = []string{"spiffe://test.example/ns/ops/**"}
	})
	_, br, resp := connect(t, fwd, "CONNECT x.internal:1 HTTP/1.1\r\n\r\n")
	body, _ := io.ReadAll(br)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "refused this client's handshake") {
		t.Errorf("HTTP %d %q, want 403 saying the handshake was refused", resp.StatusCode, body)
	}
	waitFor(t, 5*time.Second, "the CONNECT failed line with its hint", func() bool {
		return strings.Contains(cl.String(), "CONNECT failed") && strings.Contains(cl.String(), "the server refused this client")
	})
}

// TestConnectFailureAnswers: each way an Open fails has its own answer.
func TestConnectFailureAnswers(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
		body string
	}{
		{&psk.StreamRefusedError{Status: psk.StatusRefused}, 403, "refused by the upstream"},
		{&psk.StreamRefusedError{Status: psk.StatusUnreachable}, 502, "unreachable"},
		{fmt.Errorf("handshake with x: %w", &mpinkex.AlertError{Code: mpinkex.AlertHandshakeFailure}), 403, "refused this client's handshake"},
		{fmt.Errorf("handshake with x: %w", &mpinkex.AlertError{Code: mpinkex.AlertOverloaded}), 503, "overloaded"},
		{fmt.Errorf("handshake with x: %w", &mpinkex.AlertError{Code: mpinkex.AlertUnsupportedVersion}), 502, "protocol"},
		{fmt.Errorf("open: %w (2048)", psk.ErrTooManyStreams), 503, "sessions to the upstream are full"},
		{fmt.Errorf("handshake with x: %w", mpinkex.ErrServerID), 502, "did not prove the identity"},
		{fmt.Errorf("handshake with x: %w", mpinkex.ErrAuth), 502, "did not prove the identity"},
		{fmt.Errorf("open: %w", context.DeadlineExceeded), 504, "timed out"},
		{fmt.Errorf("connect x: %w: %w", proxy.ErrUpstreamDown, syscall.ECONNREFUSED), 502, "unreachable"},
	} {
		code, body := connectFailure(tc.err)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%v: %d %q, want %d %q", tc.err, code, body, tc.code, tc.body)
		}
	}
}

// TestConnectRefusedWithEarlyData: a refused CONNECT with bytes pipelined
// behind its head (an optimistic client's TLS ClientHello, say; up to
// closeAfterAlert's bound) gets its answer and a clean end, not a reset
// that could overtake the answer.
func TestConnectRefusedWithEarlyData(t *testing.T) {
	fwd, _ := fwdPair(t, echoBackend(t, 0), []string{"echo.internal:7"}, nil)
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := append([]byte("CONNECT nowhere.internal:80 HTTP/1.1\r\n\r\n"), bytes.Repeat([]byte("x"), 32<<10)...)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(req); werr <- err }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("refusal: %v, %v", resp, err)
	}
	if err := <-werr; err != nil {
		t.Errorf("the app's pipelined write after a refusal: %v, want it read and discarded", err)
	}
}

// TestConnectSessionCutIsReset: a secure session that dies in the middle
// of a tunnelled download reaches the app as a reset, not as a clean end,
// also when the app sent bytes right behind the CONNECT head.
func TestConnectSessionCutIsReset(t *testing.T) {
	backend := tcpBackend(t, func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 5))
		c.Write([]byte("partial"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c) // the rest never comes
	})
	var mu sync.Mutex
	var relays []net.Conn
	via := func(up string) string { // a relay between the sidecars, to cut
		rl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rl.Close() })
		go func() {
			for {
				a, err := rl.Accept()
				if err != nil {
					return
				}
				b, err := net.Dial("tcp", up)
				if err != nil {
					a.Close()
					continue
				}
				mu.Lock()
				relays = append(relays, a, b)
				mu.Unlock()
				go io.Copy(a, b)
				go io.Copy(b, a)
			}
		}()
		return rl.Addr().String()
	}
	fwd, _ := fwdPair(t, backend, []string{"echo.internal:7"}, via)
	for _, early := range []bool{false, true} {
		head := "CONNECT echo.internal:7 HTTP/1.1\r\n\r\n"
		if early {
			head += "hello"
		}
		c, br, resp := connect(t, fwd, head)
		if resp.StatusCode != 200 {
			t.Fatalf("CONNECT: HTTP %d", resp.StatusCode)
		}
		if !early {
			io.WriteString(c, "hello")
		}
		if _, err := io.ReadFull(br, make([]byte, 7)); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		for _, r := range relays {
			r.(*net.TCPConn).SetLinger(0)
			r.Close()
		}
		relays = nil
		mu.Unlock()
		if rest, err := io.ReadAll(br); !errorsIsReset(err) {
			t.Errorf("early bytes %v: after a cut session the app read %q and %v, want a reset", early, rest, err)
		}
	}
}

func errorsIsReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || err == syscall.ECONNRESET)
}

// TestRouteConfigErrors: routes that could never work are refused at start.
func TestRouteConfigErrors(t *testing.T) {
	f := sharedKeys(t)
	long := strings.Repeat("t", 256)
	for _, tc := range []struct {
		name string
		mod  func(*ClientConfig)
		want string
	}{
		{"same destination twice", func(c *ClientConfig) {
			c.Routes = map[string]Route{"DB:5432": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x"}, "db:5432": {Upstream: "127.0.0.1:2", VerifyID: "spiffe://x"}}
		}, "same destination"},
		{"target name too long", func(c *ClientConfig) {
			c.Routes = map[string]Route{"db:5432": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x", Target: long}}
		}, "at most 255"},
		{"transparent host name", func(c *ClientConfig) {
			c.Transparent, c.ForwardProxy = true, ""
			c.Routes = map[string]Route{"db.internal:5432": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x"}}
		}, "a host name never matches"},
		{"named port", func(c *ClientConfig) {
			c.Routes = map[string]Route{"db:postgres": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x"}}
		}, "the port a number"},
		{"unix upstream", func(c *ClientConfig) {
			c.ForwardProxy, c.Listen, c.Target, c.VerifyID = "", "127.0.0.1:0", "unix:/tmp/srv.sock", "spiffe://x"
		}, "dialled over TCP"},
		{"server-id outside verify-id", func(c *ClientConfig) {
			c.ForwardProxy, c.Listen, c.Target = "", "127.0.0.1:0", "127.0.0.1:1"
			c.VerifyID, c.ServerID = "spiffe://x/ns/pay/*", "spiffe://x/ns/db/pg"
		}, "does not match verify-id"},
		{"transparent on a unix socket", func(c *ClientConfig) {
			c.Transparent, c.Listen = true, "unix:/tmp/x.sock"
			c.Routes = map[string]Route{"10.0.0.1:5432": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x"}}
		}, "needs a TCP --listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultClientConfig()
			c.Keys, c.ForwardProxy = f.clientDir(t, fxClientID), "127.0.0.1:0"
			tc.mod(c)
			_, err := NewClient(c, testLog(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewClient: %v, want %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		mod  func(*ServerConfig)
		want string
	}{
		{"route name too long", func(s *ServerConfig) { s.Routes = map[string]string{long: "127.0.0.1:1"} }, "at most 255"},
		{"http route to the target", func(s *ServerConfig) { s.HTTP, s.Routes = true, map[string]string{"raw": s.Target} }, "bypass the identity header"},
		{"http route to the target spelt otherwise", func(s *ServerConfig) {
			_, port, _ := net.SplitHostPort(s.Target)
			s.HTTP, s.Routes = true, map[string]string{"raw": "localhost:" + port}
		}, "bypass the identity header"},
		{"restricted route to the target", func(s *ServerConfig) {
			s.Routes = map[string]string{"admin": "localhost:1"}
			s.RouteAllow = map[string]List{"admin": {"spiffe://test.example/ns/ops/*"}}
		}, "the restriction would not hold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultServerConfig()
			s.Keys, s.Target, s.AllowAll = f.serverDir(t, fxServerID), "127.0.0.1:1", true
			tc.mod(s)
			_, err := NewServer(s, testLog(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewServer: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestResetCrossesTheChannel: a TCP reset at one end reaches the other end
// as a reset, through both sidecars (psk.Stream.Reset), never as a clean
// end of what was cut: a backend that resets in the middle of a download,
// and an application that resets in the middle of an upload.
func TestResetCrossesTheChannel(t *testing.T) {
	backendErr := make(chan error, 1)
	backend := tcpBackend(t, func(c *net.TCPConn) {
		cmd := make([]byte, 5)
		if _, err := io.ReadFull(c, cmd); err != nil {
			return
		}
		switch string(cmd) {
		case "down!": // a download the backend cuts with a reset
			c.Write([]byte("partial"))
			time.Sleep(50 * time.Millisecond)
			c.SetLinger(0)
		case "up!!!": // an upload the application cuts
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c)
			backendErr <- err
		}
	})
	p := startPair(t, backend, nil)

	c := p.dialApp(t)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "down!")
	got, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("download cut by the backend's reset: the app read %q and %v, want ECONNRESET", got, err)
	}

	c = p.dialApp(t)
	io.WriteString(c, "up!!!")
	c.Write(bytes.Repeat([]byte("x"), 64<<10))
	time.Sleep(50 * time.Millisecond)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	select {
	case err := <-backendErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("upload cut by the application's reset: the backend read to %v, want ECONNRESET", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the backend saw no end of the upload")
	}
}

// TestConnectEarlyBytesCounted: bytes pipelined behind a CONNECT head are
// bytes up like the rest, in the stream's log line and in the metric.
func TestConnectEarlyBytesCounted(t *testing.T) {
	fwd, cl := fwdPair(t, echoBackend(t, 0), []string{"echo.internal:7"}, nil)
	c, br, resp := connect(t, fwd, "CONNECT echo.internal:7 HTTP/1.1\r\n\r\nearly")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	io.WriteString(c, "+more")
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(br); err != nil || string(got) != "early+more" {
		t.Fatalf("echo %q, %v", got, err)
	}
	var lines []map[string]any
	waitFor(t, 5*time.Second, "stream closed", func() bool { lines = logLines(t, cl, "stream closed"); return len(lines) == 1 })
	if up := lines[0]["bytes_up"]; up != float64(10) {
		t.Errorf("client's stream line: bytes_up %v, want 10 (5 early + 5 after the 200)", up)
	}
}

// TestRouteAllow: --route-allow limits a named route to the clients that
// match its patterns; other routes, and the default target, stay open to
// every allowed client.
func TestRouteAllow(t *testing.T) {
	backend := echoBackend(t, 0)
	// Each route its own backend: one restricted route to the default
	// target's backend is refused at start (TestRouteConfigErrors).
	dbBackend, opsBackend := echoBackend(t, 0), echoBackend(t, 0)
	fwd, cl := fwdPair(t, backend, []string{"db.internal:5432#db", "ops.internal:22#ops", "echo.internal:7"}, nil, func(s *ServerConfig) {
		s.Routes = map[string]string{"db": dbBackend, "ops": opsBackend}
		s.RouteAllow = map[string]List{
			"db":  {"spiffe://test.example/ns/web/**"},   // the test client
			"ops": {"spiffe://test.example/ns/admin/**"}, // not it
		}
	})
	for _, tc := range []struct {
		dest string
		code int
	}{{"db.internal:5432", 200}, {"ops.internal:22", 403}, {"echo.internal:7", 200}} {
		_, _, resp := connect(t, fwd, "CONNECT "+tc.dest+" HTTP/1.1\r\n\r\n")
		if resp.StatusCode != tc.code {
			t.Errorf("CONNECT %s: HTTP %d, want %d", tc.dest, resp.StatusCode, tc.code)
		}
	}
	waitFor(t, 5*time.Second, "the refusal logged by the client", func() bool { return strings.Contains(cl.String(), "refused") })

	f := sharedKeys(t)
	for _, tc := range []struct {
		name  string
		allow map[string]List
		want  string
	}{
		{"unknown route", map[string]List{"nope": {"spiffe://x/**"}}, "no --route of that name"},
		{"bad pattern", map[string]List{"db": {"spiffe://x/***"}}, "--route-allow db="},
	} {
		s := DefaultServerConfig()
		s.Keys, s.Target, s.AllowAll = f.serverDir(t, fxServerID), "127.0.0.1:1", true
		s.Routes, s.RouteAllow = map[string]string{"db": "127.0.0.1:2"}, tc.allow
		if _, err := NewServer(s, testLog(t)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewServer: %v, want %q", tc.name, err, tc.want)
		}
	}
	c, err := parseServer(t, "route-allow: {db: [spiffe://file/*]}\n", map[string]string{"MILAGRO_ROUTE_ALLOW": "db=spiffe://a/* db=spiffe://b/**"})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RouteAllow["db"]; len(got) != 2 || got[0] != "spiffe://a/*" || got[1] != "spiffe://b/**" {
		t.Errorf("MILAGRO_ROUTE_ALLOW over the file: %q", got)
	}
}

// TestSameBackend: the --http guard against a named route to the
// --target backend sees through different spellings of one address.
func TestSameBackend(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:8080", "127.0.0.1:8080", true},
		{"localhost:8080", "127.0.0.1:8080", true},
		{"LOCALHOST:8080", "[::1]:8080", true},
		{"127.0.0.2:8080", "127.0.0.1:8080", true}, // both loopback: may be one wildcard listener
		{"0.0.0.0:8080", "127.0.0.1:8080", true},
		{":8080", "localhost:8080", true},
		{"127.0.0.1:http", "127.0.0.1:80", true},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1:80", true},
		{"db.internal:5432", "DB.internal.:5432", true},
		{"unix:/run/app.sock", "unix:/run//app.sock", true},
		{"127.0.0.1:8080", "127.0.0.1:8081", false},
		{"10.0.0.1:80", "10.0.0.2:80", false},
		{"10.0.0.1:80", "127.0.0.1:80", false},
		{"unix:/run/a.sock", "unix:/run/b.sock", false},
		{"unix:/run/a.sock", "127.0.0.1:80", false},
		{"127.0.0.1:nosuchservice", "127.0.0.1:nosuchservice", false},
	} {
		if got := sameBackend(tc.a, tc.b); got != tc.want {
			t.Errorf("sameBackend(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}

	// One socket by other paths: a symlinked folder (as /var/run → /run),
	// a relative path; both existing or not yet.
	dir := t.TempDir()
	real := filepath.Join(dir, "run")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "varrun")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(real)
	sock := filepath.Join(real, "app.sock")
	for _, exists := range []bool{false, true} {
		if exists {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
		}
		for _, tc := range []struct {
			a, b string
			want bool
		}{
			{"unix:" + sock, "unix:" + filepath.Join(dir, "varrun", "app.sock"), true},
			{"unix:" + sock, "unix:app.sock", true},
			{"unix:" + sock, "unix:" + filepath.Join(dir, "varrun", "other.sock"), false},
		} {
			if got := sameBackend(tc.a, tc.b); got != tc.want {
				t.Errorf("socket exists %v: sameBackend(%q, %q) = %v, want %v", exists, tc.a, tc.b, got, tc.want)
			}
		}
	}
}

// TestRouteKey: routes and destinations meet in one spelling.
func TestRouteKey(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:9", "127.0.0.1:9"},
		{"[::ffff:127.0.0.1]:9", "127.0.0.1:9"},
		{"[FD00:0::9]:80", "[fd00::9]:80"},
		{"Pay.Internal:443", "pay.internal:443"},
		{"pay.internal.:0443", "pay.internal:443"},
		{"[fd00::9]:0080", "[fd00::9]:80"},
	} {
		if got := routeKey(tc.in); got != tc.want {
			t.Errorf("routeKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRetryableDial: only a connect that found nobody listening (or was
// reset) is tried once more; a timeout would double the app's wait, and
// a refused handshake will not change.
func TestRetryableDial(t *testing.T) {
	refused := fmt.Errorf("connect 10.0.0.1:8443: %w: %w", proxy.ErrUpstreamDown,
		&net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}})
	timeout := fmt.Errorf("connect 10.0.0.1:8443: %w: %w", proxy.ErrUpstreamDown,
		&net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded})
	alert := fmt.Errorf("handshake with 10.0.0.1:8443: %w", &mpinkex.Error{Role: "client", Step: "read Msg2", Err: &mpinkex.AlertError{Code: mpinkex.AlertHandshakeFailure}})
	// A replica that stopped listening resets what waited in its accept
	// queue: the client reads the reset in place of Msg2.
	reset := fmt.Errorf("handshake with 10.0.0.1:8443: %w", &mpinkex.Error{Role: "client", Step: "read Msg2",
		Err: &net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}})
	for _, tc := range []struct {
		err  error
		want bool
	}{{refused, true}, {reset, true}, {timeout, false}, {alert, false}, {syscall.ECONNREFUSED, false}} {
		if got := retryableDial(tc.err); got != tc.want {
			t.Errorf("retryableDial(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestConnectRefusalLinesApart: an app hammering a route whose backend is
// down uses up that upstream's log lines only: a CONNECT refused here (no route, bad
// request) still gets its line, and every refusal is counted.
func TestConnectRefusalLinesApart(t *testing.T) {
	// The backend is down: the server answers every stream 02 at once.
	cli, fwd, cl := fwdPairClient(t, closedAddr(t), []string{"down.internal:80"}, nil)
	const n = 3 * warnBurst
	for range n {
		c, _, resp := connect(t, fwd, "CONNECT down.internal:80 HTTP/1.1\r\n\r\n")
		c.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("CONNECT to a down backend: HTTP %d, want 502", resp.StatusCode)
		}
	}
	for _, tc := range []struct{ head, log string }{
		{"CONNECT typo.internal:443 HTTP/1.1\r\n\r\n", `"destination":"typo.internal:443"`},
		{"GET / HTTP/1.1\r\n\r\n", "not a CONNECT request"},
	} {
		c, _, _ := connect(t, fwd, tc.head)
		c.Close()
		waitFor(t, 5*time.Second, "the line "+tc.log, func() bool { return strings.Contains(cl.String(), tc.log) })
	}
	if got := len(logLines(t, cl, "CONNECT failed")); got >= n {
		t.Errorf("%d \"CONNECT failed\" lines for %d failures in well under a second: not limited", got, n)
	}
	for label, want := range map[string]float64{"unreachable": n, "no_route": 1, "bad_request": 1} {
		if got := counter(t, cli.m.StreamsTotal.WithLabelValues(label)); got != want {
			t.Errorf("streams_total{result=%q} = %v, want %v", label, got, want)
		}
	}
}

// TestRoutesShareUpstreamSessions: routes to one server sidecar with one
// verify-id (a gateway carrying a database and a cache, named targets)
// share one pool of sessions, as the README's --max-sessions per upstream
// says: three routes cost one handshake, not three. /_status lists the
// pool once with the routes that use it.
func TestRoutesShareUpstreamSessions(t *testing.T) {
	dests := []string{"a.internal:1", "b.internal:2", "c.internal:3"}
	cli, fwd, cl := fwdPairClient(t, echoBackend(t, 0), dests, nil)
	for _, d := range dests {
		c, br, resp := connect(t, fwd, "CONNECT "+d+" HTTP/1.1\r\n\r\nx")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", d, resp.StatusCode)
		}
		c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(br); err != nil || string(b) != "x" {
			t.Fatalf("%s: echo %q, %v", d, b, err)
		}
		c.Close()
	}
	if n, opens := cli.t.numSessions(), len(logLines(t, cl, "session open")); n != 1 || opens != 1 {
		t.Errorf("%d sessions open, %d handshakes, to one upstream; want 1", n, opens)
	}
	if got := cli.status(true).Forward; got != fwd {
		t.Errorf("/_status forward_proxy %q, want %q", got, fwd)
	}
	ups := cli.status(true).Upstreams
	if len(ups) != 1 || !slices.Equal(ups[0].Routes, dests) || ups[0].Stats.Opens != 3 || ups[0].Stats.Dials != 1 {
		t.Errorf("/_status upstreams %+v, want one with routes %v, 3 opens, 1 dial", ups, dests)
	}
}

// TestVerifyAnyServerWarns: a verify-id that accepts every server identity
// of the domain starts, with a warning that says so; a narrower one does
// not warn.
func TestVerifyAnyServerWarns(t *testing.T) {
	f := sharedKeys(t)
	for _, tc := range []struct {
		verify string
		warn   bool
	}{{"**", true}, {"spiffe://**", true}, {"spiffe://*/**", true}, {"*://*/**", true},
		{"spiffe://test.example/**", false}, {"spiffe://*/ns/pay/**", false}, {"spiffe://*", false}, {fxServerID, false}} {
		c := DefaultClientConfig()
		c.Keys, c.Listen, c.Target, c.VerifyID = f.clientDir(t, fxClientID), "127.0.0.1:0", "127.0.0.1:1", tc.verify
		log, buf := bufLogs(t, "client")
		if _, err := NewClient(c, log); err != nil {
			t.Fatalf("%s: %v", tc.verify, err)
		}
		if got := strings.Contains(buf.String(), "accepts any server identity"); got != tc.warn {
			t.Errorf("verify-id %q: warned %v, want %v", tc.verify, got, tc.warn)
		}
	}
}

// TestUpstreamServiceName: an upstream's port may be a service name the
// dialler looks up (https), as before upstreams were checked at start.
func TestUpstreamServiceName(t *testing.T) {
	c := DefaultClientConfig()
	c.Keys, c.Listen, c.Target, c.VerifyID = sharedKeys(t).clientDir(t, fxClientID), "127.0.0.1:0", "127.0.0.1:https", fxServerID
	if _, err := NewClient(c, testLog(t)); err != nil {
		t.Errorf("upstream 127.0.0.1:https: %v", err)
	}
}
