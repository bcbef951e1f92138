package psk

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// yamux v0 frame header (hashicorp/yamux spec.md): version, type, flags,
// stream ID, length; 12 bytes, big-endian.
const (
	yHeaderLen        = 12
	yTypeData         = 0
	yTypeWindowUpdate = 1
	yFlagSYN          = 1
	yFlagFIN          = 4
	yFlagRST          = 8
)

// frameParser follows the yamux frame boundaries in one direction of the
// byte stream, which passes through unchanged, and calls fn for each
// header.
type frameParser struct {
	hdr  [yHeaderLen]byte
	n    int
	skip uint32 // data-frame body bytes still to pass
	// complete, if set, is called with each frame's header once its last
	// byte has passed (the header for frames without a body).
	complete func(h *[yHeaderLen]byte)
}

// feed parses b. When fn rejects a header, feed returns the error and how
// many bytes of b precede that header (0 if it began in an earlier b):
// the frames before it are whole and valid, and the reader hands them on
// before failing, so that what fn recorded of them (a FIN) and what yamux
// does with them agree.
func (p *frameParser) feed(b []byte, fn func(h *[yHeaderLen]byte) error) (int, error) {
	off := 0
	for off < len(b) {
		if p.skip > 0 {
			k := min(p.skip, uint32(len(b)-off))
			off += int(k)
			p.skip -= k
			if p.skip == 0 && p.complete != nil {
				p.complete(&p.hdr)
			}
			continue
		}
		start := off - p.n
		k := copy(p.hdr[p.n:], b[off:])
		p.n += k
		off += k
		if p.n < yHeaderLen {
			return len(b), nil
		}
		p.n = 0
		if p.hdr[1] == yTypeData {
			p.skip = binary.BigEndian.Uint32(p.hdr[8:12])
		}
		if err := fn(&p.hdr); err != nil {
			return max(start, 0), err
		}
		if p.skip == 0 && p.complete != nil {
			p.complete(&p.hdr)
		}
	}
	return len(b), nil
}

// atBoundary reports whether the bytes fed so far end exactly at the end
// of a frame.
func (p *frameParser) atBoundary() bool { return p.n == 0 && p.skip == 0 }

// streamTrack is what the frame parsers saw of one stream.
type streamTrack struct {
	finIn  bool // the peer closed its side (FIN received)
	finOut bool // we sent FIN
	gone   bool // removed from the table: both FINs or a reset
	onGone []func()
	st     *Stream // the Stream wrapping it, if any (see attach)

	// What yamux has processed of the peer's frames for the stream (see
	// plainConn.deliver), for Stream.Readable: data bytes buffered and not
	// read yet (may dip below zero for a moment: a Read can take data
	// before deliver counts it), and whether the peer's FIN or a reset
	// has reached yamux.
	avail  atomic.Int64
	ended  atomic.Bool
	reset  atomic.Bool            // reset in either direction (set under the table lock; Stream.Cut reads it without)
	notify atomic.Pointer[func()] // Stream.NotifyReadable's f

	// filling: yamux is reading the body of a data frame of the stream
	// into its buffer on the receive goroutine, holding the stream's
	// receive lock, while plainConn.deliver runs there (Stream.Buffered).
	filling atomic.Bool
}

// readable calls the stream's NotifyReadable function, if any.
func (st *streamTrack) readable() {
	if f := st.notify.Load(); f != nil {
		(*f)()
	}
}

// streamTable tracks every stream yamux knows, from the frames crossing
// the session, and drives the idle timer. It exists because yamux's
// Stream.Read returns io.EOF both for a FIN and when the session dies:
// with the table a stream that ends without the peer's FIN reports an
// error instead of a clean end (no silent truncation).
type streamTable struct {
	client bool
	maxIn  int // server: streams in the table past which a client's SYN is a protocol violation (0: no cap)

	mu        sync.Mutex
	m         map[uint32]*streamTrack
	opening   int // Opens between reserve and unreserve: the session is not idle
	idle      time.Duration
	zeroSince time.Time
	timer     *time.Timer
	stopped   bool
	idled     bool // stopped by the idle timer's decision
	onIdle    func()
	writing   int             // streams in the table we have not finished (no FIN or reset from us)
	writes    int             // plainConn.Writes under way: a FIN they carry is not out yet
	done      []chan struct{} // closed once writing and opening are 0 (whenDone)
}

func newStreamTable(client bool, idle time.Duration, onIdle func()) *streamTable {
	return &streamTable{client: client, m: make(map[uint32]*streamTrack), idle: idle, onIdle: onIdle}
}

// startIdle arms the idle timer (the session starts without streams).
func (t *streamTable) startIdle() {
	if t.idle <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.zeroSince = time.Now()
	if !t.stopped {
		// Armed even with a stream already in the table (the server's
		// receive loop runs before startIdle): fire ignores a busy
		// table, and quiet re-arms the timer once the table empties.
		t.timer = time.AfterFunc(t.idle, t.fire)
	}
}

// inUse counts what keeps the session from being idle: the streams in the
// table and the Opens under way. t.mu held.
func (t *streamTable) inUse() int { return len(t.m) + t.opening }

// busy is called when inUse has just gone from 0 to 1: the idle timer
// stops. t.mu held.
func (t *streamTable) busy() {
	if t.timer != nil {
		t.timer.Stop()
	}
}

// quiet is called when inUse has just gone to 0: the idle time starts
// again. t.mu held.
func (t *streamTable) quiet() {
	if t.timer != nil && !t.stopped {
		t.zeroSince = time.Now()
		t.timer.Reset(t.idle)
	}
}

func frameFields(h *[yHeaderLen]byte) (typ byte, flags uint16, id uint32) {
	return h[1], binary.BigEndian.Uint16(h[2:4]), binary.BigEndian.Uint32(h[4:8])
}

// inbound sees a frame header from the peer before yamux does, and
// returns the stream's track (nil if none).
func (t *streamTable) inbound(h *[yHeaderLen]byte) (*streamTrack, error) {
	typ, flags, id := frameFields(h)
	if typ != yTypeData && typ != yTypeWindowUpdate {
		return nil, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.m[id]
	if flags&yFlagSYN != 0 {
		switch {
		case t.client:
			return nil, fmt.Errorf("%w: the server opened stream %d", ErrProtocol, id)
		case id%2 == 0:
			return nil, fmt.Errorf("%w: client stream with even ID %d", ErrProtocol, id)
		}
		if st == nil {
			if t.maxIn > 0 && len(t.m) >= t.maxIn {
				return nil, fmt.Errorf("%w: stream %d opened with %d streams open", ErrProtocol, id, len(t.m))
			}
			st = &streamTrack{}
			t.add(id, st)
		}
	}
	if st == nil {
		return nil, nil
	}
	if flags&yFlagFIN != 0 {
		st.finIn = true
	}
	if flags&yFlagRST != 0 {
		st.reset.Store(true)
	}
	t.settle(id, st)
	return st, nil
}

// outbound sees a frame header we send, before it is written.
func (t *streamTable) outbound(h *[yHeaderLen]byte) error {
	typ, flags, id := frameFields(h)
	if typ != yTypeData && typ != yTypeWindowUpdate {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.m[id]
	if flags&yFlagSYN != 0 && st == nil {
		st = &streamTrack{}
		t.add(id, st)
	}
	if st == nil {
		return nil
	}
	if flags&yFlagFIN != 0 && !st.finOut {
		st.finOut = true
		t.finished()
	}
	if flags&yFlagRST != 0 {
		st.reset.Store(true)
		// A reset sent here that no caller of Stream.Reset is waiting on
		// (yamux's StreamCloseTimeout) ends the stream for a
		// NotifyReadable waiter too, or a copier waiting for the stream
		// to become readable would wait for ever.
		if !st.ended.Swap(true) {
			go st.readable()
		}
	}
	t.settle(id, st)
	return nil
}

func (t *streamTable) add(id uint32, st *streamTrack) {
	t.m[id] = st
	t.writing++
	if t.inUse() == 1 {
		t.busy()
	}
}

// reserve keeps the session from going idle while Open sends a stream's
// SYN; it reports false if the session is already ending (the idle timer
// has fired, or the session stopped), so that Open fails with
// ErrSessionClosed before it sends anything and the pool can retry on
// another session. Without it an Open that checked the session a moment
// before the idle timer fired got its stream cut by the idle close right
// after the server's status. Every true return needs one unreserve.
func (t *streamTable) reserve() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.opening++
	if t.inUse() == 1 {
		t.busy()
	}
	return true
}

// ending reports whether the idle timer has decided to close the session
// or the session has stopped.
func (t *streamTable) ending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopped
}

// idledOut reports whether the idle timer decided to close the session.
func (t *streamTable) idledOut() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.idled
}

// unreserve ends a reserve: the stream is in the table now (its SYN went
// out), or the Open failed and, if nothing else is open, the session's
// idle time starts again.
func (t *streamTable) unreserve() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.opening--
	if t.inUse() == 0 {
		t.quiet()
	}
	t.releaseDone()
}

// settle removes a finished stream, as yamux does at the same frame.
func (t *streamTable) settle(id uint32, st *streamTrack) {
	if !(st.finIn && st.finOut) && !st.reset.Load() {
		return
	}
	delete(t.m, id)
	st.gone = true
	if !st.finOut {
		t.finished() // reset
	}
	for _, f := range st.onGone {
		f()
	}
	st.onGone = nil
	if t.inUse() == 0 {
		t.quiet()
	}
}

// attach records that st wraps stream id and sets st.tr to the stream's
// track (nil if unknown or gone). The table thus doubles as the registry of the
// live Streams, which the session wakes when it ends (see
// Session.endStreams); an entry leaves it with its track.
func (t *streamTable) attach(id uint32, st *Stream) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tr := t.m[id]
	// st.tr is set before st is published (tr.st), under the table's
	// lock: streams(), which session end uses, reads it.
	st.tr = tr
	if tr != nil {
		tr.st = st
	}
}

// streams returns the Streams of the streams in the table.
func (t *streamTable) streams() []*Stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Stream, 0, len(t.m))
	for _, tr := range t.m {
		if tr.st != nil {
			out = append(out, tr.st)
		}
	}
	return out
}

// finReceived reports whether the peer's FIN for st has arrived.
func (t *streamTable) finReceived(st *streamTrack) bool {
	if st == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return st.finIn && !st.reset.Load()
}

// whenGone runs f (once) when st leaves the table, now if it has or the
// table is stopped.
func (t *streamTable) whenGone(st *streamTrack, f func()) {
	t.mu.Lock()
	if st != nil && !st.gone && !t.stopped {
		st.onGone = append(st.onGone, f)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	f()
}

// finished counts a stream we have finished: our FIN has gone out, or it
// was reset. t.mu held.
func (t *streamTable) finished() {
	t.writing--
	t.releaseDone()
}

// whenDone returns a channel that is closed once every stream in the table
// is finished on our side (we sent its FIN, or it was reset) and no Open
// is under way (at once if so now), or once the table stops. The peer's
// side of a stream may still be open then.
func (t *streamTable) whenDone() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	if t.stopped || t.writing+t.opening+t.writes == 0 {
		close(ch)
		return ch
	}
	t.done = append(t.done, ch)
	return ch
}

// writeBegin and writeEnd bracket a plainConn.Write: the frames it feeds
// count as sent (outbound) before they are written, and a FIN counted so
// must not release whenDone (Session.Drain) before it is on the wire, or
// the close that follows a drain could overtake it.
func (t *streamTable) writeBegin() {
	t.mu.Lock()
	t.writes++
	t.mu.Unlock()
}

func (t *streamTable) writeEnd() {
	t.mu.Lock()
	t.writes--
	t.releaseDone()
	t.mu.Unlock()
}

// releaseDone closes whenDone's channels if nothing is left to finish (or
// the table has stopped). t.mu held.
func (t *streamTable) releaseDone() {
	if len(t.done) == 0 || (!t.stopped && t.writing+t.opening+t.writes > 0) {
		return
	}
	for _, ch := range t.done {
		close(ch)
	}
	t.done = nil
}

func (t *streamTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *streamTable) fire() {
	t.mu.Lock()
	if t.stopped || t.inUse() != 0 {
		t.mu.Unlock()
		return
	}
	if rest := t.idle - time.Since(t.zeroSince); rest > 0 {
		t.timer.Reset(rest)
		t.mu.Unlock()
		return
	}
	t.stopped, t.idled = true, true
	t.mu.Unlock()
	t.onIdle()
}

// stop disarms the idle timer and releases everything waiting on streams.
func (t *streamTable) stop() {
	t.mu.Lock()
	t.stopped = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.releaseDone()
	var fs []func()
	for _, st := range t.m {
		fs = append(fs, st.onGone...)
		st.onGone = nil
	}
	t.mu.Unlock()
	for _, f := range fs {
		f()
	}
}
