package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	d, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { d.Close(); a.Close() })
	return d.(*net.TCPConn), a.(*net.TCPConn)
}

// pipeRig is app ⇄ a =Pipe= b ⇄ backend, all real TCP on loopback.
type pipeRig struct {
	app, backend *net.TCPConn
	done         chan struct{}
	st           Stats
	err          error
}

func startPipe(t testing.TB, ctx context.Context, idle time.Duration) *pipeRig {
	t.Helper()
	app, a := tcpPair(t)
	b, backend := tcpPair(t)
	r := &pipeRig{app: app, backend: backend, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.st, r.err = Pipe(ctx, a, b, idle)
	}()
	return r
}

func (r *pipeRig) wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("Pipe did not return within %v", timeout)
	}
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// readAll reads c to EOF with a deadline.
func readAll(t testing.TB, c net.Conn, timeout time.Duration) ([]byte, error) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	return io.ReadAll(c)
}

func TestPipeBothWays(t *testing.T) {
	for _, size := range []int{0, 1, 32 << 10, 1<<20 + 7} {
		r := startPipe(t, context.Background(), 0)
		up, down := randBytes(t, size), randBytes(t, size/2+3)
		var wg sync.WaitGroup
		var gotUp, gotDown []byte
		var errUp, errDown error
		wg.Go(func() {
			if _, err := r.app.Write(up); err != nil {
				t.Error(err)
			}
			r.app.CloseWrite()
		})
		wg.Go(func() {
			if _, err := r.backend.Write(down); err != nil {
				t.Error(err)
			}
			r.backend.CloseWrite()
		})
		wg.Go(func() { gotUp, errUp = readAll(t, r.backend, 10*time.Second) })
		wg.Go(func() { gotDown, errDown = readAll(t, r.app, 10*time.Second) })
		wg.Wait()
		r.wait(t, 5*time.Second)
		if errUp != nil || errDown != nil || !bytes.Equal(gotUp, up) || !bytes.Equal(gotDown, down) {
			t.Fatalf("size %d: up %d/%d bytes (%v), down %d/%d bytes (%v)", size, len(gotUp), len(up), errUp, len(gotDown), len(down), errDown)
		}
		if r.err != nil {
			t.Errorf("size %d: Pipe error %v", size, r.err)
		}
		if r.st.AToB != int64(len(up)) || r.st.BToA != int64(len(down)) {
			t.Errorf("size %d: Stats %+v, want AToB %d BToA %d", size, r.st, len(up), len(down))
		}
	}
}

// The app ends its write side: the backend reads EOF, and its answer still
// flows back, then its own EOF ends the pipe.
func TestPipeHalfClose(t *testing.T) {
	r := startPipe(t, context.Background(), 0)
	req := randBytes(t, 100<<10)
	if _, err := r.app.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := r.app.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, r.backend, 5*time.Second)
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("backend read %d bytes, %v; want %d then EOF", len(got), err, len(req))
	}
	// After the backend saw EOF, it answers in several pieces, with pauses;
	// the pipe must stay up.
	var answer []byte
	for i := range 5 {
		p := randBytes(t, 10<<10+i)
		answer = append(answer, p...)
		if _, err := r.backend.Write(p); err != nil {
			t.Fatalf("backend write after half-close: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-r.done:
		t.Fatal("Pipe ended while the backend was still answering")
	default:
	}
	r.backend.CloseWrite()
	got, err = readAll(t, r.app, 5*time.Second)
	if err != nil || !bytes.Equal(got, answer) {
		t.Fatalf("app read %d bytes, %v; want %d then EOF", len(got), err, len(answer))
	}
	r.wait(t, 5*time.Second)
	if r.err != nil {
		t.Errorf("Pipe error %v", r.err)
	}
	if r.st.AToB != int64(len(req)) || r.st.BToA != int64(len(answer)) {
		t.Errorf("Stats %+v, want %d/%d", r.st, len(req), len(answer))
	}
}

// Both ends are closed once neither moves a byte for idle; traffic in
// either direction keeps the pipe up.
func TestPipeIdleTimeout(t *testing.T) {
	const idle = 150 * time.Millisecond
	r := startPipe(t, context.Background(), idle)

	// Traffic only in one direction, for 4 idle periods, keeps it up.
	stop := time.Now().Add(4 * idle)
	buf := make([]byte, 16)
	for time.Now().Before(stop) {
		if _, err := r.backend.Write([]byte("tick")); err != nil {
			t.Fatal(err)
		}
		r.app.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(r.app, buf[:4]); err != nil {
			t.Fatalf("pipe closed while traffic flowed: %v", err)
		}
		time.Sleep(idle / 5)
	}
	// Then silence: closed after about idle.
	start := time.Now()
	r.wait(t, 5*idle+time.Second)
	took := time.Since(start)
	if took < idle*3/4 || took > idle*4 {
		t.Errorf("idle close after %v, want about %v", took, idle)
	}
	for name, c := range map[string]net.Conn{"app": r.app, "backend": r.backend} {
		if _, err := readAll(t, c, 2*time.Second); err != nil {
			t.Errorf("%s: after idle close, read: %v, want EOF", name, err)
		}
	}
	// The ends are clean (FIN), and Pipe says why they came.
	if !errors.Is(r.err, ErrIdleTimeout) {
		t.Errorf("idle timeout: Pipe returned %v, want ErrIdleTimeout", r.err)
	}
}

func TestPipeContextCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := startPipe(t, ctx, time.Hour)
	if _, err := r.app.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	r.backend.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(r.backend, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cancel()
	r.wait(t, 2*time.Second)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("cancel took %v", d)
	}
	for name, c := range map[string]net.Conn{"app": r.app, "backend": r.backend} {
		if _, err := readAll(t, c, 2*time.Second); err != nil {
			t.Errorf("%s: after cancel, read: %v, want EOF", name, err)
		}
	}
}

// A reset from one side is reported and closes the other: while its
// copier waits for more, and once the connection has been quiet long
// enough for a waiter that peeks (and so takes the socket's error) to
// wait instead.
func TestPipeReset(t *testing.T) {
	for _, tc := range []struct {
		name  string
		quiet time.Duration
	}{{"busy", 0}, {"quiet", 3 * socketGrace}} {
		t.Run(tc.name, func(t *testing.T) {
			r := startPipe(t, context.Background(), 0)
			r.app.Write([]byte("hello"))
			r.backend.SetReadDeadline(time.Now().Add(2 * time.Second))
			io.ReadFull(r.backend, make([]byte, 5))
			time.Sleep(tc.quiet)
			r.backend.SetLinger(0) // close sends RST
			r.backend.Close()
			r.wait(t, 5*time.Second)
			if r.err == nil {
				t.Error("Pipe returned nil after a connection reset")
			}
			// The reset reaches the app as a reset, not as a clean EOF that
			// would pass a truncated transfer for a complete one.
			if _, err := readAll(t, r.app, 2*time.Second); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("app after the backend's reset: read %v, want ECONNRESET", err)
			}
		})
	}
}

// TestPipeResetCutsBothWays: the backend resets while the app uploads and
// a download to the app is still in flight (the app reads slowly). The
// upload's write fails first; the download, cut by the same close, must
// reach the app as a reset, not as a short transfer with a clean EOF.
func TestPipeResetCutsBothWays(t *testing.T) {
	r := startPipe(t, context.Background(), 0)
	const size = 8 << 20
	go r.backend.Write(make([]byte, size)) // the download; the app does not read yet
	time.Sleep(300 * time.Millisecond)     // that direction is now blocked writing to the app
	r.backend.SetLinger(0)
	r.backend.Close()
	time.Sleep(100 * time.Millisecond)
	r.app.Write([]byte("more upload")) // the upload's write meets the reset
	r.wait(t, 5*time.Second)
	got, err := readAll(t, r.app, 3*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("download cut at %d of %d bytes ended with %v, want ECONNRESET", len(got), size, err)
	}
}

// TestPipeResetAfterCleanEnd: when the other direction has already ended
// cleanly (the backend sent its whole answer and a FIN), a later reset on
// the upload does not turn that complete answer into a reset.
func TestPipeResetAfterCleanEnd(t *testing.T) {
	r := startPipe(t, context.Background(), 0)
	answer := randBytes(t, 64<<10)
	r.backend.Write(answer)
	r.backend.CloseWrite()
	got, err := readAll(t, r.app, 3*time.Second) // the whole answer, then EOF
	if err != nil || !bytes.Equal(got, answer) {
		t.Fatalf("answer: %d bytes, %v", len(got), err)
	}
	r.backend.SetLinger(0)
	r.backend.Close()
	time.Sleep(100 * time.Millisecond)
	r.app.Write([]byte("late upload"))
	r.wait(t, 5*time.Second)
	if r.err == nil {
		t.Error("Pipe returned nil after the backend's reset")
	}
	// The app's socket was closed normally: its next read sees EOF, and
	// its writes fail only once our FIN (not a reset) has been answered.
	r.app.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := r.app.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("app read after a clean answer and a later upload reset: %d, %v; want EOF", n, err)
	}
}

// Our own closes (idle timeout, cancel) end with FIN, not a reset.
func TestPipeIdleCloseIsClean(t *testing.T) {
	for range 20 {
		r := startPipe(t, context.Background(), 20*time.Millisecond)
		r.wait(t, 2*time.Second)
		for name, c := range map[string]net.Conn{"app": r.app, "backend": r.backend} {
			if _, err := readAll(t, c, 2*time.Second); err != nil {
				t.Fatalf("%s after idle close: %v, want EOF", name, err)
			}
		}
	}
}

// Conns without CloseWrite (net.Pipe): EOF on one side can only be passed on
// by closing both.
func TestPipeNoHalfClose(t *testing.T) {
	app, a := net.Pipe()
	b, backend := net.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := Pipe(context.Background(), a, b, 0)
		done <- err
	}()
	go func() {
		app.Write([]byte("bye"))
		app.Close()
	}()
	got, err := io.ReadAll(backend)
	if string(got) != "bye" || err != nil {
		t.Fatalf("backend read %q, %v", got, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Pipe: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Pipe did not end")
	}
}

// settleGoroutines waits until the goroutine count is at most want.
func settleGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	n := runtime.NumGoroutine()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	if n > want {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%d goroutines, want at most %d:\n%s", n, want, buf)
	}
}

func TestPipeNoGoroutineLeak(t *testing.T) {
	settleGoroutines(t, runtime.NumGoroutine()) // let earlier tests' goroutines go
	base := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	var rigs []*pipeRig
	for i := range 30 {
		switch i % 3 {
		case 0: // normal end
			r := startPipe(t, context.Background(), time.Minute)
			r.app.Write([]byte("ping"))
			r.app.CloseWrite()
			r.backend.CloseWrite()
			rigs = append(rigs, r)
		case 1: // idle timeout
			rigs = append(rigs, startPipe(t, context.Background(), 30*time.Millisecond))
		case 2: // cancelled
			rigs = append(rigs, startPipe(t, ctx, 0))
		}
	}
	cancel()
	for _, r := range rigs {
		r.wait(t, 5*time.Second)
		r.app.Close()
		r.backend.Close()
	}
	settleGoroutines(t, base)
}

// TestPipeIdleHoldsNoBuffer: once data has moved both ways and the
// connections go quiet, no Pipe holds a copy buffer — neither between
// sockets (read only once readable) nor between a socket and a secure
// stream (read only when psk.Stream says it is readable) — and data
// moves again when it comes.
func TestPipeIdleHoldsNoBuffer(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	pool := newTestPool(t, up.addr, PoolOptions{})
	type rig struct {
		app  *net.TCPConn
		far  net.Conn // the other end: a TCP peer, or nil for the echo upstream
		done chan error
	}
	var rigs []rig
	for i := range 20 {
		app, a := tcpPair(t)
		var b, far net.Conn
		if i%2 == 0 {
			b, far = tcpPair(t)
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			st, err := pool.Open(ctx, "")
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			b = st
		}
		done := make(chan error, 1)
		go func() {
			_, err := Pipe(context.Background(), a, b, 0)
			done <- err
		}()
		rigs = append(rigs, rig{app: app, far: far, done: done})
	}
	exchange := func(round byte) {
		for i, r := range rigs {
			msg := []byte{round, byte(i)}
			if _, err := r.app.Write(msg); err != nil {
				t.Fatal(err)
			}
			if r.far != nil { // a TCP peer echoes by hand
				got := make([]byte, 2)
				if _, err := io.ReadFull(r.far, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("rig %d: far end read %v %v", i, got, err)
				}
				if _, err := r.far.Write(got); err != nil {
					t.Fatal(err)
				}
			}
			got := make([]byte, 2)
			r.app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(r.app, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("rig %d round %d: echo %v %v", i, round, got, err)
			}
		}
	}
	for round := range byte(3) {
		exchange(round)
		deadline := time.Now().Add(5 * time.Second)
		for buffersHeld.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d copy buffers held by idle pipes, want 0", round, buffersHeld.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for i, r := range rigs {
		r.app.CloseWrite()
		if r.far != nil {
			r.far.(*net.TCPConn).CloseWrite()
		}
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("rig %d: Pipe: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("rig %d: Pipe did not end after both half-closes", i)
		}
	}
	if n := buffersHeld.Load(); n != 0 {
		t.Errorf("%d copy buffers held after every Pipe ended", n)
	}
}

// pipeGoroutines counts the goroutines of pipes: socket waiters parked
// until their socket is readable, and copiers (of sockets, of
// ReadNotifier connections, or blocked in a Read).
func pipeGoroutines() (waiters, copiers int) {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if i := strings.Index(g, "\ncreated by "); i >= 0 {
			g = g[:i] // what it runs, not what started it
		}
		switch {
		case strings.Contains(g, "proxy.(*half).drain"), strings.Contains(g, "proxy.(*half).copySocket"),
			strings.Contains(g, "proxy.(*half).copyAll"):
			copiers++
		case strings.Contains(g, "proxy.(*half).waitSocket"):
			waiters++
		}
	}
	return waiters, copiers
}

// waitQuiet waits (up to 5 s; a quiet copier hands over within two
// socketGraces) until the pipes hold waitersWant parked socket waiters and
// no copier.
func waitQuiet(t *testing.T, what string, waitersWant int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		w, c := pipeGoroutines()
		if w == waitersWant && c == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d socket waiters and %d copiers, want %d and 0", what, w, c, waitersWant)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStartIdleGoroutines: Start between a socket and a secure stream
// returns at once; while the connection is quiet it holds one goroutine
// (the socket's waiter) and none for the stream; data either way is
// copied by goroutines started when it comes; both half-closes end it
// cleanly.
func TestStartIdleGoroutines(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	pool := newTestPool(t, up.addr, PoolOptions{})
	const n = 20
	apps := make([]*net.TCPConn, n)
	done := make(chan error, n)
	for i := range apps {
		app, a := tcpPair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		st, err := pool.Open(ctx, "")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		Start(context.Background(), a, st, 0, func(_ Stats, err error) { done <- err })
		apps[i] = app
	}
	waitQuiet(t, "before any data", n)
	for round := range byte(3) {
		for i, app := range apps {
			msg := bytes.Repeat([]byte{round, byte(i)}, 1000*int(round)+1)
			if _, err := app.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(app, got); err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("pipe %d round %d: echo %v", i, round, err)
			}
		}
		waitQuiet(t, fmt.Sprintf("quiet after round %d", round), n)
	}
	for _, app := range apps {
		app.CloseWrite() // the upstream echoes the EOF back
	}
	for i := range apps {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("pipe: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d pipes did not end after both half-closes", n-i, n)
		}
	}
	for i, app := range apps {
		app.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(app); err != nil || len(b) != 0 {
			t.Errorf("app %d after the end: %d bytes, %v; want a clean EOF", i, len(b), err)
		}
	}
	waitQuiet(t, "after the end", 0)
	if n := buffersHeld.Load(); n != 0 {
		t.Errorf("%d copy buffers held after every pipe ended", n)
	}
}

// TestWaitSocketPendingReset: a reset already pending when a socket's
// waiter first looks is taken by its peek; it must still end the
// direction as a reset, not as a clean EOF.
func TestWaitSocketPendingReset(t *testing.T) {
	_, a := tcpPair(t)
	b, backend := tcpPair(t)
	backend.SetLinger(0)
	backend.Close()                   // RST
	time.Sleep(50 * time.Millisecond) // loopback: the RST has arrived
	p := newPipe(context.Background(), a, b, 0, func(Stats, error) {})
	h := &p.halves[1] // b → a
	rc, err := b.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	h.rc = rc
	h.waitSocket() // ends the half, here: finish runs inline
	if !errors.Is(p.errs[1], syscall.ECONNRESET) {
		t.Errorf("direction ended with %v, want ECONNRESET", p.errs[1])
	}
}

// TestStartQuietEnds: a socket⇄stream pipe that has gone quiet (its
// socket waited on by a small goroutine, its stream by none) still ends
// on the idle timeout and on cancel, cleanly, and when the secure session
// dies, as a reset of the application connection.
func TestStartQuietEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		idle    time.Duration
		end     func(cancel context.CancelFunc, up *echoUpstream)
		wantErr bool  // an abnormal end: the app is reset
		wantEnd error // what done reports, if not nil or abnormal
	}{
		{"idle timeout", 200 * time.Millisecond, func(context.CancelFunc, *echoUpstream) {}, false, ErrIdleTimeout},
		{"cancel", 0, func(cancel context.CancelFunc, _ *echoUpstream) { cancel() }, false, nil},
		{"session dies", 0, func(_ context.CancelFunc, up *echoUpstream) { up.killSessions() }, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newEchoUpstream(t, "127.0.0.1:0")
			pool := newTestPool(t, up.addr, PoolOptions{})
			app, a := tcpPair(t)
			octx, ocancel := context.WithTimeout(context.Background(), 20*time.Second)
			st, err := pool.Open(octx, "")
			ocancel()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			Start(ctx, a, st, tc.idle, func(_ Stats, err error) { done <- err })
			if _, err := app.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(app, make([]byte, 4)); err != nil {
				t.Fatal(err)
			}
			if tc.idle == 0 { // quiet: the copier hands over to a waiter
				waitQuiet(t, "quiet pipe", 1)
			}
			tc.end(cancel, up)
			select {
			case err := <-done:
				switch {
				case tc.wantEnd != nil:
					if !errors.Is(err, tc.wantEnd) {
						t.Errorf("Start ended with %v, want %v", err, tc.wantEnd)
					}
				case (err != nil) != tc.wantErr:
					t.Errorf("Start ended with %v, want an error: %v", err, tc.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the pipe did not end")
			}
			_, err = readAll(t, app, 5*time.Second)
			if tc.wantErr && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("app read %v, want ECONNRESET (a truncated stream is no clean EOF)", err)
			}
			if !tc.wantErr && err != nil {
				t.Errorf("app read %v, want EOF", err)
			}
			waitQuiet(t, "after the end", 0)
		})
	}
}

// TestPipeUnixSocket: a unix socket is a socket half like TCP: waited on
// by peeking once quiet, data moves again after the hand-over, and its
// half-close reaches the other side.
func TestPipeUnixSocket(t *testing.T) {
	ln, err := Listen("unix:"+t.TempDir()+"/app.sock", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	app, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	a := <-accepted
	if a == nil {
		t.Fatal("accept failed")
	}
	b, echo := tcpPair(t)
	go func() {
		io.Copy(echo, echo)
		echo.CloseWrite()
	}()
	done := make(chan error, 1)
	Start(context.Background(), a, b, 0, func(_ Stats, err error) { done <- err })
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := app.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(app, got); err != nil || string(got) != msg {
			t.Fatalf("echo %q: %q %v", msg, got, err)
		}
	}
	roundTrip("before")
	waitQuiet(t, "quiet unix⇄tcp pipe", 2) // both socket halves
	roundTrip("after the hand-over")
	app.(*net.UnixConn).CloseWrite()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Start: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pipe did not end after both half-closes")
	}
	if b, err := readAll(t, app, 5*time.Second); err != nil || len(b) != 0 {
		t.Errorf("app after the end: %q %v, want a clean EOF", b, err)
	}
}

// TestBufferSizing: a read of a small buffer's size or more makes the next
// read of that direction take a bulk buffer; a shorter read goes back to
// the small ones.
func TestBufferSizing(t *testing.T) {
	for _, tc := range []struct {
		bulk     bool
		n        int
		wantLen  int
		wantFull bool
	}{
		{false, copyBufSize, copyBufSize, true},
		{false, copyBufSize - 1, copyBufSize, false},
		{false, 0, copyBufSize, false},
		{true, bulkBufSize, bulkBufSize, true},
		{true, copyBufSize, bulkBufSize, true},
		{true, copyBufSize - 1, bulkBufSize, false},
	} {
		before := buffersHeld.Load()
		bp := getBuf(tc.bulk)
		if len(*bp) != tc.wantLen {
			t.Errorf("getBuf(%v): %d bytes, want %d", tc.bulk, len(*bp), tc.wantLen)
		}
		if full := putBuf(bp, tc.n); full != tc.wantFull {
			t.Errorf("bulk %v, read %d: full %v, want %v", tc.bulk, tc.n, full, tc.wantFull)
		}
		if buffersHeld.Load() != before {
			t.Errorf("buffersHeld %d after get+put, want %d", buffersHeld.Load(), before)
		}
	}
}

// TestIdleCutDuringBlockedWriteIsReset: an idle timeout that fires while a
// write is blocked (a reader that takes nothing, or too little to wake the
// writer within the timeout) resets the connections: the reader must not
// take the part it got for the whole (it read a clean EOF).
func TestIdleCutDuringBlockedWriteIsReset(t *testing.T) {
	r := startPipe(t, context.Background(), 300*time.Millisecond)
	const size = 32 << 20
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		r.backend.Write(make([]byte, size)) // fails once the pipe is cut
	}()
	r.wait(t, 10*time.Second) // the app reads nothing: the pipe's write blocks until the cut
	b, err := readAll(t, r.app, 10*time.Second)
	if n := len(b); n >= size || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("app after an idle cut during a blocked write: %d of %d bytes, %v; want a reset", len(b), size, err)
	}
	<-wrote
}
