package proxy

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestListenUnixBusyOwner: a live unix socket whose owner is busy (its
// backlog full, so that a dial fails with EAGAIN) is not taken for a stale
// one: Listen refuses instead of taking the path over.
func TestListenUnixBusyOwner(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "app.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // a live owner that is slow to accept
		t.Fatal(err)
	}
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Logf("dial while the backlog is full: %v", err)
			break
		}
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	fi1, _ := os.Lstat(path)
	ln, err := Listen("unix:"+path, 0)
	if err == nil {
		defer ln.Close()
		fi2, _ := os.Lstat(path)
		t.Errorf("Listen took over %s from a live, busy listener (inode changed: %v)", path, !os.SameFile(fi1, fi2))
	}
}
