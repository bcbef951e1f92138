package psk

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pion/dtls/v2/pkg/protocol"
	"github.com/pion/dtls/v2/pkg/protocol/alert"
)

// streamConn is a net.Conn whose reads come from r and whose writes are
// dropped: the fuzzer's end of a session's TCP connection.
type streamConn struct {
	net.Conn // nil: only the methods below are called
	r        io.Reader
}

func (c streamConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c streamConn) Write(p []byte) (int, error) { return len(p), nil }

func (streamConn) SetReadDeadline(time.Time) error  { return nil }
func (streamConn) SetWriteDeadline(time.Time) error { return nil }
func (streamConn) Close() error                     { return nil }

// fuzzRecords is appRecords on input as the stream after the handshake
// (the peer's Finished was epoch 1, sequence 0), with fixed keys; peer
// seals records that authenticate under them.
func fuzzRecords(tb testing.TB, input io.Reader) (ours, peer *appRecords) {
	k1, k2 := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 16)
	iv1, iv2 := []byte{1, 1, 1, 1}, []byte{2, 2, 2, 2}
	rc := newRecordConn(streamConn{r: input}, 0)
	rc.rr.ccs, rc.rr.enc, rc.rr.next = true, true, [2]uint64{3, 1}
	ours, err := newAppRecords(rc, k1, iv1, k2, iv2, 1)
	if err != nil {
		tb.Fatal(err)
	}
	peer, err = newAppRecords(newRecordConn(streamConn{r: bytes.NewReader(nil)}, 0), k2, iv2, k1, iv1, 1)
	if err != nil {
		tb.Fatal(err)
	}
	return ours, peer
}

// FuzzAppRecords: on any byte stream after the handshake, appRecords
// returns only plaintext that authenticated (never more than came in), and
// ends with io.EOF (close_notify) or a typed, sticky error (ErrTruncated
// without one); it never panics.
func FuzzAppRecords(f *testing.F) {
	_, peer := fuzzRecords(f, nil)
	var seed bytes.Buffer
	for _, p := range [][]byte{[]byte("hello"), bytes.Repeat([]byte{7}, MaxRecordPlaintext), {1}} {
		seed.Write(sealWith(f, peer, protocol.ContentTypeApplicationData, p))
	}
	data := bytes.Clone(seed.Bytes())
	// The harness itself: the honest stream opens to what was sealed.
	check, _ := fuzzRecords(f, bytes.NewReader(data))
	for _, want := range []int{5, MaxRecordPlaintext, 1} {
		if p, err := check.next(); err != nil || len(p) != want {
			f.Fatalf("seed record: %d bytes, %v; want %d", len(p), err, want)
		}
	}
	if _, err := check.next(); !errors.Is(err, ErrTruncated) {
		f.Fatalf("after the seed records (no close_notify): %v, want ErrTruncated", err)
	}
	f.Add(data)
	f.Add(append(bytes.Clone(data), sealWith(f, peer, protocol.ContentTypeAlert, []byte{byte(alert.Warning), byte(alert.CloseNotify)})...))
	f.Add(append(bytes.Clone(data), sealWith(f, peer, protocol.ContentTypeAlert, []byte{byte(alert.Fatal), byte(alert.InternalError)})...))
	tampered := bytes.Clone(data)
	tampered[len(tampered)-1] ^= 0x80
	f.Add(tampered)
	f.Add(data[:len(data)-3])
	f.Fuzz(func(t *testing.T, in []byte) {
		ours, _ := fuzzRecords(t, bytes.NewReader(in))
		total := 0
		for range len(in) + 1 {
			p, err := ours.next()
			if err == nil {
				total += len(p)
				if total > len(in) {
					t.Fatalf("%d bytes of plaintext from %d bytes of input", total, len(in))
				}
				continue
			}
			var ae *AlertError
			switch {
			case err == io.EOF, errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrBadRecord),
				errors.Is(err, ErrRecordRejected), errors.As(err, &ae):
			default:
				t.Fatalf("untyped error %v", err)
			}
			if _, err2 := ours.next(); err2 != err {
				t.Fatalf("error not sticky: %v then %v", err, err2)
			}
			return
		}
		t.Fatal("more records than input bytes")
	})
}

// sealWith seals p as a's next record and returns it.
func sealWith(tb testing.TB, a *appRecords, typ protocol.ContentType, p []byte) []byte {
	tb.Helper()
	var out bytes.Buffer
	a.rc.Conn = &captureConn{streamConn: streamConn{r: bytes.NewReader(nil)}, out: &out}
	if err := a.seal(typ, p); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

type captureConn struct {
	streamConn
	out *bytes.Buffer
}

func (c *captureConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// FuzzSealedRecords reaches what follows decryption, which FuzzAppRecords
// cannot (a mutated record fails authentication): the input is a list of
// (type, length, payload) items, each sealed with the peer's key, and the
// stream of them must read as the rules say — application data in order
// (empty records skipped), a two-byte close_notify as io.EOF, any other
// two-byte alert as *AlertError, an alert of another length or a record of
// any other type as ErrBadRecord, and the end without close_notify as
// ErrTruncated.
func FuzzSealedRecords(f *testing.F) {
	types := []protocol.ContentType{protocol.ContentTypeApplicationData, protocol.ContentTypeAlert,
		protocol.ContentTypeHandshake, protocol.ContentTypeChangeCipherSpec, 99}
	f.Add([]byte{0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 1, 2, byte(alert.Warning), byte(alert.CloseNotify)})
	f.Add([]byte{0, 1, 'x', 1, 2, byte(alert.Fatal), byte(alert.InternalError)})
	f.Add([]byte{0, 3, 'a', 'b', 'c', 1, 3, 1, 0, 0})
	f.Add([]byte{2, 4, 20, 0, 0, 0})
	f.Add([]byte{3, 1, 1})
	f.Add([]byte{4, 2, 1, 2})
	f.Add([]byte{0, 0xff, 0x80})
	f.Fuzz(func(t *testing.T, in []byte) {
		_, peer := fuzzRecords(t, nil)
		var stream bytes.Buffer
		type item struct {
			typ protocol.ContentType
			p   []byte
		}
		var items []item
		for i := 0; i+2 <= len(in) && len(items) < 64; {
			typ, n := types[int(in[i])%len(types)], int(in[i+1])
			i += 2
			p := in[i:min(i+n, len(in))]
			i += len(p)
			if in[i-len(p)-2]&0x80 != 0 && typ == protocol.ContentTypeApplicationData {
				// A large record: the payload repeated up to the limit.
				p = bytes.Repeat(append([]byte{0}, p...), MaxRecordPlaintext/(len(p)+1))
			}
			stream.Write(sealWith(t, peer, typ, p))
			items = append(items, item{typ, p})
		}
		ours, _ := fuzzRecords(t, bytes.NewReader(stream.Bytes()))
		for _, it := range items {
			if it.typ == protocol.ContentTypeApplicationData && len(it.p) == 0 {
				continue
			}
			got, err := ours.next()
			var ae *AlertError
			switch {
			case it.typ == protocol.ContentTypeApplicationData:
				if err != nil || !bytes.Equal(got, it.p) {
					t.Fatalf("application data of %d bytes: %d bytes, %v", len(it.p), len(got), err)
				}
				continue
			case it.typ == protocol.ContentTypeAlert && len(it.p) == 2 && alert.Description(it.p[1]) == alert.CloseNotify:
				if err != io.EOF {
					t.Fatalf("close_notify: %v, want io.EOF", err)
				}
			case it.typ == protocol.ContentTypeAlert && len(it.p) == 2:
				if !errors.As(err, &ae) || ae.Level != it.p[0] || ae.Description != it.p[1] {
					t.Fatalf("alert %v: %v, want *AlertError", it.p, err)
				}
			default:
				if !errors.Is(err, ErrBadRecord) {
					t.Fatalf("%v record of %d bytes: %v, want ErrBadRecord", it.typ, len(it.p), err)
				}
			}
			if _, err2 := ours.next(); err2 != err {
				t.Fatalf("error not sticky: %v then %v", err, err2)
			}
			return
		}
		if _, err := ours.next(); !errors.Is(err, ErrTruncated) {
			t.Fatalf("end without close_notify: %v, want ErrTruncated", err)
		}
	})
}
