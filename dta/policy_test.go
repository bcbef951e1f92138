package dta

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/milagro-sc/milagro/dta/keydir"
)

const (
	tokWeb   = "web-token-0123456789abcdef"
	tokGW    = "gateway-token-0123456789ab"
	tokAdmin = "admin-token-0123456789abcd"
)

func testPolicyYAML() string {
	return `
requesters:
  - name: web-frontend
    token_sha256: "` + HashToken(tokWeb) + `"
    identities: ["spiffe://prod/ns/web/*", "spiffe://prod/ns/web-*/sa/api"]
    kinds: [client, permit]
  - name: gateway
    token_sha256: "` + strings.ToUpper(HashToken(tokGW)) + `"
    identities: ["spiffe://prod/**"]
    kinds: [server, domain]
    server: true
    rate_per_minute: 600
  - name: ops
    token_sha256: ` + HashToken(tokAdmin) + `
    admin: true
`
}

func mustPolicy(t *testing.T) *Policy {
	t.Helper()
	p, err := ParsePolicy([]byte(testPolicyYAML()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParsePolicy(t *testing.T) {
	p := mustPolicy(t)
	if len(p.Requesters) != 3 {
		t.Fatalf("%d requesters", len(p.Requesters))
	}
	web, gw, ops := p.Requesters[0], p.Requesters[1], p.Requesters[2]
	if web.Name != "web-frontend" || web.RatePerMinute != DefaultRatePerMinute || web.Server || web.Admin {
		t.Errorf("web: %+v", web)
	}
	if len(web.Kinds) != 2 || web.Kinds[0] != keydir.KindClient || web.Kinds[1] != keydir.KindPermit {
		t.Errorf("web kinds: %v", web.Kinds)
	}
	if gw.TokenSHA256 != HashToken(tokGW) {
		t.Errorf("gateway hash not normalised to lower case: %s", gw.TokenSHA256)
	}
	if gw.RatePerMinute != 600 || !gw.Server {
		t.Errorf("gateway: %+v", gw)
	}
	if !ops.Admin || len(ops.Kinds) != 0 {
		t.Errorf("ops: %+v", ops)
	}
}

func TestParsePolicyErrors(t *testing.T) {
	h1, h2 := HashToken("one"), HashToken("two")
	entry := func(fields string) string {
		return "requesters:\n  - " + strings.ReplaceAll(strings.TrimSpace(fields), "\n", "\n    ") + "\n"
	}
	tests := []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"empty", "", []string{"empty document"}},
		{"no requesters", "requesters: []\n", []string{"no requesters"}},
		{"unknown top-level field", "requesters: []\nextra: 1\n", []string{"extra"}},
		{"unknown field", entry("name: a\ntoken_sha256: " + h1 + "\nadmin: true\ntoken: secret"), []string{"field token not found"}},
		{"misspelt field", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x]\nkind: [client]"), []string{"field kind not found"}},
		{"two documents", entry("name: a\ntoken_sha256: "+h1+"\nadmin: true") + "---\nrequesters: []\n", []string{"more than one"}},
		{"not YAML", "requesters: [", []string{"policy:"}},
		{"wrong type", entry("name: a\ntoken_sha256: " + h1 + "\nadmin: maybe"), []string{"policy:"}},
		{"null entry", "requesters:\n  -\n", []string{"requesters[0]: empty entry"}},
		{"missing name", entry("token_sha256: " + h1 + "\nadmin: true"), []string{"requesters[0]", "name: required"}},
		{"bad name", entry("name: \"a b\"\ntoken_sha256: " + h1 + "\nadmin: true"), []string{"requesters[0]", "name:"}},
		{"missing hash", entry("name: a\nadmin: true"), []string{`requester "a"`, "token_sha256: required"}},
		{"token instead of hash", entry("name: a\ntoken_sha256: my-secret-token\nadmin: true"), []string{`requester "a"`, "token_sha256: want 64 hex"}},
		{"short hash", entry("name: a\ntoken_sha256: " + h1[:62] + "\nadmin: true"), []string{"token_sha256: want 64 hex"}},
		{"bad pattern", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [\"spiffe://prod/a**\"]\nkinds: [client]"), []string{`requester "a"`, "identities[0]", `"**"`}},
		{"trailing slash pattern", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [\"x\", \"spiffe://prod/\"]\nkinds: [client]"), []string{"identities[1]", "empty path segment"}},
		{"duplicate pattern", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x, x]\nkinds: [client]"), []string{"identities[1]", "twice"}},
		{"unknown kind", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x]\nkinds: [client, master]"), []string{`requester "a"`, "kinds[1]", `"master"`}},
		{"duplicate kind", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x]\nkinds: [client, client]"), []string{"kinds[1]", "twice"}},
		{"domain without server", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x]\nkinds: [server, domain]"), []string{`requester "a"`, "kinds[1]", "server: true"}},
		{"kinds without identities", entry("name: a\ntoken_sha256: " + h1 + "\nkinds: [client]"), []string{"identities: required"}},
		{"identities without kinds", entry("name: a\ntoken_sha256: " + h1 + "\nidentities: [x]"), []string{"kinds: required"}},
		{"grants nothing", entry("name: a\ntoken_sha256: " + h1), []string{"grants nothing"}},
		{"negative rate", entry("name: a\ntoken_sha256: " + h1 + "\nadmin: true\nrate_per_minute: -1"), []string{"rate_per_minute"}},
		{"duplicate name", entry("name: a\ntoken_sha256: "+h1+"\nadmin: true") + "  - name: a\n    token_sha256: " + h2 + "\n    admin: true\n", []string{`requester "a"`, "name: same as requesters[0]"}},
		{"duplicate hash", entry("name: a\ntoken_sha256: "+h1+"\nadmin: true") + "  - name: b\n    token_sha256: " + strings.ToUpper(h1) + "\n    admin: true\n", []string{`requester "b"`, `token_sha256: same as requester "a"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.doc))
			if err == nil {
				t.Fatalf("no error for\n%s", tt.doc)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte(testPolicyYAML()), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o644, 0o400} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPolicy(path); err != nil {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	for _, mode := range []os.FileMode{0o620, 0o602, 0o666} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPolicy(path); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("mode %04o: err = %v", mode, err)
		}
	}
	if _, err := LoadPolicy(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("folder: err = %v", err)
	}
	if _, err := LoadPolicy(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: err = %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("requesters: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("parse error does not name the file: %v", err)
	}
}

func TestAuthenticate(t *testing.T) {
	p := mustPolicy(t)
	for _, tt := range []struct {
		token string
		want  string // requester name, "" = none
	}{
		{tokWeb, "web-frontend"},
		{tokGW, "gateway"}, // hash written in upper case in the file
		{tokAdmin, "ops"},
		{"", ""},
		{"web-token-0123456789abcdeF", ""}, // right length, one byte off
		{strings.Repeat("x", len(tokWeb)), ""},
		{tokWeb + " ", ""},
		{HashToken(tokWeb), ""}, // the hash is not the token
	} {
		r, ok := p.Authenticate(tt.token)
		switch {
		case tt.want == "" && (ok || r != nil):
			t.Errorf("Authenticate(%q) = %v, %v; want nobody", tt.token, r, ok)
		case tt.want != "" && (!ok || r == nil || r.Name != tt.want):
			t.Errorf("Authenticate(%q) = %v, %v; want %s", tt.token, r, ok, tt.want)
		}
	}
	var nilPolicy *Policy
	if _, ok := nilPolicy.Authenticate(tokWeb); ok {
		t.Error("nil policy authenticated")
	}
	// A hand-built policy with a malformed hash matches nothing, and does
	// not panic.
	hand := &Policy{Requesters: []*Requester{{Name: "x", TokenSHA256: strings.Repeat("ab", 40)}, nil, {Name: "y", TokenSHA256: "zz"}}}
	if _, ok := hand.Authenticate(tokWeb); ok {
		t.Error("malformed hash matched")
	}
}

func TestAuthenticateLastRequester(t *testing.T) {
	// The match must be found wherever it is, not only first.
	var doc strings.Builder
	doc.WriteString("requesters:\n")
	for i := range 50 {
		doc.WriteString("  - name: r" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "\n")
		doc.WriteString("    token_sha256: " + HashToken("token-"+string(rune('A'+i))) + "\n    admin: true\n")
	}
	p, err := ParsePolicy([]byte(doc.String()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		r, ok := p.Authenticate("token-" + string(rune('A'+i)))
		if !ok || r != p.Requesters[i] {
			t.Fatalf("token %d: got %v, %v", i, r, ok)
		}
	}
}

func TestAuthorize(t *testing.T) {
	p := mustPolicy(t)
	web, gw, ops := p.Requesters[0], p.Requesters[1], p.Requesters[2]
	K := func(ks ...keydir.Kind) []keydir.Kind { return ks }
	tests := []struct {
		name     string
		r        *Requester
		identity string
		kinds    []keydir.Kind
		want     []string // substrings of the error; nil = allowed
		invalid  bool     // error also wraps ErrInvalidIdentity
	}{
		{"web ok", web, "spiffe://prod/ns/web/a", K(keydir.KindClient, keydir.KindPermit), nil, false},
		{"web second pattern", web, "spiffe://prod/ns/web-eu/sa/api", K(keydir.KindPermit), nil, false},
		{"web deeper", web, "spiffe://prod/ns/web/a/b", K(keydir.KindClient), []string{`identity "spiffe://prod/ns/web/a/b" is matched by none`}, false},
		{"web sibling", web, "spiffe://prod/ns/webx/a", K(keydir.KindClient), []string{"matched by none"}, false},
		{"web traversal", web, "spiffe://prod/ns/web/../pay", K(keydir.KindClient), []string{`".." path segment`}, true},
		{"web trailing slash", web, "spiffe://prod/ns/web/", K(keydir.KindClient), []string{"empty path segment"}, true},
		{"web encoded dots", web, "spiffe://prod/ns/web/%2e%2e", K(keydir.KindClient), []string{"percent-encoded"}, true},
		{"web server kind", web, "spiffe://prod/ns/web/a", K(keydir.KindClient, keydir.KindServer), []string{"kind server is not granted"}, false},
		{"web domain", web, "spiffe://prod/ns/web/a", K(keydir.KindDomain), []string{"domain needs a server requester"}, false},
		{"web everything wrong", web, "spiffe://prod/ns/pay/a", K(keydir.KindServer, keydir.KindDomain), []string{"matched by none", "kind server is not granted", "domain needs a server"}, false},
		{"web unknown kind", web, "spiffe://prod/ns/web/a", K("master"), []string{`unknown share kind "master"`}, false},
		{"web no kinds", web, "spiffe://prod/ns/web/a", nil, []string{"no share kind requested"}, false},
		{"gateway ok", gw, "spiffe://prod/ns/pay/sa/api", K(keydir.KindServer, keydir.KindDomain), nil, false},
		{"gateway client", gw, "spiffe://prod/ns/pay/sa/api", K(keydir.KindClient), []string{"kind client is not granted"}, false},
		{"gateway other domain", gw, "spiffe://staging/a", K(keydir.KindServer), []string{"matched by none"}, false},
		{"admin only", ops, "spiffe://prod/a", K(keydir.KindClient), []string{`requester "ops"`, "matched by none", "kind client is not granted"}, false},
		{"nil requester", nil, "spiffe://prod/a", K(keydir.KindClient), []string{"no requester"}, false},
		// Hand-built requester with domain but no server flag: still refused.
		{"hand-built domain", &Requester{Name: "h", Identities: []string{"**"}, Kinds: K(keydir.KindDomain)}, "a", K(keydir.KindDomain), []string{"domain needs a server"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Authorize(tt.identity, tt.kinds)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("allowed")
			}
			if !errors.Is(err, ErrForbidden) {
				t.Errorf("%v does not wrap ErrForbidden", err)
			}
			if errors.Is(err, ErrInvalidIdentity) != tt.invalid {
				t.Errorf("%v: wraps ErrInvalidIdentity = %v, want %v", err, !tt.invalid, tt.invalid)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestAuthorizeAdmin(t *testing.T) {
	p := mustPolicy(t)
	if err := p.Requesters[2].AuthorizeAdmin(); err != nil {
		t.Error(err)
	}
	if err := p.Requesters[0].AuthorizeAdmin(); !errors.Is(err, ErrForbidden) {
		t.Errorf("non-admin: %v", err)
	}
	var nilR *Requester
	if err := nilR.AuthorizeAdmin(); !errors.Is(err, ErrForbidden) {
		t.Errorf("nil: %v", err)
	}
}

func TestHashToken(t *testing.T) {
	// echo -n abc | sha256sum
	if got := HashToken("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Error(got)
	}
}

// FuzzParsePolicy checks that parsing never panics and that an accepted
// policy satisfies the documented invariants.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(testPolicyYAML()))
	f.Add([]byte("requesters:\n  - name: a\n    token_sha256: " + HashToken("a") + "\n    admin: true\n"))
	f.Add([]byte("requesters: [{name: a, token_sha256: " + HashToken("a") + ", identities: ['**'], kinds: [domain], server: true}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(b)
		if err != nil {
			return
		}
		names, hashes := map[string]bool{}, map[string]bool{}
		for _, r := range p.Requesters {
			if r == nil || names[r.Name] || hashes[r.TokenSHA256] || len(r.TokenSHA256) != 64 || r.RatePerMinute <= 0 {
				t.Fatalf("accepted %+v", r)
			}
			names[r.Name], hashes[r.TokenSHA256] = true, true
			for _, pat := range r.Identities {
				if ValidatePattern(pat) != nil {
					t.Fatalf("accepted pattern %q", pat)
				}
			}
			for _, k := range r.Kinds {
				if _, err := keydir.ParseKind(string(k)); err != nil || (k == keydir.KindDomain && !r.Server) {
					t.Fatalf("accepted kind %q for %+v", k, r)
				}
			}
		}
	})
}
