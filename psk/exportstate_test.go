package psk

import (
	"bytes"
	"encoding/gob"
	"errors"
	"testing"
)

// freshDecode is the reference: a new gob.Decoder for the whole blob.
func freshDecode(t testing.TB, blob []byte) exportedState {
	t.Helper()
	var es exportedState
	if err := gob.NewDecoder(bytes.NewReader(blob)).Decode(&es); err != nil {
		t.Fatal(err)
	}
	return es
}

func stateBlob(t testing.TB) []byte {
	t.Helper()
	cli, _, _, _ := handshakePair(t, false, false)
	st := cli.ConnectionState()
	blob, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

func sameState(a, b exportedState) bool {
	return a.LocalEpoch == b.LocalEpoch && a.LocalRandom == b.LocalRandom && a.RemoteRandom == b.RemoteRandom &&
		a.CipherSuiteID == b.CipherSuiteID && bytes.Equal(a.MasterSecret, b.MasterSecret) &&
		a.SequenceNumber == b.SequenceNumber && a.IsClient == b.IsClient
}

// otherState has exportedState's field names in another type, so its gob
// definitions differ from pion's.
type otherState struct {
	MasterSecret []byte
	LocalEpoch   uint16
	Extra        string
}

func TestStateDecoder(t *testing.T) {
	blob1, blob2 := stateBlob(t), stateBlob(t)
	want1, want2 := freshDecode(t, blob1), freshDecode(t, blob2)
	if len(want1.MasterSecret) != 48 || bytes.Equal(want1.MasterSecret, want2.MasterSecret) {
		t.Fatal("two handshakes should export two 48-byte master secrets")
	}
	var other bytes.Buffer
	if err := gob.NewEncoder(&other).Encode(otherState{MasterSecret: []byte("other"), LocalEpoch: 3, Extra: "x"}); err != nil {
		t.Fatal(err)
	}

	var d stateDecoder
	steps := []struct {
		name   string
		blob   []byte
		want   *exportedState // nil: an error
		shared bool           // the value alone went through the shared decoder
	}{
		{"first blob: whole", blob1, &want1, false},
		{"second blob: value only", blob2, &want2, true},
		{"first again: value only", blob1, &want1, true},
		{"other definitions: whole", other.Bytes(), &exportedState{MasterSecret: []byte("other"), LocalEpoch: 3}, false},
		{"pion's again: whole", blob2, &want2, false},
		{"truncated value", blob1[:len(blob1)-3], nil, false},
		{"after an error: whole", blob1, &want1, false},
		{"then value only", blob2, &want2, true},
		{"empty", nil, nil, false},
	}
	for _, s := range steps {
		before := d.dec
		in := bytes.Clone(s.blob)
		var es exportedState
		err := d.decode(in, &es)
		switch {
		case s.want == nil && err == nil:
			t.Errorf("%s: decoded, want an error", s.name)
		case s.want != nil && err != nil:
			t.Errorf("%s: %v", s.name, err)
		case s.want != nil && !sameState(es, *s.want):
			t.Errorf("%s: decoded %+v, want %+v", s.name, es, *s.want)
		}
		if shared := before != nil && d.dec == before && err == nil; shared != s.shared {
			t.Errorf("%s: shared decoder used = %v, want %v", s.name, shared, s.shared)
		}
		if !bytes.Equal(in, s.blob) {
			t.Errorf("%s: the decoder changed its input", s.name)
		}
		if d.in.Size() != 0 {
			t.Errorf("%s: the decoder kept a reference to the blob", s.name)
		}
	}
}

func TestSplitGob(t *testing.T) {
	blob := stateBlob(t)
	defs, value, ok := splitGob(blob)
	if !ok || len(defs) == 0 || len(value) == 0 || !bytes.Equal(append(bytes.Clone(defs), value...), blob) {
		t.Fatalf("splitGob(pion's blob) = %d, %d bytes, %v", len(defs), len(value), ok)
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"count past the end", []byte{0x05, 0x02}},
		{"zero count", []byte{0x00}},
		{"definitions only", defs},
		{"value then more", append(bytes.Clone(value), value...)},
		{"type id 0", []byte{0x01, 0x00}},
		{"9-byte count", []byte{0xF7, 1, 2, 3, 4, 5, 6, 7, 8, 9}},
		{"truncated count", []byte{0xFE, 0x01}},
	} {
		if _, _, ok := splitGob(tc.b); ok {
			t.Errorf("%s: splitGob accepted %x", tc.name, tc.b)
		}
	}
	if _, _, ok := splitGob([]byte{0x02, 0x02, 0x00}); !ok { // a value of type 1, no definitions
		t.Error("splitGob refused a lone value message")
	}
}

func TestGobUint(t *testing.T) {
	for _, tc := range []struct {
		b     []byte
		v     uint64
		width int
		err   bool
	}{
		{[]byte{0x00}, 0, 1, false},
		{[]byte{0x7F, 0xAA}, 127, 1, false},
		{[]byte{0xFF, 0x80}, 128, 2, false},
		{[]byte{0xFE, 0x01, 0x00}, 256, 3, false},
		{[]byte{0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}, 1<<64 - 1, 9, false},
		{nil, 0, 0, true},
		{[]byte{0xFE, 0x01}, 0, 0, true},
		{[]byte{0xF7, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, 0, true},
		{[]byte{0x80}, 0, 0, true}, // 128 bytes
	} {
		v, w, err := gobUint(tc.b)
		if (err != nil) != tc.err || (!tc.err && (v != tc.v || w != tc.width)) {
			t.Errorf("gobUint(%x) = %d, %d, %v; want %d, %d, error %v", tc.b, v, w, err, tc.v, tc.width, tc.err)
		}
		if err != nil && !errors.Is(err, errGobUint) {
			t.Errorf("gobUint(%x): error %v", tc.b, err)
		}
	}
}

// FuzzStateDecoder: on any input, the shared decoder (primed with pion's
// definitions before each input, so that an input with those definitions
// takes the value-only way) accepts exactly what a new gob.Decoder accepts
// and decodes the same state; it never panics.
func FuzzStateDecoder(f *testing.F) {
	prime := stateBlob(f)
	f.Add(prime)
	defs, value, _ := splitGob(prime)
	f.Add(append(bytes.Clone(defs), value[:len(value)-1]...))
	f.Add(append(bytes.Clone(defs), append(bytes.Clone(value), 0x00)...))
	f.Add(value)
	var d stateDecoder
	f.Fuzz(func(t *testing.T, b []byte) {
		var es exportedState
		if err := d.decode(bytes.Clone(prime), &es); err != nil {
			t.Fatal(err)
		}
		var got, want exportedState
		err := d.decode(b, &got)
		werr := gob.NewDecoder(bytes.NewReader(b)).Decode(&want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("shared decoder: %v; new decoder: %v", err, werr)
		}
		if err == nil && !sameState(got, want) {
			t.Fatalf("shared decoder: %+v; new decoder: %+v", got, want)
		}
	})
}
