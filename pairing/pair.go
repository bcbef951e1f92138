package pairing

import (
	"errors"
	"sync"

	cb "github.com/cloudflare/circl/ecc/bls12381"
	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// Pair returns e(p, q) computed in variable time. Use it only when both
// arguments are public.
func Pair(p G1, q G2) GT {
	a, b := p.gn(), q.gn()
	r, err := gb.Pair([]gb.G1Affine{a}, []gb.G2Affine{b})
	if err != nil {
		panic("pairing: " + err.Error())
	}
	return GT{g: r, hasG: true}
}

// PairSecret returns e(p, q) with circl's implementation, which has no
// secret-dependent branches or memory access. Use it when p or q is secret
// and q is not worth preparing.
func PairSecret(p G1, q G2) GT {
	a, b := p.ct(), q.ct()
	return GT{c: *cb.Pair(&a, &b), hasC: true}
}

// PairingCheck reports whether ∏ e(ps[i], qs[i]) = 1, in variable time.
func PairingCheck(ps []G1, qs []G2) (bool, error) {
	if len(ps) != len(qs) || len(ps) == 0 {
		return false, errors.New("pairing: PairingCheck needs as many G1 as G2 points, at least one")
	}
	a := make([]gb.G1Affine, len(ps))
	b := make([]gb.G2Affine, len(qs))
	for i := range ps {
		a[i], b[i] = ps[i].gn(), qs[i].gn()
	}
	return gb.PairingCheck(a, b)
}

type lines = [2][len(gb.LoopCounter) - 1]gb.LineEvaluationAff

// linesPool holds scratch copies of prepared lines for millerPrepared
// (cleared before they go back).
var linesPool = sync.Pool{New: func() any { b := make([]lines, 0, 2); return &b }}

// G2Prepared is a G2 point with its Miller-loop lines precomputed, for points
// paired many times (the generator Q and a server's SS and SK). It is safe
// for concurrent use.
type G2Prepared struct {
	p     G2
	lines lines
}

// PrepareG2 precomputes the Miller-loop lines of q (about 0.2 ms, variable
// time: do it once per key load).
func PrepareG2(q G2) *G2Prepared {
	return &G2Prepared{p: q, lines: gb.PrecomputeLines(q.gn())}
}

// Point returns the prepared point.
func (q *G2Prepared) Point() G2 { return q.p }

// Zeroize overwrites the prepared lines (they are as secret as the point).
func (q *G2Prepared) Zeroize() { *q = G2Prepared{} }

// millerPrepared runs the Miller loop over prepared lines and multiplies the
// result by a random non-zero Fp6 element, which the final exponentiation
// sends to 1 (its exponent is a multiple of p⁶−1). The blinding makes the
// variable-time inversion inside gnark-crypto's final exponentiation see a
// uniformly random value instead of one derived from the secret lines.
func millerPrepared(ps []G1, qs []*G2Prepared) (gb.GT, error) {
	if len(ps) != len(qs) || len(ps) == 0 {
		return gb.GT{}, errors.New("pairing: need as many G1 points as prepared G2 points, at least one")
	}
	a := make([]gb.G1Affine, len(ps))
	// MillerLoopFixedQ scales the lines it is given in place, so it must work
	// on a copy: the prepared lines are shared between goroutines. The
	// copies (24 KiB per point) come from a pool and are cleared after use:
	// allocated per call they were most of a server handshake's garbage.
	buf := linesPool.Get().(*[]lines)
	if cap(*buf) < len(qs) {
		*buf = make([]lines, len(qs))
	}
	l := (*buf)[:len(qs)]
	for i := range ps {
		a[i] = ps[i].gn()
		l[i] = qs[i].lines
	}
	f, err := gb.MillerLoopFixedQ(a, l)
	clear(l)
	linesPool.Put(buf)
	if err != nil {
		return gb.GT{}, err
	}
	var blind gb.GT
	for {
		if _, err := blind.C0.SetRandom(); err != nil {
			return gb.GT{}, err
		}
		if !blind.C0.IsZero() {
			break
		}
	}
	f.Mul(&f, &blind)
	return gb.FinalExponentiation(&f), nil
}

// PairPrepared returns e(p, q) for a prepared q. The Miller loop branches
// only on public constants and the final exponentiation is blinded, so q may
// be secret; p is treated as public.
func PairPrepared(p G1, q *G2Prepared) GT {
	r, err := millerPrepared([]G1{p}, []*G2Prepared{q})
	if err != nil {
		panic("pairing: " + err.Error())
	}
	return GT{g: r, hasG: true}
}

// CheckPrepared reports whether ∏ e(ps[i], qs[i]) = 1 for prepared qs.
func CheckPrepared(ps []G1, qs []*G2Prepared) (bool, error) {
	r, err := millerPrepared(ps, qs)
	if err != nil {
		return false, err
	}
	return r.IsOne(), nil
}
