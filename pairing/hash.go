package pairing

import (
	"fmt"

	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

// MaxDSTLen is the longest domain separation tag accepted (RFC 9380 §5.3.1
// without the oversize-DST rule, which this project never needs).
const MaxDSTLen = 255

func checkDST(dst []byte) error {
	if len(dst) == 0 || len(dst) > MaxDSTLen {
		return fmt.Errorf("pairing: DST must be 1..%d bytes, got %d", MaxDSTLen, len(dst))
	}
	return nil
}

// EncodeToG1 is RFC 9380 encode_to_curve for suite
// BLS12381G1_XMD:SHA-256_SSWU_NU_ with the given DST (non-uniform).
func EncodeToG1(msg, dst []byte) (G1, error) {
	if err := checkDST(dst); err != nil {
		return G1{}, err
	}
	p, err := gb.EncodeToG1(msg, dst)
	if err != nil {
		return G1{}, fmt.Errorf("pairing: encode to G1: %w", err)
	}
	return g1FromGnark(p), nil
}

// HashToG1 is RFC 9380 hash_to_curve for suite
// BLS12381G1_XMD:SHA-256_SSWU_RO_ with the given DST (random oracle).
func HashToG1(msg, dst []byte) (G1, error) {
	if err := checkDST(dst); err != nil {
		return G1{}, err
	}
	p, err := gb.HashToG1(msg, dst)
	if err != nil {
		return G1{}, fmt.Errorf("pairing: hash to G1: %w", err)
	}
	return g1FromGnark(p), nil
}

// HashToG2 is RFC 9380 hash_to_curve for suite
// BLS12381G2_XMD:SHA-256_SSWU_RO_ with the given DST (random oracle).
func HashToG2(msg, dst []byte) (G2, error) {
	if err := checkDST(dst); err != nil {
		return G2{}, err
	}
	p, err := gb.HashToG2(msg, dst)
	if err != nil {
		return G2{}, fmt.Errorf("pairing: hash to G2: %w", err)
	}
	return g2FromGnark(p), nil
}

// EncodeToG2 is RFC 9380 encode_to_curve for suite
// BLS12381G2_XMD:SHA-256_SSWU_NU_ with the given DST.
func EncodeToG2(msg, dst []byte) (G2, error) {
	if err := checkDST(dst); err != nil {
		return G2{}, err
	}
	p, err := gb.EncodeToG2(msg, dst)
	if err != nil {
		return G2{}, fmt.Errorf("pairing: encode to G2: %w", err)
	}
	return g2FromGnark(p), nil
}
