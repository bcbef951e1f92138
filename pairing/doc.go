// Package pairing is the project's only door to BLS12-381: hashing to G1 and
// G2 (RFC 9380), checked decoding of points and scalars, point and scalar
// arithmetic, pairings and GT encoding, exactly as mpinkex v1
// (PROTOCOL.md §2–3) needs them. No other package imports a curve library.
//
// # Which library does what
//
// Two libraries sit behind this API, chosen operation by operation from
// measurements on the project's 2-core machine (go test -bench . ./pairing,
// medians of one run; see BenchmarkLib* in bench_test.go):
//
//	operation                         gnark-crypto v0.22   circl v1.6.5
//	G1 decode, compressed + subgroup       57 µs             145 µs
//	G1 scalar mult                         77 µs (GLV, vt)   219 µs (constant time)
//	encode_to_curve G1 (NU)                53 µs              84 µs
//	hash_to_curve G2 (RO)                 360 µs             745 µs
//	pairing                               600 µs            1480 µs
//	pairing, fixed G2 (precomputed lines) 533 µs               —
//	2-pairing check, fixed G2             637 µs               —
//	GT exponentiation                     424 µs (vt)       1335 µs (constant time)
//
// The split:
//
//   - Every multiplication or exponentiation by a secret scalar (MulSecret,
//     GT.ExpSecret) and every addition of secret points (AddSecret) runs in
//     circl, whose scalar multiplication uses a fixed window with
//     constant-time table lookups and complete formulas over fiat-crypto field
//     arithmetic.
//   - Decoding of received points, public scalar multiplications (MulPublic),
//     hashing to G2 and pairings with public inputs run in gnark-crypto.
//   - Pairings whose G2 argument is a long-lived secret (the server's SS and
//     SK) use gnark-crypto's precomputed lines (PrepareG2). gnark-crypto makes
//     no constant-time promise; on amd64 its field multiplication reduces with
//     CMOV, and its Miller loop with fixed lines branches only on the public
//     loop counter, but the final exponentiation inverts the Miller-loop value
//     with a variable-time binary GCD. PairPrepared and CheckPrepared therefore
//     multiply that value by a fresh random non-zero element of Fp6, which the
//     final exponentiation maps to 1 (its exponent is a multiple of p⁶−1), so
//     the inversion only ever sees a uniformly random value. Line
//     precomputation itself (once per key load) is variable time.
//   - Pairings with a secret G1 argument (the client's e(CS, B)) use circl
//     (PairSecret).
//   - encode_to_curve to G1 runs in circl, because the hashed points A and AT
//     are then multiplied by secret scalars: converting a circl point to gnark
//     form costs one field inversion (~25 µs), while the other way round
//     re-runs circl's subgroup check (~114 µs).
//
// Points carry whichever library representation they were made in and convert
// on demand; Cached returns a point holding both, for values used repeatedly.
// Conversions never repeat a subgroup check for values computed here, except
// gnark→circl, which circl's API only offers with the check.
package pairing
