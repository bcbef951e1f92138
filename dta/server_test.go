package dta

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
)

func TestServiceHealthAndInfo(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]

	r := d.do(t, http.MethodGet, "/healthz", "", "", nil)
	if r.Status != http.StatusOK || strings.TrimSpace(string(r.Body)) != `{"status":"ok"}` {
		t.Errorf("healthz: %d %s", r.Status, r.Body)
	}
	if r.Header.Get("Cache-Control") != "no-store" || r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("healthz headers %v", r.Header)
	}

	for _, at := range []time.Time{fxT0, fxT0.Add(36 * time.Hour)} {
		fx.Clock.Set(at)
		r = d.do(t, http.MethodGet, "/v1/info", "", "", nil)
		if r.Status != http.StatusOK {
			t.Fatalf("info: %d %s", r.Status, r.Body)
		}
		var info InfoResponse
		dec := json.NewDecoder(bytes.NewReader(r.Body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&info); err != nil {
			t.Fatal(err)
		}
		if info.Info != d.Auth.Info {
			t.Errorf("info %+v, want %+v", info.Info, d.Auth.Info)
		}
		if info.SigningKey != fx.Domain.DTAs[0].SigningKey || info.ID != "dta-1" || info.Domain != fxDomainName {
			t.Errorf("info %+v", info)
		}
		if want := uint64(at.Unix() / 86400); info.Epoch != want || info.Epoch != fx.cur(t) {
			t.Errorf("epoch %d, want %d", info.Epoch, want)
		}
		if !info.Time.Equal(at) {
			t.Errorf("time %v, want %v", info.Time, at)
		}
	}
	// Public endpoints are not audited (they issue nothing).
	if evs := d.auditEvents(t); len(evs) != 0 {
		t.Errorf("audit log: %+v", evs)
	}
}

func TestServiceIssueClientPermit(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	cur := fx.cur(t)
	for _, tc := range []struct {
		name   string
		epochs []uint64
		want   []uint64
	}{
		{"default epochs", nil, []uint64{cur, cur + 1}},
		{"explicit epochs", []uint64{cur + 3, cur + 1}, []uint64{cur + 1, cur + 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := d.auditMark(t)
			r := d.issue(t, fxTokWeb, IssueRequest{Identity: fxClientID, Kinds: []string{"client", "permit"}, Epochs: tc.epochs})
			if r.Status != http.StatusOK || r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Cache-Control") != "no-store" {
				t.Fatalf("%d %v %s", r.Status, r.Header, r.Body)
			}
			o := fx.open(t, 0, r.Body)
			if o.Payload.Identity != fxClientID || o.Payload.DTA != "dta-1" || !o.Payload.IssuedAt.Equal(fxT0) {
				t.Errorf("payload %+v", o.Payload)
			}
			got := slices.Sorted(func(yield func(uint64) bool) {
				for e := range o.Shares.Permits {
					if !yield(e) {
						return
					}
				}
			})
			if o.Shares.Client == nil || !slices.Equal(got, tc.want) || o.Shares.Server != nil || o.Shares.Domain != nil {
				t.Errorf("shares: client %v, permits %v, server %v, domain %v", o.Shares.Client != nil, got, o.Shares.Server != nil, o.Shares.Domain != nil)
			}
			x := issueCompute(t, d.masterScalar(t), fxClientID, tc.want[0], tc.want[1])
			if !o.Shares.Client.Equal(x.client) || !o.Shares.Permits[tc.want[0]].Equal(x.permit[tc.want[0]]) || !o.Shares.Permits[tc.want[1]].Equal(x.permit[tc.want[1]]) {
				t.Error("issued shares differ from the direct computation")
			}
			evs := d.auditSince(t, mark)
			if len(evs) != 1 {
				t.Fatalf("audit: %+v", evs)
			}
			e := evs[0]
			if e.Event != AuditIssue || e.Result != "ok" || e.Status != 200 || e.Requester != "web" || e.Identity != fxClientID ||
				!slices.Equal(e.Kinds, []string{"client", "permit"}) || !slices.Equal(e.Epochs, tc.want) || e.Remote != "127.0.0.1" || !e.Time.Equal(fxT0) {
				t.Errorf("audit %+v", e)
			}
			// Nothing secret in the audit line.
			line, _ := json.Marshal(e)
			for k, v := range mustEnvelope(t, r.Body).Values {
				if bytes.Contains(line, []byte(v)) {
					t.Errorf("audit line holds the %s share", k)
				}
			}
			if bytes.Contains(line, []byte(fxTokWeb)) || bytes.Contains(line, []byte(HashToken(fxTokWeb))) {
				t.Error("audit line holds the token")
			}
		})
	}
}

func mustEnvelope(t *testing.T, b []byte) *keydir.Envelope {
	t.Helper()
	env, err := keydir.ParseEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

func TestServiceIssueServerDomain(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	mark := d.auditMark(t)
	r := d.issue(t, fxTokPay, IssueRequest{Identity: fxServerID, Kinds: []string{"domain", "server"}})
	if r.Status != http.StatusOK {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	o := fx.open(t, 0, r.Body)
	if o.Shares.Server == nil || o.Shares.Domain == nil || o.Shares.Client != nil || o.Shares.Permits != nil {
		t.Fatalf("shares %+v", o.Shares)
	}
	x := issueCompute(t, d.masterScalar(t), fxServerID, 0, 1)
	if !o.Shares.Server.Equal(x.server) || !o.Shares.Domain.Equal(x.domain) {
		t.Error("issued shares differ from the direct computation")
	}
	if want := fxT0.Add(IdentityValidityEpochs * 86400 * time.Second); !o.Payload.ExpiresAt.Equal(want) {
		t.Errorf("expires_at %v, want %v", o.Payload.ExpiresAt, want)
	}
	evs := d.auditSince(t, mark)
	if len(evs) != 1 || evs[0].Event != AuditIssue || evs[0].Requester != "pay" || evs[0].Identity != fxServerID || evs[0].Epochs != nil {
		t.Errorf("audit %+v", evs)
	}
}

func TestServiceIssueRefusals(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	cur := fx.cur(t)
	js := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	req := func(id string, kinds ...string) []byte { return js(IssueRequest{Identity: id, Kinds: kinds}) }
	const ctJSON = "application/json"
	for _, tc := range []struct {
		name   string
		token  string
		ctype  string
		body   []byte
		status int
		errSub string
		result string // audited result
	}{
		{"malformed JSON", fxTokWeb, ctJSON, []byte(`{"identity": "spiffe://prod.example/ns/web/a", "kinds": ["client"]`), 400, "malformed JSON body", "bad request"},
		{"not an object", fxTokWeb, ctJSON, []byte(`["client"]`), 400, "malformed JSON body", "bad request"},
		{"empty body", fxTokWeb, ctJSON, nil, 400, "malformed JSON body", "bad request"},
		{"trailing object", fxTokWeb, ctJSON, append(req(fxClientID, "client"), `{}`...), 400, "trailing data", "bad request"},
		{"trailing garbage", fxTokWeb, ctJSON, append(req(fxClientID, "client"), " x"...), 400, "trailing data", "bad request"},
		{"unknown field", fxTokWeb, ctJSON, []byte(`{"identity":"` + fxClientID + `","kinds":["client"],"admin":true}`), 400, `unknown field "admin"`, "bad request"},
		{"wrong field type", fxTokWeb, ctJSON, []byte(`{"identity":"` + fxClientID + `","kinds":"client"}`), 400, "malformed JSON body", "bad request"},
		{"negative epoch", fxTokWeb, ctJSON, []byte(`{"identity":"` + fxClientID + `","kinds":["permit"],"epochs":[-1]}`), 400, "malformed JSON body", "bad request"},
		{"oversized identity", fxTokWeb, ctJSON, req(strings.Repeat("a", MaxBodySize+1), "client"), 413, "body exceeds 16384 bytes", "bad request"},
		{"oversized trailing space", fxTokWeb, ctJSON, append(req(fxClientID, "client"), bytes.Repeat([]byte(" "), MaxBodySize+1)...), 413, "body exceeds", "bad request"},
		{"text/plain", fxTokWeb, "text/plain", req(fxClientID, "client"), 415, "send application/json", "bad request"},
		{"form", fxTokWeb, "application/x-www-form-urlencoded", []byte("identity=x"), 415, "send application/json", "bad request"},
		{"unknown kind", fxTokWeb, ctJSON, req(fxClientID, "client", "master"), 400, `unknown share kind "master"`, "bad request"},
		{"no kinds", fxTokWeb, ctJSON, req(fxClientID), 400, "no kinds requested", "bad request"},
		{"duplicate kind", fxTokWeb, ctJSON, req(fxClientID, "client", "client"), 400, "requested twice", "bad request"},
		{"past epoch", fxTokWeb, ctJSON, js(IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur - 1}}), 400, "outside the current epoch", "bad request"},
		{"far epoch", fxTokWeb, ctJSON, js(IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur + MaxEpochsAhead + 1}}), 400, "outside the current epoch", "bad request"},
		{"epochs without permit", fxTokWeb, ctJSON, js(IssueRequest{Identity: fxClientID, Kinds: []string{"client"}, Epochs: []uint64{cur}}), 400, "without the permit kind", "bad request"},
		// Identities.
		{"empty identity", fxTokWeb, ctJSON, req("", "client"), 400, "identity", "bad request"},
		{"identity of 256 bytes", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/"+strings.Repeat("a", 256-29), "client"), 400, "identity", "bad request"},
		{"invalid UTF-8 sent raw", fxTokWeb, ctJSON, []byte("{\"identity\":\"spiffe://prod.example/ns/web/a\xff\xfeb\",\"kinds\":[\"client\"]}"), 400, "UTF-8", "bad request"},
		{"invalid UTF-8 lone continuation", fxTokWeb, ctJSON, []byte("{\"identity\":\"spiffe://prod.example/ns/web/\x80\",\"kinds\":[\"client\"]}"), 400, "UTF-8", "bad request"},
		{"unpaired surrogate escape", fxTokWeb, ctJSON, []byte(`{"identity":"spiffe://prod.example/ns/web/a\ud800","kinds":["client"]}`), 400, "U+FFFD", "bad request"},
		{"control character", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/a\x01b", "client"), 400, "control character", "bad request"},
		{"NUL", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/a\x00", "client"), 400, "NUL", "bad request"},
		{"newline", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/a\n{\"event\":\"issue\"}", "client"), 400, "control character", "bad request"},
		{"bidi override", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/a\u202eb", "client"), 400, "invisible formatting", "bad request"},
		{"dot-dot", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/../pay/api", "client"), 400, `".." path segment`, "bad request"},
		{"dot", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/./a", "client"), 400, `"." path segment`, "bad request"},
		{"encoded slash", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web%2f..%2fpay", "client"), 400, "percent-encoded", "bad request"},
		{"encoded dots", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/%2E%2E/pay/api", "client"), 400, "percent-encoded", "bad request"},
		{"backslash", fxTokWeb, ctJSON, req(`spiffe://prod.example/ns/web/..\pay`, "client"), 400, "backslash", "bad request"},
		{"double slash", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web//a", "client"), 400, "empty path segment", "bad request"},
		{"star", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/web/*", "client"), 400, "reserved for patterns", "bad request"},
		// Authorisation.
		{"identity outside the patterns", fxTokWeb, ctJSON, req(fxServerID, "client"), 403, "matched by none of its identity patterns", "forbidden"},
		{"sibling namespace", fxTokWeb, ctJSON, req("spiffe://prod.example/ns/webx/a", "client"), 403, "matched by none", "forbidden"},
		{"other case", fxTokWeb, ctJSON, req("SPIFFE://prod.example/ns/web/a", "client"), 403, "matched by none", "forbidden"},
		{"server pattern depth", fxTokPay, ctJSON, req("spiffe://prod.example/ns/pay/api/v2", "server"), 403, "matched by none", "forbidden"},
		{"kind not granted", fxTokWeb, ctJSON, req(fxClientID, "client", "server"), 403, "kind server is not granted", "forbidden"},
		{"client kind to server requester", fxTokPay, ctJSON, req(fxServerID, "client"), 403, "kind client is not granted", "forbidden"},
		{"domain to non-server", fxTokWeb, ctJSON, req(fxClientID, "domain"), 403, "kind domain needs a server requester", "forbidden"},
		{"admin has no kinds", fxTokAdmin, ctJSON, req(fxClientID, "client"), 403, "forbidden", "forbidden"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := d.auditMark(t)
			r := d.do(t, http.MethodPost, "/v1/issue", tc.token, tc.ctype, tc.body)
			e := d.expectRefusal(t, mark, r, tc.status, tc.errSub)
			if e.Result != tc.result {
				t.Errorf("audited result %q, want %q", e.Result, tc.result)
			}
			wantReq := map[string]string{fxTokWeb: "web", fxTokPay: "pay", fxTokAdmin: "ops"}[tc.token]
			if e.Requester != wantReq {
				t.Errorf("audited requester %q, want %q", e.Requester, wantReq)
			}
			if len(e.Identity) > 512 {
				t.Errorf("audited identity of %d bytes", len(e.Identity))
			}
		})
	}
	// The refusals above did not disturb the service.
	if r := d.issue(t, fxTokWeb, IssueRequest{Identity: fxClientID, Kinds: []string{"client"}}); r.Status != http.StatusOK {
		t.Fatalf("after the refusals: %d %s", r.Status, r.Body)
	}
}

func TestServiceUnauthenticated(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	body, _ := json.Marshal(IssueRequest{Identity: fxClientID, Kinds: []string{"client"}})
	for _, tc := range []struct {
		name, auth string
	}{
		{"missing token", ""},
		{"wrong token", "Bearer " + fxTokWeb + "x"},
		{"token hash as token", "Bearer " + HashToken(fxTokWeb)},
		{"lower-case scheme", "bearer " + fxTokWeb},
		{"basic scheme", "Basic " + fxTokWeb},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mark := d.auditMark(t)
			req, _ := http.NewRequest(http.MethodPost, d.Server.URL+"/v1/issue", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			resp.Body.Close()
			r := fxResp{resp.StatusCode, resp.Header, buf.Bytes()}
			e := d.expectRefusal(t, mark, r, http.StatusUnauthorized, "missing or unknown bearer token")
			if got := r.Header.Get("WWW-Authenticate"); got != `Bearer realm="milagro-dta"` {
				t.Errorf("WWW-Authenticate %q", got)
			}
			if e.Result != "unauthenticated" || e.Requester != "" || e.Identity != "" {
				t.Errorf("audit %+v", e)
			}
		})
	}
	// Failed authentications are limited per address (burst 5 at 30/min):
	// the sixth in a row is answered 429 — unless the test ran so slowly
	// that the bucket refilled meanwhile, hence a few more tries.
	limited := false
	for i := 0; i < 10 && !limited; i++ {
		r := d.do(t, http.MethodPost, "/v1/issue", "nobody", "application/json", body)
		switch msg := fxErrorBody(t, r); {
		case r.Status == http.StatusTooManyRequests && strings.Contains(msg, "too many requests"):
			limited = true
		case r.Status != http.StatusUnauthorized:
			t.Fatalf("failed authentication: %d %s", r.Status, r.Body)
		}
	}
	if !limited {
		t.Error("failed authentications are not rate limited")
	}
	// A valid requester is not held back by that.
	if r := d.issue(t, fxTokWeb, IssueRequest{Identity: fxClientID, Kinds: []string{"client"}}); r.Status != http.StatusOK {
		t.Errorf("valid requester after failed ones: %d %s", r.Status, r.Body)
	}
	for _, e := range d.auditEvents(t) {
		if e.Event == AuditIssue && e.Requester != "web" {
			t.Errorf("audit %+v", e)
		}
	}
}

func TestServiceMethodsAndPaths(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	body, _ := json.Marshal(IssueRequest{Identity: fxClientID, Kinds: []string{"client"}})
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/v1/issue", 405, "POST"},
		{http.MethodPut, "/v1/issue", 405, "POST"},
		{http.MethodPost, "/v1/info", 405, "GET"},
		{http.MethodPost, "/healthz", 405, "GET"},
		{http.MethodGet, "/v1/revoke", 405, "POST"},
		{http.MethodDelete, "/v1/revocations", 405, "GET"},
		{http.MethodPost, "/", 404, ""},
		{http.MethodPost, "/v1/issue/", 404, ""},
		{http.MethodPost, "/v1/Issue", 404, ""},
		{http.MethodPost, "/v2/issue", 404, ""},
		{http.MethodPost, "/v1//issue", 404, ""},
		{http.MethodGet, "/v1", 404, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := d.do(t, tc.method, tc.path, fxTokWeb, "application/json", body)
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.Status, tc.status, r.Body)
			}
			fxErrorBody(t, r)
			if got := r.Header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
	for _, e := range d.auditEvents(t) {
		if e.Event == AuditIssue {
			t.Errorf("issued: %+v", e)
		}
	}
}

func TestServiceRateLimit(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	req := IssueRequest{Identity: fxClientID, Kinds: []string{"client"}}
	// "slow" has 6 requests a minute: a burst of 5, then one every 10 s.
	for i := range 5 {
		if r := d.issue(t, fxTokSlow, req); r.Status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i+1, r.Status, r.Body)
		}
	}
	for range 2 {
		mark := d.auditMark(t)
		r := d.issue(t, fxTokSlow, req)
		e := d.expectRefusal(t, mark, r, http.StatusTooManyRequests, "rate limit exceeded")
		if r.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
		if e.Result != "rate limited" || e.Requester != "slow" {
			t.Errorf("audit %+v", e)
		}
	}
	// Limits are per requester.
	if r := d.issue(t, fxTokWeb, req); r.Status != http.StatusOK {
		t.Errorf("other requester: %d %s", r.Status, r.Body)
	}
	// A new policy starts with fresh limits.
	d.Svc.SetPolicy(fxParsePolicy(t, fxPolicyYAML()))
	if r := d.issue(t, fxTokSlow, req); r.Status != http.StatusOK {
		t.Errorf("after SetPolicy: %d %s", r.Status, r.Body)
	}
}

// revokeReq posts to /v1/revoke.
func revokeReq(t *testing.T, d *fxDTA, token, identity string, unrevoke bool) fxResp {
	t.Helper()
	b, _ := json.Marshal(RevokeRequest{Identity: identity, Unrevoke: unrevoke})
	return d.do(t, http.MethodPost, "/v1/revoke", token, "application/json", b)
}

type revokeAnswer struct {
	Identity string `json:"identity"`
	Revoked  bool   `json:"revoked"`
	Changed  bool   `json:"changed"`
}

func listRevocations(t *testing.T, base, token string) []Revocation {
	t.Helper()
	r := fxDo(t, base, http.MethodGet, "/v1/revocations", token, "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("revocations: %d %s", r.Status, r.Body)
	}
	var l struct {
		Revocations []Revocation `json:"revocations"`
	}
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil || l.Revocations == nil {
		t.Fatalf("revocations %s: %v", r.Body, err)
	}
	return l.Revocations
}

func TestServiceRevoke(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	const victim = "spiffe://prod.example/ns/web/sa/stolen"
	permit := IssueRequest{Identity: victim, Kinds: []string{"client", "permit"}}

	if r := d.issue(t, fxTokWeb, permit); r.Status != http.StatusOK {
		t.Fatalf("before revocation: %d %s", r.Status, r.Body)
	}

	// Only admins revoke.
	for _, tok := range []string{fxTokWeb, fxTokPay} {
		mark := d.auditMark(t)
		r := revokeReq(t, d, tok, victim, false)
		e := d.expectRefusal(t, mark, r, http.StatusForbidden, "only admin requesters may revoke")
		if e.Result != "forbidden" || e.Identity != victim || !strings.Contains(e.Reason, "not an admin") {
			t.Errorf("audit %+v", e)
		}
	}
	if d.Revs.IsRevoked(victim) {
		t.Fatal("a non-admin revoked")
	}
	mark := d.auditMark(t)
	r := revokeReq(t, d, fxTokAdmin, "", false)
	d.expectRefusal(t, mark, r, http.StatusBadRequest, "identity")
	mark = d.auditMark(t)
	r = d.do(t, http.MethodPost, "/v1/revoke", fxTokAdmin, "application/json", []byte(`{"identity":"`+victim+`","forever":true}`))
	d.expectRefusal(t, mark, r, http.StatusBadRequest, "unknown field")

	// The admin revokes; permits stop.
	mark = d.auditMark(t)
	r = revokeReq(t, d, fxTokAdmin, victim, false)
	var ans revokeAnswer
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &ans) != nil || ans != (revokeAnswer{victim, true, true}) {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	if evs := d.auditSince(t, mark); len(evs) != 1 || evs[0].Event != AuditRevoke || evs[0].Requester != "ops" || evs[0].Identity != victim || evs[0].Result != "ok" {
		t.Errorf("audit %+v", evs)
	}
	r = revokeReq(t, d, fxTokAdmin, victim, false)
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &ans) != nil || ans != (revokeAnswer{victim, true, false}) {
		t.Errorf("revoke again: %d %s", r.Status, r.Body)
	}

	for _, kinds := range [][]string{{"permit"}, {"client", "permit"}} {
		mark = d.auditMark(t)
		r = d.issue(t, fxTokWeb, IssueRequest{Identity: victim, Kinds: kinds})
		e := d.expectRefusal(t, mark, r, http.StatusForbidden, "revoked")
		if e.Result != "revoked" || e.Identity != victim || e.Requester != "web" {
			t.Errorf("audit %+v", e)
		}
	}
	// Others are unaffected.
	if r := d.issue(t, fxTokWeb, IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}}); r.Status != http.StatusOK {
		t.Errorf("other identity: %d %s", r.Status, r.Body)
	}

	// Only admins list the revocations.
	l := listRevocations(t, d.Server.URL, fxTokAdmin)
	if len(l) != 1 || l[0].Identity != victim || l[0].By != "ops" || !l[0].RevokedAt.Equal(fxT0) {
		t.Errorf("revocations %+v", l)
	}
	mark = d.auditMark(t)
	r = d.do(t, http.MethodGet, "/v1/revocations", fxTokWeb, "", nil)
	d.expectRefusal(t, mark, r, http.StatusForbidden, "admin")
	mark = d.auditMark(t)
	r = d.do(t, http.MethodGet, "/v1/revocations", "", "", nil)
	d.expectRefusal(t, mark, r, http.StatusUnauthorized, "bearer token")

	// Unrevoke restores issuance.
	mark = d.auditMark(t)
	r = revokeReq(t, d, fxTokAdmin, victim, true)
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &ans) != nil || ans != (revokeAnswer{victim, false, true}) {
		t.Fatalf("unrevoke: %d %s", r.Status, r.Body)
	}
	if evs := d.auditSince(t, mark); len(evs) != 1 || evs[0].Event != AuditUnrevoke || evs[0].Result != "ok" {
		t.Errorf("audit %+v", evs)
	}
	if l := listRevocations(t, d.Server.URL, fxTokAdmin); len(l) != 0 {
		t.Errorf("after unrevoke: %+v", l)
	}
	if r := d.issue(t, fxTokWeb, permit); r.Status != http.StatusOK {
		t.Fatalf("after unrevoke: %d %s", r.Status, r.Body)
	}
	mark = d.auditMark(t)
	r = revokeReq(t, d, fxTokWeb, victim, true)
	d.expectRefusal(t, mark, r, http.StatusForbidden, "only admin")
}

func TestServiceRevocationsPersist(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	const victim = "spiffe://prod.example/ns/web/sa/stolen"
	if r := revokeReq(t, d, fxTokAdmin, victim, false); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	// A restarted service on the same revocation file.
	restart := func() *fxDTA {
		n := &fxDTA{ID: d.ID, Auth: d.Auth}
		n.Svc, n.Audit, n.AuditPath, n.Revs, n.RevPath = fxNewService(t, d.Auth, fxParsePolicy(t, fxPolicyYAML()), fx.now, d.RevPath)
		n.Server = newTestServer(t, n.Svc)
		return n
	}
	n := restart()
	mark := n.auditMark(t)
	r := n.issue(t, fxTokWeb, IssueRequest{Identity: victim, Kinds: []string{"permit"}})
	n.expectRefusal(t, mark, r, http.StatusForbidden, "revoked")
	if l := listRevocations(t, n.Server.URL, fxTokAdmin); len(l) != 1 || l[0].Identity != victim || l[0].By != "ops" {
		t.Errorf("revocations after restart %+v", l)
	}
	if r := revokeReq(t, n, fxTokAdmin, victim, true); r.Status != http.StatusOK {
		t.Fatalf("unrevoke: %d %s", r.Status, r.Body)
	}
	n2 := restart()
	if r := n2.issue(t, fxTokWeb, IssueRequest{Identity: victim, Kinds: []string{"permit"}}); r.Status != http.StatusOK {
		t.Errorf("unrevocation lost on restart: %d %s", r.Status, r.Body)
	}
}

func TestServiceSetPolicyConcurrent(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	// Both policies let the web token obtain client and permit shares for
	// fxClientID, under different requester names.
	polA := fxParsePolicy(t, fxPolicyYAML())
	polB := fxParsePolicy(t, `
requesters:
  - name: web-b
    token_sha256: "`+HashToken(fxTokWeb)+`"
    identities: ["spiffe://prod.example/ns/web/sa/*"]
    kinds: [permit, client]
    rate_per_minute: 600000
`)
	const n = 50
	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if i%2 == 0 {
				d.Svc.SetPolicy(polB)
			} else {
				d.Svc.SetPolicy(polA)
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	body, _ := json.Marshal(IssueRequest{Identity: fxClientID, Kinds: []string{"client", "permit"}})
	results := make([]fxResp, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, d.Server.URL+"/v1/issue", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+fxTokWeb)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			var buf bytes.Buffer
			_, errs[i] = buf.ReadFrom(resp.Body)
			results[i] = fxResp{resp.StatusCode, resp.Header, buf.Bytes()}
		})
	}
	wg.Wait()
	close(stop)
	swaps.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if results[i].Status != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, results[i].Status, results[i].Body)
		}
		fx.open(t, 0, results[i].Body)
	}
	names := map[string]int{}
	for _, e := range d.auditEvents(t) {
		if e.Event != AuditIssue || e.Result != "ok" {
			t.Errorf("audit %+v", e)
		}
		names[e.Requester]++
	}
	if names["web"]+names["web-b"] != n || len(names) > 2 {
		t.Errorf("audited requesters %v", names)
	}
	t.Logf("issued under policy A %d times, B %d times", names["web"], names["web-b"])

	// After the last swap the new policy governs: B does not grant the
	// pay token anything.
	d.Svc.SetPolicy(polB)
	mark := d.auditMark(t)
	r := d.issue(t, fxTokPay, IssueRequest{Identity: fxServerID, Kinds: []string{"server"}})
	d.expectRefusal(t, mark, r, http.StatusUnauthorized, "bearer token")
}

func TestServiceAuditUnavailable(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	d := fx.DTAs[0]
	req := IssueRequest{Identity: fxClientID, Kinds: []string{"client", "permit"}}
	if r := d.issue(t, fxTokWeb, req); r.Status != http.StatusOK {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	before := d.auditEvents(t)
	if err := d.Audit.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range []IssueRequest{req, {Identity: fxServerID, Kinds: []string{"server", "domain"}}} {
		tok := fxTokWeb
		if r.Identity == fxServerID {
			tok = fxTokPay
		}
		resp := d.issue(t, tok, r)
		if resp.Status != http.StatusInternalServerError {
			t.Fatalf("issue with a closed audit log: %d %s", resp.Status, resp.Body)
		}
		if msg := fxErrorBody(t, resp); msg != "audit log unavailable" {
			t.Errorf("error %q", msg)
		}
	}
	if after := d.auditEvents(t); len(after) != len(before) {
		t.Errorf("audit log changed: %d → %d lines", len(before), len(after))
	}
	// Refusals are still refusals.
	if r := d.issue(t, fxTokWeb, IssueRequest{Identity: fxServerID, Kinds: []string{"client"}}); r.Status != http.StatusForbidden {
		t.Errorf("forbidden request with a closed audit log: %d %s", r.Status, r.Body)
	}
}
