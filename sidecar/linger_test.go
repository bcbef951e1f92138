package sidecar

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// TestServerOverloaded: past --max-handshakes a connection is answered
// with the overloaded Alert and a clean end (its Msg1 read, not reset),
// counted, and the client sidecar gets through once a slot is free.
func TestServerOverloaded(t *testing.T) {
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.MaxHandshakes = 1 })
	addr := p.srv.Addr()
	hold, err := net.Dial("tcp", addr) // takes the one slot: the server waits for its Msg1
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	waitFor(t, 5*time.Second, "the held handshake", func() bool { return p.srv.inflight.Load() == 1 })

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

	// The client sidecar is refused too while the slot is held, then gets
	// through once it is free.
	if err := echoOnce(p.clientListen, []byte("busy")); err == nil {
		t.Fatal("a session was set up past --max-handshakes")
	}
	if v := counter(t, p.cli.m.Handshakes.WithLabelValues("overloaded")); v < 1 {
		t.Errorf("client handshakes{result=overloaded} = %v, want ≥ 1", v)
	}
	hold.Close()
	waitFor(t, 5*time.Second, "the slot freed", func() bool { return p.srv.inflight.Load() == 0 })
	waitFor(t, 15*time.Second, "a session after the overload", func() bool { return echoOnce(p.clientListen, []byte("free")) == nil })
}
