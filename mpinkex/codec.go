package mpinkex

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/milagro-sc/milagro/pairing"
)

// Protocol constants.
const (
	Version      = 0x01 // mpinkex v1
	MaxFrameSize = 1024 // longest message a frame may carry
	LayerDTLS    = 0x01 // record layer bit 0: DTLS 1.2 PSK (PROTOCOL.md §7)
	FlagPermit   = 0x01 // Msg1 flags bit 0: a time permit is used
	MaxIDLen     = 255
)

// Message types.
const (
	TypeMsg1  = 0x01
	TypeMsg2  = 0x02
	TypeMsg3  = 0x03
	TypeMsg4  = 0x04
	TypeAlert = 0x7f
)

// Message is one of *Msg1, *Msg2, *Msg3, *Msg4, *Alert.
type Message interface {
	// Marshal returns the message bytes (without the frame length).
	Marshal() []byte
}

// Msg1 is the client's first message.
type Msg1 struct {
	Flags    byte   // FlagPermit or 0
	Layers   byte   // offered record layers, a bit mask
	ClientID string // 1..255 bytes of UTF-8
	ServerID string // requested server identity, may be empty
	Epoch    uint64 // permit epoch, 0 without a permit
	UPrime   pairing.G1
	R        pairing.G1
}

// Msg2 is the server's answer.
type Msg2 struct {
	Layer    byte   // the chosen record layer (one bit)
	ServerID string // the identity the server proves, 1..255 bytes
	Y        *pairing.Scalar
	W        pairing.G1
}

// Msg3 carries the client's proof V.
type Msg3 struct{ V pairing.G1 }

// Msg4 is the server's acceptance.
type Msg4 struct{}

// Alert ends a handshake with a reason code.
type Alert struct{ Code AlertCode }

func appendStr8(b []byte, s string) []byte { return append(append(b, byte(len(s))), s...) }

func appendG1(b []byte, p pairing.G1) []byte { e := p.Bytes(); return append(b, e[:]...) }

// Marshal encodes m. It panics if an identity is longer than 255 bytes;
// Client and Server validate identities before building messages.
func (m *Msg1) Marshal() []byte {
	mustID(m.ClientID)
	mustID(m.ServerID)
	b := make([]byte, 0, 4+2+len(m.ClientID)+len(m.ServerID)+8+2*pairing.G1Size)
	b = append(b, TypeMsg1, Version, m.Flags, m.Layers)
	b = appendStr8(b, m.ClientID)
	b = appendStr8(b, m.ServerID)
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	b = appendG1(b, m.UPrime)
	return appendG1(b, m.R)
}

// Marshal encodes m.
func (m *Msg2) Marshal() []byte {
	mustID(m.ServerID)
	b := make([]byte, 0, 3+1+len(m.ServerID)+pairing.ScalarSize+pairing.G1Size)
	b = append(b, TypeMsg2, Version, m.Layer)
	b = appendStr8(b, m.ServerID)
	y := m.Y.Bytes()
	b = append(b, y[:]...)
	return appendG1(b, m.W)
}

// Marshal encodes m.
func (m *Msg3) Marshal() []byte { return appendG1([]byte{TypeMsg3}, m.V) }

// Marshal encodes m.
func (m *Msg4) Marshal() []byte { return []byte{TypeMsg4, 0x00} }

// Marshal encodes m.
func (m *Alert) Marshal() []byte { return []byte{TypeAlert, byte(m.Code)} }

func mustID(s string) {
	if len(s) > MaxIDLen {
		panic("mpinkex: identity longer than 255 bytes")
	}
}

// ValidateID checks an identity: 1..255 bytes of valid UTF-8 (PROTOCOL.md §2).
func ValidateID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("identity must be 1..%d bytes, got %d", MaxIDLen, len(id))
	}
	if !utf8.ValidString(id) {
		return errors.New("identity is not valid UTF-8")
	}
	return nil
}

// reader walks a message, remembering the first failure.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = decodeErr("%s: truncated", what)
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte(what string) byte {
	v := r.take(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (r *reader) str8(what string, allowEmpty bool) string {
	n := int(r.byte(what + " length"))
	v := r.take(n, what)
	if r.err != nil {
		return ""
	}
	if n == 0 && !allowEmpty {
		r.err = decodeErr("%s is empty", what)
		return ""
	}
	if !utf8.Valid(v) {
		r.err = decodeErr("%s is not valid UTF-8", what)
		return ""
	}
	return string(v)
}

func (r *reader) g1(what string) pairing.G1 {
	v := r.take(pairing.G1Size, what)
	if r.err != nil {
		return pairing.G1{}
	}
	p, err := pairing.DecodeG1(v)
	if err != nil {
		r.err = fmt.Errorf("%w: %s: %w", ErrDecode, what, err)
	}
	return p
}

func (r *reader) end() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = decodeErr("%d trailing bytes", len(r.b))
	}
	return r.err
}

// ParseMessage decodes one message strictly: an unknown type, a wrong
// version, a bad length, trailing bytes, or a point or scalar that fails its
// checks (canonical, on curve, in the subgroup, not the identity, scalar in
// [1, r−1]) is an error wrapping ErrDecode (ErrVersion for the version).
func ParseMessage(b []byte) (Message, error) {
	if len(b) == 0 {
		return nil, decodeErr("empty message")
	}
	if len(b) > MaxFrameSize {
		return nil, decodeErr("message of %d bytes exceeds %d", len(b), MaxFrameSize)
	}
	r := &reader{b: b[1:]}
	switch b[0] {
	case TypeMsg1:
		if err := checkVersion(r); err != nil {
			return nil, err
		}
		m := &Msg1{}
		m.Flags = r.byte("flags")
		m.Layers = r.byte("layers")
		m.ClientID = r.str8("client_id", false)
		m.ServerID = r.str8("server_id", true)
		if e := r.take(8, "epoch"); e != nil {
			m.Epoch = binary.BigEndian.Uint64(e)
		}
		if r.err == nil && m.Flags&^FlagPermit != 0 {
			return nil, decodeErr("Msg1 flags %#02x has reserved bits set", m.Flags)
		}
		if r.err == nil && m.Flags&FlagPermit == 0 && m.Epoch != 0 {
			return nil, decodeErr("Msg1 epoch %d without the permit flag", m.Epoch)
		}
		m.UPrime = r.g1("U'")
		m.R = r.g1("R")
		if err := r.end(); err != nil {
			return nil, err
		}
		return m, nil
	case TypeMsg2:
		if err := checkVersion(r); err != nil {
			return nil, err
		}
		m := &Msg2{}
		m.Layer = r.byte("layer")
		if r.err == nil && (m.Layer == 0 || m.Layer&(m.Layer-1) != 0) {
			return nil, decodeErr("Msg2 layer %#02x is not one layer", m.Layer)
		}
		m.ServerID = r.str8("server_id", false)
		if y := r.take(pairing.ScalarSize, "y"); y != nil {
			s, err := pairing.DecodeScalar(y)
			if err != nil {
				return nil, fmt.Errorf("%w: y: %w", ErrDecode, err)
			}
			m.Y = s
		}
		m.W = r.g1("W")
		if err := r.end(); err != nil {
			return nil, err
		}
		return m, nil
	case TypeMsg3:
		m := &Msg3{V: r.g1("V")}
		if err := r.end(); err != nil {
			return nil, err
		}
		return m, nil
	case TypeMsg4:
		if v := r.byte("Msg4 status"); r.err == nil && v != 0 {
			return nil, decodeErr("Msg4 status %#02x", v)
		}
		if err := r.end(); err != nil {
			return nil, err
		}
		return &Msg4{}, nil
	case TypeAlert:
		c := AlertCode(r.byte("alert code"))
		if err := r.end(); err != nil {
			return nil, err
		}
		if c < AlertHandshakeFailure || c > AlertOverloaded {
			return nil, decodeErr("unknown alert code %#02x", byte(c))
		}
		return &Alert{Code: c}, nil
	}
	return nil, decodeErr("unknown message type %#02x", b[0])
}

func checkVersion(r *reader) error {
	v := r.byte("version")
	if r.err != nil {
		return r.err
	}
	if v != Version {
		return fmt.Errorf("%w: version %#02x", ErrVersion, v)
	}
	return nil
}

// ReadFrame reads one frame (u16 length, then the message) and returns the
// message bytes. It reads exactly the frame, nothing after it.
func ReadFrame(r io.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			// One byte then the end: a short read (§5), unlike a clean
			// end of stream between frames.
			return nil, fmt.Errorf("%w: frame header truncated (%w)", ErrDecode, err)
		}
		return nil, fmt.Errorf("read frame header: %w", err)
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > MaxFrameSize {
		return nil, decodeErr("frame of %d bytes exceeds %d", n, MaxFrameSize)
	}
	if n == 0 {
		return nil, decodeErr("empty frame")
	}
	b := make([]byte, n)
	if got, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: frame truncated after %d of %d bytes", ErrDecode, got, n)
		}
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return b, nil
}

// WriteFrame writes msg as one frame with a single Write call.
func WriteFrame(w io.Writer, msg []byte) error {
	if len(msg) == 0 || len(msg) > MaxFrameSize {
		return fmt.Errorf("frame of %d bytes: must be 1..%d", len(msg), MaxFrameSize)
	}
	b := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(b, uint16(len(msg)))
	copy(b[2:], msg)
	_, err := w.Write(b)
	return err
}

// WriteAlert sends an Alert frame. A server past its handshake bound calls
// WriteAlert(conn, AlertOverloaded) instead of running the handshake.
func WriteAlert(w io.Writer, code AlertCode) error {
	return WriteFrame(w, (&Alert{Code: code}).Marshal())
}
