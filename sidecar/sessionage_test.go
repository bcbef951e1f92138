package sidecar

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMaxSessionAge: a server session older than --max-session-age gets a
// GoAway, so the client's new connections go to a new session (through a
// load balancer, possibly another replica), while a connection it carries
// goes on; the old session closes once that connection has ended. No app
// connection fails across the change.
func TestMaxSessionAge(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxSessionAge = 300 * time.Millisecond })
	held := p.holdApps(t, 1)[0]

	var failed atomic.Int32
	var wg sync.WaitGroup
	stop := time.Now().Add(1500 * time.Millisecond)
	for range 2 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if err := echoOnce(p.clientListen, []byte("across the GoAway")); err != nil {
					failed.Add(1)
					t.Errorf("app connection: %v", err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if n := len(logLines(t, p.sLog, "session open")); n < 3 {
		t.Errorf("%d sessions opened in 1.5 s with --max-session-age 300ms, want at least 3", n)
	}
	if err := pingEcho(held); err != nil {
		t.Fatalf("the connection held on the first session was cut: %v", err)
	}
	// Every session is past its age now; those without streams close, the
	// one carrying held stays until held ends.
	waitFor(t, 5*time.Second, "the sessions without streams closed", func() bool { return p.srv.t.numSessions() == 1 })
	time.Sleep(500 * time.Millisecond)
	if n := p.srv.t.numSessions(); n != 1 {
		t.Fatalf("%d sessions while held is open, want its 1", n)
	}
	held.Close()
	waitFor(t, 5*time.Second, "held's session closed once held ended", func() bool { return p.srv.t.numSessions() == 0 })
}

// TestMaxSessionAgeOff: 0 never ends a session.
func TestMaxSessionAgeOff(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxSessionAge = 0 })
	for range 5 {
		if err := echoOnce(p.clientListen, []byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(logLines(t, p.sLog, "session open")); n != 1 {
		t.Errorf("%d sessions, want 1", n)
	}
}

// TestClientRidesOutServerRestart: an app connection whose dial finds
// nobody listening (behind a load balancer, a replica that has just
// stopped; here a quick restart) dials once more after the backoff and is
// served if the upstream is back by then; before, it was refused at once.
func TestClientRidesOutServerRestart(t *testing.T) {
	backend := echoBackend(t, 0)
	p := startPair(t, backend, nil)
	if err := echoOnce(p.clientListen, []byte("before")); err != nil {
		t.Fatal(err)
	}
	addr := p.srv.Addr()
	if err := p.srvRun.stop(t); err != nil {
		t.Fatal(err)
	}
	go func() { // back as soon as the client's dial has failed
		for p.cli.status(false).Upstreams[0].Stats.DialFailures == 0 {
			time.Sleep(2 * time.Millisecond)
		}
		p.restartServer(t, addr, backend)
	}()
	start := time.Now()
	if err := echoOnce(p.clientListen, []byte("during the restart")); err != nil {
		t.Fatalf("app connection during the restart: %v after %v", err, time.Since(start))
	}
	if n := counter(t, p.cli.m.StreamsTotal.WithLabelValues("error")) + counter(t, p.cli.m.StreamsTotal.WithLabelValues("upstream_down")); n != 0 {
		t.Errorf("%v app connections failed", n)
	}
}

// TestMaxSessionAgeHTTPKeepAlive: in --http mode an app's keep-alive
// connection on a session past its age is closed after its answer
// (Connection: close), so its next requests go to a new session: an app
// that reuses its connections still spreads. Before, one keep-alive
// connection held its first session for good.
func TestMaxSessionAgeHTTPKeepAlive(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.HTTP, s.MaxSessionAge = true, 200*time.Millisecond })
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	stop := time.Now().Add(1500 * time.Millisecond)
	for n := 0; time.Now().Before(stop); n++ {
		resp, err := hc.Get("http://" + p.clientListen + "/")
		if err != nil {
			t.Fatalf("request %d: %v", n, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Fatalf("request %d: %q", n, b)
		}
		time.Sleep(30 * time.Millisecond)
	}
	if n := len(logLines(t, p.sLog, "session open")); n < 3 {
		t.Errorf("%d sessions in 1.5 s of keep-alive requests with --max-session-age 200ms, want at least 3", n)
	}
}

// TestClientRidesOutAcceptQueueReset: a replica that stops listening
// resets the connections waiting in its accept queue, whose clients have
// sent Msg1 and read the reset in place of Msg2. Nothing of the app's has
// been sent: the dial is made once more, and here finds the new server.
func TestClientRidesOutAcceptQueueReset(t *testing.T) {
	backend := echoBackend(t, 0)
	p := startPair(t, backend, nil)
	addr := p.srv.Addr()
	if err := p.srvRun.stop(t); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr) // never accepts
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln.Close() // resets the queued connection
		p.restartServer(t, addr, backend)
	}()
	if err := echoOnce(p.clientListen, []byte("after the reset")); err != nil {
		t.Fatalf("app connection whose dial was reset mid-handshake: %v (pool %+v)", err, p.cli.status(false).Upstreams[0].Stats)
	}
}

// restartServer starts a server like startPair's on addr (the address
// of the one stopped), with the pair's keys, until the test ends.
func (p *pair) restartServer(t *testing.T, addr, backend string) {
	scfg := DefaultServerConfig()
	scfg.Listen, scfg.Target, scfg.Keys = addr, backend, p.sdir
	scfg.AllowIDs = []string{"spiffe://test.example/ns/web/**"}
	srv, err := NewServer(scfg, bufLog(t, "server (restarted)"))
	if err != nil {
		t.Error(err)
		return
	}
	run(t, srv.Run, nil)
}

// TestMaxSessionAgeHTTPIdleKeepAlive: an app's keep-alive connection that
// is idle when its session reaches --max-session-age is closed, so the
// session closes then; before, it held the session until the app closed
// the connection or --session-idle-timeout (10 minutes). The app's next
// request goes on a new session.
func TestMaxSessionAgeHTTPIdleKeepAlive(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.HTTP, s.MaxSessionAge = true, 300*time.Millisecond })
	get := keepAliveGetter(t, p.clientListen, "ok")
	get() // leaves an idle keep-alive connection, on the first session
	waitFor(t, 5*time.Second, "the session past its age closed with its idle keep-alive connection", func() bool {
		return len(logLines(t, p.sLog, "session closed")) == 1
	})
	if n := p.srv.t.numSessions(); n != 0 {
		t.Fatalf("%d server sessions after the only one closed", n)
	}
	get()
	if n := len(logLines(t, p.sLog, "session open")); n != 2 {
		t.Errorf("%d sessions opened, want 2 (the next request on a new one)", n)
	}
}

// TestMaxSessionAgeHTTPMidAnswer: a keep-alive connection whose answer
// began before its session reached --max-session-age (so it says no
// Connection: close) and ended after it is closed when it turns idle, so
// the session closes then. (Found by review: the session was held until
// the app closed the connection or --session-idle-timeout.)
func TestMaxSessionAgeHTTPMidAnswer(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "o")
		w.(http.Flusher).Flush()
		time.Sleep(time.Second) // past the session's age
		io.WriteString(w, "k")
	}))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.HTTP, s.MaxSessionAge = true, 300*time.Millisecond })
	keepAliveGetter(t, p.clientListen, "ok")()
	waitFor(t, 3*time.Second, "the aged session closed once its connection went idle", func() bool {
		return len(logLines(t, p.sLog, "session closed")) == 1
	})
}

// TestMaxSessionAgeHTTPAppKeepsSocket: an app that keeps its idle
// keep-alive socket open after the server closed it (a pool that notices
// only at its next use) has it reset after a few seconds, so the aged
// session closes then, not after psk.ClosedStreamTimeout (5 minutes).
func TestMaxSessionAgeHTTPAppKeepsSocket(t *testing.T) {
	backend := httpBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	p := startPair(t, backend, func(s *ServerConfig, _ *ClientConfig) { s.HTTP, s.MaxSessionAge = true, 300*time.Millisecond })
	c, err := net.Dial("tcp", p.clientListen)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	// The app holds its socket, reading nothing.
	waitFor(t, 8*time.Second, "the aged session closed with the app's socket still open", func() bool {
		return len(logLines(t, p.sLog, "session closed")) == 1
	})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("the app's socket read %d bytes, %v; want its end", n, err)
	}
}

// keepAliveGetter returns a function that GETs / from addr with an HTTP
// client keeping one idle connection (closed when the test ends) and
// checks the answer is want.
func keepAliveGetter(t *testing.T, addr, want string) func() {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	return func() {
		t.Helper()
		resp, err := hc.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("answer %q, want %q", b, want)
		}
	}
}
