//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Transparent interception (`milagro client --transparent`) in network
// namespaces made for the test:
//
//	app netns (mlg-app-*)                                  srv netns (mlg-srv-*)
//	 app ── dial 10.232.0.9:80 ──┐                          ┌─ server sidecar 10.231.0.2:8443 ─▶ backend A 127.0.0.1
//	                             │ iptables REDIRECT        │
//	 app ── dial 10.232.0.10:80 ─┤ (nat OUTPUT)             ├─ server sidecar 10.231.0.2:8444 ─▶ backend B 127.0.0.1
//	                             ▼                          │
//	 client sidecar 127.0.0.1:15001 ── veth 10.231.0.1/30 ══╧═ veth 10.231.0.2/30
//
// 10.232.0.0/24 exists nowhere: only the redirect makes those destinations
// answer, and only SO_ORIGINAL_DST tells the client which upstream to use.
// When the kernel has IPv6, fd00:232::/64 is redirected the same way to a
// second client sidecar on [::1]. The D-TAs and the key fetches run in the
// test's own namespace on 127.0.0.1; the sidecars only read the key
// directories. No packet leaves loopback or the two namespaces.
//
// The sidecars are real processes (`ip netns exec NS milagro ...`). The
// app and the backends are plain sockets the test makes from an OS thread
// that joined the namespace (tpInNetns): to the kernel they are sockets of
// that namespace like any process's, and the app knows nothing of milagro.
// (Re-executing the test binary there instead would run TestMain, which
// builds milagro again.)
//
// Needs root, ip (iproute2) and iptables; it skips, saying why, when one is
// missing or the kernel (or sandbox) refuses network namespaces, veth or
// NAT. With MILAGRO_TEST_NETNS=require those skips are failures (for CI
// runners that are known to allow all of it).
const (
	tpAppAddr  = "10.231.0.1"    // app namespace end of the veth pair
	tpSrvAddr  = "10.231.0.2"    // server namespace end
	tpVirtNet  = "10.232.0.0/24" // redirected "service" addresses
	tpListen   = "127.0.0.1:15001"
	tpServerB  = "spiffe://test.example/ns/db/sa/store" // identity of the second server sidecar
	tpRequireV = "MILAGRO_TEST_NETNS"
)

// tpSkip skips the test, or fails it when MILAGRO_TEST_NETNS=require.
func tpSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(tpRequireV) == "require" {
		t.Fatalf("%s (%s=require)", msg, tpRequireV)
	}
	t.Skip(msg + " (set " + tpRequireV + "=require to make this a failure)")
}

// tpRun runs a command to completion and returns its combined output.
func tpRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// tpNetns adds a network namespace and deletes it at cleanup; a refusal
// skips the test.
func tpNetns(t *testing.T, name string) {
	t.Helper()
	if _, err := tpRun("ip", "netns", "add", name); err != nil {
		tpSkip(t, "cannot create a network namespace here (sandbox or kernel forbids it): %v", err)
	}
	t.Cleanup(func() {
		if _, err := tpRun("ip", "netns", "del", name); err != nil {
			t.Errorf("remove network namespace: %v", err)
		}
	})
}

// tpAddRule adds an iptables rule in ns with the first of bins that can
// (the nf_tables and legacy back ends are each missing somewhere) and
// returns its name.
func tpAddRule(ns string, bins []string, rule ...string) (string, error) {
	var errs []string
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			continue
		}
		args := append([]string{"netns", "exec", ns, bin}, rule...)
		if _, err := tpRun("ip", args...); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		return bin, nil
	}
	if len(errs) == 0 {
		return "", fmt.Errorf("none of %v is installed (apt-get install iptables)", bins)
	}
	return "", fmt.Errorf("no back end can add a nat rule in a network namespace here:\n%s", strings.Join(errs, "\n"))
}

// tpInNetns runs f on an OS thread that has joined the network namespace ns:
// every socket f creates belongs to ns for its whole life, whichever thread
// later uses it. The thread is never unlocked, so it exits with the
// goroutine and no other goroutine ever runs in ns.
func tpInNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// tpBackend is a TCP backend in the server namespace: it greets each
// connection with "backend NAME\n", then echoes until EOF.
type tpBackend struct {
	name    string
	ln      net.Listener
	accepts atomic.Int64
	wg      sync.WaitGroup
}

func tpStartBackend(t *testing.T, ns, name string) *tpBackend {
	t.Helper()
	b := &tpBackend{name: name}
	err := tpInNetns(ns, func() error {
		var err error
		b.ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("backend %s: %v", name, err)
	}
	b.wg.Go(func() {
		for {
			c, err := b.ln.Accept()
			if err != nil {
				return
			}
			b.accepts.Add(1)
			b.wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if _, err := fmt.Fprintf(c, "backend %s\n", name); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() { b.ln.Close(); b.wg.Wait() })
	return b
}

func (b *tpBackend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// tpAppExchange is the unchanged application: in the app namespace it dials
// addr as if it were the real service, reads the greeting, sends payload,
// half-closes and reads the echo to EOF.
func tpAppExchange(ns, addr string, payload []byte) (greeting string, echo []byte, err error) {
	err = tpInNetns(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		br := bufio.NewReader(c)
		greeting, err = br.ReadString('\n')
		if err != nil {
			return fmt.Errorf("read greeting: %w (got %q)", err, greeting)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			werr <- err
		}()
		echo, err = io.ReadAll(br)
		if err != nil {
			return fmt.Errorf("read echo: %w", err)
		}
		return <-werr
	})
	return strings.TrimSpace(greeting), echo, err
}

// tpAppRefused dials addr in the app namespace and requires that the peer
// closes the connection without sending a byte.
func tpAppRefused(ns, addr string) error {
	return tpInNetns(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return fmt.Errorf("dial: %w (want the redirect to reach the client sidecar)", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, _ = c.Write([]byte("anyone there?\n"))
		b, err := io.ReadAll(c)
		switch {
		case len(b) > 0:
			return fmt.Errorf("got %q, want the connection closed", b)
		case err == nil, errors.Is(err, unix.ECONNRESET), errors.Is(err, unix.EPIPE):
			return nil
		default:
			return fmt.Errorf("want the connection closed: %w", err)
		}
	})
}

// tpLogHas reports whether one line of out contains every substring.
func tpLogHas(out string, substrings ...string) bool {
	for line := range strings.Lines(out) {
		if containsAll(line, substrings...) {
			return true
		}
	}
	return false
}

// tpWaitLog waits until one line of p's stderr has every substring.
func tpWaitLog(t *testing.T, p *proc, timeout time.Duration, substrings ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !tpLogHas(p.stderr.String(), substrings...) {
		if p.exited() {
			t.Fatalf("%s exited (%v) before logging %q\nstderr:\n%s", p.name, p.state, substrings, p.stderr.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %q within %v\nstderr:\n%s", p.name, substrings, timeout, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTransparentNetns(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		tpSkip(t, "transparent interception needs root: it creates network namespaces, a veth pair and iptables rules (run as root, e.g. in CI)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tpSkip(t, "ip (iproute2) is not installed (apt-get install iproute2)")
	}
	if !slices.ContainsFunc([]string{"iptables", "iptables-legacy", "iptables-nft"}, func(n string) bool { _, err := exec.LookPath(n); return err == nil }) {
		tpSkip(t, "iptables is not installed (apt-get install iptables)")
	}
	start := time.Now()

	// Two namespaces joined by a veth pair. Names are unique per run so
	// that parallel runs (and leftovers of a killed one) do not collide.
	suffix := fmt.Sprintf("%d-%s", os.Getpid(), randomToken(t)[:6])
	appNS, srvNS := "mlg-app-"+suffix, "mlg-srv-"+suffix
	tpNetns(t, appNS)
	tpNetns(t, srvNS)
	// Created inside appNS with its peer inside srvNS: it never exists in
	// the test's own namespace. It dies with the namespaces.
	if _, err := tpRun("ip", "-n", appNS, "link", "add", "veth-app", "type", "veth", "peer", "name", "veth-srv", "netns", srvNS); err != nil {
		tpSkip(t, "cannot create a veth pair between network namespaces: %v", err)
	}
	for _, cmd := range [][]string{
		{"-n", appNS, "link", "set", "lo", "up"},
		{"-n", srvNS, "link", "set", "lo", "up"},
		{"-n", appNS, "addr", "add", tpAppAddr + "/30", "dev", "veth-app"},
		{"-n", srvNS, "addr", "add", tpSrvAddr + "/30", "dev", "veth-srv"},
		{"-n", appNS, "link", "set", "veth-app", "up"},
		{"-n", srvNS, "link", "set", "veth-srv", "up"},
		// The app's view: the service range is behind the gateway. Without
		// the redirect, connections would go there and die (the server
		// namespace does not forward).
		{"-n", appNS, "route", "add", tpVirtNet, "via", tpSrvAddr},
	} {
		if _, err := tpRun("ip", cmd...); err != nil {
			t.Fatal(err)
		}
	}
	ipt, err := tpAddRule(appNS, []string{"iptables", "iptables-legacy", "iptables-nft"},
		"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", tpVirtNet, "-j", "REDIRECT", "--to-ports", "15001")
	if err != nil {
		tpSkip(t, "iptables: %v", err)
	}
	// IPv6 as well, when the kernel has it: the same layout with
	// fd00:231::/64 on the veth pair and fd00:232::/64 redirected to a
	// second client sidecar on [::1] (a loopback listener serves one
	// address family).
	ipv6 := func() error {
		for _, cmd := range [][]string{
			{"-n", appNS, "-6", "addr", "add", "fd00:231::1/64", "dev", "veth-app", "nodad"},
			{"-n", srvNS, "-6", "addr", "add", "fd00:231::2/64", "dev", "veth-srv", "nodad"},
			{"-n", appNS, "-6", "route", "add", "fd00:232::/64", "via", "fd00:231::2"},
		} {
			if _, err := tpRun("ip", cmd...); err != nil {
				return err
			}
		}
		_, err := tpAddRule(appNS, []string{"ip6tables", "ip6tables-legacy", "ip6tables-nft"},
			"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "fd00:232::/64", "-j", "REDIRECT", "--to-ports", "15006")
		return err
	}()
	if ipv6 != nil {
		t.Logf("IPv6 part skipped: %v", ipv6)
	}
	t.Logf("namespaces %s and %s with %s ready after %v", appNS, srvNS, ipt, time.Since(start).Round(time.Millisecond))

	// Keys: a domain of two D-TAs on 127.0.0.1 in the test's namespace, a
	// client set and two server sets with different identities.
	c := newCluster(t, clusterConfig{n: 2, passphrase: -1})
	clientDir, serverADir, serverBDir := t.TempDir(), t.TempDir(), t.TempDir()
	c.fetchClient(clientID, clientDir)
	c.fetchServer(serverID, serverADir)
	c.fetchServer(tpServerB, serverBDir)
	t.Logf("keys fetched after %v", time.Since(start).Round(time.Millisecond))

	// The server namespace: two backends that say who they are, each behind
	// its own server sidecar on the veth address.
	backA, backB := tpStartBackend(t, srvNS, "A"), tpStartBackend(t, srvNS, "B")
	netnsMilagro := func(name, ns string, args ...string) *proc {
		return startProc(t, name, nil, "ip", append([]string{"netns", "exec", ns, milagroBin}, args...)...)
	}
	srvA := netnsMilagro("server A", srvNS, "server", "--listen", tpSrvAddr+":8443",
		"--target", fmt.Sprintf("127.0.0.1:%d", backA.port()), "--keys", serverADir, "--allow-id", clientID)
	srvB := netnsMilagro("server B", srvNS, "server", "--listen", tpSrvAddr+":8444",
		"--target", fmt.Sprintf("127.0.0.1:%d", backB.port()), "--keys", serverBDir, "--allow-id", clientID)

	// The app namespace: the client sidecar takes every redirected
	// connection and picks the upstream by the original destination. The
	// last two routes lead to server B but want server A's identity: one
	// as a pattern (the client refuses what B proves), one literally (B
	// cannot prove it and refuses).
	client := netnsMilagro("client", appNS, "client", "--transparent", "--listen", tpListen, "--keys", clientDir,
		"--route", "10.232.0.9:80="+tpSrvAddr+":8443@"+serverID,
		"--route", "10.232.0.10:80="+tpSrvAddr+":8444@"+tpServerB,
		"--route", "10.232.0.12:80="+tpSrvAddr+":8444@spiffe://test.example/ns/pay/**",
		"--route", "10.232.0.13:80="+tpSrvAddr+":8444@"+serverID)
	tpWaitLog(t, srvA, 20*time.Second, `"message":"server ready"`, `"listen":"`+tpSrvAddr+`:8443"`)
	tpWaitLog(t, srvB, 20*time.Second, `"message":"server ready"`, `"listen":"`+tpSrvAddr+`:8444"`)
	var client6 *proc
	if ipv6 == nil {
		// The route is written the long way round on purpose: it must
		// still match the original destination SO_ORIGINAL_DST reports.
		client6 = netnsMilagro("client (IPv6)", appNS, "client", "--transparent", "--listen", "[::1]:15006", "--keys", clientDir,
			"--route", "[FD00:232:0:0::9]:80="+tpSrvAddr+":8443@"+serverID)
	}
	tpWaitLog(t, client, 20*time.Second, `"message":"client ready"`, `"listen":"`+tpListen+`"`)
	if client6 != nil {
		tpWaitLog(t, client6, 20*time.Second, `"message":"client ready"`, `"listen":"[::1]:15006"`)
	}
	t.Logf("sidecars ready after %v", time.Since(start).Round(time.Millisecond))

	// The app talks to both services at once, several connections each;
	// every one must reach the backend of its original destination and
	// come back byte for byte.
	type job struct{ addr, want string }
	jobs := []job{}
	for range 4 {
		jobs = append(jobs, job{"10.232.0.9:80", "backend A"}, job{"10.232.0.10:80", "backend B"})
	}
	wantA, wantB := int64(4), int64(4)
	if client6 != nil {
		jobs = append(jobs, job{"[fd00:232::9]:80", "backend A"}, job{"[fd00:232::9]:80", "backend A"})
		wantA += 2
	}
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() {
			payload := make([]byte, 128<<10+i)
			_, _ = rand.Read(payload)
			greeting, echo, err := tpAppExchange(appNS, j.addr, payload)
			switch {
			case err != nil:
				t.Errorf("app → %s: %v", j.addr, err)
			case greeting != j.want:
				t.Errorf("app → %s reached %q, want %q", j.addr, greeting, j.want)
			case !bytes.Equal(echo, payload):
				t.Errorf("app → %s: echo of %d bytes differs from the %d sent", j.addr, len(echo), len(payload))
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if a, b := backA.accepts.Load(), backB.accepts.Load(); a != wantA || b != wantB {
		t.Errorf("backends saw %d and %d connections, want %d and %d", a, b, wantA, wantB)
	}
	t.Logf("%d intercepted connections carried after %v", len(jobs), time.Since(start).Round(time.Millisecond))

	// Each server sidecar authenticated the client's identity, and the
	// connection came over the veth pair from the app namespace.
	for _, s := range []*proc{srvA, srvB} {
		tpWaitLog(t, s, 5*time.Second, `"message":"session open"`, `"client":"`+clientID+`"`, `"remote":"`+tpAppAddr+`:`)
	}
	// The client verified each upstream's identity.
	tpWaitLog(t, client, 5*time.Second, `"message":"session open"`, `"upstream":"`+tpSrvAddr+`:8443"`, `"server":"`+serverID+`"`)
	tpWaitLog(t, client, 5*time.Second, `"message":"session open"`, `"upstream":"`+tpSrvAddr+`:8444"`, `"server":"`+tpServerB+`"`)
	if client6 != nil {
		tpWaitLog(t, client6, 5*time.Second, `"message":"session open"`, `"upstream":"`+tpSrvAddr+`:8443"`, `"server":"`+serverID+`"`)
	}

	// Redirected, but no route for the original destination (another IP,
	// or a routed IP on another port): the client closes the connection.
	for _, addr := range []string{"10.232.0.11:80", "10.232.0.9:81"} {
		if err := tpAppRefused(appNS, addr); err != nil {
			t.Errorf("app → %s (no route): %v", addr, err)
		}
		tpWaitLog(t, client, 5*time.Second, `"message":"transparent: no route for the original destination; closing"`, `"destination":"`+addr+`"`)
	}
	// A connection straight to the listener was not redirected: its
	// original destination is the listener itself, which is no route.
	if err := tpAppRefused(appNS, tpListen); err != nil {
		t.Errorf("app → %s (the listener itself): %v", tpListen, err)
	}
	tpWaitLog(t, client, 5*time.Second, `"message":"transparent: no route for the original destination; closing"`, `"destination":"`+tpListen+`"`)

	// Routes whose --verify-id server B cannot prove: no stream, the app's
	// connection is closed, and backend B never sees it.
	if err := tpAppRefused(appNS, "10.232.0.12:80"); err != nil {
		t.Errorf("app → 10.232.0.12:80 (identity pattern B does not match): %v", err)
	}
	tpWaitLog(t, client, 10*time.Second, `"message":"connection refused: no secure stream"`, `"upstream":"`+tpSrvAddr+`:8444"`,
		`does not match --verify-id \"spiffe://test.example/ns/pay/**\"`)
	if err := tpAppRefused(appNS, "10.232.0.13:80"); err != nil {
		t.Errorf("app → 10.232.0.13:80 (identity B does not have): %v", err)
	}
	tpWaitLog(t, srvB, 10*time.Second, `"message":"handshake failed"`, `"remote":"`+tpAppAddr+`:`, `client asked for \"`+serverID+`\"`)
	tpWaitLog(t, client, 10*time.Second, `"message":"connection refused: no secure stream"`, `"upstream":"`+tpSrvAddr+`:8444"`, `handshake_failure`)
	if a, b := backA.accepts.Load(), backB.accepts.Load(); a != wantA || b != wantB {
		t.Errorf("after the refusals the backends saw %d and %d connections, want %d and %d", a, b, wantA, wantB)
	}
	if tpLogHas(client.stderr.String(), `"message":"session open"`, `"server":"`+tpServerB+`"`, `"upstream":"`+tpSrvAddr+`:8443"`) ||
		tpLogHas(client.stderr.String(), `"message":"session open"`, `"server":"`+serverID+`"`, `"upstream":"`+tpSrvAddr+`:8444"`) {
		t.Errorf("the client opened a session with the wrong identity:\n%s", client.stderr.String())
	}

	// Clean shutdown of all the sidecars.
	if client6 != nil {
		client6.stop()
	}
	client.stop()
	srvA.stop()
	srvB.stop()
	if m := regexp.MustCompile(`"level":"(error|fatal|panic)"`).FindString(client.stderr.String()); m != "" {
		t.Errorf("client logged %s:\n%s", m, client.stderr.String())
	}
	t.Logf("done after %v", time.Since(start).Round(time.Millisecond))
}
