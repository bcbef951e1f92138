package psk

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/pion/dtls/v2/pkg/protocol/alert"
)

// TestCloseNotifyIsEOF: close_notify ends the peer's records with io.EOF.
func TestCloseNotifyIsEOF(t *testing.T) {
	ca, sa := takenOverPair(t)
	if err := ca.write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	if err := ca.writeAlert(alert.Warning, alert.CloseNotify); err != nil {
		t.Fatal(err)
	}
	_ = ca.rc.Conn.Close()
	if p, err := sa.next(); err != nil || string(p) != "data" {
		t.Fatalf("%q %v", p, err)
	}
	if _, err := sa.next(); err != io.EOF {
		t.Fatalf("after close_notify: %v, want io.EOF", err)
	}
}

// TestTruncationIsNotCloseNotify: a TCP FIN at a record boundary without
// close_notify (peer crash, or an on-path FIN) must not read as the clean
// end a close_notify gives: it is ErrTruncated (io.ErrUnexpectedEOF).
func TestTruncationIsNotCloseNotify(t *testing.T) {
	ca, sa := takenOverPair(t)
	if err := ca.write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	_ = ca.rc.Conn.Close() // no close_notify
	if p, err := sa.next(); err != nil || string(p) != "data" {
		t.Fatalf("%q %v", p, err)
	}
	if _, err := sa.next(); !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("connection closed without close_notify reads as %v, want ErrTruncated", err)
	}
}

// TestCloseDuringWriteSendsCloseNotify: plainConn.Close while a Write is
// between beginBatch and endBatch (its records still in the batch) sends
// them and close_notify before it closes the TCP connection.
func TestCloseDuringWriteSendsCloseNotify(t *testing.T) {
	ca, sa := takenOverPair(t)
	pc := newPlainConn(ca, ca.rc, newStreamTable(true, 0, nil), func(error) {})
	ca.rc.beginBatch() // a Write under way (plainConn.Write)
	_ = ca.write([]byte("frame"))
	_ = pc.Close()
	_ = ca.rc.endBatch()
	var err error
	for err == nil {
		_, err = sa.next()
	}
	if sa.rc.rr.err != nil {
		t.Fatalf("peer read %v: the connection ended without the close_notify Close sent (reader: %v)", err, sa.rc.rr.err)
	}
}

// TestCloseTimeoutResetReadsAsReset: when this side's close timeout resets
// a half-closed stream whose peer went silent, both sides read
// ErrStreamReset (this side read "session closed" of a live session).
func TestCloseTimeoutResetReadsAsReset(t *testing.T) {
	cfg := &Config{StreamCloseTimeout: 300 * time.Millisecond}
	cli, srv := sessionPair(t, cfg, cfg)
	cs, ss := halfClosedStreams(t, cli, srv)
	cs.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cs.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
		t.Errorf("client read after its close timeout: %v, want ErrStreamReset", err)
	}
	ss.SetWriteDeadline(time.Now().Add(5 * time.Second))
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for err == nil && time.Now().Before(deadline) {
		_, err = ss.Write([]byte("x"))
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(err, ErrStreamReset) {
		t.Errorf("server write after the client's close timeout: %v, want ErrStreamReset", err)
	}
	if cli.IsClosed() || srv.IsClosed() {
		t.Error("a stream's reset closed its session")
	}
}

// TestNoCloseTimeout: with StreamCloseTimeout negative a stream
// half-closed here outlives any silence of the peer (an answer after a
// long computation arrives), while a stream Closed here, whose reader is
// gone, is reset once the peer has kept its side open for
// ClosedStreamTimeout.
func TestNoCloseTimeout(t *testing.T) {
	defer func(d time.Duration) { closedStreamTimeout = d }(closedStreamTimeout)
	closedStreamTimeout = 300 * time.Millisecond
	cfg := &Config{StreamCloseTimeout: -1}
	cli, srv := sessionPair(t, cfg, cfg)

	cs, ss := halfClosedStreams(t, cli, srv)
	time.Sleep(4 * closedStreamTimeout) // silence, longer than any bound here
	if _, err := ss.Write([]byte("late answer")); err != nil {
		t.Fatalf("server write after a silence: %v", err)
	}
	ss.Close()
	cs.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(cs); err != nil || string(b) != "late answer" {
		t.Errorf("half-closed client read %q, %v; want the late answer and EOF", b, err)
	}

	cs, ss = streamPair(t, cli, srv)
	start := time.Now()
	cs.Close() // the server never closes its side
	ss.SetWriteDeadline(time.Now().Add(5 * time.Second))
	var err error
	for err == nil && time.Since(start) < 5*time.Second {
		_, err = ss.Write([]byte("x")) // discarded at the client
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(err, ErrStreamReset) {
		t.Errorf("server write to a stream the client closed: %v after %v, want ErrStreamReset after about %v", err, time.Since(start), closedStreamTimeout)
	}
	if cli.IsClosed() || srv.IsClosed() {
		t.Error("a stream's reset closed its session")
	}
}

// TestResetTimerNotRearmedWhenGone: Reject on a stream whose client has
// already closed it (its Open gave up) finds the stream gone after the
// Close: the reset timer stays stopped, not armed again for OpenTimeout
// (it would hold the stream in memory that long for nothing).
func TestResetTimerNotRearmedWhenGone(t *testing.T) {
	cfg := &Config{StreamCloseTimeout: -1}
	cli, srv := sessionPair(t, cfg, cfg)
	inc := make(chan *IncomingStream, 1)
	go func() {
		if in, err := srv.Accept(context.Background()); err == nil {
			inc <- in
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := cli.Open(ctx, ""); err == nil {
		t.Fatal("Open succeeded without an answer")
	}
	in := <-inc
	waitFor(t, "the client's FIN", func() bool {
		srv.tab.mu.Lock()
		defer srv.tab.mu.Unlock()
		return in.st.tr.finIn
	})
	_ = in.Reject(StatusRefused)
	if srv.NumStreams() != 0 {
		t.Fatalf("%d server streams after Reject of a stream the client closed", srv.NumStreams())
	}
	in.st.mu.Lock()
	armed := in.st.resetT != nil && in.st.resetT.Stop()
	in.st.mu.Unlock()
	if armed {
		t.Error("the reset timer was armed again after the stream left the table")
	}
}

// halfClosedStreams opens a stream whose client end has half-closed it,
// once the server end has read the FIN.
func halfClosedStreams(t *testing.T, cli, srv *Session) (cs, ss *Stream) {
	t.Helper()
	cs, ss = streamPair(t, cli, srv)
	if err := cs.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(ss); err != nil { // the client's FIN
		t.Fatal(err)
	}
	return cs, ss
}
