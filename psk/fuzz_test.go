package psk

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzRecordReader: on any byte stream the reader hands out whole records
// that are exact consecutive slices of the input, each at most 8192 bytes
// with a valid header, the same whatever the segmentation, and ends with
// io.EOF exactly at a record boundary or with a sticky error.
func FuzzRecordReader(f *testing.F) {
	recs := handshakeRecords()
	f.Add(bytes.Join(recs, nil))
	f.Add(bytes.Join(recs[:4], nil))
	f.Add(mkRecord(ctHandshake, 0, 0, filled(maxRecordBody+1, 0)))
	f.Add(mkRecord(24, 0, 0, []byte{1}))
	f.Add(mkRecord(ctHandshake, 0, 0, filled(20, 0))[:17])
	f.Fuzz(func(t *testing.T, data []byte) {
		type step struct {
			rec []byte
			err error
		}
		run := func(r io.Reader) []step {
			rr := newRecordReader(r)
			buf := make([]byte, maxRecordLen)
			var out []step
			for range len(data) + 1 {
				n, err := rr.readRecord(buf)
				out = append(out, step{bytes.Clone(buf[:n]), err})
				if err != nil {
					if _, err2 := rr.readRecord(buf); err2 != err {
						t.Fatalf("error not sticky: %v then %v", err, err2)
					}
					return out
				}
			}
			t.Fatal("more records than input bytes")
			return nil
		}
		whole := run(bytes.NewReader(data))
		off := 0
		for _, s := range whole {
			if s.err != nil {
				switch {
				case s.err == io.EOF:
					if off != len(data) {
						t.Fatalf("io.EOF at offset %d of %d", off, len(data))
					}
				case errors.Is(s.err, io.ErrUnexpectedEOF), errors.Is(s.err, ErrBadRecord):
				default:
					t.Fatalf("unexpected error %v", s.err)
				}
				break
			}
			n := len(s.rec)
			if n < recordHeaderLen || n > maxRecordLen || !bytes.Equal(s.rec, data[off:off+n]) {
				t.Fatalf("record of %d bytes at offset %d is not the input", n, off)
			}
			if _, err := parseRecordHeader(s.rec); err != nil {
				t.Fatalf("handed out a record with a bad header: %v", err)
			}
			off += n
		}
		bytewise := run(iotest.OneByteReader(bytes.NewReader(data)))
		if len(bytewise) != len(whole) {
			t.Fatalf("segmentation changed the result: %d vs %d steps", len(bytewise), len(whole))
		}
		for i := range whole {
			if !bytes.Equal(whole[i].rec, bytewise[i].rec) || (whole[i].err == nil) != (bytewise[i].err == nil) {
				t.Fatalf("step %d differs with byte-at-a-time reads", i)
			}
		}
	})
}

// FuzzStreamHeader: parse and read agree, accepted headers re-encode to the
// same bytes, and read never consumes more than the header.
func FuzzStreamHeader(f *testing.F) {
	f.Add([]byte{1, 0, 0})
	f.Add(append([]byte{1, 1, 7}, "db:5432"...))
	f.Add([]byte{1, 0, 1, 'x'})
	f.Add([]byte{1, 1, 0})
	f.Add([]byte{2, 0, 0})
	f.Add([]byte{1, 1, 5, 'a'})
	f.Fuzz(func(t *testing.T, data []byte) {
		kind, target, perr := parseStreamHeader(data)
		if perr == nil {
			enc, err := appendStreamHeader(nil, target)
			if err != nil || !bytes.Equal(enc, data) {
				t.Fatalf("accepted %x but re-encodes to %x (%v)", data, enc, err)
			}
			if (kind == KindDefault) != (target == "") {
				t.Fatalf("kind %v with target %q", kind, target)
			}
		} else if !errors.Is(perr, ErrBadStreamHeader) {
			t.Fatalf("parse error %v is not ErrBadStreamHeader", perr)
		}
		r := bytes.NewReader(data)
		rkind, rtarget, rerr := readStreamHeader(r)
		used := len(data) - r.Len()
		switch {
		case perr == nil && (rerr != nil || rkind != kind || rtarget != target || used != len(data)):
			t.Fatalf("parse accepts %x, read gives %v %q %v after %d bytes", data, rkind, rtarget, rerr, used)
		case rerr == nil:
			if k, tg, err := parseStreamHeader(data[:used]); err != nil || k != rkind || tg != rtarget {
				t.Fatalf("read accepts prefix %x that parse rejects: %v", data[:used], err)
			}
		case !errors.Is(rerr, ErrBadStreamHeader):
			t.Fatalf("read error %v is not ErrBadStreamHeader", rerr)
		}
	})
}
