package pairing

import (
	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// GTSize is the length of an encoded GT element.
const GTSize = 576

const fpSize = 48

// GT is an element of the pairing target group. The zero value is not a
// valid element; GT values come from the pairing functions.
type GT struct {
	g          gb.GT
	c          cb.Gt
	hasG, hasC bool
}

// reversePieces reverses the order of the twelve 48-byte coefficients. Both
// libraries order them c1.b2.a1 … c0.b0.a0; PROTOCOL.md §2 orders them
// c0.b0.a0 … c1.b2.a1.
func reversePieces(dst, src []byte) {
	for i := range 12 {
		copy(dst[i*fpSize:(i+1)*fpSize], src[(11-i)*fpSize:(12-i)*fpSize])
	}
}

// Bytes returns the 576-byte encoding of PROTOCOL.md §2 (tower order
// c0.b0.a0, c0.b0.a1, …, c1.b2.a1).
func (z GT) Bytes() [GTSize]byte {
	var out [GTSize]byte
	if z.hasG {
		b := z.g.Bytes()
		reversePieces(out[:], b[:])
		clear(b[:])
		return out
	}
	b, _ := z.c.MarshalBinary()
	reversePieces(out[:], b)
	clear(b)
	return out
}

func (z GT) gn() gb.GT {
	if z.hasG {
		return z.g
	}
	b, _ := z.c.MarshalBinary()
	var g gb.GT
	if err := g.SetBytes(b); err != nil {
		panic("pairing: circl to gnark-crypto GT conversion: " + err.Error())
	}
	clear(b)
	return g
}

func (z GT) ct() cb.Gt {
	if z.hasC {
		return z.c
	}
	b := z.g.Bytes()
	var c cb.Gt
	if err := c.UnmarshalBinary(b[:]); err != nil {
		panic("pairing: gnark-crypto to circl GT conversion: " + err.Error())
	}
	clear(b[:])
	return c
}

// IsOne reports whether z is the identity of GT.
func (z GT) IsOne() bool {
	if z.hasG {
		return z.g.IsOne()
	}
	return z.c.IsIdentity()
}

// Equal reports whether z and w are equal, in constant time over their
// encodings.
func (z GT) Equal(w GT) bool {
	a, b := z.Bytes(), w.Bytes()
	return EqualBytes(a[:], b[:])
}

// Mul returns z·w.
func (z GT) Mul(w GT) GT {
	a, b := z.gn(), w.gn()
	var r gb.GT
	r.Mul(&a, &b)
	return GT{g: r, hasG: true}
}

// ExpSecret returns z^k in constant time.
func (z GT) ExpSecret(k *Scalar) GT {
	a := z.ct()
	var r cb.Gt
	r.Exp(&a, &k.s)
	return GT{c: r, hasC: true}
}

// Zeroize overwrites z.
func (z *GT) Zeroize() { *z = GT{} }
