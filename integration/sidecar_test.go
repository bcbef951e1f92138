package integration

// The secure channel end to end: real D-TAs, `milagro keys fetch`, and real
// `milagro server` / `milagro client` processes on loopback, with backends
// and attackers in the test process.

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/proxy"
)

// scEnv is a trust domain with a client and a server key directory and an
// echo backend.
type scEnv struct {
	c                    *cluster
	clientDir, serverDir string
	echo                 *scBackend
}

func scNewEnv(t *testing.T, cfg clusterConfig) *scEnv {
	t.Helper()
	c := newCluster(t, cfg)
	e := &scEnv{c: c, clientDir: filepath.Join(c.base, "keys-client"), serverDir: filepath.Join(c.base, "keys-server")}
	c.fetchClient(clientID, e.clientDir)
	c.fetchServer(serverID, e.serverDir)
	e.echo = scStartBackend(t, scEcho)
	return e
}

// server starts `milagro server` on a free port for target, with the
// server key directory and --allow-id for the web namespace unless extra
// says otherwise (--allow-id, --allow-all, --keys).
func (e *scEnv) server(t *testing.T, name, target string, extra ...string) *scSidecar {
	t.Helper()
	args := []string{"--listen", "127.0.0.1:0", "--target", target}
	if !slices.Contains(extra, "--keys") {
		args = append(args, "--keys", e.serverDir)
	}
	if !slices.Contains(extra, "--allow-id") && !slices.Contains(extra, "--allow-all") {
		args = append(args, "--allow-id", "spiffe://test.example/ns/web/**")
	}
	return scStart(t, name, "server", append(args, extra...)...)
}

// client starts `milagro client` towards upstream, with --verify-id the
// server identity unless extra gives one.
func (e *scEnv) client(t *testing.T, name, upstream string, extra ...string) *scSidecar {
	t.Helper()
	args := []string{"--listen", "127.0.0.1:0", "--target", upstream}
	if !slices.Contains(extra, "--keys") {
		args = append(args, "--keys", e.clientDir)
	}
	if !slices.Contains(extra, "--verify-id") {
		args = append(args, "--verify-id", serverID)
	}
	return scStart(t, name, "client", append(args, extra...)...)
}

func mustExchange(t *testing.T, addr string, seed uint64, size int64) time.Duration {
	t.Helper()
	d, err := scExchange(addr, seed, size, time.Minute)
	if err != nil {
		t.Fatalf("%d bytes through %s: %v", size, addr, err)
	}
	return d
}

// mustBeRefused requires that an app connection through the client is
// closed without an answer, promptly.
func mustBeRefused(t *testing.T, cli *scSidecar, within time.Duration) time.Duration {
	t.Helper()
	d, err := scRequestClosed(cli.listen, 10*time.Second)
	if err != nil {
		t.Fatalf("app connection through %s: %v, want it closed without an answer", cli.name, err)
	}
	if d > within {
		t.Errorf("app connection through %s closed after %v, want < %v", cli.name, d, within)
	}
	return d
}

func TestSidecarChannel(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})
	srv := e.server(t, "server", e.echo.addr)
	cli := e.client(t, "client", srv.listen)

	// Scenario 1: data integrity across record (8000 B) boundaries and at
	// volume.
	t.Run("integrity", func(t *testing.T) {
		for _, size := range []int64{1, 8000, 8001, 1 << 20, 64 << 20, 1 << 30} {
			name := fmt.Sprintf("%dB", size)
			if size >= 1<<20 {
				name = fmt.Sprintf("%dMiB", size>>20)
			}
			t.Run(name, func(t *testing.T) {
				if size == 1<<30 {
					if testing.Short() {
						t.Skip("1 GiB: not with -short")
					}
					if os.Getenv("MILAGRO_SKIP_HUGE") == "1" {
						t.Skip("1 GiB: MILAGRO_SKIP_HUGE=1")
					}
				}
				timeout := time.Minute + time.Duration(size/(4<<20))*time.Second // at least 4 MiB/s
				d, err := scExchange(cli.listen, uint64(size), size, timeout)
				if err != nil {
					t.Fatal(err)
				}
				if size >= 1<<20 {
					mbs := float64(size) / 1e6 / d.Seconds()
					t.Logf("%d MiB echoed in %v: %.1f MB/s each way (%.1f MB/s through each sidecar)", size>>20, d.Round(time.Millisecond), mbs, 2*mbs)
				}
			})
		}
	})

	// Scenario 2: many connections at once on the pooled session.
	t.Run("concurrent", func(t *testing.T) {
		const n, size = 100, 64 << 10
		start := time.Now()
		var wg sync.WaitGroup
		var failed atomic.Int64
		for i := range n {
			wg.Go(func() {
				if _, err := scExchange(cli.listen, uint64(1000+i), size, time.Minute); err != nil {
					failed.Add(1)
					t.Errorf("connection %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		t.Logf("%d connections × %d KiB in %v, %d failed", n, size>>10, time.Since(start).Round(time.Millisecond), failed.Load())
	})

	// Scenario 3: the app half-closes; the backend answers only after it
	// saw EOF, and the app gets all of the answer, then EOF.
	t.Run("half-close", func(t *testing.T) {
		after := scStartBackend(t, func(c *net.TCPConn) {
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil {
				return
			}
			var hdr [8]byte
			binary.BigEndian.PutUint64(hdr[:], uint64(n))
			c.Write(append(hdr[:], h.Sum(nil)...))
			for i := range 4 { // then more, slowly
				time.Sleep(50 * time.Millisecond)
				c.Write(bytes.Repeat([]byte{byte(i)}, 100<<10))
			}
			c.CloseWrite()
		})
		s := e.server(t, "server (half-close)", after.addr)
		c := e.client(t, "client (half-close)", s.listen)
		conn, err := net.Dial("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		data := make([]byte, 1<<20+3)
		io.ReadFull(scNewStream(7, int64(len(data))), data)
		if _, err := conn.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read after half-close: %v (got %d bytes)", err, len(got))
		}
		sum := sha256.Sum256(data)
		if len(got) != 8+32+4*(100<<10) || binary.BigEndian.Uint64(got) != uint64(len(data)) || !bytes.Equal(got[8:40], sum[:]) {
			t.Fatalf("answer after half-close: %d bytes, want the backend's %d", len(got), 8+32+4*(100<<10))
		}
		for i := range 4 {
			if p := got[40+i*(100<<10) : 40+(i+1)*(100<<10)]; !bytes.Equal(p, bytes.Repeat([]byte{byte(i)}, 100<<10)) {
				t.Fatalf("answer part %d differs", i)
			}
		}
	})

	// Scenario 16: status, health, readiness and metrics. It reads the
	// counters the subtests above left (traffic, opens, one session), so it
	// runs with them: -run 'TestSidecarChannel$', not …/status alone.
	t.Run("status", func(t *testing.T) {
		for _, sc := range []*scSidecar{srv, cli} {
			if code, body := sc.get(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
				t.Errorf("%s /healthz: %d %q", sc.name, code, body)
			}
			if code, body := sc.get(t, "/readyz"); code != http.StatusOK || body != "ready\n" {
				t.Errorf("%s /readyz: %d %q", sc.name, code, body)
			}
			if v := sc.metric(t, "milagro_handshakes_total", `result="ok"`, `role="`+sc.role+`"`); v < 1 {
				t.Errorf("%s milagro_handshakes_total{result=\"ok\"} = %v, want > 0", sc.name, v)
			}
			if v := sc.metric(t, "milagro_bytes_total", `direction="up"`); v < 1<<20 {
				t.Errorf("%s milagro_bytes_total{direction=\"up\"} = %v", sc.name, v)
			}
			if v := sc.metric(t, "milagro_key_expiry_timestamp_seconds", `kind="set"`); v < float64(time.Now().Unix()) {
				t.Errorf("%s key expiry %v is not in the future", sc.name, v)
			}
		}
		st := srv.statusDoc(t)
		if st.Role != "server" || st.Identity != serverID || st.Domain != testDomain || !st.Ready || st.Draining ||
			st.Listen != srv.listen || st.Sessions < 1 || len(st.Backends) != 1 || !st.Backends[0].OK ||
			st.Keys.Generation != scKeyGen(t, e.serverDir) || st.Keys.LastError != "" {
			t.Errorf("server /_status: %+v", st)
		}
		cs := cli.statusDoc(t)
		if cs.Role != "client" || cs.Identity != clientID || !cs.Ready || len(cs.Upstreams) != 1 ||
			cs.Upstreams[0].Upstream != srv.listen || cs.Upstreams[0].VerifyID != serverID || cs.Upstreams[0].Stats.Opens < 100 ||
			cs.Upstreams[0].Stats.Dials != 1 || len(cs.Keys.PermitEpochs) != 2 || cs.Keys.Generation != scKeyGen(t, e.clientDir) {
			t.Errorf("client /_status: %+v", cs)
		}
		// Every connection so far rode one session.
		if n := srv.logExactly(1, "session open", clientID); n != 1 {
			t.Errorf("server logged %d sessions, want 1", n)
		}
		// Runtime profiles only with --enable-pprof.
		if code, _ := srv.get(t, "/debug/pprof/goroutine?debug=1"); code != http.StatusNotFound {
			t.Errorf("server without --enable-pprof: /debug/pprof/goroutine %d, want 404", code)
		}
		pc := e.client(t, "client (pprof)", srv.listen, "--enable-pprof")
		if code, body := pc.get(t, "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile:") {
			t.Errorf("client with --enable-pprof: /debug/pprof/goroutine %d %.80q", code, body)
		}
		if code, body := pc.get(t, "/debug/pprof/heap"); code != http.StatusOK || len(body) == 0 {
			t.Errorf("client with --enable-pprof: /debug/pprof/heap %d, %d bytes", code, len(body))
		}
	})

	// Scenario 4: the backend is down: status 02, the app connection closes
	// at once, and the client says why.
	t.Run("backend-down", func(t *testing.T) {
		s := e.server(t, "server (no backend)", scClosedPort(t))
		c := e.client(t, "client (no backend)", s.listen)
		for i := range 2 { // cold (with the handshake) and warm
			d := mustBeRefused(t, c, time.Second)
			t.Logf("attempt %d: app connection closed after %v", i, d.Round(time.Millisecond))
		}
		c.waitLog(t, 5*time.Second, 2, "connection refused: no secure stream", "refused by server: target unreachable")
		s.waitLog(t, 5*time.Second, 2, "backend unreachable", "connection refused")
		if v := c.metric(t, "milagro_streams_total", `result="unreachable"`); v != 2 {
			t.Errorf("client milagro_streams_total{result=\"unreachable\"} = %v, want 2", v)
		}
	})

	// Scenario 5: the server restarts on the same port; the client
	// reconnects.
	t.Run("server-restart", func(t *testing.T) {
		s := e.server(t, "server (restart)", e.echo.addr)
		c := e.client(t, "client (restart)", s.listen)
		mustExchange(t, c.listen, 1, 100<<10)
		s.stop()
		c.waitLog(t, 5*time.Second, 1, "session closed")
		mustBeRefused(t, c, time.Second) // down: fail fast
		s2 := s.restart(t)
		start := time.Now()
		var err error
		for time.Since(start) < 10*time.Second {
			if _, err = scExchange(c.listen, 2, 100<<10, 10*time.Second); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("no traffic 10 s after the server came back: %v", err)
		}
		t.Logf("traffic flows again %v after the restarted server was ready", time.Since(start).Round(time.Millisecond))
		if n := s2.logExactly(1, "session open", clientID); n != 1 {
			t.Errorf("restarted server logged %d sessions, want 1", n)
		}
	})

	// The server dies in the middle of a download (the app has half-closed
	// and only reads): the app connection is reset, never ended cleanly as
	// if the answer were complete.
	t.Run("truncation", func(t *testing.T) {
		download := scStartBackend(t, func(c *net.TCPConn) {
			if _, err := io.Copy(io.Discard, c); err != nil {
				return
			}
			io.Copy(c, scNewStream(6, 1<<30))
			c.CloseWrite()
		})
		s := e.server(t, "server (killed mid-download)", download.addr)
		c := e.client(t, "client (killed mid-download)", s.listen)
		conn, err := net.Dial("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Minute))
		conn.Write([]byte("GET"))
		conn.(*net.TCPConn).CloseWrite()
		if _, err := io.CopyN(io.Discard, conn, 1<<20); err != nil {
			t.Fatalf("download did not start: %v", err)
		}
		s.signal(syscall.SIGKILL)
		n, err := io.Copy(io.Discard, conn)
		if err == nil || !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("download through a server killed mid-way: %d more bytes, then %v; want ECONNRESET, not a clean end", n, err)
		}
		c.waitLog(t, 5*time.Second, 1, "session closed")
	})

	// Scenario 15: kill -9 of the client sidecar, then a restart on the
	// same port.
	t.Run("client-kill", func(t *testing.T) {
		s := e.server(t, "server (client kill)", e.echo.addr)
		c := e.client(t, "client (kill -9)", s.listen)
		mustExchange(t, c.listen, 3, 100<<10)
		c.signal(syscall.SIGKILL)
		if code := c.wait(10 * time.Second); code != -1 {
			t.Fatalf("after SIGKILL: exit %d", code)
		}
		s.waitLog(t, 5*time.Second, 1, "session closed", clientID)
		c2 := c.restart(t)
		mustExchange(t, c2.listen, 4, 100<<10)
		if n := s.logExactly(2, "session open", clientID); n != 2 {
			t.Errorf("server logged %d sessions, want 2", n)
		}
	})

	// Scenario 7 (first half): an identity outside --allow-id.
	t.Run("unauthorised", func(t *testing.T) {
		s := e.server(t, "server (admins only)", e.echo.addr, "--allow-id", "spiffe://test.example/ns/admin/*")
		c := e.client(t, "client (not an admin)", s.listen)
		mustBeRefused(t, c, 2*time.Second)
		s.waitLog(t, 5*time.Second, 1, "handshake failed", "not authorised", clientID)
		c.waitLog(t, 5*time.Second, 1, "connection refused: no secure stream", "handshake_failure")
		if v := s.metric(t, "milagro_handshakes_total", `result="unauthorized"`); v < 1 {
			t.Errorf("server milagro_handshakes_total{result=\"unauthorized\"} = %v", v)
		}
		if n := s.logNone(quiet, "session open"); n != 0 {
			t.Errorf("server opened %d sessions", n)
		}
	})

	// Scenario 8: the server is not who --verify-id names. With a pattern
	// the server proves its own identity in Msg2 and the client aborts
	// before Msg3; with a literal identity the server has no key for it.
	t.Run("verify-id", func(t *testing.T) {
		s := e.server(t, "server (verify-id)", e.echo.addr)
		c := e.client(t, "client (pattern)", s.listen, "--verify-id", "spiffe://test.example/ns/other/*")
		mustBeRefused(t, c, 2*time.Second)
		c.waitLog(t, 5*time.Second, 1, "connection refused: no secure stream", `does not match --verify-id \"spiffe://test.example/ns/other/*\"`)
		s.waitLog(t, 5*time.Second, 1, "handshake failed", "read Msg3")
		if n := s.logNone(quiet, "handshake failed", "verify client"); n != 0 {
			t.Errorf("the server got a Msg3 to verify")
		}

		c2 := e.client(t, "client (literal)", s.listen, "--verify-id", "spiffe://test.example/ns/other/sa/x")
		mustBeRefused(t, c2, 2*time.Second)
		s.waitLog(t, 5*time.Second, 1, "handshake failed", "server identity not accepted", "spiffe://test.example/ns/other/sa/x")
		if n := s.logNone(quiet, "session open"); n != 0 {
			t.Errorf("server opened %d sessions", n)
		}
	})

	// Scenario 10: an attacker on the path records a whole connection of
	// the client and replays it to the server: the server's fresh y makes
	// the recorded Msg3 worthless; no Msg4, no data.
	t.Run("replay", func(t *testing.T) {
		s := e.server(t, "server (replay)", e.echo.addr)
		rl := scStartRelay(t, s.listen)
		c := e.client(t, "client (via relay)", rl.addr, "--session-idle-timeout", "300ms")
		marker := bytes.Repeat([]byte("PLAINTEXT-MARKER-"), 1000)
		conn, err := net.Dial("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		conn.Write(marker)
		conn.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(conn); err != nil || !bytes.Equal(got, marker) {
			t.Fatalf("through the relay: %d bytes, %v", len(got), err)
		}
		conn.Close()
		c.waitLog(t, 5*time.Second, 1, "session closed") // idle: the whole connection is recorded
		rec := rl.capture()
		if len(rec) < 1000 || bytes.Contains(rec, []byte("PLAINTEXT-MARKER")) {
			t.Fatalf("recorded %d bytes; plaintext visible: %v", len(rec), bytes.Contains(rec, []byte("PLAINTEXT-MARKER")))
		}
		failedBefore := s.logMatches("handshake failed")

		r, err := net.Dial("tcp", s.listen)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		r.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := r.Write(rec); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
			t.Fatal(err)
		}
		answer, err := io.ReadAll(r)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("replay: reading the server's answer: %v (got %d bytes)", err, len(answer))
		}
		var kinds []string
		br := bytes.NewReader(answer)
		for br.Len() > 0 {
			f, err := mpinkex.ReadFrame(br)
			if err != nil {
				t.Fatalf("replay: server sent %d bytes that are not frames: %v", len(answer), err)
			}
			m, err := mpinkex.ParseMessage(f)
			if err != nil {
				t.Fatalf("replay: server sent an unparsable message: %v", err)
			}
			kinds = append(kinds, fmt.Sprintf("%T", m))
		}
		if want := []string{"*mpinkex.Msg2", "*mpinkex.Alert"}; !slices.Equal(kinds, want) {
			t.Errorf("server answered the replay with %v, want %v", kinds, want)
		}
		s.waitLog(t, 5*time.Second, failedBefore+1, "handshake failed", "verify client", "authentication failed")
		if n := s.logExactly(1, "session open"); n != 1 {
			t.Errorf("server logged %d sessions, want only the genuine one", n)
		}
	})

	// Scenario 11: HTTP mode sets the authenticated identity, whatever the
	// client sent, on every request of a kept-alive connection.
	t.Run("http", func(t *testing.T) {
		backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			json.NewEncoder(w).Encode(map[string]any{"ids": r.Header.Values("X-Milagro-Client-Id"), "body": string(body), "host": r.Host})
		}))
		defer backend.Close()
		s := e.server(t, "server (http)", backend.Listener.Addr().String(), "--http")
		c := e.client(t, "client (http)", s.listen)
		hc := scHTTPVia(c.listen)
		defer hc.CloseIdleConnections()
		for i := range 3 {
			req, _ := http.NewRequest(http.MethodPost, "http://pay.internal/whoami", strings.NewReader(fmt.Sprintf("request %d", i)))
			req.Header.Set("X-Milagro-Client-Id", "spiffe://test.example/ns/admin/sa/root")
			req.Header.Add("X-Milagro-Client-Id", "spiffe://evil")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var got struct {
				IDs  []string `json:"ids"`
				Body string   `json:"body"`
				Host string   `json:"host"`
			}
			if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &got) != nil {
				t.Errorf("request %d (on a kept-alive connection: %v): HTTP %d %q", i, i > 0, resp.StatusCode, b)
				if i > 0 && resp.StatusCode == http.StatusBadGateway {
					t.Errorf("net/http cancels a connection whose Read returns a deadline error that is not a net.Error " +
						"with Timeout() (psk.Stream wraps os.ErrDeadlineExceeded with fmt.Errorf), so every request after " +
						"the first on a kept-alive connection fails")
				}
				continue
			}
			if !slices.Equal(got.IDs, []string{clientID}) || got.Body != fmt.Sprintf("request %d", i) || got.Host != "pay.internal" {
				t.Errorf("request %d: backend saw %+v, want only the authenticated identity %s", i, got, clientID)
			}
		}
	})

	// Scenario 12: PROXY protocol v2 to the backend, identity in TLV 0xE0.
	t.Run("proxy-protocol", func(t *testing.T) {
		headers := make(chan *proxy.ProxyHeader, 4)
		pp := scStartBackend(t, func(c *net.TCPConn) {
			h, err := proxy.ReadProxyV2(c)
			if err != nil {
				headers <- nil
				return
			}
			headers <- h
			scEcho(c)
		})
		s := e.server(t, "server (proxy protocol)", pp.addr, "--proxy-protocol")
		c := e.client(t, "client (proxy protocol)", s.listen)
		mustExchange(t, c.listen, 5, 300<<10)
		h := <-headers
		if h == nil {
			t.Fatal("backend got no valid PROXY v2 header")
		}
		if id, ok := h.Identity(); !ok || id != clientID {
			t.Errorf("identity TLV %q (present %v), want %s", id, ok, clientID)
		}
		if h.Local || h.Dst.String() != s.listen || !h.Src.Addr().IsLoopback() {
			t.Errorf("header %+v: want PROXY from the client sidecar to %s", h, s.listen)
		}
	})

	// Scenario 13: the HTTP CONNECT forward proxy of the client.
	t.Run("forward-proxy", func(t *testing.T) {
		s := e.server(t, "server (forward proxy)", e.echo.addr)
		c := scStart(t, "client (forward proxy)", "client", "--forward-proxy", "127.0.0.1:0", "--keys", e.clientDir,
			"--route", "echo.internal:7="+s.listen+"@"+serverID)
		if c.fwd == "" || c.listen != "" {
			t.Fatalf("client ready with listen %q, forward proxy %q", c.listen, c.fwd)
		}
		for _, dest := range []string{"echo.internal:7", "ECHO.Internal:7"} {
			conn, br, code := scConnect(t, c.fwd, dest, []byte("early "))
			if code != http.StatusOK {
				conn.Close()
				t.Fatalf("CONNECT %s: HTTP %d", dest, code)
			}
			conn.Write([]byte("bytes"))
			conn.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(br)
			conn.Close()
			if err != nil || string(got) != "early bytes" {
				t.Errorf("CONNECT %s tunnel: %q, %v; want the echo of \"early bytes\"", dest, got, err)
			}
		}
		conn, _, code := scConnect(t, c.fwd, "nowhere.internal:80", nil)
		conn.Close()
		if code != http.StatusForbidden {
			t.Errorf("CONNECT to an unknown destination: HTTP %d, want 403", code)
		}
		c.waitLog(t, 5*time.Second, 1, "CONNECT refused: no route", "nowhere.internal:80")
		resp, err := scHTTPVia(c.fwd).Get("http://echo.internal:7/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET through the CONNECT proxy: HTTP %d, want 405", resp.StatusCode)
		}
	})

	// Scenario 14: SIGTERM drains: an in-flight request completes and the
	// exit status is 0; past --shutdown-timeout connections are cut and
	// the exit status is 1.
	t.Run("drain", func(t *testing.T) {
		slowBackend := func(delay time.Duration) *scBackend {
			return scStartBackend(t, func(c *net.TCPConn) {
				if _, err := io.Copy(io.Discard, c); err != nil {
					return
				}
				time.Sleep(delay)
				c.Write([]byte("done"))
			})
		}
		inflight := func(t *testing.T, s, c *scSidecar) net.Conn {
			t.Helper()
			conn, err := net.Dial("tcp", c.listen)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(20 * time.Second))
			conn.Write([]byte("request"))
			conn.(*net.TCPConn).CloseWrite()
			deadline := time.Now().Add(10 * time.Second)
			for s.statusDoc(t).Streams != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the request did not reach the server")
				}
				time.Sleep(10 * time.Millisecond)
			}
			return conn
		}
		t.Run("clean", func(t *testing.T) {
			s := e.server(t, "server (drain)", slowBackend(time.Second).addr)
			c := e.client(t, "client (drain)", s.listen)
			conn := inflight(t, s, c)
			defer conn.Close()
			start := time.Now()
			s.signal(syscall.SIGTERM)
			// A new connection while the server drains is refused (the
			// session got GoAway, the listener is closed), and must not
			// disturb the request in flight on that session.
			s.waitLog(t, 5*time.Second, 1, "draining")
			time.Sleep(100 * time.Millisecond)
			mustBeRefused(t, c, 2*time.Second)
			got, err := io.ReadAll(conn)
			if err != nil || string(got) != "done" {
				t.Errorf("in-flight request during drain: %q, %v; want it answered", got, err)
			}
			if code := s.wait(15 * time.Second); code != 0 {
				t.Errorf("exit %d after a clean drain, want 0", code)
			}
			t.Logf("drained and exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
			s.waitLog(t, time.Second, 1, "drained")
		})
		t.Run("timeout", func(t *testing.T) {
			s := e.server(t, "server (drain timeout)", slowBackend(3*time.Second).addr, "--shutdown-timeout", "200ms")
			c := e.client(t, "client (drain timeout)", s.listen)
			conn := inflight(t, s, c)
			defer conn.Close()
			start := time.Now()
			s.signal(syscall.SIGTERM)
			if code := s.wait(15 * time.Second); code != 1 {
				t.Errorf("exit %d after a drain timeout, want 1", code)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("exit %v after SIGTERM with --shutdown-timeout 200ms", d)
			}
			if !strings.Contains(s.stderr.String(), "shutdown timeout") {
				t.Errorf("stderr does not say why:\n%s", s.stderr.String())
			}
			// The cut reaches the app as a reset, not as a clean end of a
			// (truncated) answer.
			got, err := io.ReadAll(conn)
			if string(got) == "done" || !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("request cut by the drain timeout: app read %q, %v; want ECONNRESET", got, err)
			}
		})
	})

	// A rolling update: the client's upstream is a load balancer in front
	// of two replicas; replica A drains (SIGTERM) while app connections it
	// carries are open, on two pooled sessions that both have room for
	// more. Each of those sessions now refuses new streams (GoAway), and
	// every new app connection must go through anyway — to a new session,
	// which the balancer sends to replica B — while the old ones finish on
	// A. (The pool used to try two sessions and give up: the first new
	// connection failed.)
	t.Run("rolling update", func(t *testing.T) {
		a := e.server(t, "server (replica A)", e.echo.addr, "--shutdown-timeout", "30s")
		b := e.server(t, "server (replica B)", e.echo.addr)
		lb := scStartRelay(t, a.listen, b.listen)
		c := e.client(t, "client (rolling)", lb.addr, "--max-streams-per-session", "2")

		// Four app connections, opened one by one: two sessions to A with
		// two streams each (the pool fills the least loaded session).
		held := holdConns(t, c.listen, 4, 30*time.Second)
		if got := lb.served(); got[0] != 2 || got[1] != 0 {
			t.Fatalf("balancer sent %v connections to (A, B), want 2 sessions to A", got)
		}
		// Close one stream of each session: both have room again.
		for _, i := range []int{1, 3} {
			held[i].(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(held[i]); err != nil || len(rest) != 0 {
				t.Fatalf("closing app connection %d: %q, %v", i, rest, err)
			}
		}
		if !eventually(5*time.Second, func() bool { return a.statusDoc(t).Streams == 2 }) {
			t.Fatalf("replica A carries %d streams, want 2", a.statusDoc(t).Streams)
		}

		a.signal(syscall.SIGTERM)
		a.waitLog(t, 5*time.Second, 1, "draining")
		time.Sleep(100 * time.Millisecond) // the GoAways reach the client
		for i := range 5 {
			if _, err := scExchange(c.listen, uint64(100+i), 10<<10, 20*time.Second); err != nil {
				t.Fatalf("new app connection %d while replica A drains: %v", i, err)
			}
		}
		if got := lb.served(); got[0] != 2 || got[1] < 1 {
			t.Errorf("balancer sent %v connections to (A, B), want the new sessions to B", got)
		}
		// The connections on A go on, and end; A exits drained.
		for _, i := range []int{0, 2} {
			echoLine(t, held[i], fmt.Sprintf("still there %d", i))
			held[i].(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(held[i]); err != nil || len(rest) != 0 {
				t.Fatalf("ending app connection %d on the draining replica: %q, %v", i, rest, err)
			}
		}
		if code := a.wait(15 * time.Second); code != 0 {
			t.Errorf("replica A exited %d, want 0 (drained)", code)
		}
		if n := c.logNone(quiet, "connection refused: no secure stream"); n != 0 {
			t.Errorf("the client refused %d app connections", n)
		}
	})

	// Scenario 6: key rotation under load.
	t.Run("rotation", func(t *testing.T) {
		cdir, sdir := filepath.Join(e.c.base, "rot-client"), filepath.Join(e.c.base, "rot-server")
		e.c.in(t).fetchClient(clientID, cdir)
		e.c.in(t).fetchServer(serverID, sdir)
		s := e.server(t, "server (rotation)", e.echo.addr, "--keys", sdir)
		// Small sessions that expire when idle, so that handshakes happen
		// all along, with whatever keys are current.
		c := e.client(t, "client (rotation)", s.listen, "--keys", cdir, "--max-streams-per-session", "4", "--session-idle-timeout", "100ms")
		gens := map[string]bool{scKeyGen(t, cdir): true, scKeyGen(t, sdir): true}

		var ok, failed atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
		t.Cleanup(halt) // also when the test fails before the end
		for w := range 20 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := scExchange(c.listen, uint64(w<<20+i), 2<<10, 20*time.Second); err != nil {
						failed.Add(1)
						t.Errorf("worker %d request %d: %v", w, i, err)
					} else {
						ok.Add(1)
					}
					if i%10 == 9 {
						time.Sleep(150 * time.Millisecond) // let sessions go idle
					}
				}
			})
		}
		start := time.Now()
		rotations := 0
		for time.Since(start) < 5*time.Second || rotations < 3 {
			e.c.in(t).fetchClient(clientID, cdir)
			e.c.in(t).fetchServer(serverID, sdir)
			gens[scKeyGen(t, cdir)], gens[scKeyGen(t, sdir)] = true, true
			rotations++
			time.Sleep(300 * time.Millisecond)
		}
		halt()
		hs := s.metric(t, "milagro_handshakes_total", `result="ok"`)
		t.Logf("%d requests, %d failed, %d rotations of each key directory, %v handshakes, in %v",
			ok.Load(), failed.Load(), rotations, hs, time.Since(start).Round(time.Millisecond))
		if failed.Load() != 0 || ok.Load() < 100 {
			t.Errorf("%d requests failed, %d succeeded", failed.Load(), ok.Load())
		}
		if hs < 3 {
			t.Errorf("only %v handshakes: the rotation did not meet new sessions", hs)
		}
		// Both sidecars serve the newest generation, loaded by fsnotify.
		for _, x := range []struct {
			sc  *scSidecar
			dir string
		}{{s, sdir}, {c, cdir}} {
			want := scKeyGen(t, x.dir)
			deadline := time.Now().Add(3 * time.Second)
			for {
				st := x.sc.statusDoc(t)
				if st.Keys.Generation == want && st.Keys.LastError == "" {
					if st.Keys.LastSource != "fsnotify" {
						t.Errorf("%s: last reload by %q, want fsnotify", x.sc.name, st.Keys.LastSource)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s serves generation %q (error %q), want %q", x.sc.name, st.Keys.Generation, st.Keys.LastError, want)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if v := x.sc.metric(t, "milagro_key_reloads_total", `result="error"`); v != 0 {
				t.Errorf("%s: %v failed reloads", x.sc.name, v)
			}
		}
		if n := len(gens); n < 8 {
			t.Errorf("%d distinct generations written", n)
		}
	})
}

// Scenarios 7 (second half) and 9 in domains with 2-second epochs: keys of
// another domain are refused; a revoked identity is refused once its time
// permits have expired.
func TestSidecarTrust(t *testing.T) {
	t.Parallel()
	const epochLen = 2
	e := scNewEnv(t, clusterConfig{n: 3, epochLen: epochLen, passphrase: -1})
	other := newCluster(t, clusterConfig{n: 3, epochLen: epochLen, passphrase: -1})

	// Scenario 9: a client whose keys come from another domain (another
	// set of three D-TAs, same domain name and epoch length) fails the
	// server's check; the same server accepts its own domain's client.
	t.Run("other-domain", func(t *testing.T) {
		foreign := filepath.Join(other.base, "keys-client")
		other.in(t).fetchClient(clientID, foreign)
		s := e.server(t, "server (domain A)", e.echo.addr)
		c := e.client(t, "client (domain B)", s.listen, "--keys", foreign)
		mustBeRefused(t, c, 2*time.Second)
		s.waitLog(t, 5*time.Second, 1, "handshake failed", "verify client", "authentication failed")
		c.waitLog(t, 5*time.Second, 1, "connection refused: no secure stream", "handshake_failure")
		good := e.client(t, "client (domain A)", s.listen)
		mustExchange(t, good.listen, 9, 10<<10)
		if n := s.logExactly(1, "session open"); n != 1 {
			t.Errorf("server opened %d sessions, want 1 (domain A's client)", n)
		}
	})

	// Scenario 7: revocation with --require-permit and no epoch grace at the
	// server.
	t.Run("revoked", func(t *testing.T) {
		cdir := filepath.Join(e.c.base, "keys-revoked")
		r := e.c.in(t).fetchClient(clientID, cdir)
		_, last := permitEpochs(t, r.stdout)
		expiry := time.Unix(int64(last+1)*epochLen, 0)
		s := e.server(t, "server (require permit)", e.echo.addr, "--require-permit", "--epoch-grace", "0s")
		// The client would still offer its last permit for 10 s after its
		// epoch; the server, with --epoch-grace 0s, must not take it.
		c := e.client(t, "client (to be revoked)", s.listen, "--keys", cdir, "--epoch-grace", "10s", "--session-idle-timeout", "200ms")
		// Before revocation (retried: a boundary may pass between the
		// client choosing its permit and the server checking it).
		var err error
		for range 3 {
			if _, err = scExchange(c.listen, 10, 10<<10, 20*time.Second); err == nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("before revocation: %v", err)
		}
		body, _ := json.Marshal(map[string]string{"identity": clientID})
		for _, d := range e.c.dtas {
			if status, _, b := post(t, d.url()+"/v1/revoke", e.c.tokens["admin"], "application/json", body); status != http.StatusOK {
				t.Fatalf("revoke at %s: HTTP %d %s", d.id, status, b)
			}
		}
		revoked := time.Now()
		if left := time.Until(expiry); left > 1500*time.Millisecond {
			// Permits already issued live until their epoch ends.
			if _, err := scExchange(c.listen, 11, 10<<10, 20*time.Second); err != nil {
				t.Errorf("revoked, permit still valid for %v: %v", left, err)
			} else {
				t.Logf("revoked, but the permit is valid %v more: still served", left.Round(time.Millisecond))
			}
		}
		time.Sleep(time.Until(expiry) + 500*time.Millisecond) // permits expired, sessions idle
		// None failed before the permits expired, but those the client
		// retried because an epoch boundary passed during them.
		lcNoFailedHandshakes(t, s, 0, c)
		for i := range 3 {
			// The first attempt meets the server's refusal; the client then
			// backs off and refuses the next ones at once.
			mustBeRefused(t, c, 2*time.Second)
			if i == 0 {
				s.waitLog(t, 5*time.Second, 1, "handshake failed", "check epoch", "time permit epoch not acceptable", fmt.Sprintf("epoch %d", last))
			}
		}
		c.waitLog(t, 5*time.Second, 3, "connection refused: no secure stream", "handshake_failure")
		t.Logf("revoked %v before the last permit expired; new connections refused after that", expiry.Sub(revoked).Round(time.Millisecond))
		// A client of the domain that is not revoked still gets in.
		okDir := filepath.Join(e.c.base, "keys-other-client")
		e.c.in(t).fetchClient("spiffe://test.example/ns/web/sa/other", okDir)
		ok := e.client(t, "client (not revoked)", s.listen, "--keys", okDir, "--epoch-grace", "0s")
		for range 3 {
			if _, err = scExchange(ok.listen, 12, 10<<10, 20*time.Second); err == nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("a client that is not revoked: %v", err)
		}
	})
}

// echoLine writes msg on an app connection to an echo path and reads it
// back.
// holdConns opens n connections to addr, one after the other, each with
// the deadline d from now, and checks that each carries an echo; they are
// closed when the test ends.
func holdConns(t *testing.T, addr string, n int, d time.Duration) []net.Conn {
	t.Helper()
	held := make([]net.Conn, n)
	for i := range held {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(d))
		echoLine(t, conn, fmt.Sprintf("held %d", i))
		held[i] = conn
	}
	return held
}

func echoLine(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
}
