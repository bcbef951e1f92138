package dta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

var (
	clientKinds = []keydir.Kind{keydir.KindClient, keydir.KindPermit}
	serverKinds = []keydir.Kind{keydir.KindServer, keydir.KindDomain}
)

// fetchSets fetches a client set (fxClientID, client and permit shares)
// and a server set (fxServerID, server and domain shares) from fx.
func fetchSets(t *testing.T, fx *fixture, factor string) (clientDir, serverDir string, client, server *FetchResult) {
	t.Helper()
	clientDir, serverDir = filepath.Join(t.TempDir(), "client"), filepath.Join(t.TempDir(), "server")
	opt := fx.fetchOpts(fxClientID, fxTokWeb, clientDir, clientKinds...)
	opt.Factor = factor
	client, err := Fetch(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	server, err = Fetch(context.Background(), fx.fetchOpts(fxServerID, fxTokPay, serverDir, serverKinds...))
	if err != nil {
		t.Fatal(err)
	}
	return clientDir, serverDir, client, server
}

func TestFetchAndCheck(t *testing.T) {
	fx := newFixture(t, fxOptions{})
	cur := fx.cur(t)
	clientDir, serverDir, cres, sres := fetchSets(t, fx, "")

	cs, err := keydir.Load(clientDir)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := keydir.Load(serverDir)
	if err != nil {
		t.Fatal(err)
	}
	if cs.Generation != cres.Generation || ss.Generation != sres.Generation {
		t.Errorf("generations %s %s, fetch said %s %s", cs.Generation, ss.Generation, cres.Generation, sres.Generation)
	}
	if cs.Identity != fxClientID || cs.CS == nil || cs.Token != nil || !slices.Equal(cs.Epochs(), []uint64{cur, cur + 1}) || cs.SK != nil || cs.SS != nil {
		t.Fatalf("client set %+v", cs)
	}
	if ss.Identity != fxServerID || ss.SK == nil || ss.SS == nil || ss.CS != nil || ss.Permits != nil {
		t.Fatalf("server set %+v", ss)
	}
	if !cs.CS.Equal(*cres.Set.CS) || !ss.SK.Equal(*sres.Set.SK) || !ss.SS.Equal(*sres.Set.SS) {
		t.Error("loaded keys differ from the fetched ones")
	}
	if !cs.ExpiresAt.Equal(time.Unix(int64(cur+2)*86400, 0)) || !cs.IssuedAt.Equal(fxT0) {
		t.Errorf("client set issued %v, expires %v", cs.IssuedAt, cs.ExpiresAt)
	}

	// The whole keys are s·X with s the sum of the three master shares,
	// read independently from the D-TAs' secret files.
	s := new(pairing.Scalar)
	for _, d := range fx.DTAs {
		s.Add(s, d.masterScalar(t))
	}
	xc := issueCompute(t, s, fxClientID, cur, cur+1)
	xs := issueCompute(t, s, fxServerID, cur, cur+1)
	if !cs.CS.Equal(xc.client) || !cs.Permits[cur].Equal(xc.permit[cur]) || !cs.Permits[cur+1].Equal(xc.permit[cur+1]) {
		t.Error("client keys are not s·A and s·AT")
	}
	if !ss.SK.Equal(xs.server) || !ss.SS.Equal(xs.domain) {
		t.Error("server keys are not s·B and s·Q")
	}

	// On disk: domain.json as pinned, one envelope per D-TA, private modes.
	for _, dir := range []string{clientDir, serverDir} {
		b, err := os.ReadFile(filepath.Join(dir, keydir.DomainFile))
		if err != nil || !bytes.Equal(b, fx.Domain.Marshal()) {
			t.Errorf("%s: domain.json %s %v", dir, b, err)
		}
		for _, d := range fx.DTAs {
			fi, err := os.Stat(filepath.Join(dir, keydir.EnvelopeFile(d.ID)))
			if err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: envelope of %s: %v %v", dir, d.ID, fi, err)
			}
		}
		if _, err := os.Lstat(filepath.Join(dir, keydir.TokenFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: client.token without a factor", dir)
		}
	}
	// Every D-TA audited its issuance.
	for _, d := range fx.DTAs {
		var got []string
		for _, e := range d.auditEvents(t) {
			got = append(got, e.Event+" "+e.Requester+" "+e.Identity)
		}
		if want := []string{"issue web " + fxClientID, "issue pay " + fxServerID}; !slices.Equal(got, want) {
			t.Errorf("%s audit %v", d.ID, got)
		}
	}

	rep, err := Check(context.Background(), cs, ss, "", fx.now())
	if err != nil {
		t.Fatal(err)
	}
	if rep.ClientID != fxClientID || rep.ServerID != fxServerID || !rep.PermitUsed || rep.PermitEpoch != cur {
		t.Errorf("report %+v", rep)
	}

	// A second fetch replaces the generation; the first folder is gone.
	fx.Clock.Set(fxT0.Add(time.Second))
	again, err := Fetch(context.Background(), fx.fetchOpts(fxClientID, fxTokWeb, clientDir, clientKinds...))
	if err != nil {
		t.Fatal(err)
	}
	if again.Generation == cres.Generation {
		t.Error("same generation twice")
	}
	if _, err := os.Stat(filepath.Join(clientDir, cres.Generation)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old generation left: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(clientDir, keydir.DataLink)); l != again.Generation {
		t.Errorf("..data → %s, want %s", l, again.Generation)
	}
}

func TestFetchWithFactor(t *testing.T) {
	fx := newFixture(t, fxOptions{})
	const factor = "1234"
	clientDir, serverDir, cres, _ := fetchSets(t, fx, factor)
	if cres.Set.CS != nil || cres.Set.Token == nil {
		t.Fatalf("fetch result keeps CS %v, token %v", cres.Set.CS != nil, cres.Set.Token != nil)
	}
	tb, err := os.ReadFile(filepath.Join(clientDir, keydir.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	id, tok, err := keydir.ParseToken(tb)
	if err != nil || id != fxClientID {
		t.Fatalf("client.token: %q %v", id, err)
	}
	fi, err := os.Stat(filepath.Join(clientDir, keydir.TokenFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client.token mode: %v %v", fi, err)
	}
	// No client share value on disk, anywhere under the directory.
	err = filepath.WalkDir(clientDir, func(p string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || de.Type()&os.ModeSymlink != 0 || !strings.HasSuffix(p, ".json") || filepath.Base(p) == keydir.DomainFile {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		env, err := keydir.ParseEnvelope(b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if _, ok := env.Values[string(keydir.KindClient)]; ok {
			t.Errorf("%s holds a client share", p)
		}
		if len(env.Values) != 2 {
			t.Errorf("%s values %v", p, env.Values)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The token is CS − f·A for the CS the D-TAs issued.
	s := new(pairing.Scalar)
	for _, d := range fx.DTAs {
		s.Add(s, d.masterScalar(t))
	}
	want := issueCompute(t, s, fxClientID, 1, 2).client
	if cs, err := mpinkex.RebuildCS(tok, fxClientID, factor); err != nil || !cs.Equal(want) {
		t.Errorf("TOKEN + f·A is not CS (%v)", err)
	}
	if tok.Equal(want) {
		t.Error("the token is the raw client key")
	}

	cs, err := keydir.Load(clientDir)
	if err != nil {
		t.Fatal(err)
	}
	if cs.CS != nil || cs.Token == nil || !cs.Token.Equal(tok) {
		t.Fatalf("loaded set: CS %v, token %v", cs.CS != nil, cs.Token != nil)
	}
	ss, err := keydir.Load(serverDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Check(context.Background(), cs, ss, factor, fx.now()); err != nil {
		t.Fatalf("right factor: %v", err)
	}
	for _, wrong := range []string{"1235", "0", "12345", "pass phrase"} {
		_, err := Check(context.Background(), cs, ss, wrong, fx.now())
		if err == nil || !errors.Is(err, mpinkex.ErrAuth) {
			t.Errorf("factor %q: %v, want an authentication failure", wrong, err)
		}
	}
	if _, err := Check(context.Background(), cs, ss, "", fx.now()); err == nil || !strings.Contains(err.Error(), "give the factor") {
		t.Errorf("no factor: %v", err)
	}
}

// rewriteRequest changes the issue request before the D-TA sees it.
func rewriteRequest(h http.Handler, mod func(*IssueRequest)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req IssueRequest
		b, err := io.ReadAll(r.Body)
		if err == nil {
			err = json.Unmarshal(b, &req)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusTeapot)
			return
		}
		mod(&req)
		b, _ = json.Marshal(req)
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
		h.ServeHTTP(w, r)
	})
}

// rewriteResponse changes the D-TA's answer.
func rewriteResponse(h http.Handler, mod func(status int, body []byte) (int, []byte)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		status, body := mod(rec.Code, rec.Body.Bytes())
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write(body)
	})
}

// tamperEnvelope edits an issued envelope, keeping it well-formed JSON.
func tamperEnvelope(h http.Handler, mod func(*keydir.Envelope)) http.Handler {
	return rewriteResponse(h, func(status int, body []byte) (int, []byte) {
		env, err := keydir.ParseEnvelope(body)
		if status != http.StatusOK || err != nil {
			return http.StatusTeapot, []byte(`{"error":"fixture: no envelope to tamper with"}`)
		}
		mod(env)
		return status, env.Marshal()
	})
}

// dieMidBody lets the D-TA issue, then sends the status line, the headers
// and half of the envelope, and drops the connection.
func dieMidBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(buf, "HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", rec.Code, len(body))
		buf.Write(body[:len(body)/2])
		buf.Flush()
	})
}

// closedURL is the address of a D-TA that is down.
func closedURL(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.NotFoundHandler())
	u := s.URL
	s.Close()
	return u
}

func TestFetchFailuresLeaveDirectory(t *testing.T) {
	fx := newFixture(t, fxOptions{})
	cur := fx.cur(t)
	out := filepath.Join(t.TempDir(), "keys")
	good, err := Fetch(context.Background(), fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...))
	if err != nil {
		t.Fatal(err)
	}

	svc := func(i int) http.Handler { return fx.DTAs[i].Svc }
	serve := func(h http.Handler) string { return newTestServer(t, h).URL }
	// A real D-TA (dta-2's master share) whose policy does not grant
	// fxClientID.
	strict := fxParsePolicy(t, `
requesters:
  - name: web
    token_sha256: "`+HashToken(fxTokWeb)+`"
    identities: ["spiffe://prod.example/ns/other/*"]
    kinds: [client, permit]
`)
	strictSvc, _, _, _, _ := fxNewService(t, fx.DTAs[1].Auth, strict, fx.now, "")
	// An impostor: a D-TA with dta-2's id but its own keys.
	impostor := fxNewAuthority(t, "dta-2", 86400)
	impostorSvc, _, _, _, _ := fxNewService(t, impostor.Authority, fxParsePolicy(t, fxPolicyYAML()), fx.now, "")
	otherID := func(r *IssueRequest) { r.Identity = "spiffe://prod.example/ns/web/sa/other" }
	laterEpochs := func(r *IssueRequest) { r.Epochs = []uint64{cur + 1, cur + 2} }

	for _, tc := range []struct {
		name    string
		repl    func() map[int]string // D-TA index → URL
		timeout time.Duration
		names   []string // D-TAs the error must name
		status  int      // of the DTAError of names[0]; -1: not a DTAError
		is      error
		sub     string
	}{
		{"one D-TA down", func() map[int]string { return map[int]string{1: closedURL(t)} }, 0, []string{"dta-2"}, 0, nil, "connection refused"},
		{"one D-TA answers 403", func() map[int]string { return map[int]string{1: serve(strictSvc)} }, 0, []string{"dta-2"}, 403, nil, "matched by none"},
		{"two D-TAs fail", func() map[int]string { return map[int]string{0: serve(strictSvc), 2: closedURL(t)} }, 0, []string{"dta-1", "dta-3"}, 403, nil, ""},
		{"tampered payload", func() map[int]string {
			return map[int]string{1: serve(tamperEnvelope(svc(1), func(e *keydir.Envelope) {
				i := bytes.Index(e.Payload, []byte("frontend"))
				e.Payload[i] ^= 0x01
			}))}
		}, 0, []string{"dta-2"}, -1, keydir.ErrSignature, "signature"},
		{"tampered share value", func() map[int]string {
			return map[int]string{2: serve(tamperEnvelope(svc(2), func(e *keydir.Envelope) {
				v := []byte(e.Values["client"])
				if v[10] == '0' { // another hex digit: a valid encoding of other bytes
					v[10] = '1'
				} else {
					v[10] = '0'
				}
				e.Values["client"] = string(v)
			}))}
		}, 0, []string{"dta-3"}, -1, keydir.ErrSignature, "does not match its signed digest"},
		{"share value withheld", func() map[int]string {
			return map[int]string{2: serve(tamperEnvelope(svc(2), func(e *keydir.Envelope) { delete(e.Values, "permit/"+fmt.Sprint(cur)) }))}
		}, 0, []string{"dta-3"}, -1, keydir.ErrMalformed, "missing"},
		{"signed with another key", func() map[int]string { return map[int]string{1: serve(impostorSvc)} }, 0, []string{"dta-2"}, -1, keydir.ErrSignature, ""},
		{"envelope from another D-TA", func() map[int]string { return map[int]string{1: fx.DTAs[0].Server.URL} }, 0, []string{"dta-2"}, -1, keydir.ErrSignature, ""},
		{"envelope for another identity", func() map[int]string { return map[int]string{1: serve(rewriteRequest(svc(1), otherID))} }, 0, []string{"dta-2"}, -1, nil, "envelope is for"},
		{"every envelope for another identity", func() map[int]string {
			return map[int]string{0: serve(rewriteRequest(svc(0), otherID)), 1: serve(rewriteRequest(svc(1), otherID)), 2: serve(rewriteRequest(svc(2), otherID))}
		}, 0, nil, -1, nil, "D-TAs issued for"},
		{"permits for other epochs", func() map[int]string { return map[int]string{2: serve(rewriteRequest(svc(2), laterEpochs))} }, 0, []string{"dta-3"}, -1, nil, "issued shares"},
		{"every D-TA permits for other epochs", func() map[int]string {
			return map[int]string{0: serve(rewriteRequest(svc(0), laterEpochs)), 1: serve(rewriteRequest(svc(1), laterEpochs)), 2: serve(rewriteRequest(svc(2), laterEpochs))}
		}, 0, nil, -1, nil, "permits for epochs"},
		{"every D-TA omits the client share", func() map[int]string {
			drop := func(r *IssueRequest) { r.Kinds = []string{"permit"} }
			return map[int]string{0: serve(rewriteRequest(svc(0), drop)), 1: serve(rewriteRequest(svc(1), drop)), 2: serve(rewriteRequest(svc(2), drop))}
		}, 0, nil, -1, nil, "client"},
		{"D-TA dies mid-answer", func() map[int]string { return map[int]string{2: serve(dieMidBody(svc(2)))} }, 0, []string{"dta-3"}, http.StatusOK, nil, "read answer"},
		{"D-TA too slow", func() map[int]string {
			return map[int]string{0: serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body) // then the server notices the client leave
				select {
				case <-r.Context().Done():
				case <-time.After(10 * time.Second):
				}
			}))}
		}, time.Second, []string{"dta-1"}, 0, context.DeadlineExceeded, ""},
		{"answer not JSON", func() map[int]string {
			return map[int]string{1: serve(rewriteResponse(svc(1), func(int, []byte) (int, []byte) { return 200, []byte("<html>hello</html>") }))}
		}, 0, []string{"dta-2"}, -1, keydir.ErrMalformed, ""},
		{"answer too large", func() map[int]string {
			return map[int]string{1: serve(rewriteResponse(svc(1), func(int, []byte) (int, []byte) {
				return 200, bytes.Repeat([]byte(" "), keydir.MaxEnvelopeSize+1)
			}))}
		}, 0, []string{"dta-2"}, 200, nil, "answer too large"},
		{"error without JSON", func() map[int]string {
			return map[int]string{1: serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "upstream gone", http.StatusBadGateway)
			}))}
		}, 0, []string{"dta-2"}, 502, nil, "upstream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := fxSnapshot(t, out)
			opt := fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...)
			opt.Domain = fx.domainWith(tc.repl())
			if tc.timeout > 0 {
				opt.Timeout = tc.timeout
			}
			res, err := Fetch(context.Background(), opt)
			if err == nil {
				t.Fatalf("fetch succeeded: generation %s", res.Generation)
			}
			if res != nil {
				t.Error("a failed fetch returned a result")
			}
			t.Log(err)
			msg := err.Error()
			if !strings.Contains(msg, "nothing written") && !strings.Contains(msg, "D-TAs issued for") {
				t.Errorf("error %q does not say nothing was written", msg)
			}
			for _, n := range tc.names {
				if !strings.Contains(msg, "D-TA "+n) {
					t.Errorf("error does not name %s: %q", n, msg)
				}
			}
			for _, d := range fx.DTAs {
				if !slices.Contains(tc.names, d.ID) && strings.Contains(msg, "D-TA "+d.ID+":") && len(tc.names) > 0 && tc.status >= 0 {
					t.Errorf("error blames the healthy %s: %q", d.ID, msg)
				}
			}
			if tc.status >= 0 {
				var de *DTAError
				if !errors.As(err, &de) || de.DTA != tc.names[0] || de.Status != tc.status {
					t.Errorf("DTAError %+v, want D-TA %s status %d", de, tc.names[0], tc.status)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error is not %v", tc.is)
			}
			if !strings.Contains(msg, tc.sub) {
				t.Errorf("error does not contain %q", tc.sub)
			}
			fxSameSnapshot(t, before, fxSnapshot(t, out))
			set, err := keydir.Load(out)
			if err != nil || set.Generation != good.Generation || !set.CS.Equal(*good.Set.CS) {
				t.Fatalf("working set damaged: %v", err)
			}
		})
	}
}

func TestFetchOptionErrors(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1})
	out := filepath.Join(t.TempDir(), "keys")
	base := fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...)
	badDomain := *fx.Domain
	badDomain.EpochLen = 0
	for _, tc := range []struct {
		name string
		mod  func(*FetchOptions)
		want string
	}{
		{"no domain", func(o *FetchOptions) { o.Domain = nil }, "no domain"},
		{"invalid domain", func(o *FetchOptions) { o.Domain = &badDomain }, "epoch_len"},
		{"no identity", func(o *FetchOptions) { o.Identity = "" }, "identity"},
		{"invalid UTF-8 identity", func(o *FetchOptions) { o.Identity = "spiffe://prod.example/ns/web/\xff" }, "identity"},
		{"no token", func(o *FetchOptions) { o.Token = "" }, "no bearer token"},
		{"no kinds", func(o *FetchOptions) { o.Kinds = nil }, "no share kinds"},
		{"no output", func(o *FetchOptions) { o.Out = "" }, "no output directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			if _, err := Fetch(context.Background(), o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Error("a refused fetch created the output directory")
	}
	if evs := fx.DTAs[0].auditEvents(t); len(evs) != 0 {
		t.Errorf("a refused fetch reached the D-TA: %+v", evs)
	}
}

// watchLog collects Watch's attempts.
type watchLog struct {
	mu       sync.Mutex
	attempts []watchAttempt
	notify   chan struct{}
}

type watchAttempt struct {
	at  time.Time
	res *FetchResult
	err error
}

func newWatchLog() *watchLog { return &watchLog{notify: make(chan struct{}, 1000)} }

func (w *watchLog) onFetch(res *FetchResult, err error) {
	w.mu.Lock()
	w.attempts = append(w.attempts, watchAttempt{time.Now(), res, err})
	w.mu.Unlock()
	w.notify <- struct{}{}
}

// waitFor waits until cond holds for the attempts so far.
func (w *watchLog) waitFor(t *testing.T, timeout time.Duration, what string, cond func([]watchAttempt) bool) []watchAttempt {
	t.Helper()
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		a := slices.Clone(w.attempts)
		w.mu.Unlock()
		if cond(a) {
			return a
		}
		select {
		case <-w.notify:
		case <-deadline:
			t.Fatalf("after %v: no %s; attempts: %+v", timeout, what, a)
		}
	}
}

// runWatch starts Watch and returns a function that cancels it and waits
// (bounded) for it to return.
func runWatch(t *testing.T, opt FetchOptions, w *watchLog) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, opt, zerolog.Nop(), w.onFetch) }()
	stopped := false
	stop = func() time.Duration {
		if stopped {
			return 0
		}
		stopped = true
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Watch did not return after its context was cancelled")
		}
		return time.Since(start)
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestWatchRenews(t *testing.T) {
	t.Parallel()
	// Real time, two-second epochs: Watch holds permits for the current and
	// the next epoch and renews just after each boundary.
	fx := newFixture(t, fxOptions{EpochLen: 2, RealTime: true})
	out := filepath.Join(t.TempDir(), "keys")
	opt := fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...)
	w := newWatchLog()
	stop := runWatch(t, opt, w)
	oks := func(a []watchAttempt) []watchAttempt {
		var r []watchAttempt
		for _, x := range a {
			if x.err == nil {
				r = append(r, x)
			}
		}
		return r
	}
	all := w.waitFor(t, 20*time.Second, "two successful fetches", func(a []watchAttempt) bool { return len(oks(a)) >= 2 })
	if d := stop(); d > time.Second {
		t.Errorf("Watch took %v to stop", d)
	}
	ok := oks(all)
	first, second := ok[0], ok[1]
	e1, e2 := first.res.Set.Epochs(), second.res.Set.Epochs()
	if len(e1) != 2 || len(e2) != 2 || e2[0] <= e1[0] || e1[1] != e1[0]+1 {
		t.Errorf("epochs %v then %v", e1, e2)
	}
	if first.res.Generation == second.res.Generation {
		t.Error("renewal reused the generation")
	}
	if gap := second.at.Sub(first.at); gap > 5*time.Second {
		t.Errorf("renewed after %v with two-second epochs", gap)
	}
	for _, a := range all {
		if a.err != nil {
			t.Logf("failed attempt (retried): %v", a.err)
		}
	}
	set, err := keydir.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	last := ok[len(ok)-1]
	if set.Generation != last.res.Generation || !slices.Equal(set.Epochs(), last.res.Set.Epochs()) {
		t.Errorf("directory holds %s %v, last fetch %s %v", set.Generation, set.Epochs(), last.res.Generation, last.res.Set.Epochs())
	}
	ents, _ := os.ReadDir(out)
	gens := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "..gen-") {
			gens++
		}
	}
	if gens != 1 {
		t.Errorf("%d generation folders", gens)
	}
}

func TestWatchKeepsSetWhileDTADown(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, fxOptions{})
	out := filepath.Join(t.TempDir(), "keys")
	good, err := Fetch(context.Background(), fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...))
	if err != nil {
		t.Fatal(err)
	}
	before := fxSnapshot(t, out)
	opt := fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...)
	opt.Domain = fx.domainWith(map[int]string{2: closedURL(t)})
	w := newWatchLog()
	stop := runWatch(t, opt, w)
	a := w.waitFor(t, 15*time.Second, "three attempts", func(a []watchAttempt) bool { return len(a) >= 3 })
	if d := stop(); d > time.Second {
		t.Errorf("Watch took %v to stop during its backoff", d)
	}
	for i, x := range a {
		var de *DTAError
		if x.err == nil || x.res != nil || !errors.As(x.err, &de) || de.DTA != "dta-3" {
			t.Errorf("attempt %d: %v", i+1, x.err)
		}
	}
	// Backoff: the first retry after 0.5–1 s, the second after 1–2 s.
	if g := a[1].at.Sub(a[0].at); g < 500*time.Millisecond {
		t.Errorf("first retry after %v", g)
	}
	if g := a[2].at.Sub(a[1].at); g < time.Second {
		t.Errorf("second retry after %v", g)
	}
	fxSameSnapshot(t, before, fxSnapshot(t, out))
	if set, err := keydir.Load(out); err != nil || set.Generation != good.Generation {
		t.Errorf("working set after failed renewals: %v", err)
	}
}

func TestWatchStopsOnCancel(t *testing.T) {
	t.Parallel()
	fx := newFixture(t, fxOptions{})
	out := filepath.Join(t.TempDir(), "keys")
	opt := fx.fetchOpts(fxClientID, fxTokWeb, out, clientKinds...)

	// Cancelled while waiting for the next renewal (hours away).
	w := newWatchLog()
	stop := runWatch(t, opt, w)
	a := w.waitFor(t, 10*time.Second, "a fetch", func(a []watchAttempt) bool { return len(a) >= 1 })
	if a[0].err != nil {
		t.Fatal(a[0].err)
	}
	if d := stop(); d > time.Second {
		t.Errorf("Watch took %v to stop", d)
	}
	if n := len(w.attempts); n != 1 {
		t.Errorf("%d attempts", n)
	}

	// Cancelled before it starts: one failed attempt, then it returns.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w2 := newWatchLog()
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, opt, zerolog.Nop(), w2.onFetch) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch with a cancelled context did not return")
	}
	if len(w2.attempts) != 1 || w2.attempts[0].err == nil || !errors.Is(w2.attempts[0].err, context.Canceled) {
		t.Errorf("attempts %+v", w2.attempts)
	}
	if set, err := keydir.Load(out); err != nil || set.Generation != a[0].res.Generation {
		t.Errorf("set after a cancelled watch: %v", err)
	}
}
