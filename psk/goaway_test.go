package psk

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/psk/internal/yamux"
)

// holdConn delivers what it reads only once release is closed (reads
// before that still take the bytes off the socket, then wait).
type holdConn struct {
	net.Conn
	held    chan struct{} // closed by the test: hold from now on
	release chan struct{}
}

func (c *holdConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	select {
	case <-c.held:
		<-c.release
	default:
	}
	return n, err
}

// TestOpenCrossesGoAway: a stream whose SYN crosses the server's GoAway
// is reset by the server's yamux before any status. Open reports that
// reset as the session refusing streams (ErrSessionClosed, "server is
// draining"), which proxy.Pool takes as "try another session", not as a
// failed connection; an Open after the GoAway has arrived fails the same
// way without sending anything.
func TestOpenCrossesGoAway(t *testing.T) {
	leakCheck(t)
	hc := &holdConn{held: make(chan struct{}), release: make(chan struct{})}
	pr := dialPair(t, sharedDomain(t), pairOpts{wrapCli: func(c net.Conn) net.Conn { hc.Conn = c; return hc }})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	cli, srv := pr.cli, pr.srv
	serveEcho(t, srv)
	echoRoundTrip(t, cli, 10)

	// From now on the client's reads wait (the receive loop sits in Read,
	// so the next bytes it takes, the GoAway, are held).
	close(hc.held)
	if err := srv.GoAway(); err != nil {
		t.Fatal(err)
	}
	opened := openAsync(t, cli)
	// The SYN reaches the server (which resets it) while the client has
	// not yet seen the GoAway; give it the time to get there.
	time.Sleep(100 * time.Millisecond)
	close(hc.release)
	err := <-opened
	if !errors.Is(err, ErrSessionClosed) || !errors.Is(err, yamux.ErrRemoteGoAway) {
		t.Fatalf("Open crossing the GoAway = %v, want ErrSessionClosed with ErrRemoteGoAway", err)
	}
	if _, err := cli.Open(openCtx(t), ""); !errors.Is(err, ErrSessionClosed) || !errors.Is(err, yamux.ErrRemoteGoAway) {
		t.Fatalf("Open after the GoAway = %v, want ErrSessionClosed with ErrRemoteGoAway", err)
	}
	if cli.IsClosed() {
		t.Error("a GoAway closed the client session")
	}
}
