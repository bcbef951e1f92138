package pairing

import (
	"bytes"
	"fmt"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// G2Size is the length of a compressed G2 point.
const G2Size = 96

// G2 is an element of the prime-order subgroup G2. Values are immutable; the
// zero value is the identity.
type G2 struct {
	g          gb.G2Affine
	c          cb.G2
	hasG, hasC bool
}

func g2FromGnark(p gb.G2Affine) G2 { return G2{g: p, hasG: true} }
func g2FromCircl(p cb.G2) G2       { return G2{c: p, hasC: true} }

func (p G2) gn() gb.G2Affine {
	switch {
	case p.hasG:
		return p.g
	case p.hasC:
		var q gb.G2Affine
		if p.c.IsIdentity() {
			return q
		}
		raw := p.c.Bytes()
		if err := gb.NewDecoder(bytes.NewReader(raw), gb.NoSubgroupChecks()).Decode(&q); err != nil {
			panic("pairing: circl to gnark-crypto G2 conversion: " + err.Error())
		}
		return q
	default:
		return gb.G2Affine{}
	}
}

func (p G2) ct() cb.G2 {
	switch {
	case p.hasC:
		return p.c
	case p.hasG:
		return g2ToCircl(&p.g)
	default:
		var q cb.G2
		q.SetIdentity()
		return q
	}
}

// Cached returns p holding both library forms.
func (p G2) Cached() G2 {
	if !p.hasG {
		p.g, p.hasG = p.gn(), true
	}
	if !p.hasC {
		p.c, p.hasC = p.ct(), true
	}
	return p
}

// G2Generator returns Q, the standard generator of G2.
func G2Generator() G2 {
	_, _, _, q := gb.Generators()
	return g2FromGnark(q)
}

// DecodeG2 decodes a 96-byte compressed point, requiring a canonical
// encoding, a point on the curve, in the prime-order subgroup, and not the
// identity.
func DecodeG2(b []byte) (G2, error) {
	if len(b) != G2Size {
		return G2{}, fmt.Errorf("%w: G2 point is %d bytes, want %d", ErrEncoding, len(b), G2Size)
	}
	if b[0]&0x80 == 0 {
		return G2{}, fmt.Errorf("%w: G2 point without the compression flag", ErrEncoding)
	}
	var q gb.G2Affine
	if err := gb.NewDecoder(bytes.NewReader(b), gb.NoSubgroupChecks()).Decode(&q); err != nil {
		return G2{}, fmt.Errorf("%w: G2: %v", ErrEncoding, err)
	}
	if q.IsInfinity() {
		return G2{}, fmt.Errorf("%w: G2", ErrIdentity)
	}
	if !q.IsOnCurve() {
		return G2{}, fmt.Errorf("%w: G2 point not on the curve", ErrEncoding)
	}
	if !q.IsInSubGroup() {
		return G2{}, fmt.Errorf("%w: G2", ErrNotInSubgroup)
	}
	return g2FromGnark(q), nil
}

// Bytes returns the 96-byte compressed encoding of p.
func (p G2) Bytes() [G2Size]byte {
	if p.hasG || !p.hasC {
		g := p.gn()
		return g.Bytes()
	}
	var out [G2Size]byte
	copy(out[:], p.c.BytesCompressed())
	return out
}

// IsIdentity reports whether p is the identity.
func (p G2) IsIdentity() bool {
	if p.hasG {
		return p.g.IsInfinity()
	}
	if p.hasC {
		return p.c.IsIdentity()
	}
	return true
}

// Equal reports whether p and q are the same point, in constant time over
// their encodings.
func (p G2) Equal(q G2) bool {
	a, b := p.Bytes(), q.Bytes()
	return EqualBytes(a[:], b[:])
}

// Neg returns −p.
func (p G2) Neg() G2 {
	c := p.ct()
	c.Neg()
	return g2FromCircl(c)
}

// AddSecretG2 returns p + q in constant time.
func AddSecretG2(p, q G2) G2 {
	a, b := p.ct(), q.ct()
	var r cb.G2
	r.Add(&a, &b)
	return g2FromCircl(r)
}

// MulSecretG2 returns k·p in constant time.
func MulSecretG2(k *Scalar, p G2) G2 {
	a := p.ct()
	var r cb.G2
	r.ScalarMult(&k.s, &a)
	return g2FromCircl(r)
}

// Zeroize overwrites p (for secret points such as keys and shares).
func (p *G2) Zeroize() { *p = G2{} }
