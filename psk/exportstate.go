package psk

import (
	"bytes"
	"encoding/gob"
	"errors"
	"sync"

	"github.com/pion/dtls/v2"
)

// exportedState holds the fields of pion's ConnectionState serialization
// (dtls.State.MarshalBinary, a gob of its serializedState) that the record
// keys come from; gob matches fields by name and ignores the others.
type exportedState struct {
	LocalEpoch     uint16
	LocalRandom    [32]byte
	RemoteRandom   [32]byte
	CipherSuiteID  uint16
	MasterSecret   []byte
	SequenceNumber uint64
	IsClient       bool
}

// exportState reads the fields of exportedState from st. The caller
// clears es.MasterSecret.
func exportState(st *dtls.State, es *exportedState) error {
	blob, err := st.MarshalBinary()
	if err != nil {
		return err
	}
	defer clear(blob)
	return stateGob.decode(blob, es)
}

// stateGob decodes pion's state blobs for every session of the process.
var stateGob stateDecoder

// stateDecoder decodes the gob blobs of dtls.State.MarshalBinary. pion
// encodes each with a new gob.Encoder, so every blob starts with the
// definitions of the types it holds, and a new gob.Decoder compiles them
// again: three quarters of the decode's CPU and most of its allocations
// (BenchmarkExportState). A gob stream is a sequence of messages, each a
// byte count and a type id, negative for a type definition (encoding/gob's
// package documentation); so the decoder that decoded a whole blob decodes
// the next one's value message alone when the definitions before it are,
// byte for byte, the ones it has seen. Anything else — other definitions,
// a framing it does not follow, a failed decode — gets a new decoder and
// the whole blob, as before. gob copies each message into the decoder's
// own buffer, which cannot be cleared: the last session's state stays in
// that one buffer until the next handshake overwrites it (a new decoder per
// blob left a copy per session in garbage instead).
type stateDecoder struct {
	mu   sync.Mutex
	defs []byte // the type definitions dec has seen
	dec  *gob.Decoder
	// in is dec's input, the blob being decoded in place: a bytes.Reader is
	// an io.ByteReader, so gob adds no bufio.Reader that would keep a copy.
	in bytes.Reader
}

func (d *stateDecoder) decode(blob []byte, es *exportedState) error {
	defs, value, framed := splitGob(blob)
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.in.Reset(nil)
	if framed && d.dec != nil && bytes.Equal(defs, d.defs) {
		d.in.Reset(value)
		if err := d.dec.Decode(es); err == nil && d.in.Len() == 0 {
			return nil
		}
		clear(es.MasterSecret)
		*es = exportedState{}
	}
	d.dec, d.defs = nil, nil
	d.in.Reset(blob)
	dec := gob.NewDecoder(&d.in)
	if err := dec.Decode(es); err != nil {
		return err
	}
	if framed && d.in.Len() == 0 {
		d.dec, d.defs = dec, bytes.Clone(defs)
	}
	return nil
}

// splitGob splits a gob stream of type definitions followed by one value
// into the definitions and the value message (byte count included); ok is
// false for any other shape.
func splitGob(b []byte) (defs, value []byte, ok bool) {
	for off := 0; off < len(b); {
		n, w, err := gobUint(b[off:])
		if err != nil || n == 0 || n > uint64(len(b)-off-w) {
			return nil, nil, false
		}
		msg := b[off+w : off+w+int(n)]
		id, _, err := gobUint(msg)
		if err != nil {
			return nil, nil, false
		}
		end := off + w + int(n)
		if id&1 == 0 { // a non-negative type id: the value
			if end != len(b) || id == 0 {
				return nil, nil, false
			}
			return b[:off], b[off:], true
		}
		off = end
	}
	return nil, nil, false
}

var errGobUint = errors.New("psk: bad gob unsigned integer")

// gobUint reads one of gob's unsigned integers (a byte below 0x80, or the
// negated byte count of the big-endian value that follows) and returns it
// and its width. Signed integers are these with the sign in bit 0.
func gobUint(b []byte) (v uint64, width int, err error) {
	if len(b) == 0 {
		return 0, 0, errGobUint
	}
	if b[0] < 0x80 {
		return uint64(b[0]), 1, nil
	}
	n := -int(int8(b[0]))
	if n > 8 || len(b) < 1+n {
		return 0, 0, errGobUint
	}
	for _, c := range b[1 : 1+n] {
		v = v<<8 | uint64(c)
	}
	return v, 1 + n, nil
}
