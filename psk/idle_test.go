package psk

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// frameHeader is a yamux data frame header for stream id with flags.
func frameHeader(id uint32, flags uint16) *[yHeaderLen]byte {
	var h [yHeaderLen]byte
	h[1] = yTypeData
	h[2], h[3] = byte(flags>>8), byte(flags)
	h[4], h[5], h[6], h[7] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	return &h
}

// TestStreamTableReserve: an Open between reserve and unreserve keeps the
// session from going idle, and once the idle timer has decided, reserve
// refuses, so that no stream is opened on a session the idle close is
// about to end. Driven step by step: fire is called directly, with the
// session's idle time made to have passed.
func TestStreamTableReserve(t *testing.T) {
	var idled atomic.Int32
	tab := newStreamTable(true, time.Hour, func() { idled.Add(1) })
	tab.startIdle()
	defer tab.stop()
	expire := func() { // the idle time has passed, as far as fire can tell
		tab.mu.Lock()
		tab.zeroSince = time.Now().Add(-2 * time.Hour)
		tab.mu.Unlock()
	}

	if !tab.reserve() {
		t.Fatal("reserve refused on a live session")
	}
	expire()
	tab.fire()
	if idled.Load() != 0 {
		t.Fatal("idle close while an Open was under way")
	}
	// The Open's SYN goes out: the stream is in the table, the reserve ends.
	if err := tab.outbound(frameHeader(1, yFlagSYN)); err != nil {
		t.Fatal(err)
	}
	tab.unreserve()
	expire()
	tab.fire()
	if idled.Load() != 0 || tab.len() != 1 {
		t.Fatalf("idle close with a stream open (closes %d, streams %d)", idled.Load(), tab.len())
	}
	// The stream ends both ways: the session is idle again from now.
	if err := tab.outbound(frameHeader(1, yFlagFIN)); err != nil {
		t.Fatal(err)
	}
	if _, err := tab.inbound(frameHeader(1, yFlagFIN)); err != nil {
		t.Fatal(err)
	}
	tab.mu.Lock()
	since := time.Since(tab.zeroSince)
	tab.mu.Unlock()
	if tab.len() != 0 || since > time.Minute {
		t.Fatalf("streams %d, idle for %v after the last stream ended", tab.len(), since)
	}
	// A failed Open (reserve, no SYN, unreserve) restarts the idle time.
	expire()
	if !tab.reserve() {
		t.Fatal("reserve refused")
	}
	tab.unreserve()
	tab.fire()
	if idled.Load() != 0 {
		t.Fatal("idle close right after an Open attempt")
	}
	// The idle time passes with nothing open: the close is decided, and
	// from then on reserve refuses.
	expire()
	tab.fire()
	if idled.Load() != 1 {
		t.Fatalf("idle closes %d, want 1", idled.Load())
	}
	if tab.reserve() {
		t.Fatal("reserve granted after the idle close was decided")
	}
}

// TestOpenAfterIdleDecided: when the idle timer has decided to close the
// session but the close has not happened yet, Open fails with
// ErrSessionClosed (ErrIdleTimeout) and sends nothing, so that a pool
// retries on another session instead of handing out a stream the close is
// about to cut (seen under -race on a busy machine: a stream opened, its
// status received, then ended by the idle close 0.2 ms later).
func TestOpenAfterIdleDecided(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, &Config{IdleTimeout: time.Hour}, nil)
	serveEcho(t, srv)
	echoRoundTrip(t, cli, 10)

	decided := make(chan struct{})
	cli.tab.mu.Lock()
	cli.tab.onIdle = func() { close(decided) } // decide, but do not close yet
	cli.tab.zeroSince = time.Now().Add(-2 * time.Hour)
	cli.tab.mu.Unlock()
	cli.tab.fire()
	<-decided

	out := cli.Stats().RecordsOut
	_, err := cli.Open(openCtx(t), "")
	if !errors.Is(err, ErrSessionClosed) || !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("Open = %v, want ErrSessionClosed with ErrIdleTimeout", err)
	}
	if n := cli.Stats().RecordsOut; n != out {
		t.Errorf("Open sent %d records on a session being closed", n-out)
	}
	if err := cli.closeWith(ErrIdleTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Open(openCtx(t), ""); !errors.Is(err, ErrSessionClosed) || !errors.Is(err, ErrIdleTimeout) {
		t.Errorf("Open on the closed session = %v", err)
	}
}

// TestAcceptAfterIdleDecided is the server's side of the same race: a
// stream whose SYN arrives after the server's idle timer decided to close
// gets no status, and the client's Open fails with the session instead of
// returning a stream that the close cuts.
func TestAcceptAfterIdleDecided(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, &Config{IdleTimeout: time.Hour})

	decided := make(chan struct{})
	srv.tab.mu.Lock()
	srv.tab.onIdle = func() { close(decided) }
	srv.tab.zeroSince = time.Now().Add(-2 * time.Hour)
	srv.tab.mu.Unlock()
	srv.tab.fire()
	<-decided

	opened := openAsync(t, cli)
	in, err := srv.Accept(openCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Accept(); !errors.Is(err, ErrSessionClosed) || !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("server Accept = %v, want ErrSessionClosed with ErrIdleTimeout", err)
	}
	if err := srv.closeWith(ErrIdleTimeout); err != nil {
		t.Fatal(err)
	}
	if err := <-opened; !errors.Is(err, ErrSessionClosed) {
		t.Errorf("client Open = %v, want ErrSessionClosed", err)
	}
}

// openAsync runs cli.Open in the background; the channel gets its error
// (the stream, if any, is closed).
func openAsync(t *testing.T, cli *Session) <-chan error {
	opened := make(chan error, 1)
	go func() {
		st, err := cli.Open(openCtx(t), "")
		if err == nil {
			_ = st.Close()
		}
		opened <- err
	}()
	return opened
}

// TestIdleTimerArmedAfterEarlyStream: on the server, yamux's receive loop
// runs before the session arms its idle timer, so a client's first stream
// can be in the table by then; the timer is armed anyway and fires once
// the table has been empty for the idle time.
func TestIdleTimerArmedAfterEarlyStream(t *testing.T) {
	var idled atomic.Int32
	tab := newStreamTable(false, 50*time.Millisecond, func() { idled.Add(1) })
	defer tab.stop()
	if _, err := tab.inbound(frameHeader(1, yFlagSYN)); err != nil { // the receive loop first
		t.Fatal(err)
	}
	tab.startIdle()
	time.Sleep(150 * time.Millisecond)
	if idled.Load() != 0 {
		t.Fatal("idle timeout fired with a stream open")
	}
	if _, err := tab.inbound(frameHeader(1, yFlagFIN)); err != nil {
		t.Fatal(err)
	}
	if err := tab.outbound(frameHeader(1, yFlagFIN)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for idled.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if idled.Load() == 0 {
		t.Fatal("idle timeout never fired after the early stream ended")
	}
}

// TestServerCapsRefusedStreams: streams the server refuses (a bad header
// here) stay open at the yamux level until the client's FIN; a client that
// opens them without end and never closes them is a protocol violation
// once MaxStreams + 2×AcceptBacklog are open, not a goroutine per stream
// for five minutes each.
func TestServerCapsRefusedStreams(t *testing.T) {
	cli, srv := sessionPair(t, nil, &Config{MaxStreams: 4, AcceptBacklog: 16})
	go func() {
		for {
			if _, err := srv.Accept(context.Background()); err != nil && srv.IsClosed() {
				return
			}
		}
	}()
	for i := 0; i < 200 && !srv.IsClosed(); i++ {
		ys, err := cli.mux.OpenStream()
		if err != nil {
			break
		}
		if _, err := ys.Write([]byte{0x7f, 0, 0}); err != nil { // bad version; never closed
			break
		}
		if i%20 == 19 {
			time.Sleep(20 * time.Millisecond) // let the server drop them
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !srv.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !srv.IsClosed() || !errors.Is(srv.Err(), ErrProtocol) {
		t.Fatalf("server: closed %v, %v, %d streams; want the session ended with ErrProtocol", srv.IsClosed(), srv.Err(), srv.NumStreams())
	}
}

// TestClosedStreamDrainsInline: a stream closed here while the peer goes
// on sending is drained as data arrives, with no goroutine per stream:
// 64 streams whose peer writes twice the window after the close and never
// closes its side. Every write completes (the window comes back), and the
// process holds no goroutine per stream (Close spawned a drain goroutine
// each, which a peer that never closes held for StreamCloseTimeout).
func TestClosedStreamDrainsInline(t *testing.T) {
	const n = 64
	cli, srv := sessionPair(t, nil, nil)
	accepted := make(chan *Stream, n)
	go func() {
		for {
			in, err := srv.Accept(context.Background())
			if err != nil {
				return
			}
			st, err := in.Accept()
			if err != nil {
				return
			}
			accepted <- st
		}
	}()
	var open []*Stream
	t.Cleanup(func() {
		for _, st := range open {
			_ = st.Close()
		}
	})
	chunk := make([]byte, 2*DefaultStreamWindow)
	var before int
	for i := range n {
		cs, err := cli.Open(openCtx(t), "")
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, cs)
		ss := <-accepted
		if i == 0 {
			runtime.GC()
			before = runtime.NumGoroutine()
		}
		if err := ss.Close(); err != nil { // closed here, unread
			t.Fatal(err)
		}
		_ = cs.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := cs.Write(chunk); err != nil {
			t.Fatalf("stream %d: write after the peer's close: %v (not drained)", i, err)
		}
	}
	if grew := runtime.NumGoroutine() - before; grew > n/4 {
		t.Errorf("%d more goroutines with %d closed streams whose peer never closes, want none per stream", grew, n)
	}
	if got := srv.NumStreams(); got != n {
		t.Errorf("server has %d streams, want the %d the client holds open", got, n)
	}
	// The client's FIN ends them.
	for _, cs := range open {
		_ = cs.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.NumStreams() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := srv.NumStreams(); got != 0 {
		t.Errorf("%d streams left after the client closed its side", got)
	}
}

// TestRefusedStreamResetIfPeerLingers: a stream the server refuses (status
// 02, a bad header) is reset when the client has not closed its side
// within OpenTimeout, instead of being held for StreamCloseTimeout; a
// client that closes on the status ends it with no reset.
func TestRefusedStreamResetIfPeerLingers(t *testing.T) {
	const hdrTimeout = 200 * time.Millisecond
	cli, srv := sessionPair(t, nil, &Config{HeaderTimeout: hdrTimeout, OpenTimeout: hdrTimeout})
	go func() {
		for {
			in, err := srv.Accept(context.Background())
			if err != nil && srv.IsClosed() {
				return
			}
			if in != nil {
				_ = in.Reject(StatusUnreachable)
			}
		}
	}()
	hdr, err := appendStreamHeader(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		header []byte
		closes bool // the client closes its side on the answer
		status bool // the server answers with a status byte
	}{
		{"refused, client lingers", hdr, false, true},
		{"bad header, client lingers", []byte{0x7f, 0, 0}, false, false},
		{"refused, client closes", hdr, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ys, err := cli.mux.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			defer ys.Close()
			if _, err := ys.Write(tc.header); err != nil {
				t.Fatal(err)
			}
			_ = ys.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(ys) // up to the server's FIN
			if err != nil {
				t.Fatalf("read the answer: %v", err)
			}
			if tc.status && (len(got) != 1 || Status(got[0]) != StatusUnreachable) {
				t.Fatalf("answer %x, want status 02", got)
			}
			start := time.Now()
			if tc.closes {
				_ = ys.Close()
			}
			// The server's side leaves the table: at once on the FIN, or
			// by the reset after HeaderTimeout.
			for srv.NumStreams() != 0 && time.Since(start) < 5*time.Second {
				time.Sleep(5 * time.Millisecond)
			}
			took := time.Since(start)
			if n := srv.NumStreams(); n != 0 {
				t.Fatalf("server still holds %d streams after %v", n, took)
			}
			if tc.closes {
				if took > hdrTimeout/2 {
					t.Errorf("a closed refused stream took %v to end", took)
				}
				return
			}
			if took > hdrTimeout*5 {
				t.Errorf("refused stream reset after %v, want about %v", took, hdrTimeout)
			}
			// The client's side was reset: a write fails.
			time.Sleep(20 * time.Millisecond)
			if _, err := ys.Write([]byte("x")); err == nil {
				t.Error("client's stream still writable after the server's reset")
			}
		})
	}
}
