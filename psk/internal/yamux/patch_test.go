package yamux

// Tests of the milagro patches (PATCHES.md): DirectWrites and
// AsyncWindowUpdates. Upstream's suite (session_test.go) runs with both on
// as well (testConf).

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func patchedPair(t *testing.T, client, server io.ReadWriteCloser, direct bool) (*Session, *Session) {
	t.Helper()
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 5 * time.Second
	conf.DirectWrites, conf.AsyncWindowUpdates = direct, direct
	return testClientServerConfig(t, client, server, conf, conf.Clone())
}

// Many streams writing both ways at once over TCP: every byte arrives, in
// order, whether its frame went direct or through the queue (contention
// sends some through the queue). Without the patch no frame goes direct.
func TestDirectWritesConcurrentStreams(t *testing.T) {
	for _, direct := range []bool{true, false} {
		c, s := testConnTCP(t)
		client, server := patchedPair(t, c, s, direct)
		const streams, size = 8, 1 << 20
		var wg sync.WaitGroup
		errs := make(chan error, 4*streams)
		// The server echoes each stream.
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range streams {
				st, err := server.AcceptStream()
				if err != nil {
					errs <- err
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := io.Copy(st, st); err != nil {
						errs <- err
					}
					_ = st.Close()
				}()
			}
		}()
		for range streams {
			st, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			data := make([]byte, size)
			_, _ = rand.Read(data)
			want := sha256.Sum256(data)
			wg.Add(2)
			go func() {
				defer wg.Done()
				// Odd sizes, so that frames of all lengths interleave.
				for b := data; len(b) > 0; {
					n := 1 + (len(b)-1)%7919 // yamux's min shadows the builtin
					if _, err := st.Write(b[:n]); err != nil {
						errs <- err
						return
					}
					b = b[n:]
				}
				_ = st.Close() // FIN: the echo ends
			}()
			go func() {
				defer wg.Done()
				h := sha256.New()
				if _, err := io.Copy(h, st); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(h.Sum(nil), want[:]) {
					errs <- errors.New("echoed data differs")
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("direct=%v: %v", direct, err)
		}
		nd := client.directFrames.Load() + server.directFrames.Load()
		if direct && nd == 0 || !direct && nd != 0 {
			t.Errorf("direct=%v: %d frames written directly", direct, nd)
		}
		t.Logf("direct=%v: %d frames written directly", direct, nd)
	}
}

// failConn fails every Write once failing is set.
type failConn struct {
	io.ReadWriteCloser
	failing atomic.Bool
}

var errInjected = errors.New("injected write failure")

func (c *failConn) Write(b []byte) (int, error) {
	if c.failing.Load() {
		return 0, errInjected
	}
	return c.ReadWriteCloser.Write(b)
}

// A direct write that fails ends the session, which reports itself closed
// by the time the writer has its error (a session pool drops it then).
func TestDirectWriteErrorClosesSession(t *testing.T) {
	c, s := testConnTCP(t)
	fc := &failConn{ReadWriteCloser: c}
	client, server := patchedPair(t, fc, s, true)
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server.AcceptStream(); err != nil {
		t.Fatal(err)
	}
	fc.failing.Store(true)
	if _, err := st.Write([]byte("hello")); !errors.Is(err, errInjected) {
		t.Fatalf("Write: %v, want the connection's error", err)
	}
	if !client.IsClosed() {
		t.Fatal("session not closed when the failed Write returned")
	}
	if _, err := st.Write([]byte("again")); err == nil {
		t.Fatal("Write after the session ended succeeded")
	}
}

// While a direct write is blocked in the connection, other frames queue,
// and ConnectionWriteTimeout still bounds their wait.
func TestDirectWriteQueuedTimeout(t *testing.T) {
	c, s := testConnPipe(t)
	conf := testConfNoKeepAlive()
	conf.DirectWrites, conf.AsyncWindowUpdates = true, true
	client, server := testClientServerConfig(t, c, s, conf, conf.Clone())
	st1, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	st2, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := server.AcceptStream(); err != nil {
			t.Fatal(err)
		}
	}
	conn := c.(*pipeConn)
	conn.writeBlocker.Lock()
	blocked := make(chan error, 1)
	go func() { _, err := st1.Write([]byte("blocked")); blocked <- err }()
	// Wait until st1's frame holds the write lock.
	for client.writeMu.TryLock() {
		client.writeMu.Unlock()
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	if _, err := st2.Write([]byte("queued")); !errors.Is(err, ErrConnectionWriteTimeout) {
		t.Fatalf("queued Write: %v, want ErrConnectionWriteTimeout", err)
	}
	if d := time.Since(start); d < conf.ConnectionWriteTimeout/2 {
		t.Errorf("queued Write gave up after %v", d)
	}
	conn.writeBlocker.Unlock()
	if err := <-blocked; err != nil {
		t.Fatalf("blocked Write: %v", err)
	}
}

// patchedStreams returns a stream pair of patched sessions over pipes, and
// the server's end of the pipe (its writeBlocker stops the server's
// writes).
func patchedStreams(t *testing.T) (server io.ReadWriteCloser, cst, sst *Stream) {
	t.Helper()
	c, s := testConnPipe(t)
	client, srv := patchedPair(t, c, s, true)
	cst, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	sst, err = srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	return s, cst, sst
}

// readWithin reads n bytes of st, failing the test if that takes 10 s
// (a Read blocked what).
func readWithin(t *testing.T, st *Stream, n int, what string) {
	t.Helper()
	read := make(chan error, 1)
	go func() { _, err := io.ReadFull(st, make([]byte, n)); read <- err }()
	select {
	case err := <-read:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Read blocked %s", what)
	}
}

// A Read that makes the stream send a window update returns at once even
// while the connection cannot be written; the update reaches the peer once
// it can.
func TestAsyncWindowUpdateReadDoesNotBlock(t *testing.T) {
	s, cst, sst := patchedStreams(t)
	window := int(initialStreamWindow)
	data := make([]byte, window) // the whole window: the client's writes then wait for an update
	wrote := make(chan error, 1)
	go func() { _, err := cst.Write(data); wrote <- err }()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}

	srv := s.(*pipeConn)
	srv.writeBlocker.Lock()
	readWithin(t, sst, window, "on the window update")
	// The window is spent: this write waits for the update, which goes
	// out once the server's connection takes writes again.
	go func() { _, err := cst.Write([]byte("more")); wrote <- err }()
	srv.writeBlocker.Unlock()
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sst, buf); err != nil || string(buf) != "more" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// The same while a FIN of the stream waits for the connection: the FIN
// holds the stream's control header, which a Read's update does not need.
func TestAsyncWindowUpdateReadDuringBlockedFIN(t *testing.T) {
	s, cst, sst := patchedStreams(t)
	window := int(initialStreamWindow)
	if _, err := cst.Write(make([]byte, window)); err != nil {
		t.Fatal(err)
	}
	// Wait until all of it is buffered at the server.
	for deadline := time.Now().Add(10 * time.Second); ; {
		sst.recvLock.Lock()
		n := 0
		if sst.recvBuf != nil {
			n = sst.recvBuf.Len()
		}
		sst.recvLock.Unlock()
		if n == window {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes buffered", n, window)
		}
		time.Sleep(time.Millisecond)
	}

	srv := s.(*pipeConn)
	srv.writeBlocker.Lock()
	fin := make(chan error, 1)
	go func() { fin <- sst.Close() }() // its FIN blocks in the connection
	for sst.controlHdrLock.TryLock() {
		sst.controlHdrLock.Unlock()
		time.Sleep(time.Millisecond)
	}
	readWithin(t, sst, window, "behind the FIN")
	srv.writeBlocker.Unlock()
	if err := <-fin; err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// countConn counts the bytes written to a connection.
type countConn struct {
	io.ReadWriteCloser
	n atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func inflightSYNs(s *Session) int {
	s.streamLock.Lock()
	defer s.streamLock.Unlock()
	return len(s.inflight)
}

// deferAckPair is a session pair over TCP, patched as psk runs it, the
// server with DeferAck; it returns the server's connection, which counts
// what the server writes.
func deferAckPair(t *testing.T, window uint32) (client, server *Session, sc *countConn) {
	t.Helper()
	c, s := testConnTCP(t)
	sc = &countConn{ReadWriteCloser: s}
	conf := testConfNoKeepAlive()
	conf.DirectWrites, conf.AsyncWindowUpdates = true, true
	if window > 0 {
		conf.MaxStreamWindowSize = window
	}
	sconf := conf.Clone()
	sconf.DeferAck = true
	client, server = testClientServerConfig(t, c, sc, conf, sconf)
	return client, server, sc
}

// waitAcked waits until client has no stream waiting for its ACK.
func waitAcked(t *testing.T, client *Session, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for inflightSYNs(client) != 0 {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(time.Millisecond)
	}
}

// DeferAck: an accepted stream is acknowledged by its first frame out —
// Ack's window update (with the whole receive window), a data frame or a
// FIN — and its Reads send nothing before that; afterwards its window
// updates flow as usual.
func TestDeferAck(t *testing.T) {
	const window = 1 << 20 // > the initial 256 KiB: only a window update grants the rest
	cases := []struct {
		name string
		// answer is the server's first frame out; ackFrame is its size.
		answer   func(*Stream) error
		ackFrame int64
	}{
		{"Ack", func(st *Stream) error { return st.Ack() }, headerSize},
		{"Write", func(st *Stream) error { _, err := st.Write([]byte{0}); return err }, headerSize + 1},
		{"Close", func(st *Stream) error { return st.Close() }, headerSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server, sc := deferAckPair(t, window)

			cst, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			// 200 KiB, read by the server before it answers: a Read would
			// send a window update (more than half the initial window).
			early := make([]byte, 200<<10)
			if _, err := cst.Write(early); err != nil {
				t.Fatal(err)
			}
			sst, err := server.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			readWithin(t, sst, len(early), "before the ACK")
			time.Sleep(50 * time.Millisecond) // a frame the server sent would have arrived
			if n := sc.n.Load(); n != 0 {
				t.Fatalf("server wrote %d bytes before answering", n)
			}
			if n := inflightSYNs(client); n != 1 {
				t.Fatalf("client: %d streams unacknowledged, want 1", n)
			}

			if err := tc.answer(sst); err != nil {
				t.Fatal(err)
			}
			waitAcked(t, client, "the client never saw the ACK")
			if n := sc.n.Load(); n != tc.ackFrame {
				t.Fatalf("server's answer took %d bytes, want one %d-byte frame", n, tc.ackFrame)
			}
			if tc.name == "Close" {
				if _, err := io.ReadAll(cst); err != nil {
					t.Fatalf("client read after the FIN: %v", err)
				}
				return
			}
			// The window flows: with Ack the client may now send a whole
			// window unread; without, the server's Reads grant it.
			more := make([]byte, window)
			wrote := make(chan error, 1)
			go func() { _, err := cst.Write(more); wrote <- err }()
			if tc.name == "Ack" {
				select {
				case err := <-wrote:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("client blocked: Ack did not grant the receive window")
				}
			}
			readWithin(t, sst, window, "after the ACK")
			if tc.name != "Ack" {
				if err := <-wrote; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// DeferAck: a stream the client half-closes before the server answers
// still gets its ACK from Ack (upstream would send none: the state is no
// longer SYN-received), which frees the client's count of unacknowledged
// streams before the server closes its side.
func TestDeferAckAfterPeerFIN(t *testing.T) {
	client, server, _ := deferAckPair(t, 0)
	cst, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cst.Write([]byte("header")); err != nil {
		t.Fatal(err)
	}
	if err := cst.Close(); err != nil { // FIN before any answer
		t.Fatal(err)
	}
	sst, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(sst); err != nil || string(b) != "header" {
		t.Fatalf("server read %q, %v", b, err)
	}
	if n := inflightSYNs(client); n != 1 {
		t.Fatalf("client: %d streams unacknowledged before Ack, want 1", n)
	}
	if err := sst.Ack(); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, client, "Ack after the peer's FIN sent no ACK")
}

// Without DeferAck, AcceptStream acknowledges at once, and Ack sends
// nothing more.
func TestAckWithoutDeferAck(t *testing.T) {
	c, s := testConnTCP(t)
	sc := &countConn{ReadWriteCloser: s}
	conf := testConfNoKeepAlive()
	client, server := testClientServerConfig(t, c, sc, conf, conf.Clone())
	if _, err := client.OpenStream(); err != nil {
		t.Fatal(err)
	}
	sst, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	if n := sc.n.Load(); n != headerSize {
		t.Fatalf("AcceptStream wrote %d bytes, want its %d-byte ACK", n, headerSize)
	}
	if err := sst.Ack(); err != nil {
		t.Fatal(err)
	}
	if n := sc.n.Load(); n != headerSize {
		t.Fatalf("Ack after AcceptStream's ACK wrote %d more bytes", n-headerSize)
	}
}

// TestCloseTimeoutSinceData: with CloseTimeoutSinceData, data from the
// peer starts a half-closed stream's StreamCloseTimeout again, so a peer
// that keeps answering is not reset; a silent one is, after the timeout.
// Without it (upstream) the timeout counts from the FIN.
func TestCloseTimeoutSinceData(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprint(on), func(t *testing.T) {
			conf := testConf()
			conf.StreamCloseTimeout = 300 * time.Millisecond
			conf.CloseTimeoutSinceData = on
			c, s := testConnTLS(t)
			client, server := testClientServerConfig(t, c, s, conf, conf.Clone())
			cs, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Write([]byte("req")); err != nil {
				t.Fatal(err)
			}
			if err := cs.Close(); err != nil { // the FIN: the close timer starts
				t.Fatal(err)
			}
			ss, err := server.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			// 10 chunks, 100 ms apart: 1 s, over three timeouts.
			var werr error
			for range 10 {
				if _, werr = ss.Write([]byte("x")); werr != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if on && werr != nil {
				t.Fatalf("answer cut while it moved: %v", werr)
			}
			if !on && werr == nil {
				t.Fatal("upstream's timeout, counted from the FIN, did not cut the answer")
			}
			if on {
				// Silent now: reset after the timeout.
				time.Sleep(3 * conf.StreamCloseTimeout)
				if _, err := ss.Write([]byte("y")); err == nil {
					t.Fatal("a half-closed stream silent for 3 timeouts was not reset")
				}
			}
		})
	}
}

// TestCloseTimeoutSinceDataGracefulClose: a data frame that carries the
// peer's FIN on a stream this side half-closed completes the close, which
// stops the close timer; CloseTimeoutSinceData must not start it again (it
// did: a stray RST for a stream both sides had closed).
func TestCloseTimeoutSinceDataGracefulClose(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	conf := testConf()
	conf.EnableKeepAlive = false
	conf.StreamCloseTimeout = 300 * time.Millisecond
	conf.CloseTimeoutSinceData = true
	srv, err := Server(b, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	frame := func(typ byte, flags uint16, id, length uint32, body []byte) []byte {
		h := make([]byte, 12)
		h[0], h[1] = 0, typ
		binary.BigEndian.PutUint16(h[2:], flags)
		binary.BigEndian.PutUint32(h[4:], id)
		binary.BigEndian.PutUint32(h[8:], length)
		return append(h, body...)
	}
	frames := make(chan [12]byte, 16)
	go func() {
		for {
			var h [12]byte
			if _, err := io.ReadFull(a, h[:]); err != nil {
				close(frames)
				return
			}
			if h[1] == typeData {
				io.CopyN(io.Discard, a, int64(binary.BigEndian.Uint32(h[8:])))
			}
			frames <- h
		}
	}()
	go a.Write(frame(typeWindowUpdate, flagSYN, 1, 0, nil))
	st, err := srv.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // FIN: the close timer starts
	// The peer's last data, with its FIN on the same frame.
	if _, err := a.Write(frame(typeData, flagFIN, 1, 1, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(2 * time.Second)
	for {
		select {
		case h, ok := <-frames:
			if !ok {
				return
			}
			flags := binary.BigEndian.Uint16(h[2:])
			t.Logf("frame type %d flags %#x stream %d", h[1], flags, binary.BigEndian.Uint32(h[4:]))
			if flags&flagRST != 0 {
				t.Fatal("RST for a stream both sides closed gracefully (the close timer was re-armed)")
			}
		case <-deadline:
			return
		}
	}
}

// Patch 10: a peer that floods pings and reads nothing gets at most
// maxPongs answers in flight, each a goroutine; without the bound the
// server's goroutines (and memory) grew with every 12 bytes it received.
func TestPingFloodBounded(t *testing.T) {
	c, s := testConnTCP(t)
	conf := testConfNoKeepAlive()
	conf.ConnectionWriteTimeout = 5 * time.Second
	server, err := Server(s, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	before := runtime.NumGoroutine()
	// The attacker: raw ping frames, never reading the answers (which
	// fill the socket buffers, so the answers' writes block).
	var hdr [headerSize]byte
	frames := make([]byte, 0, 20000*headerSize)
	for i := range 20000 {
		header(hdr[:]).encode(typePing, flagSYN, 0, uint32(i))
		frames = append(frames, hdr[:]...)
	}
	c.(*net.TCPConn).SetWriteBuffer(1 << 20)
	for range 20 {
		if _, err := c.Write(frames); err != nil {
			break // the server closed: fine too
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := runtime.NumGoroutine() - before; n > maxPongs+16 {
		t.Errorf("%d more goroutines after a ping flood, want at most about %d", n, maxPongs)
	}
	c.Close()
}

// TestRecvBufCappedAtWindow: a stream whose reader has stopped holds at
// most the window, in a buffer no larger than the window (upstream's
// bytes.Buffer growth reached twice it), and what it holds arrives intact
// once read; a reader keeping up slides the buffer instead of growing it.
func TestRecvBufCappedAtWindow(t *testing.T) {
	const window = 1 << 20
	for _, chunk := range []int{1000, 4096, 100 << 10, window} {
		t.Run(fmt.Sprint(chunk), func(t *testing.T) {
			conf := testConfNoKeepAlive()
			conf.MaxStreamWindowSize = window
			conf.ConnectionWriteTimeout = 5 * time.Second
			c, s := testConnTCP(t)
			client, server := testClientServerConfig(t, c, s, conf, conf.Clone())
			cs, err := client.OpenStream()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Write([]byte{0}); err != nil {
				t.Fatal(err)
			}
			ss, err := server.AcceptStream()
			if err != nil {
				t.Fatal(err)
			}
			one := make([]byte, 1)
			if _, err := io.ReadFull(ss, one); err != nil { // the window grows to its maximum
				t.Fatal(err)
			}
			// Fill the window: the writer blocks once it is used up.
			data := make([]byte, 3*window)
			rand.Read(data)
			sent := 0
			cs.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			for sent < len(data) {
				n, err := cs.Write(data[sent:upTo(sent+chunk, len(data))])
				sent += n
				if err != nil {
					break
				}
			}
			if sent < window/2 || sent > window {
				t.Fatalf("sent %d bytes into a %d-byte window", sent, window)
			}
			time.Sleep(50 * time.Millisecond) // the last frames land
			if got := ss.RecvBufCap(); got > window {
				t.Errorf("receive buffer of %d bytes for a %d-byte window (holding %d)", got, window, sent)
			}
			// Everything sent arrives, then the rest as the reader keeps up.
			cs.SetWriteDeadline(time.Time{})
			done := make(chan error, 1)
			go func() {
				for sent < len(data) {
					n, err := cs.Write(data[sent:upTo(sent+chunk, len(data))])
					sent += n
					if err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			got := make([]byte, len(data))
			maxCap := 0
			for i := 0; i < len(got); {
				n, err := ss.Read(got[i:upTo(i+8192, len(got))])
				i += n
				if err != nil {
					t.Fatal(err)
				}
				if c := ss.RecvBufCap(); c > maxCap {
					maxCap = c
				}
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("data corrupted through the capped buffer")
			}
			if maxCap > window {
				t.Errorf("receive buffer reached %d bytes while read, window %d", maxCap, window)
			}
		})
	}
}

// upTo is the builtin min for ints (package yamux has a min of its own).
func upTo(a, b int) int {
	if a < b {
		return a
	}
	return b
}
