package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// ParseAddr splits a listen or target address: "unix:PATH" is a Unix socket,
// anything else is "HOST:PORT" over TCP.
func ParseAddr(addr string) (network, address string, err error) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if p == "" {
			return "", "", errors.New("unix: address without a path")
		}
		return "unix", p, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("address %q: want HOST:PORT or unix:PATH: %w", addr, err)
	}
	return "tcp", addr, nil
}

// IsLoopback reports whether addr only reaches this host: a Unix socket, or
// a TCP address whose host is a loopback IP or "localhost".
func IsLoopback(addr string) bool {
	network, a, err := ParseAddr(addr)
	if err != nil {
		return false
	}
	if network == "unix" {
		return true
	}
	host, _, _ := net.SplitHostPort(a)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Listen opens a listener for addr. A stale Unix socket file left by a
// previous run is removed first (only if nothing accepts on it). keepAlive
// is the TCP keep-alive period of accepted connections as in
// net.ListenConfig: 0 is Go's default (15 s), negative turns it off — for
// connections whose liveness is checked otherwise (a secure session's own
// keepalive), or that never leave the host, which saves four setsockopt
// calls per accepted connection.
func Listen(addr string, keepAlive time.Duration) (net.Listener, error) {
	network, a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		// A socket file is stale, and taken over, only if connecting to it
		// is refused: a busy owner (backlog full: EAGAIN) or one we may
		// not reach (EACCES) is alive, and keeps its socket.
		if c, err := net.Dial("unix", a); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process is accepting on it", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("listen %s: cannot tell whether the socket file is stale: %w", addr, err)
		}
		if fi, err := os.Lstat(a); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(a)
		}
	}
	lc := net.ListenConfig{KeepAlive: keepAlive}
	ln, err := lc.Listen(context.Background(), network, a)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}
