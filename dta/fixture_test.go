package dta

// The shared fixture of the service, issuance, fetch and check tests: N real
// D-TAs (dta.Init into temporary folders, real master shares and signing
// keys), each a real Service with its own policy, audit log and revocation
// file, served by httptest over loopback.

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

const (
	fxDomainName = "prod.example"
	// fxClientID is issuable by the "web" requester, fxServerID by "pay".
	fxClientID = "spiffe://prod.example/ns/web/sa/frontend"
	fxServerID = "spiffe://prod.example/ns/pay/api"

	fxTokWeb   = "fx-web-token-0123456789abcdef"
	fxTokPay   = "fx-pay-token-0123456789abcdef"
	fxTokAdmin = "fx-admin-token-0123456789abcd"
	fxTokSlow  = "fx-slow-token-0123456789abcde"
)

// fxT0 is the fixture clock's start: the middle of a one-day epoch.
var fxT0 = time.Date(2026, 3, 14, 12, 0, 0, 0, time.UTC)

// fxPolicyYAML is the fixture policy: a client requester ("web"), a server
// requester ("pay"), an admin ("ops"), and a requester with a tiny rate
// limit ("slow", burst 5) for the rate-limit test. The others have rates
// no test reaches.
func fxPolicyYAML() string {
	return `
requesters:
  - name: web
    token_sha256: "` + HashToken(fxTokWeb) + `"
    identities: ["spiffe://prod.example/ns/web/**"]
    kinds: [client, permit]
    rate_per_minute: 600000
  - name: pay
    token_sha256: "` + HashToken(fxTokPay) + `"
    identities: ["spiffe://prod.example/ns/pay/*"]
    kinds: [server, domain]
    server: true
    rate_per_minute: 600000
  - name: ops
    token_sha256: "` + HashToken(fxTokAdmin) + `"
    admin: true
    rate_per_minute: 600000
  - name: slow
    token_sha256: "` + HashToken(fxTokSlow) + `"
    identities: ["spiffe://prod.example/ns/web/**"]
    kinds: [client]
    rate_per_minute: 6
`
}

func fxParsePolicy(t testing.TB, yaml string) *Policy {
	t.Helper()
	p, err := ParsePolicy([]byte(yaml))
	if err != nil {
		t.Fatalf("fixture policy: %v", err)
	}
	return p
}

// fxClock is an injectable clock.
type fxClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fxClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fxClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

type fxOptions struct {
	N        int    // D-TAs; default 3
	EpochLen uint64 // seconds; default 86400
	// RealTime makes the D-TAs use time.Now instead of the fixture clock.
	RealTime bool
	Policy   string // YAML; default fxPolicyYAML()
}

// fxDTA is one running D-TA.
type fxDTA struct {
	ID        string
	Dir       string
	Auth      *Authority
	Svc       *Service
	Audit     *AuditLog
	AuditPath string
	Revs      *Revocations
	RevPath   string
	Server    *httptest.Server
}

type fixture struct {
	Domain *keydir.Domain
	DTAs   []*fxDTA
	Clock  *fxClock
	now    func() time.Time
}

// newFixture starts opt.N D-TAs of domain fxDomainName and returns them
// with the domain description a fetcher pins.
func newFixture(t testing.TB, opt fxOptions) *fixture {
	t.Helper()
	if opt.N == 0 {
		opt.N = 3
	}
	if opt.EpochLen == 0 {
		opt.EpochLen = 86400
	}
	if opt.Policy == "" {
		opt.Policy = fxPolicyYAML()
	}
	fx := &fixture{Clock: &fxClock{t: fxT0}}
	fx.now = fx.Clock.Now
	if opt.RealTime {
		fx.now = time.Now
	}
	fx.Domain = &keydir.Domain{Name: fxDomainName, EpochLen: opt.EpochLen}
	for i := 1; i <= opt.N; i++ {
		id := fmt.Sprintf("dta-%d", i)
		auth := fxNewAuthority(t, id, opt.EpochLen)
		d := &fxDTA{ID: id, Dir: auth.dir, Auth: auth.Authority}
		d.Svc, d.Audit, d.AuditPath, d.Revs, d.RevPath = fxNewService(t, d.Auth, fxParsePolicy(t, opt.Policy), fx.now, "")
		d.Server = httptest.NewServer(d.Svc)
		t.Cleanup(d.Server.Close)
		fx.DTAs = append(fx.DTAs, d)
		fx.Domain.DTAs = append(fx.Domain.DTAs, d.Auth.DomainEntry(d.Server.URL+"/"))
	}
	if err := fx.Domain.Validate(); err != nil {
		t.Fatal(err)
	}
	return fx
}

type fxAuthority struct {
	*Authority
	dir string // the D-TA's folder
}

// fxNewAuthority creates (plaintext, so that tests can read the master
// share back independently) and opens a D-TA.
func fxNewAuthority(t testing.TB, id string, epochLen uint64) fxAuthority {
	t.Helper()
	dir := filepath.Join(t.TempDir(), id)
	if _, err := Init(InitOptions{Dir: dir, ID: id, Domain: fxDomainName, EpochLen: epochLen, Plaintext: true}); err != nil {
		t.Fatal(err)
	}
	a, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return fxAuthority{a, dir}
}

// fxNewService builds a Service for auth with a fresh audit log and a
// revocation file (revPath, or a new one if empty).
func fxNewService(t testing.TB, auth *Authority, pol *Policy, now func() time.Time, revPath string) (svc *Service, audit *AuditLog, auditPath string, revs *Revocations, rp string) {
	t.Helper()
	tmp := t.TempDir()
	auditPath = filepath.Join(tmp, "audit.log")
	audit, err := OpenAudit(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { audit.Close() })
	if revPath == "" {
		revPath = filepath.Join(tmp, "revocations.json")
	}
	revs, err = OpenRevocations(revPath)
	if err != nil {
		t.Fatal(err)
	}
	svc, err = NewService(ServiceConfig{Authority: auth, Policy: pol, Audit: audit, Revocations: revs, Now: now, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return svc, audit, auditPath, revs, revPath
}

// cur is the fixture clock's epoch.
func (fx *fixture) cur(t testing.TB) uint64 {
	t.Helper()
	e, err := mpinkex.Epoch(fx.now(), time.Duration(fx.Domain.EpochLen)*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// domainWith returns a copy of the fixture's domain where D-TA i is
// reached at url instead.
func (fx *fixture) domainWith(repl map[int]string) *keydir.Domain {
	d := *fx.Domain
	d.DTAs = append([]keydir.DTA(nil), fx.Domain.DTAs...)
	for i, u := range repl {
		d.DTAs[i].URL = u
	}
	return &d
}

// fetchOpts asks for the given kinds with the fixture clock.
func (fx *fixture) fetchOpts(identity, token, out string, kinds ...keydir.Kind) FetchOptions {
	return FetchOptions{
		Domain: fx.Domain, Identity: identity, Token: token, Kinds: kinds, Out: out,
		Now: fx.now, Timeout: 10 * time.Second,
		Client: &http.Client{Timeout: 20 * time.Second},
	}
}

// masterScalar reads the D-TA's master share from its plaintext secret
// file, independently of Open.
func (d *fxDTA) masterScalar(t testing.TB) *pairing.Scalar {
	t.Helper()
	return fxMasterScalar(t, d.Dir)
}

func fxMasterScalar(t testing.TB, dir string) *pairing.Scalar {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, SecretPlainFile))
	if err != nil {
		t.Fatal(err)
	}
	var sf struct {
		MasterShare string `json:"master_share"`
	}
	if err := json.Unmarshal(b, &sf); err != nil {
		t.Fatal(err)
	}
	raw, err := hex.DecodeString(sf.MasterShare)
	if err != nil {
		t.Fatal(err)
	}
	s, err := pairing.DecodeScalar(raw)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fxResp is an HTTP answer read in full.
type fxResp struct {
	Status int
	Header http.Header
	Body   []byte
}

// do sends one request to the D-TA. An empty token sends no
// Authorization header; ctype "" sends no Content-Type.
func (d *fxDTA) do(t testing.TB, method, path, token, ctype string, body []byte) fxResp {
	t.Helper()
	return fxDo(t, d.Server.URL, method, path, token, ctype, body)
}

func fxDo(t testing.TB, base, method, path, token, ctype string, body []byte) fxResp {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return fxResp{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// issue posts an IssueRequest as JSON.
func (d *fxDTA) issue(t testing.TB, token string, req IssueRequest) fxResp {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return d.do(t, http.MethodPost, "/v1/issue", token, "application/json", b)
}

// open verifies an issued envelope against the D-TA's pinned key.
func (fx *fixture) open(t testing.TB, i int, body []byte) *keydir.Opened {
	t.Helper()
	env, err := keydir.ParseEnvelope(body)
	if err != nil {
		t.Fatalf("D-TA %d answer is no envelope: %v: %s", i, err, body)
	}
	pub, err := fx.Domain.DTAs[i].PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	o, err := env.Open(pub, keydir.OpenOptions{})
	if err != nil {
		t.Fatalf("D-TA %d envelope: %v", i, err)
	}
	return o
}

// auditEvents parses the audit log's JSON lines strictly.
func fxAuditEvents(t testing.TB, path string) []AuditEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var evs []AuditEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		var e AuditEvent
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("audit line %d: %v: %q", len(evs)+1, err, sc.Text())
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

func (d *fxDTA) auditEvents(t testing.TB) []AuditEvent {
	t.Helper()
	return fxAuditEvents(t, d.AuditPath)
}

// auditMark returns the number of audit lines so far; auditSince the
// lines after a mark.
func (d *fxDTA) auditMark(t testing.TB) int {
	t.Helper()
	return len(d.auditEvents(t))
}

func (d *fxDTA) auditSince(t testing.TB, mark int) []AuditEvent {
	t.Helper()
	evs := d.auditEvents(t)
	if len(evs) < mark {
		t.Fatalf("audit log shrank from %d to %d lines", mark, len(evs))
	}
	return evs[mark:]
}

// fxErrorBody decodes an error answer strictly: exactly {"error": "..."},
// so that no envelope (payload, signature, values) came with it.
func fxErrorBody(t testing.TB, r fxResp) string {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer Content-Type %q", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.DisallowUnknownFields()
	var e ErrorResponse
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("error body %q: %v", r.Body, err)
	}
	if e.Error == "" {
		t.Fatalf("error body %q has no error", r.Body)
	}
	if _, err := keydir.ParseEnvelope(r.Body); err == nil {
		t.Fatalf("error answer parses as an envelope: %s", r.Body)
	}
	return e.Error
}

// expectRefusal checks a refused request: the status, the JSON error body
// (containing errSub), no envelope, no issue line in the audit log since
// mark, and exactly one refusal line with that status, which it returns.
func (d *fxDTA) expectRefusal(t testing.TB, mark int, r fxResp, status int, errSub string) AuditEvent {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if msg := fxErrorBody(t, r); !strings.Contains(msg, errSub) {
		t.Errorf("error %q does not contain %q", msg, errSub)
	}
	evs := d.auditSince(t, mark)
	var refusals []AuditEvent
	for _, e := range evs {
		switch e.Event {
		case AuditIssue:
			t.Errorf("audit log records an issuance: %+v", e)
		case AuditRefuse:
			refusals = append(refusals, e)
		}
	}
	if len(refusals) != 1 {
		t.Fatalf("audit log has %d refusals since the request, want 1: %+v", len(refusals), evs)
	}
	e := refusals[0]
	if e.Status != status {
		t.Errorf("audited status %d, want %d: %+v", e.Status, status, e)
	}
	if e.Result == "" || e.Reason == "" || e.Remote != "127.0.0.1" || e.Time.IsZero() {
		t.Errorf("audit refusal lacks result, reason, remote or time: %+v", e)
	}
	return e
}

// fxSnapshot records everything under a key directory: symlink targets,
// file bytes and folders, by relative path.
func fxSnapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case de.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			snap[rel] = "link:" + target
		case de.IsDir():
			snap[rel] = "dir"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			snap[rel] = "file:" + string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func fxSameSnapshot(t testing.TB, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if w, ok := after[k]; !ok {
			t.Errorf("%s disappeared", k)
		} else if w != v {
			t.Errorf("%s changed", k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s appeared", k)
		}
	}
}

// fxIssueSet issues kinds for identity from every D-TA of fx in process
// (Authority.Issue: real shares, real envelopes) and assembles the set. It
// also returns each D-TA's opened envelope.
func fxIssueSet(t testing.TB, fx *fixture, identity string, kinds []keydir.Kind, epochs []uint64) (*keydir.Set, []*keydir.Opened) {
	t.Helper()
	files := map[string][]byte{}
	var opened []*keydir.Opened
	for i, d := range fx.DTAs {
		env, err := d.Auth.Issue(identity, kinds, epochs, fx.now())
		if err != nil {
			t.Fatal(err)
		}
		files[d.ID] = env.Marshal()
		opened = append(opened, fx.open(t, i, files[d.ID]))
	}
	set, err := keydir.Assemble(fx.Domain, files, false)
	if err != nil {
		t.Fatal(err)
	}
	return set, opened
}

// newTestServer serves h over loopback until the test ends.
func newTestServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}
