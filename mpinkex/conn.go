package mpinkex

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// DefaultStepTimeout bounds each read of a handshake when the config sets none.
const DefaultStepTimeout = 10 * time.Second

// deadliner is implemented by net.Conn and friends.
type deadliner interface {
	SetDeadline(t time.Time) error
}

// stepper runs the I/O of one handshake: per-step deadlines on connections
// that support them, and cancellation by the context (which, like
// crypto/tls's HandshakeContext, interrupts a blocked read by moving the
// deadline into the past).
type stepper struct {
	ctx     context.Context
	rw      io.ReadWriter
	d       deadliner
	timeout time.Duration
	stop    func() bool

	closed   bool
	closeErr error
}

func newStepper(ctx context.Context, rw io.ReadWriter, timeout time.Duration) *stepper {
	if timeout <= 0 {
		timeout = DefaultStepTimeout
	}
	s := &stepper{ctx: ctx, rw: rw, timeout: timeout, stop: func() bool { return true }}
	if d, ok := rw.(deadliner); ok {
		s.d = d
		s.stop = context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
	}
	return s
}

// close releases the context watcher and clears the deadline. It returns
// the context's error if the watcher had already fired (the connection's
// deadline is then in the past and the handshake must not be reported as a
// success, as in crypto/tls). It is idempotent.
func (s *stepper) close() error {
	if s.closed {
		return s.closeErr
	}
	s.closed = true
	if s.stop() {
		if s.d != nil {
			_ = s.d.SetDeadline(time.Time{})
		}
		return nil
	}
	s.closeErr = s.ctx.Err()
	return s.closeErr
}

func (s *stepper) arm() error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if s.d == nil {
		return nil
	}
	t := time.Now().Add(s.timeout)
	if dl, ok := s.ctx.Deadline(); ok && dl.Before(t) {
		t = dl
	}
	if err := s.d.SetDeadline(t); err != nil {
		return err
	}
	// A cancel between the check above and SetDeadline ran the watcher
	// before it: its past deadline is gone, overwritten by t. The context
	// reports the cancel before the watcher runs, so checking again covers
	// that window.
	if err := s.ctx.Err(); err != nil {
		_ = s.d.SetDeadline(time.Unix(1, 0))
		return err
	}
	return nil
}

// wrap turns an I/O error into a context error when the context ended.
func (s *stepper) wrap(err error) error {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	cerr := s.ctx.Err()
	if dl, ok := s.ctx.Deadline(); cerr == nil && ok && !time.Now().Before(dl) {
		// arm used the context's deadline as the connection's, and the
		// connection's timer may fire before the context's own.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	return err
}

func (s *stepper) read() ([]byte, error) {
	if err := s.arm(); err != nil {
		return nil, err
	}
	b, err := ReadFrame(s.rw)
	return b, s.wrap(err)
}

func (s *stepper) write(msg []byte) error {
	if err := s.arm(); err != nil {
		return err
	}
	return s.wrap(WriteFrame(s.rw, msg))
}
