package psk

import (
	"errors"
	"io"
	"testing"

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
