package psk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/milagro-sc/milagro/mpinkex"
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

// trackResult is what the inbound frame tracker made of a byte stream.
type trackResult struct {
	frames   []string // headers of the frames completed, in order
	accepted int      // bytes handed on before the rejected header
	err      string
}

// trackPieces feeds data to a fresh tracker (frame parser and stream
// table) in pieces of the given sizes, as DTLS records would cut it.
func trackPieces(t *testing.T, data []byte, sizes func(i int) int, client bool) trackResult {
	tab := newStreamTable(client, 0, nil)
	var p frameParser
	var r trackResult
	p.complete = func(h *[yHeaderLen]byte) { r.frames = append(r.frames, fmt.Sprintf("%x", h[:])) }
	off := 0
	for i := 0; off < len(data); i++ {
		b := data[off:min(off+sizes(i), len(data))]
		ok, err := p.feed(b, func(h *[yHeaderLen]byte) error {
			_, err := tab.inbound(h)
			return err
		})
		if ok < 0 || ok > len(b) {
			t.Fatalf("feed of %d bytes accepted %d", len(b), ok)
		}
		if err != nil {
			r.accepted, r.err = off+ok, err.Error()
			return r
		}
		off += len(b)
	}
	r.accepted = off
	return r
}

// FuzzFrameTracker: the tracker follows the peer's yamux frames in
// whatever pieces the records cut them into. For any bytes and any cut it
// does not panic, completes the same frames and rejects the same header
// with the same error, and never hands yamux the whole of a rejected
// header.
func FuzzFrameTracker(f *testing.F) {
	hdr := func(typ byte, flags uint16, id, n uint32) []byte {
		h := make([]byte, yHeaderLen)
		h[1] = typ
		binary.BigEndian.PutUint16(h[2:4], flags)
		binary.BigEndian.PutUint32(h[4:8], id)
		binary.BigEndian.PutUint32(h[8:12], n)
		return h
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	f.Add(cat(hdr(yTypeWindowUpdate, yFlagSYN, 1, 0), hdr(yTypeData, 0, 1, 3), []byte("abc")), uint16(5), false)
	f.Add(cat(hdr(yTypeData, yFlagSYN, 1, 2), []byte("hi"), hdr(yTypeData, yFlagFIN, 1, 0)), uint16(1), false)
	f.Add(cat(hdr(yTypeData, yFlagFIN, 1, 0), hdr(yTypeWindowUpdate, yFlagSYN, 2, 0)), uint16(3), true)
	f.Add(cat(hdr(yTypeWindowUpdate, yFlagSYN, 4, 0)), uint16(0), false)
	f.Add(cat(hdr(2, 0, 0, 7), hdr(yTypeData, yFlagRST, 9, 0)), uint16(11), false)
	f.Fuzz(func(t *testing.T, data []byte, cut uint16, client bool) {
		whole := trackPieces(t, data, func(int) int { return len(data) }, client)
		cutUp := trackPieces(t, data, func(i int) int { return (int(cut)+7*i)%17 + 1 }, client)
		if cutUp.err != whole.err || !slices.Equal(cutUp.frames, whole.frames) {
			t.Fatalf("in pieces: %d frames, error %q; whole: %d frames, error %q", len(cutUp.frames), cutUp.err, len(whole.frames), whole.err)
		}
		// Pieces before the one that completes the rejected header may
		// have handed on its first bytes (harmless: yamux acts only on
		// whole headers), never all of it.
		if cutUp.accepted >= whole.accepted+yHeaderLen && whole.err != "" {
			t.Fatalf("in pieces %d bytes handed on; the rejected header spans %d to %d", cutUp.accepted, whole.accepted, whole.accepted+yHeaderLen)
		}
	})
}

// FuzzVerdictThenRecords: a pipelined client's stream starts with the
// server's verdict frame, read through the record reader's buffer; the
// verdict and the records after it come out the same whatever the
// segmentation, and an accepted verdict leaves exactly the bytes after
// its frame to the records.
func FuzzVerdictThenRecords(f *testing.F) {
	msg4 := []byte{0, 2, mpinkex.TypeMsg4, 0}
	recs := bytes.Join(handshakeRecords(), nil)
	f.Add(append(slices.Clone(msg4), recs...))
	f.Add([]byte{0, 2, mpinkex.TypeAlert, 1})
	f.Add(append([]byte{0, 2, mpinkex.TypeMsg4}, recs[:20]...))
	f.Fuzz(func(t *testing.T, data []byte) {
		run := func(r io.Reader) (verdict error, recs [][]byte, end error) {
			rr := newRecordReader(r)
			if verdict = mpinkex.ReadVerdict(&rr.br); verdict != nil {
				return verdict, nil, nil
			}
			buf := make([]byte, maxRecordLen)
			for range len(data) + 1 {
				n, err := rr.readRecord(buf)
				if err != nil {
					return nil, recs, err
				}
				recs = append(recs, bytes.Clone(buf[:n]))
			}
			t.Fatal("more records than input bytes")
			return
		}
		v1, r1, e1 := run(bytes.NewReader(data))
		v2, r2, e2 := run(iotest.OneByteReader(bytes.NewReader(data)))
		if (v1 == nil) != (v2 == nil) || (e1 == nil) != (e2 == nil) || len(r1) != len(r2) {
			t.Fatalf("segmentation changed the result: %v/%v, %v/%v, %d/%d records", v1, v2, e1, e2, len(r1), len(r2))
		}
		accepted := len(data) >= 4 && bytes.Equal(data[:4], msg4)
		if (v1 == nil) != accepted {
			t.Fatalf("verdict %v for %x", v1, data[:min(len(data), 4)])
		}
		if !accepted {
			return
		}
		off := 4
		for i, rec := range r1 {
			if !bytes.Equal(rec, r2[i]) || !bytes.Equal(rec, data[off:off+len(rec)]) {
				t.Fatalf("record %d is not the input at offset %d", i, off)
			}
			off += len(rec)
		}
		if e1 == io.EOF && off != len(data) {
			t.Fatalf("io.EOF at offset %d of %d", off, len(data))
		}
	})
}
