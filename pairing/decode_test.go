package pairing

// Rejection tests for the checked decoders (PROTOCOL.md §2, §8): every case
// must fail with exactly the expected typed error, and both libraries'
// own checked decoders must reject the same bytes.

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"testing"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fp"
)

var typedErrors = []error{ErrEncoding, ErrNotInSubgroup, ErrIdentity, ErrZeroScalar}

// wantTyped fails unless err is want and none of the other typed errors.
func wantTyped(t testing.TB, what string, err, want error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted, want %v", what, want)
		return
	}
	for _, e := range typedErrors {
		if errors.Is(err, e) != (e == want) {
			t.Errorf("%s: error %q, want %v", what, err, want)
			return
		}
	}
}

// mulNaiveG1 is a plain double-and-add (no GLV, no endomorphism), used as an
// independent subgroup test: P is in G1 iff [r]P = O.
func mulNaiveG1(p gb.G1Affine, k *big.Int) gb.G1Jac {
	var base, acc gb.G1Jac
	base.FromAffine(&p)
	acc.X.SetOne()
	acc.Y.SetOne() // Z = 0: infinity
	for i := k.BitLen() - 1; i >= 0; i-- {
		acc.DoubleAssign()
		if k.Bit(i) == 1 {
			acc.AddAssign(&base)
		}
	}
	return acc
}

func mulNaiveG2(p gb.G2Affine, k *big.Int) gb.G2Jac {
	var base, acc gb.G2Jac
	base.FromAffine(&p)
	acc.X.SetOne()
	acc.Y.SetOne()
	for i := k.BitLen() - 1; i >= 0; i-- {
		acc.DoubleAssign()
		if k.Bit(i) == 1 {
			acc.AddAssign(&base)
		}
	}
	return acc
}

// onCurveG1 checks y² = x³ + 4 mod p with math/big.
func onCurveG1(p gb.G1Affine) bool {
	x, y := p.X.BigInt(new(big.Int)), p.Y.BigInt(new(big.Int))
	l := new(big.Int).Mul(y, y)
	r := new(big.Int).Exp(x, big.NewInt(3), nil)
	r.Add(r, big.NewInt(4))
	return new(big.Int).Mod(l, pBig).Cmp(new(big.Int).Mod(r, pBig)) == 0
}

// g1FromX returns the point with abscissa x and y = sqrt(x³ + 4) computed
// with math/big, or false if x³ + 4 is not a square.
func g1FromX(x *big.Int) (gb.G1Affine, bool) {
	rhs := new(big.Int).Exp(x, big.NewInt(3), pBig)
	rhs.Add(rhs, big.NewInt(4)).Mod(rhs, pBig)
	y := new(big.Int).ModSqrt(rhs, pBig)
	if y == nil {
		return gb.G1Affine{}, false
	}
	var p gb.G1Affine
	p.X.SetBigInt(x)
	p.Y.SetBigInt(y)
	return p, true
}

// offSubgroupG1 returns points on the curve but outside G1, each checked to
// be on the curve (math/big) and to fail [r]P = O (naive multiplication).
func offSubgroupG1(t testing.TB) map[string]gb.G1Affine {
	t.Helper()
	pts := map[string]gb.G1Affine{}
	// gnark-crypto's generator of non-G1 points.
	for i, u := range []uint64{1, 7, 123456789} {
		var f fp.Element
		f.SetUint64(u)
		j := gb.GeneratePointNotInG1(f)
		var a gb.G1Affine
		a.FromJacobian(&j)
		pts[fmt.Sprintf("GeneratePointNotInG1 #%d", i)] = a
	}
	// Points of order 3: x = 0, y = ±2.
	p0, ok := g1FromX(big.NewInt(0))
	if !ok {
		t.Fatal("x = 0 not on the curve")
	}
	pts["(0, 2)"] = p0
	var n gb.G1Affine
	n.Neg(&p0)
	pts["(0, -2)"] = n
	// The first few small x on the curve (checked below to be off G1).
	found := 0
	for x := int64(1); found < 3; x++ {
		if p, ok := g1FromX(big.NewInt(x)); ok {
			pts[fmt.Sprintf("x = %d", x)] = p
			found++
		}
	}
	for name, p := range pts {
		if !onCurveG1(p) || p.IsInfinity() {
			t.Fatalf("%s: not on the curve", name)
		}
		j := mulNaiveG1(p, rBig)
		if j.Z.IsZero() {
			t.Fatalf("%s: [r]P = O, the point is in G1", name)
		}
	}
	return pts
}

// g2FromX returns the twist point with abscissa x, or false.
func g2FromX(x gb.E2) (gb.G2Affine, bool) {
	var b, rhs, y gb.E2
	b.A0.SetUint64(4)
	b.A1.SetUint64(4) // b' = 4(1 + u)
	rhs.Square(&x).Mul(&rhs, &x).Add(&rhs, &b)
	if rhs.Legendre() != 1 {
		return gb.G2Affine{}, false
	}
	y.Sqrt(&rhs)
	var chk gb.E2
	if !chk.Square(&y).Equal(&rhs) {
		return gb.G2Affine{}, false
	}
	return gb.G2Affine{X: x, Y: y}, true
}

func offSubgroupG2(t testing.TB) map[string]gb.G2Affine {
	t.Helper()
	pts := map[string]gb.G2Affine{}
	for i, u := range []uint64{1, 99} {
		var f gb.E2
		f.A0.SetUint64(u)
		f.A1.SetUint64(u + 3)
		j := gb.GeneratePointNotInG2(f)
		var a gb.G2Affine
		a.FromJacobian(&j)
		pts[fmt.Sprintf("GeneratePointNotInG2 #%d", i)] = a
	}
	found := 0
	for k := uint64(0); found < 3; k++ {
		var x gb.E2
		x.A0.SetUint64(k)
		x.A1.SetUint64(1)
		if p, ok := g2FromX(x); ok {
			pts[fmt.Sprintf("x = %d + u", k)] = p
			found++
		}
	}
	for name, p := range pts {
		if !p.IsOnCurve() || p.IsInfinity() {
			t.Fatalf("%s: not on the curve", name)
		}
		j := mulNaiveG2(p, rBig)
		if j.Z.IsZero() {
			t.Fatalf("%s: [r]P = O, the point is in G2", name)
		}
	}
	return pts
}

type rejectCase struct {
	name string
	in   []byte
	want error
}

// libsAccept reports whether circl's and gnark-crypto's checked decoders
// accept b as a whole (gnark-crypto's SetBytes may consume a prefix only).
func libsAcceptG1(b []byte) (circl, gnark bool) {
	var c cb.G1
	var g gb.G1Affine
	n, err := g.SetBytes(b)
	return c.SetBytes(b) == nil, err == nil && n == len(b)
}

func libsAcceptG2(b []byte) (circl, gnark bool) {
	var c cb.G2
	var g gb.G2Affine
	n, err := g.SetBytes(b)
	return c.SetBytes(b) == nil, err == nil && n == len(b)
}

func TestDecodeG1Reject(t *testing.T) {
	_, _, gen, _ := gb.Generators()
	valid := gen.Bytes()
	raw := gen.RawBytes()
	withFlags := func(b [G1Size]byte, flags byte) []byte {
		out := bytes.Clone(b[:])
		out[0] = out[0]&0x1f | flags
		return out
	}
	pPlus := func(x *big.Int, flags byte) []byte {
		v := new(big.Int).Add(x, pBig)
		out := v.FillBytes(make([]byte, G1Size))
		out[0] |= flags
		return out
	}
	infinity := append([]byte{0xc0}, make([]byte, G1Size-1)...)

	cases := []rejectCase{
		{"empty", nil, ErrEncoding},
		{"47 bytes", valid[:47], ErrEncoding},
		{"49 bytes", append(bytes.Clone(valid[:]), 0), ErrEncoding},
		{"95 bytes", raw[:95], ErrEncoding},
		{"97 bytes", append(bytes.Clone(raw[:]), 0), ErrEncoding},
		{"96-byte uncompressed generator", raw[:], ErrEncoding},
		{"48-byte uncompressed prefix", raw[:48], ErrEncoding},
		{"no compression flag (0x00)", withFlags(valid, 0x00), ErrEncoding},
		{"no compression flag, sign set (0x20)", withFlags(valid, 0x20), ErrEncoding},
		{"uncompressed infinity flag (0x40)", withFlags(valid, 0x40), ErrEncoding},
		{"0x60 flags", withFlags(valid, 0x60), ErrEncoding},
		{"0xE0 flags", withFlags(valid, 0xe0), ErrEncoding},
		{"0x40 + zeros (uncompressed infinity, short)", append([]byte{0x40}, make([]byte, 47)...), ErrEncoding},
		{"compressed infinity", infinity, ErrIdentity},
		{"infinity with sign bit (0xE0 + zeros)", append([]byte{0xe0}, make([]byte, 47)...), ErrEncoding},
		{"infinity with low bit in first byte", append([]byte{0xc1}, make([]byte, 47)...), ErrEncoding},
		{"infinity with last byte set", append(bytes.Clone(infinity[:47]), 1), ErrEncoding},
		{"infinity with x of the generator", withFlags(valid, 0xc0), ErrEncoding},
		{"x = p", pPlus(big.NewInt(0), 0x80), ErrEncoding},
		{"x = p + 1", pPlus(big.NewInt(1), 0x80), ErrEncoding},
		{"x = 2^381 - 1", append([]byte{0x9f}, bytes.Repeat([]byte{0xff}, 47)...), ErrEncoding},
		{"x = 2^381 - 1, sign", append([]byte{0xbf}, bytes.Repeat([]byte{0xff}, 47)...), ErrEncoding},
	}

	// A valid point with x + p < 2^381: its non-canonical encoding.
	for k := int64(2); ; k++ {
		var p gb.G1Affine
		p.ScalarMultiplication(&gen, big.NewInt(k))
		x := p.X.BigInt(new(big.Int))
		if new(big.Int).Add(x, pBig).BitLen() > 381 {
			continue
		}
		b := p.Bytes()
		nc := pPlus(x, b[0]&0xe0)
		cases = append(cases, rejectCase{fmt.Sprintf("x + p for %d·G", k), nc, ErrEncoding})
		// Sanity: the canonical form of the same point is accepted.
		if _, err := DecodeG1(b[:]); err != nil {
			t.Fatalf("canonical %d·G rejected: %v", k, err)
		}
		break
	}

	// x with no square root of x³ + 4 (x and x + p variants both fail).
	found := 0
	for x := int64(1); found < 3; x++ {
		if _, ok := g1FromX(big.NewInt(x)); ok {
			continue
		}
		b := big.NewInt(x).FillBytes(make([]byte, G1Size))
		b[0] |= 0x80
		cases = append(cases, rejectCase{fmt.Sprintf("x = %d not on the curve", x), b, ErrEncoding})
		b2 := bytes.Clone(b)
		b2[0] |= 0x20
		cases = append(cases, rejectCase{fmt.Sprintf("x = %d not on the curve, sign", x), b2, ErrEncoding})
		found++
	}

	// On the curve, outside the subgroup: both signs.
	for name, p := range offSubgroupG1(t) {
		b := p.Bytes()
		cases = append(cases, rejectCase{"off subgroup " + name, bytes.Clone(b[:]), ErrNotInSubgroup})
		var n gb.G1Affine
		n.Neg(&p)
		nb := n.Bytes()
		cases = append(cases, rejectCase{"off subgroup −(" + name + ")", bytes.Clone(nb[:]), ErrNotInSubgroup})
	}

	for _, c := range cases {
		p, err := DecodeG1(c.in)
		wantTyped(t, c.name, err, c.want)
		if err != nil && !p.IsIdentity() {
			t.Errorf("%s: non-zero point returned with an error", c.name)
		}
		// Both libraries reject too, except that they accept the identity,
		// and uncompressed encodings, which this package refuses.
		circl, gnark := libsAcceptG1(c.in)
		uncompressed := len(c.in) == 2*G1Size && c.in[0]&0x80 == 0
		if (circl || gnark) && c.want != ErrIdentity && !uncompressed {
			t.Errorf("%s: a library accepts it (circl %v, gnark %v)", c.name, circl, gnark)
		}
		if c.want == ErrIdentity && (!circl || !gnark) {
			t.Errorf("%s: a library rejects the identity (circl %v, gnark %v)", c.name, circl, gnark)
		}
	}
}

func TestDecodeG2Reject(t *testing.T) {
	_, _, _, gen := gb.Generators()
	valid := gen.Bytes()
	raw := gen.RawBytes()
	withFlags := func(b [G2Size]byte, flags byte) []byte {
		out := bytes.Clone(b[:])
		out[0] = out[0]&0x1f | flags
		return out
	}
	fpBytes := func(v *big.Int) []byte { return v.FillBytes(make([]byte, fpSize)) }
	infinity := append([]byte{0xc0}, make([]byte, G2Size-1)...)

	cases := []rejectCase{
		{"empty", nil, ErrEncoding},
		{"48 bytes", valid[:48], ErrEncoding},
		{"95 bytes", valid[:95], ErrEncoding},
		{"97 bytes", append(bytes.Clone(valid[:]), 0), ErrEncoding},
		{"191 bytes", raw[:191], ErrEncoding},
		{"193 bytes", append(bytes.Clone(raw[:]), 0), ErrEncoding},
		{"192-byte uncompressed generator", raw[:], ErrEncoding},
		{"no compression flag (0x00)", withFlags(valid, 0x00), ErrEncoding},
		{"0x20 flags", withFlags(valid, 0x20), ErrEncoding},
		{"0x40 flags", withFlags(valid, 0x40), ErrEncoding},
		{"0x60 flags", withFlags(valid, 0x60), ErrEncoding},
		{"0xE0 flags", withFlags(valid, 0xe0), ErrEncoding},
		{"compressed infinity", infinity, ErrIdentity},
		{"infinity with sign bit", append([]byte{0xe0}, make([]byte, G2Size-1)...), ErrEncoding},
		{"infinity with low bit in first byte", append([]byte{0xc1}, make([]byte, G2Size-1)...), ErrEncoding},
		{"infinity with last byte set", append(bytes.Clone(infinity[:G2Size-1]), 1), ErrEncoding},
		{"infinity with x of the generator", withFlags(valid, 0xc0), ErrEncoding},
		{"x.c1 = 2^381 - 1", append(append([]byte{0x9f}, bytes.Repeat([]byte{0xff}, 47)...), valid[48:]...), ErrEncoding},
		{"x.c0 = 2^384 - 1", append(bytes.Clone(valid[:48]), bytes.Repeat([]byte{0xff}, 48)...), ErrEncoding},
		{"x.c0 = p", append(bytes.Clone(valid[:48]), fpBytes(pBig)...), ErrEncoding},
	}
	// x.c1 = p (flags 0x80) with the generator's c0.
	c1p := fpBytes(pBig)
	c1p[0] |= 0x80
	cases = append(cases, rejectCase{"x.c1 = p", append(c1p, valid[48:]...), ErrEncoding})

	// Non-canonical encodings of valid points: c0 + p (always fits in 48
	// bytes) and c1 + p (when it fits in 381 bits).
	for k := int64(1); ; k++ {
		var p gb.G2Affine
		p.ScalarMultiplication(&gen, big.NewInt(k))
		b := p.Bytes()
		if k == 1 {
			c0 := new(big.Int).Add(p.X.A0.BigInt(new(big.Int)), pBig)
			cases = append(cases, rejectCase{"x.c0 + p for Q", append(bytes.Clone(b[:48]), fpBytes(c0)...), ErrEncoding})
		}
		c1 := new(big.Int).Add(p.X.A1.BigInt(new(big.Int)), pBig)
		if c1.BitLen() > 381 {
			continue
		}
		nc := fpBytes(c1)
		nc[0] |= b[0] & 0xe0
		cases = append(cases, rejectCase{fmt.Sprintf("x.c1 + p for %d·Q", k), append(nc, b[48:]...), ErrEncoding})
		if _, err := DecodeG2(b[:]); err != nil {
			t.Fatalf("canonical %d·Q rejected: %v", k, err)
		}
		break
	}

	// x with no square root of x³ + 4(1+u).
	found := 0
	for k := uint64(0); found < 3; k++ {
		var x gb.E2
		x.A0.SetUint64(k)
		x.A1.SetUint64(2)
		if _, ok := g2FromX(x); ok {
			continue
		}
		b := (&gb.G2Affine{X: x, Y: gb.E2{}}).Bytes() // Y = 0: flag 0x80 (infinity needs X = Y = 0)
		if b[0]&0xe0 != 0x80 {
			t.Fatalf("unexpected flags %x", b[0])
		}
		cases = append(cases, rejectCase{fmt.Sprintf("x = %d + 2u not on the curve", k), bytes.Clone(b[:]), ErrEncoding})
		found++
	}

	for name, p := range offSubgroupG2(t) {
		b := p.Bytes()
		cases = append(cases, rejectCase{"off subgroup " + name, bytes.Clone(b[:]), ErrNotInSubgroup})
		var n gb.G2Affine
		n.Neg(&p)
		nb := n.Bytes()
		cases = append(cases, rejectCase{"off subgroup −(" + name + ")", bytes.Clone(nb[:]), ErrNotInSubgroup})
	}

	for _, c := range cases {
		p, err := DecodeG2(c.in)
		wantTyped(t, c.name, err, c.want)
		if err != nil && !p.IsIdentity() {
			t.Errorf("%s: non-zero point returned with an error", c.name)
		}
		circl, gnark := libsAcceptG2(c.in)
		uncompressed := len(c.in) == 2*G2Size && c.in[0]&0x80 == 0
		if (circl || gnark) && c.want != ErrIdentity && !uncompressed {
			t.Errorf("%s: a library accepts it (circl %v, gnark %v)", c.name, circl, gnark)
		}
		if c.want == ErrIdentity && (!circl || !gnark) {
			t.Errorf("%s: a library rejects the identity (circl %v, gnark %v)", c.name, circl, gnark)
		}
	}
}

func TestDecodeScalarReject(t *testing.T) {
	cases := []rejectCase{
		{"zero", make([]byte, ScalarSize), ErrZeroScalar},
		{"r", pad32(rBig), ErrEncoding},
		{"r+1", pad32(new(big.Int).Add(rBig, big.NewInt(1))), ErrEncoding},
		{"2r", pad32(new(big.Int).Lsh(rBig, 1)), ErrEncoding},
		{"2^255", pad32(new(big.Int).Lsh(big.NewInt(1), 255)), ErrEncoding},
		{"all 0xff", bytes.Repeat([]byte{0xff}, ScalarSize), ErrEncoding},
		{"empty", nil, ErrEncoding},
		{"31 bytes", pad32(big.NewInt(1))[1:], ErrEncoding},
		{"33 bytes", append([]byte{0}, pad32(big.NewInt(1))...), ErrEncoding},
		{"33 bytes of r-1", append([]byte{0}, pad32(rMinus(1))...), ErrEncoding},
		{"64 bytes", make([]byte, 64), ErrEncoding},
	}
	for _, c := range cases {
		s, err := DecodeScalar(c.in)
		wantTyped(t, "DecodeScalar "+c.name, err, c.want)
		if s != nil {
			t.Errorf("DecodeScalar %s: non-nil scalar with an error", c.name)
		}
		s, err = DecodeScalarOrZero(c.in)
		if c.want == ErrZeroScalar {
			if err != nil || !s.IsZero() {
				t.Errorf("DecodeScalarOrZero(0) = %v, %v", s, err)
			}
			continue
		}
		wantTyped(t, "DecodeScalarOrZero "+c.name, err, c.want)
		if s != nil {
			t.Errorf("DecodeScalarOrZero %s: non-nil scalar with an error", c.name)
		}
	}
	// The largest accepted value.
	if _, err := DecodeScalar(pad32(rMinus(1))); err != nil {
		t.Errorf("r−1 rejected: %v", err)
	}
}
