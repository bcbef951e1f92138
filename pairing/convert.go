package pairing

import (
	"unsafe"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fp"
)

// Converting a gnark-crypto point into circl's form.
//
// circl offers only SetBytes, which re-runs its subgroup check (about 110 µs
// for G1) on a point that this package has already checked or computed
// itself. Both libraries store Fp elements as six little-endian 64-bit limbs
// in Montgomery form with R = 2³⁸⁴, and circl's points are homogeneous
// projective (X:Y:Z) with x = X/Z, so an affine point (x, y) is (x:y:1) with
// the limbs copied unchanged. fastConvert does exactly that. Its use is
// guarded: at start-up the layout is verified against the checked path on
// the generators and on hashed points, and on any mismatch (a changed
// library layout) the package falls back to SetBytes. TestFastConversion
// fails loudly if the fast path is ever disabled.

type circlG1Layout struct{ x, y, z [fp.Limbs]uint64 }
type circlG2Layout struct{ x, y, z [2][fp.Limbs]uint64 }

var fastConvert = func() bool {
	if unsafe.Sizeof(cb.G1{}) != unsafe.Sizeof(circlG1Layout{}) ||
		unsafe.Sizeof(cb.G2{}) != unsafe.Sizeof(circlG2Layout{}) {
		return false
	}
	_, _, g1, g2 := gb.Generators()
	h1, err1 := gb.EncodeToG1([]byte("layout self-test"), []byte("MILAGRO-PAIRING-SELFTEST"))
	h2, err2 := gb.HashToG2([]byte("layout self-test"), []byte("MILAGRO-PAIRING-SELFTEST"))
	if err1 != nil || err2 != nil {
		return false
	}
	for _, p := range []gb.G1Affine{g1, h1} {
		fast, slow := g1Fast(&p), g1Checked(&p)
		if !fast.IsEqual(&slow) || !fast.IsOnG1() || string(fast.BytesCompressed()) != string(slow.BytesCompressed()) {
			return false
		}
	}
	for _, p := range []gb.G2Affine{g2, h2} {
		fast, slow := g2Fast(&p), g2Checked(&p)
		if !fast.IsEqual(&slow) || !fast.IsOnG2() || string(fast.BytesCompressed()) != string(slow.BytesCompressed()) {
			return false
		}
	}
	return true
}()

func g1Fast(p *gb.G1Affine) cb.G1 {
	var c cb.G1
	l := (*circlG1Layout)(unsafe.Pointer(&c))
	one := fp.One()
	l.x, l.y, l.z = p.X, p.Y, one
	return c
}

func g1Checked(p *gb.G1Affine) cb.G1 {
	var c cb.G1
	raw := p.RawBytes()
	if err := c.SetBytes(raw[:]); err != nil {
		panic("pairing: gnark-crypto to circl G1 conversion: " + err.Error())
	}
	return c
}

func g2Fast(p *gb.G2Affine) cb.G2 {
	var c cb.G2
	l := (*circlG2Layout)(unsafe.Pointer(&c))
	one := fp.One()
	l.x = [2][fp.Limbs]uint64{p.X.A0, p.X.A1}
	l.y = [2][fp.Limbs]uint64{p.Y.A0, p.Y.A1}
	l.z = [2][fp.Limbs]uint64{one, {}}
	return c
}

func g2Checked(p *gb.G2Affine) cb.G2 {
	var c cb.G2
	raw := p.RawBytes()
	if err := c.SetBytes(raw[:]); err != nil {
		panic("pairing: gnark-crypto to circl G2 conversion: " + err.Error())
	}
	return c
}

// g1ToCircl converts a point in the subgroup (checked or computed here).
func g1ToCircl(p *gb.G1Affine) cb.G1 {
	if p.IsInfinity() {
		var c cb.G1
		c.SetIdentity()
		return c
	}
	if fastConvert {
		return g1Fast(p)
	}
	return g1Checked(p)
}

func g2ToCircl(p *gb.G2Affine) cb.G2 {
	if p.IsInfinity() {
		var c cb.G2
		c.SetIdentity()
		return c
	}
	if fastConvert {
		return g2Fast(p)
	}
	return g2Checked(p)
}
