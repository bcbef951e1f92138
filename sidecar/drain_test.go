package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDrainIdleNoTime: with nothing open, a drain is clean even with
// --shutdown-timeout 0 (it was "forced", exit 1, because the time was up).
func TestDrainIdleNoTime(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, c *ClientConfig) { s.ShutdownTimeout, c.ShutdownTimeout = 0, 0 })
	if err := echoOnce(p.clientListen, []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the stream ended", func() bool { return p.srv.t.streams.Load() == 0 && p.cli.t.streams.Load() == 0 })
	if err := p.cliRun.stop(t); err != nil {
		t.Errorf("client, idle, --shutdown-timeout 0: %v, want a clean drain", err)
	}
	if err := p.srvRun.stop(t); err != nil {
		t.Errorf("server, idle, --shutdown-timeout 0: %v, want a clean drain", err)
	}
}

// TestDrainWaitsForHandshake: a handshake under way when the drain begins
// is finished, not cut (the drain had ended at once, with no session, and
// reset it); its session is then drained (GoAway) like the others.
func TestDrainWaitsForHandshake(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.ShutdownTimeout = 10 * time.Second })
	// A relay that holds the client's first bytes (Msg1) until release.
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	release := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		in, err := rl.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		out, err := net.Dial("tcp", p.srv.Addr())
		if err != nil {
			return
		}
		defer out.Close()
		var cp sync.WaitGroup
		cp.Go(func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite() })
		buf := make([]byte, 4096)
		n, err := in.Read(buf)
		if err != nil {
			return
		}
		<-release
		out.Write(buf[:n])
		io.Copy(out, in)
		out.(*net.TCPConn).CloseWrite()
		cp.Wait()
	})
	ccfg := DefaultClientConfig()
	ccfg.Listen, ccfg.Keys, ccfg.VerifyID, ccfg.Target = "127.0.0.1:0", p.cdir, fxServerID, rl.Addr().String()
	cl, err := NewClient(ccfg, bufLog(t, "relayed client"))
	if err != nil {
		t.Fatal(err)
	}
	cr := run(t, cl.Run, nil)
	app, err := net.Dial("tcp", waitAddr(t, cl.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	waitFor(t, 5*time.Second, "the handshake in flight at the server", func() bool { return p.srv.inflight.Load() == 1 })

	p.srvRun.cancel() // SIGTERM
	waitFor(t, 5*time.Second, "draining", func() bool { return p.srv.draining.Load() })
	time.Sleep(200 * time.Millisecond)
	select {
	case <-p.srvRun.done:
		t.Fatalf("Run returned (%v) with a handshake under way", p.srvRun.err)
	default:
	}
	close(release)
	// The app's connection may get a stream on the new session (its SYN
	// may beat the server's GoAway) or be refused; either way it ends
	// when the app goes, and the drain with it.
	app.Close()
	select {
	case <-p.srvRun.done:
		if p.srvRun.err != nil {
			t.Errorf("server Run: %v, want a clean drain", p.srvRun.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the handshake")
	}
	if v := counter(t, p.srv.m.Handshakes.WithLabelValues("ok")); v != 1 {
		t.Errorf("handshakes{result=ok} = %v, want 1 (the handshake under way finished)", v)
	}
	cr.stop(t)
}

// TestDrainForceAndLogs: Force (a second SIGTERM) ends a drain at once
// (ErrDrainTimeout, well before --shutdown-timeout), and Run returns only
// once the cut streams and sessions have logged their end (with their
// byte counts): the process exits right after Run.
func TestDrainForceAndLogs(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, c *ClientConfig) {
		s.ShutdownTimeout, c.MaxStreams = time.Minute, 100
	})
	p.holdApps(t, 5)
	waitFor(t, 5*time.Second, "5 streams at the server", func() bool { return p.srv.t.streams.Load() == 5 })
	p.srvRun.cancel()
	waitFor(t, 5*time.Second, "draining", func() bool { return p.srv.draining.Load() })
	start := time.Now()
	p.srv.Force()
	select {
	case <-p.srvRun.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Force")
	}
	if d := time.Since(start); !errors.Is(p.srvRun.err, ErrDrainTimeout) || d > 5*time.Second {
		t.Errorf("server Run after Force: %v after %v, want ErrDrainTimeout at once", p.srvRun.err, d)
	}
	if n := len(logLines(t, p.sLog, "stream closed")); n != 5 {
		t.Errorf("%d \"stream closed\" lines when Run returned, want 5", n)
	}
	if n := len(logLines(t, p.sLog, "session closed")); n != 1 {
		t.Errorf("%d \"session closed\" lines when Run returned, want 1", n)
	}
}

// TestClientSessionLineBeforeRunReturns: the client's "session closed" line
// is written before Run returns, after which main exits. Its goroutine was
// not counted with the handlers settle waits for: on one CPU (a pod with a
// 1-CPU limit runs GOMAXPROCS=1) the line was lost in most runs.
func TestClientSessionLineBeforeRunReturns(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for i := range 5 {
		p := startPair(t, echoBackend(t, 0), nil)
		if err := echoOnce(p.clientListen, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if err := p.cliRun.stop(t); err != nil {
			t.Fatal(err)
		}
		if n := len(logLines(t, p.cLog, "session closed")); n != 1 {
			t.Errorf("run %d: %d \"session closed\" lines when Run returned, want 1", i, n)
		}
	}
}

// TestDrainCutCountedAsCut: connections a timed-out (here forced) drain
// cuts are logged and counted as cut, not as clean ends: the client's
// copies see only their own sockets closed, which had read as "ok".
func TestDrainCutCountedAsCut(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(_ *ServerConfig, c *ClientConfig) { c.ShutdownTimeout = time.Minute })
	p.holdApps(t, 2)
	p.cliRun.cancel()
	waitFor(t, 5*time.Second, "draining", func() bool { return p.cli.draining.Load() })
	p.cli.Force()
	select {
	case <-p.cliRun.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after Force")
	}
	lines := logLines(t, p.cLog, "stream closed")
	if len(lines) != 2 {
		t.Fatalf("%d \"stream closed\" lines, want 2", len(lines))
	}
	for _, l := range lines {
		if e, _ := l["error"].(string); !strings.Contains(e, "--shutdown-timeout") {
			t.Errorf("a cut stream logged error %q, want the cut", e)
		}
	}
	if ok, cut := counter(t, p.cli.m.StreamsTotal.WithLabelValues("ok")), counter(t, p.cli.m.StreamsTotal.WithLabelValues("error")); ok != 0 || cut != 2 {
		t.Errorf("streams_total ok %v, error %v; want 0 and 2", ok, cut)
	}
}

// TestIdleCutCounted: a connection --idle-timeout closes is logged with why
// and counted idle_timeout (it read as a clean "ok") by the sidecar whose
// timeout fired; the other sees a clean end.
func TestIdleCutCounted(t *testing.T) {
	for _, side := range []string{"client", "server"} {
		t.Run(side, func(t *testing.T) {
			p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, c *ClientConfig) {
				if side == "client" {
					c.IdleTimeout = 200 * time.Millisecond
				} else {
					s.IdleTimeout = 200 * time.Millisecond
				}
			})
			app := p.holdApps(t, 1)[0]
			app.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadAll(app); err != nil {
				t.Fatalf("idle close: %v, want EOF", err)
			}
			m, b := p.cli.m, p.cLog
			if side == "server" {
				m, b = p.srv.m, p.sLog
			}
			waitFor(t, 5*time.Second, side+" counts the idle cut", func() bool {
				return counter(t, m.StreamsTotal.WithLabelValues("idle_timeout")) == 1
			})
			// Counted just before the line is written: wait for it.
			var l []map[string]any
			waitFor(t, 5*time.Second, side+"'s stream closed line", func() bool { l = logLines(t, b, "stream closed"); return len(l) > 0 })
			if len(l) != 1 || !strings.Contains(fmt.Sprint(l[0]["error"]), "idle timeout") {
				t.Errorf("%s: stream closed lines %v, want one saying idle timeout", side, l)
			}
		})
	}
}
