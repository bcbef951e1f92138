package sidecar

// In-process runs of Server and Client with real keys on loopback, so that
// the race detector sees the sidecars' own goroutines (the integration
// tests run the binary, built without -race).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/proxy"
	"github.com/milagro-sc/milagro/psk"
)

// logBuf collects a sidecar's log lines; shown if the test fails.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func bufLog(t *testing.T, name string) zerolog.Logger {
	l, _ := bufLogs(t, name)
	return l
}

// bufLogs is bufLog that also returns the buffer, for tests that read
// the log lines.
func bufLogs(t *testing.T, name string) (zerolog.Logger, *logBuf) {
	b := &logBuf{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SIDECAR_TEST_LOGS") != "" {
			t.Logf("--- %s log:\n%s", name, b.String())
		}
	})
	return zerolog.New(b).Level(zerolog.DebugLevel).With().Timestamp().Logger(), b
}

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

// tcpBackend serves every connection with handle (which the backend
// closes after it) until the test ends, and returns its address.
func tcpBackend(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			})
		}
	})
	return ln.Addr().String()
}

// echoBackend echoes every connection until EOF, then half-closes.
func echoBackend(t *testing.T, delay time.Duration) string {
	t.Helper()
	return tcpBackend(t, func(c *net.TCPConn) {
		time.Sleep(delay)
		io.Copy(c, c)
		c.CloseWrite()
	})
}

type runner struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned
	err    error
}

func (r *runner) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
		return r.err
	case <-time.After(40 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func run(t *testing.T, f func(context.Context, <-chan os.Signal) error, hup <-chan os.Signal) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = f(ctx, hup)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(40 * time.Second):
			t.Error("Run did not return at cleanup")
		}
	})
	return r
}

func waitAddr(t *testing.T, addr func() string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("sidecar did not bind")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return addr()
}

type pair struct {
	srv          *Server
	cli          *Client
	srvRun       *runner
	cliRun       *runner
	cdir, sdir   string
	clientListen string
	sLog, cLog   *logBuf
}

func startPair(t *testing.T, target string, mod func(*ServerConfig, *ClientConfig)) *pair {
	t.Helper()
	f := sharedKeys(t)
	p := &pair{cdir: f.clientDir(t, fxClientID), sdir: f.serverDir(t, fxServerID)}
	scfg := DefaultServerConfig()
	scfg.Listen, scfg.Target, scfg.Keys = "127.0.0.1:0", target, p.sdir
	scfg.AllowIDs = []string{"spiffe://test.example/ns/web/**"}
	ccfg := DefaultClientConfig()
	ccfg.Listen, ccfg.Keys, ccfg.VerifyID = "127.0.0.1:0", p.cdir, fxServerID
	if mod != nil {
		mod(scfg, ccfg)
	}
	var err error
	var slog, clog zerolog.Logger
	slog, p.sLog = bufLogs(t, "server")
	clog, p.cLog = bufLogs(t, "client")
	if p.srv, err = NewServer(scfg, slog); err != nil {
		t.Fatal(err)
	}
	p.srvRun = run(t, p.srv.Run, nil)
	ccfg.Target = waitAddr(t, p.srv.Addr)
	if p.cli, err = NewClient(ccfg, clog); err != nil {
		t.Fatal(err)
	}
	p.cliRun = run(t, p.cli.Run, nil)
	p.clientListen = waitAddr(t, p.cli.Addr)
	return p
}

// dialApp opens an application connection to the client sidecar, closed
// when the test ends.
func (p *pair) dialApp(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.clientListen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// holdApps opens n application connections and checks each carries an
// echo: connections within a limit, held open by the caller.
func (p *pair) holdApps(t *testing.T, n int) []net.Conn {
	t.Helper()
	held := make([]net.Conn, n)
	for i := range held {
		held[i] = p.dialApp(t)
		if err := pingEcho(held[i]); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
	}
	return held
}

// pingEcho sends "ping" on c and reads the echo back.
func pingEcho(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 4))
	return err
}

func echoOnce(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

func TestSidecarsInProcess(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), nil)
	msg := make([]byte, 100<<10)
	rand.Read(msg)
	if err := echoOnce(p.clientListen, msg); err != nil {
		t.Fatal(err)
	}

	// Concurrent connections while both key directories get new
	// generations (and the keystores reload them).
	f := sharedKeys(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(halt) // also when the test fails before the end
	var failures int
	var mu sync.Mutex
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := echoOnce(p.clientListen, msg[:10<<10]); err != nil {
					mu.Lock()
					failures++
					mu.Unlock()
					t.Error(err)
				}
			}
		})
	}
	var gens [2]string
	for range 3 {
		gens[0] = writeKeys(t, p.cdir, f.files(t, fxClientID, clientKinds))
		gens[1] = writeKeys(t, p.sdir, f.files(t, fxServerID, serverKinds))
		time.Sleep(300 * time.Millisecond)
	}
	halt()
	waitFor(t, 2*time.Second, "reloads", func() bool {
		return p.cli.Keystore().Current().Generation == gens[0] && p.srv.Keystore().Current().Generation == gens[1]
	})

	st := p.srv.status(true)
	if st.Role != "server" || st.Identity != fxServerID || !st.Ready || st.Sessions != 1 || len(st.Backends) != 1 || !st.Backends[0].OK || st.Keys.Generation != gens[1] {
		t.Errorf("server status %+v", st)
	}
	cs := p.cli.status(false)
	if cs.Role != "client" || cs.Identity != fxClientID || !cs.Ready || len(cs.Upstreams) != 1 || cs.Upstreams[0].Stats.Dials != 1 || cs.Keys.Generation != gens[0] {
		t.Errorf("client status %+v", cs)
	}

	if err := p.cliRun.stop(t); err != nil {
		t.Errorf("client Run: %v", err)
	}
	if err := p.srvRun.stop(t); err != nil {
		t.Errorf("server Run: %v", err)
	}
}

// SIGTERM while a slow stream is in flight: the drain waits for it (or cuts
// it after the shutdown timeout and says so).
func TestServerDrain(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		want    error
	}{
		{"clean", 10 * time.Second, nil},
		{"timeout", 100 * time.Millisecond, ErrDrainTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPair(t, echoBackend(t, 500*time.Millisecond), func(s *ServerConfig, _ *ClientConfig) {
				s.ShutdownTimeout = tc.timeout
			})
			c, err := net.Dial("tcp", p.clientListen)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("slow"))
			c.(*net.TCPConn).CloseWrite()
			waitFor(t, 5*time.Second, "stream open at the server", func() bool { return p.srv.t.streams.Load() == 1 })
			errc := make(chan error, 1)
			go func() { errc <- p.srvRun.stop(t) }()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, rerr := io.ReadAll(c)
			err = <-errc
			if !errors.Is(err, tc.want) && err != tc.want {
				t.Errorf("server Run: %v, want %v", err, tc.want)
			}
			if tc.want == nil && (string(got) != "slow" || rerr != nil) {
				t.Errorf("in-flight request: %q, %v; want it completed", got, rerr)
			}
			if tc.want != nil && string(got) == "slow" {
				t.Errorf("request completed despite the drain timeout")
			}
		})
	}
}

// HTTP mode: the backend sees the authenticated identity, never the
// client's own header.
func TestServerHTTPMode(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Got-Id", strings.Join(r.Header.Values(proxy.IdentityHeader), "|"))
		io.Copy(w, r.Body)
	}))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.HTTP = true })
	c, err := net.Dial("tcp", p.clientListen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 3 { // keep-alive: every request is rewritten
		req, _ := http.NewRequest("POST", "http://backend/x", strings.NewReader("body"))
		req.Header.Set(proxy.IdentityHeader, "spiffe://test.example/ns/admin/sa/root")
		req.Header.Add(proxy.IdentityHeader, "second")
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("Got-Id"); got != fxClientID || string(b) != "body" {
			t.Errorf("request %d: backend saw identity %q, body %q", i, got, b)
			if i > 0 && resp.StatusCode == http.StatusBadGateway {
				t.Errorf("a kept-alive request failed: net/http cancels a connection whose Read returns a deadline error " +
					"that is not a net.Error with Timeout() (psk.Stream wraps os.ErrDeadlineExceeded with fmt.Errorf)")
			}
		}
	}
}

// proxyHeaderBackend accepts one connection on a loopback port until the
// test ends, reads its PROXY v2 header (sent on got, nil if malformed)
// and echoes what follows.
func proxyHeaderBackend(t *testing.T) (addr string, got <-chan *proxy.ProxyHeader) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan *proxy.ProxyHeader, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, err := proxy.ReadProxyV2(c)
		if err != nil {
			ch <- nil
			return
		}
		ch <- h
		c.SetReadDeadline(time.Time{})
		io.Copy(c, c)
	}()
	return ln.Addr().String(), ch
}

// PROXY protocol mode: the backend reads the identity TLV.
func TestServerProxyProtocol(t *testing.T) {
	backend, got := proxyHeaderBackend(t)
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.ProxyProtocol = true })
	if err := echoOnce(p.clientListen, []byte("after the header")); err != nil {
		t.Fatal(err)
	}
	h := <-got
	if h == nil {
		t.Fatal("no PROXY header")
	}
	if id, ok := h.Identity(); !ok || id != fxClientID {
		t.Errorf("identity TLV %q %v", id, ok)
	}
	if h.Dst.String() != p.srv.Addr() || !h.Src.Addr().IsLoopback() {
		t.Errorf("addresses %v → %v, want → %s", h.Src, h.Dst, p.srv.Addr())
	}
}

func TestNewServerConfigErrors(t *testing.T) {
	f := sharedKeys(t)
	sdir := f.serverDir(t, fxServerID)
	for _, tc := range []struct {
		name string
		mod  func(*ServerConfig)
		want string
	}{
		{"no keys", func(c *ServerConfig) { c.Keys = "" }, "--keys is required"},
		{"pprof without status", func(c *ServerConfig) { c.EnablePprof = true }, "--enable-pprof needs --status"},
		{"no allow", func(c *ServerConfig) { c.AllowIDs = nil }, "no --allow-id"},
		{"no target", func(c *ServerConfig) { c.Target = "" }, "--target"},
		{"remote target", func(c *ServerConfig) { c.Target = "10.0.0.1:80" }, "not on loopback"},
		{"bad route", func(c *ServerConfig) { c.Routes = map[string]string{"x": "nohost"} }, "target x"},
		{"http and proxy protocol", func(c *ServerConfig) { c.HTTP, c.ProxyProtocol = true, true }, "exclude each other"},
		{"http without target", func(c *ServerConfig) { c.HTTP, c.Target, c.Routes = true, "", map[string]string{"a": "127.0.0.1:1"} }, "--http needs --target"},
		{"bad quiet", func(c *ServerConfig) { c.Quiet = []string{"everything"} }, "--quiet"},
		{"max-handshakes", func(c *ServerConfig) { c.MaxHandshakes = 0 }, "--max-handshakes"},
		{"stream window too small", func(c *ServerConfig) { c.StreamWindow = 65535 }, "--stream-window 65535"},
		{"stream window too large", func(c *ServerConfig) { c.StreamWindow = 32 << 20 }, "--stream-window 33554432"},
		{"bad listen", func(c *ServerConfig) { c.Listen = "nohost" }, "--listen"},
		{"bad status", func(c *ServerConfig) { c.Status = "nohost" }, "--status"},
		{"shutdown without status", func(c *ServerConfig) { c.EnableShutdown = true }, "--enable-shutdown needs --status"},
		{"negative shutdown timeout", func(c *ServerConfig) { c.ShutdownTimeout = -time.Second }, "--shutdown-timeout -1s"},
		{"negative timed reload", func(c *ServerConfig) { c.TimedReload = -time.Second }, "--timed-reload -1s"},
		{"no handshake timeout", func(c *ServerConfig) { c.HandshakeTO = 0 }, "--handshake-timeout must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultServerConfig()
			c.Keys, c.Target, c.AllowIDs = sdir, "127.0.0.1:1", []string{"spiffe://test.example/**"}
			tc.mod(c)
			_, err := NewServer(c, zerolog.Nop())
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewServer: %v, want a ConfigError with %q", err, tc.want)
			}
		})
	}
	// Runtime failures (unusable keys) are not configuration errors.
	c := DefaultServerConfig()
	c.Keys, c.Target, c.AllowIDs = f.clientDir(t, fxClientID), "127.0.0.1:1", []string{"spiffe://test.example/**"}
	_, err := NewServer(c, zerolog.Nop())
	var ce *ConfigError
	if err == nil || errors.As(err, &ce) {
		t.Errorf("client keys for a server: %v, want a non-config error", err)
	}
	// An explicitly unsafe target is allowed.
	c = DefaultServerConfig()
	c.Keys, c.Target, c.AllowAll, c.UnsafeTarget = sdir, "10.0.0.1:80", true, true
	if _, err := NewServer(c, zerolog.Nop()); err != nil {
		t.Errorf("--unsafe-target: %v", err)
	}
}

func TestNewClientConfigErrors(t *testing.T) {
	f := sharedKeys(t)
	cdir := f.clientDir(t, fxClientID)
	for _, tc := range []struct {
		name string
		mod  func(*ClientConfig)
		want string
	}{
		{"nothing to do", func(c *ClientConfig) { c.Target = "" }, "--target"},
		{"public listener", func(c *ClientConfig) { c.Listen = "0.0.0.0:9000" }, "not on loopback"},
		{"no verify-id", func(c *ClientConfig) { c.VerifyID = "" }, "--verify-id is required"},
		{"bad verify-id", func(c *ClientConfig) { c.VerifyID = "spiffe://x/***" }, "verify-id"},
		{"bad upstream", func(c *ClientConfig) { c.Target = "nohost" }, "HOST:PORT"},
		{"transparent without routes", func(c *ClientConfig) { c.Target, c.Transparent = "", true }, "--transparent needs"},
		{"transparent and target", func(c *ClientConfig) {
			c.Transparent, c.Routes = true, map[string]Route{"10.0.0.1:5432": {Upstream: "127.0.0.1:1", VerifyID: "spiffe://x"}}
		}, "--transparent and --target exclude each other"},
		{"forward proxy without routes", func(c *ClientConfig) { c.Target = ""; c.ForwardProxy = "127.0.0.1:0" }, "needs at least one --route"},
		{"route without verify-id", func(c *ClientConfig) {
			c.Routes = map[string]Route{"a:1": {Upstream: "127.0.0.1:1"}}
		}, "verify-id is required"},
		{"factor file missing", func(c *ClientConfig) { c.FactorFile = "/nonexistent/factor" }, "factor file"},
		{"no sessions", func(c *ClientConfig) { c.MaxSessions = 0 }, "--max-sessions (0)"},
		{"negative streams", func(c *ClientConfig) { c.MaxStreams = -1 }, "--max-streams-per-session (-1)"},
		{"stream window", func(c *ClientConfig) { c.StreamWindow = 0 }, "--stream-window 0"},
		{"bad listen", func(c *ClientConfig) { c.Listen = "unix:" }, "--listen"},
		{"bad forward proxy", func(c *ClientConfig) { c.ForwardProxy = "nohost" }, "--forward-proxy"},
		{"route to a bad destination", func(c *ClientConfig) {
			c.Routes = map[string]Route{"nohost": {Upstream: "127.0.0.1:1", VerifyID: fxServerID}}
		}, "destination must be HOST:PORT"},
		{"route to a bad upstream", func(c *ClientConfig) {
			c.Routes = map[string]Route{"a:1": {Upstream: "nohost", VerifyID: fxServerID}}
		}, "route a:1: upstream"},
		{"negative idle timeout", func(c *ClientConfig) { c.IdleTimeout = -time.Second }, "--idle-timeout -1s"},
		{"streams past a session's limit", func(c *ClientConfig) { c.MaxStreams = 5000 }, "--max-streams-per-session 5000: at most 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultClientConfig()
			c.Keys, c.Target, c.VerifyID = cdir, "127.0.0.1:8443", fxServerID
			tc.mod(c)
			_, err := NewClient(c, zerolog.Nop())
			var ce *ConfigError // exit status 2, as for the server's usage errors
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewClient: %v, want a ConfigError with %q", err, tc.want)
			}
		})
	}
}

func TestMpinkexGrace(t *testing.T) {
	if g := mpinkexGrace(0); g >= 0 {
		t.Errorf("--epoch-grace 0 maps to %v, want negative (none)", g)
	}
	if g := mpinkexGrace(time.Millisecond); g != time.Millisecond {
		t.Errorf("1ms maps to %v", g)
	}
}

// TestClientMaxConns: an application connection holds one of the
// client's --max-conns slots for as long as it is proxied (the copy runs
// after the accepting goroutine has ended), one beyond them is closed at
// once, and a slot frees when its connection ends.
func TestClientMaxConns(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(_ *ServerConfig, c *ClientConfig) { c.MaxConns = 2 })
	held := p.holdApps(t, 2)
	extra := p.dialApp(t)
	if err := pingEcho(extra); err == nil {
		t.Fatal("a connection beyond --max-conns was proxied")
	}
	held[0].Close()
	waitFor(t, 5*time.Second, "a freed slot", func() bool { return pingEcho(p.dialApp(t)) == nil })
	if err := pingEcho(held[1]); err != nil {
		t.Errorf("the other held connection after the slot freed: %v", err)
	}
}

// TestClientMaxSessions: --max-sessions × --max-streams-per-session bounds
// the connections to one upstream; one more is refused (closed) without a
// further handshake, and the status shows the one session built.
func TestClientMaxSessions(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(_ *ServerConfig, c *ClientConfig) { c.MaxSessions, c.MaxStreams = 1, 2 })
	try := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp", p.clientListen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		defer c.SetDeadline(time.Time{})
		if _, err := c.Write([]byte("ping")); err != nil {
			return c, err
		}
		_, err = io.ReadFull(c, make([]byte, 4))
		return c, err
	}
	for i := range 2 {
		if _, err := try(); err != nil {
			t.Fatalf("connection %d within the limits: %v", i, err)
		}
	}
	if _, err := try(); err == nil {
		t.Fatal("a third connection was carried by one session of two streams")
	}
	if st := p.cli.status(false); len(st.Upstreams) != 1 || st.Upstreams[0].Stats.Dials != 1 {
		t.Errorf("client status %+v, want one upstream with one dial", st.Upstreams)
	}
	waitFor(t, 5*time.Second, "the refusal counted as over_limit", func() bool {
		return counter(t, p.cli.m.StreamsTotal.WithLabelValues("over_limit")) == 1
	})
	if n := counter(t, p.cli.m.StreamsTotal.WithLabelValues("error")); n != 0 {
		t.Errorf("streams_total{result=error} = %v, want 0 (the refusal is over_limit)", n)
	}
}

// TestDrainCountsUnacceptedStreams: a stream the client opened before the
// drain, which the server has not accepted yet (its header is read, Accept
// has not taken it), holds the drain like any open stream: it is served,
// not cut by the close that ends the drain.
func TestDrainCountsUnacceptedStreams(t *testing.T) {
	f := sharedKeys(t)
	scfg := DefaultServerConfig()
	scfg.Listen, scfg.Target, scfg.Keys = "127.0.0.1:0", "127.0.0.1:1", f.serverDir(t, fxServerID)
	scfg.AllowIDs = []string{"spiffe://test.example/ns/web/**"}
	srv, err := NewServer(scfg, zerolog.Nop()) // their goroutines log after the test
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ccfg := DefaultClientConfig()
	ccfg.Listen, ccfg.Keys, ccfg.VerifyID, ccfg.Target = "127.0.0.1:0", f.clientDir(t, fxClientID), fxServerID, ln.Addr().String()
	cli, err := NewClient(ccfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	type accepted struct {
		sess *psk.Session
		err  error
	}
	sc := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sc <- accepted{err: err}
			return
		}
		sess, _, err := srv.handshake(ctx, c)
		sc <- accepted{sess, err}
	}()
	csess, err := cli.dial(ctx, cli.def.link)
	if err != nil {
		t.Fatal(err)
	}
	defer csess.Close()
	a := <-sc
	if a.err != nil {
		t.Fatal(a.err)
	}
	ssess := a.sess
	defer ssess.Close()
	srv.t.addSession(ssess)

	echoed := make(chan error, 1)
	go func() {
		st, err := csess.Open(ctx, "")
		if err != nil {
			echoed <- err
			return
		}
		defer st.Close()
		if _, err := st.Write([]byte("late")); err != nil {
			echoed <- err
			return
		}
		st.CloseWrite()
		got, err := io.ReadAll(st)
		if err == nil && string(got) != "late" {
			err = fmt.Errorf("echo %q", got)
		}
		if err != nil {
			err = fmt.Errorf("after %q: %w", got, err)
		}
		echoed <- err
	}()
	waitFor(t, 5*time.Second, "the stream at the server", func() bool { return ssess.NumStreams() == 1 })

	drained := make(chan bool, 1)
	go func() { drained <- srv.t.drain(ctx) }()
	select {
	case clean := <-drained:
		t.Fatalf("drain ended (clean %v) with a stream not accepted yet", clean)
	case <-time.After(200 * time.Millisecond):
	}
	in, err := ssess.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err := in.Accept()
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(st, st)
	st.CloseWrite()
	st.Close()
	if err := <-echoed; err != nil {
		t.Errorf("stream opened before the drain: %v", err)
	}
	if !<-drained {
		t.Error("drain not clean")
	}
}
