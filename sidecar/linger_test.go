package sidecar

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// counter reads a counter's value.
func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestCloseAfterAlert: after refusing a handshake the server's answer must
// reach the client followed by a clean end, although the client (as a
// pipelined one does) is still sending: with a plain close the kernel
// resets the connection instead, which on a real network can overtake the
// answer. Both ways are run, to show the check can fail.
func TestCloseAfterAlert(t *testing.T) {
	alert := []byte{0x00, 0x02, 0x7f, 0x01}
	for _, tc := range []struct {
		name      string
		close     func(net.Conn)
		wantReset bool
	}{
		{"closeAfterAlert", func(c net.Conn) { closeAfterAlert(c, alertLingerTime) }, false},
		{"plain close", func(c net.Conn) { c.Close() }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			closed := make(chan time.Duration, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					closed <- -1
					return
				}
				// The client's pipelined bytes arrive while the server
				// decides, and stay unread.
				if err := waitUnread(c, 600); err != nil {
					t.Error(err)
				}
				_, _ = c.Write(alert)
				t0 := time.Now()
				tc.close(c)
				closed <- time.Since(t0)
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			// Msg3's pipelined ClientHello, sent before the server answers.
			if _, err := c.Write(make([]byte, 600)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(alert))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, alert) {
				t.Fatalf("alert: %x, %v", got, err)
			}
			time.Sleep(20 * time.Millisecond)
			n, err := c.Read(got)
			reset := errors.Is(err, syscall.ECONNRESET)
			if n != 0 || (err != io.EOF && !reset) || reset != tc.wantReset {
				t.Fatalf("after the alert: %d bytes, %v (want reset: %v)", n, err, tc.wantReset)
			}
			c.Close()
			if d := <-closed; d < 0 || d > alertLingerTime/2 {
				t.Fatalf("the server's close took %v: it should end when the client closes", d)
			}
		})
	}
}

// waitUnread waits until n bytes are waiting to be read on c, and leaves
// them there (MSG_PEEK).
func waitUnread(c net.Conn, n int) error {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, n)
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		k, _, err := syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != nil && err != syscall.EAGAIN {
			perr = err
			return true
		}
		return k >= n // else wait for more
	})
	if err == nil {
		err = perr
	}
	return err
}

// TestServerOverloaded: a message that arrives while every
// --max-handshakes slot is doing pairing work is answered with the
// overloaded Alert and a clean end (the message read, not reset), counted,
// and the client sidecar gets through once a slot is free. (The test takes
// the one slot itself: a real handshake holds it only for its
// milliseconds of pairing work.)
func TestServerOverloaded(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxHandshakes = 1 })
	addr := p.srv.Addr()
	p.srv.hs <- struct{}{} // the one slot, busy
	freed := false
	free := func() {
		if !freed {
			<-p.srv.hs
			freed = true
		}
	}
	defer free()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte{0x00, 0x40, 0x01}, make([]byte, 0x3f)...)); err != nil { // a Msg1-sized frame
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte{0x00, 0x02, 0x7f, 0x04}) {
		t.Fatalf("answer past --max-handshakes: %x, %v; want the overloaded Alert", got, err)
	}
	time.Sleep(20 * time.Millisecond)
	if n, err := c.Read(got); n != 0 || err != io.EOF {
		t.Fatalf("after the Alert: %d bytes, %v; want a clean end", n, err)
	}
	if v := counter(t, p.srv.m.Handshakes.WithLabelValues("overloaded")); v != 1 {
		t.Errorf("handshakes{result=overloaded} = %v, want 1", v)
	}

	// The client sidecar is refused too while the slot is busy, then gets
	// through once it is free.
	if err := echoOnce(p.clientListen, []byte("busy")); err == nil {
		t.Fatal("a session was set up past --max-handshakes")
	}
	if v := counter(t, p.cli.m.Handshakes.WithLabelValues("overloaded")); v < 1 {
		t.Errorf("client handshakes{result=overloaded} = %v, want ≥ 1", v)
	}
	if n := len(logLines(t, p.sLog, "handshake refused: overloaded")); n < 1 || n > 2 {
		t.Errorf("%d \"overloaded\" log lines for 2+ refusals within a second, want 1 (2 if a second passed)", n)
	}
	free()
	waitFor(t, 15*time.Second, "a session after the overload", func() bool { return echoOnce(p.clientListen, []byte("free")) == nil })
}

// TestSlowPeersHoldNoSlot: peers that connect and send nothing, send a
// byte at a time, or send a Msg1 and never their Msg3 (a slowloris needs no
// credentials for any of these) hold no --max-handshakes slot while the
// server waits for them: with one slot and all of them connected, a real
// client gets through; they are counted in handshakes_in_flight, and end
// at --handshake-timeout.
func TestSlowPeersHoldNoSlot(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) {
		s.MaxHandshakes, s.HandshakeTO = 1, 6*time.Second
	})
	addr := p.srv.Addr()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for range 4 {
		dial() // silent
	}
	msg1 := (&mpinkex.Msg1{Layers: mpinkex.LayerDTLS, ClientID: "spiffe://attacker.example/x", UPrime: pairing.G1Generator(), R: pairing.G1Generator()}).Marshal()
	frame := append([]byte{byte(len(msg1) >> 8), byte(len(msg1))}, msg1...)
	stalled := dial() // Msg1, then no Msg3
	if _, err := stalled.Write(frame); err != nil {
		t.Fatal(err)
	}
	dribble := dial() // one byte now and then
	if _, err := dribble.Write(frame[:1]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "6 handshakes in flight", func() bool { return p.srv.inflight.Load() == 6 })
	_ = stalled.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 3)
	if _, err := io.ReadFull(stalled, hdr); err != nil || hdr[2] != 0x02 {
		t.Fatalf("the stalled peer's Msg2: %x, %v", hdr, err)
	}
	if err := echoOnce(p.clientListen, []byte("through")); err != nil {
		t.Fatalf("a real client while slow peers wait (one slot): %v", err)
	}
	if _, err := dribble.Write(frame[1:2]); err != nil {
		t.Fatal(err)
	}
	if v := counter(t, p.srv.m.Handshakes.WithLabelValues("overloaded")); v != 0 {
		t.Errorf("handshakes{result=overloaded} = %v, want 0", v)
	}
	waitFor(t, 15*time.Second, "the slow peers timed out", func() bool { return p.srv.inflight.Load() == 0 })
	if v := counter(t, p.srv.m.Handshakes.WithLabelValues("timeout")); v != 6 {
		t.Errorf("handshakes{result=timeout} = %v, want 6", v)
	}
}

// TestBurstRefusedOnlyAtMsg1: with one slot and a burst of concurrent
// handshakes, refusals ('overloaded') come only in place of Msg2: a
// handshake whose Msg1 the server has worked on waits for a slot for its
// Msg3 instead of being refused in place of Msg4 (Msg1's work thrown
// away), and at least one handshake completes.
func TestBurstRefusedOnlyAtMsg1(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxHandshakes = 1 })
	ks := mustOpenKS(t, p.cdir, RoleClient)
	k := ks.Current()
	const n = 40
	var wg sync.WaitGroup
	var ok, atMsg2, atMsg4, other atomic.Int32
	for range n {
		wg.Go(func() {
			c, err := net.Dial("tcp", p.srv.Addr())
			if err != nil {
				other.Add(1)
				return
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: k.Client, Permits: k.Permits, ServerID: fxServerID, EpochLen: k.EpochLen})
			var me *mpinkex.Error
			var ae *mpinkex.AlertError
			switch {
			case err == nil:
				res.Zeroize()
				ok.Add(1)
			case errors.As(err, &me) && errors.As(err, &ae) && ae.Code == mpinkex.AlertOverloaded && me.Step == "read Msg2":
				atMsg2.Add(1)
			case errors.As(err, &me) && errors.As(err, &ae) && ae.Code == mpinkex.AlertOverloaded && me.Step == "read Msg4":
				atMsg4.Add(1)
			default:
				t.Logf("handshake: %v", err)
				other.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d handshakes, one slot: %d done, %d refused in place of Msg2, %d in place of Msg4, %d otherwise", n, ok.Load(), atMsg2.Load(), atMsg4.Load(), other.Load())
	if atMsg4.Load() != 0 || other.Load() != 0 || ok.Load() == 0 {
		t.Errorf("want refusals only in place of Msg2 and at least one handshake done")
	}
}

// slotGrabConn takes the server's one handshake slot just before the
// client's second frame (Msg3) goes out.
type slotGrabConn struct {
	net.Conn
	grab   func()
	writes int
}

func (c *slotGrabConn) Write(b []byte) (int, error) {
	if c.writes++; c.writes == 2 {
		c.grab()
	}
	return c.Conn.Write(b)
}

// TestMsg3SlotWaitTimesOutOverloaded: a Msg3 that waits for a slot until
// the handshake's deadline is answered with the overloaded Alert in place
// of Msg4 and counted as overloaded (it was a silent EOF, counted as a
// timeout of a frame that had arrived whole).
func TestMsg3SlotWaitTimesOutOverloaded(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxHandshakes, s.HandshakeTO = 1, time.Second })
	k := mustOpenKS(t, p.cdir, RoleClient).Current()
	raw, err := net.Dial("tcp", p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	grabbed := false
	c := &slotGrabConn{Conn: raw, grab: func() { p.srv.hs <- struct{}{}; grabbed = true }}
	defer func() {
		if grabbed {
			<-p.srv.hs
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: k.Client, Permits: k.Permits, ServerID: fxServerID, EpochLen: k.EpochLen})
	var me *mpinkex.Error
	var ae *mpinkex.AlertError
	if !errors.As(err, &me) || me.Step != "read Msg4" || !errors.As(err, &ae) || ae.Code != mpinkex.AlertOverloaded {
		t.Fatalf("client: %v; want the overloaded Alert in place of Msg4", err)
	}
	waitFor(t, 5*time.Second, "the refusal counted", func() bool {
		return counter(t, p.srv.m.Handshakes.WithLabelValues("overloaded")) == 1
	})
	if v := counter(t, p.srv.m.Handshakes.WithLabelValues("timeout")); v != 0 {
		t.Errorf("handshakes{result=timeout} = %v, want 0", v)
	}
}

// TestStreamRefusalsRateLimited: a client that opens streams to a target
// the server refuses, in a loop, gets at most warnBurst log lines a second
// per session; the next line says how many were held back, and the
// counter counts every one.
func TestStreamRefusalsRateLimited(t *testing.T) {
	p := startPair(t, closedAddr(t), nil)
	const n = 60
	for range n {
		if err := echoOnce(p.clientListen, []byte("x")); err == nil {
			t.Fatal("went through to a closed backend")
		}
	}
	waitFor(t, 5*time.Second, "every refusal counted", func() bool {
		return counter(t, p.srv.m.StreamsTotal.WithLabelValues("unreachable")) == n
	})
	if lines := logLines(t, p.sLog, "backend unreachable"); len(lines) >= n || len(lines) < warnBurst {
		t.Errorf("%d \"backend unreachable\" lines for %d refusals, want from %d to fewer than %d", len(lines), n, warnBurst, n)
	}
	// The client's line per refused app connection likewise.
	if lines := logLines(t, p.cLog, "connection refused: no secure stream"); len(lines) >= n || len(lines) < warnBurst {
		t.Errorf("client: %d refusal lines for %d refused app connections, want from %d to fewer than %d", len(lines), n, warnBurst, n)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := echoOnce(p.clientListen, []byte("x")); err == nil {
		t.Fatal("went through")
	}
	for side, lb := range map[string]*logBuf{"server": p.sLog, "client": p.cLog} {
		msg := map[string]string{"server": "backend unreachable", "client": "connection refused: no secure stream"}[side]
		waitFor(t, 5*time.Second, side+": the line after the pause says how many were held back", func() bool {
			l := logLines(t, lb, msg)
			return l[len(l)-1]["also_refused"] != nil
		})
	}
}

// TestHandshakesPerIP: one source address holds at most
// --max-handshakes-per-ip connections in their handshake; the next is
// answered overloaded at once, so that silent connections from one
// address cannot hold every --max-conns slot, while a client from another
// address gets in. A count ends with its handshake.
func TestHandshakesPerIP(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxHandshakesPerIP = 4 })
	from := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	var held []net.Conn
	for range 4 {
		c, err := from.Dial("tcp", p.srv.Addr())
		if err != nil {
			t.Skipf("cannot dial from 127.0.0.2: %v", err)
		}
		defer c.Close()
		held = append(held, c)
	}
	waitFor(t, 5*time.Second, "4 handshakes under way", func() bool { return p.srv.inflight.Load() == 4 })
	c, err := from.Dial("tcp", p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte{0x00, 0x02, 0x7f, 0x04}) {
		t.Fatalf("a fifth from 127.0.0.2: %x, %v; want the overloaded Alert at once", got, err)
	}
	if err := echoOnce(p.clientListen, []byte("from 127.0.0.1")); err != nil {
		t.Fatalf("a client from another address: %v", err)
	}
	for _, h := range held {
		h.Close()
	}
	waitFor(t, 5*time.Second, "the held handshakes ended", func() bool { return p.srv.inflight.Load() == 0 })
	again, err := from.Dial("tcp", p.srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	_ = again.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := again.Read(got); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("from 127.0.0.2 once its handshakes ended: %d bytes, %v; want a handshake waiting for Msg1", n, err)
	}
}
