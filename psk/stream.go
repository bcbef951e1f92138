package psk

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/milagro-sc/milagro/psk/internal/yamux"
)

// Stream is one proxied connection: a yamux stream whose header exchange
// is done. It is a net.Conn with half-close:
//
//   - CloseWrite sends FIN. The peer reads the data written so far and then
//     io.EOF; it can go on writing, and this side can go on reading.
//   - Close is CloseWrite and also ends reading here: a blocked Read
//     returns, later Reads and Writes fail with net.ErrClosed. Whatever the
//     peer still sends is read and discarded until it closes its side; the
//     peer is not told that data was dropped (its writes succeed), as if
//     this side had read it.
//   - Reset ends the stream abnormally, as a TCP reset ends a connection:
//     yamux's RST, after which the peer's Reads and Writes fail with
//     ErrStreamReset (never a clean io.EOF), and here with net.ErrClosed.
//   - If this side has sent FIN and the peer neither closes its side nor
//     sends data for Config.StreamCloseTimeout, yamux resets the stream:
//     both sides' Reads and Writes fail with ErrStreamReset. (Negative:
//     only a stream Closed here is reset, ClosedStreamTimeout after the
//     Close.)
//   - A stream ends with io.EOF only if the peer's FIN was received. If the
//     session ends first (Close, idle timeout, keepalive failure, I/O
//     error), Read returns an error wrapping ErrSessionClosed after the data
//     already received, never a clean io.EOF, so a truncated transfer is
//     never mistaken for a complete one. Reads and Writes blocked when the
//     session ends return at once, and later ones fail at once.
//
// Read and Write deadlines work as for net.Conn and fail with an error that
// wraps os.ErrDeadlineExceeded. Read, Write and Close may be called
// concurrently.
type Stream struct {
	ys *yamux.Stream
	s  *Session
	tr *streamTrack

	mu       sync.Mutex
	closed   bool        // Close was called
	wclosed  bool        // FIN sent
	readDone bool        // Read reached EOF or a terminal error
	resetT   *time.Timer // resetUnlessPeerCloses's, once armed
	resetDue time.Time
}

var _ interface {
	net.Conn
	CloseWrite() error
} = (*Stream)(nil)

func (s *Session) wrap(ys *yamux.Stream) *Stream {
	st := &Stream{ys: ys, s: s}
	s.tab.attach(ys.StreamID(), st)
	if s.ended.Load() {
		st.wake() // the session ended before endStreams could see st
	}
	return st
}

// pastDeadline is the deadline that makes a blocked yamux Read or Write
// return at once.
var pastDeadline = time.Unix(1, 0)

// wake makes every Read and Write on the stream, blocked or to come, return
// at once once the data already received is read. Session.endStreams calls
// it when the session ends, after setting ended: from then on the deadlines
// stay in the past (setReadDeadlineLocked, SetWriteDeadline), and
// sessionEnd reports the ErrTimeout they give as the session's end.
func (st *Stream) wake() {
	st.mu.Lock()
	defer st.mu.Unlock()
	_ = st.ys.SetReadDeadline(pastDeadline)
	_ = st.ys.SetWriteDeadline(pastDeadline)
}

// sessionEnd translates the ErrTimeout of a yamux Read or Write that wake
// cut short into the error yamux gives once the session is closed.
func (st *Stream) sessionEnd(err error) error {
	if errors.Is(err, yamux.ErrTimeout) && st.s.ended.Load() {
		return yamux.ErrSessionShutdown
	}
	return err
}

// setReadDeadline sets the yamux read deadline whether or not the stream is
// closed; once the session has ended it stays in the past (see wake).
func (st *Stream) setReadDeadline(t time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.setReadDeadlineLocked(t)
}

func (st *Stream) setReadDeadlineLocked(t time.Time) {
	if st.s.ended.Load() || st.closed { // closed: discard's Reads must not wait
		t = pastDeadline
	}
	_ = st.ys.SetReadDeadline(t)
}

// StreamID is the yamux stream ID (odd: streams are opened by the client).
func (st *Stream) StreamID() uint32 { return st.ys.StreamID() }

// Session returns the session carrying the stream.
func (st *Stream) Session() *Session { return st.s }

// Read reads stream data: io.EOF only after the peer's FIN (see Stream).
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return 0, errStreamClosed("read")
	}
	st.mu.Unlock()

	n, err := st.readRaw(p)
	if err != nil {
		err = st.sessionEnd(err)
	}

	st.mu.Lock()
	closed := st.closed
	if err != nil && !closed && !errors.Is(err, yamux.ErrTimeout) {
		st.readDone = true
	}
	st.mu.Unlock()
	if closed {
		// Close ran while this Read waited: whatever the wake-up brought
		// (data that arrived before the reader ran again, too) is
		// discarded, as everything after Close is.
		return 0, errStreamClosed("read")
	}
	if err == nil {
		return n, nil
	}
	return n, st.readErr(err)
}

// readRaw reads the yamux stream and keeps the count of buffered bytes
// (Readable). Reads of the stream header and status byte go through it.
func (st *Stream) readRaw(p []byte) (int, error) {
	n, err := st.ys.Read(p)
	if n > 0 && st.tr != nil {
		st.tr.avail.Add(-int64(n))
	}
	return n, err
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// Readable reports whether a Read would return at once: stream data is
// buffered, the peer's FIN or a reset has arrived, the stream was closed
// here, or the session has ended. Read deadlines are not considered.
func (st *Stream) Readable() bool {
	if st.s.ended.Load() {
		return true
	}
	st.mu.Lock()
	done := st.closed || st.readDone
	st.mu.Unlock()
	tr := st.tr
	// A stream that had already left the stream table when it was wrapped
	// has finished.
	return done || tr == nil || tr.avail.Load() > 0 || tr.ended.Load()
}

// Buffered returns how many bytes a Read returns at once: stream data
// received and not yet read (0 once the stream is closed here, and while
// the receive goroutine is filling the stream's buffer). Such a Read waits
// for nothing, neither for data nor for the connection (a window update it
// causes is queued, not written), so the f of NotifyReadable may make it.
func (st *Stream) Buffered() int {
	st.mu.Lock()
	closed := st.closed
	st.mu.Unlock()
	if closed || st.tr == nil || st.tr.filling.Load() {
		return 0
	}
	return int(max(st.tr.avail.Load(), 0))
}

// Shared reports whether other streams share st's session now. The f of
// NotifyReadable runs on the session's receive goroutine, so the time it
// takes delays every stream's data, not only st's: a caller may do more
// there for a stream that has the session to itself.
func (st *Stream) Shared() bool { return st.s.tab.len() > 1 }

// NotifyReadable has f called whenever the stream may have become
// readable (see Readable): after data, the peer's FIN or a reset reached
// it, after Close, and when the session ends; and once now if it is
// readable already. Calls may be spurious; check Readable. f runs on the
// session's receive goroutine or the one closing, so it must not block
// (start a goroutine, signal a channel; a Read of at most Buffered bytes
// and non-blocking writes elsewhere are fine). A later call replaces f; nil
// stops the calls. Once the stream is closed here, f is called once (it is
// readable for good) and not kept: the notifications then drain what the
// peer still sends (see Close). With it a proxy needs no goroutine waiting in Read on
// a quiet stream.
func (st *Stream) NotifyReadable(f func()) {
	if st.tr == nil {
		if f != nil {
			f()
		}
		return
	}
	st.mu.Lock()
	if st.closed {
		// Closed here: readable for good, and the notifications are
		// discard's (Close swaps it in after setting closed).
		st.mu.Unlock()
		if f != nil {
			f()
		}
		return
	}
	if f == nil {
		st.tr.notify.Store(nil)
		st.mu.Unlock()
		return
	}
	st.tr.notify.Store(&f)
	st.mu.Unlock()
	if st.Readable() {
		f()
	}
}

// Cut reports whether the stream was reset (by either side) or its
// session has ended: Write would fail, and no FIN can be sent. It is nil
// while the stream can still be written to, whatever its reads have
// seen. A proxy whose reads of the stream have ended cleanly (io.EOF)
// asks it when NotifyReadable calls again: the peer's reset or the
// session's end then ends the other direction too.
func (st *Stream) Cut() error {
	if st.s.ended.Load() {
		return st.s.closedErr()
	}
	if st.tr != nil && st.tr.reset.Load() {
		return fmt.Errorf("%w (after the peer's FIN)", ErrStreamReset)
	}
	return nil
}

// WaitRead blocks until a Read would not block: stream data is buffered
// (nil), the peer's FIN arrived (io.EOF), or Read would fail (the same
// error). It consumes nothing and honours the read deadline. A copier that
// blocks a goroutine per stream can use it to take a buffer only once
// there is something to copy (package proxy uses NotifyReadable instead,
// and holds no goroutine on a quiet stream).
func (st *Stream) WaitRead() error {
	_, err := st.Read(nil) // yamux: an empty Read waits for data and takes none
	return err
}

func (st *Stream) readErr(err error) error {
	switch {
	case err == io.EOF:
		if st.s.tab.finReceived(st.tr) {
			return io.EOF
		}
		if !st.s.ended.Load() && !st.s.mux.IsClosed() || st.tr != nil && st.tr.reset.Load() {
			// No FIN, and the session lives (yamux marks it closed
			// before it force-closes its streams): yamux force-closed
			// this stream, its close timeout, whose reset goes out
			// right after, and reads that as an EOF.
			return fmt.Errorf("%w (read)", ErrStreamReset)
		}
		return st.s.closedErr()
	case errors.Is(err, yamux.ErrTimeout):
		return &timeoutError{op: "read"}
	case errors.Is(err, yamux.ErrConnectionReset):
		return fmt.Errorf("%w (read)", ErrStreamReset)
	case errors.Is(err, yamux.ErrSessionShutdown):
		return st.s.closedErr()
	}
	return fmt.Errorf("psk: stream read: %w", err)
}

// Write writes stream data, blocking while the peer's window is full.
func (st *Stream) Write(p []byte) (int, error) {
	n, err := st.ys.Write(p)
	if err != nil {
		err = st.writeErr(st.sessionEnd(err))
	}
	return n, err
}

func (st *Stream) writeErr(err error) error {
	switch {
	case errors.Is(err, yamux.ErrTimeout):
		return &timeoutError{op: "write"}
	case errors.Is(err, yamux.ErrConnectionReset):
		return fmt.Errorf("%w (write)", ErrStreamReset)
	case errors.Is(err, yamux.ErrSessionShutdown):
		return st.s.closedErr()
	case errors.Is(err, yamux.ErrStreamClosed):
		st.mu.Lock()
		local := st.wclosed
		st.mu.Unlock()
		if local {
			return errStreamClosed("write")
		}
		return st.s.closedErr()
	case errors.Is(err, yamux.ErrConnectionWriteTimeout):
		return fmt.Errorf("psk: stream write: session write timeout: %w", err)
	}
	return fmt.Errorf("psk: stream write: %w", err)
}

func errStreamClosed(op string) error {
	return fmt.Errorf("psk: stream %s: %w", op, net.ErrClosed)
}

// Reset ends the stream at once and tells the peer with yamux's RST: its
// Reads and Writes fail with ErrStreamReset, so that it cannot take what
// it received for the whole (package proxy resets a stream when the
// connection piped to it ended abnormally). Here Reads and Writes fail
// with net.ErrClosed, and Close does nothing more.
func (st *Stream) Reset() error {
	st.mu.Lock()
	wasClosed := st.closed
	st.closed, st.wclosed = true, true
	st.mu.Unlock()
	err := st.ys.Reset()
	if st.tr != nil && !wasClosed {
		// Read now fails at once. (Closed before: the notifications are
		// discard's, and nothing is left to drain.)
		st.tr.readable()
	}
	if err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) {
			return nil // the session's end has reset it anyway
		}
		return fmt.Errorf("psk: stream reset: %w", err)
	}
	return nil
}

// CloseWrite sends FIN: the peer reads io.EOF after the data written so
// far. Reading is unaffected. Later Writes fail with net.ErrClosed.
func (st *Stream) CloseWrite() error {
	st.mu.Lock()
	if st.wclosed {
		st.mu.Unlock()
		return nil
	}
	st.wclosed = true
	st.mu.Unlock()
	return st.ys.Close() // yamux: a half-close (FIN)
}

// Close closes both directions (see Stream). It does not wait for the peer.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	fin := !st.wclosed
	st.wclosed = true
	drain := !st.readDone
	st.mu.Unlock()
	if drain {
		// Wake a blocked Read before the FIN can draw an answer. The
		// deadline stays in the past: discard's Reads never wait.
		_ = st.ys.SetReadDeadline(pastDeadline)
	}
	if fin {
		_ = st.ys.Close()
	}
	switch {
	case st.tr == nil:
		// It had left the table when wrapped: nothing is to come.
	case drain:
		// Read and discard what the peer still sends until its FIN, so
		// that it is not blocked on a full window and the stream can
		// finish: on the receive goroutine as data arrives, with no
		// goroutine waiting (a peer that never closes its side would
		// hold one for StreamCloseTimeout per stream). The function it
		// replaces is told that Read now fails at once.
		f := st.discard
		if old := st.tr.notify.Swap(&f); old != nil {
			(*old)()
		}
		if st.s.cfg.StreamCloseTimeout < 0 {
			st.resetUnlessPeerCloses(closedStreamTimeout) // yamux's timer is off
		}
		if st.tr.avail.Load() > 0 {
			// Data already buffered, and no frame may come to notify
			// (the peer may wait on the full window): discarded on a
			// goroutine of the session's, not here, as the receive
			// goroutine may hold the stream's receive lock while it
			// waits for the rest of a frame, for as long as the peer
			// takes (for ever if its link died: until the session ends).
			st.s.spawn(f)
		}
	default:
		st.tr.readable() // Read now fails at once
	}
	return nil
}

// discard reads and drops the data buffered for a stream closed here,
// without waiting for the peer: the read deadline is in the past, so a
// Read of an empty buffer returns at once. It runs as the stream's
// NotifyReadable function: on the receive goroutine after a frame, or
// on a goroutine of the session's (Close). While the receive goroutine
// is filling the stream's buffer it holds the stream's receive lock and
// a Read would wait for it: discard leaves the data to the notification
// that follows the frame. Once the session has ended there is nothing to
// unblock, and endStreams, which notifies every stream, runs before the
// connection closes, while the receive goroutine may still be waiting for
// the rest of a frame with the lock held.
func (st *Stream) discard() {
	if st.tr.filling.Load() || st.s.ended.Load() || st.tr.reset.Load() {
		// reset: nothing more comes, and yamux's close timeout leaves
		// the stream closed, not reset, so a Read would still wait for
		// the lock of a frame in progress.
		return
	}
	var buf [4096]byte
	for {
		if _, err := st.readRaw(buf[:]); err != nil {
			return
		}
	}
}

// CloseOrReset closes the stream as Close does, and resets it if the peer
// has not closed its side within d: for a stream that carries nothing the
// peer needs (an idle keep-alive connection closed by this side), whose
// peer may hold its end open until its next use, holding this side's
// session (and the stream) meanwhile.
func (st *Stream) CloseOrReset(d time.Duration) error {
	err := st.Close()
	st.resetUnlessPeerCloses(d)
	return err
}

// closedStreamTimeout is ClosedStreamTimeout, shortened by tests.
var closedStreamTimeout = ClosedStreamTimeout

// resetUnlessPeerCloses resets st if the peer has not closed its side
// within d: for a stream refused here, which a well-behaved peer closes
// on the status, and which a peer that keeps it open would otherwise hold
// for StreamCloseTimeout (5 min, restarted by each data frame). The reset
// drops whatever the peer has not read yet (the status byte of a client
// that has not read it within d: OpenTimeout, after which its Open has
// given up).
// One timer per stream: called again, the earlier bound stands.
func (st *Stream) resetUnlessPeerCloses(d time.Duration) {
	if st.tr == nil || d <= 0 {
		return
	}
	due := time.Now().Add(d)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.resetT != nil {
		// Stop fails once the timer has fired or the stream has gone
		// (whenGone stopped it): nothing is left to re-arm.
		if due.Before(st.resetDue) && st.resetT.Stop() {
			st.resetT.Reset(d)
			st.resetDue = due
		}
		return
	}
	t := time.AfterFunc(d, func() { _ = st.Reset() })
	st.resetT, st.resetDue = t, due
	st.s.tab.whenGone(st.tr, func() { t.Stop() })
}

// LocalAddr is the local TCP address of the session.
func (st *Stream) LocalAddr() net.Addr { return st.ys.LocalAddr() }

// RemoteAddr is the peer's TCP address.
func (st *Stream) RemoteAddr() net.Addr { return st.ys.RemoteAddr() }

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	if err := st.SetReadDeadline(t); err != nil {
		return err
	}
	return st.SetWriteDeadline(t)
}

// SetReadDeadline sets the deadline for pending and future Reads. Once the
// session has ended it changes nothing: Reads fail at once (after the data
// already received) with the session's error.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return errStreamClosed("set deadline")
	}
	st.setReadDeadlineLocked(t)
	return nil
}

// SetWriteDeadline sets the deadline for pending and future Writes. Once
// the session has ended it changes nothing: Writes fail at once with the
// session's error.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.s.ended.Load() {
		t = pastDeadline
	}
	return st.ys.SetWriteDeadline(t)
}

// timeoutError is a deadline expiry: a net.Error whose Timeout is true (as
// the net.Conn contract requires; net/http relies on it to tell its own
// deadline interrupts from real read errors) that wraps
// os.ErrDeadlineExceeded.
type timeoutError struct{ op string }

func (e *timeoutError) Error() string   { return "psk: stream " + e.op + ": i/o timeout" }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
func (e *timeoutError) Unwrap() error   { return os.ErrDeadlineExceeded }
