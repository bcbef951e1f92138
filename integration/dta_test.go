package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	testDomain = "test.example"
	clientID   = "spiffe://test.example/ns/web/sa/frontend"
	serverID   = "spiffe://test.example/ns/pay/sa/api"
)

// dtaNode is one D-TA: its folder and, while it serves, its process.
type dtaNode struct {
	id, dir string
	env     []string // MILAGRO_DTA_PASSPHRASE for an encrypted master share
	proc    *proc
	addr    string // host:port it listens on
}

func (d *dtaNode) url() string { return "http://" + d.addr }

// cluster is a trust domain of D-TAs serving plain HTTP on loopback, with
// one policy file and three requesters: "workload" (client, permit),
// "server" (server, domain) and "admin" (revocation).
type cluster struct {
	t          *testing.T
	base       string
	epochLen   int
	policy     string
	tokens     map[string]string // requester → bearer token
	tokenFiles map[string]string // requester → token file (0600)
	dtas       []*dtaNode
	domainFile string
}

type clusterConfig struct {
	n        int
	epochLen int // seconds; 0 keeps the CLI's default
	// passphrase is the index of the D-TA whose master share is encrypted
	// with a passphrase (MILAGRO_DTA_PASSPHRASE); -1 for none. The others
	// use --insecure-plaintext-key.
	passphrase int
}

// newCluster creates, serves and describes (domain.json) a domain.
func newCluster(t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	c := &cluster{t: t, base: t.TempDir(), epochLen: cfg.epochLen, tokens: map[string]string{}, tokenFiles: map[string]string{}}
	c.writePolicy()
	for i := range cfg.n {
		var env []string
		if i == cfg.passphrase {
			env = []string{"MILAGRO_DTA_PASSPHRASE=correct horse battery staple " + strconv.Itoa(i)}
		}
		c.dtas = append(c.dtas, c.initDTA(fmt.Sprintf("dta-%d", i+1), filepath.Join(c.base, fmt.Sprintf("dta-%d", i+1)), env))
	}
	for _, d := range c.dtas {
		c.start(d, "127.0.0.1:0")
	}
	for _, d := range c.dtas {
		c.waitServing(d)
	}
	c.domainFile = filepath.Join(c.base, "domain.json")
	c.buildDomain(c.domainFile, c.dtas...)
	return c
}

func (c *cluster) writePolicy() {
	c.t.Helper()
	dir := filepath.Join(c.base, "tokens")
	if err := os.Mkdir(dir, 0o700); err != nil {
		c.t.Fatal(err)
	}
	for _, name := range []string{"workload", "server", "admin"} {
		c.tokens[name] = randomToken(c.t)
		c.tokenFiles[name] = filepath.Join(dir, name+".token")
		writeFile(c.t, c.tokenFiles[name], []byte(c.tokens[name]+"\n"), 0o600)
	}
	policy := testPolicy(c.tokens["workload"], c.tokens["server"], c.tokens["admin"])
	c.policy = filepath.Join(c.base, "policy.yaml")
	writeFile(c.t, c.policy, []byte(policy), 0o600)
}

// initDTA runs `milagro dta init` for a D-TA of this cluster's domain.
func (c *cluster) initDTA(id, dir string, env []string) *dtaNode {
	c.t.Helper()
	args := []string{"dta", "init", "--dir", dir, "--id", id, "--domain", testDomain}
	if c.epochLen != 0 {
		args = append(args, "--epoch-len", strconv.Itoa(c.epochLen))
	}
	if env == nil {
		args = append(args, "--insecure-plaintext-key")
	}
	r := mustMilagro(c.t, env, args...)
	if !strings.Contains(r.stdout, "created D-TA "+id+" for domain "+testDomain) {
		c.t.Fatalf("unexpected output: %v", r)
	}
	secret := "secret.json"
	if env != nil {
		secret = "secret.age"
	}
	if fi, err := os.Stat(filepath.Join(dir, secret)); err != nil || fi.Mode().Perm() != 0o600 {
		c.t.Fatalf("master share %s: %v, want mode 0600 (%v)", secret, err, fi)
	}
	return &dtaNode{id: id, dir: dir, env: env}
}

// start runs `milagro dta serve` for d on listen; waitServing waits until
// it listens.
func (c *cluster) start(d *dtaNode, listen string) {
	c.t.Helper()
	d.proc = startProc(c.t, "dta serve "+d.id, d.env, milagroBin,
		"dta", "serve", "--dir", d.dir, "--listen", listen, "--insecure-http", "--policy", c.policy)
}

func (c *cluster) waitServing(d *dtaNode) {
	c.t.Helper()
	d.addr = d.proc.waitListening(30 * time.Second)
}

// serve starts d and waits until it listens.
func (c *cluster) serve(d *dtaNode, listen string) {
	c.t.Helper()
	c.start(d, listen)
	c.waitServing(d)
}

// buildDomain writes domain.json for the given D-TAs with `milagro domain build`.
func (c *cluster) buildDomain(path string, dtas ...*dtaNode) {
	c.t.Helper()
	args := []string{"domain", "build", "--out", path}
	for _, d := range dtas {
		args = append(args, d.dir+"="+d.url())
	}
	mustMilagro(c.t, nil, args...)
}

// fetch runs `milagro keys fetch` against domainFile as requester.
func (c *cluster) fetch(domainFile, identity, requester, out string, extra ...string) result {
	c.t.Helper()
	c.clearOfEpochEnd()
	args := append([]string{"keys", "fetch", "--domain", domainFile, "--identity", identity,
		"--token-file", c.tokenFiles[requester], "--out", out}, extra...)
	return milagro(c.t, nil, args...)
}

// clearOfEpochEnd waits for the next epoch if the current one of a
// cluster with short test epochs ends within half an epoch (at most 2 s):
// keys fetch asks for permits from its current epoch on, and the D-TAs
// refuse a past epoch (HTTP 400, before they look at the identity), so a
// fetch that crosses the boundary — under -race and a loaded CI machine it
// can take a second — would fail for a reason the test does not test.
func (c *cluster) clearOfEpochEnd() {
	if c.epochLen <= 0 || c.epochLen > 10 {
		return
	}
	margin := min(2*time.Second, time.Duration(c.epochLen)*time.Second/2)
	now := time.Now()
	end := time.Unix((now.Unix()/int64(c.epochLen)+1)*int64(c.epochLen), 0)
	if left := end.Sub(now); left < margin {
		time.Sleep(left + 50*time.Millisecond)
	}
}

func (c *cluster) mustFetch(domainFile, identity, requester, out string, extra ...string) result {
	c.t.Helper()
	r := c.fetch(domainFile, identity, requester, out, extra...)
	if r.code != 0 {
		c.t.Fatalf("keys fetch failed: %v", r)
	}
	return r
}

// in returns the cluster as seen from t, a subtest of the test that made
// it: its failures are then reported on (and stop) the subtest.
func (c *cluster) in(t *testing.T) *cluster {
	cc := *c
	cc.t = t
	return &cc
}

// fetchClient and fetchServer fetch the usual two sets from the cluster's
// domain.
func (c *cluster) fetchClient(identity, out string) result {
	c.t.Helper()
	return c.mustFetch(c.domainFile, identity, "workload", out, "--kinds", "client,permit")
}

func (c *cluster) fetchServer(identity, out string) result {
	c.t.Helper()
	return c.mustFetch(c.domainFile, identity, "server", out, "--kinds", "server,domain")
}

// post sends a request to a D-TA and decodes a JSON answer.
func post(t *testing.T, url, token, contentType string, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("POST %s: read answer: %v", url, err)
	}
	return resp.StatusCode, resp.Header, b
}

// keyDirState is what a key directory holds: where ..data points, every
// entry of the directory, and the bytes of every file of the generation.
type keyDirState struct {
	link    string
	entries []string
	files   map[string]string
}

func readKeyDir(t *testing.T, dir string) keyDirState {
	t.Helper()
	link, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatalf("key directory %s: %v", dir, err)
	}
	s := keyDirState{link: link, files: map[string]string{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		s.entries = append(s.entries, e.Name())
	}
	gen, err := os.ReadDir(filepath.Join(dir, link))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range gen {
		p := filepath.Join(dir, link, e.Name())
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", p, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s.files[e.Name()] = string(b)
	}
	return s
}

// sameKeyDir requires that a key directory is exactly as it was.
func sameKeyDir(t *testing.T, dir string, before keyDirState) {
	t.Helper()
	after := readKeyDir(t, dir)
	if after.link != before.link {
		t.Errorf("%s: ..data moved from %s to %s", dir, before.link, after.link)
	}
	if !slices.Equal(after.entries, before.entries) {
		t.Errorf("%s: entries changed from %v to %v", dir, before.entries, after.entries)
	}
	for name, b := range before.files {
		if after.files[name] != b {
			t.Errorf("%s: %s changed", dir, name)
		}
	}
	if len(after.files) != len(before.files) {
		t.Errorf("%s: %d files in the generation, was %d", dir, len(after.files), len(before.files))
	}
	for _, e := range after.entries {
		if strings.HasPrefix(e, "..gen-") && e != after.link {
			t.Errorf("%s: leftover generation folder %s", dir, e)
		}
	}
}

var epochsRe = regexp.MustCompile(`permits for epochs \[(\d+) (\d+)\]`)

// permitEpochs parses the epochs from `keys fetch`/`keys show` output.
func permitEpochs(t *testing.T, out string) (uint64, uint64) {
	t.Helper()
	m := epochsRe.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no permit epochs in %q", out)
	}
	a, _ := strconv.ParseUint(m[1], 10, 64)
	b, _ := strconv.ParseUint(m[2], 10, 64)
	return a, b
}

// checkOK runs `milagro keys check` and requires success.
func checkOK(t *testing.T, clientDir, serverDir, clientIdentity string) result {
	t.Helper()
	r := mustMilagro(t, nil, "keys", "check", clientDir, serverDir)
	want := fmt.Sprintf("ok: %s authenticated to %s (permit for epoch ", clientIdentity, serverID)
	if !strings.HasPrefix(r.stdout, want) {
		t.Fatalf("keys check: want %q: %v", want, r)
	}
	return r
}

// Scenario 1: three D-TAs (one with a passphrase-encrypted master share),
// a client set and a server set that agree; then an impostor "dta-3" of
// the same domain name with another master share, pinned in a second
// domain.json: its envelopes verify, so fetch succeeds, but the keys do not
// add up and `keys check` catches it.
func TestFetchAndCheck(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterConfig{n: 3, passphrase: 1})

	clientDir := filepath.Join(c.base, "keys-client")
	serverDir := filepath.Join(c.base, "keys-server")
	r := c.fetchClient(clientID, clientDir)
	if !strings.Contains(r.stdout, clientID+" in domain "+testDomain+" (3 D-TAs)") || !strings.Contains(r.stdout, "client key, permits for epochs [") {
		t.Errorf("keys fetch output: %v", r)
	}
	r = c.fetchServer(serverID, serverDir)
	if !strings.Contains(r.stdout, "server identity key, domain server key") {
		t.Errorf("keys fetch output: %v", r)
	}
	for _, dir := range []string{clientDir, serverDir} {
		s := readKeyDir(t, dir)
		for _, f := range []string{"domain.json", "dta-1.json", "dta-2.json", "dta-3.json"} {
			if _, ok := s.files[f]; !ok {
				t.Errorf("%s lacks %s: %v", dir, f, s.entries)
			}
		}
	}
	checkOK(t, clientDir, serverDir, clientID)
	show := mustMilagro(t, nil, "keys", "show", serverDir)
	if !strings.Contains(show.stdout, serverID) {
		t.Errorf("keys show: %v", show)
	}

	// The impostor: same id, same domain name and epoch length, its own
	// master share and signing key.
	rogue := c.initDTA("dta-3", filepath.Join(c.base, "rogue-dta-3"), nil)
	c.serve(rogue, "127.0.0.1:0")
	rogueDomain := filepath.Join(c.base, "domain-rogue.json")
	c.buildDomain(rogueDomain, c.dtas[0], c.dtas[1], rogue)
	if a, b := readDTAKeys(t, c.domainFile), readDTAKeys(t, rogueDomain); a["dta-1"] != b["dta-1"] || a["dta-2"] != b["dta-2"] || a["dta-3"] == b["dta-3"] {
		t.Fatalf("domain files: want only dta-3's key to differ: %v vs %v", a, b)
	}

	rogueServer := filepath.Join(c.base, "keys-server-rogue")
	r = c.mustFetch(rogueDomain, serverID, "server", rogueServer, "--kinds", "server,domain")
	if !strings.Contains(r.stdout, "server identity key, domain server key") {
		t.Errorf("keys fetch output: %v", r)
	}
	bad := milagro(t, nil, "keys", "check", clientDir, rogueServer)
	wantFailure(t, bad, 1, "keys check: handshake between", clientID, serverID, "authentication failed")
	if strings.Contains(bad.stdout, "ok:") {
		t.Errorf("keys check printed ok: %v", bad)
	}

	// Control: a set wholly from the impostor's domain is consistent, so the
	// failure above is the mix, not a broken D-TA.
	rogueClient := filepath.Join(c.base, "keys-client-rogue")
	c.mustFetch(rogueDomain, clientID, "workload", rogueClient, "--kinds", "client,permit")
	checkOK(t, rogueClient, rogueServer, clientID)

	for _, d := range append(c.dtas, rogue) {
		d.proc.stop()
	}
}

// readDTAKeys returns the signing keys of a domain.json by D-TA id.
func readDTAKeys(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		DTAs []struct {
			ID         string `json:"id"`
			SigningKey string `json:"signing_key"`
		} `json:"dtas"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, x := range d.DTAs {
		m[x.ID] = x.SigningKey
	}
	return m
}

// Scenario 2: revocation with 4-second epochs.
func TestRevocation(t *testing.T) {
	t.Parallel()
	const epochLen = 4
	c := newCluster(t, clusterConfig{n: 3, epochLen: epochLen, passphrase: -1})

	clientDir := filepath.Join(c.base, "keys-client")
	serverDir := filepath.Join(c.base, "keys-server")
	r := c.fetchClient(clientID, clientDir)
	_, last := permitEpochs(t, r.stdout)
	c.fetchServer(serverID, serverDir)
	checkOK(t, clientDir, serverDir, clientID)
	before := readKeyDir(t, clientDir)

	// A non-admin may not revoke.
	body, _ := json.Marshal(map[string]string{"identity": clientID})
	if status, _, b := post(t, c.dtas[0].url()+"/v1/revoke", c.tokens["workload"], "application/json", body); status != http.StatusForbidden {
		t.Fatalf("revoke as workload: HTTP %d %s, want 403", status, b)
	}
	for _, d := range c.dtas {
		status, _, b := post(t, d.url()+"/v1/revoke", c.tokens["admin"], "application/json", body)
		var ans struct {
			Identity string `json:"identity"`
			Revoked  bool   `json:"revoked"`
			Changed  bool   `json:"changed"`
		}
		if status != http.StatusOK || json.Unmarshal(b, &ans) != nil || ans.Identity != clientID || !ans.Revoked || !ans.Changed {
			t.Fatalf("revoke at %s: HTTP %d %s", d.id, status, b)
		}
	}

	// The next fetch is refused by every D-TA and writes nothing.
	r = c.fetch(c.domainFile, clientID, "workload", clientDir, "--kinds", "client,permit")
	wantFailure(t, r, 1, "nothing written",
		"D-TA dta-1: HTTP 403: identity is revoked",
		"D-TA dta-2: HTTP 403: identity is revoked",
		"D-TA dta-3: HTTP 403: identity is revoked")
	sameKeyDir(t, clientDir, before)
	for _, d := range c.dtas {
		var refused int
		for _, l := range readLines(t, filepath.Join(d.dir, "audit.log")) {
			var ev auditEvent
			if err := json.Unmarshal([]byte(l), &ev); err != nil {
				t.Fatalf("%s audit.log: %v: %s", d.id, err, l)
			}
			if ev.Event == "refuse" && ev.Result == "revoked" && ev.Identity == clientID && ev.Status == 403 {
				refused++
			}
		}
		if refused != 1 {
			t.Errorf("%s audit.log: %d refusals for the revoked identity, want 1", d.id, refused)
		}
	}

	// Another identity is not affected.
	other := "spiffe://test.example/ns/web/sa/backoffice"
	otherDir := filepath.Join(c.base, "keys-other")
	c.fetchClient(other, otherDir)
	checkOK(t, otherDir, serverDir, other)

	// Once the old permits' epochs are over, the old set is useless. The
	// default grace (300 s, PROTOCOL.md §5) exceeds the 4 s epoch, so the
	// permit of the epoch just past is still accepted: wait until the
	// epoch after that.
	dead := time.Unix(int64(last+2)*epochLen, 0).Add(200 * time.Millisecond)
	t.Logf("old permits end with epoch %d; sleeping %v", last, time.Until(dead).Round(time.Millisecond))
	time.Sleep(time.Until(dead))
	bad := milagro(t, nil, "keys", "check", clientDir, serverDir)
	wantFailure(t, bad, 1, "keys check: handshake between", clientID, "time permit epoch not acceptable", "no time permit, and this server requires one")
	sameKeyDir(t, clientDir, before)

	for _, d := range c.dtas {
		d.proc.stop()
	}
}

// auditEvent is the part of an audit line the tests look at.
type auditEvent struct {
	Event     string `json:"event"`
	Requester string `json:"requester"`
	Identity  string `json:"identity"`
	Result    string `json:"result"`
	Status    int    `json:"status"`
	Reason    string `json:"reason"`
	Remote    string `json:"remote"`
}

// Scenario 3: bad requests against a real D-TA.
func TestBadRequests(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterConfig{n: 1, passphrase: -1})
	d := c.dtas[0]
	audit := filepath.Join(d.dir, "audit.log")
	issue := d.url() + "/v1/issue"
	work := c.tokens["workload"]
	req := func(identity string, kinds ...string) []byte {
		b, err := json.Marshal(map[string]any{"identity": identity, "kinds": kinds})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	const ctJSON = "application/json"
	for _, tc := range []struct {
		name        string
		url, token  string
		contentType string
		body        []byte
		status      int
		errText     string // in the JSON error
		result      string // the audit line's result
	}{
		{"malformed JSON", issue, work, ctJSON, []byte(`{"identity": "` + clientID + `", "kinds": [`), 400, "malformed JSON body", "bad request"},
		{"not an object", issue, work, ctJSON, []byte(`["client"]`), 400, "malformed JSON body", "bad request"},
		{"trailing data", issue, work, ctJSON, []byte(string(req(clientID, "client")) + `{}`), 400, "trailing data", "bad request"},
		{"unknown field", issue, work, ctJSON, []byte(`{"identity":"` + clientID + `","kinds":["client"],"admin":true}`), 400, "unknown field", "bad request"},
		{"oversized body", issue, work, ctJSON, []byte(`{"identity":"` + strings.Repeat("a", 20<<10) + `","kinds":["client"]}`), 413, "body exceeds 16384 bytes", "bad request"},
		{"not JSON", issue, work, "text/plain", req(clientID, "client"), 415, "send application/json", "bad request"},
		{"unknown kind", issue, work, ctJSON, req(clientID, "client", "root"), 400, `unknown share kind "root"`, "bad request"},
		{"no kinds", issue, work, ctJSON, req(clientID), 400, "no kinds requested", "bad request"},
		{"empty identity", issue, work, ctJSON, req("", "client"), 400, "identity must be 1..255 bytes, got 0", "bad request"},
		{"identity of 256 bytes", issue, work, ctJSON, req("spiffe://test.example/"+strings.Repeat("x", 256-22), "client"), 400, "identity must be 1..255 bytes, got 256", "bad request"},
		{"invalid UTF-8", issue, work, ctJSON, []byte(`{"identity":"spiffe://test.example/ns/w` + "\xff" + `b","kinds":["client"]}`), 400, "UTF-8", "bad request"},
		{"lone surrogate", issue, work, ctJSON, []byte(`{"identity":"spiffe://test.example/ns/w\ud800b","kinds":["client"]}`), 400, "UTF-8", "bad request"},
		{"dot-dot segment", issue, work, ctJSON, req("spiffe://test.example/ns/../admin", "client"), 400, `".." path segment`, "bad request"},
		{"dot segment", issue, work, ctJSON, req("spiffe://test.example/./ns/web", "client"), 400, `"." path segment`, "bad request"},
		{"encoded slash", issue, work, ctJSON, req("spiffe://test.example/ns%2Fweb", "client"), 400, "percent-encoded '/'", "bad request"},
		{"control character", issue, work, ctJSON, req("spiffe://test.example/ns/web\n", "client"), 400, "control character", "bad request"},
		{"wrong token", issue, randomToken(t), ctJSON, req(clientID, "client"), 401, "missing or unknown bearer token", "unauthenticated"},
		{"no token", issue, "", ctJSON, req(clientID, "client"), 401, "missing or unknown bearer token", "unauthenticated"},
		{"identity outside the policy", issue, work, ctJSON, req("spiffe://other.example/ns/web", "client"), 403, "matched by none of its identity patterns", "forbidden"},
		{"kind not granted", issue, work, ctJSON, req(clientID, "server"), 403, "kind server is not granted", "forbidden"},
		{"revoke as non-admin", d.url() + "/v1/revoke", work, ctJSON, []byte(`{"identity":"` + clientID + `"}`), 403, "only admin requesters may revoke", "forbidden"},
		{"revoke bad identity", d.url() + "/v1/revoke", c.tokens["admin"], ctJSON, []byte(`{"identity":""}`), 400, "identity must be 1..255 bytes", "bad request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(readLines(t, audit))
			status, hdr, body := post(t, tc.url, tc.token, tc.contentType, tc.body)
			var ans map[string]any
			if err := json.Unmarshal(body, &ans); err != nil || hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("HTTP %d, Content-Type %q: answer is not JSON (%v): %q", status, hdr.Get("Content-Type"), err, body)
			}
			msg, _ := ans["error"].(string)
			if status != tc.status || !strings.Contains(msg, tc.errText) {
				t.Errorf("HTTP %d %s, want %d with an error containing %q", status, body, tc.status, tc.errText)
			}
			if _, ok := ans["payload"]; ok || len(ans) != 1 {
				t.Errorf("answer holds more than an error: %s", body)
			}
			lines := readLines(t, audit)
			if len(lines) != n+1 {
				t.Fatalf("audit.log grew by %d lines, want 1: %q", len(lines)-n, lines[n:])
			}
			var ev auditEvent
			if err := json.Unmarshal([]byte(lines[n]), &ev); err != nil {
				t.Fatalf("audit line %q: %v", lines[n], err)
			}
			if ev.Event != "refuse" || ev.Status != tc.status || ev.Result != tc.result || ev.Remote != "127.0.0.1" || ev.Reason == "" {
				t.Errorf("audit line %s: want event refuse, status %d, result %q, remote 127.0.0.1 and a reason", lines[n], tc.status, tc.result)
			}
		})
	}

	// Nothing was issued; a good request still is, and is audited as such.
	for _, l := range readLines(t, audit) {
		if strings.Contains(l, `"event":"issue"`) {
			t.Errorf("audit.log records an issuance: %s", l)
		}
	}
	status, _, body := post(t, issue, work, ctJSON, req(clientID, "client"))
	if status != http.StatusOK || !bytes.Contains(body, []byte(`"payload"`)) || !bytes.Contains(body, []byte(`"signature"`)) {
		t.Fatalf("good request: HTTP %d %s", status, body)
	}
	lines := readLines(t, audit)
	if l := lines[len(lines)-1]; !strings.Contains(l, `"event":"issue"`) || !strings.Contains(l, `"result":"ok"`) || !strings.Contains(l, clientID) {
		t.Errorf("last audit line %s: want the issuance", l)
	}
	d.proc.stop()
}

// Scenario 4: a D-TA that hangs or dies during a fetch fails the fetch,
// names that D-TA, and leaves the key directory as it was.
func TestFetchDTADies(t *testing.T) {
	t.Parallel()
	c := newCluster(t, clusterConfig{n: 3, passphrase: -1})
	out := filepath.Join(c.base, "keys")
	c.fetchClient(clientID, out)
	before := readKeyDir(t, out)
	victim := c.dtas[1]

	// Stopped: the request hangs until --timeout.
	victim.proc.signal(syscall.SIGSTOP)
	start := time.Now()
	r := c.fetch(c.domainFile, clientID, "workload", out, "--kinds", "client,permit", "--timeout", "2s")
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("fetch with --timeout 2s took %v", took)
	}
	wantFailure(t, r, 1, "nothing written", "D-TA dta-2: ", "deadline exceeded")
	if strings.Contains(r.stderr, "D-TA dta-1") || strings.Contains(r.stderr, "D-TA dta-3") {
		t.Errorf("fetch blames a healthy D-TA: %v", r)
	}
	sameKeyDir(t, out, before)

	// Killed while a request waits on it: the fetch fails at once, not at
	// its 15 s default timeout.
	fetch := startProc(t, "keys fetch", nil, milagroBin, "keys", "fetch", "--domain", c.domainFile, "--identity", clientID,
		"--token-file", c.tokenFiles["workload"], "--out", out, "--kinds", "client,permit")
	time.Sleep(700 * time.Millisecond) // let it connect to the stopped D-TA
	if fetch.exited() {
		t.Fatalf("fetch exited before the D-TA was killed:\n%s", fetch.stderr.String())
	}
	start = time.Now()
	victim.proc.signal(syscall.SIGKILL)
	if code := fetch.wait(10 * time.Second); code != 1 {
		t.Errorf("fetch exited %d, want 1\nstderr:\n%s", code, fetch.stderr.String())
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("fetch took %v to notice the dead D-TA", took)
	}
	t.Logf("fetch after SIGKILL: %s", strings.TrimSpace(fetch.stderr.String()))
	if s := fetch.stderr.String(); !strings.Contains(s, "D-TA dta-2: ") || !strings.Contains(s, "nothing written") ||
		strings.Contains(s, "D-TA dta-1") || strings.Contains(s, "D-TA dta-3") {
		t.Errorf("fetch error should name dta-2 alone:\n%s", s)
	}
	victim.proc.wait(10 * time.Second)
	sameKeyDir(t, out, before)

	// And with the D-TA gone for good, a fetch fails the same way.
	r = c.fetch(c.domainFile, clientID, "workload", out, "--kinds", "client,permit")
	wantFailure(t, r, 1, "nothing written", "D-TA dta-2: ", "connection refused")
	sameKeyDir(t, out, before)
	mustMilagro(t, nil, "keys", "show", out)
	c.dtas[0].proc.stop()
	c.dtas[2].proc.stop()
}

// Scenario 5: `keys fetch --watch` renews every epoch, keeps the working
// set while a D-TA is down, recovers when it is back, and stops cleanly.
func TestWatch(t *testing.T) {
	t.Parallel()
	const epochLen = 4
	c := newCluster(t, clusterConfig{n: 3, epochLen: epochLen, passphrase: -1})
	out := filepath.Join(c.base, "keys")
	w := startProc(t, "keys fetch --watch", nil, milagroBin, "keys", "fetch", "--watch", "--domain", c.domainFile,
		"--identity", clientID, "--token-file", c.tokenFiles["workload"], "--out", out, "--kinds", "client,permit")

	link := func() string {
		l, _ := os.Readlink(filepath.Join(out, "..data"))
		return l
	}
	// waitMove waits until ..data points somewhere other than from.
	waitMove := func(from string, timeout time.Duration) string {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if l := link(); l != "" && l != from {
				return l
			}
			if w.exited() {
				t.Fatalf("watcher exited: %v\n%s", w.state, w.stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("..data did not move from %q within %v\nwatcher:\n%s", from, timeout, w.stderr.String())
		return ""
	}
	gens := []string{waitMove("", 15*time.Second)}
	start := time.Now()
	for range 2 {
		gens = append(gens, waitMove(gens[len(gens)-1], epochLen*time.Second+2*time.Second))
	}
	t.Logf("generations %v, renewed twice in %v", gens, time.Since(start).Round(time.Millisecond))
	// The watcher logs a write once it is complete (the previous generation
	// removed): wait for that before looking at the directory.
	w.waitOutput(regexp.MustCompile(`(?s)(keys written.*){3}`), true, 5*time.Second)

	// A D-TA goes away: the next renewal fails, is logged and retried, and
	// the working set stays.
	victim := c.dtas[2]
	port := victim.addr[strings.LastIndex(victim.addr, ":")+1:]
	victim.proc.stop()
	working := readKeyDir(t, out)
	failRe := regexp.MustCompile(`key fetch failed; keeping the current set.*D-TA dta-3: .*retry_in=`)
	w.waitOutput(failRe, true, epochLen*time.Second+3*time.Second)
	sameKeyDir(t, out, working)
	if r := mustMilagro(t, nil, "keys", "show", out); !strings.Contains(r.stdout, clientID) {
		t.Errorf("keys show: %v", r)
	}

	// Back on the same port: the watcher recovers and writes a new set.
	c.serve(victim, "127.0.0.1:"+port)
	if victim.addr != "127.0.0.1:"+port {
		t.Fatalf("restarted D-TA listens on %s, want port %s", victim.addr, port)
	}
	recovered := waitMove(working.link, 12*time.Second)
	t.Logf("recovered with generation %s", recovered)
	mustMilagro(t, nil, "keys", "show", out)

	w.stop()
	for _, d := range c.dtas {
		d.proc.stop()
	}
}

// Scenario 7: usage errors exit 2, refusals exit 1, with clear messages.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	dtaDir := filepath.Join(base, "dta-1")
	mustMilagro(t, nil, "dta", "init", "--dir", dtaDir, "--id", "dta-1", "--domain", testDomain, "--insecure-plaintext-key")
	domainFile := filepath.Join(base, "domain.json")
	mustMilagro(t, nil, "domain", "build", "--out", domainFile, dtaDir+"=http://127.0.0.1:9")
	policy := filepath.Join(base, "policy.yaml")
	writeFile(t, policy, []byte("requesters:\n  - name: admin\n    token_sha256: \""+sha256Hex("x")+"\"\n    admin: true\n"), 0o600)
	token := filepath.Join(base, "token")
	writeFile(t, token, []byte(randomToken(t)+"\n"), 0o644)
	goodToken := filepath.Join(base, "good-token")
	writeFile(t, goodToken, []byte(randomToken(t)+"\n"), 0o600)

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
		want []string
	}{
		{"no command", nil, nil, 2, nil},
		{"unknown command", nil, []string{"frobnicate"}, 2, []string{`unknown command "frobnicate"`, "usage: milagro"}},
		{"unknown subcommand", nil, []string{"dta", "destroy"}, 2, []string{`unknown command "dta destroy"`}},
		{"unknown flag", nil, []string{"keys", "fetch", "--bogus"}, 2, []string{"flag provided but not defined: -bogus"}},
		{"dta init without flags", nil, []string{"dta", "init"}, 2, []string{"--dir, --id and --domain are required"}},
		{"dta init without protection", nil, []string{"dta", "init", "--dir", filepath.Join(base, "new"), "--id", "dta-9", "--domain", testDomain}, 2, []string{"protect the master share"}},
		{"dta init over a D-TA", nil, []string{"dta", "init", "--dir", dtaDir, "--id", "dta-1", "--domain", testDomain, "--insecure-plaintext-key"}, 1, []string{"a D-TA already exists in this directory"}},
		{"dta serve without policy", nil, []string{"dta", "serve", "--dir", dtaDir}, 2, []string{"--dir and --policy are required", "MILAGRO_DTA_POLICY"}},
		{"dta serve plain HTTP on all interfaces", nil, []string{"dta", "serve", "--dir", dtaDir, "--policy", policy, "--insecure-http", "--listen", "0.0.0.0:0"}, 2, []string{"--insecure-http serves only on a loopback address"}},
		{"dta serve without TLS choice", nil, []string{"dta", "serve", "--dir", dtaDir, "--policy", policy, "--listen", "127.0.0.1:0"}, 2, []string{"choose one of ACME"}},
		{"domain build without D-TAs", nil, []string{"domain", "build"}, 2, []string{"give one DIR=URL argument per D-TA"}},
		{"keys fetch without flags", nil, []string{"keys", "fetch"}, 2, []string{"--domain, --identity, --token-file and --out are required", "MILAGRO_KEYS"}},
		{"keys fetch bad kind", nil, []string{"keys", "fetch", "--domain", domainFile, "--identity", clientID, "--token-file", goodToken, "--out", filepath.Join(base, "k"), "--kinds", "client,root"}, 2, []string{`--kinds: unknown share kind "root"`}},
		{"keys check without dirs", nil, []string{"keys", "check"}, 2, []string{"give a client key directory"}},
		{"keys check too many dirs", nil, []string{"keys", "check", "a", "b", "c"}, 2, []string{"unexpected arguments: c"}},
		{"keys show no dir", nil, []string{"keys", "show", filepath.Join(base, "nope")}, 1, []string{"no ..data link"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := milagro(t, tc.env, tc.args...)
			wantFailure(t, r, tc.code, tc.want...)
		})
	}

	// The world-readable token is refused before any D-TA is asked (the
	// domain's only D-TA does not even exist), with the file and the fix.
	r := milagro(t, nil, "keys", "fetch", "--domain", domainFile, "--identity", clientID, "--token-file", token, "--out", filepath.Join(base, "keys"))
	wantFailure(t, r, 1, "token file "+token+" has mode 0644: it must not be group/world-accessible (chmod 600)")
	if _, err := os.Stat(filepath.Join(base, "keys")); !os.IsNotExist(err) {
		t.Errorf("refused fetch created the key directory: %v", err)
	}
	// Fixing the mode moves the failure on to the (absent) D-TA.
	if err := os.Chmod(token, 0o600); err != nil {
		t.Fatal(err)
	}
	r = milagro(t, nil, "keys", "fetch", "--domain", domainFile, "--identity", clientID, "--token-file", token, "--out", filepath.Join(base, "keys"), "--timeout", "2s")
	wantFailure(t, r, 1, "D-TA dta-1: ", "nothing written")

	// A passphrase file others can read is refused too.
	pass := filepath.Join(base, "pass")
	writeFile(t, pass, []byte("hunter2\n"), 0o640)
	r = milagro(t, nil, "dta", "init", "--dir", filepath.Join(base, "dta-2"), "--id", "dta-2", "--domain", testDomain, "--passphrase-file", pass)
	wantFailure(t, r, 1, "passphrase file "+pass+" has mode 0640")

	// An encrypted master share needs the right passphrase to serve.
	encDir := filepath.Join(base, "dta-3")
	mustMilagro(t, []string{"MILAGRO_DTA_PASSPHRASE=right"}, "dta", "init", "--dir", encDir, "--id", "dta-3", "--domain", testDomain)
	serve := []string{"dta", "serve", "--dir", encDir, "--policy", policy, "--insecure-http", "--listen", "127.0.0.1:0"}
	wantFailure(t, milagro(t, nil, serve...), 1, "the master share is encrypted: give a passphrase or an age identity")
	wantFailure(t, milagro(t, []string{"MILAGRO_DTA_PASSPHRASE=wrong"}, serve...), 1, "decrypt master share (wrong passphrase or identity?)")
}

// Scenario 6: ACME for real against Pebble. Its API is served with a
// throwaway CA made here (handed to the D-TA as --acme-ca-root); the D-TA's
// certificate comes from Pebble, whose issuing root is then the fetcher's
// --ca-file.
func TestACMEPebble(t *testing.T) {
	t.Parallel()
	pebble := findPebble(t)
	base := t.TempDir()

	apiCA, apiCert, apiKey := makeAPICert(t, base)
	apiPort, mgmtPort, httpPort, tlsPort := freePort(t), freePort(t), freePort(t), freePort(t)
	cfg := fmt.Sprintf(`{"pebble": {
  "listenAddress": "127.0.0.1:%d",
  "managementListenAddress": "127.0.0.1:%d",
  "certificate": %q,
  "privateKey": %q,
  "httpPort": %d,
  "tlsPort": %d,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "retryAfter": {"authz": 1, "order": 1}
}}`, apiPort, mgmtPort, apiCert, apiKey, httpPort, tlsPort)
	cfgFile := filepath.Join(base, "pebble.json")
	writeFile(t, cfgFile, []byte(cfg), 0o600)
	peb := startProc(t, "pebble", []string{"PEBBLE_VA_ALWAYS_VALID=1", "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"}, pebble, "-config", cfgFile)

	apiPool := x509.NewCertPool()
	apiPool.AddCert(apiCA)
	apiClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: apiPool}}}
	dirURL := fmt.Sprintf("https://127.0.0.1:%d/dir", apiPort)
	waitHTTP(t, peb, apiClient, dirURL, 20*time.Second)

	// One D-TA over ACME.
	c := &cluster{t: t, base: base, tokens: map[string]string{}, tokenFiles: map[string]string{}}
	c.writePolicy()
	d := c.initDTA("dta-1", filepath.Join(base, "dta-1"), nil)
	start := time.Now()
	d.proc = startProc(t, "dta serve (ACME)", nil, milagroBin, "dta", "serve", "--dir", d.dir, "--policy", c.policy,
		"--listen", "127.0.0.1:0", "--acme-domain", "localhost", "--acme-ca", dirURL,
		"--acme-ca-root", filepath.Join(base, "api-ca.pem"), "--acme-email", "ops@test.example",
		"--acme-http-port", strconv.Itoa(httpPort), "--acme-tls-port", strconv.Itoa(tlsPort))
	d.addr = d.proc.waitListening(60 * time.Second)
	t.Logf("D-TA obtained its certificate and listens on %s after %v", d.addr, time.Since(start).Round(time.Millisecond))
	port := d.addr[strings.LastIndex(d.addr, ":")+1:]

	// Pebble's issuing root, from its management API.
	resp, err := apiClient.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble /roots/0: HTTP %d, %v", resp.StatusCode, err)
	}
	rootFile := filepath.Join(base, "pebble-root.pem")
	writeFile(t, rootFile, rootPEM, 0o644)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		t.Fatalf("pebble /roots/0 is not PEM: %q", rootPEM)
	}

	// The D-TA serves HTTPS with a certificate that chains to Pebble's root.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", d.addr, &tls.Config{ServerName: "localhost", RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS to the D-TA with Pebble's root: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if !slices.Contains(leaf.DNSNames, "localhost") || !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
		t.Errorf("D-TA certificate: names %v, issuer %q; want localhost from Pebble", leaf.DNSNames, leaf.Issuer)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "acme")); err != nil {
		t.Errorf("certmagic storage: %v", err)
	}

	c.dtas = []*dtaNode{d}
	c.domainFile = filepath.Join(base, "domain.json")
	mustMilagro(t, nil, "domain", "build", "--out", c.domainFile, d.dir+"=https://localhost:"+port)

	// Without Pebble's root the fetch must not trust the D-TA.
	r := c.fetch(c.domainFile, clientID, "workload", filepath.Join(base, "keys-untrusted"), "--kinds", "client,permit")
	wantFailure(t, r, 1, "D-TA dta-1: ", "certificate signed by unknown authority")

	clientDir, serverDir := filepath.Join(base, "keys-client"), filepath.Join(base, "keys-server")
	c.mustFetch(c.domainFile, clientID, "workload", clientDir, "--kinds", "client,permit", "--ca-file", rootFile)
	c.mustFetch(c.domainFile, serverID, "server", serverDir, "--kinds", "server,domain", "--ca-file", rootFile)
	checkOK(t, clientDir, serverDir, clientID)

	d.proc.stop()
	peb.signal(syscall.SIGTERM)
	peb.wait(10 * time.Second)
}

// findPebble returns pebble from PATH, or installs it into a temporary
// GOBIN; it skips the test only if that install fails.
func findPebble(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pebble"); err == nil {
		return p
	}
	const pkg = "github.com/letsencrypt/pebble/v2/cmd/pebble@v2.10.1"
	gobin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", pkg)
	cmd.Dir = gobin // outside this module: go install pkg@version ignores it anyway
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("pebble is not on PATH and `go install %s` failed (%v):\n%s", pkg, err, out)
	}
	t.Logf("installed pebble in %v", time.Since(start).Round(time.Millisecond))
	return filepath.Join(gobin, "pebble")
}

// makeAPICert makes a CA and a certificate for localhost and 127.0.0.1 for
// Pebble's API, writing api-ca.pem, api-cert.pem and api-key.pem.
func makeAPICert(t *testing.T, dir string) (*x509.Certificate, string, string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "milagro integration ACME API CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "api-cert.pem"), filepath.Join(dir, "api-key.pem")
	writeFile(t, filepath.Join(dir, "api-ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return ca, certFile, keyFile
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t *testing.T, p *proc, c *http.Client, url string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		if p.exited() {
			t.Fatalf("%s exited (%v)\nstdout:\n%s\nstderr:\n%s", p.name, p.state, p.stdout.String(), p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %v: %v", url, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testPolicy is the D-TA policy of these tests: a workload requester
// (client keys and permits), a server requester (server and domain keys)
// and an admin, each known by the SHA-256 of its bearer token.
func testPolicy(workloadToken, serverToken, adminToken string) string {
	return fmt.Sprintf(`requesters:
  - name: workload
    token_sha256: %q
    identities: ["spiffe://test.example/**"]
    kinds: [client, permit]
    rate_per_minute: 6000
  - name: server
    token_sha256: %q
    identities: ["spiffe://test.example/**"]
    kinds: [server, domain]
    server: true
    rate_per_minute: 6000
  - name: admin
    token_sha256: %q
    admin: true
    rate_per_minute: 6000
`, sha256Hex(workloadToken), sha256Hex(serverToken), sha256Hex(adminToken))
}
