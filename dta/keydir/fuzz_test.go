package keydir

// Fuzz targets. The seed corpora under testdata/fuzz/<FuzzName>/ hold valid
// files of the deterministic fixture (detFixture) and near misses of them;
// regenerate them with
//
//	go test ./dta/keydir -run '^TestWriteFuzzCorpus$' -keydir.write-corpus

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

var writeCorpus = flag.Bool("keydir.write-corpus", false, "rewrite the seed corpora under testdata/fuzz")

// FuzzParseEnvelope: ParseEnvelope then Open with D-TA 1's fixed key never
// panics, fails only with ErrMalformed or ErrSignature, and whatever opens
// is consistent with its signed payload.
func FuzzParseEnvelope(f *testing.F) {
	fx := detFixture(f)
	f.Add(fx.files["dta-1"])
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEnvelope(b)
		if err != nil {
			if e != nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseEnvelope: %v (envelope %v)", err, e != nil)
			}
			return
		}
		for _, allow := range []bool{false, true} {
			o, err := e.Open(fx.pubs[0], OpenOptions{AllowWithheldClient: allow})
			if err != nil {
				if o != nil || !(errors.Is(err, ErrMalformed) || errors.Is(err, ErrSignature)) {
					t.Fatalf("Open: %v (opened %v)", err, o != nil)
				}
				continue
			}
			checkOpened(t, e, o, allow)
		}
	})
}

// FuzzOpenPayload signs the fuzzed bytes as a payload with D-TA 1's fixed
// key, next to the values of D-TA 1's valid envelope, and opens the result:
// this reaches the payload checks behind the signature, which
// FuzzParseEnvelope cannot forge its way to. Open never panics, fails only
// with ErrMalformed or ErrSignature (a digest that does not match a value),
// and what opens is consistent.
func FuzzOpenPayload(f *testing.F) {
	fx := detFixture(f)
	f.Add(fx.envs[0].Payload)
	f.Fuzz(func(t *testing.T, p []byte) {
		e := signPayload(fx.keys[0], fx.envs[0], p)
		for _, allow := range []bool{false, true} {
			o, err := e.Open(fx.pubs[0], OpenOptions{AllowWithheldClient: allow})
			if err != nil {
				if o != nil || !(errors.Is(err, ErrMalformed) || errors.Is(err, ErrSignature)) {
					t.Fatalf("Open: %v (opened %v)", err, o != nil)
				}
				continue
			}
			checkOpened(t, e, o, allow)
		}
	})
}

// checkOpened checks the invariants of a successfully opened envelope.
func checkOpened(t *testing.T, e *Envelope, o *Opened, allow bool) {
	t.Helper()
	if err := checkPayload(&o.Payload); err != nil {
		t.Fatalf("opened a payload that fails its checks: %v", err)
	}
	refs := map[string]ShareRef{}
	for _, r := range o.Payload.Shares {
		refs[r.Key()] = r
	}
	for k := range e.Values {
		if _, ok := refs[k]; !ok {
			t.Fatalf("opened with value %q not covered by the signature", k)
		}
	}
	n := len(o.Shares.Permits) + len(o.Withheld)
	for _, p := range []bool{o.Shares.Client != nil, o.Shares.Server != nil, o.Shares.Domain != nil} {
		if p {
			n++
		}
	}
	if n != len(refs) {
		t.Fatalf("%d shares committed, %d decoded or withheld", len(refs), n)
	}
	if len(o.Withheld) > 0 && (!allow || len(o.Withheld) != 1 || o.Withheld[0] != KindClient) {
		t.Fatalf("withheld %v with allow %v", o.Withheld, allow)
	}
	for _, p := range []*pairing.G1{o.Shares.Client} {
		if p != nil && p.IsIdentity() {
			t.Fatal("identity share opened")
		}
	}
	for _, p := range o.Shares.Permits {
		if p.IsIdentity() {
			t.Fatal("identity permit share opened")
		}
	}
	for _, p := range []*pairing.G2{o.Shares.Server, o.Shares.Domain} {
		if p != nil && p.IsIdentity() {
			t.Fatal("identity G2 share opened")
		}
	}
}

// FuzzParseDomain: ParseDomain never panics, and what it accepts validates
// and survives Marshal → ParseDomain unchanged.
func FuzzParseDomain(f *testing.F) {
	f.Add(detFixture(f).domJSON)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDomain(b)
		if err != nil {
			if d != nil {
				t.Fatal("domain returned with an error")
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("accepted an invalid domain: %v", err)
		}
		for i := range d.DTAs {
			if _, err := d.DTAs[i].PublicKey(); err != nil || !ValidDTAID(d.DTAs[i].ID) {
				t.Fatalf("accepted D-TA %q: %v", d.DTAs[i].ID, err)
			}
		}
		m := d.Marshal()
		d2, err := ParseDomain(m)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", m, err)
		}
		if !bytes.Equal(d2.Marshal(), m) {
			t.Fatalf("round trip changed %q", m)
		}
	})
}

// FuzzParseToken: ParseToken never panics, fails only with ErrMalformed,
// and what it accepts is a valid identity and a non-identity point that
// round-trips.
func FuzzParseToken(f *testing.F) {
	fx := detFixture(f)
	f.Add(MarshalToken(fxIdentity, fx.token(f)))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, p, err := ParseToken(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || id != "" || !p.IsIdentity() {
				t.Fatalf("ParseToken: %v, %q", err, id)
			}
			return
		}
		if err := mpinkex.ValidateID(id); err != nil || p.IsIdentity() {
			t.Fatalf("accepted identity %q (%v) or the identity point", id, err)
		}
		id2, p2, err := ParseToken(MarshalToken(id, p))
		if err != nil || id2 != id || !p2.Equal(p) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzAssemble puts the fuzzed bytes in place of D-TA 1's envelope, the
// other two being valid: Assemble never panics, and it returns a set only
// when the bytes are a valid envelope of D-TA 1, and then the set's sums
// are the sums of the shares that envelope opens to and the other two.
func FuzzAssemble(f *testing.F) {
	fx := detFixture(f)
	f.Add(fx.files["dta-1"])
	f.Add(fx.envs[0].Withhold(KindClient).Marshal())
	withheld := map[string][]byte{}
	for i, env := range fx.envs {
		withheld[fxIDs[i]] = env.Withhold(KindClient).Marshal()
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, withToken := range []bool{false, true} {
			files := map[string][]byte{"dta-2": fx.files["dta-2"], "dta-3": fx.files["dta-3"], "dta-1": b}
			if withToken {
				files["dta-2"], files["dta-3"] = withheld["dta-2"], withheld["dta-3"]
			}
			set, err := Assemble(fx.dom, files, withToken)
			if err != nil {
				if set != nil {
					t.Fatal("set returned with an error")
				}
				continue
			}
			checkAssembled(t, fx, b, set, withToken)
		}
	})
}

// checkAssembled re-derives a set Assemble accepted from first principles.
func checkAssembled(t *testing.T, fx *fixture, b []byte, set *Set, withToken bool) {
	t.Helper()
	e, err := ParseEnvelope(b)
	if err != nil {
		t.Fatalf("set from bytes ParseEnvelope refuses: %v", err)
	}
	o, err := e.Open(fx.pubs[0], OpenOptions{AllowWithheldClient: withToken})
	if err != nil {
		t.Fatalf("set from an envelope that does not open: %v", err)
	}
	p := o.Payload
	if p.DTA != "dta-1" || p.Domain != fx.dom.Name || p.EpochLen != fx.dom.EpochLen || p.Identity != set.Identity {
		t.Fatalf("set from a foreign envelope: %+v", p)
	}
	if withToken && o.Shares.Client != nil {
		t.Fatal("raw client share accepted with a token")
	}
	// The other two D-TAs' shares are the fixture's; sum them with the
	// opened ones.
	var cs []pairing.G1
	var sk, ss []pairing.G2
	if o.Shares.Client != nil {
		cs = append(cs, *o.Shares.Client)
	}
	if o.Shares.Server != nil {
		sk = append(sk, *o.Shares.Server)
	}
	if o.Shares.Domain != nil {
		ss = append(ss, *o.Shares.Domain)
	}
	perm := map[uint64][]pairing.G1{}
	for ep, v := range o.Shares.Permits {
		perm[ep] = append(perm[ep], v)
	}
	for _, m := range fx.masters[1:] {
		if o.Shares.Client != nil {
			c, _ := m.ClientShare(set.Identity)
			cs = append(cs, c)
		}
		if o.Shares.Server != nil {
			s, _ := m.ServerShare(set.Identity)
			sk = append(sk, s)
		}
		if o.Shares.Domain != nil {
			ss = append(ss, m.DomainShare())
		}
		for ep := range o.Shares.Permits {
			v, _ := m.PermitShare(set.Identity, ep)
			perm[ep] = append(perm[ep], v)
		}
	}
	if (set.CS == nil) != (len(cs) == 0) || (set.SK == nil) != (len(sk) == 0) || (set.SS == nil) != (len(ss) == 0) ||
		len(set.Permits) != len(perm) {
		t.Fatal("set holds other kinds than the envelope")
	}
	if len(cs) > 0 {
		if v, _ := mpinkex.SumG1(cs...); !set.CS.Equal(v) {
			t.Fatal("CS differs")
		}
	}
	if len(sk) > 0 {
		if v, _ := mpinkex.SumG2(sk...); !set.SK.Equal(v) {
			t.Fatal("SK differs")
		}
	}
	if len(ss) > 0 {
		if v, _ := mpinkex.SumG2(ss...); !set.SS.Equal(v) {
			t.Fatal("SS differs")
		}
	}
	for ep, v := range perm {
		if s, _ := mpinkex.SumG1(v...); !set.Permits[ep].Equal(s) {
			t.Fatalf("permit %d differs", ep)
		}
	}
}

// corpus returns the seed files of every fuzz target: name → input.
func corpus(t testing.TB) map[string]map[string][]byte {
	fx := detFixture(t)
	k0 := fx.keys[0]
	e0 := fx.envs[0]
	good := fx.files["dta-1"]
	permit := fmt.Sprintf("permit/%d", fxEpoch)
	re := func(f func(*Payload)) []byte { return resign(t, k0, e0, f).Marshal() }
	val := func(k string, v []byte) []byte { return withValue(t, k0, e0, k, v).Marshal() }
	edit := func(b []byte, f func(map[string]any)) []byte { return editJSON(t, b, f) }
	flipped := cloneEnv(e0)
	flipped.Payload[len(flipped.Payload)/2] ^= 1
	extra := cloneEnv(e0)
	extra.Values["permit/99"] = extra.Values[permit]
	swapped := cloneEnv(e0)
	c2, _ := fx.masters[1].ClientShare(fxIdentity)
	swapped.Values["client"] = g1Hex(c2)
	otherID := fx.seal(t, 0, fx.meta(0, fxIdentity2), fx.allShares(t, fx.masters[0], fxIdentity2)).Marshal()
	fewer := fx.seal(t, 0, fx.meta(0, fxIdentity), fx.allShares(t, fx.masters[0], fxIdentity)[:4]).Marshal()

	envelopes := map[string][]byte{
		"valid":                 good,
		"valid-withheld-client": e0.Withhold(KindClient).Marshal(),
		"valid-other-identity":  otherID,
		"valid-fewer-kinds":     fewer,
		"other-dta":             fx.files["dta-2"],
		"payload-flipped":       flipped.Marshal(),
		"value-not-covered":     extra.Marshal(),
		"value-swapped":         swapped.Marshal(),
		"trailing-data":         append(bytes.Clone(good), '{', '}'),
		"unknown-field":         edit(good, func(m map[string]any) { m["x"] = 1 }),
		"truncated":             good[:len(good)/2],
		"short-signature":       edit(good, func(m map[string]any) { m["signature"] = "AAAA" }),
		"no-values":             edit(good, func(m map[string]any) { delete(m, "values") }),
		"empty-object":          []byte("{}"),
		"null":                  []byte("null"),
		"empty":                 {},
		"signed-version-2":      re(func(p *Payload) { p.V = 2 }),
		"signed-duplicate-ref":  re(func(p *Payload) { p.Shares = append(p.Shares, p.Shares[0]) }),
		"signed-epoch-on-client": re(func(p *Payload) {
			p.Shares[0].Epoch = 5
		}),
		"signed-bad-sha256":       re(func(p *Payload) { p.Shares[0].SHA256 = strings.ToUpper(p.Shares[0].SHA256) }),
		"signed-expired-order":    re(func(p *Payload) { p.ExpiresAt = p.IssuedAt }),
		"signed-other-epoch-len":  re(func(p *Payload) { p.EpochLen = 60 }),
		"signed-other-domain":     re(func(p *Payload) { p.Domain = "other.example" }),
		"signed-names-dta-2":      re(func(p *Payload) { p.DTA = "dta-2" }),
		"signed-off-subgroup-g1":  val("client", offSubgroupG1),
		"signed-off-subgroup-g2":  val("server", offSubgroupG2),
		"signed-identity-permit":  val(permit, identityG1),
		"signed-identity-domain":  val("domain", identityG2),
		"signed-unknown-field":    resign(t, k0, e0, func(*Payload) {}).Marshal(), // replaced below
		"signed-invalid-utf8":     nil,                                            // replaced below
		"signed-trailing-payload": nil,                                            // replaced below
	}
	envelopes["signed-unknown-field"] = signPayload(k0, e0, editJSON(t, e0.Payload, func(m map[string]any) { m["x"] = 1 })).Marshal()
	envelopes["signed-invalid-utf8"] = signPayload(k0, e0, bytes.Replace(e0.Payload, []byte(fxIdentity), []byte("a\xffb"), 1)).Marshal()
	envelopes["signed-trailing-payload"] = signPayload(k0, e0, append(bytes.Clone(e0.Payload), ' ', '1')).Marshal()

	dom := fx.domJSON
	dta := func(i int, k string, v any) []byte {
		return edit(dom, func(m map[string]any) { m["dtas"].([]any)[i].(map[string]any)[k] = v })
	}
	domains := map[string][]byte{
		"valid":             dom,
		"valid-one-dta":     edit(dom, func(m map[string]any) { m["dtas"] = m["dtas"].([]any)[:1] }),
		"duplicate-id":      dta(1, "id", "dta-1"),
		"bad-id":            dta(1, "id", "DTA_2"),
		"bad-url":           dta(2, "url", "ftp://x"),
		"url-no-host":       dta(2, "url", "https://"),
		"bad-key":           dta(0, "signing_key", "AAAA"),
		"duplicate-key":     dta(2, "signing_key", fx.dom.DTAs[0].SigningKey),
		"zero-epoch-len":    edit(dom, func(m map[string]any) { m["epoch_len"] = 0 }),
		"no-dtas":           edit(dom, func(m map[string]any) { m["dtas"] = []any{} }),
		"unknown-field":     edit(dom, func(m map[string]any) { m["x"] = 1 }),
		"unknown-dta-field": dta(0, "x", 1),
		"trailing-data":     append(bytes.Clone(dom), '{', '}'),
		"empty-name":        edit(dom, func(m map[string]any) { m["domain"] = "" }),
		"invalid-utf8":      bytes.Replace(dom, []byte(fxDomainName), []byte("a\xff"), 1),
		"empty":             {},
	}

	tokGood := MarshalToken(fxIdentity, fx.token(t))
	tok := func(k string, v any) []byte { return edit(tokGood, func(m map[string]any) { m[k] = v }) }
	tokens := map[string][]byte{
		"valid":          tokGood,
		"identity-point": MarshalToken(fxIdentity, pairing.G1{}),
		"off-subgroup":   tok("token", fmt.Sprintf("%x", offSubgroupG1)),
		"not-hex":        tok("token", "zz"),
		"version-2":      tok("v", 2),
		"unknown-field":  tok("factor", "1234"),
		"empty-identity": tok("identity", ""),
		"invalid-utf8":   bytes.Replace(tokGood, []byte(fxIdentity), []byte("a\xff"), 1),
		"trailing-data":  append(bytes.Clone(tokGood), '{', '}'),
		"empty":          {},
	}

	pl := e0.Payload
	plEdit := func(f func(map[string]any)) []byte { return editJSON(t, pl, f) }
	plShare := func(k string, v any) []byte {
		return plEdit(func(m map[string]any) { m["shares"].([]any)[0].(map[string]any)[k] = v })
	}
	payloads := map[string][]byte{
		"valid":            pl,
		"values-uncovered": plEdit(func(m map[string]any) { m["shares"] = m["shares"].([]any)[:1] }),
		"version-2":        plEdit(func(m map[string]any) { m["v"] = 2 }),
		"unknown-field":    plEdit(func(m map[string]any) { m["x"] = 1 }),
		"duplicate-ref":    plEdit(func(m map[string]any) { m["shares"] = append(m["shares"].([]any), m["shares"].([]any)[0]) }),
		"epoch-on-client":  plShare("epoch", 3),
		"unknown-kind":     plShare("kind", "master"),
		"sha256-upper":     plShare("sha256", strings.ToUpper(payloadOf(t, e0).Shares[0].SHA256)),
		"sha256-short":     plShare("sha256", "00"),
		"expires-early":    plEdit(func(m map[string]any) { m["expires_at"] = m["issued_at"] }),
		"identity-empty":   plEdit(func(m map[string]any) { m["identity"] = "" }),
		"identity-utf8":    bytes.Replace(pl, []byte(fxIdentity), []byte("a\xff"), 1),
		"epoch-len-zero":   plEdit(func(m map[string]any) { m["epoch_len"] = 0 }),
		"bad-dta":          plEdit(func(m map[string]any) { m["dta"] = "DTA" }),
		"trailing-data":    append(bytes.Clone(pl), '{', '}'),
		"null":             []byte("null"),
		"missing-v":        plEdit(func(m map[string]any) { delete(m, "v") }),
		"shares-not-array": plEdit(func(m map[string]any) { m["shares"] = 1 }),
	}

	assemble := map[string][]byte{}
	for _, n := range []string{"valid", "valid-withheld-client", "valid-other-identity", "valid-fewer-kinds", "other-dta",
		"payload-flipped", "value-not-covered", "value-swapped", "truncated", "signed-other-epoch-len",
		"signed-other-domain", "signed-names-dta-2", "signed-off-subgroup-g1", "signed-identity-domain", "empty"} {
		assemble[n] = envelopes[n]
	}
	return map[string]map[string][]byte{
		"FuzzParseEnvelope": envelopes,
		"FuzzParseDomain":   domains,
		"FuzzParseToken":    tokens,
		"FuzzAssemble":      assemble,
		"FuzzOpenPayload":   payloads,
	}
}

// TestWriteFuzzCorpus rewrites the seed corpora when -keydir.write-corpus
// is given.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*writeCorpus {
		t.Skip("-keydir.write-corpus not set")
	}
	for target, files := range corpus(t) {
		d := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range files {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if err := os.WriteFile(filepath.Join(d, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFuzzCorpusCurrent checks the seed corpora on disk are the ones the
// deterministic fixture produces, so the "valid" seeds really verify and
// the near misses are near.
func TestFuzzCorpusCurrent(t *testing.T) {
	for target, files := range corpus(t) {
		for name, b := range files {
			got, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
			if err != nil {
				t.Errorf("%s/%s: %v", target, name, err)
				continue
			}
			if want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b); string(got) != want {
				t.Errorf("%s/%s is stale: rerun with -keydir.write-corpus", target, name)
			}
		}
	}
	// The valid seeds of FuzzAssemble assemble, so the fuzz target's
	// oracle runs on them; the near misses do not.
	fx := detFixture(t)
	seeds := corpus(t)["FuzzAssemble"]
	for name, b := range seeds {
		files := fx.cloneFiles()
		files["dta-1"] = b
		withToken := name == "valid-withheld-client"
		if withToken {
			files["dta-2"] = fx.envs[1].Withhold(KindClient).Marshal()
			files["dta-3"] = fx.envs[2].Withhold(KindClient).Marshal()
		}
		set, err := Assemble(fx.dom, files, withToken)
		if wantSet := name == "valid" || withToken; wantSet != (err == nil) {
			t.Errorf("FuzzAssemble seed %s: set %v, error %v", name, set != nil, err)
		}
	}
}
