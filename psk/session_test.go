package psk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/psk/internal/yamux"
	"github.com/pion/dtls/v2"

	"github.com/milagro-sc/milagro/mpinkex"
)

func openCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoRoundTrip writes n random bytes on a fresh stream, half-closes, and
// checks that the echo has the same hash.
func echoRoundTrip(t testing.TB, cli *Session, n int) {
	t.Helper()
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer st.Close()
	data := make([]byte, n)
	_, _ = rand.Read(data)
	want := sha256.Sum256(data)
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, st)
	if err != nil {
		t.Fatalf("read echo of %d bytes: %v after %d", n, err, got)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write %d bytes: %v", n, err)
	}
	if got != int64(n) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echo of %d bytes: got %d bytes, hash mismatch", n, got)
	}
}

func TestDataIntegrity(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	serveEcho(t, srv)
	sizes := []int{1, 7999, 8000, 8001, 1 << 20}
	if !testing.Short() {
		sizes = append(sizes, 64<<20)
	}
	for _, n := range sizes {
		t.Run(fmt.Sprint(n), func(t *testing.T) { echoRoundTrip(t, cli, n) })
	}
	if cli.PeerID() != testServerID || srv.PeerID() != testClientID || cli.LocalID() != testClientID || srv.LocalID() != testServerID {
		t.Errorf("identities: client %q→%q, server %q→%q", cli.LocalID(), cli.PeerID(), srv.LocalID(), srv.PeerID())
	}
	st := cli.Stats()
	if st.RecordsOut == 0 || st.RecordsIn == 0 {
		t.Errorf("stats: %+v", st)
	}
	waitFor(t, "streams to finish", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestManyStreams(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	serveEcho(t, srv)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := 1000 + i*997
			st, err := cli.Open(context.Background(), "")
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data := make([]byte, n)
			_, _ = rand.Read(data)
			go func() {
				_, _ = st.Write(data)
				_ = st.CloseWrite()
			}()
			got, err := io.ReadAll(st)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("stream %d: echo differs (%d vs %d bytes)", i, len(got), n)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestNegotiatedState(t *testing.T) {
	cli, srv := sessionPair(t, nil, nil)
	for _, s := range []*Session{cli, srv} {
		if got := s.pc.app.suite; got != uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256) {
			t.Errorf("client %v: cipher suite %#04x", s.client, got)
		}
	}
	if got := srv.pc.app.identity; len(got) != 32 {
		t.Errorf("server bound to identity %q", got)
	}
}

func TestHalfClose(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	type result struct {
		req []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		in, err := srv.Accept(context.Background())
		if err != nil {
			done <- result{err: err}
			return
		}
		st, err := in.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer st.Close()
		req, err := io.ReadAll(st) // until the client's FIN
		if err != nil {
			done <- result{err: err}
			return
		}
		// The client's write side is closed; ours is not.
		for _, part := range []string{"response ", "after ", "EOF"} {
			time.Sleep(10 * time.Millisecond)
			if _, err := st.Write([]byte(part)); err != nil {
				done <- result{err: err}
				return
			}
		}
		done <- result{req: req, err: st.CloseWrite()}
	}()
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := st.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after CloseWrite: %v, want net.ErrClosed", err)
	}
	resp, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("client read after its CloseWrite: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("server: %v", r.err)
	}
	if string(r.req) != "request" || string(resp) != "response after EOF" {
		t.Fatalf("got request %q, response %q", r.req, resp)
	}
	waitFor(t, "stream to leave both sessions", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
}

// TestCloseDiscards: a full Close on one side lets the other keep writing
// (the data is discarded) and read EOF; the stream then finishes.
func TestCloseDiscards(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	srvDone := make(chan error, 1)
	go func() {
		in, err := srv.Accept(context.Background())
		if err != nil {
			srvDone <- err
			return
		}
		st, err := in.Accept()
		if err != nil {
			srvDone <- err
			return
		}
		defer st.Close()
		// The client closes at once: our read sees EOF, and writes beyond
		// the 256 KiB window still complete because the client drains.
		if _, err := io.ReadAll(st); err != nil {
			srvDone <- fmt.Errorf("server read: %w", err)
			return
		}
		if _, err := st.Write(make([]byte, 1<<20)); err != nil {
			srvDone <- fmt.Errorf("server write: %w", err)
			return
		}
		srvDone <- st.CloseWrite()
	}()
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := st.Read(make([]byte, 10))
		readErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read blocked across Close: %v, want net.ErrClosed", err)
	}
	if _, err := st.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
	if err := <-srvDone; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stream to leave both sessions", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
}

// TestSessionEndIsNotEOF: a stream whose session dies reports an error, not
// a clean end.
func TestSessionEndIsNotEOF(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	go func() {
		in, err := srv.Accept(context.Background())
		if err != nil {
			return
		}
		st, err := in.Accept()
		if err != nil {
			return
		}
		_, _ = st.Write([]byte("partial"))
		time.Sleep(20 * time.Millisecond)
		srv.Close() // the peer's session ends mid-stream
	}()
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st)
	if string(got) != "partial" {
		t.Errorf("read %q before the end", got)
	}
	if !errors.Is(err, ErrSessionClosed) || !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("stream read after the peer's session closed: %v, want ErrSessionClosed(ErrPeerClosed)", err)
	}
	<-cli.Done()
	if err := cli.Err(); !errors.Is(err, ErrPeerClosed) {
		t.Errorf("client session Err: %v", err)
	}
	if err := srv.Err(); err != ErrSessionClosed {
		t.Errorf("server session Err after local Close: %v", err)
	}
}

func TestStatus(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	go func() {
		for {
			in, err := srv.Accept(context.Background())
			if err != nil {
				return
			}
			switch in.Target() {
			case "refuse":
				_ = in.Reject(StatusRefused)
			case "unreachable":
				_ = in.Reject(StatusUnreachable)
			case "bogus":
				_, _ = in.st.Write([]byte{0x07})
				_ = in.st.Close()
			case "silent":
				_ = in.st.Close()
			default:
				if in.Kind() != KindNamed || in.Target() != "db:5432" {
					_ = in.Reject(StatusRefused)
					continue
				}
				st, _ := in.Accept()
				_, _ = st.Write([]byte("ok"))
				_ = st.Close()
			}
		}
	}()
	for _, tc := range []struct {
		target string
		status Status
	}{{"refuse", StatusRefused}, {"unreachable", StatusUnreachable}} {
		_, err := cli.Open(openCtx(t), tc.target)
		var re *StreamRefusedError
		if !errors.As(err, &re) || re.Status != tc.status || re.Target != tc.target {
			t.Errorf("open %q: %v, want refused with %v", tc.target, err, tc.status)
		}
	}
	for _, target := range []string{"bogus", "silent"} {
		if _, err := cli.Open(openCtx(t), target); !errors.Is(err, ErrBadStreamHeader) {
			t.Errorf("open %q: %v, want ErrBadStreamHeader", target, err)
		}
	}
	// The session is still good.
	st, err := cli.Open(openCtx(t), "db:5432")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if b, err := io.ReadAll(st); err != nil || string(b) != "ok" {
		t.Fatalf("named target: %q, %v", b, err)
	}
	if _, err := cli.Open(openCtx(t), string(make([]byte, 256))); !errors.Is(err, ErrBadStreamHeader) {
		t.Errorf("256-byte target: %v", err)
	}
	if _, err := srv.Open(openCtx(t), ""); !errors.Is(err, ErrConfig) {
		t.Errorf("server Open: %v", err)
	}
}

// TestMalformedHeader: bad headers and slow headers cost the stream, not
// the session.
func TestMalformedHeader(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, &Config{HeaderTimeout: 200 * time.Millisecond})
	for _, raw := range [][]byte{
		{0x02, 0x00, 0x00},       // version
		{0x01, 0x05, 0x00},       // kind
		{0x01, 0x00, 0x01, 'x'},  // default with a target
		{0x01, 0x01, 0x00},       // named, empty
		{0x01, 0x01, 0x05, 'a'},  // truncated (then FIN)
		{},                       // nothing, then FIN
		nil,                      // nothing, no FIN: header timeout
		[]byte("GET / HTTP/1.1"), // not our protocol
	} {
		ys, err := cli.mux.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) > 0 {
			if _, err := ys.Write(raw); err != nil {
				t.Fatal(err)
			}
		}
		if raw != nil {
			_ = ys.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = srv.Accept(ctx)
		cancel()
		var se *StreamError
		if !errors.As(err, &se) || !errors.Is(err, ErrBadStreamHeader) || se.StreamID != ys.StreamID() {
			t.Errorf("header %x: Accept returned %v", raw, err)
		}
		// The server closed the stream: the client sees EOF.
		_ = ys.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(ys); err != nil {
			t.Errorf("header %x: client read: %v", raw, err)
		}
		_ = ys.Close()
	}
	if n := srv.Stats().BadStreams; n != 8 {
		t.Errorf("BadStreams = %d, want 8", n)
	}
	// Still usable.
	serveEcho(t, srv)
	echoRoundTrip(t, cli, 100)
}

func TestIdleTimeout(t *testing.T) {
	leakCheck(t)
	const idle = 300 * time.Millisecond
	cli, srv := sessionPair(t, &Config{IdleTimeout: idle}, nil)
	serveEcho(t, srv)

	// A stream open (and silent) for longer than the idle timeout keeps
	// the session; keepalive-free, so nothing else crosses it.
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * idle)
	if cli.IsClosed() {
		t.Fatal("session with an open stream closed as idle")
	}
	_ = st.CloseWrite()
	if _, err := io.ReadAll(st); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	select {
	case <-cli.Done():
	case <-time.After(10 * idle):
		t.Fatal("idle session not closed")
	}
	if d := time.Since(start); d < idle-50*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout %v", d, idle)
	}
	if err := cli.Err(); !errors.Is(err, ErrIdleTimeout) {
		t.Errorf("Err = %v", err)
	}
	if _, err := cli.Open(openCtx(t), ""); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("open on idle-closed session: %v", err)
	}
	// The server sees its peer leave.
	select {
	case <-srv.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("server session survived the client's close")
	}
}

func TestKeepAlive(t *testing.T) {
	leakCheck(t)
	cfg := &Config{KeepAliveInterval: 50 * time.Millisecond, IdleTimeout: 200 * time.Millisecond}
	cli, srv := sessionPair(t, cfg, cfg)
	serveEcho(t, srv)
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	before := cli.Stats().RecordsIn
	time.Sleep(600 * time.Millisecond)
	if cli.IsClosed() || srv.IsClosed() {
		t.Fatalf("used session closed: %v / %v", cli.Err(), srv.Err())
	}
	if got := cli.Stats().RecordsIn - before; got < 5 {
		t.Errorf("only %d records in 600 ms with 50 ms keepalives", got)
	}
	st.Close()
}

// deadPeerPair is a session pair whose client pings every 50 ms through a
// relay that, once freeze is closed, stops forwarding both ways and keeps
// the sockets open (a peer gone silent); it returns once the client's
// keepalive has ended its session.
func deadPeerPair(t *testing.T) pairResult {
	t.Helper()
	freeze := make(chan struct{})
	pr := dialPair(t, sharedDomain(t), pairOpts{
		cli: &Config{KeepAliveInterval: 50 * time.Millisecond, WriteTimeout: 200 * time.Millisecond},
		srv: &Config{KeepAliveInterval: -1},
		relay: func(c, s net.Conn) {
			defer c.Close()
			defer s.Close()
			go func() {
				<-freeze
				// Stop forwarding in both directions, keep the sockets open.
				c.SetReadDeadline(time.Unix(1, 0))
				s.SetReadDeadline(time.Unix(1, 0))
			}()
			go io.Copy(s, c)
			_, _ = io.Copy(c, s)
			time.Sleep(2 * time.Second)
		},
	})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatal(pr.cliErr, pr.srvErr)
	}
	close(freeze)
	select {
	case <-pr.cli.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("dead peer not detected")
	}
	return pr
}

// TestKeepAliveDeadPeer: a peer that stops answering is detected, and Err
// says why, not "use of closed network connection" (the read that yamux's
// close of the connection cut short).
func TestKeepAliveDeadPeer(t *testing.T) {
	leakCheck(t)
	pr := deadPeerPair(t)
	if err := pr.cli.Err(); !errors.Is(err, ErrSessionClosed) || !errors.Is(err, yamux.ErrKeepAliveTimeout) {
		t.Errorf("Err = %v, want the keepalive timeout", err)
	}
}

// TestKeepAliveCauseSurvivesClose: a session yamux ended keeps its cause
// when the owner closes it before asking why (a drain closing sessions at
// shutdown, before their "session closed" line is written).
func TestKeepAliveCauseSurvivesClose(t *testing.T) {
	pr := deadPeerPair(t)
	pr.cli.Close()
	if err := pr.cli.Err(); !errors.Is(err, yamux.ErrKeepAliveTimeout) {
		t.Errorf("Err after Close = %v, want the keepalive timeout", err)
	}
}

// TestWindowViolationCause: a peer that sends past a stream's window
// ends the session, and Err says so.
func TestWindowViolationCause(t *testing.T) {
	cli, srv := sessionPair(t, &Config{KeepAliveInterval: -1}, &Config{KeepAliveInterval: -1})
	ys, err := cli.mux.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	const n = 300 << 10 // past yamux's initial 256 KiB window
	frame := make([]byte, 12+n)
	frame[0], frame[1] = 0, yTypeData
	binary.BigEndian.PutUint32(frame[4:8], ys.StreamID())
	binary.BigEndian.PutUint32(frame[8:12], n)
	_, _ = cli.pc.Write(frame) // as yamux writes a frame: one Write
	select {
	case <-srv.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("window violation did not end the server's session")
	}
	if err := srv.Err(); !errors.Is(err, yamux.ErrRecvWindowExceeded) {
		t.Errorf("server Err = %v, want the window violation", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	leakCheck(t)
	d := sharedDomain(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := mpinkex.Server(context.Background(), c, &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{d.sk}, Authorize: func(string) error { return nil }}); err != nil {
			return
		}
		<-hold // never speaks DTLS
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	res, err := mpinkex.Client(context.Background(), c, &mpinkex.ClientConfig{Key: d.ck, ServerID: testServerID})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Client(ctx, c, res, nil)
	var he *HandshakeError
	if !errors.As(err, &he) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a HandshakeError wrapping context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("handshake gave up after %v", d)
	}
	if _, err := c.Write([]byte{0}); err == nil {
		t.Error("connection not closed after a failed handshake")
	}
}

func TestDeadlines(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	serveEcho(t, srv)
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	_ = st.SetReadDeadline(time.Time{})
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(st, b); err != nil || b[0] != 'x' {
		t.Fatalf("read after clearing the deadline: %q %v", b, err)
	}
}

// TestWaitRead: WaitRead returns once data is there without consuming it,
// io.EOF after the peer's FIN, a timeout at the read deadline, and
// net.ErrClosed after Close.
func TestWaitRead(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	st, ps := streamPair(t, cli, srv)
	defer st.Close()
	defer ps.Close()

	_ = st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if err := st.WaitRead(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WaitRead with nothing sent: %v, want a deadline error", err)
	}
	_ = st.SetReadDeadline(time.Time{})

	woke := make(chan error, 1)
	go func() { woke <- st.WaitRead() }()
	select {
	case err := <-woke:
		t.Fatalf("WaitRead returned %v before any data", err)
	case <-time.After(30 * time.Millisecond):
	}
	if _, err := ps.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Fatalf("WaitRead after data: %v", err)
	}
	if err := st.WaitRead(); err != nil { // still there: nothing was consumed
		t.Fatalf("second WaitRead: %v", err)
	}
	if err := ps.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st)
	if err != nil || string(got) != "abc" {
		t.Fatalf("read after WaitRead: %q %v", got, err)
	}
	if err := st.WaitRead(); err != io.EOF {
		t.Fatalf("WaitRead after the peer's FIN: %v, want io.EOF", err)
	}
	st.Close()
	if err := st.WaitRead(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WaitRead after Close: %v, want net.ErrClosed", err)
	}
}

// TestServerMustNotOpen: a server that opens a stream breaks the protocol;
// the client ends the session.
func TestServerMustNotOpen(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	// OpenStream may itself report the session's end: the client can
	// react to the SYN before yamux tells OpenStream it was sent.
	if _, err := srv.mux.OpenStream(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Fatal(err)
	}
	select {
	case <-cli.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client accepted a server-opened stream")
	}
	if err := cli.Err(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("client Err = %v, want ErrProtocol", err)
	}
}

func TestStreamLimits(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, &Config{MaxStreams: 2}, &Config{MaxStreams: 1})
	accepted := make(chan error, 4)
	go func() {
		for {
			in, err := srv.Accept(context.Background())
			if err != nil {
				var se *StreamError
				if errors.As(err, &se) {
					accepted <- err
					continue
				}
				return
			}
			_, err = in.Accept()
			accepted <- err
		}
	}()
	a, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	// The server carries at most one stream: the second is refused.
	_, err = cli.Open(openCtx(t), "")
	var re *StreamRefusedError
	if !errors.As(err, &re) || re.Status != StatusRefused {
		t.Fatalf("second stream: %v, want refused", err)
	}
	if err := <-accepted; !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("server Accept: %v, want ErrTooManyStreams", err)
	}
	// The client carries at most two (the refused one may still be
	// closing): fill up, then Open fails locally.
	waitFor(t, "refused stream to finish", func() bool { return cli.NumStreams() == 1 })
	ys, err := cli.mux.OpenStream() // a raw stream counts too
	if err != nil {
		t.Fatal(err)
	}
	defer ys.Close()
	if _, err := cli.Open(openCtx(t), ""); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("third stream: %v, want ErrTooManyStreams", err)
	}
}

func TestOpenContext(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	got := make(chan *IncomingStream, 1)
	go func() {
		in, err := srv.Accept(context.Background())
		if err == nil {
			got <- in // never answered
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := cli.Open(ctx, "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("open: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("open gave up after %v", d)
	}
	in := <-got
	_ = in.Reject(StatusUnreachable)
	waitFor(t, "abandoned stream to finish", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
	if len(cli.openSem) != 0 {
		t.Errorf("%d open slots still held", len(cli.openSem))
	}
}

func TestGoAway(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	serveEcho(t, srv)
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.GoAway(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "GoAway to arrive", func() bool {
		_, err := cli.Open(openCtx(t), "")
		return errors.Is(err, ErrSessionClosed)
	})
	// The open stream still works.
	if _, err := st.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	_ = st.CloseWrite()
	if b, err := io.ReadAll(st); err != nil || string(b) != "still here" {
		t.Fatalf("%q %v", b, err)
	}
}

// TestNotifyReadable: Readable says whether a Read would return at once,
// and NotifyReadable's function is called each time that may have become
// true — data, the peer's FIN, a local Close, the session's end — with no
// goroutine waiting in Read.
func TestNotifyReadable(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	open := func() (*Stream, *Stream, chan struct{}) {
		t.Helper()
		st, ps := streamPair(t, cli, srv)
		kicks := make(chan struct{}, 1)
		st.NotifyReadable(func() {
			select {
			case kicks <- struct{}{}:
			default:
			}
		})
		return st, ps, kicks
	}
	wait := func(what string, kicks chan struct{}) {
		t.Helper()
		select {
		case <-kicks:
		case <-time.After(10 * time.Second):
			t.Fatalf("no readable notification after %s", what)
		}
	}

	st, ps, kicks := open()
	// The server's side too: the header it read is not left counted.
	if st.Readable() || ps.Readable() {
		t.Fatalf("fresh streams readable: client %v, server %v", st.Readable(), ps.Readable())
	}
	select {
	case <-kicks:
		t.Fatal("notified on a quiet stream")
	default:
	}
	for _, msg := range []string{"abc", strings.Repeat("x", 100_000)} {
		if _, err := ps.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		got := 0
		for got < len(msg) {
			wait("data", kicks)
			for st.Readable() { // each Read returns at once
				n, err := st.Read(make([]byte, 4096))
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		}
		if got != len(msg) || st.Readable() {
			t.Fatalf("read %d of %d bytes; readable after: %v", got, len(msg), st.Readable())
		}
	}
	if err := ps.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	wait("the peer's FIN", kicks)
	if !st.Readable() {
		t.Fatal("not readable after the peer's FIN")
	}
	if _, err := st.Read(make([]byte, 8)); err != io.EOF {
		t.Fatalf("Read after the peer's FIN: %v, want io.EOF", err)
	}
	st.Close()
	ps.Close()

	st, ps, kicks = open()
	st.Close()
	wait("Close", kicks)
	if !st.Readable() {
		t.Fatal("not readable after Close")
	}
	ps.Close()

	st, _, kicks = open()
	st2, _, _ := open()
	st2.NotifyReadable(nil) // no calls after this
	cli.Close()
	wait("the session's end", kicks)
	if _, err := st.Read(make([]byte, 8)); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Read after the session's end: %v, want ErrSessionClosed", err)
	}
	// Registered after the end: called at once.
	called := false
	st2.NotifyReadable(func() { called = true })
	if !called || !st2.Readable() {
		t.Fatalf("NotifyReadable on an ended session: called %v, readable %v", called, st2.Readable())
	}
}

func TestConfigStreamWindow(t *testing.T) {
	for _, tc := range []struct {
		set, want uint32
		ok        bool
	}{
		{0, DefaultStreamWindow, true},
		{MinStreamWindow, MinStreamWindow, true},
		{MaxStreamWindow, MaxStreamWindow, true},
		{MinStreamWindow - 1, 0, false},
		{MaxStreamWindow + 1, 0, false},
	} {
		cfg, err := (&Config{StreamWindow: tc.set}).withDefaults()
		switch {
		case tc.ok && (err != nil || cfg.StreamWindow != tc.want):
			t.Errorf("StreamWindow %d: got %d, %v; want %d", tc.set, cfg.StreamWindow, err, tc.want)
		case !tc.ok && !errors.Is(err, ErrConfig):
			t.Errorf("StreamWindow %d: %v, want ErrConfig", tc.set, err)
		}
		if tc.ok {
			if y := cfg.yamux(); y.MaxStreamWindowSize != tc.want {
				t.Errorf("StreamWindow %d: yamux window %d", tc.set, y.MaxStreamWindowSize)
			}
		}
	}
}

// Shared tells each stream, on both sides, whether another stream is on
// its session: it follows streams opened and finished.
func TestStreamShared(t *testing.T) {
	leakCheck(t)
	cli, srv := sessionPair(t, nil, nil)
	c1, s1 := streamPair(t, cli, srv)
	if c1.Shared() || s1.Shared() {
		t.Fatalf("one stream: Shared %v (client), %v (server)", c1.Shared(), s1.Shared())
	}
	c2, s2 := streamPair(t, cli, srv)
	for i, st := range []*Stream{c1, s1, c2, s2} {
		if !st.Shared() {
			t.Errorf("two streams: stream %d not shared", i)
		}
	}
	_ = c2.Close()
	_ = s2.Close()
	waitFor(t, "second stream to finish", func() bool { return !c1.Shared() && !s1.Shared() })
	_ = c1.Close()
	_ = s1.Close()
}

// Opening a stream costs one TCP write each way: the client's SYN with the
// stream header, the server's ACK (with the stream's receive window) with
// the status — or with a refusal, the status with the FIN. Afterwards the
// window is the configured one both ways.
func TestOpenOneWriteEachWay(t *testing.T) {
	cases := []struct {
		name   string
		answer func(*IncomingStream) (*Stream, error)
		// cliWrites: a refused client also sends its FIN.
		cliWrites uint64
	}{
		{"accept", func(in *IncomingStream) (*Stream, error) { return in.Accept() }, 1},
		{"refuse", func(in *IncomingStream) (*Stream, error) { return nil, in.Reject(StatusRefused) }, 2},
		{"unreachable", func(in *IncomingStream) (*Stream, error) { return nil, in.Reject(StatusUnreachable) }, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{KeepAliveInterval: -1}
			cli, srv := sessionPair(t, cfg, cfg)
			t.Cleanup(func() { _ = cli.Close(); _ = srv.Close() })
			c0, s0 := cli.rc.writesOut.Load(), srv.rc.writesOut.Load()
			type answered struct {
				st  *Stream
				err error
			}
			ch := make(chan answered, 1)
			go func() {
				in, err := srv.Accept(context.Background())
				if err != nil {
					ch <- answered{err: err}
					return
				}
				st, err := tc.answer(in)
				ch <- answered{st, err}
			}()
			st, err := cli.Open(openCtx(t), "")
			a := <-ch
			if a.err != nil {
				t.Fatalf("server: %v", a.err)
			}
			if tc.name == "accept" {
				if err != nil {
					t.Fatal(err)
				}
			} else if _, ok := errors.AsType[*StreamRefusedError](err); !ok {
				t.Fatalf("open: %v, want a *StreamRefusedError", err)
			}
			if c, s := cli.rc.writesOut.Load()-c0, srv.rc.writesOut.Load()-s0; c != tc.cliWrites || s != 1 {
				t.Fatalf("TCP writes: client %d (want %d), server %d (want 1)", c, tc.cliWrites, s)
			}
			if st == nil {
				return
			}
			// More than yamux's initial 256 KiB window each way, unread:
			// the ACK carried the configured window.
			for _, dir := range []struct{ w, r *Stream }{{st, a.st}, {a.st, st}} {
				data := make([]byte, 512<<10)
				done := make(chan error, 1)
				go func() { _, err := dir.w.Write(data); done <- err }()
				select {
				case err := <-done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("write blocked: the stream's window was not granted")
				}
				if _, err := io.ReadFull(dir.r, data); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// A stream's receive buffer, grown by a burst its reader did not keep up
// with, is released once drained (at the session's next sweep), and the
// stream goes on working.
func TestRecvBufferReleased(t *testing.T) {
	old := recvBufSweep
	recvBufSweep = 20 * time.Millisecond
	t.Cleanup(func() { recvBufSweep = old })
	cli, srv := sessionPair(t, nil, nil)
	t.Cleanup(func() { _ = cli.Close(); _ = srv.Close() })
	st, ps := streamPair(t, cli, srv)

	const burst = 768 << 10 // unread: within the 1 MiB window
	data := make([]byte, burst)
	_, _ = rand.Read(data)
	if _, err := st.Write(data); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ps.Buffered() < burst {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes arrived", ps.Buffered(), burst)
		}
		time.Sleep(time.Millisecond)
	}
	// Buffered data is never released.
	time.Sleep(5 * recvBufSweep)
	if c := ps.ys.RecvBufCap(); c < burst {
		t.Fatalf("receive buffer of %d bytes holding %d unread", c, burst)
	}
	got := make([]byte, burst)
	if _, err := io.ReadFull(ps, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read the burst: %v", err)
	}
	for ps.ys.RecvBufCap() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("drained receive buffer of %d bytes still held", ps.ys.RecvBufCap())
		}
		time.Sleep(recvBufSweep)
	}
	if err := sendOver(st, ps, []byte("after")); err != nil {
		t.Fatal(err)
	}
}

// sendOver writes msg on w and reads it from r.
func sendOver(w, r *Stream, msg []byte) error {
	if _, err := w.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(r, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("read %q, want %q", got, msg)
	}
	return nil
}

// failWritesConn fails every Write once failing is set.
type failWritesConn struct {
	net.Conn
	failing atomic.Bool
}

func (c *failWritesConn) Write(b []byte) (int, error) {
	if c.failing.Load() {
		return 0, errors.New("test: write refused")
	}
	return c.Conn.Write(b)
}

// A stream is opened (and answered) in one batched TCP write; when that
// write fails, Open fails with it and the session ends, as when any frame
// cannot be written.
func TestOpenBatchWriteFails(t *testing.T) {
	fc := &failWritesConn{}
	pr := dialPair(t, sharedDomain(t), pairOpts{
		cli: &Config{KeepAliveInterval: -1}, srv: &Config{KeepAliveInterval: -1},
		wrapCli: func(c net.Conn) net.Conn { fc.Conn = c; return fc },
	})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	cli, srv := pr.cli, pr.srv
	t.Cleanup(func() { _ = cli.Close(); _ = srv.Close() })
	fc.failing.Store(true)
	_, err := cli.Open(openCtx(t), "")
	if err == nil || !strings.Contains(err.Error(), "write refused") {
		t.Fatalf("Open with the connection refusing writes: %v", err)
	}
	select {
	case <-cli.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session survived a failed write")
	}
	if err := cli.Err(); err == nil || !strings.Contains(err.Error(), "write refused") {
		t.Errorf("session Err = %v, want the failed write", err)
	}
	if _, err := cli.Open(openCtx(t), ""); !errors.Is(err, ErrSessionClosed) {
		t.Errorf("Open on the ended session: %v, want ErrSessionClosed", err)
	}
}

// TestStreamReset: Reset ends a stream on both sides at once; the peer's
// Read fails with ErrStreamReset (never io.EOF) and the stream leaves both
// tables.
func TestStreamReset(t *testing.T) {
	leakCheck(t)
	pr := dialPair(t, sharedDomain(t), pairOpts{})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	cli, srv := pr.cli, pr.srv
	accepted := make(chan *Stream, 1)
	go func() {
		in, err := srv.Accept(openCtx(t))
		if err != nil {
			accepted <- nil
			return
		}
		st, _ := in.Accept()
		accepted <- st
	}()
	cst, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer cst.Close()
	sst := <-accepted
	if sst == nil {
		t.Fatal("accept failed")
	}
	if _, err := sst.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cst, make([]byte, 7)); err != nil {
		t.Fatal(err)
	}
	if err := sst.Reset(); err != nil {
		t.Fatalf("Reset: %v", err)
	}
	_ = cst.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cst.Read(make([]byte, 8)); !errors.Is(err, ErrStreamReset) {
		t.Fatalf("peer's Read after Reset: %v, want ErrStreamReset", err)
	}
	if _, err := sst.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Reset here: %v, want net.ErrClosed", err)
	}
	if err := sst.Close(); err != nil {
		t.Errorf("Close after Reset: %v", err)
	}
	waitFor(t, "the stream gone from both tables", func() bool { return cli.NumStreams() == 0 && srv.NumStreams() == 0 })
	serveEcho(t, srv)
	echoRoundTrip(t, cli, 100) // the session goes on
}
