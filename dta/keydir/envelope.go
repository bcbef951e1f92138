package keydir

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// Kind names a share kind (PROTOCOL.md §4).
type Kind string

// Share kinds.
const (
	KindClient Kind = "client" // s_i·A, G1
	KindPermit Kind = "permit" // s_i·AT for an epoch, G1
	KindServer Kind = "server" // s_i·B, G2
	KindDomain Kind = "domain" // s_i·Q, G2, servers only
)

// ParseKind validates a kind name.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case KindClient, KindPermit, KindServer, KindDomain:
		return k, nil
	}
	return "", fmt.Errorf("unknown share kind %q (want client, permit, server or domain)", s)
}

// Errors a reader branches on.
var (
	ErrSignature = errors.New("envelope signature does not verify")
	ErrMalformed = errors.New("malformed key material")
)

const (
	envelopeVersion = 1
	sigContext      = "milagro keydir envelope v1\x00"
	// MaxEnvelopeSize bounds what a reader accepts (an envelope with every
	// kind and a few permits is about 2 KiB).
	MaxEnvelopeSize = 64 << 10
	// MaxShares bounds the shares of one envelope.
	MaxShares = 64
)

// Payload is the signed part of an envelope.
type Payload struct {
	V         int        `json:"v"`
	Domain    string     `json:"domain"`
	DTA       string     `json:"dta"`
	Identity  string     `json:"identity"`
	EpochLen  uint64     `json:"epoch_len"`
	IssuedAt  time.Time  `json:"issued_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	Shares    []ShareRef `json:"shares"`
}

// ShareRef commits to one share by the SHA-256 of its compressed point.
type ShareRef struct {
	Kind   Kind   `json:"kind"`
	Epoch  uint64 `json:"epoch,omitempty"`
	SHA256 string `json:"sha256"`
}

// Key returns the share's key in Envelope.Values: the kind, or
// "permit/<epoch>".
func (r ShareRef) Key() string { return valueKey(r.Kind, r.Epoch) }

func valueKey(k Kind, epoch uint64) string {
	if k == KindPermit {
		return "permit/" + strconv.FormatUint(epoch, 10)
	}
	return string(k)
}

// Envelope is a signed set of shares from one D-TA for one identity.
type Envelope struct {
	Payload   []byte            `json:"payload"`   // exact signed bytes
	Signature []byte            `json:"signature"` // Ed25519
	Values    map[string]string `json:"values"`    // Key() → hex point; absent = withheld
}

// ShareValue is a share to seal.
type ShareValue struct {
	Kind  Kind
	Epoch uint64 // permits only
	G1    pairing.G1
	G2    pairing.G2
}

func (s *ShareValue) bytes() []byte {
	if s.Kind == KindServer || s.Kind == KindDomain {
		b := s.G2.Bytes()
		return b[:]
	}
	b := s.G1.Bytes()
	return b[:]
}

// Seal builds and signs an envelope. meta's Shares are filled from shares.
func Seal(key ed25519.PrivateKey, meta Payload, shares []ShareValue) (*Envelope, error) {
	if len(shares) == 0 || len(shares) > MaxShares {
		return nil, fmt.Errorf("seal: %d shares, want 1..%d", len(shares), MaxShares)
	}
	meta.V = envelopeVersion
	meta.Shares = nil
	env := &Envelope{Values: map[string]string{}}
	for i := range shares {
		s := &shares[i]
		if s.Kind != KindPermit && s.Epoch != 0 {
			return nil, fmt.Errorf("seal: %s share with an epoch", s.Kind)
		}
		if (s.Kind == KindServer || s.Kind == KindDomain) && s.G2.IsIdentity() || (s.Kind == KindClient || s.Kind == KindPermit) && s.G1.IsIdentity() {
			return nil, fmt.Errorf("seal: %s share is the identity", s.Kind)
		}
		b := s.bytes()
		sum := sha256.Sum256(b)
		ref := ShareRef{Kind: s.Kind, Epoch: s.Epoch, SHA256: hex.EncodeToString(sum[:])}
		if _, dup := env.Values[ref.Key()]; dup {
			return nil, fmt.Errorf("seal: duplicate share %s", ref.Key())
		}
		env.Values[ref.Key()] = hex.EncodeToString(b)
		meta.Shares = append(meta.Shares, ref)
	}
	p, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if err := checkPayload(&meta); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	env.Payload = p
	env.Signature = ed25519.Sign(key, append([]byte(sigContext), p...))
	return env, nil
}

// Marshal encodes the envelope as JSON.
func (e *Envelope) Marshal() []byte {
	b, _ := json.MarshalIndent(e, "", "  ")
	return append(b, '\n')
}

// Withhold returns a copy of e without the value of kind (the signature
// still verifies; the reader knows the value is missing on purpose).
func (e *Envelope) Withhold(k Kind) *Envelope {
	c := &Envelope{Payload: e.Payload, Signature: e.Signature, Values: map[string]string{}}
	for key, v := range e.Values {
		if key != string(k) {
			c.Values[key] = v
		}
	}
	return c
}

// ParseEnvelope decodes an envelope's JSON (not yet verified).
func ParseEnvelope(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: envelope of %d bytes exceeds %d", ErrMalformed, len(b), MaxEnvelopeSize)
	}
	var e Envelope
	if err := strictUnmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: envelope: %w", ErrMalformed, err)
	}
	if len(e.Payload) == 0 || len(e.Signature) != ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: envelope lacks a payload or an Ed25519 signature", ErrMalformed)
	}
	if len(e.Values) > MaxShares {
		return nil, fmt.Errorf("%w: envelope has %d values", ErrMalformed, len(e.Values))
	}
	return &e, nil
}

// Shares are decoded, checked shares of one envelope or sums over a domain.
type Shares struct {
	Client  *pairing.G1
	Permits map[uint64]pairing.G1
	Server  *pairing.G2
	Domain  *pairing.G2
}

// Zeroize overwrites the shares (the map's values and the points).
func (s *Shares) Zeroize() {
	for _, p := range []*pairing.G1{s.Client} {
		if p != nil {
			p.Zeroize()
		}
	}
	for _, p := range []*pairing.G2{s.Server, s.Domain} {
		if p != nil {
			p.Zeroize()
		}
	}
	for e, v := range s.Permits {
		v.Zeroize()
		s.Permits[e] = v
	}
}

// Opened is a verified envelope.
// Its Shares are secret: Zeroize them once used.
type Opened struct {
	Payload Payload
	Shares  Shares
	// Withheld lists the kinds committed to but absent (only client).
	Withheld []Kind
}

// OpenOptions says what a reader accepts.
type OpenOptions struct {
	// AllowWithheldClient accepts an envelope whose client share value is
	// withheld (a client.token is used instead).
	AllowWithheldClient bool
}

// Open verifies e against the D-TA's pinned key, then decodes every share
// with full point checks and checks it against its committed digest.
func (e *Envelope) Open(pub ed25519.PublicKey, opt OpenOptions) (*Opened, error) {
	if !ed25519.Verify(pub, append([]byte(sigContext), e.Payload...), e.Signature) {
		return nil, ErrSignature
	}
	var o Opened
	ok := false
	defer func() {
		if !ok {
			o.Shares.Zeroize()
		}
	}()
	if err := strictUnmarshal(e.Payload, &o.Payload); err != nil {
		return nil, fmt.Errorf("%w: payload: %w", ErrMalformed, err)
	}
	p := &o.Payload
	if err := checkPayload(p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	// The payload must be exactly what Seal produces (json.Marshal of the
	// decoded value), so that no two parsers can read different content
	// from the same signed bytes (duplicate or case-folded keys, escapes).
	if canon, err := json.Marshal(p); err != nil || !bytes.Equal(canon, e.Payload) {
		return nil, fmt.Errorf("%w: payload is not in canonical form", ErrMalformed)
	}
	used := map[string]bool{}
	for _, ref := range p.Shares {
		key := ref.Key()
		v, ok := e.Values[key]
		if !ok {
			if ref.Kind == KindClient && opt.AllowWithheldClient {
				o.Withheld = append(o.Withheld, ref.Kind)
				continue
			}
			return nil, fmt.Errorf("%w: value of share %s is missing", ErrMalformed, key)
		}
		used[key] = true
		b, err := hex.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("%w: share %s: not hex", ErrMalformed, key)
		}
		defer clear(b) // the share's encoding (the hex string cannot be cleared)
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != ref.SHA256 {
			return nil, fmt.Errorf("%w: share %s does not match its signed digest", ErrSignature, key)
		}
		switch ref.Kind {
		case KindClient, KindPermit:
			pt, err := pairing.DecodeG1(b)
			if err != nil {
				return nil, fmt.Errorf("%w: share %s: %w", ErrMalformed, key, err)
			}
			if ref.Kind == KindClient {
				o.Shares.Client = &pt
			} else {
				if o.Shares.Permits == nil {
					o.Shares.Permits = map[uint64]pairing.G1{}
				}
				o.Shares.Permits[ref.Epoch] = pt
			}
		case KindServer, KindDomain:
			pt, err := pairing.DecodeG2(b)
			if err != nil {
				return nil, fmt.Errorf("%w: share %s: %w", ErrMalformed, key, err)
			}
			if ref.Kind == KindServer {
				o.Shares.Server = &pt
			} else {
				o.Shares.Domain = &pt
			}
		}
	}
	for key := range e.Values {
		if !used[key] {
			return nil, fmt.Errorf("%w: value %q is not covered by the signature", ErrMalformed, key)
		}
	}
	ok = true
	return &o, nil
}

func checkPayload(p *Payload) error {
	if p.V != envelopeVersion {
		return fmt.Errorf("envelope version %d, want %d", p.V, envelopeVersion)
	}
	if err := mpinkex.ValidateID(p.Domain); err != nil {
		return fmt.Errorf("domain: %w", err)
	}
	if !ValidDTAID(p.DTA) {
		return fmt.Errorf("bad D-TA id %q", p.DTA)
	}
	if err := mpinkex.ValidateID(p.Identity); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if p.EpochLen == 0 {
		return errors.New("epoch_len is 0")
	}
	if p.IssuedAt.IsZero() || !p.ExpiresAt.After(p.IssuedAt) {
		return errors.New("issued_at/expires_at missing or out of order")
	}
	if len(p.Shares) == 0 || len(p.Shares) > MaxShares {
		return fmt.Errorf("%d shares, want 1..%d", len(p.Shares), MaxShares)
	}
	seen := map[string]bool{}
	for _, r := range p.Shares {
		if _, err := ParseKind(string(r.Kind)); err != nil {
			return err
		}
		if r.Kind != KindPermit && r.Epoch != 0 {
			return fmt.Errorf("%s share with an epoch", r.Kind)
		}
		if len(r.SHA256) != 64 || strings.ToLower(r.SHA256) != r.SHA256 {
			return fmt.Errorf("share %s: sha256 must be 64 lowercase hex digits", r.Key())
		}
		if _, err := hex.DecodeString(r.SHA256); err != nil {
			return fmt.Errorf("share %s: sha256 is not hex", r.Key())
		}
		if seen[r.Key()] {
			return fmt.Errorf("share %s listed twice", r.Key())
		}
		seen[r.Key()] = true
	}
	return nil
}

// strictUnmarshal decodes one JSON value, rejecting unknown fields,
// trailing data and invalid UTF-8 (which encoding/json would otherwise
// replace with U+FFFD, so that distinct signed bytes decode to one identity).
func strictUnmarshal(b []byte, v any) error {
	if !utf8.Valid(b) {
		return errors.New("not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
