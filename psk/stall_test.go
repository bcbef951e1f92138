package psk

import (
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stallRelay forwards both ways; once armed, client→server bytes pass
// only while budget lasts, then are held: a peer whose link stalls in the
// middle of a frame.
type stallRelay struct {
	armed  atomic.Bool
	budget atomic.Int64
}

func (r *stallRelay) relay(c, s net.Conn) {
	go func() { _, _ = io.Copy(c, s); c.Close() }()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		b := buf[:n]
		for len(b) > 0 {
			if !r.armed.Load() {
				if _, werr := s.Write(b); werr != nil {
					return
				}
				break
			}
			left := r.budget.Load()
			if left <= 0 {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			k := min(int64(len(b)), left)
			r.budget.Add(-k)
			if _, werr := s.Write(b[:k]); werr != nil {
				return
			}
			b = b[k:]
		}
		if err != nil {
			s.Close()
			return
		}
	}
}

// goroutinesWith is the stacks that mention sub, for a hang's report.
func goroutinesWith(sub string) string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, sub) {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// stalledMidFrame sets up a stream whose client side sends one 512 KiB
// frame of which the server receives 100 KiB, the rest held (the
// receive goroutine then waits inside the frame, holding the stream's
// receive lock). closeFirst closes the server's stream before the frame.
func stalledMidFrame(t *testing.T, srvCfg *Config, closeFirst bool) (*stallRelay, pairResult, *Stream) {
	t.Helper()
	r := &stallRelay{}
	pr := dialPair(t, sharedDomain(t), pairOpts{cli: &Config{KeepAliveInterval: -1}, srv: srvCfg, relay: r.relay})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatal(pr.cliErr, pr.srvErr)
	}
	t.Cleanup(func() { r.armed.Store(false) }) // before dialPair's cleanup: the relay ends
	cs, ss := streamPair(t, pr.cli, pr.srv)
	if closeFirst {
		if err := ss.Close(); err != nil {
			t.Fatal(err)
		}
	}
	r.budget.Store(100 << 10)
	r.armed.Store(true)
	go func() { _, _ = cs.Write(make([]byte, 512<<10)) }()
	time.Sleep(300 * time.Millisecond)
	return r, pr, ss
}

// TestStallMidFrame: a peer whose link stalls in the middle of a frame,
// on a stream closed here, holds neither the stream's Close, nor the
// session's Close, nor the session's end by keepalive (an early version
// of the inline drain read the stream from Close and from the session's
// end, and waited there for the rest of the frame: for ever).
func TestStallMidFrame(t *testing.T) {
	noKA := &Config{KeepAliveInterval: -1}
	within := func(t *testing.T, what string, d time.Duration, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() { f(); close(done) }()
		select {
		case <-done:
		case <-time.After(d):
			t.Fatalf("%s hung for %v:\n%s", what, d, goroutinesWith("psk."))
		}
	}
	t.Run("stream close", func(t *testing.T) {
		_, _, ss := stalledMidFrame(t, noKA, false)
		within(t, "Stream.Close", 3*time.Second, func() { _ = ss.Close() })
	})
	t.Run("session close", func(t *testing.T) {
		_, pr, _ := stalledMidFrame(t, noKA, true)
		within(t, "Session.Close", 3*time.Second, func() { _ = pr.srv.Close() })
	})
	t.Run("reset after the close timeout", func(t *testing.T) {
		// yamux's StreamCloseTimeout force-closes the stream (closed, not
		// reset) and sends RST; a later Reset (package proxy's on a cut)
		// must not wait for the rest of the frame.
		_, _, ss := stalledMidFrame(t, &Config{KeepAliveInterval: -1, StreamCloseTimeout: 300 * time.Millisecond}, true)
		time.Sleep(700 * time.Millisecond)
		within(t, "Stream.Reset", 3*time.Second, func() { _ = ss.Reset() })
	})
	t.Run("keepalive", func(t *testing.T) {
		_, pr, _ := stalledMidFrame(t, &Config{KeepAliveInterval: 200 * time.Millisecond, WriteTimeout: 500 * time.Millisecond}, true)
		within(t, "the keepalive's end of the session", 5*time.Second, func() { <-pr.srv.Done() })
		// The connection is closed too: the client's session ends.
		within(t, "the TCP close after the keepalive failed", 5*time.Second, func() { <-pr.cli.Done() })
		within(t, "Session.Close", 3*time.Second, func() { _ = pr.srv.Close() })
	})
}
