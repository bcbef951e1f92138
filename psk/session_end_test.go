package psk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// slowCloseConn holds its first Close for delay, as a session close can
// take that long (a close_notify to a peer that stopped reading waits up to
// closeGrace). yamux v0.1.2 closes the session's shutdown channel before it
// closes the connection, and closes its streams only after: the delay is
// the window in which a stream Read or Write still blocked in yamux loops
// on the closed channel.
type slowCloseConn struct {
	net.Conn
	delay    time.Duration
	once     sync.Once
	released chan struct{} // closed when the delayed Close goes through
}

func (c *slowCloseConn) Close() error {
	c.once.Do(func() {
		time.Sleep(c.delay)
		close(c.released)
	})
	return c.Conn.Close()
}

// endResult is how one blocked stream operation ended.
type endResult struct {
	op    string
	data  string // read before the error
	err   error
	early bool // returned before the delayed connection close went through
}

// TestSessionEndWakesStreams: when a session ends, every stream Read,
// WaitRead and Write blocked on it returns at once with an error wrapping
// ErrSessionClosed (after the data already received), without waiting for
// yamux to close its streams and without spinning meanwhile.
//
// The client's connection close is held for closeDelay, so yamux closes
// the client's streams only then. An operation that returns only after
// that was not woken; spinning goroutines show in the CPU time the process
// used meanwhile (all it can get: about two cores on two, where a quiet
// close uses a few milliseconds).
func TestSessionEndWakesStreams(t *testing.T) {
	const closeDelay = time.Second
	for _, tc := range []struct {
		name  string
		end   func(cli, srv *Session)
		cause error // the client's errors wrap it too
		// slow: the client's yamux takes closeDelay to close its streams.
		// Not with the peer's close_notify, on which pion closes the
		// connection before yamux sees the session end.
		slow bool
	}{
		{"local close", func(cli, _ *Session) { go cli.Close() }, nil, true},
		// yamux closes the client session on its own, on a read error.
		{"peer connection lost", func(_, srv *Session) { _ = srv.raw.Close() }, nil, true},
		{"peer close", func(_, srv *Session) { go srv.Close() }, ErrPeerClosed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			slow := &slowCloseConn{released: make(chan struct{})}
			if tc.slow {
				slow.delay = closeDelay
			}
			pr := dialPair(t, sharedDomain(t), pairOpts{wrapCli: func(c net.Conn) net.Conn {
				slow.Conn = c
				return slow
			}})
			if pr.cliErr != nil || pr.srvErr != nil {
				t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
			}
			cli, srv := pr.cli, pr.srv

			const readers = 8
			srvResults := make(chan endResult, readers)
			var srvWG sync.WaitGroup
			srvWG.Add(1)
			go func() {
				defer srvWG.Done()
				for {
					in, err := srv.Accept(context.Background())
					if err != nil {
						return
					}
					st, err := in.Accept()
					if err != nil {
						continue
					}
					switch in.Target() {
					case "read":
						srvWG.Add(1)
						go func() {
							defer srvWG.Done()
							_, err := st.Read(make([]byte, 64))
							srvResults <- endResult{op: "server read", err: err}
						}()
					case "buffered":
						_, _ = st.Write([]byte("buffered"))
					}
					// "sink", "closed": hold the stream, neither read
					// nor close.
				}
			}()
			open := func(target string) *Stream {
				t.Helper()
				st, err := cli.Open(openCtx(t), target)
				if err != nil {
					t.Fatalf("open %s: %v", target, err)
				}
				return st
			}

			results := make(chan endResult, readers+2)
			early := func() bool {
				select {
				case <-slow.released:
					return false
				default:
					return true
				}
			}
			for i := range readers {
				st := open("read")
				if i%2 == 0 {
					go func() {
						_, err := st.Read(make([]byte, 64))
						results <- endResult{op: "read", err: err, early: early()}
					}()
				} else {
					go func() {
						err := st.WaitRead()
						results <- endResult{op: "wait read", err: err, early: early()}
					}()
				}
			}
			// A Write blocked on the peer's window: the server never reads.
			sink := open("sink")
			go func() {
				_, err := sink.Write(make([]byte, 4*DefaultStreamWindow))
				results <- endResult{op: "write", err: err, early: early()}
			}()
			// Data received but not read yet is still read first.
			buffered := open("buffered")
			if err := buffered.WaitRead(); err != nil {
				t.Fatal(err)
			}
			go func() {
				<-cli.Done()
				b, err := io.ReadAll(buffered)
				results <- endResult{op: "read buffered", data: string(b), err: err, early: early()}
			}()
			// A stream closed here and not by the peer: its data is
			// drained on a session goroutine, which must not spin either.
			if err := open("closed").Close(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // let everything block

			cpu0, wall0 := cpuTime(), time.Now()
			tc.end(cli, srv)
			var got []endResult
			timeout := time.After(10 * time.Second)
			for len(got) < readers+2 {
				select {
				case r := <-results:
					got = append(got, r)
				case <-timeout:
					t.Fatalf("%d of %d blocked client stream operations did not return within 10 s of the session end", readers+2-len(got), readers+2)
				}
			}
			_ = cli.Close() // waits for the delayed connection close and the rest
			cpu, wall := cpuTime()-cpu0, time.Since(wall0)
			t.Logf("session end took %v, CPU %v", wall.Round(time.Millisecond), cpu.Round(time.Millisecond))

			for _, r := range got {
				if !errors.Is(r.err, ErrSessionClosed) || errors.Is(r.err, os.ErrDeadlineExceeded) || tc.cause != nil && !errors.Is(r.err, tc.cause) {
					t.Errorf("%s: %v, want an error wrapping ErrSessionClosed (%v)", r.op, r.err, tc.cause)
				}
				if tc.slow && !r.early {
					t.Errorf("%s returned only once yamux closed its streams, %v after the session ended", r.op, closeDelay)
				}
				if r.op == "read buffered" && r.data != "buffered" {
					t.Errorf("read %q before the session end error, want %q", r.data, "buffered")
				}
			}
			// Spinning goroutines use all the CPU they get for the whole
			// delay; a quiet close uses a small fraction of one core.
			if tc.slow && cpu > wall/2 {
				t.Errorf("the process used %v of CPU in the %v the session took to end: something spins", cpu, wall)
			}

			_ = srv.Close()
			srvWG.Wait()
			close(srvResults)
			for r := range srvResults {
				if !errors.Is(r.err, ErrSessionClosed) {
					t.Errorf("%s: %v, want an error wrapping ErrSessionClosed", r.op, r.err)
				}
			}
		})
	}
}

// TestViolationAfterFIN: one record from the peer carries its FIN for a
// stream and then a protocol violation (a server-opened stream). The FIN
// still ends that stream cleanly (io.EOF), at once: yamux gets the whole
// frames before the violation, so the stream's reader does not wait for a
// FIN the stream table had already counted — the stream had left the
// table, and with it the set of streams woken when the session ends.
func TestViolationAfterFIN(t *testing.T) {
	leakCheck(t)
	slow := &slowCloseConn{released: make(chan struct{}), delay: time.Second}
	// No keepalive on the server: this test writes on its connection
	// directly, which only yamux's frame writers do otherwise.
	pr := dialPair(t, sharedDomain(t), pairOpts{srv: &Config{KeepAliveInterval: -1}, wrapCli: func(c net.Conn) net.Conn {
		slow.Conn = c
		return slow
	}})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	cli, srv := pr.cli, pr.srv
	st, sst := streamPair(t, cli, srv)
	if err := st.CloseWrite(); err != nil { // the client's FIN
		t.Fatal(err)
	}
	// A write the test waits for: everything yamux wrote so far happens
	// before the frames written below.
	if _, err := sst.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	res := make(chan endResult, 1)
	go func() {
		_, err := st.Read(make([]byte, 8))
		early := true
		select {
		case <-slow.released:
			early = false
		default:
		}
		res <- endResult{op: "read", err: err, early: early}
	}()
	time.Sleep(50 * time.Millisecond) // let the Read block

	var frames [2 * yHeaderLen]byte
	fin, syn := frames[:yHeaderLen], frames[yHeaderLen:]
	fin[1] = yTypeWindowUpdate
	binary.BigEndian.PutUint16(fin[2:4], yFlagFIN)
	binary.BigEndian.PutUint32(fin[4:8], st.StreamID())
	syn[1] = yTypeWindowUpdate
	binary.BigEndian.PutUint16(syn[2:4], yFlagSYN)
	binary.BigEndian.PutUint32(syn[4:8], 2) // even: opened by the server
	// Both frames in one Write go out in one record.
	if _, err := srv.pc.Write(frames[:]); err != nil {
		t.Fatal(err)
	}

	select {
	case r := <-res:
		if r.err != io.EOF {
			t.Errorf("Read after the peer's FIN: %v, want io.EOF", r.err)
		}
		if !r.early {
			t.Errorf("Read returned only once yamux closed its streams, %v after the session ended", slow.delay)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10 s after the peer's FIN")
	}
	select {
	case <-cli.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client session survived a server-opened stream")
	}
	if err := cli.Err(); !errors.Is(err, ErrProtocol) {
		t.Errorf("client Err = %v, want ErrProtocol", err)
	}
}

// TestBufferedWhileFilling: a peer may pack the end of one data frame and
// the start of the next frame of the same stream into one record. While
// yamux reads the second frame's body it holds the stream's receive lock
// and waits for the record reader, which tells the stream about the first
// frame: a reader notified then must not Read on that goroutine
// (Buffered says 0), or it waits for itself. Once the second frame is in,
// the notification's inline Read gets both.
func TestBufferedWhileFilling(t *testing.T) {
	cli, srv := sessionPair(t, &Config{KeepAliveInterval: -1}, &Config{KeepAliveInterval: -1})
	st, _ := streamPair(t, cli, srv)

	var mu sync.Mutex
	var got []byte
	done := make(chan struct{})
	const lenA, lenB = 10, 20000
	st.NotifyReadable(func() { // on the client's receive goroutine
		n := st.Buffered()
		if n == 0 {
			return
		}
		b := make([]byte, n)
		m, err := st.Read(b) // returns at once: n bytes are buffered
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Errorf("inline Read: %v", err)
		}
		got = append(got, b[:m]...)
		if len(got) == lenA+lenB {
			close(done)
		}
	})

	frame := func(n int, fill byte) []byte {
		f := make([]byte, yHeaderLen+n)
		f[1] = yTypeData
		binary.BigEndian.PutUint32(f[4:8], st.StreamID())
		binary.BigEndian.PutUint32(f[8:12], uint32(n))
		for i := range n {
			f[yHeaderLen+i] = fill
		}
		return f
	}
	a, b := frame(lenA, 'a'), frame(lenB, 'b')
	// Frame A whole and the start of B in one Write: one record (the
	// server's own yamux never packs two frames into a record).
	if _, err := srv.pc.Write(append(a, b[:yHeaderLen+100]...)); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.pc.Write(b[yHeaderLen+100:]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's data did not arrive: its reader waits for itself?")
	}
	want := append(bytes.Repeat([]byte{'a'}, lenA), bytes.Repeat([]byte{'b'}, lenB)...)
	mu.Lock()
	defer mu.Unlock()
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not A then B", len(got))
	}
}
