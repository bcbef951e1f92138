package psk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/milagro-sc/milagro/psk/internal/yamux"

	"github.com/milagro-sc/milagro/mpinkex"
)

// DefaultMaxStreams is Config.MaxStreams unless set.
const DefaultMaxStreams = 4096

// Config tunes a session. The zero value (or nil) gives the defaults.
type Config struct {
	// HandshakeTimeout bounds the DTLS handshake, in addition to the
	// context (default 10 s).
	HandshakeTimeout time.Duration
	// KeepAliveInterval is how often yamux pings the peer (default 30 s;
	// negative disables keepalives). A ping unanswered within WriteTimeout
	// closes the session.
	KeepAliveInterval time.Duration
	// WriteTimeout bounds every write to the TCP connection and the wait
	// for a yamux frame to be sent (yamux ConnectionWriteTimeout); a peer
	// that stops reading fails the session after it (default 10 s).
	WriteTimeout time.Duration
	// IdleTimeout closes the session after it has had no stream for this
	// long (0: never).
	IdleTimeout time.Duration
	// HeaderTimeout bounds how long the server waits for a stream header
	// (default 10 s).
	HeaderTimeout time.Duration
	// OpenTimeout bounds how long Open waits for the server's status byte,
	// in addition to the context (default 30 s). It covers the server's
	// dial to its target. On the server it is how long a stream it refused
	// (Reject, or a bad header) may stay open on the client's side before
	// it is reset (the client's Open has given up by then).
	OpenTimeout time.Duration
	// StreamCloseTimeout is how long a stream half-closed by this side
	// (after CloseWrite or Close) may go without data from the peer before
	// yamux resets it, if the peer has not closed its side (default 5 min,
	// yamux's). Each data frame from the peer starts it again
	// (internal/yamux's CloseTimeoutSinceData), so a download that goes on
	// after the request's half-close is not cut while it moves; it bounds
	// what a peer that never finishes can hold (memory, and data it keeps
	// sending after Close, which is discarded). The reset reaches both
	// sides' Reads and Writes as ErrStreamReset.
	//
	// Negative: a stream half-closed by CloseWrite lives as a fully open
	// one does, however long the peer is silent (TCP's semantics: a
	// request half-closed before a long computation's answer), and a
	// stream Closed here, whose reader is gone, is reset if the peer has
	// not closed its side within ClosedStreamTimeout of the Close.
	StreamCloseTimeout time.Duration
	// AcceptBacklog bounds the streams opened but not yet accepted: on the
	// client, streams waiting for the server's status (Open blocks beyond
	// it); on the server, streams whose header is being read or that wait
	// for Accept (yamux resets streams beyond it). Both sides should use
	// the same value (default 256).
	AcceptBacklog int
	// MaxStreams bounds the streams a session carries at once: Open fails
	// with ErrTooManyStreams and the server refuses streams beyond it
	// (default DefaultMaxStreams).
	MaxStreams int
	// StreamWindow is the per-stream flow-control window in bytes: what a
	// stream may have in flight in each direction, and so the most this
	// side buffers for it when its reader is slow. Default 1 MiB, minimum
	// 256 KiB (yamux's initial window), maximum 16 MiB. 256 KiB held a
	// bulk transfer to ~0.8 of a crypto/tls pair's throughput, the writer
	// waiting for a window update twice per window; 1 MiB matches it
	// (README, Performance).
	StreamWindow uint32
}

// Config.StreamWindow's bounds and default.
const (
	MinStreamWindow     = 256 << 10
	DefaultStreamWindow = 1 << 20
	MaxStreamWindow     = 16 << 20
)

func (c *Config) withDefaults() (Config, error) {
	var cfg Config
	if c != nil {
		cfg = *c
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.HandshakeTimeout, 10*time.Second)
	def(&cfg.KeepAliveInterval, 30*time.Second)
	def(&cfg.WriteTimeout, 10*time.Second)
	def(&cfg.HeaderTimeout, 10*time.Second)
	def(&cfg.OpenTimeout, 30*time.Second)
	def(&cfg.StreamCloseTimeout, 5*time.Minute)
	if cfg.AcceptBacklog == 0 {
		cfg.AcceptBacklog = 256
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.StreamWindow == 0 {
		cfg.StreamWindow = DefaultStreamWindow
	}
	switch {
	case cfg.HandshakeTimeout < 0, cfg.WriteTimeout < 0, cfg.HeaderTimeout < 0, cfg.OpenTimeout < 0, cfg.IdleTimeout < 0:
		return cfg, fmt.Errorf("%w: negative timeout", ErrConfig)
	case cfg.AcceptBacklog < 0 || cfg.MaxStreams < 0:
		return cfg, fmt.Errorf("%w: negative stream limit", ErrConfig)
	case cfg.StreamWindow < MinStreamWindow:
		return cfg, fmt.Errorf("%w: stream window %d below yamux's minimum %d", ErrConfig, cfg.StreamWindow, MinStreamWindow)
	case cfg.StreamWindow > MaxStreamWindow:
		return cfg, fmt.Errorf("%w: stream window %d above the maximum %d", ErrConfig, cfg.StreamWindow, MaxStreamWindow)
	}
	return cfg, nil
}

func (c *Config) yamux() *yamux.Config {
	y := yamux.DefaultConfig()
	y.AcceptBacklog = c.AcceptBacklog
	y.EnableKeepAlive = c.KeepAliveInterval > 0
	if y.EnableKeepAlive {
		y.KeepAliveInterval = c.KeepAliveInterval
	}
	y.ConnectionWriteTimeout = c.WriteTimeout
	// recordConn bounds every TCP write by WriteTimeout, so frames may be
	// written by their senders; and a Read never waits for a window
	// update to be written, so that package proxy may read buffered data
	// on the receive goroutine (Stream.Buffered). See
	// internal/yamux/PATCHES.md.
	y.DirectWrites = true
	y.AsyncWindowUpdates = true
	// The server acknowledges a stream with its status (Accept, Reject).
	y.DeferAck = true
	y.MaxStreamWindowSize = c.StreamWindow
	y.StreamOpenTimeout = 0 // Open waits for the status with its own bound
	y.StreamCloseTimeout = max(c.StreamCloseTimeout, 0)
	y.CloseTimeoutSinceData = true // a half-closed stream is reset only once silent that long
	y.LogOutput = nil
	y.Logger = log.New(io.Discard, "", 0)
	return y
}

// ClosedStreamTimeout bounds how long a stream Closed here may wait for
// the peer to close its side when Config.StreamCloseTimeout is negative:
// what the peer sends meanwhile is discarded, and nothing here reads.
const ClosedStreamTimeout = 5 * time.Minute

// Session is an authenticated, encrypted, multiplexed connection to one
// peer: DTLS 1.2 PSK over the TCP connection, yamux over DTLS. The client
// opens streams, the server accepts them. All methods are safe for
// concurrent use.
type Session struct {
	client  bool
	localID string
	peerID  string
	cfg     Config

	raw net.Conn
	rc  *recordConn
	pc  *plainConn
	mux *yamux.Session
	tab *streamTable

	goingAway atomic.Bool // GoAway has been called (GoingAway)

	openSem    chan struct{}   // client: streams waiting for a status
	hdrSem     chan struct{}   // server: streams between yamux and Accept
	incoming   chan acceptItem // server
	acceptDone chan struct{}   // server: accept loop finished

	goMu    sync.Mutex
	closing bool
	wg      sync.WaitGroup

	closeOnce sync.Once
	causeMu   sync.Mutex
	cause     error

	// ended is set once the session has ended (yamux's shutdown channel
	// is closed), before the streams are woken (see endStreams).
	ended atomic.Bool

	sweepMu sync.Mutex
	sweep   *time.Timer // releases drained receive buffers (sweepBuffers)

	badStreams atomic.Uint64

	// worn is set once a record key has carried KeyRecordLimit records.
	worn atomic.Bool
}

// keyLimit is appRecords.onLimit: from now on the session takes no new
// streams. The client's Open refuses them (ErrKeyLimit); the server sends
// GoAway, so that a client not counting itself stops too.
func (s *Session) keyLimit() {
	if !s.worn.CompareAndSwap(false, true) || s.client {
		return
	}
	s.spawn(func() { _ = s.GoAway() }) // not here: seal holds the write locks
}

type acceptItem struct {
	in  *IncomingStream
	err error
}

// Client runs the client side of PROTOCOL.md §7 on conn, which must be
// positioned right after Msg4 of the mpinkex handshake that produced res
// (mpinkex.Client reads no further). The DTLS client is the yamux client;
// open streams with (*Session).Open.
//
// If res.VerdictPending (mpinkex.ClientConfig.Pipeline), the DTLS
// ClientHello goes out at once, right behind Msg3, and the server's
// verdict is read before its first record: a refusal is returned as the
// *mpinkex.Error that mpinkex.Client would have returned.
//
// The session takes conn over: it is closed with the session, and on
// error. res is only read (PSK, PSKIdentity, identities); the caller
// should Zeroize it once Client returns. ctx bounds the handshake.
func Client(ctx context.Context, conn net.Conn, res *mpinkex.Result, cfg *Config) (*Session, error) {
	return newSession(ctx, true, conn, res, cfg)
}

// Server runs the server side of PROTOCOL.md §7 on conn, positioned right
// after Msg4 (mpinkex.Server leaves it there). The DTLS server accepts only
// res.PSKIdentity with res.PSK, and sends no HelloVerifyRequest. Accept
// streams with (*Session).Accept. Ownership of conn and res as for Client.
func Server(ctx context.Context, conn net.Conn, res *mpinkex.Result, cfg *Config) (*Session, error) {
	return newSession(ctx, false, conn, res, cfg)
}

func newSession(ctx context.Context, client bool, conn net.Conn, res *mpinkex.Result, c *Config) (*Session, error) {
	fail := func(err error) (*Session, error) {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, err
	}
	switch {
	case conn == nil:
		return fail(fmt.Errorf("%w: nil connection", ErrConfig))
	case res == nil:
		return fail(fmt.Errorf("%w: nil handshake result", ErrConfig))
	case res.Layer != mpinkex.LayerDTLS:
		return fail(fmt.Errorf("%w: record layer %#02x, want dtls", ErrConfig, res.Layer))
	case len(res.PSK) != mpinkex.PSKSize || res.PSKIdentity == "":
		return fail(fmt.Errorf("%w: no PSK in the handshake result (zeroized?)", ErrConfig))
	case res.VerdictPending && !client:
		return fail(fmt.Errorf("%w: a server's handshake result has no pending verdict", ErrConfig))
	}
	cfg, err := c.withDefaults()
	if err != nil {
		return fail(err)
	}
	app, rc, err := handshakeDTLS(ctx, client, conn, res, &cfg)
	if err != nil {
		return nil, err
	}
	s := &Session{client: client, cfg: cfg, raw: conn, rc: rc}
	if client {
		s.localID, s.peerID = res.ClientID, res.ServerID
		s.openSem = make(chan struct{}, cfg.AcceptBacklog)
	} else {
		s.localID, s.peerID = res.ServerID, res.ClientID
		s.hdrSem = make(chan struct{}, cfg.AcceptBacklog)
		s.incoming = make(chan acceptItem)
		s.acceptDone = make(chan struct{})
	}
	s.tab = newStreamTable(client, cfg.IdleTimeout, func() { _ = s.closeWith(ErrIdleTimeout) })
	if !client {
		// A hard cap on the streams a client keeps open at the yamux
		// level: streams refused (bad header, past MaxStreams) stay in
		// the table until the client's FIN, and a client that never
		// sends it must not pile them up without bound.
		s.tab.maxIn = cfg.MaxStreams + 2*cfg.AcceptBacklog
	}
	s.pc = newPlainConn(app, rc, s.tab, s.setCause)
	app.onLimit = s.keyLimit
	mc := muxConn{s.pc, s}
	if client {
		s.mux, err = yamux.Client(mc, cfg.yamux())
	} else {
		s.mux, err = yamux.Server(mc, cfg.yamux())
	}
	if err != nil {
		_ = s.pc.Close()
		return nil, fmt.Errorf("psk: yamux: %w", err)
	}
	if !client {
		s.spawn(s.acceptLoop)
	}
	s.tab.startIdle()
	s.sweepMu.Lock()
	s.sweep = time.AfterFunc(recvBufSweep, s.sweepBuffers)
	s.sweepMu.Unlock()
	return s, nil
}

// recvBufSweep is how often a session releases the receive buffers of its
// streams that hold no unread data. yamux keeps a stream's buffer at the
// largest size it ever reached — up to the stream window, 1 MiB by
// default — for as long as the stream lives: without the sweep, a pooled
// connection that once received a burst faster than its reader took it
// would hold that much for good. A busy stream pays one new buffer per
// sweep.
var recvBufSweep = 30 * time.Second

func (s *Session) sweepBuffers() {
	if s.ended.Load() {
		return
	}
	for _, st := range s.tab.streams() {
		st.ys.Shrink() // only if empty
	}
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	if !s.ended.Load() {
		s.sweep.Reset(recvBufSweep)
	}
}

// PeerID is the authenticated identity of the peer: the server identity
// on a client session, the client identity on a server session.
func (s *Session) PeerID() string { return s.peerID }

// LocalID is this side's identity.
func (s *Session) LocalID() string { return s.localID }

// IsClient reports whether this is the client side.
func (s *Session) IsClient() bool { return s.client }

// NumStreams is the number of streams open in either direction, including
// streams not yet accepted and streams half-closed by one side.
func (s *Session) NumStreams() int { return s.tab.len() }

// LocalAddr is the local address of the TCP connection.
func (s *Session) LocalAddr() net.Addr { return s.raw.LocalAddr() }

// RemoteAddr is the peer's address on the TCP connection.
func (s *Session) RemoteAddr() net.Addr { return s.raw.RemoteAddr() }

// Done is closed when the session has ended, for whatever reason.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// CloseChan is Done, under yamux's name.
func (s *Session) CloseChan() <-chan struct{} { return s.mux.CloseChan() }

// IsClosed reports whether the session has ended.
func (s *Session) IsClosed() bool { return s.mux.IsClosed() }

// Err returns nil while the session is open, then why it ended: an error
// wrapping ErrSessionClosed and the cause (ErrPeerClosed, ErrIdleTimeout,
// yamux.ErrKeepAliveTimeout, ErrBadRecord, ErrRecordRejected, an I/O
// error…); exactly ErrSessionClosed after a local Close.
func (s *Session) Err() error {
	if !s.mux.IsClosed() {
		return nil
	}
	if s.acceptDone != nil {
		<-s.acceptDone
	}
	return s.closedErr()
}

// Ping sends a yamux ping and returns the round-trip time.
func (s *Session) Ping() (time.Duration, error) {
	d, err := s.mux.Ping()
	if err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) {
			return 0, s.closedErr()
		}
		return 0, fmt.Errorf("psk: ping: %w", err)
	}
	return d, nil
}

// GoAway tells the peer to open no more streams (for a graceful drain);
// streams already open continue. A client Open after the server's GoAway
// fails with an error wrapping ErrSessionClosed and yamux.ErrRemoteGoAway.
func (s *Session) GoAway() error {
	s.goingAway.Store(true)
	if err := s.mux.GoAway(); err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) {
			return s.closedErr()
		}
		return fmt.Errorf("psk: go away: %w", err)
	}
	return nil
}

// GoingAway reports whether this side has sent (or is sending) GoAway:
// the session takes no new streams and ends once its streams have. A
// server uses it to end HTTP keep-alive connections on such a session
// after their current answer, so that their apps reconnect elsewhere.
func (s *Session) GoingAway() bool { return s.goingAway.Load() }

// PeerGoingAway reports whether the peer's GoAway has arrived: it takes no
// new streams (an Open fails at once). A client's pool stops picking it.
func (s *Session) PeerGoingAway() bool { return s.mux.RemoteGoAway() }

// Drain is the graceful end of a session: it sends GoAway and waits until
// this side has finished every stream, that is sent its FIN (CloseWrite,
// Close, a Reject) or reset it, counting the streams the peer opened
// before the GoAway arrived that nobody has accepted yet (a SYN that
// arrives after it is reset, and the peer's Open says so). It does not
// wait for the peer's side of a stream: a caller still reading a stream it
// has half-closed waits for that itself. Streams continue meanwhile: the
// caller keeps serving them (Accept) and closes the session afterwards.
//
// Drain returns nil once nothing is left to finish, or the session has
// ended; ctx's error if ctx ends first.
func (s *Session) Drain(ctx context.Context) error {
	// The GoAway waits for the connection, up to WriteTimeout if the peer
	// has stopped reading: no longer than ctx (the goroutine ends with the
	// write, or with the session, which the caller closes at ctx's end).
	sent := make(chan error, 1)
	go func() { sent <- s.GoAway() }()
	var err error
	select {
	case err = <-sent:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err != nil {
		if s.mux.IsClosed() {
			return nil
		}
		return err
	}
	select {
	case <-s.tab.whenDone():
		return nil
	case <-s.mux.CloseChan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats are counters for observability.
type Stats struct {
	RecordsIn  uint64 // DTLS records read
	RecordsOut uint64 // DTLS records written
	TCPWrites  uint64 // writes to the TCP connection
	BadStreams uint64 // streams dropped before Accept (bad header, timeout, limit)
	Streams    int    // NumStreams
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	return Stats{
		RecordsIn:  s.rc.rr.count.Load(),
		RecordsOut: s.rc.recordsOut.Load(),
		TCPWrites:  s.rc.writesOut.Load(),
		BadStreams: s.badStreams.Load(),
		Streams:    s.tab.len(),
	}
}

// Close ends the session and every stream (Reads return an error wrapping
// ErrSessionClosed, not io.EOF, on streams the peer had not finished),
// sends close_notify, closes the TCP connection and waits for the
// session's goroutines. It returns once everything has stopped.
func (s *Session) Close() error { return s.closeWith(ErrSessionClosed) }

// batch runs f with the records written meanwhile (by f or anyone else)
// collected into as few TCP writes as possible (recordConn.beginBatch): f
// must not wait for the peer. A failed write ends the session, as a failed
// frame write does, and is returned if f succeeded.
func (s *Session) batch(f func() error) error {
	s.rc.beginBatch()
	err := f()
	if ferr := s.rc.endBatch(); ferr != nil {
		ferr = fmt.Errorf("psk: session write: %w", unwrapPion(ferr))
		if !s.pc.closedHere(ferr) {
			s.setCause(ferr)
		}
		_ = s.raw.Close() // yamux's receive loop ends the session
		if err == nil {
			err = ferr
		}
	}
	return err
}

func (s *Session) closeWith(cause error) error {
	if s.mux.IsClosed() {
		// yamux ended it on its own (keepalive timeout, protocol
		// violation): record why before this close's cause can win.
		_ = s.closedErr()
	}
	s.setCause(cause)
	s.closeOnce.Do(func() {
		s.goMu.Lock()
		s.closing = true
		s.goMu.Unlock()
		s.tab.stop()
		_ = s.mux.Close() // closes plainConn: close_notify, TCP close
		_ = s.raw.Close()
		s.wg.Wait()
	})
	return nil
}

// muxConn is the connection yamux runs on: plainConn, whose Close also
// wakes the session's streams first.
type muxConn struct {
	*plainConn
	s *Session
}

// Close is called by yamux's Session.Close, whatever ends the session
// (Close, idle timeout, keepalive failure, I/O error, the peer's close),
// right after it closes the session's shutdown channel.
func (c muxConn) Close() error {
	c.s.endStreams()
	return c.plainConn.Close()
}

// endStreams wakes every stream Read and Write blocked on the session,
// which has ended.
//
// yamux v0.1.2 closes the session's shutdown channel before it closes the
// connection (a close_notify, which may take up to closeGrace) and closes
// its streams only after that. A stream Read or Write blocked meanwhile
// wakes on the closed channel, finds its stream still open and waits again:
// it spins, without returning, for as long as the close takes. A deadline
// in the past gives that loop a way out: Stream reports the ErrTimeout it
// then returns as the session's end, and keeps the deadlines there (see
// Stream.wake). It is done on the goroutine that closes yamux, before the
// connection close, so that nothing spins while another goroutine waits to
// be scheduled.
func (s *Session) endStreams() {
	// Before the table is read: a Stream wrapped after that sees ended
	// and wakes itself (wrap).
	if !s.ended.CompareAndSwap(false, true) {
		return
	}
	s.sweepMu.Lock()
	if s.sweep != nil {
		s.sweep.Stop()
	}
	s.sweepMu.Unlock()
	for _, st := range s.tab.streams() {
		st.wake()
		if st.tr != nil {
			st.tr.readable()
		}
	}
}

func (s *Session) setCause(err error) {
	s.causeMu.Lock()
	if s.cause == nil {
		s.cause = err
	}
	s.causeMu.Unlock()
}

// closedErr is the error operations on a dead session return, or on one
// whose idle timer has decided to close it (the close may still be under
// way, its cause not yet recorded).
func (s *Session) closedErr() error {
	s.causeMu.Lock()
	cause := s.cause
	s.causeMu.Unlock()
	if cause == nil && s.tab.idledOut() {
		cause = ErrIdleTimeout
	}
	if cause == nil && s.mux.IsClosed() {
		// yamux ended on its own (keepalive, protocol error).
		if s.client {
			// A client accepts no streams, so AcceptStream just reports
			// why.
			if _, err := s.mux.AcceptStream(); err != nil {
				cause = fmt.Errorf("psk: yamux: %w", err)
				s.setCause(cause)
			}
		} else {
			// The accept loop records why as it ends, promptly.
			<-s.acceptDone
			s.causeMu.Lock()
			cause = s.cause
			s.causeMu.Unlock()
		}
	}
	if cause == nil || cause == ErrSessionClosed {
		return ErrSessionClosed
	}
	return fmt.Errorf("%w: %w", ErrSessionClosed, cause)
}

// spawn runs f on a goroutine the session owns: Close waits for it. It
// returns false once the session is closing.
func (s *Session) spawn(f func()) bool {
	s.goMu.Lock()
	defer s.goMu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// Open opens a stream to target (empty: the server's default target),
// sends the stream header and waits for the server's status. Status 01 or
// 02 gives a *StreamRefusedError. ctx bounds the whole open, as does
// Config.OpenTimeout the wait for the status. Only the client opens.
func (s *Session) Open(ctx context.Context, target string) (*Stream, error) {
	if !s.client {
		return nil, fmt.Errorf("%w: only the client side opens streams", ErrConfig)
	}
	hdr, err := appendStreamHeader(make([]byte, 0, 3+len(target)), target)
	if err != nil {
		return nil, err
	}
	if s.mux.IsClosed() {
		return nil, s.closedErr()
	}
	if s.worn.Load() {
		return nil, fmt.Errorf("%w: %w", ErrSessionClosed, ErrKeyLimit)
	}
	if n := s.tab.len(); n >= s.cfg.MaxStreams {
		return nil, fmt.Errorf("%w (%d)", ErrTooManyStreams, n)
	}
	select {
	case s.openSem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.mux.CloseChan():
		return nil, s.closedErr()
	}
	release := sync.OnceFunc(func() { <-s.openSem })
	if !s.tab.reserve() {
		release()
		return nil, s.closedErr()
	}
	// The SYN and the header go out in one TCP write. Nothing in the batch
	// waits for the server: OpenStream would wait only when yamux has
	// AcceptBacklog streams unacknowledged, and each of those holds an
	// openSem slot until its ACK (which comes with its status) or until
	// yamux forgets it, so with our slot taken there is room.
	var st *Stream
	err = s.batch(func() error {
		ys, err := s.mux.OpenStream()
		if err != nil {
			return err
		}
		st = s.wrap(ys)
		_, err = ys.Write(hdr)
		return err
	})
	s.tab.unreserve()
	if st == nil {
		release()
		switch {
		case errors.Is(err, yamux.ErrSessionShutdown):
			return nil, s.closedErr()
		case errors.Is(err, yamux.ErrRemoteGoAway):
			return nil, fmt.Errorf("%w: server is draining: %w", ErrSessionClosed, err)
		}
		return nil, fmt.Errorf("psk: open stream: %w", err)
	}
	fail := func(err error) (*Stream, error) {
		_ = st.Close()
		// Hold the slot until yamux forgets the stream, so that OpenStream
		// never blocks on yamux's own limit of unacknowledged streams.
		s.tab.whenGone(st.tr, release)
		return nil, err
	}
	if err != nil {
		return fail(st.writeErr(err))
	}

	deadline := time.Now().Add(s.cfg.OpenTimeout)
	ctxBound := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxBound = d, true
	}
	st.setReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { st.setReadDeadline(time.Unix(1, 0)) })
	var b [1]byte
	_, err = io.ReadFull(readerFunc(st.readRaw), b[:])
	if !stop() {
		return fail(fmt.Errorf("psk: open stream: %w", ctx.Err()))
	}
	st.setReadDeadline(time.Time{})
	if err != nil {
		err = st.sessionEnd(err)
		switch {
		case errors.Is(err, yamux.ErrTimeout):
			if ctxBound {
				// The context's own timer may not have fired yet.
				return fail(fmt.Errorf("psk: open stream: %w", context.DeadlineExceeded))
			}
			return fail(fmt.Errorf("psk: open stream: no status from the server within %v: %w", s.cfg.OpenTimeout, os.ErrDeadlineExceeded))
		case errors.Is(err, io.EOF) && s.tab.finReceived(st.tr):
			return fail(fmt.Errorf("%w: server closed the stream without a status", ErrBadStreamHeader))
		case errors.Is(err, yamux.ErrConnectionReset) && s.mux.RemoteGoAway():
			// The SYN crossed the server's GoAway, which yamux answers
			// with a reset; the GoAway came first on the wire.
			return fail(fmt.Errorf("%w: server is draining: %w", ErrSessionClosed, yamux.ErrRemoteGoAway))
		}
		return fail(st.readErr(err))
	}
	release()
	switch status := Status(b[0]); status {
	case StatusOK:
		return st, nil
	case StatusRefused, StatusUnreachable:
		_ = st.Close()
		return nil, &StreamRefusedError{Status: status, Target: target}
	default:
		return fail(fmt.Errorf("%w: unknown status %#02x", ErrBadStreamHeader, b[0]))
	}
}

// IncomingStream is a stream whose header the server has read: decide
// with Accept or Reject (exactly one of them must be called).
type IncomingStream struct {
	st       *Stream
	kind     Kind
	target   string
	answered atomic.Bool
}

// Kind is KindDefault or KindNamed.
func (in *IncomingStream) Kind() Kind { return in.kind }

// Target is the named target ("" for KindDefault). It is whatever bytes the
// client sent (1–255 of them): check it against policy before use.
func (in *IncomingStream) Target() string { return in.target }

// StreamID is the yamux stream ID.
func (in *IncomingStream) StreamID() uint32 { return in.st.StreamID() }

// Session returns the session carrying the stream.
func (in *IncomingStream) Session() *Session { return in.st.s }

// Accept sends status 00 and returns the stream for data.
func (in *IncomingStream) Accept() (*Stream, error) {
	if !in.answered.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("%w: stream %d already answered", ErrConfig, in.StreamID())
	}
	if in.st.s.tab.ending() {
		// The idle timer decided to close the session before this stream's
		// SYN arrived (or the session is closing): an OK now would hand the
		// client a stream the close is about to cut. Without a status (and
		// without the FIN a Close would send, which its Open would take
		// for a malformed answer) its Open fails with the session, and its
		// pool retries elsewhere; the session's close ends the stream.
		return nil, in.st.s.closedErr()
	}
	// yamux has not acknowledged the stream (DeferAck): the ACK, with the
	// stream's receive window, and the status go out in one TCP write.
	err := in.st.s.batch(func() error {
		if err := in.st.ys.Ack(); err != nil {
			return in.st.writeErr(in.st.sessionEnd(err))
		}
		_, err := in.st.Write([]byte{byte(StatusOK)})
		return err
	})
	if err != nil {
		_ = in.st.Close()
		return nil, err
	}
	return in.st, nil
}

// Reject sends status (StatusRefused or StatusUnreachable) and closes the
// stream.
func (in *IncomingStream) Reject(status Status) error {
	if status != StatusRefused && status != StatusUnreachable {
		return fmt.Errorf("%w: reject with status %v", ErrConfig, status)
	}
	if !in.answered.CompareAndSwap(false, true) {
		return fmt.Errorf("%w: stream %d already answered", ErrConfig, in.StreamID())
	}
	var cerr error
	err := in.st.s.batch(func() error { // the status and the FIN in one TCP write
		_, err := in.st.Write([]byte{byte(status)})
		cerr = in.st.Close()
		return err
	})
	if err == nil {
		err = cerr
	}
	in.st.resetUnlessPeerCloses(in.st.s.cfg.OpenTimeout)
	return err
}

// Accept returns the next stream whose header has been read. A stream
// dropped before it could be accepted (malformed header, header timeout,
// stream limit) is returned as a *StreamError: the session stays usable,
// call Accept again. Once the session has ended Accept returns an error
// wrapping ErrSessionClosed. Only the server accepts.
func (s *Session) Accept(ctx context.Context) (*IncomingStream, error) {
	if s.client {
		return nil, fmt.Errorf("%w: only the server side accepts streams", ErrConfig)
	}
	select {
	case it := <-s.incoming:
		return it.in, it.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.acceptDone:
		return nil, s.closedErr()
	}
}

// acceptLoop takes streams from yamux (unacknowledged: the status of Accept
// or Reject carries the ACK) and reads each header on its own goroutine, so
// a slow header does not hold up the others.
func (s *Session) acceptLoop() {
	defer close(s.acceptDone)
	for {
		ys, err := s.mux.AcceptStream()
		if err != nil {
			if !errors.Is(err, yamux.ErrSessionShutdown) {
				s.setCause(fmt.Errorf("psk: yamux: %w", err))
			}
			return
		}
		select {
		case s.hdrSem <- struct{}{}:
		case <-s.mux.CloseChan():
			_ = ys.Close()
			s.acceptRest()
			return
		}
		if !s.spawn(func() { s.readHeader(ys) }) {
			_ = ys.Close()
			s.acceptRest()
			return
		}
	}
}

// acceptRest closes the streams yamux still holds for Accept once the
// session has ended, and records why it ended, which AcceptStream
// returns after them (a keepalive timeout, a protocol violation); the
// accept loop is where the server learns it.
func (s *Session) acceptRest() {
	for {
		ys, err := s.mux.AcceptStream()
		if err != nil {
			if !errors.Is(err, yamux.ErrSessionShutdown) {
				s.setCause(fmt.Errorf("psk: yamux: %w", err))
			}
			return
		}
		_ = ys.Close()
	}
}

func (s *Session) readHeader(ys *yamux.Stream) {
	defer func() { <-s.hdrSem }()
	st := s.wrap(ys)
	drop := func(err error) {
		if s.mux.IsClosed() || s.ended.Load() {
			_ = st.Close()
			return
		}
		s.badStreams.Add(1)
		_ = st.Close()
		s.deliver(acceptItem{err: &StreamError{StreamID: ys.StreamID(), Err: err}})
	}
	st.setReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	kind, target, err := readStreamHeader(readerFunc(st.readRaw))
	st.setReadDeadline(time.Time{})
	if err != nil {
		if errors.Is(err, yamux.ErrTimeout) {
			err = fmt.Errorf("%w: no complete header within %v", ErrBadStreamHeader, s.cfg.HeaderTimeout)
		}
		drop(err)
		st.resetUnlessPeerCloses(s.cfg.OpenTimeout) // as Reject does for the refusals below
		return
	}
	if n := s.tab.len(); n > s.cfg.MaxStreams {
		_ = (&IncomingStream{st: st}).Reject(StatusRefused) // the status with the FIN; resets a lingering stream
		drop(fmt.Errorf("%w (%d)", ErrTooManyStreams, n))
		return
	}
	s.deliver(acceptItem{in: &IncomingStream{st: st, kind: kind, target: target}})
}

func (s *Session) deliver(it acceptItem) {
	select {
	case s.incoming <- it:
	case <-s.mux.CloseChan():
		if it.in != nil {
			_ = it.in.st.Close()
		}
	}
}
