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
//     MulSecretG2, GT.ExpSecret) and every addition of secret points
//     (AddSecret, AddSecretG2) runs in circl, whose scalar multiplication uses
//     a fixed 4-bit window with constant-time table lookups and complete
//     formulas over fiat-crypto field arithmetic.
//   - Hashing to G1 and G2, decoding of received points, public scalar
//     multiplications (MulPublic) and additions (AddPublic), and pairings with
//     public inputs run in gnark-crypto.
//   - Pairings whose G2 argument is a long-lived secret (the server's SS and
//     SK) use gnark-crypto's precomputed lines (PrepareG2, PairPrepared,
//     CheckPrepared). gnark-crypto makes no constant-time promise; on amd64 its
//     field multiplication reduces with CMOV and its fixed-argument Miller loop
//     branches only on the public loop counter, but the final exponentiation
//     inverts the Miller-loop value with a variable-time binary GCD. So the
//     Miller-loop value is first multiplied by a fresh random non-zero element
//     of Fp6, which the final exponentiation maps to 1 (its exponent is a
//     multiple of p⁶−1): the inversion only ever sees a uniformly random
//     value. Line precomputation itself (once per key load) is variable time.
//     MillerLoopFixedQ scales the lines it is given in place, so every call
//     works on a copy (the prepared lines are shared between goroutines).
//   - Pairings with a secret G1 argument use circl (PairSecret). The client
//     computes one per server identity, K = e(CS, B), which mpinkex caches;
//     each handshake then raises K to the secret z+h (GT.ExpSecret).
//
// Points carry whichever library form they were made in and convert on
// demand; Cached returns a point holding both, for values used repeatedly.
// circl→gnark goes through circl's uncompressed encoding (one constant-time
// inversion, ~25 µs). gnark→circl copies the Montgomery limbs (convert.go):
// circl's only public constructor, SetBytes, would re-run its ~110 µs
// subgroup check on points this package has already checked or computed; the
// copy is verified against SetBytes at start-up and falls back to it if a
// library update ever changes either layout.
//
// With this split the server side of a handshake costs about 1.02–1.05× the
// bare library calls it cannot avoid (mpinkex BenchmarkHandshakeServer against
// BenchmarkFloorServer here, in one run).
package pairing
