package dta

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
)

// TestFetchPerDTATokens: each D-TA knows only its own requester token, so a
// token leaked by (or replayed from) one D-TA is useless at the others.
// Fetch sends each D-TA its own token; a single shared token fails at the
// D-TAs that do not know it, and nothing is written.
func TestFetchPerDTATokens(t *testing.T) {
	dom := &keydir.Domain{Name: fxDomainName, EpochLen: 86400}
	tokens := map[string]string{}
	now := func() time.Time { return fxT0 }
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("dta-%d", i)
		tok := fmt.Sprintf("token-of-%s-0123456789abcdef", id)
		tokens[id] = tok
		pol := fxParsePolicy(t, fmt.Sprintf(`requesters:
  - name: web
    token_sha256: %q
    identities: ["spiffe://prod.example/ns/web/**"]
    kinds: [client, permit]
`, HashToken(tok)))
		a := fxNewAuthority(t, id, 86400)
		svc, _, _, _, _ := fxNewService(t, a.Authority, pol, now, "")
		srv := httptest.NewServer(svc)
		t.Cleanup(srv.Close)
		dom.DTAs = append(dom.DTAs, a.DomainEntry(srv.URL))
	}
	out := filepath.Join(t.TempDir(), "keys")
	opt := FetchOptions{Domain: dom, Identity: fxClientID, Tokens: tokens, Out: out, Now: now,
		Kinds: []keydir.Kind{keydir.KindClient, keydir.KindPermit}}
	if opt.SharedToken() {
		t.Fatal("distinct tokens reported as shared")
	}
	if _, err := Fetch(context.Background(), opt); err != nil {
		t.Fatalf("fetch with per-D-TA tokens: %v", err)
	}
	shared := opt
	shared.Tokens, shared.Token = nil, tokens["dta-1"]
	shared.Out = filepath.Join(t.TempDir(), "shared")
	if !shared.SharedToken() {
		t.Fatal("one token for three D-TAs not reported as shared")
	}
	_, err := Fetch(context.Background(), shared)
	if err == nil || !strings.Contains(err.Error(), "dta-2") || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "D-TA dta-1") {
		t.Fatalf("fetch with dta-1's token everywhere: %v; want 401 from dta-2 and dta-3 only", err)
	}
	missing := opt
	missing.Tokens = map[string]string{"dta-1": tokens["dta-1"]}
	if _, err := Fetch(context.Background(), missing); err == nil || !strings.Contains(err.Error(), "no bearer token for D-TA dta-2") {
		t.Fatalf("missing token: %v", err)
	}
}
