package sidecar

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestHandshakeTimeouts: --handshake-timeout bounds a handshake on both
// sides. A server ends a connection that never speaks, and counts it; a
// client facing a server that accepts but never answers gives up on the
// session, closes the application's connection and counts it.
func TestHandshakeTimeouts(t *testing.T) {
	const hto = 300 * time.Millisecond
	t.Run("server, silent client", func(t *testing.T) {
		p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) { s.HandshakeTO = hto })
		c, err := net.Dial("tcp", p.srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		n, took, err := readTimed(c, 10*time.Second)
		if n != 0 || err != io.EOF {
			t.Fatalf("silent client: %d bytes, %v; want the server to close", n, err)
		}
		if took < hto*8/10 || took > 10*hto {
			t.Fatalf("closed after %v, want about %v", took, hto)
		}
		waitFor(t, 5*time.Second, "the timeout counted", func() bool {
			return counter(t, p.srv.m.Handshakes.WithLabelValues("timeout")) == 1
		})
	})
	t.Run("client, mute server", func(t *testing.T) {
		mute, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer mute.Close()
		go func() {
			for {
				c, err := mute.Accept()
				if err != nil {
					return
				}
				go func() { _, _ = io.Copy(io.Discard, c); c.Close() }() // reads Msg1, answers nothing
			}
		}()
		f := sharedKeys(t)
		cfg := DefaultClientConfig()
		cfg.Listen, cfg.Target, cfg.Keys, cfg.VerifyID = "127.0.0.1:0", mute.Addr().String(), f.clientDir(t, fxClientID), fxServerID
		cfg.HandshakeTO = hto
		cli, err := NewClient(cfg, bufLog(t, "client"))
		if err != nil {
			t.Fatal(err)
		}
		run(t, cli.Run, nil)
		app, err := net.Dial("tcp", waitAddr(t, cli.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		n, took, err := readTimed(app, 20*time.Second)
		if n != 0 || err == nil {
			t.Fatalf("application connection: %d bytes, %v; want it closed", n, err)
		}
		if took < hto*8/10 || took > cfg.ConnectTimeout+10*hto {
			t.Fatalf("closed after %v, want about %v", took, hto)
		}
		if v := counter(t, cli.m.Handshakes.WithLabelValues("timeout")); v < 1 {
			t.Errorf("client handshakes{result=timeout} = %v, want ≥ 1", v)
		}
	})
}

// readTimed is one Read of c (bounded by max) and how long it took.
func readTimed(c net.Conn, max time.Duration) (int, time.Duration, error) {
	_ = c.SetReadDeadline(time.Now().Add(max))
	start := time.Now()
	n, err := c.Read(make([]byte, 16))
	return n, time.Since(start), err
}
