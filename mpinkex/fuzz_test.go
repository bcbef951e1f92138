package mpinkex

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/: valid messages of every
// type (from the public vectors) and near misses.

// FuzzParseMessage: ParseMessage never panics, fails only with ErrDecode or
// ErrVersion, and whatever it accepts re-marshals to exactly its input (the
// encoding is canonical).
func FuzzParseMessage(f *testing.F) {
	f.Add([]byte{TypeMsg4, 0x00})
	f.Add([]byte{TypeAlert, byte(AlertOverloaded)})
	f.Add([]byte{TypeMsg1, Version})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			if m != nil {
				t.Fatalf("message and error: %T, %v", m, err)
			}
			if !errors.Is(err, ErrDecode) && !errors.Is(err, ErrVersion) {
				t.Fatalf("error %v is neither ErrDecode nor ErrVersion", err)
			}
			return
		}
		out := m.Marshal()
		if !bytes.Equal(out, b) {
			t.Fatalf("%T re-marshals differently:\n in  %x\n out %x", m, b, out)
		}
		if m2, err := ParseMessage(out); err != nil || !bytes.Equal(m2.Marshal(), out) {
			t.Fatalf("re-marshalled message does not parse back: %v", err)
		}
		if len(b) > MaxFrameSize {
			t.Fatalf("accepted a %d-byte message", len(b))
		}
	})
}

// FuzzReadFrame: ReadFrame never panics, reads exactly one frame and nothing
// after it, and fails only with io.EOF (empty stream) or ErrDecode.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0x00, 0x02, TypeMsg4, 0x00})
	f.Add([]byte{0x04, 0x01})
	f.Add([]byte{0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		msg, err := ReadFrame(r)
		if err != nil {
			if msg != nil {
				t.Fatal("message and error")
			}
			switch {
			case len(b) == 0:
				if !errors.Is(err, io.EOF) || errors.Is(err, ErrDecode) {
					t.Fatalf("empty stream: %v, want io.EOF", err)
				}
			case !errors.Is(err, ErrDecode):
				t.Fatalf("error %v does not wrap ErrDecode", err)
			}
			if len(b) >= 2 {
				n := int(binary.BigEndian.Uint16(b))
				if (n == 0 || n > MaxFrameSize) && r.Len() != len(b)-2 {
					t.Fatalf("read %d bytes past the header of a rejected frame", len(b)-2-r.Len())
				}
			}
			return
		}
		n := int(binary.BigEndian.Uint16(b))
		if n < 1 || n > MaxFrameSize || len(msg) != n || !bytes.Equal(msg, b[2:2+n]) {
			t.Fatalf("frame of %d bytes returned %d bytes", n, len(msg))
		}
		if r.Len() != len(b)-2-n {
			t.Fatalf("%d bytes left, want %d", r.Len(), len(b)-2-n)
		}
		var w bytes.Buffer
		if err := WriteFrame(&w, msg); err != nil || !bytes.Equal(w.Bytes(), b[:2+n]) {
			t.Fatalf("WriteFrame does not reproduce the frame: %v", err)
		}
	})
}

// FuzzServer feeds a real Server arbitrary bytes as the client's whole
// stream. It must never panic and never accept: without the client key and
// the server's fresh y, nothing authenticates. What it writes must be well
// formed: at most Msg2, then at most one Alert matching the returned error.
func FuzzServer(f *testing.F) {
	// The server holds every identity the vectors' Msg1 ask for, with fresh
	// keys (built once per fuzzing process): a vector Msg1 gets a Msg2, and
	// its Msg3 reaches the pairing check and fails there.
	d := newDomain(f, 3, "alice@example.com", "server.example.com")
	cfg := &ServerConfig{
		Keys:        []*ServerKey{d.key, d.serverKey(f, "api.example.com"), d.serverKey(f, "gateway.example.org")},
		Authorize:   allowAll,
		Now:         clock(fxNow),
		StepTimeout: 100 * time.Millisecond,
	}
	ctx := context.Background()
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &fxStream{Reader: bytes.NewReader(b)}
		res, err := Server(ctx, s, cfg)
		if err == nil {
			t.Fatalf("server accepted an arbitrary stream: client %q", res.ClientID)
		}
		if res != nil {
			t.Fatal("result returned with an error")
		}
		var e *Error
		if !errors.As(err, &e) || e.Role != "server" {
			t.Fatalf("error %v is not a server *Error", err)
		}
		var msgs []Message
		r := bytes.NewReader(s.out.Bytes())
		for r.Len() > 0 {
			raw, err := ReadFrame(r)
			if err != nil {
				t.Fatalf("server wrote a bad frame: %v", err)
			}
			m, err := ParseMessage(raw)
			if err != nil {
				t.Fatalf("server wrote a bad message: %v", err)
			}
			msgs = append(msgs, m)
		}
		var alert AlertCode
		for i, m := range msgs {
			switch v := m.(type) {
			case *Msg2:
				if i != 0 {
					t.Fatal("Msg2 not first")
				}
			case *Alert:
				if i != len(msgs)-1 {
					t.Fatal("alert not last")
				}
				alert = v.Code
			default:
				t.Fatalf("server wrote %T", m)
			}
		}
		if alert != e.Alert {
			t.Fatalf("wire alert %v, error says %v (%v)", alert, e.Alert, err)
		}
		if e.Alert != 0 && e.Alert != alertFor(e.Err) {
			t.Fatalf("alert %v for %v", e.Alert, e.Err)
		}
	})
}
