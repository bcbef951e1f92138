package mpinkex

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/milagro-sc/milagro/pairing"
)

// Domain separation tags of PROTOCOL.md §3.
const (
	DSTClient = "BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN"
	DSTPermit = "MPINKEX-V01-PERMIT-with-BLS12381G1_XMD:SHA-256_SSWU_NU_"
	DSTServer = "MPINKEX-V01-SERVER-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"
)

// Defaults of PROTOCOL.md §4–5.
const (
	DefaultEpochLen = 86400 * time.Second
	DefaultGrace    = 300 * time.Second
)

// HashClientID returns A = H_A(id) (encode_to_curve to G1).
func HashClientID(id string) (pairing.G1, error) {
	if err := ValidateID(id); err != nil {
		return pairing.G1{}, fmt.Errorf("%w: client identity: %w", ErrConfig, err)
	}
	return pairing.EncodeToG1([]byte(id), []byte(DSTClient))
}

// HashPermit returns AT = H_T(id, epoch) = encode_to_curve(I2OSP(epoch, 8) ‖ id).
func HashPermit(id string, epoch uint64) (pairing.G1, error) {
	if err := ValidateID(id); err != nil {
		return pairing.G1{}, fmt.Errorf("%w: client identity: %w", ErrConfig, err)
	}
	msg := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(id)), epoch)
	return pairing.EncodeToG1(append(msg, id...), []byte(DSTPermit))
}

// HashServerID returns B = H_B(server_id) (hash_to_curve to G2).
func HashServerID(id string) (pairing.G2, error) {
	if err := ValidateID(id); err != nil {
		return pairing.G2{}, fmt.Errorf("%w: server identity: %w", ErrConfig, err)
	}
	return pairing.HashToG2([]byte(id), []byte(DSTServer))
}

// MasterShare is a D-TA's master secret share s_i ∈ [1, r−1]. Every share it
// issues is computed with constant-time scalar multiplication.
type MasterShare struct{ s pairing.Scalar }

// NewMasterShare draws a fresh master share from rand (crypto/rand.Reader in
// production).
func NewMasterShare(rand io.Reader) (*MasterShare, error) {
	s, err := pairing.RandomScalar(rand)
	if err != nil {
		return nil, fmt.Errorf("new master share: %w", err)
	}
	return &MasterShare{s: *s}, nil
}

// ParseMasterShare decodes a 32-byte master share, which must be in [1, r−1].
func ParseMasterShare(b []byte) (*MasterShare, error) {
	s, err := pairing.DecodeScalar(b)
	if err != nil {
		return nil, fmt.Errorf("parse master share: %w", err)
	}
	return &MasterShare{s: *s}, nil
}

// Bytes returns the 32-byte encoding of the share, for encrypted storage.
func (m *MasterShare) Bytes() [pairing.ScalarSize]byte { return m.s.Bytes() }

// Zeroize overwrites the share.
func (m *MasterShare) Zeroize() { m.s.Zeroize() }

// ClientShare returns s_i·A for client id.
func (m *MasterShare) ClientShare(id string) (pairing.G1, error) {
	a, err := HashClientID(id)
	if err != nil {
		return pairing.G1{}, err
	}
	return pairing.MulSecret(&m.s, a), nil
}

// PermitShare returns s_i·AT for client id and epoch.
func (m *MasterShare) PermitShare(id string, epoch uint64) (pairing.G1, error) {
	at, err := HashPermit(id, epoch)
	if err != nil {
		return pairing.G1{}, err
	}
	return pairing.MulSecret(&m.s, at), nil
}

// ServerShare returns s_i·B for server id.
func (m *MasterShare) ServerShare(id string) (pairing.G2, error) {
	b, err := HashServerID(id)
	if err != nil {
		return pairing.G2{}, err
	}
	return pairing.MulSecretG2(&m.s, b), nil
}

// DomainShare returns s_i·Q, the domain server share (for servers only).
func (m *MasterShare) DomainShare() pairing.G2 {
	return pairing.MulSecretG2(&m.s, pairing.G2Generator())
}

// SumG1 adds key shares in constant time. At least one share is required and
// the sum must not be the identity.
func SumG1(shares ...pairing.G1) (pairing.G1, error) {
	if len(shares) == 0 {
		return pairing.G1{}, fmt.Errorf("%w: no shares to sum", ErrConfig)
	}
	var sum pairing.G1
	for _, s := range shares {
		if s.IsIdentity() {
			return pairing.G1{}, fmt.Errorf("%w: identity share", ErrConfig)
		}
		sum = pairing.AddSecret(sum, s)
	}
	if sum.IsIdentity() {
		return pairing.G1{}, fmt.Errorf("%w: shares sum to the identity", ErrConfig)
	}
	return sum, nil
}

// SumG2 adds key shares in G2 in constant time.
func SumG2(shares ...pairing.G2) (pairing.G2, error) {
	if len(shares) == 0 {
		return pairing.G2{}, fmt.Errorf("%w: no shares to sum", ErrConfig)
	}
	var sum pairing.G2
	for _, s := range shares {
		if s.IsIdentity() {
			return pairing.G2{}, fmt.Errorf("%w: identity share", ErrConfig)
		}
		sum = pairing.AddSecretG2(sum, s)
	}
	if sum.IsIdentity() {
		return pairing.G2{}, fmt.Errorf("%w: shares sum to the identity", ErrConfig)
	}
	return sum, nil
}

// FactorScalar maps a factor to f (PROTOCOL.md §4): 1–4 ASCII digits are a
// PIN with its decimal value; any other non-empty string p gives
// OS2IP(HKDF-Expand(HKDF-Extract("mpinkex v1 factor", p), "factor", 48)) mod r.
func FactorScalar(factor string) (*pairing.Scalar, error) {
	if factor == "" {
		return nil, fmt.Errorf("%w: empty factor", ErrConfig)
	}
	if len(factor) <= 4 && allDigits(factor) {
		var n uint64
		for i := 0; i < len(factor); i++ {
			n = n*10 + uint64(factor[i]-'0')
		}
		return pairing.ScalarFromUint64(n), nil
	}
	prk, err := hkdf.Extract(sha256.New, []byte(factor), []byte("mpinkex v1 factor"))
	if err != nil {
		return nil, err
	}
	okm, err := hkdf.Expand(sha256.New, prk, "factor", 48)
	clear(prk)
	if err != nil {
		return nil, err
	}
	f := pairing.ReduceScalar(okm)
	clear(okm)
	return f, nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Token returns TOKEN = CS − f·A, what a client stores when it uses a factor.
func Token(cs pairing.G1, clientID, factor string) (pairing.G1, error) {
	a, f, err := factorTerm(clientID, factor)
	if err != nil {
		return pairing.G1{}, err
	}
	defer f.Zeroize()
	return pairing.AddSecret(cs, pairing.MulSecret(f, a).Neg()), nil
}

// RebuildCS returns CS = TOKEN + f·A (in memory only).
func RebuildCS(token pairing.G1, clientID, factor string) (pairing.G1, error) {
	a, f, err := factorTerm(clientID, factor)
	if err != nil {
		return pairing.G1{}, err
	}
	defer f.Zeroize()
	cs := pairing.AddSecret(token, pairing.MulSecret(f, a))
	if cs.IsIdentity() {
		return pairing.G1{}, fmt.Errorf("%w: token and factor give the identity", ErrConfig)
	}
	return cs, nil
}

func factorTerm(clientID, factor string) (pairing.G1, *pairing.Scalar, error) {
	a, err := HashClientID(clientID)
	if err != nil {
		return pairing.G1{}, nil, err
	}
	f, err := FactorScalar(factor)
	if err != nil {
		return pairing.G1{}, nil, err
	}
	return a, f, nil
}

// Epoch returns floor(unix_seconds / epochLen) for t (PROTOCOL.md §4).
func Epoch(t time.Time, epochLen time.Duration) (uint64, error) {
	l := int64(epochLen / time.Second)
	if l <= 0 || epochLen%time.Second != 0 {
		return 0, fmt.Errorf("%w: epoch length %v must be a whole, positive number of seconds", ErrConfig, epochLen)
	}
	u := t.Unix()
	if u < 0 {
		return 0, fmt.Errorf("%w: time %v before 1970", ErrConfig, t)
	}
	return uint64(u / l), nil
}

// AcceptEpoch reports whether a permit for epoch may be used at time now:
// it is the current epoch, or the adjacent one while now is within grace of
// the boundary between them (PROTOCOL.md §5).
func AcceptEpoch(epoch uint64, now time.Time, epochLen, grace time.Duration) (bool, error) {
	cur, err := Epoch(now, epochLen)
	if err != nil {
		return false, err
	}
	if grace < 0 {
		return false, errors.New("negative grace")
	}
	if epoch == cur {
		return true, nil
	}
	l := int64(epochLen / time.Second)
	start := time.Unix(int64(cur)*l, 0)
	end := time.Unix(int64(cur+1)*l, 0)
	switch {
	case cur > 0 && epoch == cur-1:
		return now.Sub(start) <= grace, nil
	case epoch == cur+1:
		return end.Sub(now) <= grace, nil
	}
	return false, nil
}

// timeSettings applies the defaults of the time settings shared by ClientConfig and
// ServerConfig: time.Now, DefaultEpochLen, and DefaultGrace for 0 (a
// negative grace means none).
func timeSettings(now func() time.Time, epochLen, grace time.Duration) (func() time.Time, time.Duration, time.Duration) {
	if now == nil {
		now = time.Now
	}
	if epochLen == 0 {
		epochLen = DefaultEpochLen
	}
	if grace == 0 {
		grace = DefaultGrace
	} else if grace < 0 {
		grace = 0
	}
	return now, epochLen, grace
}
