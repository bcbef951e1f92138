package pairing

import (
	"crypto/rand"
	"testing"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// The floor: the bare library calls a server cannot avoid in one mpinkex v1
// handshake without a permit, each with the cheapest library allowed for it
// (constant-time circl where the scalar is secret, gnark-crypto elsewhere),
// with no conversions, encodings, hashing of transcripts or I/O:
//
//	1 encode_to_curve G1 (A)                  gnark EncodeToG1
//	3 checked G1 decodes (U', R, V)           gnark SetBytes
//	2 constant-time G1 mults (w·A', w·U')     circl ScalarMult
//	2 public G1 mults (y·A', h·A)             gnark ScalarMultiplication
//	1 2-pairing check, fixed G2 (Q, SS)       gnark PairingCheckFixedQ
//	1 pairing, fixed G2 (SK)                  gnark PairFixedQ
//
// With a permit add one encode_to_curve (AT) and one G1 addition.
// mpinkex's BenchmarkHandshakeServer divided by this is the overhead ratio
// reported in the issue notes.
func BenchmarkFloorServer(b *testing.B) {
	dst := []byte("BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN")
	id := []byte("spiffe://prod.example/ns/web/sa/frontend")
	a, _ := gb.EncodeToG1(id, dst)
	enc := a.Bytes()
	var ca cb.G1
	ca.Encode(id, dst)
	var w cb.Scalar
	if err := w.Random(rand.Reader); err != nil {
		b.Fatal(err)
	}
	y, _ := rand.Int(rand.Reader, gb.ID.ScalarField())
	h, _ := rand.Int(rand.Reader, gb.ID.ScalarField())
	_, _, _, q := gb.Generators()
	ssPoint, _ := gb.HashToG2([]byte("ss"), []byte("floor"))
	skPoint, _ := gb.HashToG2([]byte("sk"), []byte("floor"))
	lq, lss, lsk := gb.PrecomputeLines(q), gb.PrecomputeLines(ssPoint), gb.PrecomputeLines(skPoint)
	b.ReportAllocs()
	for b.Loop() {
		aa, _ := gb.EncodeToG1(id, dst)
		var u, r, v gb.G1Affine
		for _, p := range []*gb.G1Affine{&u, &r, &v} {
			if _, err := p.SetBytes(enc[:]); err != nil {
				b.Fatal(err)
			}
		}
		var wa, wu cb.G1
		wa.ScalarMult(&w, &ca)
		wu.ScalarMult(&w, &ca)
		var ya, ha gb.G1Affine
		ya.ScalarMultiplication(&aa, y)
		ha.ScalarMultiplication(&aa, h)
		// MillerLoopFixedQ scales the lines in place: a real caller copies them.
		if _, err := gb.PairingCheckFixedQ([]gb.G1Affine{v, ya}, [][2][len(gb.LoopCounter) - 1]gb.LineEvaluationAff{lq, lss}); err != nil {
			b.Fatal(err)
		}
		if _, err := gb.PairFixedQ([]gb.G1Affine{ha}, [][2][len(gb.LoopCounter) - 1]gb.LineEvaluationAff{lsk}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloorClient is the same for the client side without a permit:
// 4 constant-time G1 mults (x·A', z·A, (x+y)·CS, x·W), one checked G1
// decode (W) and one constant-time exponentiation K^(z+h) in circl's GT,
// where K = e(CS, B) is computed once per server identity and cached with B
// (so neither the pairing nor H_B is in the floor). Until 2026-11-24 the
// client computed e((z+h)·CS, B) instead, a fifth constant-time mult and a
// constant-time pairing: 0.22 + 1.48 ms where the exponentiation is 1.27.
func BenchmarkFloorClient(b *testing.B) {
	dst := []byte("BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN")
	var p cb.G1
	p.Encode([]byte("client"), dst)
	enc := p.BytesCompressed()
	var bq cb.G2
	bq.Hash([]byte("server"), []byte("floor"))
	kk := cb.Pair(&p, &bq)
	var k cb.Scalar
	if err := k.Random(rand.Reader); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var out cb.G1
		for range 4 {
			out.ScalarMult(&k, &p)
		}
		var wdec gb.G1Affine
		if _, err := wdec.SetBytes(enc); err != nil {
			b.Fatal(err)
		}
		var g cb.Gt
		g.Exp(kk, &k)
	}
}

// BenchmarkFloorEncode is the rest of the floor (the report adds it): the
// six compressed encodings of constant-time products one handshake needs,
// each a constant-time inversion in circl's BytesCompressed. The client
// encodes U', R and V for the wire and x·W for the key schedule, the server
// W for the wire and w·U' for the key schedule. BenchmarkFloorServer and
// BenchmarkFloorClient leave them out so that their sum stays the bare
// arithmetic the earlier reports compared against.
func BenchmarkFloorEncode(b *testing.B) {
	var p cb.G1
	p.Encode([]byte("client"), []byte("BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN"))
	var pts [6]cb.G1
	for i := range pts {
		var k cb.Scalar
		if err := k.Random(rand.Reader); err != nil {
			b.Fatal(err)
		}
		pts[i].ScalarMult(&k, &p) // projective, as a product leaves it
	}
	b.ReportAllocs()
	for b.Loop() {
		for i := range pts {
			_ = pts[i].BytesCompressed()
		}
	}
}
