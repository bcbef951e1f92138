package integration

// Lifecycle of keys and sidecars over time, with real processes only:
// `milagro keys fetch --watch` keeping the key directories of running
// sidecars fresh across epoch boundaries under continuous load, a D-TA down
// while permits are due for renewal, revocation taking effect at the end of
// the last permit's epoch, and a flapping backend.
//
// The D-TAs here give every requester a different bearer token per D-TA
// (the recommended setup): the fetchers get --token-file as a folder with
// one token file per D-TA id.

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// lcCluster is a domain of D-TAs whose policies know a different token per
// D-TA for the workload and server requesters (the admin token is shared:
// only the test uses it).
type lcCluster struct {
	*cluster
	policies  map[string]string // D-TA id → its policy file
	tokenDirs map[string]string // requester → folder with one token file per D-TA id
}

func lcNewCluster(t *testing.T, n, epochLen int) *lcCluster {
	t.Helper()
	c := &cluster{t: t, base: t.TempDir(), epochLen: epochLen, tokens: map[string]string{}, tokenFiles: map[string]string{}}
	lc := &lcCluster{cluster: c, policies: map[string]string{}, tokenDirs: map[string]string{}}
	c.tokens["admin"] = randomToken(t)
	for _, r := range []string{"workload", "server"} {
		dir := filepath.Join(c.base, "tokens-"+r)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		lc.tokenDirs[r] = dir
	}
	for i := range n {
		id := fmt.Sprintf("dta-%d", i+1)
		d := c.initDTA(id, filepath.Join(c.base, id), nil)
		tok := map[string]string{}
		for _, r := range []string{"workload", "server"} {
			tok[r] = randomToken(t)
			writeFile(t, filepath.Join(lc.tokenDirs[r], id), []byte(tok[r]+"\n"), 0o600)
		}
		policy := testPolicy(tok["workload"], tok["server"], c.tokens["admin"])
		lc.policies[id] = filepath.Join(c.base, id+"-policy.yaml")
		writeFile(t, lc.policies[id], []byte(policy), 0o600)
		c.dtas = append(c.dtas, d)
	}
	for _, d := range c.dtas {
		lc.start(d, "127.0.0.1:0")
	}
	for _, d := range c.dtas {
		c.waitServing(d)
	}
	c.domainFile = filepath.Join(c.base, "domain.json")
	c.buildDomain(c.domainFile, c.dtas...)
	return lc
}

// start runs `milagro dta serve` for d with its own policy.
func (lc *lcCluster) start(d *dtaNode, listen string) {
	lc.t.Helper()
	d.proc = startProc(lc.t, "dta serve "+d.id, d.env, milagroBin,
		"dta", "serve", "--dir", d.dir, "--listen", listen, "--insecure-http", "--policy", lc.policies[d.id])
}

// watch starts `milagro keys fetch --watch` (JSON logs on stderr). The
// returned sidecar value is only for its log helpers.
func (lc *lcCluster) watch(name, identity, requester, kinds, out string) *scSidecar {
	lc.t.Helper()
	p := startProc(lc.t, name, nil, milagroBin, "keys", "fetch", "--watch", "--domain", lc.domainFile,
		"--identity", identity, "--token-file", lc.tokenDirs[requester], "--out", out, "--kinds", kinds, "--log-format", "json")
	return &scSidecar{proc: p, role: "watcher"}
}

// revoke revokes identity at every D-TA.
func (lc *lcCluster) revoke(identity string) {
	lc.t.Helper()
	body, _ := json.Marshal(map[string]string{"identity": identity})
	for _, d := range lc.dtas {
		status, _, b := post(lc.t, d.url()+"/v1/revoke", lc.tokens["admin"], "application/json", body)
		var ans struct {
			Revoked, Changed bool
		}
		if status != http.StatusOK || json.Unmarshal(b, &ans) != nil || !ans.Revoked || !ans.Changed {
			lc.t.Fatalf("revoke %s at %s: HTTP %d %s", identity, d.id, status, b)
		}
	}
}

const (
	lcFetchFailed = "key fetch failed; keeping the current set"
	lcKeysWritten = "keys written"
	lcSharedToken = "the same bearer token goes to several D-TAs"
)

// --- epochs ---

func lcEpoch(t time.Time, epochLen int) uint64 { return uint64(t.Unix() / int64(epochLen)) }

func lcEpochStart(e uint64, epochLen int) time.Time {
	return time.Unix(int64(e)*int64(epochLen), 0)
}

func lcStamp(t time.Time) string { return t.Format("15:04:05.000") }

// lcSessionsByEpoch counts the server's "session open" lines for client by
// the epoch of their timestamp (whole seconds, so exact for whole-second
// epochs, give or take the instant between the epoch check and the log).
func lcSessionsByEpoch(t *testing.T, srv *scSidecar, client string, epochLen int) map[uint64]int {
	t.Helper()
	n := map[uint64]int{}
	for _, m := range srv.logLines() {
		if m["message"] != "session open" || m["client"] != client {
			continue
		}
		s, _ := m["time"].(string)
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatalf("%s: log time %q: %v", srv.name, s, err)
		}
		n[lcEpoch(ts, epochLen)]++
	}
	return n
}

// lcWaitFor polls cond until it holds, failing the test if timeout passes.
func lcWaitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !eventually(timeout, cond) {
		t.Fatalf("%s: not within %v", what, timeout)
	}
}

// --- traffic ---

// lcLoad is continuous traffic: workers that each open a new connection
// through addr, echo 1–16 KiB, check it, and pause between minPause and
// maxPause.
type lcLoad struct {
	name  string
	stop  chan struct{}
	wg    sync.WaitGroup
	halt  func() // stops the workers and waits for them (once)
	ok    atomic.Int64
	mu    sync.Mutex
	fails []string
}

func lcStartLoad(t *testing.T, name, addr string, workers int, minPause, maxPause time.Duration) *lcLoad {
	l := &lcLoad{name: name, stop: make(chan struct{})}
	l.halt = sync.OnceFunc(func() { close(l.stop); l.wg.Wait() })
	t.Cleanup(l.halt) // also when the test fails before finish
	for w := range workers {
		l.wg.Go(func() {
			for i := uint64(0); ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				size := int64(1<<10 + rand.IntN(15<<10))
				if _, err := scExchange(addr, uint64(w)<<40|i, size, 10*time.Second); err != nil {
					l.mu.Lock()
					l.fails = append(l.fails, fmt.Sprintf("%s worker %d request %d (started %s, failed %s): %v",
						name, w, i, lcStamp(start), lcStamp(time.Now()), err))
					l.mu.Unlock()
				} else {
					l.ok.Add(1)
				}
				select {
				case <-l.stop:
					return
				case <-time.After(minPause + rand.N(maxPause-minPause)):
				}
			}
		})
	}
	return l
}

func (l *lcLoad) failed() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.fails)
}

// finish stops the workers and reports every failure as a test error.
func (l *lcLoad) finish(t *testing.T) int64 {
	t.Helper()
	l.halt()
	for i, f := range l.fails {
		if i == 20 {
			t.Errorf("... and %d more failures", len(l.fails)-20)
			break
		}
		t.Error(f)
	}
	return l.ok.Load()
}

// lcConversation is one long-lived application connection that echoes a
// 1 KiB chunk every 250 ms until stopped.
type lcConversation struct {
	stop   chan struct{}
	done   chan struct{}
	rounds atomic.Int64
	err    error
}

func lcStartConversation(t *testing.T, addr string) *lcConversation {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cv := &lcConversation{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(cv.done)
		defer c.Close()
		out, in := make([]byte, 1<<10), make([]byte, 1<<10)
		for i := 0; ; i++ {
			select {
			case <-cv.stop:
				c.(*net.TCPConn).CloseWrite()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
					cv.err = fmt.Errorf("after half-close: %d bytes, %v; want a clean EOF", n, err)
				}
				return
			case <-time.After(250 * time.Millisecond):
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			for j := range out {
				out[j] = byte(i + j)
			}
			if _, err := c.Write(out); err != nil {
				cv.err = fmt.Errorf("round %d at %s: write: %w", i, lcStamp(time.Now()), err)
				return
			}
			if _, err := io.ReadFull(c, in); err != nil || string(in) != string(out) {
				cv.err = fmt.Errorf("round %d at %s: echo: %v (equal %v)", i, lcStamp(time.Now()), err, string(in) == string(out))
				return
			}
			cv.rounds.Add(1)
		}
	}()
	return cv
}

func (cv *lcConversation) finish() (int64, error) {
	close(cv.stop)
	<-cv.done
	return cv.rounds.Load(), cv.err
}

// --- status ---

// lcStatusTrail samples a client's /_status: the generations and permit
// epochs it served.
type lcStatusTrail struct {
	gens   []string
	epochs [][]uint64
}

func (tr *lcStatusTrail) sample(t *testing.T, sc *scSidecar) scStatusDoc {
	t.Helper()
	st := sc.statusDoc(t)
	if st.Keys.LastError != "" {
		t.Errorf("%s: last key reload failed: %s", sc.name, st.Keys.LastError)
	}
	if !st.Ready {
		t.Errorf("%s: /_status says not ready at %s: %+v", sc.name, lcStamp(time.Now()), st.Keys)
	}
	if n := len(tr.gens); n == 0 || tr.gens[n-1] != st.Keys.Generation {
		tr.gens = append(tr.gens, st.Keys.Generation)
		tr.epochs = append(tr.epochs, st.Keys.PermitEpochs)
	}
	return st
}

// lcHealthy requires /healthz 200 of every sidecar and that none exited.
func lcHealthy(t *testing.T, scs ...*scSidecar) {
	t.Helper()
	for _, sc := range scs {
		if sc.exited() {
			t.Fatalf("%s exited (%v)\nstderr:\n%s", sc.name, sc.state, sc.stderr.String())
		}
		if code, body := sc.get(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%s /healthz: %d %q", sc.name, code, body)
		}
	}
}

// lcRetried counts the handshakes that the client sidecars retried because
// an epoch boundary passed during them (the server, with no epoch grace,
// refused the permit of the epoch that had just ended).
func lcRetried(scs ...*scSidecar) int {
	n := 0
	for _, sc := range scs {
		n += sc.logMatches("handshake refused across an epoch boundary; retrying")
	}
	return n
}

// lcNoFailedHandshakes requires that the server refused no handshake but
// the expected ones and those the clients retried at an epoch boundary.
func lcNoFailedHandshakes(t *testing.T, srv *scSidecar, expected int, clients ...*scSidecar) {
	t.Helper()
	// Both counts come from logs that reach the test with a lag (see
	// logCount): wait up to 5 s for them to agree.
	var n, r int
	eventually(5*time.Second, func() bool {
		n, r = srv.logMatches("handshake failed"), lcRetried(clients...)
		return n == expected+r
	})
	if n != expected+r {
		t.Errorf("server: %d failed handshakes, want %d (+ %d retried by the clients across an epoch boundary)", n, expected, r)
	}
	if r > 0 {
		t.Logf("%d handshakes straddled an epoch boundary and were retried", r)
	}
}

// lcNoReloadErrors requires that no key reload of the sidecars failed.
func lcNoReloadErrors(t *testing.T, scs ...*scSidecar) {
	t.Helper()
	for _, sc := range scs {
		if v := sc.metric(t, "milagro_key_reloads_total", `result="error"`); v != 0 {
			t.Errorf("%s: %v failed key reloads", sc.name, v)
		}
	}
}

// lcEnv starts watchers for a client and a server identity, waits for
// their first sets, and starts the server sidecar that requires a permit
// of the current epoch (no grace) in front of an echo backend.
type lcEnv struct {
	lc                   *lcCluster
	e                    *scEnv
	clientDir, serverDir string
	cw, sw               *scSidecar // watchers
	srv                  *scSidecar
}

func lcNewEnv(t *testing.T, epochLen int) *lcEnv {
	t.Helper()
	lc := lcNewCluster(t, 3, epochLen)
	env := &lcEnv{lc: lc, clientDir: filepath.Join(lc.base, "keys-client"), serverDir: filepath.Join(lc.base, "keys-server")}
	env.cw = lc.watch("keys fetch --watch (client)", clientID, "workload", "client,permit", env.clientDir)
	env.sw = lc.watch("keys fetch --watch (server)", serverID, "server", "server,domain", env.serverDir)
	for _, w := range []*scSidecar{env.cw, env.sw} {
		w.waitLog(t, 20*time.Second, 1, lcKeysWritten)
		if n := w.logNone(quiet, lcSharedToken); n != 0 {
			t.Errorf("%s warns about a shared token with one token per D-TA", w.name)
		}
	}
	env.e = &scEnv{c: lc.cluster, clientDir: env.clientDir, serverDir: env.serverDir, echo: scStartBackend(t, scEcho)}
	env.srv = env.e.server(t, "server (--require-permit --epoch-grace 0s)", env.e.echo.addr, "--require-permit", "--epoch-grace", "0s")
	return env
}

// shortClient starts a client sidecar whose sessions close after 60 ms
// without a stream, so that continuous traffic with pauses makes new
// handshakes all along.
func (env *lcEnv) shortClient(t *testing.T, name, keys string) *scSidecar {
	t.Helper()
	return env.e.client(t, name, env.srv.listen, "--keys", keys, "--session-idle-timeout", "60ms")
}

// traffic starts workers through a short-session client (new
// connections, pauses up to 200 ms: the session idles out now and then),
// and a prober through a second one that makes a new connection every
// 150–250 ms, each on a new session: new handshakes several times a second,
// whatever the workers do.
func (env *lcEnv) traffic(t *testing.T, name, keys string, workers int) (cli, probe *scSidecar, load, prober *lcLoad) {
	t.Helper()
	cli = env.shortClient(t, "client "+name, keys)
	probe = env.shortClient(t, "client "+name+" (prober)", keys)
	mustExchange(t, cli.listen, 1, 10<<10)
	mustExchange(t, probe.listen, 2, 10<<10)
	load = lcStartLoad(t, name, cli.listen, workers, 0, 200*time.Millisecond)
	prober = lcStartLoad(t, name+" (prober)", probe.listen, 1, 150*time.Millisecond, 250*time.Millisecond)
	return cli, probe, load, prober
}

func (env *lcEnv) stop(t *testing.T, scs ...*scSidecar) {
	t.Helper()
	for _, sc := range scs {
		sc.stop()
	}
	for _, d := range env.lc.dtas {
		d.proc.stop()
	}
}

// Key rotation by the fetcher under continuous load, and the positive side
// of revocation across epoch boundaries: with --require-permit and no
// epoch grace at the server, every handshake must present the current
// epoch's permit, so the fetcher must have renewed the client's permits
// before each boundary passes. Four workers and a prober make new
// connections across three epoch boundaries; short-lived sessions force new
// handshakes all along. Not one request may fail.
func TestLifecycleWatchUnderLoad(t *testing.T) {
	t.Parallel()
	const epochLen = 3
	env := lcNewEnv(t, epochLen)
	srv := env.srv
	// A client sidecar with the default idle timeout: its one session,
	// made with the first permit, carries a conversation across every
	// boundary, and later connections too.
	long := env.e.client(t, "client (long-lived session)", srv.listen)
	serverGen := scKeyGen(t, env.serverDir)

	conv := lcStartConversation(t, long.listen)
	cli, probe, load, prober := env.traffic(t, "(short sessions)", env.clientDir, 4)
	start := time.Now()
	e0 := lcEpoch(start, epochLen)
	end := lcEpochStart(e0+3, epochLen).Add(1500 * time.Millisecond)
	t.Logf("load from %s (epoch %d) to %s (epoch %d)", lcStamp(start), e0, lcStamp(end), e0+3)
	var trail lcStatusTrail
	for time.Now().Before(end) {
		trail.sample(t, cli)
		time.Sleep(150 * time.Millisecond)
	}
	trail.sample(t, cli)
	ok := load.finish(t) + prober.finish(t)
	rounds, convErr := conv.finish()
	took := time.Since(start)

	sessions := lcSessionsByEpoch(t, srv, clientID, epochLen)
	t.Logf("%d requests in %v, %d failed; client generations %v with permit epochs %v; server sessions by epoch %v",
		ok, took.Round(time.Millisecond), load.failed()+prober.failed(), trail.gens, trail.epochs, sessions)
	if ok < 100 {
		t.Errorf("only %d requests succeeded", ok)
	}
	if convErr != nil || rounds < int64(took/(400*time.Millisecond)) {
		t.Errorf("long-lived connection: %d rounds, %v", rounds, convErr)
	}

	// The client served a new generation after each boundary, and its
	// permits moved on with the epochs.
	var firsts []uint64
	for _, ep := range trail.epochs {
		if len(ep) != 2 || ep[1] != ep[0]+1 {
			t.Errorf("client permit epochs %v, want the current and the next", ep)
			continue
		}
		firsts = append(firsts, ep[0])
	}
	for e := e0 + 1; e <= e0+3; e++ {
		if !slices.Contains(firsts, e) {
			t.Errorf("the client never served permits [%d %d]: it served %v", e, e+1, trail.epochs)
		}
	}
	if len(trail.gens) < 4 {
		t.Errorf("client generations %v: want at least three renewals", trail.gens)
	}
	if n := env.cw.logCount(4, lcKeysWritten); n < 4 {
		t.Errorf("the client's fetcher wrote %d sets, want at least 4", n)
	}
	if n := env.cw.logNone(quiet, lcFetchFailed); n != 0 {
		t.Errorf("the client's fetcher failed %d times", n)
	}
	if st := cli.statusDoc(t); st.Keys.Generation != scKeyGen(t, env.clientDir) || st.Keys.LastSource != "fsnotify" {
		t.Errorf("client serves generation %s (last reload by %q), the directory holds %s", st.Keys.Generation, st.Keys.LastSource, scKeyGen(t, env.clientDir))
	}
	// New handshakes in every epoch; with no grace at the server each one
	// used the permit of its epoch.
	for e := e0 + 1; e <= e0+3; e++ {
		if sessions[e] == 0 {
			t.Errorf("no new session in epoch %d: sessions by epoch %v", e, sessions)
		}
	}
	lcNoFailedHandshakes(t, srv, 0, cli, probe, long)

	// The server's set is valid for 30 epochs: the fetcher renews it at 90%
	// of that, not during this test; the server keeps it.
	st := srv.statusDoc(t)
	if st.Keys.Generation != serverGen || scKeyGen(t, env.serverDir) != serverGen || st.Keys.LastError != "" {
		t.Errorf("server generation %s (error %q), started with %s", st.Keys.Generation, st.Keys.LastError, serverGen)
	}
	if v := env.sw.waitLogJSON(t, time.Second, lcKeysWritten)["renew_in"]; v == nil {
		t.Errorf("the server's fetcher logged no renew_in")
	} else {
		t.Logf("server set renews in %v ms", v)
	}

	// Sessions are not torn down by new keys or new epochs: the long-lived
	// client still rides the session its first permit opened.
	mustExchange(t, long.listen, 2, 10<<10)
	if v := long.metric(t, "milagro_handshakes_total", `result="ok"`); v != 1 {
		t.Errorf("long-lived client made %v handshakes, want 1", v)
	}
	lcHealthy(t, srv, cli, probe, long)
	lcNoReloadErrors(t, srv, cli, probe, long)
	env.cw.stop()
	env.sw.stop()
	env.stop(t, cli, probe, long, srv)
}

// A D-TA is down when the permits are due: the fetcher logs the failures
// and retries with backoff, the sidecars keep serving on the permits they
// hold (the current and the next epoch's), and once the D-TA is back on the
// same port the fetcher writes a new set before those run out. Traffic never
// fails.
func TestLifecycleDTAOutage(t *testing.T) {
	t.Parallel()
	// 5 s epochs: after the renewal fails just past the boundary, the
	// fetcher retries after 0.5–1 s and 1–2 s; the D-TA is back after the
	// second failure, so the third attempt (at most 3.5 s past the boundary)
	// succeeds within the epoch.
	const epochLen = 5
	env := lcNewEnv(t, epochLen)
	srv := env.srv
	cli, probe, load, prober := env.traffic(t, "(short sessions)", env.clientDir, 4)

	// A boundary ahead, the client holding this epoch's and the next one's
	// permits, with at least 2 s to go.
	var e uint64
	lcWaitFor(t, 3*epochLen*time.Second, "the client serving permits of the current epoch, 2 s before its end", func() bool {
		e = lcEpoch(time.Now(), epochLen)
		ep := cli.statusDoc(t).Keys.PermitEpochs
		return len(ep) == 2 && ep[0] == e && time.Until(lcEpochStart(e+1, epochLen)) > 2*time.Second
	})
	boundary := lcEpochStart(e+1, epochLen)
	time.Sleep(time.Until(boundary.Add(-time.Second)))
	victim := env.lc.dtas[1]
	port := victim.addr[strings.LastIndex(victim.addr, ":")+1:]
	victim.proc.stop()
	working := readKeyDir(t, env.clientDir)
	time.Sleep(time.Until(boundary.Add(-50 * time.Millisecond)))
	// One read, not logNone: failures are due 50 ms from now.
	if n := env.cw.logMatches(lcFetchFailed); n != 0 {
		t.Fatalf("the fetcher failed %d times before the permits were due", n)
	}
	t.Logf("dta-2 stopped before the boundary at %s (epoch %d → %d)", lcStamp(boundary), e, e+1)

	// Two failed renewals, both naming the stopped D-TA alone.
	env.cw.waitLog(t, epochLen*time.Second, 2, lcFetchFailed, "D-TA dta-2: ", "connection refused", "retry_in")
	failedAt := time.Now()
	for _, other := range []string{"dta-1", "dta-3"} {
		if n := env.cw.logNone(quiet, lcFetchFailed, "D-TA "+other); n != 0 {
			t.Errorf("a failed renewal blames %s", other)
		}
	}
	sameKeyDir(t, env.clientDir, working)
	if st := cli.statusDoc(t); !slices.Equal(st.Keys.PermitEpochs, []uint64{e, e + 1}) || !st.Ready {
		t.Errorf("during the outage the client serves permits %v (ready %v), want [%d %d]", st.Keys.PermitEpochs, st.Ready, e, e+1)
	}
	if n := load.failed() + prober.failed(); n != 0 {
		t.Errorf("%d requests failed during the outage", n)
	}

	// Back on the same port; the fetcher's next attempt succeeds.
	lcServeAgain(t, env.lc, victim, port)
	t.Logf("dta-2 back %v after the second failure", time.Since(failedAt).Round(time.Millisecond))
	deadline := lcEpochStart(e+2, epochLen)
	for lcKeyGen(env.clientDir) == working.link {
		if time.Now().After(deadline) {
			t.Fatalf("the fetcher did not write a new set before the permits ran out at %s\n%s", lcStamp(deadline), env.cw.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	recovered := time.Now()
	t.Logf("new set %s written at %s, %v before the permits ran out", scKeyGen(t, env.clientDir), lcStamp(recovered), deadline.Sub(recovered).Round(time.Millisecond))
	lcWaitFor(t, 3*time.Second, "the client serving the new set", func() bool {
		st := cli.statusDoc(t)
		return st.Keys.Generation == scKeyGen(t, env.clientDir) && slices.Equal(st.Keys.PermitEpochs, []uint64{e + 1, e + 2})
	})

	// Traffic goes on into the epoch the new permits are for.
	time.Sleep(time.Until(deadline.Add(1500 * time.Millisecond)))
	ok := load.finish(t) + prober.finish(t)
	sessions := lcSessionsByEpoch(t, srv, clientID, epochLen)
	t.Logf("%d requests, %d failed; server sessions by epoch %v; fetcher failures %d",
		ok, load.failed()+prober.failed(), sessions, env.cw.logMatches(lcFetchFailed))
	// During the outage (epoch e+1) new handshakes used the permit fetched
	// before it; after it, the renewed one.
	if sessions[e+1] == 0 || sessions[e+2] == 0 {
		t.Errorf("sessions by epoch %v: want new sessions in epochs %d and %d", sessions, e+1, e+2)
	}
	lcNoFailedHandshakes(t, srv, 0, cli, probe)
	if ok < 50 {
		t.Errorf("only %d requests succeeded", ok)
	}
	lcHealthy(t, srv, cli, probe)
	lcNoReloadErrors(t, srv, cli, probe)
	env.cw.stop()
	env.sw.stop()
	env.stop(t, cli, probe, srv)
}

// lcServeAgain restarts a stopped D-TA on the port it had.
func lcServeAgain(t *testing.T, lc *lcCluster, d *dtaNode, port string) {
	t.Helper()
	lc.start(d, "127.0.0.1:"+port)
	lc.waitServing(d)
	if d.addr != "127.0.0.1:"+port {
		t.Fatalf("restarted %s listens on %s, want port %s", d.id, d.addr, port)
	}
}

// lcKeyGen is where ..data of a key directory points ("" if nowhere).
func lcKeyGen(dir string) string {
	l, _ := os.Readlink(filepath.Join(dir, "..data"))
	return l
}

// Revocation across an epoch boundary with the fetchers running: the
// revoked client's renewals are refused (403) and its set is kept; it goes
// on working while its last permit's epoch lasts, and from the next epoch
// its new handshakes are refused, by its running sidecar and by a fresh
// one. A client that is not revoked works throughout.
func TestLifecycleRevocation(t *testing.T) {
	t.Parallel()
	const epochLen = 3
	env := lcNewEnv(t, epochLen)
	srv := env.srv
	const otherID = "spiffe://test.example/ns/web/sa/backoffice"
	otherDir := filepath.Join(env.lc.base, "keys-other")
	ow := env.lc.watch("keys fetch --watch (other client)", otherID, "workload", "client,permit", otherDir)
	ow.waitLog(t, 20*time.Second, 1, lcKeysWritten)

	cli, cliProbe, revokedLoad, revokedProber := env.traffic(t, "(to be revoked)", env.clientDir, 2)
	other, otherProbe, otherLoad, otherProber := env.traffic(t, "(not revoked)", otherDir, 2)

	// Revoke right after the renewal of this epoch: the client holds the
	// permits for this epoch and the next, its last.
	var e uint64
	lcWaitFor(t, 3*epochLen*time.Second, "the client serving permits of the current epoch, 1 s before its end", func() bool {
		e = lcEpoch(time.Now(), epochLen)
		ep := cli.statusDoc(t).Keys.PermitEpochs
		return len(ep) == 2 && ep[0] == e && time.Until(lcEpochStart(e+1, epochLen)) > time.Second
	})
	env.lc.revoke(clientID)
	revokedAt := time.Now()
	kept := readKeyDir(t, env.clientDir)
	last := e + 1
	expiry := lcEpochStart(last+1, epochLen)
	t.Logf("revoked at %s in epoch %d; the last permit (epoch %d) ends at %s", lcStamp(revokedAt), e, last, lcStamp(expiry))

	// The renewal after the boundary is refused by every D-TA; the set stays.
	env.cw.waitLog(t, epochLen*time.Second+3*time.Second, 1, lcFetchFailed,
		"D-TA dta-1: HTTP 403: identity is revoked", "D-TA dta-2: HTTP 403: identity is revoked", "D-TA dta-3: HTTP 403: identity is revoked")
	if time.Now().Before(lcEpochStart(e+1, epochLen)) {
		t.Errorf("the fetcher renewed before the boundary")
	}
	sameKeyDir(t, env.clientDir, kept)

	// Until its last permit's epoch ends the revoked client still opens new
	// sessions; stop its traffic just before that.
	time.Sleep(time.Until(expiry.Add(-400 * time.Millisecond)))
	revokedOK := revokedLoad.finish(t) + revokedProber.finish(t)
	sessions := lcSessionsByEpoch(t, srv, clientID, epochLen)
	if sessions[last] == 0 {
		t.Errorf("the revoked client opened no session in epoch %d, its last permit's (sessions by epoch %v)", last, sessions)
	}
	lcNoFailedHandshakes(t, srv, 0, cli, cliProbe, other, otherProbe)
	t.Logf("revoked client: %d requests before its permits ran out; sessions by epoch %v", revokedOK, sessions)

	// From the next epoch its new handshakes are refused: its sessions have
	// gone idle, so the running sidecar must make a new one.
	time.Sleep(time.Until(expiry.Add(300 * time.Millisecond)))
	permitRefused := fmt.Sprintf("permit for epoch %d", last)
	// The log names who was refused: the identity Msg1 claimed. Count only
	// this client's refusals: the other client may be refused once too,
	// when a handshake of its own crosses the boundary before its renewal
	// (its sidecar retries it).
	refusedHere := []string{"check epoch", "time permit epoch not acceptable", permitRefused, `"claimed_client":"` + clientID + `"`}
	refusals := srv.logMatches("handshake failed", refusedHere...)
	d := mustBeRefused(t, cli, 2*time.Second)
	srv.waitLog(t, 5*time.Second, refusals+1, "handshake failed", refusedHere...)
	t.Logf("running sidecar: app connection closed after %v", d.Round(time.Millisecond))
	if st := cli.statusDoc(t); st.Ready {
		t.Errorf("the revoked client's /_status says ready with permits %v that ended at %s", st.Keys.PermitEpochs, lcStamp(expiry))
	}
	cli.stop()
	cliProbe.stop()

	// A fresh sidecar with the same key directory: it starts (the set is
	// well-formed), says it is not ready, and its connections are refused.
	fresh := lcStartClientUnready(t, "client (revoked, restarted)", "--listen", "127.0.0.1:0", "--target", srv.listen,
		"--verify-id", serverID, "--keys", env.clientDir)
	if code, _ := fresh.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("restarted revoked client /readyz: HTTP %d, want 503 (its permits have ended)", code)
	}
	d = mustBeRefused(t, fresh, 2*time.Second)
	srv.waitLog(t, 5*time.Second, refusals+2, "handshake failed", refusedHere...)
	fresh.waitLog(t, 5*time.Second, 1, "connection refused: no secure stream", "handshake_failure")
	t.Logf("restarted sidecar: app connection closed after %v", d.Round(time.Millisecond))
	sameKeyDir(t, env.clientDir, kept)
	if env.cw.exited() {
		t.Errorf("the revoked client's fetcher exited: %v", env.cw.state)
	}

	// The other client of the domain was never disturbed, and goes on
	// making new sessions in the epoch where the revoked one cannot.
	mustExchange(t, other.listen, 3, 10<<10)
	lcWaitFor(t, 3*time.Second, "a new session of the other client after the revoked one's permits ended", func() bool {
		return lcSessionsByEpoch(t, srv, otherID, epochLen)[last+1] > 0
	})
	otherOK := otherLoad.finish(t) + otherProber.finish(t)
	otherSessions := lcSessionsByEpoch(t, srv, otherID, epochLen)
	t.Logf("other client: %d requests, sessions by epoch %v", otherOK, otherSessions)
	for ep := e; ep <= last+1; ep++ {
		if otherSessions[ep] == 0 {
			t.Errorf("the other client opened no session in epoch %d (sessions by epoch %v)", ep, otherSessions)
		}
	}
	if n := ow.logNone(quiet, lcFetchFailed); n != 0 {
		t.Errorf("the other client's fetcher failed %d times", n)
	}
	lcNoFailedHandshakes(t, srv, 2, cli, cliProbe, other, otherProbe, fresh)
	lcHealthy(t, srv, other, otherProbe, fresh)
	ow.stop()
	env.cw.stop()
	env.sw.stop()
	env.stop(t, fresh, other, otherProbe, srv)
}

// lcStartClientUnready starts `milagro client` and waits for its "client
// ready" log line and /healthz, not for /readyz.
func lcStartClientUnready(t *testing.T, name string, args ...string) *scSidecar {
	t.Helper()
	sc := &scSidecar{role: "client", args: args}
	sc.proc = startProc(t, name, nil, milagroBin, append(append([]string{"client"}, args...), "--status", "127.0.0.1:0")...)
	ready := sc.waitLogJSON(t, 20*time.Second, "client ready")
	sc.listen, _ = ready["listen"].(string)
	sc.status, _ = ready["status"].(string)
	lcHealthy(t, sc)
	return sc
}

// lcFlappingBackend is an echo backend that can be stopped and started
// again on the same address.
type lcFlappingBackend struct {
	addr string
	mu   sync.Mutex
	ln   net.Listener
}

func lcStartFlapping(t *testing.T) *lcFlappingBackend {
	t.Helper()
	b := &lcFlappingBackend{}
	b.up(t, "127.0.0.1:0")
	t.Cleanup(func() { b.down() })
	return b
}

func (b *lcFlappingBackend) up(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("echo backend on %s: %v", addr, err)
	}
	b.mu.Lock()
	b.ln, b.addr = ln, ln.Addr().String()
	b.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				scEcho(c.(*net.TCPConn))
			}()
		}
	}()
}

func (b *lcFlappingBackend) down() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
}

// The backend goes away and comes back (same port) several times while a
// worker keeps connecting: during an outage each app connection is closed
// at once, without an answer; after each restart connections go through
// again. The sidecars stay up and healthy on one secure session, and the
// server's /_status tells whether the backend is reachable.
func TestLifecycleBackendFlap(t *testing.T) {
	t.Parallel()
	e := scNewEnv(t, clusterConfig{n: 1, passphrase: -1})
	be := lcStartFlapping(t)
	srv := e.server(t, "server (flapping backend)", be.addr)
	cli := e.client(t, "client (flapping backend)", srv.listen)

	type phaseStats struct {
		up            bool
		ok, refused   int
		slowest       time.Duration
		unexpected    []string
		startedAt     time.Time
		firstResultAt time.Time
	}
	var (
		mu     sync.RWMutex // held for reading by the worker during each connection
		phases = []*phaseStats{{up: true, startedAt: time.Now()}}
		stop   = make(chan struct{})
		done   = make(chan struct{})
	)
	halt := sync.OnceFunc(func() { close(stop); <-done })
	t.Cleanup(halt) // also when the test fails before the end
	go func() {
		defer close(done)
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mu.RLock()
			ph := phases[len(phases)-1]
			var err error
			if ph.up {
				_, err = scExchange(cli.listen, i, 4<<10, 5*time.Second)
				if err == nil {
					ph.ok++
				}
			} else {
				var d time.Duration
				d, err = scRequestClosed(cli.listen, 5*time.Second)
				if err == nil {
					ph.refused++
					ph.slowest = max(ph.slowest, d)
				}
			}
			if err != nil {
				ph.unexpected = append(ph.unexpected, fmt.Sprintf("connection %d at %s: %v", i, lcStamp(time.Now()), err))
			}
			if ph.firstResultAt.IsZero() {
				ph.firstResultAt = time.Now()
			}
			mu.RUnlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// count returns the current phase's successes or refusals.
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		ph := phases[len(phases)-1]
		return ph.ok + ph.refused
	}
	flip := func(up bool) {
		mu.Lock()
		defer mu.Unlock()
		if up {
			be.up(t, be.addr)
		} else {
			be.down()
		}
		phases = append(phases, &phaseStats{up: up, startedAt: time.Now()})
	}
	backendOK := func(want bool) {
		t.Helper()
		st := srv.statusDoc(t)
		if len(st.Backends) != 1 || st.Backends[0].Address != be.addr || st.Backends[0].OK != want {
			t.Errorf("server /_status backends %+v, want %s ok=%v", st.Backends, be.addr, want)
		}
	}

	const cycles = 4
	for range cycles {
		lcWaitFor(t, 5*time.Second, "3 connections with the backend up", func() bool { return count() >= 3 })
		backendOK(true)
		lcHealthy(t, srv, cli)
		flip(false)
		lcWaitFor(t, 5*time.Second, "3 connections with the backend down", func() bool { return count() >= 3 })
		backendOK(false)
		lcHealthy(t, srv, cli)
		if code, _ := srv.get(t, "/readyz"); code != http.StatusOK {
			t.Errorf("server /readyz during a backend outage: HTTP %d", code)
		}
		flip(true)
	}
	lcWaitFor(t, 5*time.Second, "3 connections with the backend up", func() bool { return count() >= 3 })
	halt()

	var refused int
	for i, ph := range phases {
		t.Logf("phase %d (backend up %v): %d echoed, %d refused (slowest %v), first result %v after the switch",
			i, ph.up, ph.ok, ph.refused, ph.slowest.Round(time.Millisecond), ph.firstResultAt.Sub(ph.startedAt).Round(time.Millisecond))
		for _, u := range ph.unexpected {
			t.Errorf("phase %d (backend up %v): %s", i, ph.up, u)
		}
		if (ph.up && ph.ok == 0) || (!ph.up && ph.refused == 0) {
			t.Errorf("phase %d (backend up %v): no connection completed as expected", i, ph.up)
		}
		if ph.slowest >= time.Second {
			t.Errorf("phase %d: an app connection stayed open %v during the outage, want < 1 s", i, ph.slowest)
		}
		refused += ph.refused
	}
	if len(phases) != 2*cycles+1 {
		t.Errorf("%d phases", len(phases))
	}
	if v := cli.metric(t, "milagro_streams_total", `result="unreachable"`); v != float64(refused) {
		t.Errorf("client milagro_streams_total{result=\"unreachable\"} = %v, want %d", v, refused)
	}
	if v := srv.metric(t, "milagro_streams_total", `result="unreachable"`); v != float64(refused) {
		t.Errorf("server milagro_streams_total{result=\"unreachable\"} = %v, want %d", v, refused)
	}
	// Logged too, at most 10 lines a second per session (the rest counted
	// in the next line's also_refused).
	if n := srv.logCount(min(refused, 10), "backend unreachable", "connection refused"); n < min(refused, 10) || n > refused {
		t.Errorf("server logged %d unreachable backends, want from %d to %d", n, min(refused, 10), refused)
	}
	// All of it on the first secure session: a refused stream does not cost
	// the session.
	if n := srv.logExactly(1, "session open", clientID); n != 1 {
		t.Errorf("server logged %d sessions, want 1", n)
	}
	if n := srv.logNone(quiet, "handshake failed"); n != 0 {
		t.Errorf("server: %d failed handshakes", n)
	}
	backendOK(true)
	lcHealthy(t, srv, cli)
	cli.stop()
	srv.stop()
}
