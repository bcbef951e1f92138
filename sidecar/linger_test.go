package sidecar

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

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
		{"closeAfterAlert", closeAfterAlert, false},
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
				time.Sleep(30 * time.Millisecond)
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
