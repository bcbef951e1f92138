package psk

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"testing/iotest"
	"time"
)

// mkRecord builds a DTLS 1.2 record header and body.
func mkRecord(typ byte, epoch uint16, seq uint64, body []byte) []byte {
	r := []byte{typ, 0xfe, 0xfd, byte(epoch >> 8), byte(epoch),
		byte(seq >> 40), byte(seq >> 32), byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq),
		byte(len(body) >> 8), byte(len(body))}
	return append(r, body...)
}

func filled(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// handshakeRecords is the record sequence one side sends: plaintext
// handshake (one record as large as pion's buffer takes),
// ChangeCipherSpec, Finished, then alerts and application data of the
// largest and the smallest size.
func handshakeRecords() [][]byte {
	return [][]byte{
		mkRecord(ctHandshake, 0, 0, filled(60, 1)),
		mkRecord(ctHandshake, 0, 1, filled(maxRecordBody, 2)),
		mkRecord(ctChangeCipherSpec, 0, 2, []byte{1}),
		mkRecord(ctHandshake, 1, 0, filled(40, 3)),
		mkRecord(ctApplicationData, 1, 1, filled(100, 4)),
		mkRecord(ctAlert, 1, 2, filled(26, 5)),
		mkRecord(ctApplicationData, 1, 3, filled(MaxRecordPlaintext+gcmOverhead, 6)),
		mkRecord(ctApplicationData, 1, 4, filled(gcmOverhead, 7)),
	}
}

// countingReader counts Read calls.
type countingReader struct {
	r     io.Reader
	reads int
}

func (c *countingReader) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

func readAll(t *testing.T, rr *recordReader) ([][]byte, error) {
	t.Helper()
	var out [][]byte
	buf := make([]byte, maxRecordLen)
	for {
		n, err := rr.readRecord(buf)
		if err != nil {
			return out, err
		}
		out = append(out, bytes.Clone(buf[:n]))
	}
}

func TestRecordReaderSegmentation(t *testing.T) {
	recs := handshakeRecords()
	stream := bytes.Join(recs, nil)
	for name, r := range map[string]io.Reader{
		"one segment":    bytes.NewReader(stream),
		"byte at a time": iotest.OneByteReader(bytes.NewReader(stream)),
		"half records":   iotest.HalfReader(bytes.NewReader(stream)),
		"data with EOF":  iotest.DataErrReader(bytes.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			cr := &countingReader{r: r}
			got, err := readAll(t, newRecordReader(cr))
			if err != io.EOF {
				t.Fatalf("end: %v, want io.EOF", err)
			}
			if len(got) != len(recs) {
				t.Fatalf("%d records, want %d", len(got), len(recs))
			}
			for i := range recs {
				if !bytes.Equal(got[i], recs[i]) {
					t.Fatalf("record %d differs", i)
				}
			}
			// One segment of 25 KB: a read fills the 16 KiB first buffer,
			// which grows; one more read takes the rest, a last one sees EOF.
			if name == "one segment" && cr.reads > 3 {
				t.Errorf("%d reads of the connection for one segment", cr.reads)
			}
		})
	}
}

func TestRecordReaderErrors(t *testing.T) {
	recs := handshakeRecords()
	preCCS := bytes.Join(recs[:3], nil) // up to the ChangeCipherSpec
	pre := bytes.Join(recs[:4], nil)    // up to Finished
	hdr := func(b []byte) []byte { return b }
	for _, tc := range []struct {
		name   string
		stream []byte
		want   error
	}{
		{"oversize", mkRecord(ctHandshake, 0, 0, filled(maxRecordBody+1, 0)), ErrBadRecord},
		{"length 65535", hdr([]byte{ctHandshake, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}), ErrBadRecord},
		{"empty record", mkRecord(ctHandshake, 0, 0, nil), ErrBadRecord},
		{"content type 24 (heartbeat)", mkRecord(24, 0, 0, filled(3, 0)), ErrBadRecord},
		{"content type 0", mkRecord(0, 0, 0, filled(3, 0)), ErrBadRecord},
		{"content type 255", mkRecord(255, 0, 0, filled(3, 0)), ErrBadRecord},
		{"DTLS 1.0", append([]byte{ctHandshake, 0xfe, 0xff}, mkRecord(ctHandshake, 0, 0, filled(3, 0))[3:]...), ErrBadRecord},
		{"TLS 1.2", append([]byte{ctHandshake, 3, 3}, mkRecord(ctHandshake, 0, 0, filled(3, 0))[3:]...), ErrBadRecord},
		{"EOF in header", mkRecord(ctHandshake, 0, 0, filled(3, 0))[:7], io.ErrUnexpectedEOF},
		{"EOF in body", mkRecord(ctHandshake, 0, 0, filled(300, 0))[:200], io.ErrUnexpectedEOF},
		{"EOF after header", mkRecord(ctHandshake, 0, 0, filled(300, 0))[:13], io.ErrUnexpectedEOF},
		{"sequence gap", bytes.Join([][]byte{mkRecord(ctHandshake, 0, 0, filled(3, 0)), mkRecord(ctHandshake, 0, 2, filled(3, 0))}, nil), ErrBadRecord},
		{"replay", bytes.Join([][]byte{mkRecord(ctHandshake, 0, 0, filled(3, 0)), mkRecord(ctHandshake, 0, 0, filled(3, 0))}, nil), ErrBadRecord},
		{"first sequence number 1", mkRecord(ctHandshake, 0, 1, filled(3, 0)), ErrBadRecord},
		{"plaintext application data", mkRecord(ctApplicationData, 0, 0, filled(30, 0)), ErrBadRecord},
		{"epoch 1 before ChangeCipherSpec", mkRecord(ctHandshake, 1, 0, filled(40, 0)), ErrBadRecord},
		{"epoch 2", mkRecord(ctHandshake, 2, 0, filled(40, 0)), ErrBadRecord},
		{"long ChangeCipherSpec", mkRecord(ctChangeCipherSpec, 0, 0, []byte{1, 1}), ErrBadRecord},
		{"long plaintext alert", mkRecord(ctAlert, 0, 0, []byte{2, 40, 0}), ErrBadRecord},
		{"second ChangeCipherSpec", append(bytes.Clone(preCCS), mkRecord(ctChangeCipherSpec, 0, 3, []byte{1})...), ErrBadRecord},
		{"application data before Finished", append(bytes.Clone(preCCS), mkRecord(ctApplicationData, 1, 0, filled(40, 0))...), ErrBadRecord},
		{"plaintext after ChangeCipherSpec", append(bytes.Clone(pre), mkRecord(ctAlert, 0, 3, []byte{1, 0})...), ErrBadRecord},
		{"handshake after Finished", append(bytes.Clone(pre), mkRecord(ctHandshake, 1, 1, filled(40, 0))...), ErrBadRecord},
		{"application data over 8000 bytes", append(bytes.Clone(pre), mkRecord(ctApplicationData, 1, 1, filled(MaxRecordPlaintext+gcmOverhead+1, 0))...), ErrBadRecord},
		{"encrypted record too short", append(bytes.Clone(pre), mkRecord(ctApplicationData, 1, 1, filled(gcmOverhead-1, 0))...), ErrBadRecord},
		{"ChangeCipherSpec in epoch 1", append(bytes.Clone(pre), mkRecord(ctChangeCipherSpec, 1, 1, []byte{1})...), ErrBadRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rr := newRecordReader(bytes.NewReader(tc.stream))
			_, err := readAll(t, rr)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if _, err2 := rr.readRecord(make([]byte, maxRecordLen)); err2 != err {
				t.Errorf("error not sticky: then %v", err2)
			}
		})
	}
	// Sanity of the fixture: the prefix of the valid sequence parses.
	if _, err := readAll(t, newRecordReader(bytes.NewReader(pre))); err != io.EOF {
		t.Fatalf("fixture: %v", err)
	}
}

func TestRecordReaderShortBuffer(t *testing.T) {
	rr := newRecordReader(bytes.NewReader(mkRecord(ctHandshake, 0, 0, filled(100, 0))))
	if _, err := rr.readRecord(make([]byte, 50)); !errors.Is(err, io.ErrShortBuffer) {
		t.Fatalf("got %v", err)
	}
}

// timeoutOnce returns part of its data, then one timeout, then the rest.
type timeoutOnce struct {
	data []byte
	cut  int
	done bool
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func (r *timeoutOnce) Read(p []byte) (int, error) {
	if !r.done && r.cut == 0 {
		r.done = true
		return 0, timeoutErr{}
	}
	lim := len(r.data)
	if !r.done {
		lim = r.cut
	}
	if lim == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data[:lim])
	r.data = r.data[n:]
	if !r.done {
		r.cut -= n
	}
	return n, nil
}

func TestRecordReaderTimeoutResumes(t *testing.T) {
	rec := mkRecord(ctHandshake, 0, 0, filled(500, 9))
	for _, cut := range []int{5, 13, 200} {
		rr := newRecordReader(&timeoutOnce{data: bytes.Clone(rec), cut: cut})
		buf := make([]byte, maxRecordLen)
		if _, err := rr.readRecord(buf); !isTimeout(err) {
			t.Fatalf("cut %d: first read %v, want a timeout", cut, err)
		}
		n, err := rr.readRecord(buf)
		if err != nil || !bytes.Equal(buf[:n], rec) {
			t.Fatalf("cut %d: resumed read %d bytes, %v", cut, n, err)
		}
	}
}

func TestRecordConnFailWakesRead(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	rc := newRecordConn(a, 0)
	got := make(chan error, 1)
	go func() {
		_, err := rc.Read(make([]byte, maxRecordLen))
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	rc.fail(ErrRecordRejected)
	select {
	case err := <-got:
		if !errors.Is(err, ErrRecordRejected) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("blocked Read not woken by fail")
	}
	if _, err := rc.Read(make([]byte, maxRecordLen)); !errors.Is(err, ErrRecordRejected) {
		t.Fatalf("not sticky: %v", err)
	}
}

func TestRecordConnTracksWrites(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	rc := newRecordConn(a, time.Second)
	recs := handshakeRecords()
	if _, err := rc.Write(bytes.Join(recs[:3], nil)); err != nil {
		t.Fatal(err)
	}
	if rc.outNext[0] != 3 || rc.outEpoch != 0 || rc.recordsOut.Load() != 3 || rc.writesOut.Load() != 1 {
		t.Fatalf("after epoch 0: next %v epoch %d records %d", rc.outNext, rc.outEpoch, rc.recordsOut.Load())
	}
	if err := rc.sendPlainAlert(20); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Write(recs[3]); err != nil {
		t.Fatal(err)
	}
	if err := rc.sendPlainAlert(20); err == nil {
		t.Fatal("plaintext alert allowed after the cipher change")
	}
}

// TestRecordConnHandover: with handover, pion reads the records up to the
// peer's Finished and no more: its next Read waits, without consuming the
// application data behind it, until the hand-over, pion's abort (a past
// read deadline), Close or a failure ends it; after detach pion's writes go
// nowhere and its Close leaves the TCP connection open for appRecords.
func TestRecordConnHandover(t *testing.T) {
	recs := handshakeRecords()
	for _, tc := range []struct {
		name    string
		end     func(rc *recordConn)
		wantErr error
	}{
		{"detach", (*recordConn).detach, net.ErrClosed},
		{"past read deadline", func(rc *recordConn) { _ = rc.SetReadDeadline(time.Unix(1, 0)) }, net.ErrClosed},
		{"close", func(rc *recordConn) { _ = rc.Close() }, net.ErrClosed},
		{"failure", func(rc *recordConn) { rc.fail(ErrRecordRejected) }, ErrRecordRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			go func() { _, _ = b.Write(bytes.Join(recs[:5], nil)) }() // up to the first application data
			rc := newRecordConn(a, 0)
			rc.handover = true
			buf := make([]byte, maxRecordLen)
			for i := range 4 { // handshake, handshake, ChangeCipherSpec, Finished
				if n, err := rc.Read(buf); err != nil || !bytes.Equal(buf[:n], recs[i]) {
					t.Fatalf("record %d: %d bytes, %v", i, n, err)
				}
			}
			got := make(chan error, 1)
			go func() {
				_, err := rc.Read(buf)
				got <- err
			}()
			select {
			case err := <-got:
				t.Fatalf("pion's Read after the Finished returned %v, want it to wait", err)
			case <-time.After(50 * time.Millisecond):
			}
			tc.end(rc)
			select {
			case err := <-got:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("pion's Read returned %v, want %v", err, tc.wantErr)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("pion's Read still waiting")
			}
			if tc.name != "detach" {
				return
			}
			// The application data is still there for appRecords.
			if rec, err := rc.readOwn(maxRecordLen); err != nil || !bytes.Equal(rec, recs[4]) {
				t.Fatalf("readOwn after the hand-over: %d bytes, %v", len(rec), err)
			}
			// pion's goodbye is dropped; its Close keeps the connection.
			if n, err := rc.Write(recs[5]); err != nil || n != len(recs[5]) || rc.recordsOut.Load() != 0 {
				t.Fatalf("pion's Write after detach: %d, %v, %d records out", n, err, rc.recordsOut.Load())
			}
			if err := rc.Close(); err != nil {
				t.Fatal(err)
			}
			go func() { _, _ = io.Copy(io.Discard, b) }()
			if _, err := rc.write(recs[5]); err != nil {
				t.Fatalf("appRecords' write after pion's Close: %v", err)
			}
		})
	}
}

// TestInBufferGrows: the record reader's buffer stays at its first size
// while reads do not fill it, and grows to readBufferSize once one does,
// keeping what it holds.
func TestInBufferGrows(t *testing.T) {
	recs := handshakeRecords()
	small := bytes.Join(recs[:1], nil)
	rr := newRecordReader(bytes.NewReader(small))
	buf := make([]byte, maxRecordLen)
	if _, err := rr.readRecord(buf); err != nil {
		t.Fatal(err)
	}
	if len(rr.br.buf) != firstBufferSize {
		t.Fatalf("buffer of %d bytes after a short read, want %d", len(rr.br.buf), firstBufferSize)
	}
	stream := bytes.Join(recs, nil)
	rr = newRecordReader(bytes.NewReader(stream))
	got, err := readAll(t, rr)
	if err != io.EOF || len(got) != len(recs) {
		t.Fatalf("%d records, %v", len(got), err)
	}
	if len(rr.br.buf) != readBufferSize {
		t.Fatalf("buffer of %d bytes after a full read, want %d", len(rr.br.buf), readBufferSize)
	}
}

// write writes whole records as appRecords did before it sealed into the
// batch buffer: tests use it to send records of their own making.
func (c *recordConn) write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeRecordsLocked(b)
}
