package pairing

// Benchmarks of the API and, as BenchmarkLib*, of the raw library calls
// behind the table in doc.go. Run with
//
//	go test -run='^$' -bench=. -count=5 ./pairing

import (
	"bytes"
	crand "crypto/rand"
	"math/big"
	"testing"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// benchInputs are fixed random inputs shared by the benchmarks.
type benchInputs struct {
	k      *Scalar  // secret-like scalar
	kBig   *big.Int // the same value
	kCircl *cb.Scalar
	p      G1 // random G1 point, both forms cached
	q      G2 // random G2 point, both forms cached
	gt     GT // e(p, q), gnark form
	gtC    GT // e(p, q), circl form
}

func newBenchInputs(b *testing.B) benchInputs {
	b.Helper()
	rng := newRNG(b)
	k := randBig(b, rng)
	kp, kq := randBig(b, rng), randBig(b, rng)
	p := MulPublic(scalarOf(b, kp), G1Generator()).Cached()
	q := MulSecretG2(scalarOf(b, kq), G2Generator()).Cached()
	gt := Pair(p, q)
	return benchInputs{
		k: scalarOf(b, k), kBig: k, kCircl: circlScalar(b, k),
		p: p, q: q, gt: gt, gtC: GT{c: gt.ct(), hasC: true},
	}
}

var benchMsg = []byte("alice@example.com")

// ---------------------------------------------------------------------------
// API

func BenchmarkDecodeG1(b *testing.B) {
	in := newBenchInputs(b)
	enc := in.p.Bytes()
	for b.Loop() {
		if _, err := DecodeG1(enc[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeG2(b *testing.B) {
	in := newBenchInputs(b)
	enc := in.q.Bytes()
	for b.Loop() {
		if _, err := DecodeG2(enc[:]); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMulSecret(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		MulSecret(in.k, in.p)
	}
}

func BenchmarkMulPublic(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		MulPublic(in.k, in.p)
	}
}

func BenchmarkMulSecretG2(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		MulSecretG2(in.k, in.q)
	}
}

func BenchmarkEncodeToG1(b *testing.B) {
	dst := []byte(dstA)
	for b.Loop() {
		if _, err := EncodeToG1(benchMsg, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHashToG2(b *testing.B) {
	dst := []byte(dstB)
	for b.Loop() {
		if _, err := HashToG2(benchMsg, dst); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPair(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		Pair(in.p, in.q)
	}
}

func BenchmarkPairSecret(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		PairSecret(in.p, in.q)
	}
}

func BenchmarkPrepareG2(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		PrepareG2(in.q)
	}
}

func BenchmarkPairPrepared(b *testing.B) {
	in := newBenchInputs(b)
	prep := PrepareG2(in.q)
	for b.Loop() {
		PairPrepared(in.p, prep)
	}
}

// BenchmarkCheckPrepared2 is the server check of PROTOCOL.md §5:
// e(V, Q) · e(U, SS) = 1 with both G2 points prepared.
func BenchmarkCheckPrepared2(b *testing.B) {
	in := newBenchInputs(b)
	prepQ, prepSS := PrepareG2(G2Generator()), PrepareG2(in.q)
	ps := []G1{in.p, in.p}
	preps := []*G2Prepared{prepQ, prepSS}
	for b.Loop() {
		if _, err := CheckPrepared(ps, preps); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkExpSecret(b *testing.B) {
	in := newBenchInputs(b)
	b.Run("from-circl", func(b *testing.B) {
		for b.Loop() {
			in.gtC.ExpSecret(in.k)
		}
	})
	b.Run("from-gnark", func(b *testing.B) {
		for b.Loop() {
			in.gt.ExpSecret(in.k)
		}
	})
}

func BenchmarkGTBytes(b *testing.B) {
	in := newBenchInputs(b)
	b.Run("gnark", func(b *testing.B) {
		for b.Loop() {
			in.gt.Bytes()
		}
	})
	b.Run("circl", func(b *testing.B) {
		for b.Loop() {
			in.gtC.Bytes()
		}
	})
}

func BenchmarkConvertG1CirclToGnark(b *testing.B) {
	in := newBenchInputs(b)
	p := g1FromCircl(in.p.c)
	for b.Loop() {
		p.gn()
	}
}

func BenchmarkConvertG1GnarkToCircl(b *testing.B) {
	in := newBenchInputs(b)
	p := g1FromGnark(in.p.g)
	for b.Loop() {
		p.ct()
	}
}

func BenchmarkConvertG2CirclToGnark(b *testing.B) {
	in := newBenchInputs(b)
	q := g2FromCircl(in.q.c)
	for b.Loop() {
		q.gn()
	}
}

func BenchmarkConvertG2GnarkToCircl(b *testing.B) {
	in := newBenchInputs(b)
	q := g2FromGnark(in.q.g)
	for b.Loop() {
		q.ct()
	}
}

func BenchmarkRandomScalar(b *testing.B) {
	for b.Loop() {
		if _, err := RandomScalar(crand.Reader); err != nil {
			b.Fatal(err)
		}
	}
}

// ---------------------------------------------------------------------------
// Raw library calls (the table in doc.go).

func BenchmarkLibG1Decode(b *testing.B) {
	in := newBenchInputs(b)
	enc := in.p.Bytes()
	b.Run("gnark", func(b *testing.B) {
		var p gb.G1Affine
		for b.Loop() {
			if _, err := p.SetBytes(enc[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("circl", func(b *testing.B) {
		var p cb.G1
		for b.Loop() {
			if err := p.SetBytes(enc[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkLibG1ScalarMult(b *testing.B) {
	in := newBenchInputs(b)
	b.Run("gnark", func(b *testing.B) {
		var r gb.G1Affine
		for b.Loop() {
			r.ScalarMultiplication(&in.p.g, in.kBig)
		}
	})
	b.Run("circl", func(b *testing.B) {
		var r cb.G1
		for b.Loop() {
			r.ScalarMult(in.kCircl, &in.p.c)
		}
	})
}

func BenchmarkLibEncodeToG1(b *testing.B) {
	dst := []byte(dstA)
	b.Run("gnark", func(b *testing.B) {
		for b.Loop() {
			if _, err := gb.EncodeToG1(benchMsg, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("circl", func(b *testing.B) {
		var p cb.G1
		for b.Loop() {
			p.Encode(benchMsg, dst)
		}
	})
}

func BenchmarkLibHashToG2(b *testing.B) {
	dst := []byte(dstB)
	b.Run("gnark", func(b *testing.B) {
		for b.Loop() {
			if _, err := gb.HashToG2(benchMsg, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("circl", func(b *testing.B) {
		var p cb.G2
		for b.Loop() {
			p.Hash(benchMsg, dst)
		}
	})
}

func BenchmarkLibPair(b *testing.B) {
	in := newBenchInputs(b)
	b.Run("gnark", func(b *testing.B) {
		ps, qs := []gb.G1Affine{in.p.g}, []gb.G2Affine{in.q.g}
		for b.Loop() {
			if _, err := gb.Pair(ps, qs); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("circl", func(b *testing.B) {
		for b.Loop() {
			cb.Pair(&in.p.c, &in.q.c)
		}
	})
}

func BenchmarkLibPrecomputeLines(b *testing.B) {
	in := newBenchInputs(b)
	for b.Loop() {
		gb.PrecomputeLines(in.q.g)
	}
}

// BenchmarkLibPairFixedQ includes copying the lines, which
// MillerLoopFixedQ overwrites in place.
func BenchmarkLibPairFixedQ(b *testing.B) {
	in := newBenchInputs(b)
	l := gb.PrecomputeLines(in.q.g)
	ps := []gb.G1Affine{in.p.g}
	work := make([]lines, 1)
	for b.Loop() {
		work[0] = l
		if _, err := gb.PairFixedQ(ps, work); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLibPairingCheckFixedQ2(b *testing.B) {
	in := newBenchInputs(b)
	_, _, _, gen := gb.Generators()
	l := []lines{gb.PrecomputeLines(gen), gb.PrecomputeLines(in.q.g)}
	ps := []gb.G1Affine{in.p.g, in.p.g}
	work := make([]lines, 2)
	b.Run("gnark", func(b *testing.B) {
		for b.Loop() {
			copy(work, l)
			if _, err := gb.PairingCheckFixedQ(ps, work); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("circl-ProdPairFrac", func(b *testing.B) {
		cq := cb.G2Generator()
		for b.Loop() {
			cb.ProdPairFrac([]*cb.G1{&in.p.c, &in.p.c}, []*cb.G2{cq, &in.q.c}, []int{1, 1})
		}
	})
}

func BenchmarkLibGTExp(b *testing.B) {
	in := newBenchInputs(b)
	x := in.gt.g
	b.Run("gnark-Exp", func(b *testing.B) {
		var r gb.GT
		for b.Loop() {
			r.Exp(x, in.kBig)
		}
	})
	b.Run("gnark-CyclotomicExp", func(b *testing.B) {
		var r gb.GT
		for b.Loop() {
			r.CyclotomicExp(x, in.kBig)
		}
	})
	b.Run("gnark-ExpGLV", func(b *testing.B) {
		var r gb.GT
		for b.Loop() {
			r.ExpGLV(x, in.kBig)
		}
	})
	b.Run("circl", func(b *testing.B) {
		var r cb.Gt
		c := in.gtC.c
		for b.Loop() {
			r.Exp(&c, in.kCircl)
		}
	})
}

// TestBenchInputs keeps the benchmark set-up honest: the gnark-crypto GT
// exponentiation variants timed above agree with each other and with circl.
func TestBenchInputs(t *testing.T) {
	rng := newRNG(t)
	k := randBig(t, rng)
	z := gtPair(t, g1Mul(t, randBig(t, rng), g1Generator(t)), g2Generator(t))
	var a, b2, c gb.GT
	a.Exp(z.g, k)
	b2.CyclotomicExp(z.g, k)
	c.ExpGLV(z.g, k)
	var d cb.Gt
	d.Exp(&z.c, circlScalar(t, k))
	want := gtRef{g: a, c: d}.bytes(t)
	if !bytes.Equal(specGT(&b2), want) || !bytes.Equal(specGT(&c), want) {
		t.Error("gnark-crypto GT exponentiation variants disagree")
	}
}
