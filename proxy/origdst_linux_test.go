//go:build linux

package proxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOriginalDst redirects connections with iptables/ip6tables REDIRECT in
// a network namespace of its own and reads their original destinations:
// IPv4, IPv6, and IPv4 and IPv6 on a dual-stack listener. Ports whose two
// bytes differ catch byte-order mistakes. It needs root, ip and iptables,
// and skips without them.
func TestOriginalDst(t *testing.T) {
	if _, err := OriginalDst(notTCPConn{}); err == nil {
		t.Error("OriginalDst of a non-TCP connection: no error")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and iptables rules")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) is not installed")
	}
	// This goroutine's thread moves into a new network namespace and is
	// never unlocked: it exits with the test, so no other goroutine ever
	// runs there. Sockets made here, and commands started from here, live
	// in the new namespace.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %w: %s", name, args, err, bytes.TrimSpace(out))
		}
		return nil
	}
	// Commands started from this thread inherit its namespace; make sure
	// of it before touching routes and iptables: a new namespace has only lo.
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err != nil || bytes.Count(out, []byte("\n")) != 1 || !bytes.Contains(out, []byte(" lo:")) {
		t.Fatalf("child processes do not run in the new network namespace (%v): %s", err, out)
	}
	if err := run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	// Pick, per family, the first iptables that can add a nat rule here.
	pick := func(names ...string) (string, error) {
		var last error = fmt.Errorf("none of %v is installed", names)
		for _, n := range names {
			if _, err := exec.LookPath(n); err != nil {
				continue
			}
			if last = run(n, "-t", "nat", "-L", "OUTPUT", "-n"); last == nil {
				return n, nil
			}
		}
		return "", last
	}
	ipt4, err := pick("iptables", "iptables-legacy", "iptables-nft")
	if err != nil {
		t.Skipf("no usable iptables: %v", err)
	}
	ipt6, err6 := pick("ip6tables", "ip6tables-legacy", "ip6tables-nft")

	listen := func(network, addr string) (net.Listener, string) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, ""
		}
		t.Cleanup(func() { ln.Close() })
		return ln, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	}
	ln4, port4 := listen("tcp4", "127.0.0.1:0")
	if ln4 == nil {
		t.Fatal("no IPv4 loopback listener in the new namespace")
	}
	ln6, port6 := listen("tcp6", "[::1]:0")
	lnDual, portDual := listen("tcp", ":0")

	type tc struct {
		name string
		ln   net.Listener
		dial string
		want string
	}
	var cases []tc
	if err := run("ip", "route", "add", "10.232.0.0/24", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][]string{
		{"-d", "10.232.0.9", "--dport", "80", "--to-ports", port4},
		{"-d", "10.232.0.10", "--dport", "8080", "--to-ports", portDual},
	} {
		if err := run(ipt4, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", r[0], r[1], r[2], r[3], "-j", "REDIRECT", r[4], r[5]); err != nil {
			t.Fatal(err)
		}
	}
	cases = append(cases,
		tc{"ipv4", ln4, "10.232.0.9:80", "10.232.0.9:80"},
		tc{"not redirected", ln4, "127.0.0.1:" + port4, "127.0.0.1:" + port4},
	)
	if lnDual != nil {
		cases = append(cases, tc{"ipv4 on a dual-stack listener", lnDual, "10.232.0.10:8080", "10.232.0.10:8080"})
	}
	switch {
	case err6 != nil:
		t.Logf("IPv6 cases skipped: no usable ip6tables: %v", err6)
	case ln6 == nil:
		t.Log("IPv6 cases skipped: no ::1 in the new namespace")
	default:
		if err := run("ip", "-6", "route", "add", "fd00:232::/64", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
		for _, r := range [][]string{
			{"-d", "fd00:232::9", "--dport", "443", "--to-ports", port6},
			{"-d", "fd00:232::10", "--dport", "8443", "--to-ports", portDual},
		} {
			if err := run(ipt6, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", r[0], r[1], r[2], r[3], "-j", "REDIRECT", r[4], r[5]); err != nil {
				t.Fatal(err)
			}
		}
		cases = append(cases, tc{"ipv6", ln6, "[fd00:232::9]:443", "[fd00:232::9]:443"})
		if lnDual != nil {
			cases = append(cases, tc{"ipv6 on a dual-stack listener", lnDual, "[fd00:232::10]:8443", "[fd00:232::10]:8443"})
		}
	}

	for _, c := range cases {
		d, err := net.Dial("tcp", c.dial)
		if err != nil {
			t.Errorf("%s: dial %s: %v", c.name, c.dial, err)
			continue
		}
		a, err := c.ln.Accept()
		d.Close()
		if err != nil {
			t.Fatalf("%s: accept: %v", c.name, err)
		}
		got, err := OriginalDst(a)
		a.Close()
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got != netip.MustParseAddrPort(c.want) {
			t.Errorf("%s: original destination %v, want %s", c.name, got, c.want)
		}
	}
	t.Logf("%d cases with %s and %s", len(cases), ipt4, ipt6)
}

// notTCPConn is a net.Conn that is not TCP.
type notTCPConn struct{ net.Conn }
