package proxy

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in               string
		network, address string
		err              string
	}{
		{"127.0.0.1:8080", "tcp", "127.0.0.1:8080", ""},
		{":8443", "tcp", ":8443", ""},
		{"localhost:9000", "tcp", "localhost:9000", ""},
		{"[::1]:443", "tcp", "[::1]:443", ""},
		{"pay.prod:8443", "tcp", "pay.prod:8443", ""},
		{"unix:/run/app.sock", "unix", "/run/app.sock", ""},
		{"unix:relative.sock", "unix", "relative.sock", ""},
		{"unix:", "", "", "without a path"},
		{"127.0.0.1", "", "", "want HOST:PORT or unix:PATH"},
		{"", "", "", "want HOST:PORT or unix:PATH"},
		{"::1:80", "", "", "want HOST:PORT or unix:PATH"},
		{"/run/app.sock", "", "", "want HOST:PORT or unix:PATH"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			n, a, err := ParseAddr(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseAddr(%q) = %q, %q, %v; want error containing %q", tc.in, n, a, err, tc.err)
				}
				return
			}
			if err != nil || n != tc.network || a != tc.address {
				t.Fatalf("ParseAddr(%q) = %q, %q, %v; want %q, %q", tc.in, n, a, err, tc.network, tc.address)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"127.0.0.1:80", true},
		{"127.1.2.3:80", true},
		{"[::1]:80", true},
		{"[::ffff:127.0.0.1]:80", true},
		{"localhost:80", true},
		{"unix:/tmp/x.sock", true},
		{"0.0.0.0:80", false},
		{":80", false}, // all interfaces
		{"[::]:80", false},
		{"10.0.0.1:80", false},
		{"192.168.1.1:80", false},
		{"example.com:80", false},
		{"localhost.example.com:80", false},
		{"127.0.0.1", false}, // not an address
		{"unix:", false},
	} {
		if got := IsLoopback(tc.in); got != tc.want {
			t.Errorf("IsLoopback(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestListenTCP(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, ok := ln.Addr().(*net.TCPAddr); !ok {
		t.Fatalf("Listen(tcp) gave %T", ln.Addr())
	}
	// The same port again is refused with the address in the message.
	if ln2, err := Listen(ln.Addr().String(), 0); err == nil {
		ln2.Close()
		t.Fatal("second Listen on a bound port succeeded")
	} else if !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("error %q does not name the address", err)
	}
	if _, err := Listen("nonsense", 0); err == nil {
		t.Error("Listen(nonsense) succeeded")
	}
}

// shortTempDir returns a folder whose paths fit a sockaddr_un (108 bytes);
// t.TempDir can be too long.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "px")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func TestListenUnix(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "app.sock")
	addr := "unix:" + path

	ln, err := Listen(addr, 0)
	if err != nil {
		t.Fatal(err)
	}
	// It accepts and carries data.
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hi"))
		c.Close()
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	c.Close()

	// A live socket is not taken over, and not removed.
	if ln2, err := Listen(addr, 0); err == nil {
		ln2.Close()
		t.Fatal("Listen took over a socket another listener accepts on")
	} else if !strings.Contains(err.Error(), "another process is accepting on it") {
		t.Errorf("error %q", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("live socket file gone after refused Listen: %v", err)
	}

	// A stale socket (nothing accepts) is removed and replaced. Go's
	// UnixListener unlinks its file on Close, so make it stale by hand.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("socket file should stay behind: %v", err)
	}
	ln3, err := Listen(addr, 0)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	go func() {
		c, err := ln3.Accept()
		if err == nil {
			c.Close()
		}
	}()
	c, err = net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new listener: %v", err)
	}
	c.Close()
	ln3.Close()

	// A regular file at the path is not a stale socket: it is not removed
	// and Listen fails.
	reg := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(reg, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln4, err := Listen("unix:"+reg, 0); err == nil {
		ln4.Close()
		t.Fatal("Listen replaced a regular file")
	}
	if b, err := os.ReadFile(reg); err != nil || string(b) != "data" {
		t.Fatalf("regular file changed: %q, %v", b, err)
	}
}

// TestListenKeepAlive: keepAlive < 0 leaves TCP keep-alive off on accepted
// connections; 0 keeps Go's default (on).
func TestListenKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		keepAlive time.Duration
		want      int
	}{{-1, 0}, {0, 1}} {
		ln, err := Listen("127.0.0.1:0", tc.keepAlive)
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		rc, err := a.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		got := -1
		var gerr error
		_ = rc.Control(func(fd uintptr) { got, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE) })
		if gerr != nil || got != tc.want {
			t.Errorf("keepAlive %v: SO_KEEPALIVE %d (%v), want %d", tc.keepAlive, got, gerr, tc.want)
		}
		a.Close()
		c.Close()
		ln.Close()
	}
}
