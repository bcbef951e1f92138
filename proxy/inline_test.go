package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// inlineRig is an application TCP connection piped (Start) to a secure
// stream of the echo upstream: what the application writes comes back
// through copyInline's direction (stream → socket).
type inlineRig struct {
	app  *net.TCPConn // the application's end
	sock *net.TCPConn // Pipe's end of it
	done chan error
}

func newInlineRig(t *testing.T, tune func(app, sock *net.TCPConn)) *inlineRig {
	t.Helper()
	up := newEchoUpstream(t, "127.0.0.1:0")
	pool := newTestPool(t, up.addr, PoolOptions{})
	app, sock := tcpPair(t)
	if tune != nil {
		tune(app, sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := pool.Open(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	r := &inlineRig{app: app, sock: sock, done: make(chan error, 1)}
	Start(context.Background(), sock, st, 0, func(_ Stats, err error) { r.done <- err })
	return r
}

func (r *inlineRig) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("pipe did not end")
		return nil
	}
}

// Small replies are copied to the socket by the stream's notifier, with no
// copier goroutine: the common case of request/response traffic.
func TestInlineCopySmallMessages(t *testing.T) {
	r := newInlineRig(t, nil)
	before := inlineCounts.whole.Load()
	const rounds = 200
	for i := range rounds {
		msg := []byte{byte(i), 1, 2, 3, 4, 5, 6, 7}
		if _, err := r.app.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		_ = r.app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(r.app, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("round %d: %v %v", i, got, err)
		}
	}
	if n := inlineCounts.whole.Load() - before; n < rounds/2 {
		t.Errorf("%d of %d replies copied inline", n, rounds)
	}
	_ = r.app.CloseWrite()
	if err := r.wait(t); err != nil {
		t.Fatalf("Pipe: %v", err)
	}
	if n, err := r.app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the half-close: %d, %v; want EOF", n, err)
	}
}

// Replies the socket cannot take at once (the application reads nothing
// for a while): copyInline writes what fits, a goroutine waits to write
// the rest, and every byte arrives in order.
func TestInlineCopySocketFull(t *testing.T) {
	r := newInlineRig(t, func(app, sock *net.TCPConn) {
		_ = app.SetReadBuffer(8 << 10)
		_ = sock.SetWriteBuffer(8 << 10)
	})
	before := inlineCounts.rest.Load()
	msg := make([]byte, 4<<10)
	_, _ = rand.Read(msg)
	const n = 40 // 160 KiB: more than the sockets on the way hold
	wrote := make(chan error, 1)
	go func() {
		for range n {
			if _, err := r.app.Write(msg); err != nil {
				wrote <- err
				return
			}
			// One reply at a time reaches the stream, small enough
			// for copyInline, until the socket is full.
			time.Sleep(2 * time.Millisecond)
		}
		wrote <- nil
	}()
	time.Sleep(300 * time.Millisecond)
	_ = r.app.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, n*len(msg))
	if _, err := io.ReadFull(r.app, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat(msg, n)) {
		t.Fatal("echoed data differs")
	}
	if inlineCounts.rest.Load() == before {
		t.Error("no inline copy met a full socket: the test did not test it")
	}
	_ = r.app.CloseWrite()
	if err := r.wait(t); err != nil {
		t.Fatalf("Pipe: %v", err)
	}
}

// The application resets its connection while replies are on their way: a
// write that fails ends the pipe with that error, and nothing is left held.
func TestInlineCopyDestinationReset(t *testing.T) {
	r := newInlineRig(t, nil)
	if _, err := r.app.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(r.app, got); err != nil {
		t.Fatal(err)
	}
	_ = r.app.SetLinger(0)
	// The request goes out and the application resets at once: the
	// echo's reply meets a reset socket (the inline write fails), or the
	// pipe's socket reader sees the reset first. Either way the pipe ends
	// with the socket's error.
	if _, err := r.app.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	_ = r.app.Close()
	err := r.wait(t)
	if err == nil {
		t.Fatal("Pipe ended cleanly after the application's reset")
	}
	var oe *net.OpError
	if !errors.As(err, &oe) {
		t.Errorf("Pipe: %v, want the socket's error", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for buffersHeld.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d copy buffers held after the pipe ended", buffersHeld.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A bulk amount (a 100 KiB frame) is copied inline while its stream has
// the session to itself, and goes to a copier goroutine while another
// stream shares the session (whose data would wait meanwhile). Both ways
// every byte and the EOF arrive.
func TestInlineCopyBulkOnlyAlone(t *testing.T) {
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "alone", true: "shared"}[shared]
		t.Run(name, func(t *testing.T) {
			up := newEchoUpstream(t, "127.0.0.1:0")
			pool := newTestPool(t, up.addr, PoolOptions{})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if shared {
				other, err := pool.Open(ctx, "")
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
			}
			app, sock := tcpPair(t)
			before := inlineCounts.bulk.Load()
			st, err := pool.Open(ctx, "burst")
			if err != nil {
				t.Fatal(err)
			}
			if st.Session().NumStreams() != map[bool]int{false: 1, true: 2}[shared] {
				t.Fatalf("%d streams on the session", st.Session().NumStreams())
			}
			r := &inlineRig{app: app, sock: sock, done: make(chan error, 1)}
			Start(context.Background(), sock, st, 0, func(_ Stats, err error) { r.done <- err })
			_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(app)
			if err != nil || !bytes.Equal(got, burst()) {
				t.Fatalf("read %d of %d bytes (equal: %v), %v", len(got), burstLen, bytes.Equal(got, burst()), err)
			}
			_ = app.CloseWrite()
			if err := r.wait(t); err != nil {
				t.Fatalf("Pipe: %v", err)
			}
			n := inlineCounts.bulk.Load() - before
			if !shared && n == 0 {
				t.Error("no bulk amount copied inline on a stream alone in its session")
			}
			if shared && n != 0 {
				t.Errorf("%d bulk amounts copied inline while another stream shared the session", n)
			}
		})
	}
}

// writeNow never waits: a full socket gives a short count and no error, a
// reset one its error.
func TestWriteNow(t *testing.T) {
	a, b := tcpPair(t)
	_ = a.SetWriteBuffer(4 << 10)
	_ = b.SetReadBuffer(4 << 10)
	rc, err := a.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	n, err := writeNow(rc, big)
	if err != nil || n == 0 || n >= len(big) {
		t.Fatalf("full socket: wrote %d of %d, %v; want a short count and no error", n, len(big), err)
	}
	got, err := io.ReadFull(b, make([]byte, n))
	if err != nil || got != n {
		t.Fatalf("peer read %d of %d: %v", got, n, err)
	}

	_ = b.SetLinger(0)
	_ = b.Close()
	time.Sleep(50 * time.Millisecond) // the RST crosses loopback
	var werr error
	for range 3 { // the first write after the RST may still be taken
		if _, werr = writeNow(rc, []byte("x")); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("writes to a reset socket kept succeeding")
	}
}
