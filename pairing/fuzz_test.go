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

// decoded is what our decoder and both libraries made of one fuzz input,
// for checkDecoded (G1 and G2 differ only in the types that produce it).
type decoded struct {
	size       int   // the compressed encoding's length
	err        error // ours
	ours       []byte
	oursIdent  bool
	cachedSame bool // our circl form equals circl's own decoding

	circlOK, circlIdent bool
	circl               []byte
	gnarkOK, gnarkIdent bool
	gnarkErr            error
	gnark               []byte
	// unchecked decodes with gnark-crypto without the subgroup check.
	unchecked func() (onCurve bool, err error)
}

// checkDecoded: we accept exactly the compressed non-identity points both
// libraries accept, with the same re-encoding; anything else fails with
// exactly one typed error that the libraries agree with.
func checkDecoded(t *testing.T, in []byte, d decoded) {
	t.Helper()
	compressed := len(in) == d.size && in[0]&0x80 != 0
	if d.err == nil {
		if !compressed {
			t.Fatalf("%x: accepted without being a %d-byte compressed encoding", in, d.size)
		}
		if !d.circlOK || !d.gnarkOK {
			t.Fatalf("%x: accepted, but circl ok=%v, gnark-crypto ok=%v (%v)", in, d.circlOK, d.gnarkOK, d.gnarkErr)
		}
		if d.circlIdent || d.gnarkIdent || d.oursIdent {
			t.Fatalf("%x: accepted the identity", in)
		}
		if !bytes.Equal(d.ours, in) || !bytes.Equal(d.circl, in) || !bytes.Equal(d.gnark, in) {
			t.Fatalf("%x: re-encodings differ: ours %x circl %x gnark %x", in, d.ours, d.circl, d.gnark)
		}
		if !d.cachedSame {
			t.Fatalf("%x: circl form differs", in)
		}
		return
	}
	oneTypedError(t, in, d.err)

	// Every compressed non-identity point a library accepts, we accept.
	if compressed && d.circlOK && !d.circlIdent {
		t.Fatalf("%x: circl accepts, we say %v", in, d.err)
	}
	if compressed && d.gnarkOK && !d.gnarkIdent {
		t.Fatalf("%x: gnark-crypto accepts, we say %v", in, d.err)
	}
	switch {
	case errors.Is(d.err, ErrIdentity):
		if !compressed || !d.circlOK || !d.gnarkOK || !d.circlIdent || !d.gnarkIdent {
			t.Fatalf("%x: ErrIdentity for something the libraries do not read as the identity", in)
		}
	case errors.Is(d.err, ErrNotInSubgroup):
		onCurve, err := d.unchecked()
		if err != nil || !onCurve || d.circlOK || d.gnarkOK {
			t.Fatalf("%x: ErrNotInSubgroup, but unchecked decode %v, on curve %v, circl %v, gnark %v", in, err, onCurve, d.circlOK, d.gnarkOK)
		}
	}
}

func FuzzDecodeG1(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeG1(in)
		var c cb.G1
		var g gb.G1Affine
		n, gerr := g.SetBytes(in)
		d := decoded{size: G1Size, err: err, circlOK: c.SetBytes(in) == nil, gnarkOK: gerr == nil && n == len(in), gnarkErr: gerr,
			unchecked: func() (bool, error) {
				var u gb.G1Affine
				err := gb.NewDecoder(bytes.NewReader(in), gb.NoSubgroupChecks()).Decode(&u)
				return u.IsOnCurve(), err
			}}
		d.circlIdent, d.gnarkIdent = c.IsIdentity(), g.IsInfinity()
		if err == nil {
			ob, gnb := p.Bytes(), g.Bytes()
			cc := p.Cached()
			d.ours, d.oursIdent, d.circl, d.gnark, d.cachedSame = ob[:], p.IsIdentity(), c.BytesCompressed(), gnb[:], cc.c.IsEqual(&c)
		}
		checkDecoded(t, in, d)
	})
}

func FuzzDecodeG2(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeG2(in)
		var c cb.G2
		var g gb.G2Affine
		n, gerr := g.SetBytes(in)
		d := decoded{size: G2Size, err: err, circlOK: c.SetBytes(in) == nil, gnarkOK: gerr == nil && n == len(in), gnarkErr: gerr,
			unchecked: func() (bool, error) {
				var u gb.G2Affine
				err := gb.NewDecoder(bytes.NewReader(in), gb.NoSubgroupChecks()).Decode(&u)
				return u.IsOnCurve(), err
			}}
		d.circlIdent, d.gnarkIdent = c.IsIdentity(), g.IsInfinity()
		if err == nil {
			ob, gnb := p.Bytes(), g.Bytes()
			cc := p.Cached()
			d.ours, d.oursIdent, d.circl, d.gnark, d.cachedSame = ob[:], p.IsIdentity(), c.BytesCompressed(), gnb[:], cc.c.IsEqual(&c)
		}
		checkDecoded(t, in, d)
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
