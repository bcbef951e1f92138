package psk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v2/pkg/protocol/alert"
)

// closeGrace bounds the writes left when a session closes (close_notify,
// or a writer blocked on a peer that stopped reading).
const closeGrace = time.Second

// plainConn is what yamux runs on: the session's records with reads
// buffered (a record's plaintext is served across as many Reads as yamux
// makes) and writes packed into records of at most MaxRecordPlaintext
// bytes. The frame parsers follow yamux's frames
// in both directions for the stream table. Reads happen on yamux's receive
// goroutine; writes come one frame at a time (yamux's write lock) from the
// goroutine that sends the frame (a stream's writer, or yamux's send loop
// for a frame that queued: internal/yamux's DirectWrites); Close may come
// from anywhere.
type plainConn struct {
	app *appRecords
	rc  *recordConn
	tab *streamTable

	// setCause records why the session ended; the first cause wins.
	setCause func(error)
	// closing: Close has begun (yamux, or the session's own close).
	closing atomic.Bool

	rest []byte // plaintext of the last record not yet read by yamux
	in   frameParser
	rerr error
	// cur is the track of the inbound frame being parsed; ready are the
	// frames passed to yamux whole since the last Read (see deliver).
	cur   *streamTrack
	ready []readyFrame

	out  frameParser
	pend []byte // start of an incomplete frame, not yet sent
}

// readyFrame is an inbound frame that makes its stream readable: data or
// FIN or reset.
type readyFrame struct {
	tr  *streamTrack
	n   uint32 // data bytes
	end bool   // FIN or RST
}

func newPlainConn(app *appRecords, rc *recordConn, tab *streamTable, setCause func(error)) *plainConn {
	c := &plainConn{app: app, rc: rc, tab: tab, setCause: setCause, pend: make([]byte, 0, MaxRecordPlaintext)}
	c.in.complete = c.frameDone
	return c
}

// header is the inbound parser's header callback.
func (c *plainConn) header(h *[yHeaderLen]byte) error {
	tr, err := c.tab.inbound(h)
	c.cur = tr
	return err
}

// frameDone is called once a whole inbound frame has been read for yamux.
func (c *plainConn) frameDone(h *[yHeaderLen]byte) {
	typ, flags, _ := frameFields(h)
	if c.cur == nil || typ != yTypeData && typ != yTypeWindowUpdate {
		return
	}
	f := readyFrame{tr: c.cur, end: flags&(yFlagFIN|yFlagRST) != 0}
	if typ == yTypeData {
		f.n = binary.BigEndian.Uint32(h[8:12])
	}
	if f.n > 0 || f.end {
		c.ready = append(c.ready, f)
	}
}

// deliver tells the streams of the frames read so far that yamux has
// processed them. yamux's receive loop reads the connection only through
// its bufio.Reader, and calls Read again only once it has consumed — and
// handled, frame by frame — everything the earlier Reads returned: so at
// the start of a Read every whole frame returned before is in its
// stream's buffer (or has closed it), and Stream.Readable may say so.
//
// A frame that ended before the one yamux is reading now may belong to the
// same stream (a peer may pack frames into records as it likes): yamux
// then holds that stream's receive lock while it waits for this Read, and
// a Read of the stream from a notification here would wait for itself.
// The stream is marked filling meanwhile, so that Stream.Buffered says 0
// and a notified reader goes to another goroutine.
func (c *plainConn) deliver() {
	if len(c.ready) == 0 {
		return
	}
	if c.cur != nil && c.in.skip > 0 {
		c.cur.filling.Store(true)
		defer c.cur.filling.Store(false)
	}
	for i, f := range c.ready {
		if f.n > 0 {
			f.tr.avail.Add(int64(f.n))
		}
		if f.end {
			f.tr.ended.Store(true)
		}
		f.tr.readable()
		c.ready[i] = readyFrame{}
	}
	c.ready = c.ready[:0]
}

func (c *plainConn) Read(p []byte) (int, error) {
	c.deliver()
	if c.rerr != nil {
		return 0, c.rerr
	}
	if len(c.rest) == 0 {
		b, err := c.app.next()
		if err != nil {
			return 0, c.readFailed(err)
		}
		c.rest = b
	}
	n := copy(p, c.rest)
	c.rest = c.rest[n:]
	return c.track(p[:n])
}

// track passes the bytes just read through the inbound frame parser. A
// protocol violation ends the session, but the whole frames before the
// offending header still go to yamux (the error comes with the next
// Read): the stream table has already recorded them, and a FIN it saw
// must reach yamux too, or a reader of that stream would wait for a FIN
// the table no longer expects (its stream already left the table).
func (c *plainConn) track(b []byte) (int, error) {
	ok, err := c.in.feed(b, c.header)
	if err == nil {
		return len(b), nil
	}
	err = c.readFailed(err)
	if ok > 0 {
		return ok, nil
	}
	return 0, err
}

// closedHere reports whether err is only the failure of an I/O that
// Close cut short: yamux closed the connection (keepalive timeout, a
// peer's protocol violation) or the session was closed. Its cause is
// theirs, recorded where they end the session, not this "use of closed
// network connection".
func (c *plainConn) closedHere(err error) bool {
	return c.closing.Load() && errors.Is(err, net.ErrClosed)
}

func (c *plainConn) readFailed(err error) error {
	switch {
	case c.closedHere(err):
		c.rerr = err
		return err
	case c.rc.failure() != nil:
		err = c.rc.failure()
	case errors.Is(err, io.EOF):
		err = ErrPeerClosed
	case errors.Is(err, ErrTruncated):
	case errors.Is(err, ErrProtocol):
	case errors.Is(err, ErrBadRecord):
		err = unwrapPion(err)
	default:
		err = fmt.Errorf("psk: session read: %w", unwrapPion(err))
	}
	c.rerr = err
	c.setCause(err)
	return err
}

// Write carries yamux's frames in DTLS records. yamux writes each frame
// as two Writes, the 12-byte header and then the body; sent as they come,
// every data frame would cost a 12-byte record (37 bytes of DTLS overhead,
// one AEAD seal, one TCP write) before its body. Instead the bytes of a
// frame are packed into records of up to MaxRecordPlaintext bytes and a
// record is cut short only where a frame ends: a frame is useless to the
// peer until it is complete, so holding back its incomplete start delays
// nothing. The records of one Write go to the socket in as few TCP writes
// as possible.
func (c *plainConn) Write(b []byte) (int, error) {
	c.tab.writeBegin()
	defer c.tab.writeEnd()
	_, _ = c.out.feed(b, c.tab.outbound) // outbound never fails
	if h := testHookAfterFeed.Load(); h != nil {
		(*h)(b)
	}
	c.rc.beginBatch()
	err := c.writeRecords(b)
	if ferr := c.rc.endBatch(); err == nil {
		err = ferr
	}
	if err != nil {
		err = fmt.Errorf("psk: session write: %w", unwrapPion(err))
		if !c.closedHere(err) {
			c.setCause(err)
		}
		return 0, err
	}
	return len(b), nil
}

func (c *plainConn) writeRecords(b []byte) error {
	for len(b) > 0 {
		if len(c.pend) == 0 && len(b) >= MaxRecordPlaintext {
			if err := c.app.write(b[:MaxRecordPlaintext]); err != nil {
				return err
			}
			b = b[MaxRecordPlaintext:]
			continue
		}
		k := min(len(b), MaxRecordPlaintext-len(c.pend))
		c.pend = append(c.pend, b[:k]...)
		b = b[k:]
		if len(c.pend) == MaxRecordPlaintext {
			if err := c.flushPending(); err != nil {
				return err
			}
		}
	}
	if c.out.atBoundary() {
		return c.flushPending()
	}
	return nil
}

func (c *plainConn) flushPending() error {
	if len(c.pend) == 0 {
		return nil
	}
	err := c.app.write(c.pend)
	c.pend = c.pend[:0]
	return err
}

// Close sends close_notify (bounded by closeGrace) and closes the TCP
// connection.
func (c *plainConn) Close() error {
	c.closing.Store(true)
	c.rc.beginClose(closeGrace)
	// The peer may be gone already: its absence is no error of ours.
	_ = c.app.writeAlert(alert.Warning, alert.CloseNotify)
	// A Write under way may hold a batch open, with close_notify now in
	// it: it goes out before the connection closes.
	_ = c.rc.flush()
	if err := c.rc.Conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (c *plainConn) LocalAddr() net.Addr  { return c.rc.LocalAddr() }
func (c *plainConn) RemoteAddr() net.Addr { return c.rc.RemoteAddr() }

// testHookAfterFeed, set by tests only, runs in Write between counting the
// frames and writing them.
var testHookAfterFeed atomic.Pointer[func(b []byte)]
