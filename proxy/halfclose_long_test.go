package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/psk"
)

// halfCloseChain is app → Start → client psk stream ⇒ server psk stream →
// Start → backend, with cfg for both sessions. done gets each pipe's end.
func halfCloseChain(t *testing.T, cfg *psk.Config) (app, backend *net.TCPConn, done chan error) {
	t.Helper()
	keys := testPoolKeys(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	be, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); be.Close(); appL.Close(); wg.Wait() })
	done = make(chan error, 2)
	wg.Go(func() { // the server side
		c, err := ln.Accept()
		if err != nil {
			return
		}
		res, err := mpinkex.Server(ctx, c, &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{keys.sk}, Authorize: func(string) error { return nil }})
		if err != nil {
			t.Error(err)
			return
		}
		s, err := psk.Server(ctx, c, res, cfg)
		if err != nil {
			t.Error(err)
			return
		}
		context.AfterFunc(ctx, func() { s.Close() })
		in, err := s.Accept(ctx)
		if err != nil {
			return
		}
		bc, err := net.Dial("tcp", be.Addr().String())
		if err != nil {
			t.Error(err)
			return
		}
		st, err := in.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		Start(ctx, st, bc, 0, func(_ Stats, err error) { done <- err })
	})
	var sess []*psk.Session
	p := NewPool(poolDialerConfig(t, ln.Addr().String(), &sess, nil, cfg), PoolOptions{})
	t.Cleanup(p.Close)
	wg.Go(func() { // the client side
		a, err := appL.Accept()
		if err != nil {
			return
		}
		st, err := p.Open(ctx, "")
		if err != nil {
			t.Error(err)
			a.Close()
			return
		}
		Start(ctx, a, st, 0, func(_ Stats, err error) { done <- err })
	})
	ac, err := net.Dial("tcp", appL.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	bcon, err := be.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bcon.Close() })
	return ac.(*net.TCPConn), bcon.(*net.TCPConn), done
}

// sendRequest sends a request from app, half-closes, and reads it and
// the EOF at backend.
func sendRequest(t *testing.T, app, backend *net.TCPConn) {
	t.Helper()
	app.Write([]byte("GET"))
	app.CloseWrite()
	buf := make([]byte, 3)
	backend.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(backend, buf); err != nil {
		t.Fatal(err)
	}
	if n, err := backend.Read(buf); err != io.EOF {
		t.Fatalf("backend: %d bytes, %v; want the app's EOF", n, err)
	}
}

// TestHalfClosedAnswerOutlivesCloseTimeout: after the app's half-close
// the backend answers for three times the stream close timeout (1 s here,
// 5 min in the sidecars), a chunk every 100 ms: the answer arrives whole,
// then a clean EOF. (The timeout counted from the FIN reset the stream
// mid-answer, and the pipe at the app never ended.)
func TestHalfClosedAnswerOutlivesCloseTimeout(t *testing.T) {
	app, backend, done := halfCloseChain(t, &psk.Config{StreamCloseTimeout: time.Second})
	sendRequest(t, app, backend)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		for range 30 {
			if _, err := backend.Write(make([]byte, 1000)); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		backend.CloseWrite()
	})
	app.SetReadDeadline(time.Now().Add(15 * time.Second))
	if n, err := io.Copy(io.Discard, app); err != nil || n != 30000 {
		t.Fatalf("half-closed answer: %d of 30000 bytes, %v", n, err)
	}
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pipe: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a pipe did not end")
		}
	}
}

// TestHalfClosedSilentPeerReset: a backend that neither answers nor closes
// after the app's half-close has its stream reset after the close timeout,
// and both pipes end: the app gets a reset (it hung for ever: the reset
// that yamux's timer sent woke no copier), and so does the backend (the
// server's pipe, whose stream had ended cleanly, waited on the backend for
// ever).
func TestHalfClosedSilentPeerReset(t *testing.T) {
	app, backend, done := halfCloseChain(t, &psk.Config{StreamCloseTimeout: 500 * time.Millisecond})
	sendRequest(t, app, backend)
	app.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := app.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("app after the close timeout: %d bytes, %v; want a reset", n, err)
	}
	for range 2 {
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("a pipe did not end after the close timeout")
		}
	}
	// The server's pipe saw its stream reset after the FIN it had read:
	// the backend is reset too, not held (it has read the EOF already, so
	// its next write finds the reset: EPIPE on Linux, for a connection in
	// CLOSE_WAIT).
	backend.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := backend.Write([]byte("late")); !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("backend write after the close timeout: %v; want the reset (EPIPE or ECONNRESET)", err)
	}
}
