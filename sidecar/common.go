package sidecar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/proxy"
	"github.com/milagro-sc/milagro/psk"
)

// stdLogger is a standard library logger (what net/http writes its own
// errors to) whose lines become warn lines of l: the log stays JSON.
func stdLogger(l zerolog.Logger) *stdlog.Logger { return stdlog.New(warnWriter{l}, "", 0) }

type warnWriter struct{ l zerolog.Logger }

func (w warnWriter) Write(p []byte) (int, error) {
	w.l.Warn().Msg(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// ErrDrainTimeout is returned by Run when SIGTERM's drain did not finish
// within the shutdown timeout and connections were cut (exit status 1).
var ErrDrainTimeout = errors.New("shutdown timeout: connections were still open and have been closed")

// LogTimeFormat is the format of the logs' "time" field: RFC 3339 with
// milliseconds (zerolog's default stops at seconds, which neither orders
// the lines of a second nor gives the console format its milliseconds).
const LogTimeFormat = "2006-01-02T15:04:05.000Z07:00"

func init() {
	// zerolog's setting is global; set before any logger runs.
	zerolog.TimeFieldFormat = LogTimeFormat
}

// NewLogger builds the zerolog logger of a sidecar.
func NewLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lv, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	out := w
	switch format {
	case "json":
	case "console":
		// Colours only on a terminal: not in a file, a pipe or a
		// container's log.
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000", NoColor: !isTerminal(w)}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(out).Level(lv).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (c *Common) quiet(class string) bool { return slices.Contains(c.Quiet, class) }

func (c *Common) validate() error {
	if c.Keys == "" {
		return errors.New("--keys is required")
	}
	for _, q := range c.Quiet {
		if q != "handshake-errs" && q != "conns" {
			return fmt.Errorf("--quiet %q: the classes are handshake-errs and conns", q)
		}
	}
	if c.MaxConns <= 0 {
		return errors.New("--max-conns must be positive")
	}
	if c.Listen != "" {
		if _, _, err := proxy.ParseAddr(c.Listen); err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
	}
	if c.Status != "" {
		if _, _, err := net.SplitHostPort(c.Status); err != nil {
			return fmt.Errorf("--status %q: want HOST:PORT: %w", c.Status, err)
		}
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"timed-reload", c.TimedReload}, {"shutdown-timeout", c.ShutdownTimeout}, {"connect-timeout", c.ConnectTimeout},
		{"handshake-timeout", c.HandshakeTO}, {"idle-timeout", c.IdleTimeout}, {"session-idle-timeout", c.SessionIdle},
		{"epoch-grace", c.Grace},
	} {
		if d.v < 0 {
			return fmt.Errorf("--%s %v: must not be negative", d.flag, d.v)
		}
	}
	if c.HandshakeTO == 0 {
		return errors.New("--handshake-timeout must be positive: every handshake step needs a deadline")
	}
	if c.StreamWindow < psk.MinStreamWindow || c.StreamWindow > psk.MaxStreamWindow {
		return fmt.Errorf("--stream-window %d: must be from %d to %d", c.StreamWindow, psk.MinStreamWindow, psk.MaxStreamWindow)
	}
	if c.EnablePprof && c.Status == "" {
		return errors.New("--enable-pprof needs --status (the profiles are served there)")
	}
	if c.EnableShutdown && c.Status == "" {
		return errors.New("--enable-shutdown needs --status (/_shutdown is served there)")
	}
	return nil
}

// sessionTCPKeepAlive is the TCP keep-alive of secure-session connections:
// off while the session's own keepalive (--keepalive; 0 is psk's default
// interval, negative turns it off) watches the peer, Go's default
// otherwise.
func (c *Common) sessionTCPKeepAlive() time.Duration {
	if c.KeepAlive >= 0 {
		return -1
	}
	return 0
}

// runBeside starts what both sidecars run beside their listeners, on wg
// until bg ends: the status endpoint (with --status; its address is bound
// before runBeside returns, and returned: port 0 picks one) and the key
// watcher. With --enable-shutdown, POST /_shutdown calls shutdown (which
// starts the drain, as SIGTERM does).
func (c *Common) runBeside(bg context.Context, wg *sync.WaitGroup, m *Metrics, keys *Keystore, hup <-chan os.Signal,
	log zerolog.Logger, status func(full bool) StatusInfo, shutdown func()) (statusAddr string, err error) {
	if c.Status != "" {
		sl, err := net.Listen("tcp", c.Status)
		if err != nil {
			return "", fmt.Errorf("status listener: %w", err)
		}
		statusAddr = sl.Addr().String()
		wg.Go(func() {
			var stop func(from string)
			if c.EnableShutdown {
				stop = func(from string) {
					log.Info().Str("from", from).Msg("shutdown requested through /_shutdown")
					shutdown()
				}
			}
			if err := serveStatus(bg, sl, m, c.EnablePprof, status, stop, log); err != nil {
				log.Error().Err(err).Msg("status endpoint failed")
			}
		})
	}
	wg.Go(func() {
		if err := keys.Watch(bg, hup, c.TimedReload); err != nil {
			log.Error().Err(err).Msg("key watcher stopped")
		}
	})
	return statusAddr, nil
}

// bufConn reads a session connection through a small buffer: each
// handshake message then arrives in one read(2) instead of two (the frame
// header, then its body). Bytes read ahead stay in the buffer for the next
// layer (DTLS), which reads through it too.
type bufConn struct {
	net.Conn
	br *bufio.Reader
}

// BufferedConn wraps a new session connection as both sidecars do before
// the handshake (see bufConn).
func BufferedConn(c net.Conn) net.Conn { return &bufConn{Conn: c, br: bufio.NewReaderSize(c, 2048)} }

func (c *bufConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// localTCPKeepAlive is the TCP keep-alive of plaintext connections to or
// from addr: off when addr is on this host (a dead local peer closes its
// sockets), Go's default otherwise.
func localTCPKeepAlive(addr string) time.Duration {
	if proxy.IsLoopback(addr) {
		return -1
	}
	return 0
}

func (c *Common) pskConfig() *psk.Config {
	return &psk.Config{
		HandshakeTimeout:  c.HandshakeTO,
		KeepAliveInterval: c.KeepAlive,
		IdleTimeout:       c.SessionIdle,
		StreamWindow:      uint32(c.StreamWindow),
		// A proxied connection half-closed at one end lives as long as a
		// fully open one (TCP's semantics: a backend may answer a
		// half-closed request after a long silence); --idle-timeout, if
		// set, bounds both alike, and keepalives end a lost peer's.
		StreamCloseTimeout: -1,
	}
}

// tracker counts and closes what a sidecar has open, for drain.
type tracker struct {
	mu       sync.Mutex
	sessions map[*psk.Session]struct{}
	conns    map[net.Conn]struct{}
	streams  atomic.Int64
	idle     chan struct{}   // signalled when streams drops to 0
	handlers sync.WaitGroup  // the connections' goroutines, until they have logged their end
	forced   context.Context // ended by force: every drain's context derives from it
	force    func()          // ends a drain under way at once
	cut      atomic.Bool     // a drain has timed out and is closing what is left
}

// errDrainCut is how a connection that a drain cut (its time was up) ends
// in its log line and count: the copy sees only its own sockets closed.
var errDrainCut = errors.New("cut at the end of --shutdown-timeout")

// endErr is what a proxied connection's end is logged and counted as: err,
// or errDrainCut for one that ended cleanly while a timed-out drain was
// closing everything.
func (t *tracker) endErr(err error) error {
	if err == nil && t.cut.Load() {
		return errDrainCut
	}
	return err
}

func newTracker() *tracker {
	t := &tracker{sessions: map[*psk.Session]struct{}{}, conns: map[net.Conn]struct{}{}, idle: make(chan struct{}, 1)}
	t.forced, t.force = context.WithCancel(context.Background())
	return t
}

// settleTime bounds how long Run waits, after a drain, for the
// connections' goroutines to log their end.
const settleTime = 2 * time.Second

// Force ends a drain under way at once, as if --shutdown-timeout had
// passed (`milagro server` calls it on a second SIGTERM or SIGINT); Run
// then returns ErrDrainTimeout. Before the drain it makes the drain
// immediate.
func (s *Server) Force() { s.t.force() }

// Force is Server.Force for the client.
func (c *Client) Force() { c.t.force() }

// drainContext is the drain's deadline: --shutdown-timeout, or sooner if
// force is called (a second SIGTERM or SIGINT).
func (t *tracker) drainContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.forced, timeout)
}

// settle waits, at most d, for the connections' goroutines to finish
// after a drain, so that the lines they log at their end (stream closed,
// session closed, with the byte counts) are written before the process
// exits.
func (t *tracker) settle(d time.Duration) {
	done := make(chan struct{})
	go func() { t.handlers.Wait(); close(done) }() // ends when the handlers do, at the latest with the process
	select {
	case <-done:
	case <-time.After(d):
	}
}

func (t *tracker) addSession(s *psk.Session) {
	t.mu.Lock()
	t.sessions[s] = struct{}{}
	t.mu.Unlock()
}

func (t *tracker) removeSession(s *psk.Session) {
	t.mu.Lock()
	delete(t.sessions, s)
	t.mu.Unlock()
}

func (t *tracker) addConn(c net.Conn) {
	t.mu.Lock()
	t.conns[c] = struct{}{}
	t.mu.Unlock()
}

func (t *tracker) removeConn(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

func (t *tracker) numSessions() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.sessions)
}

func (t *tracker) streamDone() {
	if t.streams.Add(-1) == 0 {
		select {
		case t.idle <- struct{}{}:
		default:
		}
	}
}

// drain tells every session to open no more streams and waits until none
// has a stream left, counting those a peer opened that are not accepted yet
// (psk.Session.Drain), until the streams this sidecar counts have ended,
// and until no tracked connection is left (on the server, a handshake
// under way: its session, once up, is drained in turn; a sidecar that
// stopped accepting has no new ones), or until ctx ends; then it closes
// every session and connection. It reports whether the drain was clean:
// nothing in use had to be cut (idle sessions are closed either way, so a
// drain with nothing open is clean even with no time at all).
func (t *tracker) drain(ctx context.Context) bool {
	done := map[*psk.Session]bool{}
	for ctx.Err() == nil {
		t.mu.Lock()
		var ss []*psk.Session
		for s := range t.sessions {
			if !done[s] {
				ss = append(ss, s)
				done[s] = true
			}
		}
		conns := len(t.conns)
		t.mu.Unlock()
		if len(ss) == 0 {
			if conns == 0 && t.streams.Load() == 0 {
				break
			}
			select {
			case <-t.idle:
			case <-time.After(20 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Go(func() { _ = s.Drain(ctx) }) // ctx's end is seen by the loop
		}
		wg.Wait()
	}
	t.mu.Lock()
	clean := len(t.conns) == 0 && t.streams.Load() == 0
	if !clean {
		t.cut.Store(true)
	}
	ss := make([]*psk.Session, 0, len(t.sessions))
	for s := range t.sessions {
		ss = append(ss, s)
	}
	for c := range t.conns {
		// Cut in the middle (an application connection still open at the
		// timeout, a handshake under way): a reset, so that the peer does
		// not take what it got so far for a whole answer.
		if l, ok := c.(interface{ SetLinger(int) error }); ok {
			_ = l.SetLinger(0)
		}
		c.Close()
	}
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() { s.Close() })
	}
	wg.Wait()
	return clean
}

// mpinkexGrace maps --epoch-grace to mpinkex's convention, where 0 means the
// default: an operator's explicit 0 means no grace at all.
func mpinkexGrace(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// ReadSecretFile reads a one-line secret (bearer token, passphrase, PIN or
// passphrase factor), refusing files that group or others may access, and
// trims one trailing newline (LF or CRLF). Every secret file the command
// line names goes through it, so a factor reads the same in `keys fetch`
// (which stores the token) and in `milagro client` (which rebuilds the key).
func ReadSecretFile(path, what string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%s file: %w", what, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s file %s has mode %04o: it must not be group/world-accessible (chmod 600)", what, path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s file: %w", what, err)
	}
	defer clear(b)
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("%s file %s is empty", what, path)
	}
	return s, nil
}

// acceptLoop accepts on ln until it is closed. Accept errors other than
// closure (out of file descriptors and the like) back off as net/http does;
// a connection beyond the slots (maxConns) is closed at once, counted, and
// logged at most once a second (a flood must not become a log flood); every
// other runs handle in its own goroutine (counted in handlers), and handle
// calls release (once, from any goroutine) when the connection is finished
// with, to free its slot.
func acceptLoop(ln net.Listener, slots chan struct{}, maxConns int, m *Metrics, log zerolog.Logger, handlers *sync.WaitGroup, handle func(c net.Conn, release func())) {
	var delay time.Duration
	var refusals rateLimit
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn().Err(err).Dur("retry_in", delay).Msg("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		m.Accepts.Inc()
		select {
		case slots <- struct{}{}:
		default:
			m.OverLimit.Inc()
			if ok, skipped := refusals.allow(); ok {
				log.Warn().Str("remote", c.RemoteAddr().String()).Int("max_conns", maxConns).Int("also_refused", skipped).
					Msg("connection limit reached; closing")
			}
			c.Close()
			continue
		}
		handlers.Go(func() { handle(c, func() { <-slots }) })
	}
}

// warnLimit rate-limits warn lines about refused connections: a server
// session's about its streams (refused, dropped, backend unreachable: a
// client that opens streams in a loop must not turn each into a log line,
// a review measured 8 bytes of log per byte sent), and a client's about
// app connections it could not carry. At most warnBurst lines a second; the first after a
// held-back one says how many were (also_refused); the counters count
// them all.
type warnLimit struct {
	log zerolog.Logger
	rl  rateLimit
}

const warnBurst = 10

// event is a warn event, or nil (on which zerolog's methods do nothing)
// if warnBurst lines were written within the current second.
func (w *warnLimit) event() *zerolog.Event {
	ok, skipped := w.rl.allowUpTo(warnBurst)
	if !ok {
		return nil
	}
	ev := w.log.Warn()
	if skipped > 0 {
		ev = ev.Int("also_refused", skipped)
	}
	return ev
}

// rateLimit lets log lines through at most a number a second, so that a
// flood (of refusals, say) does not become a log flood; the next line that
// gets through says how many were held back (also_refused).
type rateLimit struct {
	mu      sync.Mutex
	window  time.Time // start of the current second
	n       int       // lines let through in it
	skipped int       // lines held back since the last let through
}

// allow reports whether to log now (at most once a second), and how many
// lines were held back since the last one.
func (r *rateLimit) allow() (ok bool, skipped int) { return r.allowUpTo(1) }

// allowUpTo is allow for at most burst lines a second.
func (r *rateLimit) allowUpTo(burst int) (ok bool, skipped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.window) >= time.Second {
		r.window, r.n = now, 0
	}
	if r.n >= burst {
		r.skipped++
		return false, 0
	}
	r.n++
	skipped, r.skipped = r.skipped, 0
	return true, skipped
}
