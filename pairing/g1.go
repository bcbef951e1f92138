package pairing

import (
	"bytes"
	"fmt"
	"math/big"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// G1Size is the length of a compressed G1 point.
const G1Size = 48

// G1 is an element of the prime-order subgroup G1. Values are immutable; the
// zero value is the identity. A G1 made by this package is always in the
// subgroup: DecodeG1 checks it, and every operation preserves it.
type G1 struct {
	g          gb.G1Affine // gnark-crypto form, valid if hasG
	c          cb.G1       // circl form, valid if hasC
	hasG, hasC bool
}

func g1FromGnark(p gb.G1Affine) G1 { return G1{g: p, hasG: true} }
func g1FromCircl(p cb.G1) G1       { return G1{c: p, hasC: true} }

// gn returns the gnark form, converting without a subgroup check.
func (p G1) gn() gb.G1Affine {
	switch {
	case p.hasG:
		return p.g
	case p.hasC:
		var q gb.G1Affine
		if p.c.IsIdentity() {
			return q
		}
		raw := p.c.Bytes()
		if err := gb.NewDecoder(bytes.NewReader(raw), gb.NoSubgroupChecks()).Decode(&q); err != nil {
			panic("pairing: circl to gnark-crypto G1 conversion: " + err.Error())
		}
		return q
	default:
		return gb.G1Affine{}
	}
}

// ct returns the circl form.
func (p G1) ct() cb.G1 {
	switch {
	case p.hasC:
		return p.c
	case p.hasG:
		return g1ToCircl(&p.g)
	default:
		var q cb.G1
		q.SetIdentity()
		return q
	}
}

// Cached returns p holding both library forms, so that repeated use in
// constant-time and in public arithmetic converts only once.
func (p G1) Cached() G1 {
	if !p.hasG {
		p.g, p.hasG = p.gn(), true
	}
	if !p.hasC {
		p.c, p.hasC = p.ct(), true
	}
	return p
}

// G1Generator returns the standard generator of G1.
func G1Generator() G1 {
	_, _, g, _ := gb.Generators()
	return g1FromGnark(g)
}

// DecodeG1 decodes a 48-byte compressed point, requiring a canonical
// encoding, a point on the curve, in the prime-order subgroup, and not the
// identity.
func DecodeG1(b []byte) (G1, error) {
	if len(b) != G1Size {
		return G1{}, fmt.Errorf("%w: G1 point is %d bytes, want %d", ErrEncoding, len(b), G1Size)
	}
	if b[0]&0x80 == 0 {
		return G1{}, fmt.Errorf("%w: G1 point without the compression flag", ErrEncoding)
	}
	var q gb.G1Affine
	if err := gb.NewDecoder(bytes.NewReader(b), gb.NoSubgroupChecks()).Decode(&q); err != nil {
		return G1{}, fmt.Errorf("%w: G1: %v", ErrEncoding, err)
	}
	if q.IsInfinity() {
		return G1{}, fmt.Errorf("%w: G1", ErrIdentity)
	}
	if !q.IsOnCurve() {
		return G1{}, fmt.Errorf("%w: G1 point not on the curve", ErrEncoding)
	}
	if !q.IsInSubGroup() {
		return G1{}, fmt.Errorf("%w: G1", ErrNotInSubgroup)
	}
	return g1FromGnark(q), nil
}

// Bytes returns the 48-byte compressed encoding of p.
func (p G1) Bytes() [G1Size]byte {
	if p.hasG || !p.hasC {
		g := p.gn()
		return g.Bytes()
	}
	var out [G1Size]byte
	copy(out[:], p.c.BytesCompressed())
	return out
}

// IsIdentity reports whether p is the identity.
func (p G1) IsIdentity() bool {
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
func (p G1) Equal(q G1) bool {
	a, b := p.Bytes(), q.Bytes()
	return EqualBytes(a[:], b[:])
}

// Neg returns −p.
func (p G1) Neg() G1 {
	if p.hasC {
		c := p.c
		c.Neg()
		if p.hasG {
			var g gb.G1Affine
			g.Neg(&p.g)
			return G1{g: g, c: c, hasG: true, hasC: true}
		}
		return g1FromCircl(c)
	}
	var g gb.G1Affine
	g0 := p.gn()
	g.Neg(&g0)
	return g1FromGnark(g)
}

// AddPublic returns p + q in variable time. Use it only when p and q are
// public (derived from received messages or public identities).
func AddPublic(p, q G1) G1 {
	a, b := p.gn(), q.gn()
	var r gb.G1Affine
	r.Add(&a, &b)
	return g1FromGnark(r)
}

// AddSecret returns p + q in constant time (complete formulas), for sums
// that involve secret points such as key shares.
func AddSecret(p, q G1) G1 {
	a, b := p.ct(), q.ct()
	var r cb.G1
	r.Add(&a, &b)
	return g1FromCircl(r)
}

// MulPublic returns k·p in variable time (GLV). Use it only when both k and
// p are public.
func MulPublic(k *Scalar, p G1) G1 {
	a := p.gn()
	var r gb.G1Affine
	r.ScalarMultiplication(&a, k.big())
	return g1FromGnark(r)
}

// MulSecret returns k·p in constant time. Use it whenever k is secret.
func MulSecret(k *Scalar, p G1) G1 {
	a := p.ct()
	var r cb.G1
	r.ScalarMult(&k.s, &a)
	return g1FromCircl(r)
}

// big returns k as a big.Int, for the variable-time public routines only.
func (s *Scalar) big() *big.Int {
	b := s.Bytes()
	return new(big.Int).SetBytes(b[:])
}

// Zeroize overwrites p (for secret points such as keys and shares).
func (p *G1) Zeroize() { *p = G1{} }
