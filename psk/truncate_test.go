package psk

import (
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
	cs, ss := streamPair(t, cli, srv)
	if err := cs.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(ss); err != nil { // the client's FIN
		t.Fatal(err)
	}
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
