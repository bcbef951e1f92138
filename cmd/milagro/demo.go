package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/proxy"
	"github.com/milagro-sc/milagro/sidecar"
)

const (
	demoDomain   = "demo.example"
	demoClientID = "spiffe://demo.example/ns/web/sa/frontend"
	// demoControlID is a client that is not revoked, for comparison.
	demoControlID = "spiffe://demo.example/ns/web/sa/checkout"
	demoServerID  = "spiffe://demo.example/ns/pay/sa/api"
	demoEpochLen  = 3 // seconds, so that revocation shows within the demo
)

// runDemo shows the whole system in one process, on loopback: three D-TAs,
// key fetch, an HTTP backend behind both sidecars, traffic, key rotation under
// load and revocation. It exits non-zero if any step fails.
func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	keep := fs.Bool("keep", false, "keep the temporary folder (keys, logs, audit logs) for inspection")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "milagro-demo-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(root)
	}
	d := &demo{root: root, out: stdout}
	fmt.Fprintf(stdout, "milagro demo: three trust authorities, two sidecars and a backend, all in this process on 127.0.0.1\n(files in %s, %s)\n\n", root, map[bool]string{true: "kept", false: "removed at the end"}[*keep])
	err = d.run()
	if serr := d.stop(); err == nil && serr != nil {
		err = fmt.Errorf("shutdown: %w", serr)
	}
	if err != nil {
		fmt.Fprintf(stdout, "\nFAILED: %v\n(sidecar logs: %s)\n", err, filepath.Join(root, "sidecars.log"))
		return errors.New("demo failed")
	}
	fmt.Fprintf(stdout, "\nAll steps passed; everything was shut down cleanly.\n")
	return nil
}

type demo struct {
	root                        string
	out                         io.Writer
	step                        int
	dtas                        []*demoDTA
	domain                      *keydir.Domain
	stops                       []func()
	logFile                     *os.File
	client                      *sidecar.Client
	server                      *sidecar.Server
	errs                        chan error
	clientTk, serverTk, adminTk map[string]string // by D-TA
}

type demoDTA struct {
	id, url string
	srv     *http.Server
}

func (d *demo) say(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "%2d. "+format+"\n", append([]any{d.step}, args...)...)
}

func (d *demo) detail(format string, args ...any) {
	fmt.Fprintf(d.out, "    "+format+"\n", args...)
}

// stop stops everything and returns what the sidecars' Run returned (a
// drain that timed out, a failure) joined.
func (d *demo) stop() error {
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i]()
	}
	if d.logFile != nil {
		d.logFile.Close()
	}
	var errs []error
	for d.errs != nil {
		select {
		case err := <-d.errs:
			errs = append(errs, err)
		default:
			d.errs = nil
		}
	}
	return errors.Join(errs...)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (d *demo) run() error {
	var err error
	if d.logFile, err = os.OpenFile(filepath.Join(d.root, "sidecars.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return err
	}
	log := zerolog.New(d.logFile).With().Timestamp().Logger()
	// Each D-TA knows its own tokens only: a token one D-TA sees is useless
	// at the others, so no D-TA can collect a workload's whole key.
	d.clientTk, d.serverTk, d.adminTk = map[string]string{}, map[string]string{}, map[string]string{}
	d.domain = &keydir.Domain{Name: demoDomain, EpochLen: demoEpochLen}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("dta-%d", i)
		d.clientTk[id], d.serverTk[id], d.adminTk[id] = randomToken(), randomToken(), randomToken()
		policy := fmt.Sprintf(`requesters:
  - name: web
    token_sha256: %q
    identities: ["spiffe://demo.example/ns/web/**"]
    kinds: [client, permit]
  - name: pay
    token_sha256: %q
    identities: ["spiffe://demo.example/ns/pay/**"]
    kinds: [server, domain]
    server: true
  - name: ops
    token_sha256: %q
    admin: true
`, dta.HashToken(d.clientTk[id]), dta.HashToken(d.serverTk[id]), dta.HashToken(d.adminTk[id]))
		pol, err := dta.ParsePolicy([]byte(policy))
		if err != nil {
			return fmt.Errorf("policy: %w", err)
		}
		t, err := d.startDTA(id, pol, log)
		if err != nil {
			return err
		}
		d.dtas = append(d.dtas, t)
	}
	var names []string
	for _, t := range d.dtas {
		names = append(names, t.id+" "+t.url)
	}
	d.say("Started three D-TAs, each holding its own master share s_i (no s = Σs_i exists anywhere)\n    and its own requester tokens:")
	d.detail("%s", strings.Join(names, ", "))

	// 2. Fetch key sets.
	clientDir, serverDir := filepath.Join(d.root, "client-keys"), filepath.Join(d.root, "server-keys")
	start := time.Now()
	cres, err := d.fetch(demoClientID, d.clientTk, clientDir, keydir.KindClient, keydir.KindPermit)
	if err != nil {
		return err
	}
	sres, err := d.fetch(demoServerID, d.serverTk, serverDir, keydir.KindServer, keydir.KindDomain)
	if err != nil {
		return err
	}
	d.say("Fetched signed key shares from all three D-TAs and summed them (%s):", time.Since(start).Round(time.Millisecond))
	d.detail("client %s: client key, time permits for epochs %v (epoch = %d s)", demoClientID, cres.Set.Epochs(), demoEpochLen)
	d.detail("server %s: server identity key, domain server key", demoServerID)
	rep, err := dta.Check(context.Background(), cres.Set, sres.Set, "", time.Now())
	if err != nil {
		return err
	}
	d.detail("keys check: in-process handshake between the two sets succeeds (%s)", rep.Handshake.Round(time.Millisecond))

	// 3. Backend and sidecars.
	backend, err := d.startBackend()
	if err != nil {
		return err
	}
	if err := d.startSidecars(log, serverDir, clientDir, backend); err != nil {
		return err
	}
	d.say("Sidecars up: app → client %s ══ mpinkex ▸ DTLS-PSK ▸ yamux ══▶ server %s → HTTP backend %s",
		d.client.Addr(), d.server.Addr(), backend)
	d.detail("the server requires a valid time permit and accepts spiffe://demo.example/ns/web/**")

	// 4. Traffic.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	url := "http://" + d.client.Addr() + "/hello"
	t0 := time.Now()
	body, err := get(hc, url, "spiffe://demo.example/ns/admin/sa/forged")
	if err != nil {
		return fmt.Errorf("first request: %w", err)
	}
	cold := time.Since(t0)
	t1 := time.Now()
	if _, err := get(hc, url, ""); err != nil {
		return fmt.Errorf("second request: %w", err)
	}
	warm := time.Since(t1)
	d.say("First request through the sidecars (cold: TCP, mpinkex and DTLS handshakes): %s", cold.Round(10*time.Microsecond))
	d.detail("the backend answered: %q", strings.TrimSpace(body))
	d.detail("(the app sent a forged X-Milagro-Client-Id; the server sidecar replaced it with the authenticated identity)")
	d.detail("the client checked that the server proved %s before sending its proof", demoServerID)
	d.detail("second request (warm session, a new stream): %s", warm.Round(10*time.Microsecond))

	// 5. Key rotation under load.
	oldS, oldC := d.server.Keystore().Current().Generation, d.client.Keystore().Current().Generation
	var ok, failed atomic.Int64
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				if _, err := get(hc, url, ""); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	if _, err := d.fetch(demoServerID, d.serverTk, serverDir, keydir.KindServer, keydir.KindDomain); err != nil {
		stopLoad()
		wg.Wait()
		return err
	}
	if _, err := d.fetch(demoClientID, d.clientTk, clientDir, keydir.KindClient, keydir.KindPermit); err != nil {
		stopLoad()
		wg.Wait()
		return err
	}
	reloaded := waitFor(5*time.Second, func() bool {
		return d.server.Keystore().Current().Generation != oldS && d.client.Keystore().Current().Generation != oldC
	})
	time.Sleep(300 * time.Millisecond)
	stopLoad()
	wg.Wait()
	if !reloaded {
		return errors.New("key rotation: the sidecars did not pick up the new key generations within 5 s")
	}
	d.say("Rotated keys: fetched new generations for both sidecars while 4 workers sent requests")
	d.detail("both sidecars reloaded (fsnotify on ..data); %d requests, %d failed", ok.Load()+failed.Load(), failed.Load())
	if failed.Load() > 0 || ok.Load() == 0 {
		return fmt.Errorf("key rotation: %d of %d requests failed", failed.Load(), ok.Load()+failed.Load())
	}

	// 6. Revocation.
	for _, t := range d.dtas {
		if err := revoke(t.url, d.adminTk[t.id], demoClientID); err != nil {
			return fmt.Errorf("revoke at %s: %w", t.id, err)
		}
	}
	d.say("Revoked %s at all three D-TAs", demoClientID)
	_, err = d.fetch(demoClientID, d.clientTk, filepath.Join(d.root, "refused"), keydir.KindClient, keydir.KindPermit)
	if err == nil {
		return errors.New("revocation: the D-TAs still issue permits")
	}
	d.detail("a new fetch is refused: %s", firstLine(err.Error()))
	k := d.client.Keystore().Current()
	expiry := k.PermitExpiry()
	d.detail("its last time permit (epoch %d) ends at %s; waiting %s…", k.Permits[len(k.Permits)-1].Epoch,
		expiry.Format("15:04:05"), max(0, time.Until(expiry)).Round(100*time.Millisecond))
	time.Sleep(max(0, time.Until(expiry)) + 200*time.Millisecond)
	// Not just the clock: in the same epoch a client that is not revoked
	// gets its permits and is let in, the revoked one is not.
	controlDir := filepath.Join(d.root, "control-client")
	if _, err := d.fetch(demoControlID, d.clientTk, controlDir, keydir.KindClient, keydir.KindPermit); err != nil {
		return fmt.Errorf("revocation: a client that is not revoked: %w", err)
	}
	ck, err := sidecar.OpenKeystore(sidecar.KeystoreOptions{Dir: controlDir, Role: sidecar.RoleClient, Log: zerolog.Nop()})
	if err != nil {
		return err
	}
	if err := handshakeOnce(d.server.Addr(), ck.Current()); err != nil {
		return fmt.Errorf("revocation: a client that is not revoked was refused: %w", err)
	}
	d.detail("%s, not revoked, fetches permits for this epoch and its handshake is accepted", demoControlID)
	err = handshakeOnce(d.server.Addr(), k)
	var ae *mpinkex.AlertError
	if !errors.As(err, &ae) || ae.Code != mpinkex.AlertHandshakeFailure {
		return fmt.Errorf("revocation: a new handshake with the revoked client's keys was not refused (%v)", err)
	}
	d.detail("a new handshake with the revoked client's keys is refused: %v", err)
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func waitFor(d time.Duration, f func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if f() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f()
}

func (d *demo) startDTA(id string, pol *dta.Policy, log zerolog.Logger) (*demoDTA, error) {
	dir := filepath.Join(d.root, id)
	info, err := dta.Init(dta.InitOptions{Dir: dir, ID: id, Domain: demoDomain, EpochLen: demoEpochLen, Plaintext: true})
	if err != nil {
		return nil, err
	}
	auth, err := dta.Open(dir, dta.OpenOptions{})
	if err != nil {
		return nil, err
	}
	audit, err := dta.OpenAudit(filepath.Join(dir, "audit.log"))
	if err != nil {
		return nil, err
	}
	revs, err := dta.OpenRevocations(filepath.Join(dir, "revocations.json"))
	if err != nil {
		return nil, err
	}
	svc, err := dta.NewService(dta.ServiceConfig{Authority: auth, Policy: pol, Audit: audit, Revocations: revs, Log: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := dta.NewHTTPServer(svc)
	go func() { _ = srv.Serve(ln) }()
	t := &demoDTA{id: id, url: "http://" + ln.Addr().String(), srv: srv}
	d.domain.DTAs = append(d.domain.DTAs, keydir.DTA{ID: id, URL: t.url, SigningKey: info.SigningKey})
	d.stops = append(d.stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		audit.Close()
		auth.Close()
	})
	return t, nil
}

func (d *demo) fetch(identity string, tokens map[string]string, out string, kinds ...keydir.Kind) (*dta.FetchResult, error) {
	return dta.Fetch(context.Background(), dta.FetchOptions{Domain: d.domain, Identity: identity, Tokens: tokens, Kinds: kinds, Out: out})
}

func (d *demo) startBackend() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", r.Header.Get(proxy.IdentityHeader))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	d.stops = append(d.stops, func() { srv.Close() })
	return ln.Addr().String(), nil
}

func (d *demo) startSidecars(log zerolog.Logger, serverDir, clientDir, backend string) error {
	scfg := sidecar.DefaultServerConfig()
	scfg.Listen, scfg.Target, scfg.Keys, scfg.HTTP = "127.0.0.1:0", backend, serverDir, true
	scfg.AllowIDs, scfg.RequirePermit, scfg.Grace = []string{"spiffe://demo.example/ns/web/**"}, true, 0
	scfg.ShutdownTimeout = 2 * time.Second
	srv, err := sidecar.NewServer(scfg, log.With().Str("sidecar", "server").Logger())
	if err != nil {
		return err
	}
	d.server = srv
	d.errs = make(chan error, 2)
	sctx, stopS := context.WithCancel(context.Background())
	sdone := make(chan struct{})
	go func() { defer close(sdone); d.errs <- srv.Run(sctx, nil) }()
	d.stops = append(d.stops, func() { stopS(); <-sdone })
	if !waitFor(5*time.Second, func() bool { return srv.Addr() != "" }) {
		return errors.New("server sidecar did not start")
	}
	ccfg := sidecar.DefaultClientConfig()
	ccfg.Listen, ccfg.Target, ccfg.Keys, ccfg.VerifyID, ccfg.Grace = "127.0.0.1:0", srv.Addr(), clientDir, demoServerID, 0
	ccfg.ShutdownTimeout = 2 * time.Second
	cl, err := sidecar.NewClient(ccfg, log.With().Str("sidecar", "client").Logger())
	if err != nil {
		return err
	}
	d.client = cl
	cctx, stopC := context.WithCancel(context.Background())
	cdone := make(chan struct{})
	go func() { defer close(cdone); d.errs <- cl.Run(cctx, nil) }()
	d.stops = append(d.stops, func() { stopC(); <-cdone })
	if !waitFor(5*time.Second, func() bool { return cl.Addr() != "" }) {
		return errors.New("client sidecar did not start")
	}
	return nil
}

func get(c *http.Client, url, forged string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if forged != "" {
		req.Header.Set(proxy.IdentityHeader, forged)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

func revoke(base, token, identity string) error {
	body, _ := json.Marshal(map[string]string{"identity": identity})
	req, err := http.NewRequest(http.MethodPost, base+"/v1/revoke", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return nil
}

// handshakeOnce runs one mpinkex handshake against addr with keys, as a
// fresh client sidecar would.
func handshakeOnce(addr string, k *sidecar.Keys) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: k.Client, Permits: k.Permits, ServerID: demoServerID, EpochLen: k.EpochLen, Grace: -1})
	if err == nil {
		res.Zeroize()
	}
	return err
}
