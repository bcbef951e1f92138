package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and the secure
// streams of package psk: it ends one direction and keeps the other.
type closeWriter interface {
	CloseWrite() error
}

// ReadWaiter is implemented by connections that can wait until a Read would
// not block without consuming anything (psk.Stream). Pipe uses it, and the
// readiness of sockets, so that an idle connection holds no copy buffer.
type ReadWaiter interface {
	WaitRead() error
}

// Stats counts what Pipe moved.
type Stats struct {
	AToB, BToA int64
}

// copyBufSize is the most one read moves; buffers are shared through
// bufPool and held only while data is in flight.
const copyBufSize = 32 << 10

var (
	bufPool     = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
	buffersHeld atomic.Int64 // taken from bufPool and not yet given back
)

func getBuf() *[]byte {
	buffersHeld.Add(1)
	return bufPool.Get().(*[]byte)
}

func putBuf(bp *[]byte) {
	buffersHeld.Add(-1)
	bufPool.Put(bp)
}

// Pipe copies a→b and b→a until both directions have ended, then closes both.
// When one side's reads end (EOF), the other side gets a half-close
// (CloseWrite) so its peer sees EOF while the reverse direction keeps
// flowing. When one side's reads end with an error instead (a reset, a
// secure session that died), the other side is reset (TCP) rather than
// closed, so that its peer cannot take a truncated transfer for a complete
// one. If idle > 0 and no byte moves in either direction for idle, both
// are closed. A cancelled ctx closes both at once. The error is the first
// that is not a normal end (EOF, closed connection).
//
// An idle Pipe costs two goroutines (the caller's and one more) and no
// buffer: sockets are read only once readable (through syscall.RawConn) and
// connections implementing ReadWaiter are waited on before a buffer is
// taken from a shared pool. Other connections hold a buffer while blocked
// in Read.
func Pipe(ctx context.Context, a, b net.Conn, idle time.Duration) (Stats, error) {
	var st Stats
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	stopCtx := context.AfterFunc(ctx, closeBoth)
	defer stopCtx()
	var w *idleWatch
	if idle > 0 {
		w = newIdleWatch(idle, closeBoth)
		defer w.stop()
	}
	cp := func(dst, src net.Conn, n *int64) error {
		err := copyHalf(dst, src, n, w)
		if err == nil {
			if cw, ok := dst.(closeWriter); ok {
				err = cw.CloseWrite()
			} else {
				// No half-close: closing is the only way to signal EOF.
				closeBoth()
			}
		} else {
			// An abnormal end (reset, truncated secure session) must not
			// reach the other peer as a clean EOF: reset it where the
			// connection allows (TCP), instead of a FIN. (net.ErrClosed is
			// our own closeBoth: idle timeout, cancel, the other direction.)
			if l, ok := dst.(interface{ SetLinger(int) error }); ok && !errors.Is(err, net.ErrClosed) {
				_ = l.SetLinger(0)
			}
			closeBoth()
		}
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- cp(b, a, &st.AToB) }()
	e2 := cp(a, b, &st.BToA)
	e1 := <-errc
	closeBoth()
	return st, firstReal(e1, e2)
}

// copyHalf copies src to dst until src's EOF (nil) or an error.
func copyHalf(dst, src net.Conn, n *int64, w *idleWatch) error {
	next := chunkReader(src)
	for {
		bp, nr, rerr := next()
		if nr > 0 {
			w.touch()
			nw, werr := dst.Write((*bp)[:nr])
			*n += int64(nw)
			putBuf(bp)
			if werr != nil {
				return werr
			}
		} else if bp != nil {
			putBuf(bp)
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// chunkReader returns a function that reads src's next chunk into a pooled
// buffer (bp is nil when no buffer was taken; the caller returns bp).
func chunkReader(src net.Conn) func() (bp *[]byte, n int, err error) {
	if sc, ok := src.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rawChunkReader(src, rc)
		}
	}
	if rw, ok := src.(ReadWaiter); ok {
		return func() (*[]byte, int, error) {
			if err := rw.WaitRead(); err != nil {
				return nil, 0, err
			}
			bp := getBuf()
			n, err := src.Read(*bp)
			return bp, n, err
		}
	}
	return func() (*[]byte, int, error) {
		bp := getBuf()
		n, err := src.Read(*bp)
		return bp, n, err
	}
}

// rawChunkReader reads a socket with read(2) from inside RawConn.Read: a
// buffer is taken only when the socket is readable, and would-block gives
// it back before the goroutine parks in the poller. Deadlines and Close
// work as for src.Read.
func rawChunkReader(src net.Conn, rc syscall.RawConn) func() (*[]byte, int, error) {
	return func() (*[]byte, int, error) {
		var bp *[]byte
		var n int
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			bp = getBuf()
			for {
				n, serr = syscall.Read(int(fd), *bp)
				if serr != syscall.EINTR {
					break
				}
			}
			if serr == syscall.EAGAIN {
				putBuf(bp)
				bp = nil
				return false // wait for readability, holding nothing
			}
			return true
		})
		if err != nil { // closed, deadline: no read happened
			if bp != nil {
				putBuf(bp)
			}
			return nil, 0, err
		}
		if serr != nil {
			return bp, 0, &net.OpError{Op: "read", Net: src.LocalAddr().Network(), Source: src.LocalAddr(),
				Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", serr)}
		}
		if n == 0 {
			return bp, 0, io.EOF
		}
		return bp, n, nil
	}
}

// idleWatch closes both sides once nothing has moved for idle. It holds a
// timer, not a goroutine, while it waits.
type idleWatch struct {
	idle  time.Duration
	fire  func()
	last  atomic.Int64 // unix ns of the last chunk moved
	mu    sync.Mutex
	t     *time.Timer
	ended bool
}

func newIdleWatch(idle time.Duration, fire func()) *idleWatch {
	w := &idleWatch{idle: idle, fire: fire}
	w.last.Store(time.Now().UnixNano())
	w.mu.Lock()
	w.t = time.AfterFunc(idle, w.check)
	w.mu.Unlock()
	return w
}

func (w *idleWatch) touch() {
	if w != nil {
		w.last.Store(time.Now().UnixNano())
	}
}

// check runs in the timer's own goroutine.
func (w *idleWatch) check() {
	w.mu.Lock()
	if w.ended {
		w.mu.Unlock()
		return
	}
	if quiet := time.Since(time.Unix(0, w.last.Load())); quiet < w.idle {
		w.t.Reset(w.idle - quiet)
		w.mu.Unlock()
		return
	}
	w.ended = true
	w.mu.Unlock()
	w.fire()
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.ended = true
	w.t.Stop()
	w.mu.Unlock()
}

func firstReal(errs ...error) error {
	for _, e := range errs {
		if e != nil && !isNormalEnd(e) {
			return e
		}
	}
	return nil
}

func isNormalEnd(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}
