package psk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v2/pkg/protocol/alert"

	"github.com/milagro-sc/milagro/mpinkex"
)

// DTLS record constants (RFC 6347 §4.1) and the limits pion/dtls v2 imposes.
const (
	recordHeaderLen = 13
	// maxRecordLen is pion/dtls v2's receive buffer (inboundBufferSize):
	// one read of the underlying connection, header included. pion
	// silently drops whatever does not fit, so a longer record is a fatal
	// error here.
	maxRecordLen  = 8192
	maxRecordBody = maxRecordLen - recordHeaderLen
	// MaxRecordPlaintext is the most application data one record carries
	// (PROTOCOL.md §7). With AES-128-GCM's 8-byte explicit nonce and 16-byte
	// tag the record is 8037 bytes, inside pion's 8192-byte buffer.
	MaxRecordPlaintext = 8000
	gcmOverhead        = 8 + 16

	readBufferSize = 64 << 10

	ctChangeCipherSpec = 20
	ctAlert            = 21
	ctHandshake        = 22
	ctApplicationData  = 23
)

func badRecord(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadRecord}, args...)...)
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// recordReader splits a TCP byte stream into DTLS records and hands out
// exactly one whole record per call. It also enforces the order in which
// pion/dtls (configured as in this package) sends records, which DTLS
// itself does not: over UDP a receiver tolerates loss, duplication and
// reordering, so pion silently drops records that are late, replayed or
// from a future epoch. Over TCP none of that happens legitimately, so any
// of it is an attack or a bug and is reported here instead:
//
//   - content type ∈ {change_cipher_spec, alert, handshake, application_data},
//     version DTLS 1.2, non-empty, at most 8192 bytes with the header;
//   - per epoch, sequence numbers 0, 1, 2, … without gaps;
//   - epoch 0 (plaintext): handshake, alerts, one ChangeCipherSpec, no
//     application data; nothing in epoch 0 after the ChangeCipherSpec, so a
//     forged plaintext alert (say close_notify) cannot be injected later;
//   - epoch 1 (encrypted): only after the ChangeCipherSpec; the first record
//     is the Finished message, later ones only alerts and application data
//     (no renegotiation, no retransmitted flights), the latter with at most
//     MaxRecordPlaintext bytes of plaintext;
//   - no other epoch.
//
// Timeouts are not sticky (a partial record stays buffered); every other
// error is.
type recordReader struct {
	br  inBuffer
	err error

	next  [2]uint64 // next expected sequence number per epoch
	ccs   bool      // the peer's ChangeCipherSpec was read
	enc   bool      // the peer's first encrypted record (Finished) was read
	alert *AlertError
	count atomic.Uint64
	// finished is enc for other goroutines: once set, the records that
	// follow are not for pion's handshake (see recordConn.Read).
	finished atomic.Bool
}

func newRecordReader(r io.Reader) *recordReader {
	return &recordReader{br: inBuffer{src: r, buf: make([]byte, firstBufferSize)}}
}

// inBuffer is the record reader's read buffer (what bufio.Reader's Peek
// and Discard would do), sized for the traffic: it starts at
// firstBufferSize, which holds any record, and grows once to
// readBufferSize when a read fills it, so a bulk transfer takes 64 KiB per
// read(2) while a session that carries little never allocates that much
// (a cold connection's garbage was mostly two 64 KiB buffers).
type inBuffer struct {
	src  io.Reader
	buf  []byte
	r, w int
	err  error // returned once by peek, as bufio.Reader does
	full bool  // the last read filled the buffer
}

const firstBufferSize = 16 << 10

// peek returns the next n bytes (n ≤ firstBufferSize) without consuming
// them, or fewer and the error that stopped the reads.
func (b *inBuffer) peek(n int) ([]byte, error) {
	for empty := 0; b.w-b.r < n; {
		if b.err != nil {
			err := b.err
			b.err = nil
			return b.buf[b.r:b.w], err
		}
		if b.full && len(b.buf) < readBufferSize {
			nb := make([]byte, readBufferSize)
			b.w = copy(nb, b.buf[b.r:b.w])
			b.r, b.buf = 0, nb
		} else if b.r > 0 {
			b.w = copy(b.buf, b.buf[b.r:b.w])
			b.r = 0
		}
		k, err := b.src.Read(b.buf[b.w:])
		if k < 0 || k > len(b.buf)-b.w {
			return b.buf[b.r:b.w], fmt.Errorf("psk: read returned %d", k)
		}
		b.full = k == len(b.buf)-b.w
		b.w += k
		b.err = err
		if k == 0 && err == nil {
			if empty++; empty == 100 {
				return b.buf[b.r:b.w], io.ErrNoProgress
			}
		}
	}
	return b.buf[b.r : b.r+n], nil
}

// discard consumes n buffered bytes.
func (b *inBuffer) discard(n int) { b.r += n }

// Read makes the buffer an io.Reader, for the one mpinkex frame that may
// come before the records (the verdict of a pipelined client).
func (b *inBuffer) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if got, err := b.peek(1); len(got) == 0 {
		return 0, err
	}
	n := copy(p, b.buf[b.r:b.w])
	b.discard(n)
	return n, nil
}

// recordHeader is a parsed DTLS record header.
type recordHeader struct {
	typ   byte
	epoch uint16
	seq   uint64
	n     int // fragment length
}

func parseRecordHeader(h []byte) (recordHeader, error) {
	rh := recordHeader{
		typ:   h[0],
		epoch: binary.BigEndian.Uint16(h[3:5]),
		seq:   uint64(binary.BigEndian.Uint16(h[5:7]))<<32 | uint64(binary.BigEndian.Uint32(h[7:11])),
		n:     int(binary.BigEndian.Uint16(h[11:13])),
	}
	switch rh.typ {
	case ctChangeCipherSpec, ctAlert, ctHandshake, ctApplicationData:
	default:
		return rh, badRecord("unknown content type %d", rh.typ)
	}
	if h[1] != 0xfe || h[2] != 0xfd {
		return rh, badRecord("version %d.%d, want DTLS 1.2 (254.253)", h[1], h[2])
	}
	if rh.n == 0 {
		return rh, badRecord("empty %s record", typeName(rh.typ))
	}
	if rh.n > maxRecordBody {
		return rh, badRecord("%s record of %d bytes exceeds the %d-byte DTLS receive buffer", typeName(rh.typ), recordHeaderLen+rh.n, maxRecordLen)
	}
	return rh, nil
}

func typeName(t byte) string {
	switch t {
	case ctChangeCipherSpec:
		return "change_cipher_spec"
	case ctAlert:
		return "alert"
	case ctHandshake:
		return "handshake"
	case ctApplicationData:
		return "application_data"
	}
	return fmt.Sprintf("type-%d", t)
}

// check validates a header against the sequencing state without changing it.
func (r *recordReader) check(h recordHeader) error {
	name := typeName(h.typ)
	switch h.epoch {
	case 0:
		switch {
		case r.ccs:
			return badRecord("plaintext %s record after the peer's ChangeCipherSpec", name)
		case h.typ == ctApplicationData:
			return badRecord("unencrypted application data")
		case h.typ == ctChangeCipherSpec && h.n != 1:
			return badRecord("change_cipher_spec of %d bytes", h.n)
		case h.typ == ctAlert && h.n != 2:
			return badRecord("plaintext alert of %d bytes", h.n)
		}
	case 1:
		switch {
		case !r.ccs:
			return badRecord("encrypted %s record before the peer's ChangeCipherSpec", name)
		case h.typ == ctChangeCipherSpec:
			return badRecord("second change_cipher_spec")
		case !r.enc && h.typ != ctHandshake:
			return badRecord("first encrypted record is %s, want the Finished message", name)
		case r.enc && h.typ == ctHandshake:
			return badRecord("handshake record after Finished (renegotiation and retransmission are not used over TCP)")
		case h.n < gcmOverhead:
			return badRecord("encrypted record of %d bytes is shorter than the AES-GCM nonce and tag", h.n)
		case h.typ == ctApplicationData && h.n > MaxRecordPlaintext+gcmOverhead:
			return badRecord("application data record with %d bytes of plaintext, more than %d", h.n-gcmOverhead, MaxRecordPlaintext)
		}
	default:
		return badRecord("epoch %d (only 0 and 1 exist without renegotiation)", h.epoch)
	}
	if want := r.next[h.epoch]; h.seq != want {
		return badRecord("sequence number %d in epoch %d, want %d (a record was lost, replayed or reordered)", h.seq, h.epoch, want)
	}
	return nil
}

func (r *recordReader) commit(h recordHeader, body []byte) {
	r.next[h.epoch]++
	r.count.Add(1)
	switch {
	case h.typ == ctChangeCipherSpec:
		r.ccs = true
	case h.epoch == 1:
		if !r.enc {
			r.enc = true
			r.finished.Store(true)
		}
	case h.typ == ctAlert && len(body) == 2:
		r.alert = &AlertError{Level: body[0], Description: body[1]}
	}
}

// readRecord copies the next whole record into p (which must hold
// maxRecordLen bytes) and returns its length.
func (r *recordReader) readRecord(p []byte) (int, error) {
	b, err := r.nextRecord(len(p))
	return copy(p, b), err
}

// nextRecord returns the next whole record, of at most max bytes, in the
// reader's buffer: the caller may change it (decrypt in place), and it is
// valid until the next call.
func (r *recordReader) nextRecord(max int) ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	hb, err := r.br.peek(recordHeaderLen)
	if err != nil {
		return nil, r.readFailed(err, len(hb), recordHeaderLen)
	}
	h, err := parseRecordHeader(hb)
	if err == nil {
		err = r.check(h)
	}
	if err != nil {
		r.err = err
		return nil, err
	}
	total := recordHeaderLen + h.n
	if max < total {
		r.err = fmt.Errorf("psk: record reader: %d-byte read buffer for a %d-byte record: %w", max, total, io.ErrShortBuffer)
		return nil, r.err
	}
	b, err := r.br.peek(total)
	if err != nil {
		return nil, r.readFailed(err, len(b), total)
	}
	r.br.discard(total) // the bytes are buffered
	r.commit(h, b[recordHeaderLen:])
	return b, nil
}

func (r *recordReader) readFailed(err error, got, want int) error {
	switch {
	case isTimeout(err):
		return err // not sticky: the partial record stays buffered
	case errors.Is(err, io.EOF) && got == 0:
		r.err = io.EOF
	case errors.Is(err, io.EOF):
		r.err = fmt.Errorf("psk: connection closed inside a DTLS record (%d of %d bytes): %w", got, want, io.ErrUnexpectedEOF)
	default:
		r.err = err
	}
	return r.err
}

// recordConn is the TCP connection with record-at-a-time reads and
// per-write deadlines, batched writes and record counts. pion/dtls runs the
// handshake on it (Read, Write, Close, SetReadDeadline: pion writes whole
// records, several per Write); appRecords then carries the session on it
// (readOwn, write).
type recordConn struct {
	net.Conn
	rr *recordReader

	failMu  sync.Mutex
	failErr error
	refusal error // our refusal of the handshake (see refuse)

	closing      atomic.Bool
	closeBy      atomic.Int64 // beginClose's deadline (Unix ns; 0: not closing)
	wmu          sync.Mutex
	writeTimeout time.Duration
	batching     int // nesting depth of beginBatch
	wbuf         []byte
	outNext      [2]uint64 // next sequence number we send, per epoch
	outEpoch     uint16

	recordsOut, writesOut atomic.Uint64

	// handover: pion's Conn is used for the handshake only (always, but
	// for tests that run pion's Conn as the peer of appRecords).
	handover bool
	// verdict: the client ran mpinkex with Pipeline, so the server's Msg4
	// or Alert comes before the first record (PROTOCOL.md §5). Read by
	// pion's first Read, on its read goroutine (appRecords' reads, which
	// come later, never look at it).
	verdict  bool
	detached bool          // under wmu: appRecords has taken over
	pionDone chan struct{} // closed by endPion
	pionOnce sync.Once
}

func newRecordConn(c net.Conn, writeTimeout time.Duration) *recordConn {
	return &recordConn{Conn: c, rr: newRecordReader(c), writeTimeout: writeTimeout, pionDone: make(chan struct{})}
}

// Read hands pion exactly one record (a pipelined client's first Read
// reads the server's verdict before it), until pion has read the peer's
// Finished: what follows belongs to appRecords, which takes over once the
// handshake returns. A Read after the Finished waits for that (or for
// pion's own abort, which it signals with a past read deadline, or Close,
// or a failure: pion may have rejected the Finished) and reports the
// connection closed or the failure, so pion's read loop ends without
// consuming a record.
func (c *recordConn) Read(p []byte) (int, error) {
	if c.handover && c.rr.finished.Load() {
		<-c.pionDone
		if err := c.failure(); err != nil {
			return 0, err
		}
		return 0, net.ErrClosed
	}
	if c.verdict {
		c.verdict = false
		if err := mpinkex.ReadVerdict(&c.rr.br); err != nil {
			c.fail(err)
			return 0, err
		}
	}
	b, err := c.readOwn(len(p))
	return copy(p, b), err
}

// readOwn is Read without the hand-over and without the copy: the next
// whole record of at most max bytes, checked, in the record reader's
// buffer (see recordReader.nextRecord).
func (c *recordConn) readOwn(max int) ([]byte, error) {
	if err := c.failure(); err != nil {
		return nil, err
	}
	b, err := c.rr.nextRecord(max)
	if err != nil {
		if f := c.failure(); f != nil {
			return nil, f
		}
		return nil, err
	}
	return b, nil
}

// SetReadDeadline is how pion aborts a Read (a deadline in the past); it
// also ends a Read waiting for the hand-over.
func (c *recordConn) SetReadDeadline(t time.Time) error {
	if !t.IsZero() && !t.After(time.Now()) {
		c.endPion()
	}
	return c.Conn.SetReadDeadline(t)
}

// detach makes pion's remaining writes (its close_notify on Close) no-ops
// and its Close leave the TCP connection open: appRecords continues.
func (c *recordConn) detach() {
	c.wmu.Lock()
	c.detached = true
	c.wmu.Unlock()
	c.endPion()
}

func (c *recordConn) endPion() { c.pionOnce.Do(func() { close(c.pionDone) }) }

// Close is pion's Close of its connection (and the handshake's, on
// failure): the TCP connection closes unless appRecords has taken over.
func (c *recordConn) Close() error {
	c.endPion()
	c.wmu.Lock()
	detached := c.detached
	c.wmu.Unlock()
	if detached {
		return nil
	}
	return c.Conn.Close()
}

// fail makes every later Read return err and wakes a Read blocked on the
// socket. It is how records pion discarded become fatal.
func (c *recordConn) fail(err error) {
	c.failMu.Lock()
	if c.failErr == nil {
		c.failErr = err
	}
	c.failMu.Unlock()
	_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
	c.endPion()
}

func (c *recordConn) failure() error {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	return c.failErr
}

// refuse records why this side refuses the handshake (the client's PSK
// identity), for handshakeCause, without waking or failing Reads as fail
// does: pion writes its Alert after the callback that refuses returns,
// and a read error ends pion's read loop, which cancels the handshake's
// context, which makes pion set a past write deadline on this connection
// (pion/transport's connctx): landing between writeLocked's deadline and
// its Write, it failed the Alert ("i/o timeout") and the client saw only
// EOF (TestWrongIdentity, 1 in ~300 runs under load).
func (c *recordConn) refuse(err error) {
	c.failMu.Lock()
	if c.refusal == nil {
		c.refusal = err
	}
	c.failMu.Unlock()
}

func (c *recordConn) refused() error {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	return c.refusal
}

// peerAlert returns the last plaintext alert the peer sent, if any. Only
// meaningful once reading has stopped (after a failed handshake).
func (c *recordConn) peerAlert() *AlertError { return c.rr.alert }

// Write is pion's: its records until appRecords takes over, then nothing.
func (c *recordConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.detached {
		return len(b), nil
	}
	return c.writeRecordsLocked(b)
}

func (c *recordConn) writeRecordsLocked(b []byte) (int, error) {
	c.trackOut(b)
	if c.batching == 0 {
		return c.writeLocked(b)
	}
	if err := c.roomLocked(len(b)); err != nil {
		return 0, err
	}
	c.wbuf = append(c.wbuf, b...)
	return len(b), nil
}

// roomLocked makes the batch buffer ready for n more bytes: a buffer from
// the pool if there is none, the batch written out first if n would
// overflow it.
func (c *recordConn) roomLocked(n int) error {
	if len(c.wbuf)+n > batchSize {
		if err := c.flushLocked(); err != nil {
			return err
		}
	}
	if c.wbuf == nil {
		c.wbuf = getBatch()
	}
	return nil
}

// appendRecord is how appRecords writes a record: it seals the record
// straight into the batch buffer, which appendRecord returns (locked, to
// append at most n bytes to), and hands it back with doneRecord. Outside a
// batch doneRecord writes the record at once.
func (c *recordConn) appendRecord(n int) ([]byte, error) {
	c.wmu.Lock()
	if err := c.roomLocked(n); err != nil {
		c.wmu.Unlock()
		return nil, err
	}
	return c.wbuf, nil
}

// doneRecord takes back the buffer of appendRecord with one record
// appended at from, and unlocks.
func (c *recordConn) doneRecord(b []byte, from int) error {
	defer c.wmu.Unlock()
	c.trackOut(b[from:])
	c.wbuf = b
	if c.batching == 0 {
		return c.flushLocked()
	}
	return nil
}

// batchSize is the most a batch holds before it goes to the socket. A
// 128 KiB frame (the copier's bulk buffer) goes out in three writes, and
// the peer opens the first records while the rest are sealed: measured
// with whole processes, 256 KiB (one write per frame) took 40 instead of
// 55 syscalls per MiB on the sending side but no less CPU.
const batchSize = 64 << 10

// batches holds batch buffers between writes, so that a session does not
// keep one of its own while it sends nothing. It holds array pointers, so
// that giving a buffer back (every flush) allocates nothing.
var batches = sync.Pool{New: func() any { return new([batchSize]byte) }}

func getBatch() []byte { return batches.Get().(*[batchSize]byte)[:0] }

func putBatch(b []byte) {
	if cap(b) >= batchSize {
		batches.Put((*[batchSize]byte)(b[:batchSize]))
	}
}

// beginBatch collects the records written until endBatch (by anyone: they
// stay in order) into as few TCP writes as possible. Batches nest: the
// records go out when the outermost one ends (or when the batch buffer is
// full). Nothing may wait for the peer between the two calls: what the
// peer would answer is still in the batch.
func (c *recordConn) beginBatch() {
	c.wmu.Lock()
	c.batching++
	c.wmu.Unlock()
}

func (c *recordConn) endBatch() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.batching--
	if c.batching > 0 {
		return nil
	}
	return c.flushLocked()
}

func (c *recordConn) flushLocked() error {
	if c.wbuf == nil {
		return nil
	}
	var err error
	if len(c.wbuf) > 0 {
		_, err = c.writeLocked(c.wbuf)
	}
	putBatch(c.wbuf)
	c.wbuf = nil
	return err
}

// flush writes what a batch holds now, batch or not (Close: the records
// so far and close_notify go out before the connection closes).
func (c *recordConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *recordConn) writeLocked(b []byte) (int, error) {
	if c.writeTimeout > 0 && !c.closing.Load() {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
		// beginClose may have set its shorter deadline meanwhile, before
		// the one just set: set it again (if it has not come yet, its own
		// call comes after ours).
		if cb := c.closeBy.Load(); cb != 0 {
			_ = c.Conn.SetWriteDeadline(time.Unix(0, cb))
		}
	}
	c.writesOut.Add(1)
	if h := testHookBeforeWrite.Load(); h != nil {
		(*h)(b)
	}
	return c.Conn.Write(b)
}

// testHookBeforeWrite, set by tests only, runs in writeLocked after the
// write deadline is set, just before the write.
var testHookBeforeWrite atomic.Pointer[func(b []byte)]

// trackOut follows the records pion writes: their count, and the epoch and
// sequence number we are at (for sendPlainAlert).
func (c *recordConn) trackOut(b []byte) {
	for len(b) >= recordHeaderLen {
		epoch := binary.BigEndian.Uint16(b[3:5])
		seq := uint64(binary.BigEndian.Uint16(b[5:7]))<<32 | uint64(binary.BigEndian.Uint32(b[7:11]))
		n := int(binary.BigEndian.Uint16(b[11:13]))
		if epoch < 2 && seq+1 > c.outNext[epoch] {
			c.outNext[epoch] = seq + 1
		}
		if epoch > c.outEpoch {
			c.outEpoch = epoch
		}
		c.recordsOut.Add(1)
		if len(b) < recordHeaderLen+n {
			return
		}
		b = b[recordHeaderLen+n:]
	}
}

// sendPlainAlert writes a fatal plaintext alert, possible only while we
// have not switched to epoch 1. pion sends no alert when it drops a record
// it cannot authenticate; without this the peer would only see the
// connection close.
func (c *recordConn) sendPlainAlert(desc alert.Description) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.outEpoch != 0 {
		return errors.New("psk: cipher already changed, cannot send a plaintext alert")
	}
	seq := c.outNext[0]
	c.outNext[0]++
	rec := [recordHeaderLen + 2]byte{ctAlert, 0xfe, 0xfd, 0, 0}
	binary.BigEndian.PutUint16(rec[5:7], uint16(seq>>32))
	binary.BigEndian.PutUint32(rec[7:11], uint32(seq))
	binary.BigEndian.PutUint16(rec[11:13], 2)
	rec[13], rec[14] = byte(alert.Fatal), byte(desc)
	_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, err := c.Conn.Write(rec[:])
	return err
}

// beginClose bounds the remaining writes (close_notify, a writer blocked on
// a peer that stopped reading) by grace.
func (c *recordConn) beginClose(grace time.Duration) {
	by := time.Now().Add(grace)
	c.closeBy.Store(by.UnixNano())
	c.closing.Store(true)
	_ = c.Conn.SetWriteDeadline(by)
}
