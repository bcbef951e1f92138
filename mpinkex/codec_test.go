package mpinkex

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/milagro-sc/milagro/pairing"
)

func TestMessageRoundTrip(t *testing.T) {
	m1, m2, m3 := sampleMsgs(t)
	long := strings.Repeat("é", 127) + "x" // 255 bytes of UTF-8
	cases := []struct {
		name string
		msg  Message
	}{
		{"Msg1/permit", m1},
		{"Msg1/no-permit", &Msg1{Layers: LayerDTLS, ClientID: "c", ServerID: "s", UPrime: m1.UPrime, R: m1.R}},
		{"Msg1/default-server", &Msg1{Layers: LayerDTLS, ClientID: "c", UPrime: m1.UPrime, R: m1.R}},
		{"Msg1/max-ids", &Msg1{Flags: FlagPermit, Layers: 0xff, ClientID: long, ServerID: long, Epoch: 1<<64 - 1, UPrime: m1.UPrime, R: m1.R}},
		{"Msg1/layers-0", &Msg1{Layers: 0, ClientID: "c", UPrime: m1.UPrime, R: m1.R}},
		{"Msg2", m2},
		{"Msg2/max-id", &Msg2{Layer: 0x80, ServerID: long, Y: m2.Y, W: m2.W}},
		{"Msg3", m3},
		{"Msg4", &Msg4{}},
		{"Alert/handshake_failure", &Alert{Code: AlertHandshakeFailure}},
		{"Alert/unsupported_version", &Alert{Code: AlertUnsupportedVersion}},
		{"Alert/decode_error", &Alert{Code: AlertDecodeError}},
		{"Alert/overloaded", &Alert{Code: AlertOverloaded}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := c.msg.Marshal()
			got, err := ParseMessage(raw)
			if err != nil {
				t.Fatalf("ParseMessage: %v", err)
			}
			if again := got.Marshal(); !bytes.Equal(again, raw) {
				t.Fatalf("re-marshal differs:\n got  %x\n want %x", again, raw)
			}
			switch want := c.msg.(type) {
			case *Msg1:
				g := got.(*Msg1)
				if g.Flags != want.Flags || g.Layers != want.Layers || g.ClientID != want.ClientID ||
					g.ServerID != want.ServerID || g.Epoch != want.Epoch || !g.UPrime.Equal(want.UPrime) || !g.R.Equal(want.R) {
					t.Errorf("Msg1 fields differ: %+v", g)
				}
			case *Msg2:
				g := got.(*Msg2)
				if g.Layer != want.Layer || g.ServerID != want.ServerID || !g.Y.Equal(want.Y) || !g.W.Equal(want.W) {
					t.Errorf("Msg2 fields differ: %+v", g)
				}
			case *Msg3:
				if !got.(*Msg3).V.Equal(want.V) {
					t.Errorf("Msg3 V differs")
				}
			case *Msg4:
				if _, ok := got.(*Msg4); !ok {
					t.Errorf("got %T", got)
				}
			case *Alert:
				if got.(*Alert).Code != want.Code {
					t.Errorf("alert code %v, want %v", got.(*Alert).Code, want.Code)
				}
			}
		})
	}
}

// TestMessageLayout pins the wire layout of §5 byte by byte.
func TestMessageLayout(t *testing.T) {
	m1, m2, m3 := sampleMsgs(t)
	raw1 := m1.Marshal()
	u, r := m1.UPrime.Bytes(), m1.R.Bytes()
	want1 := []byte{0x01, 0x01, 0x01, 0x01, 17}
	want1 = append(want1, "alice@example.com"...)
	want1 = append(want1, 18)
	want1 = append(want1, "server.example.com"...)
	want1 = binary.BigEndian.AppendUint64(want1, fxEpoch)
	want1 = append(append(want1, u[:]...), r[:]...)
	if !bytes.Equal(raw1, want1) {
		t.Errorf("Msg1:\n got  %x\n want %x", raw1, want1)
	}
	raw2 := m2.Marshal()
	y, w := m2.Y.Bytes(), m2.W.Bytes()
	want2 := append([]byte{0x02, 0x01, 0x01, 18}, "server.example.com"...)
	want2 = append(append(want2, y[:]...), w[:]...)
	if !bytes.Equal(raw2, want2) {
		t.Errorf("Msg2:\n got  %x\n want %x", raw2, want2)
	}
	v := m3.V.Bytes()
	if raw3 := m3.Marshal(); !bytes.Equal(raw3, append([]byte{0x03}, v[:]...)) {
		t.Errorf("Msg3: %x", raw3)
	}
	if raw4 := (&Msg4{}).Marshal(); !bytes.Equal(raw4, []byte{0x04, 0x00}) {
		t.Errorf("Msg4: %x", raw4)
	}
	if a := (&Alert{Code: AlertOverloaded}).Marshal(); !bytes.Equal(a, []byte{0x7f, 0x04}) {
		t.Errorf("Alert: %x", a)
	}
}

func TestMarshalPanicsOnLongID(t *testing.T) {
	long := strings.Repeat("a", 256)
	_, m2, m3 := sampleMsgs(t)
	for name, f := range map[string]func(){
		"Msg1 client_id": func() { (&Msg1{ClientID: long, UPrime: m3.V, R: m3.V}).Marshal() },
		"Msg1 server_id": func() { (&Msg1{ClientID: "c", ServerID: long, UPrime: m3.V, R: m3.V}).Marshal() },
		"Msg2 server_id": func() { (&Msg2{Layer: 1, ServerID: long, Y: m2.Y, W: m2.W}).Marshal() },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("Marshal accepted a 256-byte identity")
				}
			}()
			f()
		})
	}
}

type rejectCase struct {
	name string
	b    []byte
	want error // ErrDecode or ErrVersion
	also error // a further error the chain must hold, or nil
}

func parseRejectCases(t *testing.T) []rejectCase {
	m1, m2, m3 := sampleMsgs(t)
	raw1, raw2, raw3 := m1.Marshal(), m2.Marshal(), m3.Marshal()
	raw4 := (&Msg4{}).Marshal()
	rawA := (&Alert{Code: AlertDecodeError}).Marshal()
	withM1 := func(f func(m *Msg1)) []byte { m := *m1; f(&m); return m.Marshal() }
	withM2 := func(f func(m *Msg2)) []byte { m := *m2; f(&m); return m.Marshal() }

	cs := []rejectCase{
		{"empty", nil, ErrDecode, nil},
		{"empty-non-nil", []byte{}, ErrDecode, nil},
		{"too-long", append(bytes.Clone(raw3), make([]byte, MaxFrameSize)...), ErrDecode, nil},
	}
	for _, typ := range []byte{0x00, 0x05, 0x06, 0x7e, 0x80, 0xfe, 0xff} {
		cs = append(cs, rejectCase{"unknown-type-" + hexByte(typ), []byte{typ, 0x01, 0x00}, ErrDecode, nil})
	}
	// Every proper prefix of every message type.
	for _, m := range []struct {
		name string
		raw  []byte
	}{{"Msg1", raw1}, {"Msg2", raw2}, {"Msg3", raw3}, {"Msg4", raw4}, {"Alert", rawA}} {
		for i := 0; i < len(m.raw); i++ {
			cs = append(cs, rejectCase{m.name + "-truncated-" + itoa(i), bytes.Clone(m.raw[:i]), ErrDecode, nil})
		}
		cs = append(cs,
			rejectCase{m.name + "-trailing-zero", append(bytes.Clone(m.raw), 0), ErrDecode, nil},
			rejectCase{m.name + "-trailing-copy", append(bytes.Clone(m.raw), m.raw...), ErrDecode, nil})
	}
	// Versions.
	for _, v := range []byte{0x00, 0x02, 0x10, 0xff} {
		cs = append(cs,
			rejectCase{"Msg1-version-" + hexByte(v), splice(raw1, 1, []byte{v}), ErrVersion, nil},
			rejectCase{"Msg2-version-" + hexByte(v), splice(raw2, 1, []byte{v}), ErrVersion, nil})
	}
	// Msg1 fields.
	for _, f := range []byte{0x02, 0x03, 0x80, 0x81, 0xfe, 0xff} {
		cs = append(cs, rejectCase{"Msg1-reserved-flags-" + hexByte(f), withM1(func(m *Msg1) { m.Flags = f }), ErrDecode, nil})
	}
	cs = append(cs,
		rejectCase{"Msg1-epoch-without-permit", withM1(func(m *Msg1) { m.Flags = 0; m.Epoch = 1 }), ErrDecode, nil},
		rejectCase{"Msg1-max-epoch-without-permit", withM1(func(m *Msg1) { m.Flags = 0; m.Epoch = 1<<64 - 1 }), ErrDecode, nil},
		rejectCase{"Msg1-empty-client-id", withM1(func(m *Msg1) { m.ClientID = "" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-0xff", withM1(func(m *Msg1) { m.ClientID = "\xff" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-bad-continuation", withM1(func(m *Msg1) { m.ClientID = "caf\xc3(" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-surrogate", withM1(func(m *Msg1) { m.ClientID = "\xed\xa0\x80" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-overlong", withM1(func(m *Msg1) { m.ClientID = "\xc0\xaf" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-cut-rune", withM1(func(m *Msg1) { m.ClientID = "é"[:1] }), ErrDecode, nil},
		rejectCase{"Msg1-server-id-invalid-utf8", withM1(func(m *Msg1) { m.ServerID = "srv\xfe" }), ErrDecode, nil},
		rejectCase{"Msg1-client-id-length-past-end", splice(raw1, 4, []byte{0xff}), ErrDecode, nil},
	)
	// Msg2 fields.
	for _, l := range []byte{0x00, 0x03, 0x05, 0x81, 0xff} {
		cs = append(cs, rejectCase{"Msg2-layer-" + hexByte(l), splice(raw2, 2, []byte{l}), ErrDecode, nil})
	}
	cs = append(cs,
		rejectCase{"Msg2-empty-server-id", withM2(func(m *Msg2) { m.ServerID = "" }), ErrDecode, nil},
		rejectCase{"Msg2-server-id-invalid-utf8", withM2(func(m *Msg2) { m.ServerID = "\x80abc" }), ErrDecode, nil},
	)
	for _, s := range badScalars() {
		also := pairing.ErrEncoding
		if s.name == "y=0" {
			also = pairing.ErrZeroScalar
		}
		cs = append(cs, rejectCase{"Msg2-" + s.name, splice(raw2, msg2YOffset(raw2), s.b), ErrDecode, also})
	}
	// Msg4 and Alert.
	for _, s := range []byte{0x01, 0x02, 0x7f, 0xff} {
		cs = append(cs, rejectCase{"Msg4-status-" + hexByte(s), []byte{TypeMsg4, s}, ErrDecode, nil})
	}
	for _, c := range []byte{0x00, 0x05, 0x7f, 0x80, 0xff} {
		cs = append(cs, rejectCase{"Alert-code-" + hexByte(c), []byte{TypeAlert, c}, ErrDecode, nil})
	}
	// Every point position, every bad encoding.
	for _, bad := range badG1s(t) {
		cs = append(cs,
			rejectCase{"Msg1-U'-" + bad.name, splice(raw1, msg1UOffset(raw1), bad.b), ErrDecode, bad.want},
			rejectCase{"Msg1-R-" + bad.name, splice(raw1, msg1ROffset(raw1), bad.b), ErrDecode, bad.want},
			rejectCase{"Msg2-W-" + bad.name, splice(raw2, msg2WOffset(raw2), bad.b), ErrDecode, bad.want},
			rejectCase{"Msg3-V-" + bad.name, splice(raw3, msg3VOffset, bad.b), ErrDecode, bad.want})
	}
	return cs
}

func TestParseMessageRejects(t *testing.T) {
	for _, c := range parseRejectCases(t) {
		t.Run(c.name, func(t *testing.T) {
			m, err := ParseMessage(c.b)
			if err == nil {
				t.Fatalf("accepted %x as %T", c.b, m)
			}
			if m != nil {
				t.Errorf("returned a message with the error")
			}
			if !errors.Is(err, c.want) {
				t.Errorf("error %v, want %v", err, c.want)
			}
			if c.want == ErrVersion && errors.Is(err, ErrDecode) {
				t.Errorf("version error %v also claims ErrDecode", err)
			}
			if c.also != nil && !errors.Is(err, c.also) {
				t.Errorf("error %v does not wrap %v", err, c.also)
			}
		})
	}
}

// TestBadPointFixtures checks that each bad encoding fails for the reason
// its name gives, so that the rejection tests above test what they claim.
func TestBadPointFixtures(t *testing.T) {
	for _, bad := range badG1s(t) {
		t.Run(bad.name, func(t *testing.T) {
			if len(bad.b) != pairing.G1Size {
				t.Fatalf("%d bytes", len(bad.b))
			}
			_, err := pairing.DecodeG1(bad.b)
			if !errors.Is(err, bad.want) {
				t.Errorf("DecodeG1: %v, want %v", err, bad.want)
			}
		})
	}
}

func TestReadFrame(t *testing.T) {
	msg := []byte{TypeMsg4, 0x00}
	valid := frame(msg)
	cases := []struct {
		name     string
		in       []byte
		want     []byte // nil: an error is expected
		wantErr  error
		leftover int // bytes that must remain unread
	}{
		{"valid", valid, msg, nil, 0},
		{"valid-then-extra", append(bytes.Clone(valid), 0xde, 0xad, 0xbe), msg, nil, 3},
		{"two-frames", append(bytes.Clone(valid), valid...), msg, nil, len(valid)},
		{"max-size", frame(make([]byte, MaxFrameSize)), make([]byte, MaxFrameSize), nil, 0},
		{"min-size", frame([]byte{0x7f}), []byte{0x7f}, nil, 0},
		{"length-1025", append([]byte{0x04, 0x01}, make([]byte, 1025)...), nil, ErrDecode, 1025},
		{"length-65535", append([]byte{0xff, 0xff}, make([]byte, 100)...), nil, ErrDecode, 100},
		{"length-0", []byte{0x00, 0x00, 0x04, 0x00}, nil, ErrDecode, 2},
		{"header-1-byte", []byte{0x00}, nil, ErrDecode, 0},
		{"header-only", []byte{0x00, 0x02}, nil, ErrDecode, 0},
		{"body-truncated", valid[:3], nil, ErrDecode, 0},
		{"body-truncated-long", frame(make([]byte, 100))[:60], nil, ErrDecode, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mode := range []string{"whole", "one-byte"} {
				br := bytes.NewReader(c.in)
				var r io.Reader = br
				if mode == "one-byte" {
					r = iotest.OneByteReader(br)
				}
				got, err := ReadFrame(r)
				if c.want != nil {
					if err != nil || !bytes.Equal(got, c.want) {
						t.Errorf("%s: got %x, %v; want %x", mode, got, err, c.want)
					}
				} else if !errors.Is(err, c.wantErr) {
					t.Errorf("%s: error %v, want %v", mode, err, c.wantErr)
				}
				if br.Len() != c.leftover {
					t.Errorf("%s: %d bytes left unread, want %d", mode, br.Len(), c.leftover)
				}
			}
		})
	}
}

func TestReadFrameEOFAndIOErrors(t *testing.T) {
	// A clean end of stream before a frame is the peer closing, not a
	// malformed frame.
	if _, err := ReadFrame(bytes.NewReader(nil)); !errors.Is(err, io.EOF) || errors.Is(err, ErrDecode) {
		t.Errorf("empty stream: %v, want io.EOF and not ErrDecode", err)
	}
	boom := errors.New("boom")
	for name, r := range map[string]io.Reader{
		"header": iotest.ErrReader(boom),
		"body":   io.MultiReader(bytes.NewReader([]byte{0x00, 0x05, 0x01}), iotest.ErrReader(boom)),
	} {
		_, err := ReadFrame(r)
		if !errors.Is(err, boom) || errors.Is(err, ErrDecode) {
			t.Errorf("%s: I/O error surfaced as %v", name, err)
		}
	}
}

// countWriter counts Write calls.
type countWriter struct {
	bytes.Buffer
	calls int
}

func (w *countWriter) Write(b []byte) (int, error) { w.calls++; return w.Buffer.Write(b) }

func TestWriteFrame(t *testing.T) {
	for _, n := range []int{1, 2, 255, 256, MaxFrameSize} {
		var w countWriter
		msg := bytes.Repeat([]byte{0xab}, n)
		if err := WriteFrame(&w, msg); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if w.calls != 1 {
			t.Errorf("%d bytes: %d Write calls, want 1", n, w.calls)
		}
		b := w.Bytes()
		if int(binary.BigEndian.Uint16(b)) != n || !bytes.Equal(b[2:], msg) {
			t.Errorf("%d bytes: frame %x", n, b[:4])
		}
	}
	for _, n := range []int{0, MaxFrameSize + 1, 65535, 65536} {
		var w countWriter
		if err := WriteFrame(&w, make([]byte, n)); err == nil {
			t.Errorf("%d bytes: accepted", n)
		}
		if w.calls != 0 {
			t.Errorf("%d bytes: wrote on error", n)
		}
	}
	if err := WriteFrame(&countWriter{}, nil); err == nil {
		t.Error("nil message accepted")
	}
	var w bytes.Buffer
	if err := WriteAlert(&w, AlertOverloaded); err != nil || !bytes.Equal(w.Bytes(), []byte{0x00, 0x02, 0x7f, 0x04}) {
		t.Errorf("WriteAlert: %x, %v", w.Bytes(), err)
	}
}

func TestAlertCodesAndErrors(t *testing.T) {
	for c, want := range map[AlertCode]string{
		AlertHandshakeFailure:   "handshake_failure",
		AlertUnsupportedVersion: "unsupported_version",
		AlertDecodeError:        "decode_error",
		AlertOverloaded:         "overloaded",
		0x00:                    "alert(0x00)",
		0x42:                    "alert(0x42)",
	} {
		if got := c.String(); got != want {
			t.Errorf("%#x.String() = %q, want %q", byte(c), got, want)
		}
	}
	for _, c := range []struct {
		err  error
		want AlertCode
	}{
		{ErrDecode, AlertDecodeError},
		{decodeErr("x"), AlertDecodeError},
		{ErrVersion, AlertUnsupportedVersion},
		{ErrAuth, AlertHandshakeFailure},
		{ErrPolicy, AlertHandshakeFailure},
		{ErrEpoch, AlertHandshakeFailure},
		{ErrServerID, AlertHandshakeFailure},
		{ErrLayer, AlertHandshakeFailure},
		{ErrConfig, AlertHandshakeFailure},
		{errors.New("other"), AlertHandshakeFailure},
	} {
		if got := alertFor(c.err); got != c.want {
			t.Errorf("alertFor(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	e := &Error{Role: "server", Step: "parse Msg1", Alert: AlertDecodeError, Err: decodeErr("bad")}
	if !errors.Is(e, ErrDecode) || !strings.Contains(e.Error(), "sent decode_error") || !strings.Contains(e.Error(), "parse Msg1") {
		t.Errorf("Error: %q", e.Error())
	}
	if s := (&Error{Role: "client", Step: "x", Err: ErrAuth}).Error(); strings.Contains(s, "sent") {
		t.Errorf("Error without alert mentions one: %q", s)
	}
	if s := (&AlertError{Code: AlertOverloaded}).Error(); !strings.Contains(s, "overloaded") {
		t.Errorf("AlertError: %q", s)
	}
}

func hexByte(b byte) string { return fmt.Sprintf("%02x", b) }

func itoa(i int) string { return strconv.Itoa(i) }
