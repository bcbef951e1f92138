package integration

// Helpers for the secure channel tests (sidecar_test.go): sidecar
// processes with their status endpoint, backends in the test process, and
// traffic generators that verify what comes back.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sidecar is a running `milagro server` or `milagro client`.
type scSidecar struct {
	*proc
	role   string   // "server" or "client"
	args   []string // without --status
	listen string   // bound --listen address ("" if none)
	fwd    string   // bound --forward-proxy address
	status string   // bound --status address
}

// scStart runs `milagro ROLE ARGS --status 127.0.0.1:0`, waits for its
// "ready" log line (which carries the bound addresses) and for /readyz.
func scStart(t *testing.T, name, role string, args ...string) *scSidecar {
	t.Helper()
	return scStartOn(t, name, role, "127.0.0.1:0", args...)
}

func scStartOn(t *testing.T, name, role, status string, args ...string) *scSidecar {
	t.Helper()
	sc := &scSidecar{role: role, args: args, status: status}
	all := append([]string{role}, args...)
	all = append(all, "--status", status)
	sc.proc = startProc(t, name, nil, milagroBin, all...)
	ready := sc.waitLogJSON(t, 20*time.Second, role+" ready")
	sc.listen, _ = ready["listen"].(string)
	sc.fwd, _ = ready["forward_proxy"].(string)
	sc.status, _ = ready["status"].(string)
	sc.waitReady(t, 20*time.Second)
	return sc
}

// restart starts the same command again after the process ended, on the
// same listen and status addresses.
func (sc *scSidecar) restart(t *testing.T) *scSidecar {
	t.Helper()
	if !sc.exited() {
		t.Fatalf("%s is still running", sc.name)
	}
	args := append([]string(nil), sc.args...)
	for i := range args {
		if args[i] == "--listen" && i+1 < len(args) && sc.listen != "" {
			args[i+1] = sc.listen
		}
		if args[i] == "--forward-proxy" && i+1 < len(args) && sc.fwd != "" {
			args[i+1] = sc.fwd
		}
	}
	n := scStartOn(t, sc.name+" (restarted)", sc.role, sc.status, args...)
	if sc.listen != "" && n.listen != sc.listen {
		t.Fatalf("restarted %s listens on %s, want %s", sc.name, n.listen, sc.listen)
	}
	return n
}

// logLines decodes the JSON log lines on stderr (other lines are skipped).
func (sc *scSidecar) logLines() []map[string]any {
	var out []map[string]any
	for line := range strings.Lines(sc.stderr.String()) {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// logMatches counts the log lines with message msg whose raw text contains
// every substring.
func (sc *scSidecar) logMatches(msg string, substrings ...string) int {
	n := 0
	for line := range strings.Lines(sc.stderr.String()) {
		var m struct {
			Message string `json:"message"`
		}
		if json.Unmarshal([]byte(line), &m) != nil || m.Message != msg {
			continue
		}
		if containsAll(line, substrings...) {
			n++
		}
	}
	return n
}

// logCount waits until at least atLeast lines with message msg contain every
// substring, for up to 5 s, and returns how many do. A line the process
// wrote before an event the test saw may not be in sc.stderr yet: it
// reaches the buffer through a pipe and exec's copying goroutine, which
// lags under load. So a count that must equal n is read with logCount(n,
// ...), never with logMatches right after the event.
func (sc *scSidecar) logCount(atLeast int, msg string, substrings ...string) int {
	var n int
	eventually(5*time.Second, func() bool {
		n = sc.logMatches(msg, substrings...)
		return n >= atLeast
	})
	return n
}

// logExactly is logCount for a count that must be exactly n: once n lines
// have come, it watches for quiet more whether another one follows, and
// returns the count.
func (sc *scSidecar) logExactly(n int, msg string, substrings ...string) int {
	got := sc.logCount(n, msg, substrings...)
	if got == n {
		eventually(quiet, func() bool {
			got = sc.logMatches(msg, substrings...)
			return got != n
		})
	}
	return got
}

// logNone checks that no line with message msg contains every substring,
// for a while: it polls for within and returns the count as soon as it is
// not 0 (else 0). A zero read once right after an event proves little, as
// the line may still be on its way (see logCount); a line written up to
// within later is caught too.
func (sc *scSidecar) logNone(within time.Duration, msg string, substrings ...string) int {
	var n int
	eventually(within, func() bool {
		n = sc.logMatches(msg, substrings...)
		return n != 0
	})
	return n
}

// quiet is how long logNone watches for a line that must not come.
const quiet = 300 * time.Millisecond

// eventually polls cond every 20 ms until it holds or timeout passes, and
// reports whether it held.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// containsAll reports whether s contains every one of subs.
func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// waitLog waits until at least n lines with message msg contain every
// substring.
func (sc *scSidecar) waitLog(t *testing.T, timeout time.Duration, n int, msg string, substrings ...string) {
	t.Helper()
	if !eventually(timeout, func() bool { return sc.logMatches(msg, substrings...) >= n }) {
		t.Fatalf("%s did not log %d× %q with %q within %v\nstderr:\n%s", sc.name, n, msg, substrings, timeout, sc.stderr.String())
	}
}

// waitLogJSON returns the first log line with message msg.
func (sc *scSidecar) waitLogJSON(t *testing.T, timeout time.Duration, msg string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range sc.logLines() {
			if m["message"] == msg {
				return m
			}
		}
		if sc.exited() {
			t.Fatalf("%s exited (%v) before logging %q\nstderr:\n%s", sc.name, sc.state, msg, sc.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v\nstderr:\n%s", sc.name, msg, timeout, sc.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var scHTTP = &http.Client{Timeout: 5 * time.Second}

// get fetches a status path and returns the HTTP status and body.
func (sc *scSidecar) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := scHTTP.Get("http://" + sc.status + path)
	if err != nil {
		t.Fatalf("%s GET %s: %v", sc.name, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s GET %s: %v", sc.name, path, err)
	}
	return resp.StatusCode, string(b)
}

func (sc *scSidecar) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := scHTTP.Get("http://" + sc.status + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		if sc.exited() {
			t.Fatalf("%s exited (%v)\nstderr:\n%s", sc.name, sc.state, sc.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s /readyz not ready within %v: %v\nstderr:\n%s", sc.name, timeout, err, sc.stderr.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// scStatusDoc is the part of /_status the tests read.
type scStatusDoc struct {
	Role     string `json:"role"`
	Identity string `json:"identity"`
	Domain   string `json:"domain"`
	Listen   string `json:"listen"`
	Ready    bool   `json:"ready"`
	Draining bool   `json:"draining"`
	Keys     struct {
		Generation   string   `json:"generation"`
		PermitEpochs []uint64 `json:"permit_epochs"`
		LastSource   string   `json:"last_reload_source"`
		LastError    string   `json:"last_reload_error"`
	} `json:"keys"`
	Sessions int `json:"sessions"`
	Streams  int `json:"streams"`
	Backends []struct {
		Name    string `json:"name"`
		Address string `json:"address"`
		OK      bool   `json:"ok"`
	} `json:"backends"`
	Upstreams []struct {
		Upstream string `json:"upstream"`
		VerifyID string `json:"verify_id"`
		Stats    struct {
			Dials        uint64 `json:"dials"`
			DialFailures uint64 `json:"dial_failures"`
			Opens        uint64 `json:"opens"`
			OpenFailures uint64 `json:"open_failures"`
			Sessions     int    `json:"sessions"`
		} `json:"stats"`
	} `json:"upstreams"`
}

func (sc *scSidecar) statusDoc(t *testing.T) scStatusDoc {
	t.Helper()
	code, body := sc.get(t, "/_status")
	var st scStatusDoc
	dec := json.NewDecoder(strings.NewReader(body))
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("%s /_status (HTTP %d): %v: %s", sc.name, code, err, body)
	}
	return st
}

var scMetricRe = regexp.MustCompile(`(?m)^(\w+)\{([^}]*)\} (\S+)$`)

// metric returns the value of a Prometheus series whose labels include
// every label given ("result=\"ok\""), summed over matching series.
func (sc *scSidecar) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	code, body := sc.get(t, "/_metrics/prometheus")
	if code != http.StatusOK {
		t.Fatalf("%s metrics: HTTP %d", sc.name, code)
	}
	var sum float64
	for _, m := range scMetricRe.FindAllStringSubmatch(body, -1) {
		if m[1] != name {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(m[2], l) {
				ok = false
			}
		}
		if ok {
			v, _ := strconv.ParseFloat(m[3], 64)
			sum += v
		}
	}
	return sum
}

// scKeyGen is where ..data of a key directory points.
func scKeyGen(t *testing.T, dir string) string {
	t.Helper()
	l, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// --- backends in the test process ---

// scBackend accepts on loopback and runs handle for every connection.
type scBackend struct {
	ln    net.Listener
	addr  string
	conns atomic.Int64
	wg    sync.WaitGroup
}

func scStartBackend(t *testing.T, handle func(c *net.TCPConn)) *scBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &scBackend{ln: ln, addr: ln.Addr().String()}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return b
}

// echo copies c to itself until EOF, then half-closes.
func scEcho(c *net.TCPConn) {
	if _, err := io.Copy(c, c); err == nil {
		c.CloseWrite()
		io.Copy(io.Discard, c)
	}
}

// scClosedPort returns a loopback address where nothing listens, for as
// long as the test runs: a socket bound to it and never listening holds
// the port, so no other listener takes it, and connections are refused.
func scClosedPort(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// --- traffic ---

// stream is a deterministic pseudo-random byte stream (AES-CTR) of n bytes.
type scStream struct {
	ctr  cipher.Stream
	left int64
}

func scNewStream(seed uint64, n int64) *scStream {
	var key [16]byte
	binary.BigEndian.PutUint64(key[:], seed)
	blk, _ := aes.NewCipher(key[:])
	return &scStream{ctr: cipher.NewCTR(blk, make([]byte, 16)), left: n}
}

func (s *scStream) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	clear(p)
	s.ctr.XORKeyStream(p, p)
	s.left -= int64(len(p))
	return len(p), nil
}

// errCleanTruncation: the connection ended with a clean EOF before all the
// data came back — the one failure an application cannot detect.
var errCleanTruncation = errors.New("clean EOF before the end of the data")

// scExchange sends size bytes through addr (an echo path), half-closes, and
// reads until EOF. It compares the SHA-256 of what went and came back.
func scExchange(addr string, seed uint64, size int64, timeout time.Duration) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		_, err := io.CopyBuffer(io.MultiWriter(c, sent), scNewStream(seed, size), buf)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, rerr := io.CopyBuffer(got, c, make([]byte, 256<<10))
	if err := <-werr; err != nil {
		return 0, fmt.Errorf("send: %w (received %d of %d bytes)", err, n, size)
	}
	if rerr != nil {
		return 0, fmt.Errorf("receive after %d of %d bytes: %w", n, size, rerr)
	}
	d := time.Since(start)
	if n != size {
		return d, fmt.Errorf("%w: received %d bytes, sent %d", errCleanTruncation, n, size)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return d, errors.New("received bytes differ from the sent ones (SHA-256)")
	}
	return d, nil
}

// scRequestClosed reports how an app connection through addr ended when the
// channel cannot carry it: it sends a little, and expects the connection
// closed without any answer.
func scRequestClosed(addr string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	c.Write([]byte("hello?"))
	b, err := io.ReadAll(c)
	d := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return d, fmt.Errorf("connection still open after %v", timeout)
	}
	if len(b) > 0 {
		return d, fmt.Errorf("got %d bytes of answer: %q", len(b), b)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		return d, err
	}
	return d, nil
}

// scRelay is a TCP relay in the test process: each connection goes to
// the first of its upstreams that accepts it (a load balancer of the
// simplest kind), and it records what the first connection's client sent.
type scRelay struct {
	ln       net.Listener
	addr     string
	mu       sync.Mutex
	recorded []byte
	first    bool
	count    []int // connections relayed to each upstream
	wg       sync.WaitGroup
}

func scStartRelay(t *testing.T, upstreams ...string) *scRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &scRelay{ln: ln, addr: ln.Addr().String(), first: true, count: make([]int, len(upstreams))}
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var s net.Conn
			i := 0
			for ; i < len(upstreams); i++ {
				if s, err = net.Dial("tcp", upstreams[i]); err == nil {
					break
				}
			}
			if s == nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.count[i]++
			record := r.first
			r.first = false
			r.mu.Unlock()
			r.wg.Go(func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if record {
							r.mu.Lock()
							r.recorded = append(r.recorded, buf[:n]...)
							r.mu.Unlock()
						}
						if _, werr := s.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				s.(*net.TCPConn).CloseWrite()
			})
			r.wg.Go(func() {
				io.Copy(c, s)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return r
}

// served returns how many connections went to each upstream.
func (r *scRelay) served() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.count)
}

func (r *scRelay) capture() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.recorded...)
}

// scHTTPVia is an HTTP client whose connections all go to addr.
func scHTTPVia(addr string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		MaxIdleConnsPerHost: 4,
	}}
}

// connect sends an HTTP CONNECT through a forward proxy (plus early data
// in the same write) and returns the connection, the status line and a
// reader positioned after the answer's head.
func scConnect(t *testing.T, proxyAddr, dest string, early []byte) (net.Conn, *bufio.Reader, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	req := fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dest, dest)
	if _, err := c.Write(append([]byte(req), early...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		c.Close()
		t.Fatalf("CONNECT %s: %v", dest, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
	}
	return c, br, resp.StatusCode
}
