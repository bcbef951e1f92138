package pairing

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	cb "github.com/cloudflare/circl/ecc/bls12381"
)

// ScalarSize is the length of an encoded scalar.
const ScalarSize = 32

// Errors returned by the decoders. Callers branch on them with errors.Is.
var (
	// ErrEncoding reports bytes that are not a canonical encoding of a group
	// element or scalar (wrong length, flag bits, coordinate or scalar not
	// reduced, no square root).
	ErrEncoding = errors.New("pairing: non-canonical encoding")
	// ErrNotInSubgroup reports a point on the curve but outside the
	// prime-order subgroup.
	ErrNotInSubgroup = errors.New("pairing: point not in the prime-order subgroup")
	// ErrIdentity reports the identity element where a non-identity one is
	// required.
	ErrIdentity = errors.New("pairing: identity element")
	// ErrZeroScalar reports a zero scalar where [1, r−1] is required.
	ErrZeroScalar = errors.New("pairing: zero scalar")
)

// Scalar is an integer modulo the group order r. Arithmetic on it is constant
// time. The zero value is 0.
type Scalar struct{ s cb.Scalar }

// order is r, big-endian.
var order = func() [ScalarSize]byte {
	var o [ScalarSize]byte
	copy(o[:], cb.Order())
	return o
}()

// Order returns the group order r as 32 big-endian bytes.
func Order() [ScalarSize]byte { return order }

// DecodeScalar decodes a 32-byte big-endian scalar in [1, r−1]. Values ≥ r
// are ErrEncoding, zero is ErrZeroScalar.
func DecodeScalar(b []byte) (*Scalar, error) {
	s, err := DecodeScalarOrZero(b)
	if err != nil {
		return nil, err
	}
	if s.IsZero() {
		return nil, ErrZeroScalar
	}
	return s, nil
}

// DecodeScalarOrZero decodes a 32-byte big-endian scalar in [0, r−1].
func DecodeScalarOrZero(b []byte) (*Scalar, error) {
	if len(b) != ScalarSize {
		return nil, fmt.Errorf("%w: scalar is %d bytes, want %d", ErrEncoding, len(b), ScalarSize)
	}
	var s Scalar
	if err := s.s.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("%w: scalar not below the group order", ErrEncoding)
	}
	return &s, nil
}

// ScalarFromUint64 returns n mod r.
func ScalarFromUint64(n uint64) *Scalar {
	var s Scalar
	s.s.SetUint64(n)
	return &s
}

// ReduceScalar returns OS2IP(b) mod r for big-endian bytes of any length.
func ReduceScalar(b []byte) *Scalar {
	var s Scalar
	s.s.SetBytes(b)
	return &s
}

// RandomScalar draws a uniform scalar in [1, r−1] from rand by rejection
// sampling: it reads 32 bytes, clears the top bit (r < 2²⁵⁵) and retries while
// the value is ≥ r or zero. A reader that yields a canonical non-zero scalar
// therefore yields exactly that scalar, which is how tests inject vectors.
func RandomScalar(rand io.Reader) (*Scalar, error) {
	var b [ScalarSize]byte
	defer clear(b[:])
	for range 256 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return nil, fmt.Errorf("pairing: read randomness: %w", err)
		}
		b[0] &= 0x7f
		var s Scalar
		if s.s.UnmarshalBinary(b[:]) != nil {
			continue
		}
		if s.IsZero() {
			continue
		}
		return &s, nil
	}
	return nil, errors.New("pairing: randomness source keeps yielding out-of-range values")
}

// Bytes returns the 32-byte big-endian canonical encoding of s.
func (s *Scalar) Bytes() [ScalarSize]byte {
	var out [ScalarSize]byte
	b, _ := s.s.MarshalBinary()
	copy(out[:], b)
	clear(b)
	return out
}

// IsZero reports whether s is 0, in constant time.
func (s *Scalar) IsZero() bool { return s.s.IsZero() == 1 }

// Equal reports whether s and t are equal, in constant time.
func (s *Scalar) Equal(t *Scalar) bool { return s.s.IsEqual(&t.s) == 1 }

// Add sets s = a + b mod r and returns s.
func (s *Scalar) Add(a, b *Scalar) *Scalar { s.s.Add(&a.s, &b.s); return s }

// Sub sets s = a − b mod r and returns s.
func (s *Scalar) Sub(a, b *Scalar) *Scalar { s.s.Sub(&a.s, &b.s); return s }

// Mul sets s = a · b mod r and returns s.
func (s *Scalar) Mul(a, b *Scalar) *Scalar { s.s.Mul(&a.s, &b.s); return s }

// Neg sets s = −a mod r and returns s.
func (s *Scalar) Neg(a *Scalar) *Scalar { s.s.Set(&a.s); s.s.Neg(); return s }

// Set sets s = a and returns s.
func (s *Scalar) Set(a *Scalar) *Scalar { s.s.Set(&a.s); return s }

// Zeroize overwrites s with zero. Call it on secret scalars when done.
func (s *Scalar) Zeroize() { s.s = cb.Scalar{} }

// EqualBytes compares two byte strings in constant time (for secrets).
func EqualBytes(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
