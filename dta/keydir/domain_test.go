package keydir

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
)

func TestValidDTAID(t *testing.T) {
	good := []string{"a", "0", "dta-1", "dta1", "a-", strings.Repeat("a", 63), "0-0-0"}
	bad := []string{"", "-a", "A", "dta_1", "dta.1", "dta/1", "..", ".", "dta 1", strings.Repeat("a", 64), "dtä", "a\x00", "a\n"}
	for _, id := range good {
		if !ValidDTAID(id) {
			t.Errorf("ValidDTAID(%q) = false", id)
		}
	}
	for _, id := range bad {
		if ValidDTAID(id) {
			t.Errorf("ValidDTAID(%q) = true", id)
		}
	}
}

func TestDomainRoundTrip(t *testing.T) {
	fx := sharedFixture(t)
	d, err := ParseDomain(fx.domJSON)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != fxDomainName || d.EpochLen != fxEpochLen || len(d.DTAs) != 3 {
		t.Fatalf("parsed %+v", d)
	}
	for i, id := range fxIDs {
		a, ok := d.DTA(id)
		if !ok || a.ID != id || a.URL != fx.dom.DTAs[i].URL {
			t.Fatalf("DTA(%s) = %+v, %v", id, a, ok)
		}
		k, err := a.PublicKey()
		if err != nil || !k.Equal(fx.pubs[i]) {
			t.Fatalf("PublicKey of %s: %v", id, err)
		}
	}
	if _, ok := d.DTA("dta-9"); ok {
		t.Error("DTA found an unlisted id")
	}
	if !bytes.Equal(d.Marshal(), fx.domJSON) {
		t.Error("Marshal of the parsed domain differs")
	}
}

func TestParseDomainRejects(t *testing.T) {
	fx := sharedFixture(t)
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	otherKey := base64.StdEncoding.EncodeToString(pub)
	dta := func(i int) map[string]any {
		a := fx.dom.DTAs[i]
		return map[string]any{"id": a.ID, "url": a.URL, "signing_key": a.SigningKey}
	}
	// edit rewrites domain.json through a generic map.
	edit := func(f func(m map[string]any)) []byte { return editJSON(t, fx.domJSON, f) }
	setDTA := func(i int, key string, v any) []byte {
		return edit(func(m map[string]any) { m["dtas"].([]any)[i].(map[string]any)[key] = v })
	}
	cases := []struct {
		name string
		in   []byte
		sub  string
	}{
		{"empty", nil, "parse domain.json"},
		{"null", []byte("null"), "domain name"},
		{"array", []byte("[]"), "parse domain.json"},
		{"not UTF-8", bytes.Replace(fx.domJSON, []byte(fxDomainName), []byte("test\xff"), 1), "UTF-8"},
		{"unknown top-level field", edit(func(m map[string]any) { m["comment"] = "x" }), "unknown field"},
		{"unknown D-TA field", setDTA(0, "weight", 1), "unknown field"},
		{"trailing data", append(bytes.Clone(fx.domJSON), []byte(`{}`)...), "trailing data"},
		{"domain name empty", edit(func(m map[string]any) { m["domain"] = "" }), "domain name"},
		{"domain name of 256 bytes", edit(func(m map[string]any) { m["domain"] = strings.Repeat("d", 256) }), "domain name"},
		{"zero epoch_len", edit(func(m map[string]any) { m["epoch_len"] = 0 }), "epoch_len"},
		{"missing epoch_len", edit(func(m map[string]any) { delete(m, "epoch_len") }), "epoch_len"},
		{"epoch_len over a year", edit(func(m map[string]any) { m["epoch_len"] = 366*86400 + 1 }), "epoch_len"},
		{"negative epoch_len", edit(func(m map[string]any) { m["epoch_len"] = -1 }), "parse domain.json"},
		{"no D-TAs", edit(func(m map[string]any) { m["dtas"] = []any{} }), "lists no D-TA"},
		{"dtas null", edit(func(m map[string]any) { m["dtas"] = nil }), "lists no D-TA"},
		{"duplicate ids", edit(func(m map[string]any) {
			b := dta(1)
			b["id"] = fxIDs[0]
			m["dtas"] = []any{dta(0), b}
		}), "listed twice"},
		{"same D-TA twice", edit(func(m map[string]any) { m["dtas"] = []any{dta(0), dta(0)} }), "listed twice"},
		{"id empty", setDTA(1, "id", ""), "D-TA id"},
		{"id upper case", setDTA(1, "id", "DTA-2"), "D-TA id"},
		{"id with a slash", setDTA(1, "id", "../dta-2"), "D-TA id"},
		{"id with a dot", setDTA(1, "id", "dta.2"), "D-TA id"},
		{"id starting with a hyphen", setDTA(1, "id", "-dta"), "D-TA id"},
		{"id of 64 chars", setDTA(1, "id", strings.Repeat("a", 64)), "D-TA id"},
		{"url empty", setDTA(2, "url", ""), "url"},
		{"url without scheme", setDTA(2, "url", "127.0.0.1:3"), "url"},
		{"url ftp", setDTA(2, "url", "ftp://127.0.0.1:3"), "url"},
		{"url without host", setDTA(2, "url", "https://"), "url"},
		{"url path only", setDTA(2, "url", "https:///path"), "url"},
		{"url unparsable", setDTA(2, "url", "https://[::1"), "url"},
		{"url with a control character", setDTA(2, "url", "https://127.0.0.1:3/\x7f"), "url"},
		{"signing key missing", setDTA(0, "signing_key", ""), "signing_key"},
		{"signing key not base64", setDTA(0, "signing_key", "not base64!"), "signing_key"},
		{"signing key url-safe base64", setDTA(0, "signing_key", strings.NewReplacer("+", "-", "/", "_").Replace(fx.dom.DTAs[0].SigningKey+"+/")), "signing_key"},
		{"signing key of 31 bytes", setDTA(0, "signing_key", base64.StdEncoding.EncodeToString(fx.pubs[0][:31])), "signing_key"},
		{"signing key of 33 bytes", setDTA(0, "signing_key", base64.StdEncoding.EncodeToString(append(bytes.Clone(fx.pubs[0]), 0))), "signing_key"},
		{"signing key as a number", setDTA(0, "signing_key", 5), "parse domain.json"},
		{"duplicate signing keys", setDTA(2, "signing_key", fx.dom.DTAs[0].SigningKey), "reuses another D-TA's signing key"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := ParseDomain(c.in)
			if d != nil {
				t.Error("domain returned")
			}
			wantErr(t, "ParseDomain", err, nil, c.sub)
		})
	}
	// Control: each edit helper leaves a valid document when it changes
	// nothing of substance.
	for name, b := range map[string][]byte{
		"other key":  setDTA(2, "signing_key", otherKey),
		"http url":   setDTA(2, "url", "http://dta-3.example"),
		"long id":    setDTA(1, "id", strings.Repeat("a", 63)),
		"one D-TA":   edit(func(m map[string]any) { m["dtas"] = []any{dta(0)} }),
		"max epoch":  edit(func(m map[string]any) { m["epoch_len"] = 366 * 86400 }),
		"unicode id": edit(func(m map[string]any) { m["domain"] = "exämple" }),
	} {
		if _, err := ParseDomain(b); err != nil {
			t.Errorf("control %s: %v", name, err)
		}
	}
}
