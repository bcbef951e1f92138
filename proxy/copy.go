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

// Stats counts what Pipe moved.
type Stats struct {
	AToB, BToA int64
}

// Copy buffers are shared through pools and held only while data is in
// flight. A read takes a copyBufSize buffer, or a bulkBufSize one when the
// previous read of the same direction moved copyBufSize bytes or more: a
// bulk transfer
// then costs a quarter of the reads, writes and goroutine hand-offs per
// byte (whole-process bench: 3.2–3.6 → 2.6 proxy-CPU s/GiB), while
// request/response traffic keeps the small buffers.
const (
	copyBufSize = 32 << 10
	bulkBufSize = 128 << 10
)

var (
	bufPool     = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
	bulkPool    = sync.Pool{New: func() any { b := make([]byte, bulkBufSize); return &b }}
	buffersHeld atomic.Int64 // taken from the pools and not yet given back
)

// getBuf returns a buffer, a bulk one if bulk.
func getBuf(bulk bool) *[]byte {
	buffersHeld.Add(1)
	if bulk {
		return bulkPool.Get().(*[]byte)
	}
	return bufPool.Get().(*[]byte)
}

// putBuf gives bp back and reports whether a read of n bytes would have
// filled a small buffer: the next read of that direction should take a
// bulk buffer.
func putBuf(bp *[]byte, n int) (full bool) {
	buffersHeld.Add(-1)
	full = n >= copyBufSize
	if len(*bp) == bulkBufSize {
		bulkPool.Put(bp)
	} else {
		bufPool.Put(bp)
	}
	return full
}

// ReadNotifier is implemented by connections that can tell whether a Read
// would return at once and call back when that may have changed
// (psk.Stream). Pipe and Start copy from such a connection only when it
// is readable, with no goroutine waiting in its Read meanwhile.
type ReadNotifier interface {
	Readable() bool
	// NotifyReadable has f called (possibly spuriously, never blocking)
	// whenever the connection may have become readable, and once at once
	// if it is; nil stops the calls.
	NotifyReadable(f func())
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
// An idle Pipe holds no copy buffer, which comes from a shared pool when
// data is there: a socket (through syscall.RawConn) is read only once
// readable, by a goroutine that waits with the smallest stack, and a
// connection implementing ReadNotifier only when it says it is readable,
// by a goroutine started then. Any other connection is read by a
// goroutine blocked in Read with a buffer (the caller's runs one). Pipe
// owns the read deadlines of socket connections.
func Pipe(ctx context.Context, a, b net.Conn, idle time.Duration) (Stats, error) {
	type result struct {
		st  Stats
		err error
	}
	res := make(chan result, 1)
	p := newPipe(ctx, a, b, idle, func(st Stats, err error) { res <- result{st, err} })
	p.start(true)
	r := <-res
	return r.st, r.err
}

// Start is Pipe without the wait: it returns at once, and done is called
// (on one of the pipe's goroutines) once both directions have ended and both
// connections are closed. An idle connection between a socket and a
// ReadNotifier (a TCP connection and a psk stream) then costs one parked
// goroutine with a 2 KiB stack, the socket's waiter, and no buffer.
func Start(ctx context.Context, a, b net.Conn, idle time.Duration, done func(Stats, error)) {
	newPipe(ctx, a, b, idle, done).start(false)
}

// StartCounting is Start that also reports the bytes as they move: count
// is called after each write with its direction (aToB) and byte count, on
// the copying goroutine, so that live figures (metrics) need not wait for
// the end of a long connection. It must be quick and must not block.
func StartCounting(ctx context.Context, a, b net.Conn, idle time.Duration, count func(aToB bool, n int), done func(Stats, error)) {
	p := newPipe(ctx, a, b, idle, done)
	p.halves[0].count = func(n int) { count(true, n) }
	p.halves[1].count = func(n int) { count(false, n) }
	p.start(false)
}

// pipe is one Pipe or Start: two halves, the idle watch and the end.
type pipe struct {
	a, b    net.Conn
	once    sync.Once
	w       *idleWatch
	stopCtx func() bool
	done    func(Stats, error)
	halves  [2]half // a→b, b→a

	mu        sync.Mutex
	left      int
	finishing [2]bool // by half: its end is under way (its FIN may be out already)
	errs      [2]error
	cutErr    error // see cut
	st        Stats
}

// half is one direction of a pipe.
type half struct {
	p        *pipe
	dst, src net.Conn
	n        *int64
	count    func(int) // StartCounting's, for this direction
	i        int

	// For a socket src: one goroutine, parked until src is readable
	// (waitSocket), copies until read would block and hands over to a
	// fresh one.
	rc syscall.RawConn

	// For a ReadNotifier src: a goroutine copies only while src is
	// readable and ends; a notification while it runs makes it look again.
	rn      ReadNotifier
	mu      sync.Mutex
	running bool
	again   bool

	// For a ReadNotifier src that tells what it has buffered, to a socket
	// dst: what it has buffered is copied inline by the notifying
	// goroutine (copyInline), without a goroutine hand-off (bulk amounts
	// only while no other connection shares that goroutine).
	br    bufferedReader
	dstRC syscall.RawConn

	// bulk: the last read filled its buffer; the next takes a bulk one.
	// Used only by the goroutine copying at the time.
	bulk bool
}

func newPipe(ctx context.Context, a, b net.Conn, idle time.Duration, done func(Stats, error)) *pipe {
	p := &pipe{a: a, b: b, done: done, left: 2}
	p.stopCtx = context.AfterFunc(ctx, p.closeBoth)
	if idle > 0 {
		p.w = newIdleWatch(idle, p.idleClose) // idleClose gets the watch: the timer may fire before p.w is set
	}
	p.halves[0] = half{p: p, dst: b, src: a, n: &p.st.AToB, i: 0}
	p.halves[1] = half{p: p, dst: a, src: b, n: &p.st.BToA, i: 1}
	return p
}

// idleClose ends a pipe quiet for its idle timeout: a clean close, unless
// a write is under way, blocked on a reader too slow to take a socket
// buffer's worth within the timeout: its connections are then reset, as
// for any cut, so that neither end takes what it got for a whole transfer.
func (p *pipe) idleClose(w *idleWatch) {
	p.mu.Lock()
	if p.cutErr == nil {
		p.cutErr = ErrIdleTimeout // what done reports, if nothing worse
	}
	p.mu.Unlock()
	if w.writing.Load() > 0 {
		resetConn(p.a)
		resetConn(p.b)
	}
	p.closeBoth()
}

// write writes b to dst, a write that may block; with an idle timeout it
// is counted while under way (idleClose), and its end counts as activity.
func (h *half) write(b []byte) (int, error) {
	w := h.p.w
	if w == nil {
		return h.dst.Write(b)
	}
	w.writing.Add(1)
	n, err := h.dst.Write(b)
	w.writing.Add(-1)
	w.touch()
	return n, err
}

// resetConn makes c's close a reset where the connection allows: a psk
// stream's Reset, a TCP connection's SO_LINGER 0 (RST instead of FIN).
func resetConn(c net.Conn) {
	switch c := c.(type) {
	case interface{ Reset() error }:
		_ = c.Reset()
	case interface{ SetLinger(int) error }:
		_ = c.SetLinger(0)
	}
}

func (p *pipe) closeBoth() {
	p.once.Do(func() {
		p.a.Close()
		p.b.Close()
	})
}

// moved counts nw bytes written to dst.
func (h *half) moved(nw int) {
	*h.n += int64(nw)
	if h.count != nil && nw > 0 {
		h.count(nw)
	}
}

// rawConn returns c's syscall.RawConn if c is a socket, else nil.
func rawConn(c net.Conn) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}

// start starts both halves; with inline, the caller's goroutine runs one
// that needs a goroutine of its own anyway.
func (p *pipe) start(inline bool) {
	var run []*half
	for i := range p.halves {
		h := &p.halves[i]
		if rn, ok := h.src.(ReadNotifier); ok {
			h.rn = rn
			if br, ok := h.src.(bufferedReader); ok {
				if rc := rawConn(h.dst); rc != nil {
					h.br, h.dstRC = br, rc
				}
			}
			rn.NotifyReadable(h.kick)
			continue
		}
		if rc := rawConn(h.src); rc != nil {
			// A new goroutine's stack is small until it copies: it
			// starts as the copier (a new connection's first data is
			// usually on its way) and hands over after a quiet grace.
			h.rc = rc
			go h.copySocket()
			continue
		}
		run = append(run, h)
	}
	for i, h := range run {
		if inline && i == len(run)-1 {
			h.finish(h.copyAll())
			return
		}
		go func() { h.finish(h.copyAll()) }()
	}
}

// kick is the ReadNotifier's callback: start a copier unless one runs.
func (h *half) kick() {
	h.mu.Lock()
	if h.running {
		h.again = true
		h.mu.Unlock()
		return
	}
	h.running, h.again = true, false
	h.mu.Unlock()
	if h.br != nil {
		h.copyInline()
		return
	}
	go h.drain()
}

// bufferedReader is implemented by ReadNotifiers that can tell how many
// bytes a Read returns at once, without waiting for anything
// (psk.Stream).
type bufferedReader interface {
	Buffered() int
	// Shared reports whether the notifying goroutine serves other
	// connections too (psk.Stream: other streams of its session).
	Shared() bool
}

// Inline copying, at most inlineRounds rounds per notification. While
// other connections share the notifier (Shared), a round copies at most
// inlineMax bytes, and a bulk amount goes to a goroutine so that the
// notifier goes on receiving for them meanwhile. Alone, a round copies up
// to a bulk buffer of whatever is buffered: there is no one to delay, and
// the goroutine that would take over costs a thread wake-up (on 2 cores:
// half the server sidecar's futex calls in a 1 GiB transfer).
const (
	inlineMax    = copyBufSize
	inlineRounds = 4
)

// inlineCounts counts copyInline's copies done whole, those whose rest a
// goroutine had to write, and those of more than inlineMax bytes (tests).
var inlineCounts struct{ whole, rest, bulk atomic.Uint64 }

// copyInline copies what src has buffered to the socket dst on the
// notifying goroutine (the session's receive loop), and so spares the
// hand-off to a copier goroutine that dominates the cost of small
// messages: a thread wake-up and two goroutine switches for each, when
// the other CPU is idle (whole-process counts in
// psk/internal/yamux/PATCHES.md; in one process, where both ends keep the
// CPUs busy, BenchmarkPipePingPong cannot show it). It never blocks: it
// reads only what Read returns at once and writes only what the socket
// takes now.
// Anything else — a socket that would block, a bulk amount while src is
// Shared, the end of src, an error — goes to a copier goroutine, as
// without it. kick has set running.
func (h *half) copyInline() {
	shared := h.br.Shared()
	for range inlineRounds {
		n := h.br.Buffered()
		if n == 0 || shared && n > inlineMax {
			break // nothing buffered (the end of src or an error: drain reports it), or bulk
		}
		n = min(n, bulkBufSize)
		if n > inlineMax {
			inlineCounts.bulk.Add(1)
		}
		bp := getBuf(n > copyBufSize)
		nr, rerr := h.src.Read((*bp)[:n])
		if rerr != nil {
			putBuf(bp, 0)
			go h.end(rerr)
			return
		}
		h.p.w.touch()
		nw, werr := writeNow(h.dstRC, (*bp)[:nr])
		h.moved(nw)
		if werr != nil {
			putBuf(bp, 0)
			if errno, ok := werr.(syscall.Errno); ok {
				werr = sockError("write", h.dst, errno)
			}
			go h.end(werr)
			return
		}
		if nw < nr {
			// The socket is full: a goroutine waits to write the rest.
			inlineCounts.rest.Add(1)
			go h.writeRest(bp, nw, nr)
			return
		}
		inlineCounts.whole.Add(1)
		h.bulk = putBuf(bp, nr)
		// Readable, not just again: notifications that came during the
		// copy (from the receive goroutine while this one copies, say)
		// collapse into again, which an earlier round may have taken;
		// what they reported, such as the peer's FIN, is in Readable.
		// (Dropping this check lost FINs: integration TestSidecarChannel.)
		h.mu.Lock()
		if !h.again && !h.rn.Readable() {
			h.running = false
			h.mu.Unlock()
			return
		}
		h.again = false
		h.mu.Unlock()
	}
	go h.drain()
}

// writeRest writes the part of *bp the socket did not take at once, then
// copies on as drain does.
func (h *half) writeRest(bp *[]byte, from, to int) {
	nw, werr := h.write((*bp)[from:to])
	h.moved(nw)
	h.bulk = putBuf(bp, to)
	if werr != nil {
		h.end(werr)
		return
	}
	h.drain()
}

// end ends a ReadNotifier half whose reads ended with err (nil: EOF).
func (h *half) end(err error) {
	if err == io.EOF {
		err = nil
	}
	if c, ok := h.src.(cutNotifier); ok && err == nil {
		// Read ended cleanly, but the other direction may still be
		// writing to src: if src is cut meanwhile (a reset, its session's
		// end) while that direction waits to read, nothing else would
		// notice, and the other connection would be held for ever.
		h.rn.NotifyReadable(func() {
			if cerr := c.Cut(); cerr != nil {
				// Not on the notifying goroutine: cut closes
				// connections, and a stream's Close notifies again.
				go h.p.cut(h, cerr)
			}
		})
	} else {
		h.rn.NotifyReadable(nil)
	}
	h.finish(err)
}

// cutNotifier is a ReadNotifier that can tell, once its reads have ended
// cleanly (io.EOF), that it was cut afterwards and can no longer be
// written to (psk.Stream: a reset, or its session's end).
type cutNotifier interface {
	Cut() error
}

// cut ends the pipe because h's source, whose reads had ended cleanly,
// was cut while the other direction still ran: that direction's source is
// reset (the cut reaches its peer as a reset, as it would have through one
// TCP connection) and the pipe reports err. Once the other direction has
// finished there is nothing to cut (the end of a session right after its
// last stream ended is no cut), nor once it has begun to finish: its
// FIN may be out, and the peer may close the session at once.
func (p *pipe) cut(h *half, err error) {
	p.mu.Lock()
	first := !p.finishing[1-h.i] && p.cutErr == nil
	if first {
		p.cutErr = err
	}
	p.mu.Unlock()
	if !first {
		return
	}
	resetConn(p.halves[1-h.i].src)
	p.closeBoth()
}

// writeNow writes b to the socket without waiting: n < len(b) with a nil
// error means the socket's buffer is full.
func writeNow(rc syscall.RawConn, b []byte) (n int, err error) {
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := syscall.Write(int(fd), b[n:])
			if e == syscall.EINTR {
				continue
			}
			if e != nil {
				if e != syscall.EAGAIN {
					serr = e
				}
				break
			}
			n += m
		}
		return true // done, whatever happened: never wait here
	})
	if err != nil {
		return n, err
	}
	return n, serr
}

// drain copies while src is readable, and again while notifications came
// meanwhile; it ends the half when src's reads end.
func (h *half) drain() {
	for {
		if end, err := h.copyReadable(); end {
			h.end(err)
			return
		}
		h.mu.Lock()
		if !h.again {
			h.running = false
			h.mu.Unlock()
			return
		}
		h.again = false
		h.mu.Unlock()
	}
}

// copyReadable copies chunks while src is readable. end reports that src's
// reads have ended (err nil for EOF) or a write failed.
func (h *half) copyReadable() (end bool, err error) {
	for h.rn.Readable() {
		bp := getBuf(h.bulk)
		nr, rerr := h.src.Read(*bp)
		if nr > 0 {
			h.p.w.touch()
			nw, werr := h.write((*bp)[:nr])
			h.moved(nw)
			if werr != nil {
				putBuf(bp, nr)
				return true, werr
			}
		}
		h.bulk = putBuf(bp, nr)
		if rerr == io.EOF {
			return true, nil
		}
		if rerr != nil {
			return true, rerr
		}
	}
	return false, nil
}

// finish ends one direction whose reads ended with err (nil: EOF): the
// other side gets a half-close, or a reset on an abnormal end; after the
// second direction both are closed and done is called.
func (h *half) finish(err error) {
	p := h.p
	p.mu.Lock()
	p.finishing[h.i] = true
	p.mu.Unlock()
	if err == nil {
		if cw, ok := h.dst.(closeWriter); ok {
			err = cw.CloseWrite()
		} else {
			// No half-close: closing is the only way to signal EOF.
			p.closeBoth()
		}
	} else {
		// An abnormal end (reset, truncated secure session) must not
		// reach the other peer as a clean EOF: reset it where the
		// connection allows (a TCP RST, a psk stream's Reset), instead
		// of a FIN. The closing also
		// cuts the other direction; unless that one has already ended,
		// its receiver (this direction's source) is reset as well, or a
		// cut-off download would end like a whole one. (net.ErrClosed
		// is our own closeBoth: idle timeout, cancel, the other
		// direction.)
		if !errors.Is(err, net.ErrClosed) {
			p.mu.Lock()
			otherOpen := p.left == 2
			p.mu.Unlock()
			reset := []net.Conn{h.dst}
			if otherOpen {
				reset = append(reset, h.src)
			}
			for _, c := range reset {
				resetConn(c)
			}
		}
		p.closeBoth()
	}
	p.mu.Lock()
	p.errs[h.i] = err
	p.left--
	last := p.left == 0
	p.mu.Unlock()
	if !last {
		return
	}
	p.closeBoth()
	if p.w != nil {
		p.w.stop()
	}
	p.stopCtx()
	for i := range p.halves {
		if rn := p.halves[i].rn; rn != nil {
			rn.NotifyReadable(nil)
		}
	}
	p.mu.Lock()
	err = firstReal(p.errs[0], p.errs[1], p.cutErr)
	p.mu.Unlock()
	p.done(p.st, err)
}

// waitSocket parks until the socket src is readable (data, EOF or an
// error), holding no buffer, then copies. Parked, the goroutine has run
// nothing but this shallow wait, so it keeps the smallest stack (2 KiB):
// the copying, whose writes (a secure stream's) grow the stack, ends
// after a quiet socketGrace by leaving a fresh waitSocket goroutine.
func (h *half) waitSocket() {
	var perr error
	peeked := false
	err := h.rc.Read(func(fd uintptr) bool {
		if peeked {
			// The poller saw the socket become readable; if that was
			// spurious, copySocket's read finds out (and waits).
			perr = nil
			return true
		}
		peeked = true
		perr = peek(fd)
		return perr != syscall.EAGAIN
	})
	switch {
	case err != nil: // closed: no read happened
		h.finish(err)
	case perr != nil:
		// The peek took the socket's pending error (a reset): it is this
		// direction's end.
		h.finish(sockError("read", h.src, perr))
	default:
		h.copySocket()
	}
}

// peek waits for nothing and consumes nothing: nil if a read of the
// socket fd would return data or EOF, EAGAIN if it would block, or the
// error it would return (which the peek consumes).
func peek(fd uintptr) error {
	var b [1]byte
	for {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		if err != syscall.EINTR {
			return err
		}
	}
}

// sockError is the error package net gives for a read or write (op) of
// the socket c that failed with errno.
func sockError(op string, c net.Conn, errno error) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(),
		Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// socketGrace is how long a socket's copier, which has grown its stack
// copying, keeps waiting for more data itself before it hands over to a
// waitSocket goroutine with a fresh small stack: a busy connection does
// not pay a goroutine start and a peek for every message, and a quiet
// one sheds the grown stack within two graces.
const socketGrace = 100 * time.Millisecond

// copySocket copies the socket src to dst until src's reads end. It waits
// for data itself (holding no buffer) while data came within the last
// socketGrace; after a quiet grace a fresh goroutine waits instead. Pipe
// owns src's read deadline for this.
func (h *half) copySocket() {
	_ = h.src.SetReadDeadline(time.Now().Add(socketGrace))
	moved := false
	for {
		bp, nr, rerr := h.readSocket()
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			if moved {
				moved = false
				_ = h.src.SetReadDeadline(time.Now().Add(socketGrace))
				continue
			}
			_ = h.src.SetReadDeadline(time.Time{})
			go h.waitSocket()
			return
		}
		if nr > 0 {
			moved = true
			h.p.w.touch()
			nw, werr := h.write((*bp)[:nr])
			h.moved(nw)
			if werr != nil {
				putBuf(bp, nr)
				h.finish(werr)
				return
			}
		}
		if bp != nil {
			h.bulk = putBuf(bp, nr)
		}
		if rerr == io.EOF {
			h.finish(nil)
			return
		}
		if rerr != nil {
			h.finish(rerr)
			return
		}
	}
}

// readSocket reads the socket src with read(2) from inside RawConn.Read: a
// buffer is taken from the pool only when src is readable, and would-block
// gives it back before the goroutine parks in the poller. Close and the
// read deadline end the wait.
func (h *half) readSocket() (*[]byte, int, error) {
	var bp *[]byte
	var n int
	var serr error
	err := h.rc.Read(func(fd uintptr) bool {
		bp = getBuf(h.bulk)
		for {
			n, serr = syscall.Read(int(fd), *bp)
			if serr != syscall.EINTR {
				break
			}
		}
		if serr == syscall.EAGAIN {
			putBuf(bp, 0)
			bp = nil
			return false // wait for readability, holding nothing
		}
		return true
	})
	switch {
	case err != nil: // closed, deadline: no read happened
		if bp != nil {
			putBuf(bp, 0)
		}
		return nil, 0, err
	case serr != nil:
		putBuf(bp, 0)
		return nil, 0, sockError("read", h.src, serr)
	case n == 0:
		return bp, 0, io.EOF
	}
	return bp, n, nil
}

// copyAll copies src to dst until src's EOF (nil) or an error, for
// connections that are neither sockets nor ReadNotifiers: it holds a
// buffer while blocked in Read.
func (h *half) copyAll() error {
	src, w := h.src, h.p.w
	bulk := false
	for {
		bp := getBuf(bulk)
		nr, rerr := src.Read(*bp)
		if nr > 0 {
			w.touch()
			nw, werr := h.write((*bp)[:nr])
			h.moved(nw)
			if werr != nil {
				putBuf(bp, nr)
				return werr
			}
		}
		bulk = putBuf(bp, nr)
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// idleWatch closes both sides once nothing has moved for idle. It holds a
// timer, not a goroutine, while it waits.
type idleWatch struct {
	idle    time.Duration
	fire    func(*idleWatch)
	last    atomic.Int64 // unix ns of the last chunk moved
	writing atomic.Int32 // writes that may block under way (half.write)
	mu      sync.Mutex
	t       *time.Timer
	ended   bool
}

func newIdleWatch(idle time.Duration, fire func(*idleWatch)) *idleWatch {
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
	w.fire(w)
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.ended = true
	w.t.Stop()
	w.mu.Unlock()
}

// ErrIdleTimeout is the end of a pipe that the idle timeout closed.
var ErrIdleTimeout = errors.New("idle timeout: nothing moved in either direction")

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
