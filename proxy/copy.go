package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// closeWriter is implemented by *net.TCPConn, *net.UnixConn and the secure
// streams of package psk: it ends one direction and keeps the other.
type closeWriter interface {
	CloseWrite() error
}

// Stats counts what Pipe moved.
type Stats struct {
	AToB, BToA int64
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
func Pipe(ctx context.Context, a, b net.Conn, idle time.Duration) (Stats, error) {
	var st Stats
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		var tick <-chan time.Time
		if idle > 0 {
			t := time.NewTicker(max(idle/4, 10*time.Millisecond))
			defer t.Stop()
			tick = t.C
		}
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				closeBoth()
				return
			case <-tick:
				if time.Since(time.Unix(0, last.Load())) >= idle {
					closeBoth()
					return
				}
			}
		}
	}()
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn, n *int64) {
		buf := make([]byte, 32<<10)
		var err error
		for {
			nr, rerr := src.Read(buf)
			if nr > 0 {
				last.Store(time.Now().UnixNano())
				nw, werr := dst.Write(buf[:nr])
				*n += int64(nw)
				if werr != nil {
					err = werr
					break
				}
			}
			if rerr != nil {
				if rerr != io.EOF {
					err = rerr
				}
				break
			}
		}
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
		errc <- err
	}
	go cp(b, a, &st.AToB)
	go cp(a, b, &st.BToA)
	e1, e2 := <-errc, <-errc
	closeBoth()
	return st, firstReal(e1, e2)
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
