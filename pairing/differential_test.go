package pairing

// Differential tests: every operation of the API is recomputed directly with
// both circl and gnark-crypto, and the results must agree byte for byte.
// Inputs are edge values plus random ones drawn from a seeded ChaCha8 stream
// (reproducible: the seed is the test name) and from crypto/rand (the failing
// input is printed in hex).
//
// The tests live in package pairing so that points can be built in a chosen
// library form (gnark-crypto only, circl only, or both), which makes every
// lazy conversion path run.

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fp"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fr"
)

// ---------------------------------------------------------------------------
// Shared helpers (also used by decode_test.go, rfc9380_test.go, fuzz_test.go
// and bench_test.go).

var (
	rBig = new(big.Int).SetBytes(cb.Order()) // group order r
	pBig = fp.Modulus()                      // field modulus p
)

// rMinus returns r − k.
func rMinus(k int64) *big.Int { return new(big.Int).Sub(rBig, big.NewInt(k)) }

// pad32 returns v as 32 big-endian bytes.
func pad32(v *big.Int) []byte { return v.FillBytes(make([]byte, ScalarSize)) }

// mustHex decodes a hex string or fails the test.
func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// newRNG returns a ChaCha8 stream seeded from the test name, so a failure
// reproduces with the same -run pattern.
func newRNG(t testing.TB) *rand.ChaCha8 {
	return rand.NewChaCha8(sha256.Sum256([]byte("milagro/pairing tests: " + t.Name())))
}

// source is a named randomness source for test inputs.
type source struct {
	name string
	r    io.Reader
}

// sources returns the seeded stream and crypto/rand.
func sources(t testing.TB) []source {
	return []source{{"seeded", newRNG(t)}, {"crypto", crand.Reader}}
}

// iters scales a random-iteration count down under -short.
func iters(n int) int {
	if testing.Short() {
		return max(1, n/4)
	}
	return n
}

// randBig returns a uniform value in [0, r−1] read from src.
func randBig(t testing.TB, src io.Reader) *big.Int {
	t.Helper()
	var b [64]byte
	if _, err := io.ReadFull(src, b[:]); err != nil {
		t.Fatal(err)
	}
	return new(big.Int).Mod(new(big.Int).SetBytes(b[:]), rBig)
}

// randBytes returns n bytes read from src.
func randBytes(t testing.TB, src io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(src, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// scalarOf converts v ∈ [0, r−1] to a Scalar through the checked decoder.
func scalarOf(t testing.TB, v *big.Int) *Scalar {
	t.Helper()
	s, err := DecodeScalarOrZero(pad32(v))
	if err != nil {
		t.Fatalf("DecodeScalarOrZero(%x): %v", pad32(v), err)
	}
	return s
}

// circlScalar converts v ∈ [0, r−1] to a circl scalar.
func circlScalar(t testing.TB, v *big.Int) *cb.Scalar {
	t.Helper()
	var s cb.Scalar
	if err := s.UnmarshalBinary(pad32(v)); err != nil {
		t.Fatalf("circl scalar %x: %v", pad32(v), err)
	}
	return &s
}

type scalarCase struct {
	name string
	v    *big.Int
}

// edgeScalars are the scalars every multiplication is tried with.
func edgeScalars() []scalarCase {
	pow := func(n uint) *big.Int { return new(big.Int).Lsh(big.NewInt(1), n) }
	half := new(big.Int).Rsh(rBig, 1)
	return []scalarCase{
		{"0", big.NewInt(0)},
		{"1", big.NewInt(1)},
		{"2", big.NewInt(2)},
		{"3", big.NewInt(3)},
		{"7", big.NewInt(7)},
		{"255", big.NewInt(255)},
		{"2^64-1", new(big.Int).Sub(pow(64), big.NewInt(1))},
		{"2^128", pow(128)},
		{"(r-1)/2", half},
		{"(r+1)/2", new(big.Int).Add(half, big.NewInt(1))},
		{"2^254", pow(254)},
		{"r-2", rMinus(2)},
		{"r-1", rMinus(1)},
	}
}

// g1Ref is one G1 point held in both libraries, computed independently of
// the package under test.
type g1Ref struct {
	g gb.G1Affine
	c cb.G1
}

// g1RefOf builds the circl twin of a gnark-crypto point from its compressed
// encoding (circl's checked decoder).
func g1RefOf(t testing.TB, p gb.G1Affine) g1Ref {
	t.Helper()
	var c cb.G1
	b := p.Bytes()
	if err := c.SetBytes(b[:]); err != nil {
		t.Fatalf("circl rejects gnark-crypto G1 %x: %v", b, err)
	}
	return g1Ref{g: p, c: c}
}

// bytes returns the compressed encoding, after checking that both libraries
// encode the point identically.
func (r g1Ref) bytes(t testing.TB) []byte {
	t.Helper()
	gbs := r.g.Bytes()
	cbs := r.c.BytesCompressed()
	if !bytes.Equal(gbs[:], cbs) {
		t.Fatalf("libraries disagree on a G1 point:\n gnark %x\n circl %x", gbs, cbs)
	}
	return cbs
}

// forms lists the library forms a G1 value of the package can take.
var forms = []string{"gnark", "circl", "both"}

// as returns r as a package G1 in the given library form.
func (r g1Ref) as(form string) G1 {
	switch form {
	case "gnark":
		return g1FromGnark(r.g)
	case "circl":
		return g1FromCircl(r.c)
	case "both":
		return G1{g: r.g, c: r.c, hasG: true, hasC: true}
	}
	panic("unknown form " + form)
}

func g1Add(t testing.TB, a, b g1Ref) g1Ref {
	var ja, jb gb.G1Jac
	ja.FromAffine(&a.g)
	jb.FromAffine(&b.g)
	ja.AddAssign(&jb)
	var g gb.G1Affine
	g.FromJacobian(&ja)
	var c cb.G1
	c.Add(&a.c, &b.c)
	r := g1Ref{g: g, c: c}
	r.bytes(t) // the libraries must agree
	return r
}

func g1Mul(t testing.TB, k *big.Int, a g1Ref) g1Ref {
	var j gb.G1Jac
	j.FromAffine(&a.g)
	j.ScalarMultiplication(&j, k)
	var g gb.G1Affine
	g.FromJacobian(&j)
	var c cb.G1
	c.ScalarMult(circlScalar(t, k), &a.c)
	r := g1Ref{g: g, c: c}
	r.bytes(t)
	return r
}

func g1Neg(t testing.TB, a g1Ref) g1Ref {
	var g gb.G1Affine
	g.Neg(&a.g)
	c := a.c
	c.Neg()
	r := g1Ref{g: g, c: c}
	r.bytes(t)
	return r
}

func g1Identity(t testing.TB) g1Ref { return g1RefOf(t, gb.G1Affine{}) }

func g1Generator(t testing.TB) g1Ref {
	_, _, g, _ := gb.Generators()
	r := g1RefOf(t, g)
	if !r.c.IsEqual(cb.G1Generator()) {
		t.Fatal("libraries disagree on the G1 generator")
	}
	return r
}

// g2Ref is the G2 analogue of g1Ref.
type g2Ref struct {
	g gb.G2Affine
	c cb.G2
}

func g2RefOf(t testing.TB, p gb.G2Affine) g2Ref {
	t.Helper()
	var c cb.G2
	b := p.Bytes()
	if err := c.SetBytes(b[:]); err != nil {
		t.Fatalf("circl rejects gnark-crypto G2 %x: %v", b, err)
	}
	return g2Ref{g: p, c: c}
}

func (r g2Ref) bytes(t testing.TB) []byte {
	t.Helper()
	gbs := r.g.Bytes()
	cbs := r.c.BytesCompressed()
	if !bytes.Equal(gbs[:], cbs) {
		t.Fatalf("libraries disagree on a G2 point:\n gnark %x\n circl %x", gbs, cbs)
	}
	return cbs
}

func (r g2Ref) as(form string) G2 {
	switch form {
	case "gnark":
		return g2FromGnark(r.g)
	case "circl":
		return g2FromCircl(r.c)
	case "both":
		return G2{g: r.g, c: r.c, hasG: true, hasC: true}
	}
	panic("unknown form " + form)
}

func g2Add(t testing.TB, a, b g2Ref) g2Ref {
	var ja, jb gb.G2Jac
	ja.FromAffine(&a.g)
	jb.FromAffine(&b.g)
	ja.AddAssign(&jb)
	var g gb.G2Affine
	g.FromJacobian(&ja)
	var c cb.G2
	c.Add(&a.c, &b.c)
	r := g2Ref{g: g, c: c}
	r.bytes(t)
	return r
}

func g2Mul(t testing.TB, k *big.Int, a g2Ref) g2Ref {
	var j gb.G2Jac
	j.FromAffine(&a.g)
	j.ScalarMultiplication(&j, k)
	var g gb.G2Affine
	g.FromJacobian(&j)
	var c cb.G2
	c.ScalarMult(circlScalar(t, k), &a.c)
	r := g2Ref{g: g, c: c}
	r.bytes(t)
	return r
}

func g2Neg(t testing.TB, a g2Ref) g2Ref {
	var g gb.G2Affine
	g.Neg(&a.g)
	c := a.c
	c.Neg()
	r := g2Ref{g: g, c: c}
	r.bytes(t)
	return r
}

func g2Identity(t testing.TB) g2Ref { return g2RefOf(t, gb.G2Affine{}) }

func g2Generator(t testing.TB) g2Ref {
	_, _, _, q := gb.Generators()
	r := g2RefOf(t, q)
	if !r.c.IsEqual(cb.G2Generator()) {
		t.Fatal("libraries disagree on the G2 generator")
	}
	return r
}

// specGT encodes a gnark-crypto GT element as PROTOCOL.md §2 says, straight
// from the tower coefficients (independent of reversePieces).
func specGT(z *gb.GT) []byte {
	coeffs := []fp.Element{
		z.C0.B0.A0, z.C0.B0.A1, z.C0.B1.A0, z.C0.B1.A1, z.C0.B2.A0, z.C0.B2.A1,
		z.C1.B0.A0, z.C1.B0.A1, z.C1.B1.A0, z.C1.B1.A1, z.C1.B2.A0, z.C1.B2.A1,
	}
	var out []byte
	for _, c := range coeffs {
		b := c.Bytes()
		out = append(out, b[:]...)
	}
	return out
}

// reverse48 reverses the order of the 48-byte pieces of b.
func reverse48(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for i := len(b) - 48; i >= 0; i -= 48 {
		out = append(out, b[i:i+48]...)
	}
	return out
}

// gtRef is one GT element held in both libraries.
type gtRef struct {
	g gb.GT
	c cb.Gt
}

// bytes checks that the spec encoding derived from gnark's coefficients,
// from gnark's Bytes() and from circl's MarshalBinary all agree, and
// returns it.
func (r gtRef) bytes(t testing.TB) []byte {
	t.Helper()
	spec := specGT(&r.g)
	gbs := r.g.Bytes()
	cbs, err := r.c.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(reverse48(gbs[:]), spec) {
		t.Fatal("gnark GT.Bytes reversed piecewise is not the tower order of PROTOCOL.md §2")
	}
	if !bytes.Equal(reverse48(cbs), spec) {
		t.Fatalf("circl Gt.MarshalBinary reversed piecewise differs from gnark:\n circl %x\n spec  %x", reverse48(cbs), spec)
	}
	return spec
}

func gtPair(t testing.TB, p g1Ref, q g2Ref) gtRef {
	t.Helper()
	g, err := gb.Pair([]gb.G1Affine{p.g}, []gb.G2Affine{q.g})
	if err != nil {
		t.Fatal(err)
	}
	r := gtRef{g: g, c: *cb.Pair(&p.c, &q.c)}
	r.bytes(t)
	return r
}

func (r gtRef) as(form string) GT {
	switch form {
	case "gnark":
		return GT{g: r.g, hasG: true}
	case "circl":
		return GT{c: r.c, hasC: true}
	case "both":
		return GT{g: r.g, c: r.c, hasG: true, hasC: true}
	}
	panic("unknown form " + form)
}

// eqBytes fails the test if got != want.
func eqBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\n got  %x\n want %x", what, got, want)
	}
}

// ---------------------------------------------------------------------------
// Scalars

func TestScalarArithmetic(t *testing.T) {
	var vals []*big.Int
	for _, e := range edgeScalars() {
		vals = append(vals, e.v)
	}
	for _, src := range sources(t) {
		for range iters(16) {
			vals = append(vals, randBig(t, src.r))
		}
	}
	mod := func(v *big.Int) []byte { return pad32(new(big.Int).Mod(v, rBig)) }
	for _, a := range vals {
		sa := scalarOf(t, a)
		ab := sa.Bytes()
		eqBytes(t, "Bytes round trip", ab[:], pad32(a))
		if sa.IsZero() != (a.Sign() == 0) {
			t.Errorf("IsZero(%x) = %v", pad32(a), sa.IsZero())
		}
		n := new(Scalar).Neg(sa)
		nb := n.Bytes()
		eqBytes(t, fmt.Sprintf("Neg(%x)", pad32(a)), nb[:], mod(new(big.Int).Neg(a)))
		if a.Sign() != 0 && n.Equal(sa) {
			t.Errorf("Neg(%x) equals its input", pad32(a))
		}
		cp := new(Scalar).Set(sa)
		if !cp.Equal(sa) {
			t.Errorf("Set/Equal(%x)", pad32(a))
		}
		for _, b := range vals {
			sb := scalarOf(t, b)
			for _, op := range []struct {
				name string
				got  func() *Scalar
				want *big.Int
			}{
				{"Add", func() *Scalar { return new(Scalar).Add(sa, sb) }, new(big.Int).Add(a, b)},
				{"Sub", func() *Scalar { return new(Scalar).Sub(sa, sb) }, new(big.Int).Sub(a, b)},
				{"Mul", func() *Scalar { return new(Scalar).Mul(sa, sb) }, new(big.Int).Mul(a, b)},
			} {
				got := op.got().Bytes()
				if !bytes.Equal(got[:], mod(op.want)) {
					t.Errorf("%s(%x, %x) = %x, want %x", op.name, pad32(a), pad32(b), got, mod(op.want))
				}
			}
			if sa.Equal(sb) != (a.Cmp(b) == 0) {
				t.Errorf("Equal(%x, %x) = %v", pad32(a), pad32(b), sa.Equal(sb))
			}
		}
	}

	// Results may alias their operands.
	a, b := scalarOf(t, rMinus(1)), scalarOf(t, big.NewInt(5))
	a.Add(a, b)
	if got := a.Bytes(); !bytes.Equal(got[:], pad32(big.NewInt(4))) {
		t.Errorf("aliased Add = %x, want 4", got)
	}
	a.Mul(a, a)
	if got := a.Bytes(); !bytes.Equal(got[:], pad32(big.NewInt(16))) {
		t.Errorf("aliased Mul = %x, want 16", got)
	}

	// Zeroize.
	a.Zeroize()
	if !a.IsZero() {
		t.Error("Zeroize left a non-zero scalar")
	}

	// ScalarFromUint64 and Order.
	for _, n := range []uint64{0, 1, 2, 1234, 1<<63 + 5, ^uint64(0)} {
		got := ScalarFromUint64(n).Bytes()
		eqBytes(t, fmt.Sprintf("ScalarFromUint64(%d)", n), got[:], mod(new(big.Int).SetUint64(n)))
	}
	o := Order()
	if new(big.Int).SetBytes(o[:]).Cmp(rBig) != 0 ||
		rBig.Text(16) != "73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001" {
		t.Errorf("Order() = %x", o)
	}
	if new(big.Int).SetBytes(o[:]).Cmp(fr.Modulus()) != 0 {
		t.Error("circl and gnark-crypto disagree on r")
	}
}

func TestDecodeScalarValid(t *testing.T) {
	vals := []*big.Int{big.NewInt(1), big.NewInt(2), rMinus(2), rMinus(1), new(big.Int).Lsh(big.NewInt(1), 254)}
	for _, src := range sources(t) {
		for range iters(32) {
			vals = append(vals, randBig(t, src.r))
		}
	}
	for _, v := range vals {
		b := pad32(v)
		s, err := DecodeScalar(b)
		if v.Sign() == 0 {
			if !errors.Is(err, ErrZeroScalar) {
				t.Errorf("DecodeScalar(0) error %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("DecodeScalar(%x): %v", b, err)
		}
		got := s.Bytes()
		eqBytes(t, "DecodeScalar round trip", got[:], b)
		// circl agrees.
		var cs cb.Scalar
		if err := cs.UnmarshalBinary(b); err != nil {
			t.Errorf("circl rejects %x: %v", b, err)
		}
	}
}

func TestReduceScalar(t *testing.T) {
	ff := func(n int) []byte { return bytes.Repeat([]byte{0xff}, n) }
	padTo := func(v *big.Int, n int) []byte { return v.FillBytes(make([]byte, n)) }
	cases := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"one zero byte", []byte{0}},
		{"1", []byte{1}},
		{"32 zeros", make([]byte, 32)},
		{"r", pad32(rBig)},
		{"r-1", pad32(rMinus(1))},
		{"r+1", pad32(new(big.Int).Add(rBig, big.NewInt(1)))},
		{"2r", pad32(new(big.Int).Lsh(rBig, 1))},
		{"r in 48 bytes", padTo(rBig, 48)},
		{"r^2 in 64 bytes", padTo(new(big.Int).Mul(rBig, rBig), 64)},
		{"ff x31", ff(31)},
		{"ff x32", ff(32)},
		{"ff x33", ff(33)},
		{"ff x48", ff(48)},
		{"ff x64", ff(64)},
		{"ff x100", ff(100)},
	}
	for _, src := range sources(t) {
		for _, n := range []int{1, 16, 31, 32, 33, 47, 48, 63, 64, 65, 96, 200} {
			cases = append(cases, struct {
				name string
				in   []byte
			}{fmt.Sprintf("%s %d bytes", src.name, n), randBytes(t, src.r, n)})
		}
	}
	for _, c := range cases {
		want := pad32(new(big.Int).Mod(new(big.Int).SetBytes(c.in), rBig))
		got := ReduceScalar(c.in).Bytes()
		if !bytes.Equal(got[:], want) {
			t.Errorf("ReduceScalar(%s: %x) = %x, want %x", c.name, c.in, got, want)
		}
	}
}

// seqReader yields its chunks in order, then EOF.
type seqReader struct {
	chunks [][]byte
	read   int
}

func (r *seqReader) Read(p []byte) (int, error) {
	for len(r.chunks) > 0 && len(r.chunks[0]) == 0 {
		r.chunks = r.chunks[1:]
	}
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0])
	r.chunks[0] = r.chunks[0][n:]
	r.read += n
	return n, nil
}

func seq(chunks ...[]byte) *seqReader {
	cp := make([][]byte, len(chunks))
	for i, c := range chunks {
		cp[i] = bytes.Clone(c)
	}
	return &seqReader{chunks: cp}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// oneByteReader returns its data one byte per call (RandomScalar must use
// io.ReadFull, not a single Read).
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func TestRandomScalar(t *testing.T) {
	t.Run("range", func(t *testing.T) {
		seen := map[[ScalarSize]byte]bool{}
		for _, src := range sources(t) {
			for range iters(200) {
				s, err := RandomScalar(src.r)
				if err != nil {
					t.Fatal(err)
				}
				b := s.Bytes()
				v := new(big.Int).SetBytes(b[:])
				if v.Sign() == 0 || v.Cmp(rBig) >= 0 {
					t.Fatalf("RandomScalar out of [1, r-1]: %x", b)
				}
				if seen[b] {
					t.Fatalf("RandomScalar repeated %x", b)
				}
				seen[b] = true
			}
		}
	})

	high := pad32(rMinus(1))
	high[0] |= 0x80 // r−1 with the top bit set: cleared, it is r−1
	r1 := new(big.Int).Add(rBig, big.NewInt(1))
	random := pad32(randBig(t, newRNG(t)))
	cases := []struct {
		name     string
		in       [][]byte
		want     []byte // nil: an error is expected
		consumed int
	}{
		{"1", [][]byte{pad32(big.NewInt(1))}, pad32(big.NewInt(1)), 32},
		{"r-1", [][]byte{pad32(rMinus(1))}, pad32(rMinus(1)), 32},
		{"r-2", [][]byte{pad32(rMinus(2))}, pad32(rMinus(2)), 32},
		{"random canonical", [][]byte{random}, random, 32},
		{"top bit is cleared", [][]byte{high}, pad32(rMinus(1)), 32},
		{"skip zero", [][]byte{make([]byte, 32), pad32(big.NewInt(7))}, pad32(big.NewInt(7)), 64},
		{"skip 0x80 00..00 (zero after clearing)", [][]byte{append([]byte{0x80}, make([]byte, 31)...), pad32(big.NewInt(9))}, pad32(big.NewInt(9)), 64},
		{"skip r, r+1, all ff", [][]byte{pad32(rBig), pad32(r1), bytes.Repeat([]byte{0xff}, 32), pad32(big.NewInt(11))}, pad32(big.NewInt(11)), 128},
		{"skip 2^255-1 after clearing", [][]byte{bytes.Repeat([]byte{0x7f}, 1), bytes.Repeat([]byte{0xff}, 31), pad32(rMinus(1))}, pad32(rMinus(1)), 64},
		{"empty reader", nil, nil, 0},
		{"short reader", [][]byte{make([]byte, 31)}, nil, 31},
		{"short after a rejected value", [][]byte{pad32(rBig), make([]byte, 10)}, nil, 42},
		{"only out-of-range values", [][]byte{bytes.Repeat([]byte{0xff}, 32*256)}, nil, 32 * 256},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := seq(c.in...)
			s, err := RandomScalar(in)
			if c.want == nil {
				if err == nil {
					t.Fatalf("no error, got %x", s.Bytes())
				}
				if s != nil {
					t.Error("non-nil scalar with an error")
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				got := s.Bytes()
				eqBytes(t, "scalar", got[:], c.want)
			}
			if in.read != c.consumed {
				t.Errorf("consumed %d bytes, want %d", in.read, c.consumed)
			}
		})
	}

	t.Run("one byte per Read", func(t *testing.T) {
		want := pad32(rMinus(5))
		s, err := RandomScalar(oneByteReader{bytes.NewReader(want)})
		if err != nil {
			t.Fatal(err)
		}
		got := s.Bytes()
		eqBytes(t, "scalar", got[:], want)
	})

	t.Run("reader error is wrapped", func(t *testing.T) {
		sentinel := errors.New("entropy source broken")
		if _, err := RandomScalar(errReader{sentinel}); !errors.Is(err, sentinel) {
			t.Fatalf("error %v does not wrap the reader's error", err)
		}
	})
}

// ---------------------------------------------------------------------------
// G1

// g1Points returns named G1 test points: generator, its negation and double,
// hashed and random points; identity last.
func g1Points(t testing.TB, nRandom int) []struct {
	name string
	p    g1Ref
} {
	gen := g1Generator(t)
	h, err := gb.EncodeToG1([]byte("point"), []byte("milagro test DST"))
	if err != nil {
		t.Fatal(err)
	}
	pts := []struct {
		name string
		p    g1Ref
	}{
		{"G", gen},
		{"-G", g1Neg(t, gen)},
		{"2G", g1Add(t, gen, gen)},
		{"(r-1)G", g1Mul(t, rMinus(1), gen)},
		{"hashed", g1RefOf(t, h)},
	}
	for _, src := range sources(t) {
		for i := range nRandom {
			k := randBig(t, src.r)
			pts = append(pts, struct {
				name string
				p    g1Ref
			}{fmt.Sprintf("%s#%d k=%x", src.name, i, pad32(k)), g1Mul(t, k, gen)})
		}
	}
	return append(pts, struct {
		name string
		p    g1Ref
	}{"O", g1Identity(t)})
}

func TestDecodeG1Valid(t *testing.T) {
	for _, pt := range g1Points(t, iters(32)) {
		b := pt.p.bytes(t)
		p, err := DecodeG1(b)
		if pt.name == "O" {
			if !errors.Is(err, ErrIdentity) {
				t.Errorf("DecodeG1(identity) error %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: DecodeG1(%x): %v", pt.name, b, err)
		}
		// Both libraries' checked decoders accept the same bytes.
		var c cb.G1
		if err := c.SetBytes(b); err != nil {
			t.Errorf("%s: circl rejects %x: %v", pt.name, b, err)
		}
		var g gb.G1Affine
		if n, err := g.SetBytes(b); err != nil || n != G1Size {
			t.Errorf("%s: gnark-crypto rejects %x: %d, %v", pt.name, b, n, err)
		}
		got := p.Bytes()
		eqBytes(t, pt.name+": re-encoding", got[:], b)
		if !p.Equal(pt.p.as("circl")) || p.IsIdentity() {
			t.Errorf("%s: Equal/IsIdentity", pt.name)
		}
	}
}

func TestG1Encoding(t *testing.T) {
	pts := g1Points(t, iters(4))
	for _, pt := range pts {
		want := pt.p.bytes(t)
		for _, f := range forms {
			p := pt.p.as(f)
			got := p.Bytes()
			eqBytes(t, pt.name+" "+f+": Bytes", got[:], want)
			if p.IsIdentity() != (pt.name == "O") {
				t.Errorf("%s %s: IsIdentity = %v", pt.name, f, p.IsIdentity())
			}
			for _, qt := range pts {
				same := bytes.Equal(want, qt.p.bytes(t))
				if p.Equal(qt.p.as("gnark")) != same {
					t.Errorf("%s %s: Equal(%s) = %v", pt.name, f, qt.name, !same)
				}
			}
		}
	}
	// The zero value is the identity.
	var z G1
	zb := z.Bytes()
	eqBytes(t, "zero value", zb[:], g1Identity(t).bytes(t))
	if !z.IsIdentity() || !z.Equal(g1Identity(t).as("circl")) {
		t.Error("zero value G1 is not the identity")
	}
	gen := G1Generator()
	gb1 := gen.Bytes()
	eqBytes(t, "G1Generator", gb1[:], g1Generator(t).bytes(t))
}

func TestG1Add(t *testing.T) {
	pts := g1Points(t, iters(3))
	for _, a := range pts {
		for _, b := range pts {
			want := g1Add(t, a.p, b.p).bytes(t)
			for _, fa := range forms {
				for _, fb := range forms {
					name := fmt.Sprintf("%s(%s) + %s(%s)", a.name, fa, b.name, fb)
					pub := AddPublic(a.p.as(fa), b.p.as(fb)).Bytes()
					eqBytes(t, "AddPublic "+name, pub[:], want)
					sec := AddSecret(a.p.as(fa), b.p.as(fb)).Bytes()
					eqBytes(t, "AddSecret "+name, sec[:], want)
				}
			}
		}
	}
	// The edge relations hold explicitly, not only "as the libraries say".
	g := g1Generator(t)
	for _, f := range forms {
		if !AddSecret(g.as(f), g.as(f).Neg()).IsIdentity() || !AddPublic(g.as(f), g.as(f).Neg()).IsIdentity() {
			t.Errorf("%s: G + (−G) is not the identity", f)
		}
		two := AddPublic(g.as(f), g.as(f))
		if !two.Equal(MulSecret(ScalarFromUint64(2), g.as(f))) || !two.Equal(AddSecret(g.as(f), g.as(f))) {
			t.Errorf("%s: G + G != 2·G", f)
		}
		var z G1
		if !AddSecret(z, g.as(f)).Equal(g.as(f)) || !AddPublic(g.as(f), z).Equal(g.as(f)) {
			t.Errorf("%s: O + G != G with the zero value", f)
		}
	}
}

func TestG1Neg(t *testing.T) {
	for _, a := range g1Points(t, iters(4)) {
		want := g1Neg(t, a.p).bytes(t)
		for _, f := range forms {
			got := a.p.as(f).Neg().Bytes()
			eqBytes(t, a.name+" "+f+": Neg", got[:], want)
			back := a.p.as(f).Neg().Neg().Bytes()
			eqBytes(t, a.name+" "+f+": Neg∘Neg", back[:], a.p.bytes(t))
		}
	}
	var z G1
	if nb := z.Neg().Bytes(); !bytes.Equal(nb[:], g1Identity(t).bytes(t)) {
		t.Error("−O != O")
	}
}

func TestG1Mul(t *testing.T) {
	scalars := edgeScalars()
	for _, src := range sources(t) {
		for i := range iters(10) {
			k := randBig(t, src.r)
			scalars = append(scalars, scalarCase{fmt.Sprintf("%s#%d %x", src.name, i, pad32(k)), k})
		}
	}
	pts := g1Points(t, 1)
	for _, sc := range scalars {
		k := scalarOf(t, sc.v)
		for _, pt := range pts {
			want := g1Mul(t, sc.v, pt.p).bytes(t)
			for _, f := range forms {
				name := fmt.Sprintf("%s·%s(%s)", sc.name, pt.name, f)
				pub := MulPublic(k, pt.p.as(f)).Bytes()
				eqBytes(t, "MulPublic "+name, pub[:], want)
				sec := MulSecret(k, pt.p.as(f)).Bytes()
				eqBytes(t, "MulSecret "+name, sec[:], want)
			}
		}
	}
	// The zero value is the identity.
	for _, sc := range scalars[:3] {
		var z G1
		k := scalarOf(t, sc.v)
		if !MulPublic(k, z).IsIdentity() || !MulSecret(k, z).IsIdentity() {
			t.Errorf("%s·(zero value) is not the identity", sc.name)
		}
	}
	// k·G for k = 0, 1, r−1 explicitly.
	g := g1Generator(t)
	if !MulSecret(ScalarFromUint64(0), g.as("gnark")).IsIdentity() || !MulPublic(ScalarFromUint64(0), g.as("circl")).IsIdentity() {
		t.Error("0·G != O")
	}
	if !MulSecret(ScalarFromUint64(1), g.as("gnark")).Equal(g.as("circl")) {
		t.Error("1·G != G")
	}
	rm1 := scalarOf(t, rMinus(1))
	if !MulSecret(rm1, g.as("gnark")).Equal(g.as("gnark").Neg()) || !MulPublic(rm1, g.as("circl")).Equal(g.as("circl").Neg()) {
		t.Error("(r−1)·G != −G")
	}
}

// TestG1Conversions runs chains that cross between the libraries several
// times, compares each step with a reference computed in gnark-crypto alone,
// and checks Cached.
func TestG1Conversions(t *testing.T) {
	rng := newRNG(t)
	g := g1Generator(t)
	for i := range iters(16) {
		a, b := randBig(t, rng), randBig(t, rng)
		ka, kb := scalarOf(t, a), scalarOf(t, b)
		// circl-made point used in gnark arithmetic and back.
		p := MulSecret(ka, G1Generator())               // circl
		q := MulPublic(kb, p)                           // gnark, converted from circl
		r := AddSecret(q, p)                            // circl, converted from gnark
		s := AddPublic(r, MulSecret(ka, g.as("gnark"))) // gnark
		// Reference: ((b+1)·a + a)·G.
		want := new(big.Int).Mul(a, new(big.Int).Add(b, big.NewInt(2)))
		want.Mod(want, rBig)
		ref := g1Mul(t, want, g).bytes(t)
		got := s.Bytes()
		eqBytes(t, fmt.Sprintf("chain %d", i), got[:], ref)

		for _, x := range []G1{p, q, r, s} {
			c := x.Cached()
			if !c.hasG || !c.hasC {
				t.Fatalf("Cached did not fill both forms: %v %v", c.hasG, c.hasC)
			}
			xb, cb1 := x.Bytes(), c.Bytes()
			eqBytes(t, "Cached bytes", cb1[:], xb[:])
			gnb := c.g.Bytes()
			eqBytes(t, "Cached gnark form", gnb[:], xb[:])
			eqBytes(t, "Cached circl form", c.c.BytesCompressed(), xb[:])
			if c2 := c.Cached(); c2 != c {
				t.Error("Cached of a cached point changed it")
			}
		}
	}
	// The identity converts in both directions.
	for _, f := range forms {
		o := g1Identity(t).as(f)
		c := o.Cached()
		if !c.IsIdentity() || !c.c.IsIdentity() || !c.g.IsInfinity() {
			t.Errorf("%s identity did not convert to the identity", f)
		}
	}
	var z G1
	if c := z.Cached(); !c.c.IsIdentity() || !c.g.IsInfinity() {
		t.Error("zero value did not convert to the identity")
	}
}

// ---------------------------------------------------------------------------
// G2

func g2Points(t testing.TB, nRandom int) []struct {
	name string
	p    g2Ref
} {
	gen := g2Generator(t)
	h, err := gb.HashToG2([]byte("point"), []byte("milagro test DST"))
	if err != nil {
		t.Fatal(err)
	}
	pts := []struct {
		name string
		p    g2Ref
	}{
		{"Q", gen},
		{"-Q", g2Neg(t, gen)},
		{"2Q", g2Add(t, gen, gen)},
		{"hashed", g2RefOf(t, h)},
	}
	for _, src := range sources(t) {
		for i := range nRandom {
			k := randBig(t, src.r)
			pts = append(pts, struct {
				name string
				p    g2Ref
			}{fmt.Sprintf("%s#%d k=%x", src.name, i, pad32(k)), g2Mul(t, k, gen)})
		}
	}
	return append(pts, struct {
		name string
		p    g2Ref
	}{"O", g2Identity(t)})
}

func TestDecodeG2Valid(t *testing.T) {
	for _, pt := range g2Points(t, iters(16)) {
		b := pt.p.bytes(t)
		p, err := DecodeG2(b)
		if pt.name == "O" {
			if !errors.Is(err, ErrIdentity) {
				t.Errorf("DecodeG2(identity) error %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: DecodeG2(%x): %v", pt.name, b, err)
		}
		var c cb.G2
		if err := c.SetBytes(b); err != nil {
			t.Errorf("%s: circl rejects %x: %v", pt.name, b, err)
		}
		var g gb.G2Affine
		if n, err := g.SetBytes(b); err != nil || n != G2Size {
			t.Errorf("%s: gnark-crypto rejects %x: %d, %v", pt.name, b, n, err)
		}
		got := p.Bytes()
		eqBytes(t, pt.name+": re-encoding", got[:], b)
		if !p.Equal(pt.p.as("circl")) || p.IsIdentity() {
			t.Errorf("%s: Equal/IsIdentity", pt.name)
		}
	}
}

func TestG2Ops(t *testing.T) {
	pts := g2Points(t, 1)
	for _, a := range pts {
		want := a.p.bytes(t)
		negWant := g2Neg(t, a.p).bytes(t)
		for _, f := range forms {
			p := a.p.as(f)
			got := p.Bytes()
			eqBytes(t, a.name+" "+f+": Bytes", got[:], want)
			if p.IsIdentity() != (a.name == "O") {
				t.Errorf("%s %s: IsIdentity", a.name, f)
			}
			neg := p.Neg().Bytes()
			eqBytes(t, a.name+" "+f+": Neg", neg[:], negWant)
			c := p.Cached()
			cb1 := c.Bytes()
			gnb := c.g.Bytes()
			if !c.hasC || !c.hasG || !bytes.Equal(cb1[:], want) || !bytes.Equal(gnb[:], want) || !bytes.Equal(c.c.BytesCompressed(), want) {
				t.Errorf("%s %s: Cached", a.name, f)
			}
		}
		for _, b := range pts {
			sum := g2Add(t, a.p, b.p).bytes(t)
			for _, fa := range forms {
				for _, fb := range forms {
					got := AddSecretG2(a.p.as(fa), b.p.as(fb)).Bytes()
					eqBytes(t, fmt.Sprintf("AddSecretG2 %s(%s)+%s(%s)", a.name, fa, b.name, fb), got[:], sum)
					if eq := a.p.as(fa).Equal(b.p.as(fb)); eq != bytes.Equal(want, b.p.bytes(t)) {
						t.Errorf("Equal %s(%s), %s(%s) = %v", a.name, fa, b.name, fb, eq)
					}
				}
			}
		}
	}
	scalars := edgeScalars()
	for _, src := range sources(t) {
		for i := range iters(4) {
			k := randBig(t, src.r)
			scalars = append(scalars, scalarCase{fmt.Sprintf("%s#%d %x", src.name, i, pad32(k)), k})
		}
	}
	mulPts := []struct {
		name string
		p    g2Ref
	}{pts[0], pts[3], pts[len(pts)-1]} // Q, hashed, O
	for _, sc := range scalars {
		k := scalarOf(t, sc.v)
		for _, pt := range mulPts {
			want := g2Mul(t, sc.v, pt.p).bytes(t)
			for _, f := range forms {
				got := MulSecretG2(k, pt.p.as(f)).Bytes()
				eqBytes(t, fmt.Sprintf("MulSecretG2 %s·%s(%s)", sc.name, pt.name, f), got[:], want)
			}
		}
	}
	// Explicit edge relations.
	q := G2Generator()
	if !AddSecretG2(q, q.Neg()).IsIdentity() {
		t.Error("Q + (−Q) != O")
	}
	if !AddSecretG2(q, q).Equal(MulSecretG2(ScalarFromUint64(2), q)) {
		t.Error("Q + Q != 2·Q")
	}
	if !MulSecretG2(scalarOf(t, rMinus(1)), q).Equal(q.Neg()) {
		t.Error("(r−1)·Q != −Q")
	}
	var z G2
	zb := z.Bytes()
	eqBytes(t, "zero value G2", zb[:], g2Identity(t).bytes(t))
	if !z.IsIdentity() || !AddSecretG2(z, q).Equal(q) || !z.Neg().IsIdentity() || !MulSecretG2(ScalarFromUint64(5), z).IsIdentity() {
		t.Error("zero value G2 is not the identity")
	}
	if c := z.Cached(); !c.c.IsIdentity() || !c.g.IsInfinity() {
		t.Error("zero value G2 did not convert to the identity")
	}
	qb := q.Bytes()
	eqBytes(t, "G2Generator", qb[:], g2Generator(t).bytes(t))
}

// ---------------------------------------------------------------------------
// Hashing

func TestHashDifferential(t *testing.T) {
	type msgDST struct{ msg, dst []byte }
	inputs := []msgDST{
		{nil, []byte("D")},
		{[]byte("abc"), []byte("BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN")},
		{[]byte("alice@example.com"), []byte("MPINKEX-V01-SERVER-with-BLS12381G2_XMD:SHA-256_SSWU_RO_")},
		{bytes.Repeat([]byte{0}, 300), bytes.Repeat([]byte("x"), MaxDSTLen)},
	}
	for _, src := range sources(t) {
		for range iters(12) {
			var l [2]byte
			if _, err := io.ReadFull(src.r, l[:]); err != nil {
				t.Fatal(err)
			}
			msg := randBytes(t, src.r, int(l[0]))
			dst := randBytes(t, src.r, 1+int(l[1])%MaxDSTLen)
			inputs = append(inputs, msgDST{msg, dst})
		}
	}
	for i, in := range inputs {
		name := fmt.Sprintf("input %d msg=%x dst=%x", i, in.msg, in.dst)

		var c1 cb.G1
		c1.Encode(in.msg, in.dst)
		g1, err := gb.EncodeToG1(in.msg, in.dst)
		if err != nil {
			t.Fatal(err)
		}
		want := g1Ref{g: g1, c: c1}.bytes(t)
		p, err := EncodeToG1(in.msg, in.dst)
		if err != nil {
			t.Fatalf("%s: EncodeToG1: %v", name, err)
		}
		got := p.Bytes()
		eqBytes(t, "EncodeToG1 "+name, got[:], want)

		c1.Hash(in.msg, in.dst)
		if g1, err = gb.HashToG1(in.msg, in.dst); err != nil {
			t.Fatal(err)
		}
		want = g1Ref{g: g1, c: c1}.bytes(t)
		if p, err = HashToG1(in.msg, in.dst); err != nil {
			t.Fatalf("%s: HashToG1: %v", name, err)
		}
		got = p.Bytes()
		eqBytes(t, "HashToG1 "+name, got[:], want)

		var c2 cb.G2
		c2.Hash(in.msg, in.dst)
		g2, err := gb.HashToG2(in.msg, in.dst)
		if err != nil {
			t.Fatal(err)
		}
		want = g2Ref{g: g2, c: c2}.bytes(t)
		q, err := HashToG2(in.msg, in.dst)
		if err != nil {
			t.Fatalf("%s: HashToG2: %v", name, err)
		}
		got2 := q.Bytes()
		eqBytes(t, "HashToG2 "+name, got2[:], want)

		c2.Encode(in.msg, in.dst)
		if g2, err = gb.EncodeToG2(in.msg, in.dst); err != nil {
			t.Fatal(err)
		}
		want = g2Ref{g: g2, c: c2}.bytes(t)
		if q, err = EncodeToG2(in.msg, in.dst); err != nil {
			t.Fatalf("%s: EncodeToG2: %v", name, err)
		}
		got2 = q.Bytes()
		eqBytes(t, "EncodeToG2 "+name, got2[:], want)
	}

	// DST length limits.
	for _, n := range []int{0, MaxDSTLen + 1, 1000} {
		dst := bytes.Repeat([]byte("d"), n)
		if _, err := EncodeToG1(nil, dst); err == nil {
			t.Errorf("EncodeToG1 accepted a %d-byte DST", n)
		}
		if _, err := HashToG1(nil, dst); err == nil {
			t.Errorf("HashToG1 accepted a %d-byte DST", n)
		}
		if _, err := HashToG2(nil, dst); err == nil {
			t.Errorf("HashToG2 accepted a %d-byte DST", n)
		}
		if _, err := EncodeToG2(nil, dst); err == nil {
			t.Errorf("EncodeToG2 accepted a %d-byte DST", n)
		}
	}
	// Hashing depends on both message and DST.
	a, _ := EncodeToG1([]byte("a"), []byte("D"))
	b, _ := EncodeToG1([]byte("b"), []byte("D"))
	c, _ := EncodeToG1([]byte("a"), []byte("E"))
	if a.Equal(b) || a.Equal(c) || a.IsIdentity() {
		t.Error("EncodeToG1 ignores its message or DST")
	}
}

// ---------------------------------------------------------------------------
// Pairings and GT

func TestPairDifferential(t *testing.T) {
	g, q := g1Generator(t), g2Generator(t)
	type pairCase struct {
		name string
		p    g1Ref
		q    g2Ref
	}
	cases := []pairCase{
		{"G,Q", g, q},
		{"-G,Q", g1Neg(t, g), q},
		{"G,-Q", g, g2Neg(t, q)},
		{"O,Q", g1Identity(t), q},
		{"G,O", g, g2Identity(t)},
		{"O,O", g1Identity(t), g2Identity(t)},
	}
	for _, src := range sources(t) {
		for i := range iters(4) {
			a, b := randBig(t, src.r), randBig(t, src.r)
			cases = append(cases, pairCase{fmt.Sprintf("%s#%d a=%x b=%x", src.name, i, pad32(a), pad32(b)), g1Mul(t, a, g), g2Mul(t, b, q)})
		}
	}
	for _, c := range cases {
		ref := gtPair(t, c.p, c.q)
		want := ref.bytes(t)
		identity := c.name == "O,Q" || c.name == "G,O" || c.name == "O,O"
		if identity != ref.g.IsOne() {
			t.Errorf("%s: e = 1 is %v", c.name, ref.g.IsOne())
		}
		for _, f := range forms {
			p, qq := c.p.as(f), c.q.as(f)
			prep := PrepareG2(qq)
			for _, r := range []struct {
				name string
				z    GT
			}{
				{"Pair", Pair(p, qq)},
				{"PairSecret", PairSecret(p, qq)},
				{"PairPrepared", PairPrepared(p, prep)},
				{"PairPrepared again", PairPrepared(p, prep)},
			} {
				got := r.z.Bytes()
				eqBytes(t, fmt.Sprintf("%s(%s) %s", r.name, c.name, f), got[:], want)
				if r.z.IsOne() != identity {
					t.Errorf("%s(%s) %s: IsOne = %v", r.name, c.name, f, r.z.IsOne())
				}
				if !r.z.Equal(ref.as("circl")) || !r.z.Equal(ref.as("gnark")) {
					t.Errorf("%s(%s) %s: Equal", r.name, c.name, f)
				}
			}
			pp := prep.Point()
			ppb, qqb := pp.Bytes(), qq.Bytes()
			eqBytes(t, "Prepared.Point", ppb[:], qqb[:])
		}
	}
	// Bilinearity, checked through ExpSecret: e(aG, bQ) = e(G, Q)^(ab).
	rng := newRNG(t)
	a, b := randBig(t, rng), randBig(t, rng)
	ab := new(big.Int).Mul(a, b)
	ab.Mod(ab, rBig)
	lhs := Pair(MulSecret(scalarOf(t, a), G1Generator()), MulSecretG2(scalarOf(t, b), G2Generator()))
	rhs := Pair(G1Generator(), G2Generator()).ExpSecret(scalarOf(t, ab))
	if !lhs.Equal(rhs) {
		t.Error("e(aG, bQ) != e(G, Q)^(ab)")
	}
	if lhs.Equal(Pair(G1Generator(), G2Generator())) {
		t.Error("e(aG, bQ) == e(G, Q) for random a, b")
	}
}

func TestPairPreparedConcurrent(t *testing.T) {
	rng := newRNG(t)
	q := MulSecretG2(scalarOf(t, randBig(t, rng)), G2Generator())
	prep := PrepareG2(q)
	const workers = 4
	ps := make([]G1, workers)
	want := make([][GTSize]byte, workers)
	for i := range ps {
		ps[i] = MulPublic(scalarOf(t, randBig(t, rng)), G1Generator())
		want[i] = Pair(ps[i], q).Bytes()
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				if got := PairPrepared(ps[i], prep).Bytes(); got != want[i] {
					errs <- fmt.Errorf("worker %d: PairPrepared differs from Pair", i)
					return
				}
			}
			ok, err := CheckPrepared([]G1{ps[i], ps[i].Neg()}, []*G2Prepared{prep, prep})
			if err != nil || !ok {
				errs <- fmt.Errorf("worker %d: CheckPrepared = %v, %v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestPairingChecks(t *testing.T) {
	rng := newRNG(t)
	g, q := g1Generator(t), g2Generator(t)
	a, b := randBig(t, rng), randBig(t, rng)
	aP := g1Mul(t, a, g)
	bP := g1Mul(t, b, g)
	aQ := g2Mul(t, a, q)
	sum := new(big.Int).Add(a, b)
	negSumP := g1Neg(t, g1Mul(t, new(big.Int).Mod(sum, rBig), g))
	a1Q := g2Mul(t, new(big.Int).Mod(new(big.Int).Add(a, big.NewInt(1)), rBig), q)
	o1, o2 := g1Identity(t), g2Identity(t)
	cases := []struct {
		name string
		ps   []g1Ref
		qs   []g2Ref
		want bool
	}{
		{"e(aG,Q)·e(−G,aQ)", []g1Ref{aP, g1Neg(t, g)}, []g2Ref{q, aQ}, true},
		{"e(aG,Q)·e(−G,(a+1)Q)", []g1Ref{aP, g1Neg(t, g)}, []g2Ref{q, a1Q}, false},
		{"e(G,Q)·e(G,−Q)", []g1Ref{g, g}, []g2Ref{q, g2Neg(t, q)}, true},
		{"e(G,Q)·e(G,Q)", []g1Ref{g, g}, []g2Ref{q, q}, false},
		{"e(aG,Q)·e(bG,Q)·e(−(a+b)G,Q)", []g1Ref{aP, bP, negSumP}, []g2Ref{q, q, q}, true},
		{"e(aG,Q)·e(bG,Q)·e(−(a+b)G,aQ)", []g1Ref{aP, bP, negSumP}, []g2Ref{q, q, aQ}, false},
		{"e(G,Q)", []g1Ref{g}, []g2Ref{q}, false},
		{"e(O,Q)", []g1Ref{o1}, []g2Ref{q}, true},
		{"e(G,O)", []g1Ref{g}, []g2Ref{o2}, true},
		{"e(O,Q)·e(G,Q)", []g1Ref{o1, g}, []g2Ref{q, q}, false},
		{"e(O,Q)·e(G,O)", []g1Ref{o1, g}, []g2Ref{q, o2}, true},
	}
	for _, c := range cases {
		// circl: ProdPairFrac with all signs +1.
		cps := make([]*cb.G1, len(c.ps))
		cqs := make([]*cb.G2, len(c.qs))
		gps := make([]gb.G1Affine, len(c.ps))
		gqs := make([]gb.G2Affine, len(c.qs))
		signs := make([]int, len(c.ps))
		for i := range c.ps {
			cps[i], cqs[i], signs[i] = &c.ps[i].c, &c.qs[i].c, 1
			gps[i], gqs[i] = c.ps[i].g, c.qs[i].g
		}
		if got := cb.ProdPairFrac(cps, cqs, signs).IsIdentity(); got != c.want {
			t.Fatalf("%s: circl ProdPairFrac says %v, test expects %v", c.name, got, c.want)
		}
		if got, err := gb.PairingCheck(gps, gqs); err != nil || got != c.want {
			t.Fatalf("%s: gnark PairingCheck says %v, %v, test expects %v", c.name, got, err, c.want)
		}
		for _, f := range forms {
			ps := make([]G1, len(c.ps))
			qs := make([]G2, len(c.qs))
			preps := make([]*G2Prepared, len(c.qs))
			for i := range c.ps {
				ps[i], qs[i] = c.ps[i].as(f), c.qs[i].as(f)
				preps[i] = PrepareG2(qs[i])
			}
			got, err := PairingCheck(ps, qs)
			if err != nil || got != c.want {
				t.Errorf("%s %s: PairingCheck = %v, %v", c.name, f, got, err)
			}
			got, err = CheckPrepared(ps, preps)
			if err != nil || got != c.want {
				t.Errorf("%s %s: CheckPrepared = %v, %v", c.name, f, got, err)
			}
		}
	}
	// Argument errors.
	G, Q := G1Generator(), G2Generator()
	P := PrepareG2(Q)
	if _, err := PairingCheck(nil, nil); err == nil {
		t.Error("PairingCheck accepted no pairs")
	}
	if _, err := PairingCheck([]G1{G, G}, []G2{Q}); err == nil {
		t.Error("PairingCheck accepted mismatched lengths")
	}
	if _, err := CheckPrepared(nil, nil); err == nil {
		t.Error("CheckPrepared accepted no pairs")
	}
	if _, err := CheckPrepared([]G1{G}, []*G2Prepared{P, P}); err == nil {
		t.Error("CheckPrepared accepted mismatched lengths")
	}
	// Zeroize.
	z := PrepareG2(Q)
	z.Zeroize()
	if !z.Point().IsIdentity() || z.lines != (lines{}) {
		t.Error("G2Prepared.Zeroize left data")
	}
}

func TestGT(t *testing.T) {
	g, q := g1Generator(t), g2Generator(t)
	rng := newRNG(t)
	var elems []gtRef
	for range iters(3) {
		elems = append(elems, gtPair(t, g1Mul(t, randBig(t, rng), g), q))
	}
	elems = append(elems, gtPair(t, g, q), gtPair(t, g1Identity(t), q))

	scalars := edgeScalars()
	for _, src := range sources(t) {
		for i := range iters(2) {
			k := randBig(t, src.r)
			scalars = append(scalars, scalarCase{fmt.Sprintf("%s#%d %x", src.name, i, pad32(k)), k})
		}
	}
	for i, x := range elems {
		for _, f := range forms {
			z := x.as(f)
			got := z.Bytes()
			eqBytes(t, fmt.Sprintf("GT %d %s: Bytes", i, f), got[:], x.bytes(t))
			if z.IsOne() != x.g.IsOne() {
				t.Errorf("GT %d %s: IsOne", i, f)
			}
			// Conversions.
			gn, ct := z.gn(), z.ct()
			if !gn.Equal(&x.g) || !ct.IsEqual(&x.c) {
				t.Errorf("GT %d %s: conversion", i, f)
			}
		}
		// Mul against both libraries.
		for j, y := range elems {
			var wg gb.GT
			wg.Mul(&x.g, &y.g)
			var wc cb.Gt
			wc.Mul(&x.c, &y.c)
			want := gtRef{g: wg, c: wc}.bytes(t)
			for _, fx := range forms {
				for _, fy := range forms {
					got := x.as(fx).Mul(y.as(fy)).Bytes()
					eqBytes(t, fmt.Sprintf("GT %d(%s)·%d(%s)", i, fx, j, fy), got[:], want)
				}
			}
		}
		// ExpSecret against gnark's Exp and circl's Exp.
		for _, sc := range scalars {
			var wg gb.GT
			wg.Exp(x.g, sc.v)
			var wc cb.Gt
			wc.Exp(&x.c, circlScalar(t, sc.v))
			want := gtRef{g: wg, c: wc}.bytes(t)
			for _, f := range forms {
				got := x.as(f).ExpSecret(scalarOf(t, sc.v)).Bytes()
				eqBytes(t, fmt.Sprintf("GT %d(%s)^%s", i, f, sc.name), got[:], want)
			}
		}
	}
	// Explicit relations: z^0 = 1, z^1 = z, z^(r−1)·z = 1.
	z := elems[0].as("gnark")
	if !z.ExpSecret(scalarOf(t, big.NewInt(0))).IsOne() {
		t.Error("z^0 != 1")
	}
	if !z.ExpSecret(scalarOf(t, big.NewInt(1))).Equal(z) {
		t.Error("z^1 != z")
	}
	if !z.ExpSecret(scalarOf(t, rMinus(1))).Mul(z).IsOne() || z.IsOne() {
		t.Error("z^(r−1)·z != 1")
	}
	z.Zeroize()
	if z != (GT{}) {
		t.Error("GT.Zeroize left data")
	}
	// GT.Bytes of 1 is 1 followed by zeros in the §2 order.
	one := elems[len(elems)-1].as("circl").Bytes()
	want := make([]byte, GTSize)
	want[fpSize-1] = 1
	eqBytes(t, "encoding of 1", one[:], want)
}

// ---------------------------------------------------------------------------
// Vectors of the independent reference implementation (../shared/vectors).

type vectorCase struct {
	Name               string   `json:"name"`
	ClientID           string   `json:"client_id"`
	ServerID           string   `json:"server_id"`
	Epoch              *uint64  `json:"epoch"`
	MasterShares       []string `json:"master_shares"`
	A                  string   `json:"A"`
	AT                 *string  `json:"AT"`
	B                  string   `json:"B"`
	ClientShares       []string `json:"client_shares"`
	PermitShares       []string `json:"permit_shares"`
	ServerIDShares     []string `json:"server_id_shares"`
	DomainServerShares []string `json:"domain_server_shares"`
	CS                 string   `json:"CS"`
	TP                 *string  `json:"TP"`
	SK                 string   `json:"SK"`
	SS                 string   `json:"SS"`
	FactorScalar       string   `json:"factor_scalar"`
	Token              string   `json:"token"`
	X                  string   `json:"x"`
	Z                  string   `json:"z"`
	Y                  string   `json:"y"`
	W                  string   `json:"w"`
	UPrime             string   `json:"U_prime"`
	R                  string   `json:"R"`
	W2                 string   `json:"W"`
	V                  string   `json:"V"`
	Th                 *string  `json:"th"`
	H                  *string  `json:"h"`
	G                  *string  `json:"g"`
	Dh                 *string  `json:"dh"`
	Accept             bool     `json:"accept"`
}

const (
	dstA = "BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN"
	dstT = "MPINKEX-V01-PERMIT-with-BLS12381G1_XMD:SHA-256_SSWU_NU_"
	dstB = "MPINKEX-V01-SERVER-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
)

// TestSharedVectors reproduces, with this package only, every group element
// and pairing value of ../shared/vectors/mpinkex-v1.json (an implementation
// built on MIRACL Core): hashes A, AT, B (PROTOCOL.md §3), shares and keys
// (§4), the handshake points and the server check (§5), and g, dh (§6),
// which pins the GT encoding of §2 to an outside source.
func TestSharedVectors(t *testing.T) {
	raw, err := os.ReadFile("../../shared/vectors/mpinkex-v1.json")
	if err != nil {
		t.Fatalf("shared vectors: %v", err)
	}
	var file struct{ Cases []vectorCase }
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("no cases")
	}
	Q := G2Generator()
	for _, c := range file.Cases {
		t.Run(c.Name, func(t *testing.T) {
			g1 := func(what, h string) G1 {
				t.Helper()
				p, err := DecodeG1(mustHex(t, h))
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				return p
			}
			g2 := func(what, h string) G2 {
				t.Helper()
				p, err := DecodeG2(mustHex(t, h))
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				return p
			}
			sc := func(what, h string) *Scalar {
				t.Helper()
				s, err := DecodeScalarOrZero(mustHex(t, h))
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				return s
			}
			check1 := func(what string, got G1, want string) {
				t.Helper()
				b := got.Bytes()
				if hex.EncodeToString(b[:]) != want {
					t.Errorf("%s = %x, want %s", what, b, want)
				}
			}
			check2 := func(what string, got G2, want string) {
				t.Helper()
				b := got.Bytes()
				if hex.EncodeToString(b[:]) != want {
					t.Errorf("%s = %x, want %s", what, b, want)
				}
			}

			// §3 hashes.
			A, err := EncodeToG1([]byte(c.ClientID), []byte(dstA))
			if err != nil {
				t.Fatal(err)
			}
			check1("A", A, c.A)
			B, err := HashToG2([]byte(c.ServerID), []byte(dstB))
			if err != nil {
				t.Fatal(err)
			}
			check2("B", B, c.B)
			Ap := A
			var AT G1
			if c.Epoch != nil {
				if c.AT == nil || c.TP == nil || len(c.PermitShares) != len(c.MasterShares) {
					t.Fatal("permit case without AT, TP or permit shares")
				}
				msg := binary.BigEndian.AppendUint64(nil, *c.Epoch)
				if AT, err = EncodeToG1(append(msg, c.ClientID...), []byte(dstT)); err != nil {
					t.Fatal(err)
				}
				check1("AT", AT, *c.AT)
				Ap = AddPublic(A, AT)
			}

			// §4 shares and keys.
			if len(c.ClientShares) != len(c.MasterShares) || len(c.ServerIDShares) != len(c.MasterShares) ||
				len(c.DomainServerShares) != len(c.MasterShares) {
				t.Fatal("share count mismatch")
			}
			var CS, TP G1
			var SK, SS G2
			for i, m := range c.MasterShares {
				s, err := DecodeScalar(mustHex(t, m))
				if err != nil {
					t.Fatalf("master share %d: %v", i, err)
				}
				cs := MulSecret(s, A)
				check1(fmt.Sprintf("client share %d", i), cs, c.ClientShares[i])
				CS = AddSecret(CS, cs)
				if c.Epoch != nil {
					tp := MulSecret(s, AT)
					check1(fmt.Sprintf("permit share %d", i), tp, c.PermitShares[i])
					TP = AddSecret(TP, tp)
				}
				sk := MulSecretG2(s, B)
				check2(fmt.Sprintf("server id share %d", i), sk, c.ServerIDShares[i])
				SK = AddSecretG2(SK, sk)
				ss := MulSecretG2(s, Q)
				check2(fmt.Sprintf("domain server share %d", i), ss, c.DomainServerShares[i])
				SS = AddSecretG2(SS, ss)
			}
			check1("CS", CS, c.CS)
			check2("SK", SK, c.SK)
			check2("SS", SS, c.SS)
			if c.Epoch != nil {
				check1("TP", TP, *c.TP)
			}
			f := sc("factor_scalar", c.FactorScalar)
			check1("token", AddSecret(CS, MulSecret(f, A).Neg()), c.Token)
			// The loaded keys decode and satisfy e(CS, Q) = e(A, SS), e(CS, B) = e(A, SK).
			CSd, SSd, SKd := g1("CS", c.CS), g2("SS", c.SS), g2("SK", c.SK)
			if !Pair(CSd, Q).Equal(PairPrepared(A, PrepareG2(SSd))) || !PairSecret(CSd, B).Equal(Pair(A, SKd)) {
				t.Error("key pairing relations")
			}

			// §5 handshake points and the server check.
			x, z, y, w := sc("x", c.X), sc("z", c.Z), sc("y", c.Y), sc("w", c.W)
			Up, R, W, V := g1("U'", c.UPrime), g1("R", c.R), g1("W", c.W2), g1("V", c.V)
			check1("R", MulSecret(z, A), c.R)
			check1("W", MulSecret(w, Ap), c.W2)
			key := CS
			if c.Epoch != nil {
				key = AddSecret(CS, TP)
			}
			if c.Accept {
				check1("U'", MulSecret(x, Ap), c.UPrime)
				check1("V", MulSecret(new(Scalar).Add(x, y), key).Neg(), c.V)
			}
			prepQ, prepSS := PrepareG2(Q), PrepareG2(SSd)
			arg := AddPublic(Up, MulPublic(y, Ap))
			ok, err := CheckPrepared([]G1{V, arg}, []*G2Prepared{prepQ, prepSS})
			if err != nil || ok != c.Accept {
				t.Errorf("server check = %v, %v; want %v", ok, err, c.Accept)
			}
			ok2, err := PairingCheck([]G1{V, arg}, []G2{Q, SSd})
			if err != nil || ok2 != c.Accept {
				t.Errorf("PairingCheck = %v, %v; want %v", ok2, err, c.Accept)
			}
			if !c.Accept {
				return
			}

			// §6: g and dh from both sides.
			if c.Th == nil || c.H == nil || c.G == nil || c.Dh == nil {
				t.Fatal("accepting case without th, h, g or dh")
			}
			h := ReduceScalar(mustHex(t, *c.Th))
			hb := h.Bytes()
			if hex.EncodeToString(hb[:]) != *c.H {
				t.Errorf("h = %x, want %s", hb, *c.H)
			}
			gClient := PairSecret(CS, B).ExpSecret(new(Scalar).Add(z, h))
			gServer := PairPrepared(AddPublic(R, MulPublic(h, A)), PrepareG2(SKd))
			for _, gv := range []struct {
				name string
				v    GT
			}{{"client g", gClient}, {"server g", gServer}} {
				b := gv.v.Bytes()
				if hex.EncodeToString(b[:]) != *c.G {
					t.Errorf("%s = %x, want %s", gv.name, b, *c.G)
				}
			}
			check1("client dh", MulSecret(x, W), *c.Dh)
			check1("server dh", MulSecret(w, Up), *c.Dh)
		})
	}
}
