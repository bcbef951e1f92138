package sidecar

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/milagro-sc/milagro/dta/keydir"
)

// logLines returns the JSON log lines of b whose message is msg.
func logLines(t *testing.T, b *logBuf, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" { // nothing logged yet
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// gauge reads a gauge's value.
func gauge(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// series counts the label combinations a vector has.
func series(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	return len(ch)
}

// TestLogLinesPerStreamAndSession: at the default level (info) each side
// writes one line per proxied connection and one per session, with the
// peer's identity and the bytes moved; the client's session line counts
// the bytes of its streams, including the last ones to finish.
func TestLogLinesPerStreamAndSession(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), nil)
	msgs := [][]byte{[]byte("first"), []byte("the second one")}
	var total int
	for _, m := range msgs {
		if err := echoOnce(p.clientListen, m); err != nil {
			t.Fatal(err)
		}
		total += len(m)
	}
	if err := p.cliRun.stop(t); err != nil {
		t.Fatalf("client Run: %v", err)
	}
	if err := p.srvRun.stop(t); err != nil {
		t.Fatalf("server Run: %v", err)
	}
	for _, tc := range []struct {
		side, peerField, peer string
		b                     *logBuf
	}{
		{"client", "server", fxServerID, p.cLog},
		{"server", "client", fxClientID, p.sLog},
	} {
		streams := logLines(t, tc.b, "stream closed")
		if len(streams) != len(msgs) {
			t.Errorf("%s: %d \"stream closed\" lines, want %d", tc.side, len(streams), len(msgs))
		}
		for i, l := range streams {
			if l["level"] != "info" || l["bytes_up"] == nil || l["bytes_down"] == nil {
				t.Errorf("%s stream line %d: %v; want level info with bytes_up and bytes_down", tc.side, i, l)
			}
		}
		if tc.side == "client" { // the server's stream lines take identity from the session's logger
			for i, l := range streams {
				if l[tc.peerField] != tc.peer {
					t.Errorf("client stream line %d: %s = %v, want %s", i, tc.peerField, l[tc.peerField], tc.peer)
				}
			}
		}
		sess := logLines(t, tc.b, "session closed")
		if len(sess) != 1 {
			t.Fatalf("%s: %d \"session closed\" lines, want 1", tc.side, len(sess))
		}
		l := sess[0]
		if l[tc.peerField] != tc.peer || l["streams"] != float64(len(msgs)) ||
			l["bytes_up"] != float64(total) || l["bytes_down"] != float64(total) {
			t.Errorf("%s session line %v; want %s=%s, streams %d, %d bytes each way", tc.side, l, tc.peerField, tc.peer, len(msgs), total)
		}
	}
}

// TestServerHTTPModeAccounting: in --http mode the server counts and logs
// each stream's bytes like any other stream's, and an idle keep-alive
// connection does not hold a drain to its timeout: the reverse proxy stops
// keep-alive when the drain starts.
func TestServerHTTPModeAccounting(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello world") }))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) {
		s.HTTP = true
		s.ShutdownTimeout = 20 * time.Second
	})
	c, err := net.Dial("tcp", p.clientListen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for range 2 {
		req, _ := http.NewRequest("GET", "http://backend/", nil)
		if err := req.Write(c); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	// The connection stays open and idle: a keep-alive client's normal state.
	start := time.Now()
	if err := p.srvRun.stop(t); err != nil {
		t.Fatalf("server Run after %v: %v; want a clean drain (nothing in flight)", time.Since(start).Round(time.Millisecond), err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("drain took %v with only an idle keep-alive connection", d)
	}
	up, down := counter(t, p.srv.m.Bytes.WithLabelValues("up")), counter(t, p.srv.m.Bytes.WithLabelValues("down"))
	if up == 0 || down == 0 {
		t.Errorf("server milagro_bytes_total up=%v down=%v in HTTP mode", up, down)
	}
	if n := counter(t, p.srv.m.StreamsTotal.WithLabelValues("ok")); n != 1 {
		t.Errorf("milagro_streams_total{result=ok} = %v, want 1 (one connection, two requests)", n)
	}
	lines := logLines(t, p.sLog, "stream closed")
	if len(lines) != 1 || lines[0]["http"] != true || lines[0]["bytes_down"] != down || lines[0]["client"] != fxClientID {
		t.Errorf("server stream lines %v; want one, http, %v bytes down, client %s", lines, down, fxClientID)
	}
}

// TestKeyExpiryFollowsReload: both sidecars publish the expiry of the keys
// in force as soon as a reload swaps them, and drop the permit date when
// the new set has no permit (not keep the old one).
func TestKeyExpiryFollowsReload(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), nil)
	f := sharedKeys(t)
	m := p.cli.m
	if got, want := gauge(t, m.KeyExpiry.WithLabelValues("permit")), float64(p.cli.Keystore().Current().PermitExpiry().Unix()); got != want {
		t.Fatalf("permit expiry %v at start, want %v", got, want)
	}
	gen := writeKeys(t, p.cdir, f.files(t, fxClientID, []keydir.Kind{keydir.KindClient}))
	waitFor(t, 5*time.Second, "client reload", func() bool { return p.cli.Keystore().Current().Generation == gen })
	want := float64(p.cli.Keystore().Current().ExpiresAt.Unix())
	waitFor(t, 5*time.Second, "the expiry gauge to follow", func() bool {
		return gauge(t, m.KeyExpiry.WithLabelValues("set")) == want && series(m.KeyExpiry) == 1
	})
	// The server side alike, on its own reload.
	gen = writeKeys(t, p.sdir, f.files(t, fxServerID, serverKinds))
	waitFor(t, 5*time.Second, "server reload", func() bool { return p.srv.Keystore().Current().Generation == gen })
	want = float64(p.srv.Keystore().Current().ExpiresAt.Unix())
	waitFor(t, 5*time.Second, "the server's expiry gauge to follow", func() bool {
		return gauge(t, p.srv.m.KeyExpiry.WithLabelValues("set")) == want
	})
}

// TestServerMaxConnsStreams: the server's --max-conns also bounds the
// proxied (backend) connections one authorised client can open over its
// sessions; a stream past it is refused, the application connection ends
// at once, and a slot frees when a connection ends.
func TestServerMaxConnsStreams(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxConns = 2 })
	held := p.holdApps(t, 2)
	if err := pingEcho(p.dialApp(t)); err == nil {
		t.Fatal("a third backend connection was opened past --max-conns 2")
	}
	// The refusal reaches the app before the server's goroutine has
	// counted it and let go of the stream: wait for both.
	if !eventuallyTrue(5*time.Second, func() bool {
		return counter(t, p.srv.m.StreamsTotal.WithLabelValues("over_limit")) == 1 && p.srv.t.streams.Load() == 2
	}) {
		t.Errorf("milagro_streams_total{result=over_limit} = %v, %d streams open at the server; want 1 and 2",
			counter(t, p.srv.m.StreamsTotal.WithLabelValues("over_limit")), p.srv.t.streams.Load())
	}
	held[0].Close()
	waitFor(t, 5*time.Second, "a freed slot", func() bool { return pingEcho(p.dialApp(t)) == nil })
	if err := pingEcho(held[1]); err != nil {
		t.Errorf("the other held connection: %v", err)
	}
}

// TestRefusalHints: the client's refusal line says what to check, which
// the Alert's one code does not: refused at Msg2, the server does not hold
// the identity asked for; at Msg4, it refused this client.
func TestRefusalHints(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*ServerConfig, *ClientConfig)
		want string
	}{
		{"identity the server lacks", func(_ *ServerConfig, c *ClientConfig) {
			c.VerifyID, c.ServerID = "spiffe://test.example/ns/pay/**", "spiffe://test.example/ns/pay/sa/other"
		}, "--verify-id/--server-id"},
		{"client not allowed", func(s *ServerConfig, _ *ClientConfig) { s.AllowIDs = []string{"spiffe://test.example/ns/nobody/**"} }, "--allow-id"},
		{"no time permit", func(s *ServerConfig, c *ClientConfig) {
			s.RequirePermit = true
			c.Keys = filepath.Join(t.TempDir(), "keys")
			writeKeys(t, c.Keys, sharedKeys(t).files(t, fxClientID, []keydir.Kind{keydir.KindClient}))
		}, "--require-permit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPair(t, echoBackend(t, 0), tc.mod)
			if err := echoOnce(p.clientListen, []byte("x")); err == nil {
				t.Fatal("went through")
			}
			var lines []map[string]any
			waitFor(t, 5*time.Second, "the refusal line", func() bool {
				lines = logLines(t, p.cLog, "connection refused: no secure stream")
				return len(lines) > 0
			})
			if h, _ := lines[0]["hint"].(string); !strings.Contains(h, tc.want) {
				t.Errorf("hint %q, want one naming %s (error %v)", h, tc.want, lines[0]["error"])
			}
		})
	}
}

// TestMaxConnsPerClient: one client identity holds at most
// --max-conns-per-client proxied connections over all its sessions; past
// it its streams are refused (over_limit, a log line), while another
// client still gets in; a freed connection is a free slot again.
func TestMaxConnsPerClient(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, c *ClientConfig) {
		s.MaxConnsPerClient = 2
		c.MaxStreams = 1 // two sessions: the bound is per identity, not per session
	})
	held := p.holdApps(t, 2)
	if err := pingEcho(p.dialApp(t)); err == nil {
		t.Fatal("a third connection of one client went through past --max-conns-per-client 2")
	}
	waitFor(t, 5*time.Second, "the refusal counted", func() bool {
		return counter(t, p.srv.m.StreamsTotal.WithLabelValues("over_limit")) == 1
	})
	waitFor(t, 5*time.Second, "the refusal logged", func() bool {
		return len(logLines(t, p.sLog, "stream refused: --max-conns-per-client connections open for this client")) == 1
	})
	// Another client identity is not held back by the first's bound.
	ccfg := DefaultClientConfig()
	ccfg.Listen, ccfg.Keys, ccfg.VerifyID = "127.0.0.1:0", sharedKeys(t).clientDir(t, fxOtherID), fxServerID
	ccfg.Target = p.srv.Addr()
	clog, _ := bufLogs(t, "other client")
	other, err := NewClient(ccfg, clog)
	if err != nil {
		t.Fatal(err)
	}
	run(t, other.Run, nil)
	oc, err := net.DialTimeout("tcp", waitAddr(t, other.Addr), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	if err := pingEcho(oc); err != nil {
		t.Errorf("another client while the first is at its bound: %v", err)
	}
	held[0].Close()
	waitFor(t, 5*time.Second, "a freed slot", func() bool { return pingEcho(p.dialApp(t)) == nil })
	if err := pingEcho(held[1]); err != nil {
		t.Errorf("the other held connection: %v", err)
	}
}

// TestQuietConns: --quiet conns moves the line of each stream that ends
// cleanly to debug level (ghostunnel's --quiet=conns), on both sides; a
// stream that ends otherwise (here the server's idle timeout) is still
// logged at info.
func TestQuietConns(t *testing.T) {
	backend := echoBackend(t, 0)
	p := startPair(t, backend, func(s *ServerConfig, c *ClientConfig) {
		s.Quiet, c.Quiet = List{"conns"}, List{"conns"}
		s.IdleTimeout = 300 * time.Millisecond
	})
	if err := echoOnce(p.clientListen, []byte("quiet")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the client's stream line", func() bool { return len(logLines(t, p.cLog, "stream closed")) == 1 })
	if l := logLines(t, p.cLog, "stream closed")[0]; l["level"] != "debug" {
		t.Errorf("client: clean stream's line %v, want level debug", l)
	}
	held := p.holdApps(t, 1)[0] // cut by the server's idle timeout: an error there
	defer held.Close()
	waitFor(t, 5*time.Second, "the server's two stream lines", func() bool { return len(logLines(t, p.sLog, "stream closed")) == 2 })
	levels := map[string]int{}
	for _, l := range logLines(t, p.sLog, "stream closed") {
		levels[fmt.Sprint(l["level"])]++
	}
	if levels["debug"] != 1 || levels["info"] != 1 {
		t.Errorf("server: stream lines by level %v, want the clean one at debug, the idle-timed-out one at info", levels)
	}
}

// TestBackendProbeSendsProxyLocal: with --proxy-protocol, /_status's
// probe of a backend sends a PROXY v2 LOCAL header before it closes, as
// HAProxy's check-send-proxy does: a backend that expects a header on
// every connection (HAProxy's accept-proxy) logged each probe as an error.
func TestBackendProbeSendsProxyLocal(t *testing.T) {
	backend, got := proxyHeaderBackend(t)
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.ProxyProtocol = true })
	st := p.srv.status(true)
	if len(st.Backends) != 1 || !st.Backends[0].OK {
		t.Errorf("backends %+v, want the one, reachable", st.Backends)
	}
	select {
	case h := <-got:
		if h == nil || !h.Local || len(h.TLVs) != 0 {
			t.Errorf("probe sent %+v, want a LOCAL header without TLVs", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no probe")
	}
}
