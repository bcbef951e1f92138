package keydir

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
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

func TestParseKind(t *testing.T) {
	for _, s := range []string{"client", "permit", "server", "domain"} {
		k, err := ParseKind(s)
		if err != nil || string(k) != s {
			t.Errorf("ParseKind(%q) = %q, %v", s, k, err)
		}
	}
	for _, s := range []string{"", "Client", "CLIENT", "master", "permit/1", " client"} {
		if k, err := ParseKind(s); err == nil {
			t.Errorf("ParseKind(%q) = %q, want an error", s, k)
		}
	}
}

func TestShareRefKey(t *testing.T) {
	cases := []struct {
		ref  ShareRef
		want string
	}{
		{ShareRef{Kind: KindClient}, "client"},
		{ShareRef{Kind: KindServer}, "server"},
		{ShareRef{Kind: KindDomain}, "domain"},
		{ShareRef{Kind: KindPermit, Epoch: 20415}, "permit/20415"},
		{ShareRef{Kind: KindPermit}, "permit/0"},
		{ShareRef{Kind: KindPermit, Epoch: 1<<64 - 1}, "permit/18446744073709551615"},
	}
	for _, c := range cases {
		if got := c.ref.Key(); got != c.want {
			t.Errorf("%+v.Key() = %q, want %q", c.ref, got, c.want)
		}
	}
}

// TestSealOpenRoundTrip seals every kind, goes through the JSON encoding and
// checks Open returns exactly the points each D-TA issued.
func TestSealOpenRoundTrip(t *testing.T) {
	fx := sharedFixture(t)
	for i, env := range fx.envs {
		b := env.Marshal()
		if !bytes.Equal(b, fx.files[fxIDs[i]]) {
			t.Fatalf("D-TA %d: Marshal is not deterministic", i)
		}
		parsed, err := ParseEnvelope(b)
		if err != nil {
			t.Fatalf("D-TA %d: ParseEnvelope: %v", i, err)
		}
		o, err := parsed.Open(fx.pubs[i], OpenOptions{})
		if err != nil {
			t.Fatalf("D-TA %d: Open: %v", i, err)
		}
		p := o.Payload
		if p.V != 1 || p.Domain != fxDomainName || p.DTA != fxIDs[i] || p.Identity != fxIdentity ||
			p.EpochLen != fxEpochLen || !p.IssuedAt.Equal(fxIssued) || !p.ExpiresAt.Equal(fxExpires) {
			t.Errorf("D-TA %d: payload %+v", i, p)
		}
		if len(p.Shares) != 5 || len(o.Withheld) != 0 {
			t.Errorf("D-TA %d: %d shares, withheld %v", i, len(p.Shares), o.Withheld)
		}
		m := fx.masters[i]
		wantC, _ := m.ClientShare(fxIdentity)
		wantS, _ := m.ServerShare(fxIdentity)
		if o.Shares.Client == nil || !o.Shares.Client.Equal(wantC) {
			t.Errorf("D-TA %d: client share differs", i)
		}
		if o.Shares.Server == nil || !o.Shares.Server.Equal(wantS) {
			t.Errorf("D-TA %d: server share differs", i)
		}
		if o.Shares.Domain == nil || !o.Shares.Domain.Equal(m.DomainShare()) {
			t.Errorf("D-TA %d: domain share differs", i)
		}
		if len(o.Shares.Permits) != len(fx.epochs) {
			t.Errorf("D-TA %d: permits for %d epochs", i, len(o.Shares.Permits))
		}
		for _, e := range fx.epochs {
			want, _ := m.PermitShare(fxIdentity, e)
			if got, ok := o.Shares.Permits[e]; !ok || !got.Equal(want) {
				t.Errorf("D-TA %d: permit share for epoch %d differs", i, e)
			}
		}
		// The envelope of D-TA i opens with no other D-TA's key.
		for j := range fx.pubs {
			if j == i {
				continue
			}
			if _, err := parsed.Open(fx.pubs[j], OpenOptions{}); !errors.Is(err, ErrSignature) {
				t.Errorf("D-TA %d's envelope opened with D-TA %d's key: %v", i, j, err)
			}
		}
	}
}

func TestSealOnlyKinds(t *testing.T) {
	fx := sharedFixture(t)
	s, err := fx.masters[0].ServerShare(fxIdentity)
	if err != nil {
		t.Fatal(err)
	}
	meta := fx.meta(0, fxIdentity)
	meta.V = 7                                   // overwritten
	meta.Shares = []ShareRef{{Kind: KindClient}} // overwritten
	env := fx.seal(t, 0, meta, []ShareValue{{Kind: KindServer, G2: s}})
	o, err := env.Open(fx.pubs[0], OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if o.Payload.V != 1 || len(o.Payload.Shares) != 1 || o.Shares.Client != nil || o.Shares.Permits != nil ||
		o.Shares.Domain != nil || o.Shares.Server == nil || !o.Shares.Server.Equal(s) {
		t.Errorf("server-only envelope opened as %+v", o)
	}
	if len(env.Values) != 1 || env.Values["server"] != g2Hex(s) {
		t.Errorf("values %v", env.Values)
	}
}

func TestSealRejects(t *testing.T) {
	fx := sharedFixture(t)
	c, _ := fx.masters[0].ClientShare(fxIdentity)
	p, _ := fx.masters[0].PermitShare(fxIdentity, fxEpoch)
	good := []ShareValue{{Kind: KindClient, G1: c}}
	many := make([]ShareValue, MaxShares+1)
	for i := range many {
		many[i] = ShareValue{Kind: KindPermit, Epoch: uint64(i), G1: p}
	}
	meta := func(edit func(*Payload)) Payload {
		m := fx.meta(0, fxIdentity)
		edit(&m)
		return m
	}
	same := func(*Payload) {}
	cases := []struct {
		name   string
		meta   Payload
		shares []ShareValue
		sub    string
	}{
		{"no shares", meta(same), nil, "0 shares"},
		{"too many shares", meta(same), many, "65 shares"},
		{"epoch on a client share", meta(same), []ShareValue{{Kind: KindClient, Epoch: 3, G1: c}}, "with an epoch"},
		{"epoch on a server share", meta(same), []ShareValue{{Kind: KindServer, Epoch: 3}}, "with an epoch"},
		{"duplicate client share", meta(same), []ShareValue{good[0], good[0]}, "duplicate share client"},
		{"duplicate permit", meta(same), []ShareValue{{Kind: KindPermit, Epoch: 4, G1: p}, {Kind: KindPermit, Epoch: 4, G1: p}}, "duplicate share permit/4"},
		{"unknown kind", meta(same), []ShareValue{{Kind: "master", G1: c}}, "unknown share kind"},
		{"empty identity", meta(func(m *Payload) { m.Identity = "" }), good, "identity"},
		{"identity of 256 bytes", meta(func(m *Payload) { m.Identity = strings.Repeat("a", 256) }), good, "identity"},
		{"identity not UTF-8", meta(func(m *Payload) { m.Identity = "a\xffb" }), good, "UTF-8"},
		{"bad D-TA id", meta(func(m *Payload) { m.DTA = "DTA 1" }), good, "D-TA id"},
		{"empty domain", meta(func(m *Payload) { m.Domain = "" }), good, "domain"},
		{"zero epoch_len", meta(func(m *Payload) { m.EpochLen = 0 }), good, "epoch_len"},
		{"expiry before issuance", meta(func(m *Payload) { m.ExpiresAt = m.IssuedAt.Add(-time.Second) }), good, "out of order"},
		{"expiry equal to issuance", meta(func(m *Payload) { m.ExpiresAt = m.IssuedAt }), good, "out of order"},
		{"no issuance time", meta(func(m *Payload) { m.IssuedAt = time.Time{} }), good, "issued_at"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env, err := Seal(fx.keys[0], c.meta, c.shares)
			if err == nil {
				t.Fatalf("sealed: %s", env.Payload)
			}
			if env != nil {
				t.Error("envelope returned with an error")
			}
			if !strings.Contains(err.Error(), c.sub) {
				t.Errorf("error %q, want it to mention %q", err, c.sub)
			}
		})
	}
	// The boundary: exactly MaxShares shares seal and open.
	env, err := Seal(fx.keys[0], meta(same), many[:MaxShares])
	if err != nil {
		t.Fatalf("%d shares: %v", MaxShares, err)
	}
	if _, err := ParseEnvelope(env.Marshal()); err != nil {
		t.Fatalf("%d shares: %v", MaxShares, err)
	}
}

// TestWithhold checks a withheld client share still verifies when the reader
// allows it, and only then.
func TestWithhold(t *testing.T) {
	fx := sharedFixture(t)
	env := fx.envs[1]
	w := env.Withhold(KindClient)
	if _, ok := env.Values["client"]; !ok {
		t.Fatal("Withhold changed the original envelope")
	}
	if _, ok := w.Values["client"]; ok || len(w.Values) != len(env.Values)-1 {
		t.Fatalf("withheld values: %v", w.Values)
	}
	w, err := ParseEnvelope(w.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	o, err := w.Open(fx.pubs[1], OpenOptions{AllowWithheldClient: true})
	if err != nil {
		t.Fatalf("withheld client share, allowed: %v", err)
	}
	if o.Shares.Client != nil || !slices.Equal(o.Withheld, []Kind{KindClient}) {
		t.Errorf("client %v, withheld %v", o.Shares.Client, o.Withheld)
	}
	if o.Shares.Server == nil || o.Shares.Domain == nil || len(o.Shares.Permits) != 2 {
		t.Errorf("other shares lost: %+v", o.Shares)
	}
	_, err = w.Open(fx.pubs[1], OpenOptions{})
	wantErr(t, "withheld client share, not allowed", err, ErrMalformed, "value of share client is missing")

	// Only the client share may be withheld.
	for _, k := range []Kind{KindServer, KindDomain} {
		_, err := env.Withhold(k).Open(fx.pubs[1], OpenOptions{AllowWithheldClient: true})
		wantErr(t, "withheld "+string(k), err, ErrMalformed, "value of share "+string(k)+" is missing")
	}
	p := cloneEnv(env)
	delete(p.Values, fmt.Sprintf("permit/%d", fxEpoch))
	_, err = p.Open(fx.pubs[1], OpenOptions{AllowWithheldClient: true})
	wantErr(t, "withheld permit", err, ErrMalformed, "missing")
	// Withholding a kind the envelope lacks changes nothing.
	if n := env.Withhold("nothing"); len(n.Values) != len(env.Values) {
		t.Error("Withhold of an absent kind dropped values")
	}
}

// wantOnly fails unless err wraps want and not the other sentinel.
func wantOnly(t *testing.T, err, want error, sub string) {
	t.Helper()
	wantErr(t, "Open", err, want, sub)
	other := ErrMalformed
	if want == ErrMalformed {
		other = ErrSignature
	}
	if errors.Is(err, other) {
		t.Errorf("error %q also wraps %v", err, other)
	}
}

// TestOpenSignature covers tampering the signature must catch.
func TestOpenSignature(t *testing.T) {
	fx := sharedFixture(t)
	env := fx.envs[0]
	pub := fx.pubs[0]
	c2, _ := fx.masters[1].ClientShare(fxIdentity)
	cases := []struct {
		name string
		env  func() *Envelope
		pub  ed25519.PublicKey
		sub  string
	}{
		{"payload byte flipped", func() *Envelope {
			c := cloneEnv(env)
			c.Payload[len(c.Payload)/2] ^= 0x01
			return c
		}, pub, ""},
		{"payload byte appended", func() *Envelope {
			c := cloneEnv(env)
			c.Payload = append(c.Payload, ' ')
			return c
		}, pub, ""},
		{"signature bit flipped", func() *Envelope {
			c := cloneEnv(env)
			c.Signature[5] ^= 0x80
			return c
		}, pub, ""},
		{"signed by another D-TA's key", func() *Envelope {
			return signPayload(fx.keys[1], env, env.Payload)
		}, pub, ""},
		{"opened with another D-TA's key", func() *Envelope { return env }, fx.pubs[2], ""},
		{"signed without the context string", func() *Envelope {
			c := cloneEnv(env)
			c.Signature = ed25519.Sign(fx.keys[0], c.Payload)
			return c
		}, pub, ""},
		{"client value swapped for another valid point", func() *Envelope {
			c := cloneEnv(env)
			c.Values["client"] = g1Hex(c2)
			return c
		}, pub, "does not match its signed digest"},
		{"permit values of two epochs swapped", func() *Envelope {
			c := cloneEnv(env)
			a, b := fmt.Sprintf("permit/%d", fxEpoch), fmt.Sprintf("permit/%d", fxEpoch+1)
			c.Values[a], c.Values[b] = c.Values[b], c.Values[a]
			return c
		}, pub, "does not match its signed digest"},
		{"server and domain values swapped", func() *Envelope {
			c := cloneEnv(env)
			c.Values["server"], c.Values["domain"] = c.Values["domain"], c.Values["server"]
			return c
		}, pub, "does not match its signed digest"},
		{"off-subgroup value without a matching digest", func() *Envelope {
			c := cloneEnv(env)
			c.Values["client"] = hex.EncodeToString(offSubgroupG1)
			return c
		}, pub, "does not match its signed digest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o, err := c.env().Open(c.pub, OpenOptions{AllowWithheldClient: true})
			if o != nil {
				t.Error("opened")
			}
			wantOnly(t, err, ErrSignature, c.sub)
		})
	}
	// The fixture itself was not changed by the cases.
	if _, err := env.Open(pub, OpenOptions{}); err != nil {
		t.Fatalf("fixture envelope damaged: %v", err)
	}
}

// TestOpenMalformed covers envelopes whose signature verifies (they are
// re-signed with the D-TA's key) but whose content is refused.
func TestOpenMalformed(t *testing.T) {
	fx := sharedFixture(t)
	env := fx.envs[0]
	key := fx.keys[0]
	edit := func(f func(*Payload)) func() *Envelope {
		return func() *Envelope { return resign(t, key, env, f) }
	}
	// raw re-signs raw payload bytes derived from the fixture payload.
	raw := func(f func(p []byte) []byte) func() *Envelope {
		return func() *Envelope { return signPayload(key, env, f(bytes.Clone(env.Payload))) }
	}
	// editMap re-signs the payload after a generic JSON edit.
	editMap := func(f func(map[string]any)) func() *Envelope {
		return func() *Envelope { return signPayload(key, env, editJSON(t, env.Payload, f)) }
	}
	permit := fmt.Sprintf("permit/%d", fxEpoch)
	c2, _ := fx.masters[1].ClientShare(fxIdentity)
	s0, _ := fx.masters[0].ServerShare(fxIdentity)
	cases := []struct {
		name  string
		env   func() *Envelope
		sub   string
		cause error // a pairing error the failure must also wrap
	}{
		{"unknown field in the payload", editMap(func(m map[string]any) { m["extra"] = 1 }), "unknown field", nil},
		{"unknown field in a share ref", editMap(func(m map[string]any) {
			m["shares"].([]any)[0].(map[string]any)["note"] = "x"
		}), "unknown field", nil},
		{"trailing data after the payload", raw(func(p []byte) []byte { return append(p, []byte(`{}`)...) }), "trailing data", nil},
		{"trailing garbage after the payload", raw(func(p []byte) []byte { return append(p, 'x') }), "", nil},
		{"payload not JSON", raw(func([]byte) []byte { return []byte("not json") }), "payload", nil},
		{"payload is null", raw(func([]byte) []byte { return []byte("null") }), "version 0", nil},
		{"payload is an array", raw(func([]byte) []byte { return []byte("[]") }), "payload", nil},
		{"version 2", edit(func(p *Payload) { p.V = 2 }), "version 2", nil},
		{"version missing", editMap(func(m map[string]any) { delete(m, "v") }), "version 0", nil},
		{"duplicate share refs", edit(func(p *Payload) { p.Shares = append(p.Shares, p.Shares[0]) }), "listed twice", nil},
		{"duplicate permit refs", edit(func(p *Payload) { p.Shares = append(p.Shares, p.Shares[1]) }), "share " + permit + " listed twice", nil},
		{"sha256 upper case", edit(func(p *Payload) { p.Shares[0].SHA256 = strings.ToUpper(p.Shares[0].SHA256) }), "lowercase", nil},
		{"sha256 too short", edit(func(p *Payload) { p.Shares[0].SHA256 = p.Shares[0].SHA256[:62] }), "sha256", nil},
		{"sha256 too long", edit(func(p *Payload) { p.Shares[0].SHA256 += "00" }), "sha256", nil},
		{"sha256 not hex", edit(func(p *Payload) { p.Shares[0].SHA256 = strings.Repeat("zz", 32) }), "not hex", nil},
		{"sha256 empty", edit(func(p *Payload) { p.Shares[0].SHA256 = "" }), "sha256", nil},
		{"epoch on the client share", edit(func(p *Payload) { p.Shares[0].Epoch = fxEpoch }), "client share with an epoch", nil},
		{"epoch on the server share", edit(func(p *Payload) { p.Shares[3].Epoch = 1 }), "server share with an epoch", nil},
		{"unknown kind", edit(func(p *Payload) { p.Shares[0].Kind = "master" }), "unknown share kind", nil},
		{"no shares", edit(func(p *Payload) { p.Shares = nil }), "0 shares", nil},
		{"too many shares", edit(func(p *Payload) {
			for i := range MaxShares {
				p.Shares = append(p.Shares, ShareRef{Kind: KindPermit, Epoch: uint64(i + 1), SHA256: p.Shares[1].SHA256})
			}
		}), "shares, want 1..64", nil},
		{"identity empty", edit(func(p *Payload) { p.Identity = "" }), "identity", nil},
		{"identity of 256 bytes", edit(func(p *Payload) { p.Identity = strings.Repeat("x", 256) }), "identity", nil},
		{"identity with invalid UTF-8", raw(func(p []byte) []byte {
			return bytes.Replace(p, []byte(fxIdentity), []byte("spiffe://test.example/\xff\xfe"), 1)
		}), "UTF-8", nil},
		{"domain empty", edit(func(p *Payload) { p.Domain = "" }), "domain", nil},
		{"D-TA id upper case", edit(func(p *Payload) { p.DTA = "DTA-1" }), "D-TA id", nil},
		{"D-TA id with a slash", edit(func(p *Payload) { p.DTA = "../dta-1" }), "D-TA id", nil},
		{"epoch_len 0", edit(func(p *Payload) { p.EpochLen = 0 }), "epoch_len", nil},
		{"expires_at before issued_at", edit(func(p *Payload) { p.ExpiresAt = p.IssuedAt.Add(-time.Hour) }), "out of order", nil},
		{"expires_at equal to issued_at", edit(func(p *Payload) { p.ExpiresAt = p.IssuedAt }), "out of order", nil},
		{"issued_at missing", editMap(func(m map[string]any) { delete(m, "issued_at") }), "issued_at", nil},
		{"issued_at not a time", editMap(func(m map[string]any) { m["issued_at"] = "yesterday" }), "payload", nil},
		{"epoch_len negative", editMap(func(m map[string]any) { m["epoch_len"] = -1 }), "payload", nil},
		{"value added that the signature does not cover", func() *Envelope {
			c := cloneEnv(env)
			c.Values["permit/99"] = c.Values[permit]
			return c
		}, `value "permit/99" is not covered`, nil},
		{"value under an unknown key", func() *Envelope {
			c := cloneEnv(env)
			c.Values["master"] = g1Hex(c2)
			return c
		}, "not covered by the signature", nil},
		{"client value under a permit name with a leading zero", func() *Envelope {
			c := cloneEnv(env)
			c.Values[fmt.Sprintf("permit/0%d", fxEpoch)] = c.Values[permit]
			return c
		}, "not covered by the signature", nil},
		{"value missing", func() *Envelope {
			c := cloneEnv(env)
			delete(c.Values, "domain")
			return c
		}, "value of share domain is missing", nil},
		{"value not hex", func() *Envelope {
			c := cloneEnv(env)
			c.Values["server"] = "xyz"
			return c
		}, "not hex", nil},
		// Bad points behind a matching digest, signed by the D-TA: only
		// the point checks stand between them and the sums.
		{"off-subgroup client value", func() *Envelope { return withValue(t, key, env, "client", offSubgroupG1) }, "share client", pairing.ErrNotInSubgroup},
		{"off-subgroup permit value", func() *Envelope { return withValue(t, key, env, permit, offSubgroupG1) }, "share " + permit, pairing.ErrNotInSubgroup},
		{"off-subgroup server value", func() *Envelope { return withValue(t, key, env, "server", offSubgroupG2) }, "share server", pairing.ErrNotInSubgroup},
		{"off-subgroup domain value", func() *Envelope { return withValue(t, key, env, "domain", offSubgroupG2) }, "share domain", pairing.ErrNotInSubgroup},
		{"identity client value", func() *Envelope { return withValue(t, key, env, "client", identityG1) }, "share client", pairing.ErrIdentity},
		{"identity permit value", func() *Envelope { return withValue(t, key, env, permit, identityG1) }, "share " + permit, pairing.ErrIdentity},
		{"identity server value", func() *Envelope { return withValue(t, key, env, "server", identityG2) }, "share server", pairing.ErrIdentity},
		{"identity domain value", func() *Envelope { return withValue(t, key, env, "domain", identityG2) }, "share domain", pairing.ErrIdentity},
		{"G2 point as the client value", func() *Envelope {
			b := s0.Bytes()
			return withValue(t, key, env, "client", b[:])
		}, "share client", pairing.ErrEncoding},
		{"G1 point as the server value", func() *Envelope {
			b := c2.Bytes()
			return withValue(t, key, env, "server", b[:])
		}, "share server", pairing.ErrEncoding},
		{"empty client value", func() *Envelope { return withValue(t, key, env, "client", nil) }, "share client", pairing.ErrEncoding},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := c.env()
			// The damage must survive the JSON encoding, and ParseEnvelope
			// must leave it to Open.
			parsed, err := ParseEnvelope(e.Marshal())
			if err != nil {
				t.Fatalf("ParseEnvelope: %v", err)
			}
			o, err := parsed.Open(fx.pubs[0], OpenOptions{})
			if o != nil {
				t.Error("opened")
			}
			wantOnly(t, err, ErrMalformed, c.sub)
			if c.cause != nil && !errors.Is(err, c.cause) {
				t.Errorf("error %q does not wrap %v", err, c.cause)
			}
		})
	}
}

// TestWithValueHelper makes sure the re-signing helper produces envelopes
// that open when the value is good, so TestOpenMalformed's failures come from
// the value alone.
func TestWithValueHelper(t *testing.T) {
	fx := sharedFixture(t)
	c, _ := fx.masters[0].ClientShare(fxIdentity)
	b := c.Bytes()
	e := withValue(t, fx.keys[0], fx.envs[0], "client", b[:])
	if _, err := e.Open(fx.pubs[0], OpenOptions{}); err != nil {
		t.Fatalf("re-signed good value: %v", err)
	}
	e = resign(t, fx.keys[0], fx.envs[0], func(*Payload) {})
	if _, err := e.Open(fx.pubs[0], OpenOptions{}); err != nil {
		t.Fatalf("re-signed unchanged payload: %v", err)
	}
	// A different valid point, re-signed with its digest, opens: the
	// signature is what binds values, nothing else.
	c2, _ := fx.masters[1].ClientShare(fxIdentity)
	b2 := c2.Bytes()
	o, err := withValue(t, fx.keys[0], fx.envs[0], "client", b2[:]).Open(fx.pubs[0], OpenOptions{})
	if err != nil || !o.Shares.Client.Equal(c2) {
		t.Fatalf("re-signed other point: %v", err)
	}
}

func TestParseEnvelope(t *testing.T) {
	fx := sharedFixture(t)
	good := fx.files[fxIDs[0]]
	env := fx.envs[0]
	sig := base64.StdEncoding.EncodeToString(env.Signature)
	pl := base64.StdEncoding.EncodeToString(env.Payload)
	manyValues := map[string]string{}
	for i := range MaxShares + 1 {
		manyValues[fmt.Sprintf("permit/%d", i)] = "00"
	}
	mv, _ := json.Marshal(manyValues)
	pad := func(n int) []byte {
		b := bytes.Clone(good)
		return append(b, bytes.Repeat([]byte(" "), n-len(b))...)
	}
	cases := []struct {
		name string
		in   []byte
		sub  string
	}{
		{"empty", nil, "envelope"},
		{"null", []byte("null"), "lacks a payload"},
		{"empty object", []byte("{}"), "lacks a payload"},
		{"array", []byte("[]"), "envelope"},
		{"unknown field", editJSON(t, good, func(m map[string]any) { m["comment"] = "x" }), "unknown field"},
		{"trailing object", append(bytes.Clone(good), []byte("{}")...), "trailing data"},
		{"trailing garbage", append(bytes.Clone(good), 'x'), ""},
		{"two envelopes", append(bytes.Clone(good), good...), "trailing data"},
		{"truncated", good[:len(good)/2], "envelope"},
		{"oversized", pad(MaxEnvelopeSize + 1), "exceeds"},
		{"no signature", editJSON(t, good, func(m map[string]any) { delete(m, "signature") }), "lacks"},
		{"short signature", editJSON(t, good, func(m map[string]any) { m["signature"] = sig[:40] }), "lacks"},
		{"long signature", editJSON(t, good, func(m map[string]any) {
			m["signature"] = base64.StdEncoding.EncodeToString(append(bytes.Clone(env.Signature), 0))
		}), "lacks"},
		{"signature not base64", editJSON(t, good, func(m map[string]any) { m["signature"] = "!!" + sig[2:] }), "envelope"},
		{"no payload", editJSON(t, good, func(m map[string]any) { delete(m, "payload") }), "lacks a payload"},
		{"empty payload", editJSON(t, good, func(m map[string]any) { m["payload"] = "" }), "lacks a payload"},
		{"payload not base64", editJSON(t, good, func(m map[string]any) { m["payload"] = "%" + pl }), "envelope"},
		{"payload as an object", editJSON(t, good, func(m map[string]any) { m["payload"] = map[string]any{"v": 1} }), "envelope"},
		{"value not a string", editJSON(t, good, func(m map[string]any) { m["values"].(map[string]any)["client"] = 5 }), "envelope"},
		{"too many values", editJSON(t, good, func(m map[string]any) { m["values"] = json.RawMessage(mv) }), "65 values"},
		{"not UTF-8", append([]byte{0xff}, good...), "envelope"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := ParseEnvelope(c.in)
			if e != nil {
				t.Error("envelope returned")
			}
			wantErr(t, "ParseEnvelope", err, ErrMalformed, c.sub)
		})
	}
	// Whitespace up to exactly MaxEnvelopeSize is accepted.
	e, err := ParseEnvelope(pad(MaxEnvelopeSize))
	if err != nil {
		t.Fatalf("envelope of exactly MaxEnvelopeSize: %v", err)
	}
	if _, err := e.Open(fx.pubs[0], OpenOptions{}); err != nil {
		t.Fatal(err)
	}
	// No values at all parses; Open then says what is missing.
	e, err = ParseEnvelope(editJSON(t, good, func(m map[string]any) { delete(m, "values") }))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Open(fx.pubs[0], OpenOptions{AllowWithheldClient: true})
	wantErr(t, "no values", err, ErrMalformed, "missing")
}

// TestOpenIndependentOfSeal checks Open against an envelope built by hand
// from the documented format (not by Seal), so Seal and Open cannot agree on
// a private misreading of doc.go.
func TestOpenIndependentOfSeal(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mpinkex.NewMasterShare(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PermitShare(fxIdentity, 7)
	if err != nil {
		t.Fatal(err)
	}
	pb := p.Bytes()
	sum := sha256.Sum256(pb[:])
	payload := fmt.Sprintf(`{"v":1,"domain":"d","dta":"a-1","identity":"id","epoch_len":60,`+
		`"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",`+
		`"shares":[{"kind":"permit","epoch":7,"sha256":"%x"}]}`, sum)
	sig := ed25519.Sign(priv, append([]byte("milagro keydir envelope v1\x00"), payload...))
	doc := fmt.Sprintf(`{"payload":%q,"signature":%q,"values":{"permit/7":"%x"}}`,
		base64.StdEncoding.EncodeToString([]byte(payload)), base64.StdEncoding.EncodeToString(sig), pb)
	e, err := ParseEnvelope([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	o, err := e.Open(pub, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Shares.Permits[7]; !got.Equal(p) || o.Payload.Identity != "id" || o.Payload.EpochLen != 60 {
		t.Errorf("opened %+v", o)
	}
}

// TestOpenRefusesNonCanonicalPayload: signed bytes that decode to a valid
// payload but are not what json.Marshal writes (another time offset, key
// order, spacing, a duplicate key) are refused, so that every reader sees the
// same content.
func TestOpenRefusesNonCanonicalPayload(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mpinkex.NewMasterShare(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PermitShare(fxIdentity, 7)
	if err != nil {
		t.Fatal(err)
	}
	pb := p.Bytes()
	sum := sha256.Sum256(pb[:])
	shares := fmt.Sprintf(`"shares":[{"kind":"permit","epoch":7,"sha256":"%x"}]`, sum)
	for name, payload := range map[string]string{
		"canonical":      `{"v":1,"domain":"d","dta":"a-1","identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
		"offset":         `{"v":1,"domain":"d","dta":"a-1","identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00+00:00",` + shares + `}`,
		"key order":      `{"domain":"d","v":1,"dta":"a-1","identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
		"spacing":        `{"v": 1,"domain":"d","dta":"a-1","identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
		"duplicate key":  `{"v":1,"domain":"d","dta":"a-1","identity":"x","identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
		"case-folded":    `{"v":1,"domain":"d","dta":"a-1","Identity":"id","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
		"escaped letter": `{"v":1,"domain":"d","dta":"a-1","identity":"\u0069d","epoch_len":60,"issued_at":"2025-01-01T00:00:00Z","expires_at":"2025-01-01T00:01:00Z",` + shares + `}`,
	} {
		t.Run(name, func(t *testing.T) {
			sig := ed25519.Sign(priv, append([]byte("milagro keydir envelope v1\x00"), payload...))
			e := &Envelope{Payload: []byte(payload), Signature: sig, Values: map[string]string{"permit/7": fmt.Sprintf("%x", pb)}}
			_, err := e.Open(pub, OpenOptions{})
			if name == "canonical" {
				if err != nil {
					t.Fatalf("canonical payload refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed (non-canonical)", err)
			}
		})
	}
}
