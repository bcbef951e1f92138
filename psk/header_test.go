package psk

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestStreamHeaderCodec(t *testing.T) {
	long := strings.Repeat("t", 255)
	valid := []struct {
		name   string
		wire   []byte
		kind   Kind
		target string
	}{
		{"default", []byte{1, 0, 0}, KindDefault, ""},
		{"named", append([]byte{1, 1, 7}, "db:5432"...), KindNamed, "db:5432"},
		{"one byte", []byte{1, 1, 1, 'x'}, KindNamed, "x"},
		{"255 bytes", append([]byte{1, 1, 255}, long...), KindNamed, long},
		{"binary target", []byte{1, 1, 3, 0, 0xff, '\n'}, KindNamed, "\x00\xff\n"},
	}
	for _, tc := range valid {
		t.Run("valid/"+tc.name, func(t *testing.T) {
			enc, err := appendStreamHeader(nil, tc.target)
			if err != nil || !bytes.Equal(enc, tc.wire) {
				t.Fatalf("encode: %x, %v; want %x", enc, err, tc.wire)
			}
			kind, target, err := parseStreamHeader(tc.wire)
			if err != nil || kind != tc.kind || target != tc.target {
				t.Fatalf("parse: %v %q %v", kind, target, err)
			}
			// Reading takes exactly the header, even byte by byte, and
			// leaves what follows.
			r := bytes.NewReader(append(bytes.Clone(tc.wire), "data"...))
			kind, target, err = readStreamHeader(iotest.OneByteReader(r))
			if err != nil || kind != tc.kind || target != tc.target || r.Len() != 4 {
				t.Fatalf("read: %v %q %v, %d left", kind, target, err, r.Len())
			}
		})
	}

	malformed := []struct {
		name string
		wire []byte
		// readOK: readStreamHeader stops at the header and does not see
		// the fault (trailing bytes belong to the stream).
		readOK bool
	}{
		{"empty", nil, false},
		{"one byte", []byte{1}, false},
		{"two bytes", []byte{1, 0}, false},
		{"version 0", []byte{0, 0, 0}, false},
		{"version 2", []byte{2, 0, 0}, false},
		{"version 0xff", []byte{0xff, 1, 1, 'x'}, false},
		{"kind 2", []byte{1, 2, 0}, false},
		{"kind 0xff", []byte{1, 0xff, 1, 'x'}, false},
		{"default with target", []byte{1, 0, 1, 'x'}, false},
		{"default with length only", []byte{1, 0, 5}, false},
		{"named empty", []byte{1, 1, 0}, false},
		{"named truncated", []byte{1, 1, 5, 'a', 'b'}, false},
		{"named length only", []byte{1, 1, 255}, false},
		{"trailing byte", []byte{1, 0, 0, 0}, true},
		{"named trailing", []byte{1, 1, 1, 'x', 'y'}, true},
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), false},
		{"TLS ClientHello", []byte{0x16, 0x03, 0x01, 0x02, 0x00}, false},
	}
	for _, tc := range malformed {
		t.Run("malformed/"+tc.name, func(t *testing.T) {
			if _, _, err := parseStreamHeader(tc.wire); !errors.Is(err, ErrBadStreamHeader) {
				t.Errorf("parse: %v, want ErrBadStreamHeader", err)
			}
			_, _, err := readStreamHeader(bytes.NewReader(tc.wire))
			switch {
			case tc.readOK && err != nil:
				t.Errorf("read: %v", err)
			case !tc.readOK && !errors.Is(err, ErrBadStreamHeader):
				t.Errorf("read: %v, want ErrBadStreamHeader", err)
			}
		})
	}

	if _, err := appendStreamHeader(nil, long+"x"); !errors.Is(err, ErrBadStreamHeader) {
		t.Errorf("256-byte target: %v", err)
	}
	// A truncated header is also io.ErrUnexpectedEOF; another read error
	// passes through.
	if _, _, err := readStreamHeader(bytes.NewReader([]byte{1, 1, 3, 'a'})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v", err)
	}
	boom := errors.New("boom")
	if _, _, err := readStreamHeader(iotest.ErrReader(boom)); !errors.Is(err, boom) || errors.Is(err, ErrBadStreamHeader) {
		t.Errorf("read error: %v", err)
	}
	for _, s := range []Status{StatusOK, StatusRefused, StatusUnreachable, 9} {
		if s.String() == "" {
			t.Error("empty status name")
		}
	}
}
