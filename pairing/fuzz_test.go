package pairing

// Fuzz targets for the checked decoders. Seed corpora are in
// testdata/fuzz/<target>/. Run one with
//
//	go test -run='^$' -fuzz='^FuzzDecodeG1$' -fuzztime=60s ./pairing

import (
	"bytes"
	"errors"
	"math/big"
	"testing"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fr"
)

// oneTypedError fails unless err is exactly one of the point errors.
func oneTypedError(t *testing.T, in []byte, err error) {
	t.Helper()
	n := 0
	for _, e := range []error{ErrEncoding, ErrNotInSubgroup, ErrIdentity} {
		if errors.Is(err, e) {
			n++
		}
	}
	if n != 1 || errors.Is(err, ErrZeroScalar) {
		t.Fatalf("%x: error %q is not exactly one typed point error", in, err)
	}
}

func FuzzDecodeG1(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeG1(in)

		var c cb.G1
		circlOK := c.SetBytes(in) == nil
		var g gb.G1Affine
		n, gerr := g.SetBytes(in)
		gnarkOK := gerr == nil && n == len(in)
		compressed := len(in) == G1Size && in[0]&0x80 != 0

		if err == nil {
			if !compressed {
				t.Fatalf("%x: accepted without being a 48-byte compressed encoding", in)
			}
			if !circlOK || !gnarkOK {
				t.Fatalf("%x: accepted, but circl ok=%v, gnark-crypto ok=%v (%v)", in, circlOK, gnarkOK, gerr)
			}
			if c.IsIdentity() || g.IsInfinity() || p.IsIdentity() {
				t.Fatalf("%x: accepted the identity", in)
			}
			b := p.Bytes()
			gnb := g.Bytes()
			if !bytes.Equal(b[:], in) || !bytes.Equal(c.BytesCompressed(), in) || !bytes.Equal(gnb[:], in) {
				t.Fatalf("%x: re-encodings differ: ours %x circl %x gnark %x", in, b, c.BytesCompressed(), gnb)
			}
			if cc := p.Cached(); !cc.c.IsEqual(&c) {
				t.Fatalf("%x: circl form differs", in)
			}
			return
		}
		oneTypedError(t, in, err)

		// Every compressed non-identity point a library accepts, we accept.
		if compressed && circlOK && !c.IsIdentity() {
			t.Fatalf("%x: circl accepts, we say %v", in, err)
		}
		if compressed && gnarkOK && !g.IsInfinity() {
			t.Fatalf("%x: gnark-crypto accepts, we say %v", in, err)
		}
		switch {
		case errors.Is(err, ErrIdentity):
			if !compressed || !circlOK || !gnarkOK || !c.IsIdentity() || !g.IsInfinity() {
				t.Fatalf("%x: ErrIdentity for something the libraries do not read as the identity", in)
			}
		case errors.Is(err, ErrNotInSubgroup):
			var u gb.G1Affine
			err := gb.NewDecoder(bytes.NewReader(in), gb.NoSubgroupChecks()).Decode(&u)
			if err != nil || !u.IsOnCurve() || circlOK || gnarkOK {
				t.Fatalf("%x: ErrNotInSubgroup, but unchecked decode %v, on curve %v, circl %v, gnark %v", in, err, u.IsOnCurve(), circlOK, gnarkOK)
			}
		}
	})
}

func FuzzDecodeG2(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeG2(in)

		var c cb.G2
		circlOK := c.SetBytes(in) == nil
		var g gb.G2Affine
		n, gerr := g.SetBytes(in)
		gnarkOK := gerr == nil && n == len(in)
		compressed := len(in) == G2Size && in[0]&0x80 != 0

		if err == nil {
			if !compressed {
				t.Fatalf("%x: accepted without being a 96-byte compressed encoding", in)
			}
			if !circlOK || !gnarkOK {
				t.Fatalf("%x: accepted, but circl ok=%v, gnark-crypto ok=%v (%v)", in, circlOK, gnarkOK, gerr)
			}
			if c.IsIdentity() || g.IsInfinity() || p.IsIdentity() {
				t.Fatalf("%x: accepted the identity", in)
			}
			b := p.Bytes()
			gnb := g.Bytes()
			if !bytes.Equal(b[:], in) || !bytes.Equal(c.BytesCompressed(), in) || !bytes.Equal(gnb[:], in) {
				t.Fatalf("%x: re-encodings differ: ours %x circl %x gnark %x", in, b, c.BytesCompressed(), gnb)
			}
			if cc := p.Cached(); !cc.c.IsEqual(&c) {
				t.Fatalf("%x: circl form differs", in)
			}
			return
		}
		oneTypedError(t, in, err)

		if compressed && circlOK && !c.IsIdentity() {
			t.Fatalf("%x: circl accepts, we say %v", in, err)
		}
		if compressed && gnarkOK && !g.IsInfinity() {
			t.Fatalf("%x: gnark-crypto accepts, we say %v", in, err)
		}
		switch {
		case errors.Is(err, ErrIdentity):
			if !compressed || !circlOK || !gnarkOK || !c.IsIdentity() || !g.IsInfinity() {
				t.Fatalf("%x: ErrIdentity for something the libraries do not read as the identity", in)
			}
		case errors.Is(err, ErrNotInSubgroup):
			var u gb.G2Affine
			err := gb.NewDecoder(bytes.NewReader(in), gb.NoSubgroupChecks()).Decode(&u)
			if err != nil || !u.IsOnCurve() || circlOK || gnarkOK {
				t.Fatalf("%x: ErrNotInSubgroup, but unchecked decode %v, on curve %v, circl %v, gnark %v", in, err, u.IsOnCurve(), circlOK, gnarkOK)
			}
		}
	})
}

func FuzzDecodeScalar(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		v := new(big.Int).SetBytes(in)
		canonical := len(in) == ScalarSize && v.Cmp(rBig) < 0

		s, err := DecodeScalarOrZero(in)
		if (err == nil) != canonical {
			t.Fatalf("%x: DecodeScalarOrZero error %v, canonical %v", in, err, canonical)
		}
		if err != nil && (!errors.Is(err, ErrEncoding) || s != nil) {
			t.Fatalf("%x: DecodeScalarOrZero returned %v, %v", in, s, err)
		}
		if err == nil {
			if b := s.Bytes(); !bytes.Equal(b[:], in) {
				t.Fatalf("%x: re-encoded as %x", in, b)
			}
			if s.IsZero() != (v.Sign() == 0) {
				t.Fatalf("%x: IsZero = %v", in, s.IsZero())
			}
		}
		s2, err2 := DecodeScalar(in)
		switch {
		case canonical && v.Sign() == 0:
			if !errors.Is(err2, ErrZeroScalar) || errors.Is(err2, ErrEncoding) || s2 != nil {
				t.Fatalf("%x: DecodeScalar(0) = %v, %v", in, s2, err2)
			}
		case canonical:
			if err2 != nil || !s2.Equal(s) {
				t.Fatalf("%x: DecodeScalar = %v, %v", in, s2, err2)
			}
		default:
			if !errors.Is(err2, ErrEncoding) || errors.Is(err2, ErrZeroScalar) || s2 != nil {
				t.Fatalf("%x: DecodeScalar = %v, %v", in, s2, err2)
			}
		}
		// The libraries' canonical decoders agree on 32-byte inputs.
		if len(in) == ScalarSize {
			var cs cb.Scalar
			var gs fr.Element
			if (cs.UnmarshalBinary(in) == nil) != canonical || (gs.SetBytesCanonical(in) == nil) != canonical {
				t.Fatalf("%x: a library disagrees on canonicity", in)
			}
		}

		// ReduceScalar is OS2IP mod r for any length.
		want := pad32(new(big.Int).Mod(v, rBig))
		if got := ReduceScalar(in).Bytes(); !bytes.Equal(got[:], want) {
			t.Fatalf("%x: ReduceScalar = %x, want %x", in, got, want)
		}

		// RandomScalar over the input returns the first 32-byte block that is
		// in [1, r−1] once its top bit is cleared, or an error.
		var first []byte
		for i := 0; i+ScalarSize <= len(in) && i < 256*ScalarSize; i += ScalarSize {
			blk := bytes.Clone(in[i : i+ScalarSize])
			blk[0] &= 0x7f
			if bv := new(big.Int).SetBytes(blk); bv.Sign() != 0 && bv.Cmp(rBig) < 0 {
				first = blk
				break
			}
		}
		rs, rerr := RandomScalar(bytes.NewReader(in))
		if first == nil {
			if rerr == nil {
				t.Fatalf("%x: RandomScalar = %x, want an error", in, rs.Bytes())
			}
		} else if rerr != nil {
			t.Fatalf("%x: RandomScalar error %v, want %x", in, rerr, first)
		} else if got := rs.Bytes(); !bytes.Equal(got[:], first) {
			t.Fatalf("%x: RandomScalar = %x, want %x", in, got, first)
		}
	})
}
