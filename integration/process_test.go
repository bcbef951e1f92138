package integration

// Real-process tests of what the sidecar tests cover in process: a failed
// reload kept, logged, counted and shown; SIGHUP and --timed-reload wired
// to the process; --max-handshakes (slow peers hold no slot); the client's --max-conns; --quiet
// handshake-errs; the metrics and /_status fields of the issue; /readyz and
// the listener during a drain; the client's own drain; the backend's
// half-close.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// scBreakKeyDir installs, by the same ..data swap keys fetch uses, a new
// generation of dir that lacks dta-3's envelope (a partial set), and
// returns its name.
func scBreakKeyDir(t *testing.T, dir string) string {
	t.Helper()
	cur := filepath.Join(dir, scKeyGen(t, dir))
	gen, err := os.MkdirTemp(dir, "..gen-broken.")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(cur)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "dta-3.json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(cur, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(gen, e.Name()), b, 0o600)
	}
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	return filepath.Base(gen)
}

func scStatusMap(t *testing.T, sc *scSidecar) map[string]any {
	t.Helper()
	_, body := sc.get(t, "/_status")
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("/_status: %v: %s", err, body)
	}
	return m
}

func TestKeystoreProcess(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})

	// A broken generation in a running server's key directory: the old
	// keys keep serving; the failure is logged, counted and in /_status.
	t.Run("failed-reload", func(t *testing.T) {
		sdir := filepath.Join(e.c.base, "fail-server")
		e.c.in(t).fetchServer(serverID, sdir)
		good := scKeyGen(t, sdir)
		s := e.server(t, "server (broken reload)", e.echo.addr, "--keys", sdir)
		c := e.client(t, "client (broken reload)", s.listen)
		mustExchange(t, c.listen, 1, 10<<10)

		bad := scBreakKeyDir(t, sdir)
		s.waitLog(t, 5*time.Second, 1, "key reload failed; keeping the current keys", "dta-3")
		if v := s.metric(t, "milagro_key_reloads_total", `result="error"`); v < 1 {
			t.Errorf("milagro_key_reloads_total{result=\"error\"} = %v after a broken generation", v)
		}
		st := s.statusDoc(t)
		if st.Keys.Generation != good || st.Keys.LastError == "" || !st.Ready {
			t.Errorf("after broken generation %s: /_status keys %+v ready %v; want generation %s kept, an error, ready", bad, st.Keys, st.Ready, good)
		}
		// New handshakes still work with the kept keys.
		c2 := e.client(t, "client 2 (broken reload)", s.listen)
		mustExchange(t, c2.listen, 2, 10<<10)
		mustExchange(t, c.listen, 3, 10<<10)

		// SIGHUP, to the process, reloads (and fails again: still broken).
		before := s.metric(t, "milagro_key_reloads_total", `result="error"`)
		s.signal(syscall.SIGHUP)
		if !eventually(5*time.Second, func() bool {
			st := s.statusDoc(t)
			return st.Keys.LastSource == "sighup" && s.metric(t, "milagro_key_reloads_total", `result="error"`) > before
		}) {
			t.Errorf("SIGHUP to the server process: /_status %+v, reload errors %v (were %v)", s.statusDoc(t).Keys, s.metric(t, "milagro_key_reloads_total", `result="error"`), before)
		}
		// Recovery: a good set clears the error.
		e.c.in(t).fetchServer(serverID, sdir)
		want := scKeyGen(t, sdir)
		if !eventually(5*time.Second, func() bool {
			st := s.statusDoc(t)
			return st.Keys.Generation == want && st.Keys.LastError == ""
		}) {
			t.Errorf("after a good set: %+v, want generation %s, no error", s.statusDoc(t).Keys, want)
		}
	})

	// SIGHUP alone, to the process, reloads and counts an ok reload.
	t.Run("sighup", func(t *testing.T) {
		s := e.server(t, "server (sighup)", e.echo.addr)
		ok := s.metric(t, "milagro_key_reloads_total", `result="ok"`)
		s.signal(syscall.SIGHUP)
		if !eventually(5*time.Second, func() bool {
			return s.statusDoc(t).Keys.LastSource == "sighup" && s.metric(t, "milagro_key_reloads_total", `result="ok"`) > ok
		}) {
			t.Errorf("SIGHUP: last reload source %q, ok reloads %v (were %v)", s.statusDoc(t).Keys.LastSource,
				s.metric(t, "milagro_key_reloads_total", `result="ok"`), ok)
		}
		if s.exited() {
			t.Fatalf("SIGHUP killed the server: %v", s.state)
		}
	})

	// SIGHUP reloads keys, not the --config file: a changed file is
	// reported, with what to do (systemctl reload users expect stunnel's
	// re-read); an unchanged one is not.
	t.Run("sighup-config", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "server.yaml")
		if err := os.WriteFile(cfg, []byte("max-handshakes: 32\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := e.server(t, "server (sighup config)", e.echo.addr, "--config", cfg)
		s.signal(syscall.SIGHUP)
		s.waitLog(t, 5*time.Second, 1, "keys unchanged: same generation")
		if n := s.logNone(quiet, "the --config file has changed since the start: restart to apply it (SIGHUP reloads keys only)"); n != 0 {
			t.Errorf("unchanged config: %d warnings", n)
		}
		if err := os.WriteFile(cfg, []byte("max-handshakes: 8\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s.signal(syscall.SIGHUP)
		s.waitLog(t, 5*time.Second, 1, "the --config file has changed since the start: restart to apply it (SIGHUP reloads keys only)", cfg)
		s.waitLog(t, 5*time.Second, 2, "keys unchanged: same generation")
	})

	// --timed-reload reloads on its own.
	t.Run("timed-reload", func(t *testing.T) {
		c := e.client(t, "client (timed reload)", e.echo.addr, "--timed-reload", "200ms")
		if !eventually(5*time.Second, func() bool { return c.statusDoc(t).Keys.LastSource == "timer" }) {
			t.Errorf("--timed-reload 200ms: last reload source %q after 5 s", c.statusDoc(t).Keys.LastSource)
		}
	})
}

func TestLimitsProcess(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})

	// --max-handshakes 1 bounds pairing work, not waiting: peers that
	// connect and send nothing, or send a Msg1 and never a Msg3, hold no
	// slot, so a client sidecar gets through while they wait (they show in
	// handshakes_in_flight). The overloaded Alert itself, which needs the
	// slot busy with pairing work at the moment a message arrives, is
	// tested in sidecar.TestServerOverloaded.
	t.Run("max-handshakes", func(t *testing.T) {
		s := e.server(t, "server (max-handshakes 1)", e.echo.addr, "--max-handshakes", "1")
		msg1 := (&mpinkex.Msg1{Layers: mpinkex.LayerDTLS, ClientID: "spiffe://attacker.example/x", UPrime: pairing.G1Generator(), R: pairing.G1Generator()}).Marshal()
		for i := range 4 {
			hold, err := net.Dial("tcp", s.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer hold.Close()
			if i == 0 {
				hold.Write(append([]byte{byte(len(msg1) >> 8), byte(len(msg1))}, msg1...))
			}
		}
		if !eventually(5*time.Second, func() bool {
			var m map[string]any
			_, body := s.get(t, "/_status")
			json.Unmarshal([]byte(body), &m)
			return m["handshakes_in_flight"] == float64(4)
		}) {
			t.Fatal("the held handshakes are not in flight")
		}
		cli := e.client(t, "client (slow peers at the server)", s.listen)
		if _, err := scExchange(cli.listen, 4, 1<<10, 5*time.Second); err != nil {
			t.Errorf("a client while 4 slow peers wait at a server with one slot: %v", err)
		}
		if v := s.metric(t, "milagro_handshakes_total", `result="overloaded"`); v != 0 {
			t.Errorf("server milagro_handshakes_total{result=\"overloaded\"} = %v, want 0", v)
		}
	})

	// The client's --max-conns 2: a third app connection is closed without
	// an answer; a slot frees when a connection ends.
	t.Run("client-max-conns", func(t *testing.T) {
		s := e.server(t, "server (client max-conns)", e.echo.addr)
		c := e.client(t, "client (max-conns 2)", s.listen, "--max-conns", "2")
		held := holdConns(t, c.listen, 2, 20*time.Second)
		mustBeRefused(t, c, 2*time.Second)
		c.waitLog(t, 5*time.Second, 1, "connection limit reached; closing")
		held[0].Close()
		var xerr error
		if !eventually(5*time.Second, func() bool {
			_, xerr = scExchange(c.listen, 5, 1<<10, 5*time.Second)
			return xerr == nil
		}) {
			t.Errorf("no slot freed: %v", xerr)
		}
		echoLine(t, held[1], "still")
	})

	// --quiet=handshake-errs: probe noise (a scanner's bytes) is counted,
	// not logged; a proven identity refused by --allow-id is still logged.
	t.Run("quiet", func(t *testing.T) {
		s := e.server(t, "server (quiet)", e.echo.addr, "--allow-id", "spiffe://test.example/ns/admin/*", "--quiet=handshake-errs")
		probe, err := net.Dial("tcp", s.listen)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = probe.Write([]byte("GET / HTTP/1.1\r\nHost: scanner\r\n\r\n"))
		_, _ = io.Copy(io.Discard, probe) // the server ends it
		probe.Close()
		if !eventually(5*time.Second, func() bool { return s.metric(t, "milagro_handshakes_total", `result="bad_message"`) >= 1 }) {
			t.Fatal("the scanner's bytes were not counted")
		}
		if n := s.logNone(quiet, "handshake failed"); n != 0 {
			t.Errorf("--quiet=handshake-errs: %d \"handshake failed\" lines for a scanner", n)
		}
		c := e.client(t, "client (quiet)", s.listen)
		mustBeRefused(t, c, 2*time.Second)
		if !eventually(5*time.Second, func() bool { return s.metric(t, "milagro_handshakes_total", `result="unauthorized"`) >= 1 }) {
			t.Fatal("the refused handshake was not counted")
		}
		if n := s.logCount(1, "handshake failed", "client not authorised", clientID); n != 1 {
			t.Errorf("--quiet=handshake-errs: %d \"handshake failed\" lines for the identity --allow-id refused, want 1:\n%s", n, s.stderr.String())
		}
	})
}

func TestObservabilityProcess(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})
	slow := scStartBackend(t, func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err != nil {
			return
		}
		time.Sleep(2 * time.Second)
		c.Write([]byte("done"))
	})
	s := e.server(t, "server (observe)", slow.addr, "--shutdown-timeout", "20s")
	c := e.client(t, "client (observe)", s.listen)
	conn, err := net.Dial("tcp", c.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	conn.Write([]byte("request"))
	conn.(*net.TCPConn).CloseWrite()
	if !eventually(10*time.Second, func() bool { return s.statusDoc(t).Streams == 1 }) {
		t.Fatal("the request did not reach the server")
	}

	// Metrics the issue names, on both sides.
	for _, sc := range []*scSidecar{s, c} {
		for _, m := range []struct {
			name   string
			labels []string
			min    float64
		}{
			{"milagro_accepts_total", nil, 1},
			{"milagro_handshake_duration_seconds_count", nil, 1},
			{"milagro_sessions_open", nil, 1},
			{"milagro_streams_open", nil, 1},
			{"milagro_key_expiry_timestamp_seconds", []string{`kind="set"`}, float64(time.Now().Unix())},
		} {
			if v := sc.metric(t, m.name, m.labels...); v < m.min {
				t.Errorf("%s %s%v = %v, want ≥ %v", sc.name, m.name, m.labels, v, m.min)
			}
		}
	}
	if v := c.metric(t, "milagro_key_expiry_timestamp_seconds", `kind="permit"`); v < float64(time.Now().Unix()) {
		t.Errorf("client permit expiry %v", v)
	}
	// /_status: key expiry and the last reload.
	for _, sc := range []*scSidecar{s, c} {
		keys, _ := scStatusMap(t, sc)["keys"].(map[string]any)
		for _, k := range []string{"expires_at", "last_reload", "loaded_at"} {
			ts, _ := keys[k].(string)
			if tm, err := time.Parse(time.RFC3339Nano, ts); err != nil || tm.IsZero() {
				t.Errorf("%s /_status keys.%s = %v", sc.name, k, keys[k])
			}
		}
		if sc.role == "client" {
			if _, ok := keys["permit_expires_at"].(string); !ok {
				t.Errorf("client /_status keys.permit_expires_at missing: %v", keys)
			}
		}
	}

	// SIGTERM: not ready, the listener closed, the request in flight served.
	s.signal(syscall.SIGTERM)
	s.waitLog(t, 5*time.Second, 1, "draining")
	if code, _ := s.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining: HTTP %d, want 503", code)
	}
	if st := s.statusDoc(t); !st.Draining || st.Ready {
		t.Errorf("/_status while draining: draining %v ready %v", st.Draining, st.Ready)
	}
	if d, err := net.DialTimeout("tcp", s.listen, time.Second); err == nil {
		d.Close()
		t.Errorf("the draining server still accepts TCP connections on %s", s.listen)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial the draining server: %v, want connection refused", err)
	}
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "done" {
		t.Errorf("in-flight request: %q, %v", got, err)
	}
	if code := s.wait(15 * time.Second); code != 0 {
		t.Errorf("exit %d after a clean drain", code)
	}
	if !strings.Contains(s.stderr.String(), `"drained"`) {
		t.Errorf("no drained line")
	}
}

// The client sidecar's own SIGTERM: it stops accepting, lets an app
// connection in flight finish (exit 0), or cuts it at --shutdown-timeout
// (exit 1, the app sees a reset).
func TestClientDrainProcess(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})
	slow := scStartBackend(t, func(c *net.TCPConn) {
		if _, err := io.Copy(io.Discard, c); err != nil {
			return
		}
		time.Sleep(1500 * time.Millisecond)
		c.Write([]byte("done"))
	})
	s := e.server(t, "server (client drain)", slow.addr)
	inflight := func(t *testing.T, c *scSidecar) net.Conn {
		conn, err := net.Dial("tcp", c.listen)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		conn.Write([]byte("request"))
		conn.(*net.TCPConn).CloseWrite()
		if !eventually(10*time.Second, func() bool { return c.statusDoc(t).Streams == 1 }) {
			t.Fatal("no stream at the client")
		}
		return conn
	}
	t.Run("clean", func(t *testing.T) {
		c := e.client(t, "client (drain)", s.listen, "--shutdown-timeout", "20s")
		conn := inflight(t, c)
		defer conn.Close()
		c.signal(syscall.SIGTERM)
		c.waitLog(t, 5*time.Second, 1, "draining")
		if code, _ := c.get(t, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("client /readyz while draining: %d, want 503", code)
		}
		if d, err := net.DialTimeout("tcp", c.listen, time.Second); err == nil {
			d.Close()
			t.Errorf("the draining client still accepts on %s", c.listen)
		}
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != "done" {
			t.Errorf("in-flight request during the client's drain: %q, %v", got, err)
		}
		if code := c.wait(15 * time.Second); code != 0 {
			t.Errorf("client exit %d after a clean drain, want 0", code)
		}
	})
	t.Run("second signal", func(t *testing.T) {
		c := e.client(t, "client (second signal)", s.listen, "--shutdown-timeout", "30s")
		conn := inflight(t, c)
		defer conn.Close()
		c.signal(syscall.SIGTERM)
		c.waitLog(t, 5*time.Second, 1, "draining")
		start := time.Now()
		c.signal(syscall.SIGINT)
		if code := c.wait(10 * time.Second); code != 1 {
			t.Errorf("client exit %d after a second signal during the drain, want 1", code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("client exited %v after the second signal (--shutdown-timeout 30s)", d)
		}
	})
	t.Run("shutdown endpoint", func(t *testing.T) {
		c := e.client(t, "client (shutdown endpoint)", s.listen, "--shutdown-timeout", "20s", "--enable-shutdown")
		conn := inflight(t, c)
		defer conn.Close()
		resp, err := scHTTP.Post("http://"+c.status+"/_shutdown", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("POST /_shutdown: %d, want 202", resp.StatusCode)
		}
		c.waitLog(t, 5*time.Second, 1, "draining")
		got, err := io.ReadAll(conn)
		if err != nil || string(got) != "done" {
			t.Errorf("in-flight request during the drain /_shutdown began: %q, %v", got, err)
		}
		if code := c.wait(15 * time.Second); code != 0 {
			t.Errorf("client exit %d after /_shutdown and a clean drain, want 0", code)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		c := e.client(t, "client (drain timeout)", s.listen, "--shutdown-timeout", "200ms")
		conn := inflight(t, c)
		defer conn.Close()
		start := time.Now()
		c.signal(syscall.SIGTERM)
		if code := c.wait(15 * time.Second); code != 1 {
			t.Errorf("client exit %d after a drain timeout, want 1", code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("client exited %v after SIGTERM with --shutdown-timeout 200ms", d)
		}
		got, err := io.ReadAll(conn)
		if string(got) == "done" || !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("request cut by the client's drain timeout: %q, %v; want ECONNRESET", got, err)
		}
	})
}

// Half-close the other way round: the backend answers and closes its
// write side first, while the app is still sending; the app reads the
// answer and EOF, then finishes its upload, which the backend receives
// whole.
func TestBackendHalfCloseProcess(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 3, passphrase: -1})
	got := make(chan []byte, 1)
	be := scStartBackend(t, func(c *net.TCPConn) {
		c.Write([]byte("greeting"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- b
	})
	s := e.server(t, "server (backend half-close)", be.addr)
	c := e.client(t, "client (backend half-close)", s.listen)
	conn, err := net.Dial("tcp", c.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	conn.Write([]byte("first part "))
	ans, err := io.ReadAll(conn)
	if err != nil || string(ans) != "greeting" {
		t.Fatalf("answer before the backend's FIN: %q, %v", ans, err)
	}
	time.Sleep(200 * time.Millisecond) // the app goes on sending after EOF
	payload := bytes.Repeat([]byte("x"), 1<<20)
	if _, err := conn.Write(payload); err != nil {
		t.Fatalf("upload after the backend half-closed: %v", err)
	}
	conn.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if want := append([]byte("first part "), payload...); !bytes.Equal(b, want) {
			t.Errorf("backend received %d bytes, want %d", len(b), len(want))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("backend did not receive the upload's end")
	}
}
