// Package integration holds end-to-end tests: TestMain builds cmd/milagro
// once, and every test runs real milagro processes (and, for ACME, a real
// Pebble) on loopback. Nothing here imports the project's packages: the
// tests see only what an operator sees, the command line, HTTP and files.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// milagroBin is the binary built by TestMain.
var milagroBin string

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "milagro-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	// The binary is built without -race: -race is for the test process.
	milagroBin = filepath.Join(tmp, "milagro")
	build := exec.Command("go", "build", "-o", milagroBin, "github.com/milagro-sc/milagro/cmd/milagro")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: go build ./cmd/milagro:", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "integration: built %s in %v\n", milagroBin, time.Since(start).Round(time.Millisecond))
	}
	return m.Run()
}

var touchOnce sync.Once

// touchModuleSources reads the module's Go sources, go.mod and go.sum. The
// test binary does not link cmd/milagro, so without this `go test` would
// serve a cached pass after the CLI changed: files the test process opens
// are part of the test cache key. Opens are recorded only once m.Run has
// started, so the helpers that run the binary call this.
func touchModuleSources() { touchOnce.Do(readModuleSources) }

func readModuleSources() {
	root, err := filepath.Abs("..")
	if err != nil {
		return
	}
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if n := d.Name(); p != root && (strings.HasPrefix(n, ".") || n == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if n := d.Name(); strings.HasSuffix(n, ".go") || n == "go.mod" || n == "go.sum" {
			_, _ = os.ReadFile(p)
		}
		return nil
	})
}

// syncBuffer is a bytes.Buffer safe for a writer goroutine and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// environ is the test's environment without MILAGRO_* variables (flag
// defaults of the CLI that must not leak in from a developer's shell), plus
// extra.
func environ(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MILAGRO_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// proc is a long-running child process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{} // closed when Wait returned
	state  *os.ProcessState
}

// startProc starts bin with args and env (added to the test's
// environment). The process is killed at cleanup if still running, and its
// output goes to the test log if the test failed.
func startProc(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	touchModuleSources()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = environ(env)
	p := &proc{t: t, name: name, cmd: cmd, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.WaitDelay = 5 * time.Second
	// Killed with the test binary too, should it die without cleanups (a
	// -timeout panic): no D-TA or sidecar is left running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startFromForker(cmd); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		// A SIGSTOPped process must be continued before it can die of
		// anything but SIGKILL; CommandContext sends SIGKILL.
		cancel()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s (pid %d) did not exit after SIGKILL", name, cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("--- %s %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(args, " "), p.stdout.String(), p.stderr.String())
		}
	})
	return p
}

// forker is the goroutine that starts every long-running child, locked to
// one OS thread for the life of the test binary. Pdeathsig fires when the
// thread that forked the child exits, not the process (golang/go#27505), and
// tpInNetns ends its threads on purpose: a child forked from a thread that
// later ran a namespace helper was SIGKILLed mid-test.
var forker = make(chan func())

func init() {
	go func() {
		runtime.LockOSThread()
		for f := range forker {
			f()
		}
	}()
}

// startFromForker starts cmd on the forker's thread.
func startFromForker(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	forker <- func() { errc <- cmd.Start() }
	return <-errc
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until re matches stdout (or stderr, if onStderr) and
// returns the submatches. It fails early if the process exits.
func (p *proc) waitOutput(re *regexp.Regexp, onStderr bool, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := p.stdout.String()
		if onStderr {
			out = p.stderr.String()
		}
		if m := re.FindStringSubmatch(out); m != nil {
			return m
		}
		if p.exited() {
			p.t.Fatalf("%s exited (%v) before printing %q\nstdout:\n%s\nstderr:\n%s", p.name, p.state, re, p.stdout.String(), p.stderr.String())
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q within %v\nstdout:\n%s\nstderr:\n%s", p.name, re, timeout, p.stdout.String(), p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var listeningRe = regexp.MustCompile(`(?m)^listening on (\S+)$`)

// waitListening waits for "listening on ADDR" and returns ADDR.
func (p *proc) waitListening(timeout time.Duration) string {
	p.t.Helper()
	return p.waitOutput(listeningRe, false, timeout)[1]
}

// signal sends sig to the process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		state := "running"
		if p.exited() {
			state = p.state.String()
		}
		p.t.Fatalf("signal %v to %s: %v (%s)", sig, p.name, err, state)
	}
}

// wait waits for the process to exit and returns its exit code (-1 if it
// died of a signal).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.state.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %v\nstdout:\n%s\nstderr:\n%s", p.name, timeout, p.stdout.String(), p.stderr.String())
		return 0
	}
}

// stop sends SIGTERM and requires a clean exit (code 0).
func (p *proc) stop() {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	if code := p.wait(15 * time.Second); code != 0 {
		p.t.Fatalf("%s exited with %d after SIGTERM, want 0\nstdout:\n%s\nstderr:\n%s", p.name, code, p.stdout.String(), p.stderr.String())
	}
}

// result is the outcome of a one-shot command.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("milagro %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// milagro runs the CLI to completion (at most a minute).
func milagro(t *testing.T, env []string, args ...string) result {
	t.Helper()
	touchModuleSources()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, milagroBin, args...)
	cmd.Env = environ(env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("milagro %s: %v (timeout %v)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, time.Minute, r.stdout, r.stderr)
	}
	return r
}

// mustMilagro runs the CLI and requires exit 0.
func mustMilagro(t *testing.T, env []string, args ...string) result {
	t.Helper()
	r := milagro(t, env, args...)
	if r.code != 0 {
		t.Fatalf("want exit 0: %v", r)
	}
	return r
}

// wantFailure requires exit code want and every substring in stderr.
func wantFailure(t *testing.T, r result, want int, substrings ...string) {
	t.Helper()
	if r.code != want {
		t.Errorf("want exit %d: %v", want, r)
		return
	}
	for _, s := range substrings {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr lacks %q: %v", s, r)
		}
	}
}

// writeFile writes a file with the given mode (chmod, so umask does not
// interfere).
func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func randomToken(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// freePort returns a loopback TCP port that was free a moment ago, for
// programs that cannot report the port they bound (Pebble).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// readLines returns the non-empty lines of a file.
func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}
