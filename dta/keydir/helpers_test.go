package keydir

// Shared fixtures: a real trust domain of three D-TAs, each with a fresh
// crypto/rand master share and Ed25519 signing key, the envelopes they seal
// for one identity (client, permit for two epochs, server, domain), the sums
// computed directly with mpinkex, and helpers that build tampered envelopes
// signed by a D-TA key (so that only the check under test can refuse them).

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

const (
	fxDomainName = "test.example"
	fxIdentity   = "spiffe://test.example/ns/web/sa/frontend"
	fxIdentity2  = "spiffe://test.example/ns/pay/sa/api"
	fxEpochLen   = 86400
	fxEpoch      = 20415
	fxFactor     = "1234"
)

var (
	fxIssued  = time.Date(2025, 11, 23, 12, 0, 0, 0, time.UTC) // inside epoch fxEpoch
	fxExpires = fxIssued.Add(48 * time.Hour)
	fxIDs     = []string{"dta-1", "dta-2", "dta-3"}
)

// Encodings that DecodeG1/DecodeG2 refuse although they are on the curve
// (outside the prime-order subgroup), taken from pairing's fuzz corpus and
// re-checked by TestFixturePoints.
var (
	offSubgroupG1 = mustHex("800000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000004")
	offSubgroupG2 = mustHex("854437e28f0750726dfe2f22436b03f4e04294a6e3afba1dadd720e097ab1a34404f38c81ac09c8470a0d4ed8475c6330889440528ec824b497d579dbbd93658014882c74d764290b2af806a72e9aac357c5df358e648aab29e2f454c7b6a50b")
	identityG1    = append([]byte{0xc0}, make([]byte, pairing.G1Size-1)...)
	identityG2    = append([]byte{0xc0}, make([]byte, pairing.G2Size-1)...)
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// fixture is one trust domain and the key material its D-TAs issue to
// fxIdentity.
type fixture struct {
	dom     *Domain
	domJSON []byte
	masters []*mpinkex.MasterShare
	keys    []ed25519.PrivateKey
	pubs    []ed25519.PublicKey
	epochs  []uint64

	envs  []*Envelope       // one per D-TA, every kind
	files map[string][]byte // D-TA id → marshalled envelope

	// Sums computed directly with mpinkex, independently of Assemble.
	cs      pairing.G1
	permits map[uint64]pairing.G1
	sk, ss  pairing.G2
}

// newFixture issues a fresh domain: master shares from crypto/rand, fresh
// signing keys.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	var masters []*mpinkex.MasterShare
	var keys []ed25519.PrivateKey
	for range fxIDs {
		m, err := mpinkex.NewMasterShare(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		masters, keys = append(masters, m), append(keys, priv)
	}
	return buildFixture(t, masters, keys)
}

// detFixture is a fixed domain (master shares and signing keys derived from
// constants), so that the fuzz corpora under testdata hold envelopes that
// verify. It is for fuzzing only: its secrets are public.
func detFixture(t testing.TB) *fixture {
	t.Helper()
	detOnce.Do(func() {
		var masters []*mpinkex.MasterShare
		var keys []ed25519.PrivateKey
		for _, id := range fxIDs {
			seed := sha256.Sum256([]byte("keydir fuzz master " + id))
			seed[0] &= 0x3f // below the group order r = 0x73ed…
			m, err := mpinkex.ParseMasterShare(seed[:])
			if err != nil {
				t.Fatal(err)
			}
			ks := sha256.Sum256([]byte("keydir fuzz signing key " + id))
			masters, keys = append(masters, m), append(keys, ed25519.NewKeyFromSeed(ks[:]))
		}
		det = buildFixture(t, masters, keys)
	})
	if det == nil {
		t.Fatal("deterministic fixture could not be issued")
	}
	return det
}

var (
	detOnce sync.Once
	det     *fixture
)

// buildFixture seals every kind for fxIdentity from each master share and
// signing key, and sums the shares directly.
func buildFixture(t testing.TB, masters []*mpinkex.MasterShare, keys []ed25519.PrivateKey) *fixture {
	t.Helper()
	fx := &fixture{
		dom:     &Domain{Name: fxDomainName, EpochLen: fxEpochLen},
		epochs:  []uint64{fxEpoch, fxEpoch + 1},
		files:   map[string][]byte{},
		masters: masters,
		keys:    keys,
	}
	for i, id := range fxIDs {
		pub := keys[i].Public().(ed25519.PublicKey)
		fx.pubs = append(fx.pubs, pub)
		fx.dom.DTAs = append(fx.dom.DTAs, DTA{
			ID:         id,
			URL:        fmt.Sprintf("https://127.0.0.1:%d", i+1),
			SigningKey: base64.StdEncoding.EncodeToString(pub),
		})
	}
	if err := fx.dom.Validate(); err != nil {
		t.Fatal(err)
	}
	fx.domJSON = fx.dom.Marshal()
	for i := range fxIDs {
		env := fx.seal(t, i, fx.meta(i, fxIdentity), fx.allShares(t, fx.masters[i], fxIdentity))
		fx.envs = append(fx.envs, env)
		fx.files[fxIDs[i]] = env.Marshal()
	}

	// Direct sums.
	var cs []pairing.G1
	var sk, ss []pairing.G2
	fx.permits = map[uint64]pairing.G1{}
	perm := map[uint64][]pairing.G1{}
	for _, m := range fx.masters {
		c, err := m.ClientShare(fxIdentity)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		for _, e := range fx.epochs {
			p, err := m.PermitShare(fxIdentity, e)
			if err != nil {
				t.Fatal(err)
			}
			perm[e] = append(perm[e], p)
		}
		s, err := m.ServerShare(fxIdentity)
		if err != nil {
			t.Fatal(err)
		}
		sk = append(sk, s)
		ss = append(ss, m.DomainShare())
	}
	var err error
	if fx.cs, err = mpinkex.SumG1(cs...); err != nil {
		t.Fatal(err)
	}
	for e, v := range perm {
		if fx.permits[e], err = mpinkex.SumG1(v...); err != nil {
			t.Fatal(err)
		}
	}
	if fx.sk, err = mpinkex.SumG2(sk...); err != nil {
		t.Fatal(err)
	}
	if fx.ss, err = mpinkex.SumG2(ss...); err != nil {
		t.Fatal(err)
	}
	return fx
}

var (
	sharedOnce sync.Once
	shared     *fixture
)

// sharedFixture is one domain reused by tests that only read it. Tests that
// change envelopes copy them first (cloneEnv).
func sharedFixture(t testing.TB) *fixture {
	t.Helper()
	sharedOnce.Do(func() { shared = newFixture(t) })
	if shared == nil {
		t.Fatal("shared fixture could not be issued")
	}
	return shared
}

// meta is the payload metadata D-TA i seals for identity.
func (fx *fixture) meta(i int, identity string) Payload {
	return Payload{
		Domain:    fx.dom.Name,
		DTA:       fxIDs[i],
		Identity:  identity,
		EpochLen:  fx.dom.EpochLen,
		IssuedAt:  fxIssued,
		ExpiresAt: fxExpires,
	}
}

// allShares issues every kind from m to identity: client, permits for the
// fixture epochs, server, domain.
func (fx *fixture) allShares(t testing.TB, m *mpinkex.MasterShare, identity string) []ShareValue {
	t.Helper()
	c, err := m.ClientShare(identity)
	if err != nil {
		t.Fatal(err)
	}
	out := []ShareValue{{Kind: KindClient, G1: c}}
	for _, e := range fx.epochs {
		p, err := m.PermitShare(identity, e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ShareValue{Kind: KindPermit, Epoch: e, G1: p})
	}
	s, err := m.ServerShare(identity)
	if err != nil {
		t.Fatal(err)
	}
	return append(out, ShareValue{Kind: KindServer, G2: s}, ShareValue{Kind: KindDomain, G2: m.DomainShare()})
}

func (fx *fixture) seal(t testing.TB, i int, meta Payload, shares []ShareValue) *Envelope {
	t.Helper()
	env, err := Seal(fx.keys[i], meta, shares)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// token returns TOKEN = CS − f·A for the fixture identity.
func (fx *fixture) token(t testing.TB) pairing.G1 {
	t.Helper()
	tok, err := mpinkex.Token(fx.cs, fxIdentity, fxFactor)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dirFiles is a whole key directory: domain.json and every envelope, with
// withToken a client.token and the client values withheld.
func (fx *fixture) dirFiles(t testing.TB, withToken bool) map[string][]byte {
	t.Helper()
	files := map[string][]byte{DomainFile: fx.domJSON}
	for i, env := range fx.envs {
		if withToken {
			env = env.Withhold(KindClient)
		}
		files[EnvelopeFile(fxIDs[i])] = env.Marshal()
	}
	if withToken {
		files[TokenFile] = MarshalToken(fxIdentity, fx.token(t))
	}
	return files
}

// cloneFiles copies the envelope map of fx for Assemble.
func (fx *fixture) cloneFiles() map[string][]byte {
	out := map[string][]byte{}
	for k, v := range fx.files {
		out[k] = bytes.Clone(v)
	}
	return out
}

func cloneEnv(e *Envelope) *Envelope {
	c := &Envelope{Payload: bytes.Clone(e.Payload), Signature: bytes.Clone(e.Signature), Values: map[string]string{}}
	for k, v := range e.Values {
		c.Values[k] = v
	}
	return c
}

// payloadOf decodes an envelope's payload (test helper, no checks).
func payloadOf(t testing.TB, e *Envelope) Payload {
	t.Helper()
	var p Payload
	if err := json.Unmarshal(e.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// signPayload replaces e's payload with raw bytes p and signs them with key,
// as a D-TA would: the signature verifies whatever p holds.
func signPayload(key ed25519.PrivateKey, e *Envelope, p []byte) *Envelope {
	c := cloneEnv(e)
	c.Payload = p
	c.Signature = ed25519.Sign(key, append([]byte(sigContext), p...))
	return c
}

// resign decodes e's payload, lets edit change it, re-encodes and re-signs
// it with key.
func resign(t testing.TB, key ed25519.PrivateKey, e *Envelope, edit func(*Payload)) *Envelope {
	t.Helper()
	p := payloadOf(t, e)
	edit(&p)
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return signPayload(key, e, b)
}

// withValue returns a copy of e, signed by key, whose share under key k holds
// raw bytes v with a matching digest: the signature and digest pass, so only
// point decoding can refuse v.
func withValue(t testing.TB, key ed25519.PrivateKey, e *Envelope, k string, v []byte) *Envelope {
	t.Helper()
	sum := sha256.Sum256(v)
	found := false
	c := resign(t, key, e, func(p *Payload) {
		for i := range p.Shares {
			if p.Shares[i].Key() == k {
				p.Shares[i].SHA256 = hex.EncodeToString(sum[:])
				found = true
			}
		}
	})
	if !found {
		t.Fatalf("no share %s in envelope", k)
	}
	c.Values[k] = hex.EncodeToString(v)
	return c
}

// editJSON rewrites a JSON object: edit gets it as a generic map.
func editJSON(t testing.TB, b []byte, edit func(map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// wantErr fails unless err wraps want (want nil: err must be nil) and, if
// sub is set, its message contains sub.
func wantErr(t testing.TB, what string, err, want error, sub string) {
	t.Helper()
	switch {
	case want == nil && sub == "" && err != nil:
		t.Errorf("%s: unexpected error: %v", what, err)
	case (want != nil || sub != "") && err == nil:
		t.Errorf("%s: accepted, want error %v %q", what, want, sub)
	case want != nil && !errors.Is(err, want):
		t.Errorf("%s: error %q, want %v", what, err, want)
	case sub != "" && !strings.Contains(err.Error(), sub):
		t.Errorf("%s: error %q, want it to mention %q", what, err, sub)
	}
}

// g1Hex and g2Hex encode points as envelope values do.
func g1Hex(p pairing.G1) string { b := p.Bytes(); return hex.EncodeToString(b[:]) }
func g2Hex(p pairing.G2) string { b := p.Bytes(); return hex.EncodeToString(b[:]) }

// TestFixturePoints checks the bad encodings used as values really are what
// their names say, so the tests built on them mean something.
func TestFixturePoints(t *testing.T) {
	if _, err := pairing.DecodeG1(offSubgroupG1); !errors.Is(err, pairing.ErrNotInSubgroup) {
		t.Errorf("offSubgroupG1: %v, want ErrNotInSubgroup", err)
	}
	if _, err := pairing.DecodeG2(offSubgroupG2); !errors.Is(err, pairing.ErrNotInSubgroup) {
		t.Errorf("offSubgroupG2: %v, want ErrNotInSubgroup", err)
	}
	if _, err := pairing.DecodeG1(identityG1); !errors.Is(err, pairing.ErrIdentity) {
		t.Errorf("identityG1: %v, want ErrIdentity", err)
	}
	if _, err := pairing.DecodeG2(identityG2); !errors.Is(err, pairing.ErrIdentity) {
		t.Errorf("identityG2: %v, want ErrIdentity", err)
	}
}
