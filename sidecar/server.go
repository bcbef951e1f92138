package sidecar

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/pattern"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/proxy"
	"github.com/milagro-sc/milagro/psk"
)

// Server is `milagro server`: it accepts secure sessions, authenticates and
// authorises clients, and forwards each stream to a plaintext backend.
type Server struct {
	cfg   *ServerConfig
	log   zerolog.Logger
	keys  *Keystore
	allow *AllowList
	m     *Metrics
	t     *tracker

	hs          chan struct{}             // handshake slots
	conns       chan struct{}             // --max-conns slots for secure sessions (TCP connections)
	streams     chan struct{}             // --max-conns slots for proxied connections (streams, backend connections)
	inflight    atomic.Int64              // connections in their handshake
	pending     boundedCounts[netip.Addr] // connections in their handshake, by source address (--max-handshakes-per-ip)
	perClient   boundedCounts[string]     // proxied connections, by client identity (--max-conns-per-client)
	overloadLog rateLimit                 // the "overloaded" refusals' log line
	ready       atomic.Bool
	draining    atomic.Bool
	addr        atomic.Value // string

	httpProxy *proxy.HTTPIdentityProxy // HTTP mode

	routes   map[string]string        // route name → address, "(default)" for --target
	routeACL map[string]*AllowList    // --route-allow, by route name
	checks   map[string]*backendCheck // by address (routes may share one), fixed at NewServer
	probeMu  sync.Mutex               // backendStatus
}

// NewServer validates cfg and loads the keys.
func NewServer(cfg *ServerConfig, log zerolog.Logger) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, configErr(err)
	}
	allow, err := NewAllowList(cfg.AllowIDs, cfg.AllowAll)
	if err != nil {
		return nil, configErr(err)
	}
	if cfg.Target == "" && len(cfg.Routes) == 0 {
		return nil, configErr(errors.New("--target (or at least one --route) is required"))
	}
	for name, t := range cfg.routesWithDefault() {
		if _, _, err := proxy.ParseAddr(t); err != nil {
			return nil, configErr(fmt.Errorf("target %s: %w", name, err))
		}
		if !cfg.UnsafeTarget && !proxy.IsLoopback(t) {
			return nil, configErr(fmt.Errorf("target %s (%s) is not on loopback: plaintext would leave the host; pass --unsafe-target if that is intended", name, t))
		}
	}
	if cfg.HTTP && cfg.ProxyProtocol {
		return nil, configErr(errors.New("--http and --proxy-protocol exclude each other"))
	}
	if cfg.HTTP && cfg.Target == "" {
		return nil, configErr(errors.New("--http needs --target, the backend its reverse proxy serves (named --route targets stay TCP)"))
	}
	for name, addr := range cfg.Routes {
		if len(name) > 255 {
			return nil, configErr(fmt.Errorf("route name of %d bytes: at most 255 (PROTOCOL.md §7)", len(name)))
		}
		if cfg.HTTP && sameBackend(addr, cfg.Target) {
			// Piped as TCP, the route would let a client send its own
			// X-Milagro-Client-Id to the backend that trusts it.
			return nil, configErr(fmt.Errorf("route %s: with --http, a named route to the --target backend would bypass the identity header", name))
		}
	}
	if cfg.MaxHandshakes <= 0 {
		return nil, configErr(errors.New("--max-handshakes must be positive"))
	}
	if cfg.MaxSessionAge < 0 {
		return nil, configErr(errors.New("--max-session-age must not be negative"))
	}
	if cfg.MaxHandshakesPerIP < 0 {
		return nil, configErr(errors.New("--max-handshakes-per-ip must not be negative"))
	}
	if cfg.MaxConnsPerClient < 0 {
		return nil, configErr(errors.New("--max-conns-per-client must not be negative"))
	}
	routeACL := map[string]*AllowList{}
	for name, pats := range cfg.RouteAllow {
		addr, ok := cfg.Routes[name]
		if !ok {
			return nil, configErr(fmt.Errorf("--route-allow %s: no --route of that name", name))
		}
		if cfg.Target != "" && sameBackend(addr, cfg.Target) {
			// Every allowed client reaches it as the default target.
			return nil, configErr(fmt.Errorf("--route-allow %s: the route leads to the --target backend, which every allowed client reaches anyway: the restriction would not hold", name))
		}
		for _, p := range pats {
			if err := pattern.Validate(p); err != nil {
				return nil, configErr(fmt.Errorf("--route-allow %s=%s: %w", name, p, err))
			}
		}
		routeACL[name] = &AllowList{Patterns: pats}
	}
	m := NewMetrics("server")
	m.quietConns = cfg.quiet("conns")
	ks, err := OpenKeystore(KeystoreOptions{Dir: cfg.Keys, Role: RoleServer, Log: log, OnReload: reloadCounter(m)})
	if err != nil {
		return nil, err
	}
	m.observeKeys(ks.Current())
	s := &Server{cfg: cfg, log: log, keys: ks, allow: allow, m: m, t: newTracker(),
		hs: make(chan struct{}, cfg.MaxHandshakes), conns: make(chan struct{}, cfg.MaxConns), streams: make(chan struct{}, cfg.MaxConns),
		routes: cfg.routesWithDefault(), routeACL: routeACL, checks: map[string]*backendCheck{}}
	for _, addr := range s.routes {
		s.checks[addr] = &backendCheck{}
	}
	return s, nil
}

func (c *ServerConfig) routesWithDefault() map[string]string {
	r := map[string]string{}
	for k, v := range c.Routes {
		r[k] = v
	}
	if c.Target != "" {
		r["(default)"] = c.Target
	}
	return r
}

func reloadCounter(m *Metrics) func(string, *Keys, error) {
	return func(_ string, cur *Keys, err error) {
		if err != nil {
			m.Reloads.WithLabelValues("error").Inc()
		} else {
			m.Reloads.WithLabelValues("ok").Inc()
		}
		m.observeKeys(cur)
	}
}

// Keystore returns the server's keystore.
func (s *Server) Keystore() *Keystore { return s.keys }

// Addr returns the bound listen address once Run has bound it.
func (s *Server) Addr() string { v, _ := s.addr.Load().(string); return v }

// Run serves until ctx ends, then drains: it stops accepting, tells every
// session to open no more streams, waits up to the shutdown timeout for open
// streams, and closes everything. It returns nil after a clean drain and
// ErrDrainTimeout if connections had to be cut. hup delivers SIGHUP.
func (s *Server) Run(ctx context.Context, hup <-chan os.Signal) error {
	ln, err := proxy.Listen(s.cfg.Listen, s.cfg.sessionTCPKeepAlive())
	if err != nil {
		return err
	}
	s.addr.Store(ln.Addr().String())
	ctx, shutdown := context.WithCancel(ctx) // SIGTERM, or POST /_shutdown
	defer shutdown()
	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(context.Background())
	defer func() { stopBG(); wg.Wait() }()
	statusAddr, err := s.cfg.runBeside(bg, &wg, s.m, s.keys, hup, s.log, s.status, shutdown)
	if err != nil {
		ln.Close()
		return err
	}
	if s.cfg.HTTP {
		hp, err := proxy.NewHTTPIdentityProxy(proxy.HTTPConfig{
			Target: s.cfg.Target, ConnectTimeout: s.cfg.ConnectTimeout, KeepAlive: localTCPKeepAlive(s.cfg.Target),
			ReadHeaderTimeout: s.cfg.HandshakeTO, IdleTimeout: s.cfg.SessionIdle,
			// --idle-timeout: a backend quiet that long before it answers
			// gets 504, as a quiet TCP stream is cut.
			ResponseTimeout: s.cfg.IdleTimeout,
			ErrorLog:        stdLogger(s.log.With().Str("component", "http").Logger()),
			Count:           s.m.countBytes,
			// A keep-alive connection on a session past
			// --max-session-age (or draining) ends after its answer.
			Retiring: func(c net.Conn) bool {
				st, ok := c.(*psk.Stream)
				return ok && st.Session().GoingAway()
			},
			OnBackendError: func(err error) {
				s.m.BackendErrors.Inc()
				if errors.Is(err, proxy.ErrAnswerCut) {
					// Reachable, but it broke off an answer; the stream's
					// line names the client.
					s.log.Warn().Err(err).Str("target", s.cfg.Target).Msg("backend answer cut short")
					return
				}
				s.noteBackend(s.cfg.Target, err)
				s.log.Warn().Err(err).Str("target", s.cfg.Target).Msg("backend unreachable")
			},
		})
		if err != nil {
			ln.Close()
			return err
		}
		s.httpProxy = hp
		wg.Go(func() { hp.Run(bg) })
	}
	s.ready.Store(true)
	k := s.keys.Current()
	s.log.Info().Str("listen", ln.Addr().String()).Str("status", statusAddr).Str("identity", k.Identity).Str("domain", k.Domain).
		Str("target", s.cfg.Target).Bool("http", s.cfg.HTTP).Bool("proxy_protocol", s.cfg.ProxyProtocol).Msg("server ready")

	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		acceptLoop(ln, s.conns, s.cfg.MaxConns, s.m, s.log, &s.t.handlers, func(c net.Conn, release func()) {
			defer release()
			s.handleConn(bg, c)
		})
	}()
	<-ctx.Done()
	s.draining.Store(true)
	s.ready.Store(false)
	ln.Close()
	<-acceptDone
	if s.httpProxy != nil {
		s.httpProxy.Drain() // idle keep-alive connections would hold the drain to its timeout
	}
	s.log.Info().Int64("streams", s.t.streams.Load()).Int("sessions", s.t.numSessions()).Dur("timeout", s.cfg.ShutdownTimeout).Msg("draining")
	dctx, cancel := s.t.drainContext(s.cfg.ShutdownTimeout)
	defer cancel()
	clean := s.t.drain(dctx)
	s.t.settle(settleTime)
	if !clean {
		s.log.Warn().Msg("drain timed out or was cut short; connections closed")
		return ErrDrainTimeout
	}
	s.log.Info().Msg("drained")
	return nil
}

// admit counts c against its source address's handshakes under way
// (--max-handshakes-per-ip) and returns the function that ends the count,
// or nil if the source already has that many: peers that connect and send
// nothing from one address cannot hold every --max-conns slot. Unix
// socket peers and a bound of 0 are not counted.
func (s *Server) admit(c net.Conn) (done func(), ok bool) {
	ta, isTCP := c.RemoteAddr().(*net.TCPAddr)
	if s.cfg.MaxHandshakesPerIP <= 0 || !isTCP {
		return func() {}, true
	}
	ip, _ := netip.AddrFromSlice(ta.IP)
	return s.pending.enter(ip.Unmap(), s.cfg.MaxHandshakesPerIP)
}

// enterClient counts one more proxied connection for the client identity
// id and returns the function that ends the count, or false if id already
// has --max-conns-per-client open: one client (a connection leak, a
// compromised workload) cannot take every --max-conns slot from the
// others. A bound of 0 counts nothing.
func (s *Server) enterClient(id string) (leave func(), ok bool) {
	if s.cfg.MaxConnsPerClient <= 0 {
		return func() {}, true
	}
	return s.perClient.enter(id, s.cfg.MaxConnsPerClient)
}

// boundedCounts counts what is under way per key (a source address, a
// client identity) against a bound.
type boundedCounts[K comparable] struct {
	mu sync.Mutex
	n  map[K]int
}

// enter counts one more for k and returns the function that ends the
// count, or false, counting nothing, if k already has limit.
func (b *boundedCounts[K]) enter(k K, limit int) (leave func(), ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n[k] >= limit {
		return nil, false
	}
	if b.n == nil {
		b.n = map[K]int{}
	}
	b.n[k]++
	return func() {
		b.mu.Lock()
		if b.n[k]--; b.n[k] <= 0 {
			delete(b.n, k)
		}
		b.mu.Unlock()
	}, true
}

// refuseOverloaded answers c with the overloaded Alert (its handshake
// past a limit, named with its value in the log line), counts it, logs it
// at most once a second, and closes c: what the peer sent has been read
// (a closed socket with unread bytes would reset the connection and lose
// the Alert); it lingers only briefly while overloaded.
func (s *Server) refuseOverloaded(c net.Conn, remote, limitName string, limit int, msg string) {
	s.m.Handshakes.WithLabelValues("overloaded").Inc()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = mpinkex.WriteAlert(c, mpinkex.AlertOverloaded)
	if !s.cfg.quiet("handshake-errs") {
		if ok, skipped := s.overloadLog.allow(); ok {
			s.log.Warn().Str("remote", remote).Int(limitName, limit).Int("also_refused", skipped).Msg(msg)
		}
	}
	closeAfterAlert(c, overloadLingerTime)
}

func (s *Server) handleConn(ctx context.Context, c net.Conn) {
	remote := c.RemoteAddr().String()
	admitted, ok := s.admit(c)
	if !ok {
		s.refuseOverloaded(c, remote, "max_handshakes_per_ip", s.cfg.MaxHandshakesPerIP, "handshake refused: too many from this address")
		return
	}
	s.inflight.Add(1)
	s.t.addConn(c)
	start := time.Now()
	sess, res, err := s.handshake(ctx, c)
	admitted()
	s.inflight.Add(-1)
	if err == nil {
		// Tracked as a session before it stops being tracked as a
		// connection, so that a drain's last sweep cannot miss it.
		s.t.addSession(sess)
	}
	s.t.removeConn(c)
	if errors.Is(err, errOverloaded) {
		s.refuseOverloaded(c, remote, "max_handshakes", s.cfg.MaxHandshakes, "handshake refused: overloaded")
		return
	}
	if err != nil {
		s.m.Handshakes.WithLabelValues(handshakeResult(err)).Inc()
		var me *mpinkex.Error
		isMpinkex := errors.As(err, &me)
		// --quiet handshake-errs silences probe noise. A refusal by
		// --allow-id is not noise: the client proved a domain identity
		// (ErrPolicy comes only after the pairing check), so it is an
		// audit line and always written.
		if !s.cfg.quiet("handshake-errs") || errors.Is(err, mpinkex.ErrPolicy) {
			ev := s.log.Warn().Str("remote", remote).Err(err)
			if isMpinkex && me.ClaimedID != "" {
				ev = ev.Str("claimed_client", me.ClaimedID) // unauthenticated
			}
			ev.Msg("handshake failed")
		}
		if isMpinkex && me.Alert != 0 {
			closeAfterAlert(c, alertLingerTime)
		} else {
			c.Close()
		}
		return
	}
	d := time.Since(start)
	s.m.Handshakes.WithLabelValues("ok").Inc()
	s.m.HandshakeDuration.Observe(d.Seconds())
	s.m.Sessions.Inc()
	log := s.log.With().Str("client", res.ClientID).Str("remote", remote).Logger()
	log.Info().Dur("handshake", d).Bool("permit", res.PermitUsed).Msg("session open")
	if s.draining.Load() {
		_ = sess.GoAway()
	}
	var streams atomic.Int64
	var up, down atomic.Int64
	var wg sync.WaitGroup
	warn := &warnLimit{log: log} // this session's stream refusals
	if s.cfg.MaxSessionAge > 0 {
		wg.Go(func() { s.ageOut(sess, log) })
	}
	for {
		in, err := sess.Accept(ctx)
		if err != nil {
			var se *psk.StreamError
			if errors.As(err, &se) {
				warn.event().Err(err).Msg("stream dropped")
				s.m.StreamsTotal.WithLabelValues("bad_header").Inc()
				continue
			}
			break
		}
		streams.Add(1)
		s.t.streams.Add(1)
		s.m.Streams.Inc()
		wg.Go(func() {
			done := func(u, dn int64) {
				up.Add(u)
				down.Add(dn)
				s.t.streamDone()
				s.m.Streams.Dec()
			}
			leave, ok := s.enterClient(res.ClientID)
			if !ok {
				_ = in.Reject(psk.StatusRefused)
				s.m.StreamsTotal.WithLabelValues("over_limit").Inc()
				warn.event().Int("max_conns_per_client", s.cfg.MaxConnsPerClient).Msg("stream refused: --max-conns-per-client connections open for this client")
				done(0, 0)
				return
			}
			release0 := done
			done = func(u, dn int64) { leave(); release0(u, dn) }
			select {
			case s.streams <- struct{}{}:
				release := done
				done = func(u, dn int64) { <-s.streams; release(u, dn) }
			default:
				// One authorised client must not open backend connections
				// without bound: past --max-conns, the stream is refused.
				_ = in.Reject(psk.StatusRefused)
				s.m.StreamsTotal.WithLabelValues("over_limit").Inc()
				warn.event().Int("max_conns", s.cfg.MaxConns).Msg("stream refused: --max-conns proxied connections open")
				done(0, 0)
				return
			}
			if p := s.openStream(ctx, in, log, warn, done); p != nil {
				// The copy runs on goroutines of its own and this one
				// ends: its stack, grown by the backend dial, is not kept
				// for as long as the connection stays open.
				wg.Add(1)
				s.pipeStream(ctx, p, log, func(u, dn int64) {
					done(u, dn)
					wg.Done()
				})
			}
		})
	}
	wg.Wait()
	sess.Close()
	s.t.removeSession(sess)
	s.m.Sessions.Dec()
	log.Info().Int64("streams", streams.Load()).Int64("bytes_up", up.Load()).Int64("bytes_down", down.Load()).
		Dur("duration", time.Since(start)).AnErr("reason", sess.Err()).Msg("session closed")
}

// ageOut ends sess gracefully once it is --max-session-age old (±10%, so
// that the sessions of clients started together do not end together): a
// GoAway sends the client's new connections to a new session, which a
// load balancer (a Kubernetes Service) may give to another replica, and
// the session closes once its streams have ended in both directions,
// however long they take. A session that ends first ends it.
func (s *Server) ageOut(sess *psk.Session, log zerolog.Logger) {
	age := s.cfg.MaxSessionAge
	age += time.Duration(rand.Int64N(int64(age)/5+1)) - age/10
	t := time.NewTimer(age)
	defer t.Stop()
	select {
	case <-t.C:
	case <-sess.Done():
		return
	}
	log.Debug().Dur("age", age).Msg("session reached --max-session-age: going away")
	if sess.GoAway() != nil {
		return // ended meanwhile
	}
	if s.httpProxy != nil {
		// The app's idle keep-alive connections on it would hold it until
		// the app closes them; busy ones end after their answer.
		if n := s.httpProxy.CloseRetiredIdle(); n > 0 {
			log.Debug().Int("connections", n).Msg("closed idle keep-alive connections of a session going away")
		}
	}
	// Closed once no stream is left in either direction (a stream whose
	// backend has finished may still carry the app's upload).
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for sess.NumStreams() > 0 {
		select {
		case <-tick.C:
		case <-sess.Done():
			return
		}
	}
	sess.Close()
}

// Lingering after a refusal (see closeAfterAlert): how long after an
// authentication or policy refusal, how long after an overloaded answer,
// and how much of what the client still sends is read and discarded.
const (
	alertLingerTime    = time.Second
	overloadLingerTime = 20 * time.Millisecond
	alertLingerBytes   = 64 << 10
)

// closeAfterAlert closes a connection whose handshake the server refused
// with an Alert. A pipelined client (PROTOCOL.md §5) sends its DTLS
// ClientHello right behind Msg3; closing with such bytes unread, or with
// more arriving, makes the kernel answer with a reset, which on a real
// network can overtake the Alert: the client would see "connection reset"
// instead of the server's answer (and would not retry a permit refused at
// an epoch boundary). So the Alert is followed by a FIN, and what the
// client still sends is read and discarded until it closes, for at most
// linger and alertLingerBytes.
func closeAfterAlert(c net.Conn, linger time.Duration) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(linger))
	_, _ = io.CopyN(io.Discard, c, alertLingerBytes)
	_ = c.Close()
}

// handshake runs mpinkex then DTLS with the keys in force now.
func (s *Server) handshake(ctx context.Context, c net.Conn) (*psk.Session, *mpinkex.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTO)
	defer cancel()
	k := s.keys.Current()
	bc := BufferedConn(c).(*bufConn)
	// The pairing work holds one of the --max-handshakes slots; waiting for
	// the peer's next message holds none (see workConn).
	slot := &workSlot{sem: s.hs}
	defer slot.release()
	res, err := mpinkex.Server(ctx, &workConn{bufConn: bc, slot: slot, ctx: ctx}, &mpinkex.ServerConfig{
		Keys: []*mpinkex.ServerKey{k.Server}, Authorize: s.allow.Authorize, RequirePermit: s.cfg.RequirePermit,
		EpochLen: k.EpochLen, Grace: mpinkexGrace(s.cfg.Grace), StepTimeout: s.cfg.HandshakeTO,
	})
	slot.release()
	if err != nil {
		return nil, nil, err
	}
	sess, err := psk.Server(ctx, bc, res, s.cfg.pskConfig())
	res.Zeroize()
	if err != nil {
		return nil, nil, err
	}
	return sess, &mpinkex.Result{ClientID: res.ClientID, ServerID: res.ServerID, PermitUsed: res.PermitUsed, Epoch: res.Epoch}, nil
}

// errOverloaded ends a handshake that found every --max-handshakes slot
// taken when its peer's message arrived.
var errOverloaded = errors.New("every handshake slot is busy")

// workSlot is one handshake's hold on the server's --max-handshakes slots.
type workSlot struct {
	sem  chan struct{}
	held bool
}

func (w *workSlot) acquire() bool {
	select {
	case w.sem <- struct{}{}:
		w.held = true
		return true
	default:
		return false
	}
}

// wait takes a slot, waiting for one until ctx ends.
func (w *workSlot) wait(ctx context.Context) error {
	select {
	case w.sem <- struct{}{}:
		w.held = true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *workSlot) release() {
	if w.held {
		<-w.sem
		w.held = false
	}
}

// workConn is the server's side of the mpinkex handshake, which reads
// nothing but frames (PROTOCOL.md §5): a slot is held while a frame the
// peer has sent whole is worked on (Msg1's checks and Msg2, Msg3's pairing
// check and Msg4), and given back while the server waits for the peer's
// next frame, which it takes into its buffer whole before it asks for a
// slot again. --max-handshakes so bounds the pairing work, which is what
// PROTOCOL.md §8 bounds it for, and a peer that sends slowly or not at all
// costs a connection (--max-conns) until --handshake-timeout, not a slot:
// slow peers cannot keep real clients out. A first frame (Msg1) that
// arrives when every slot is taken ends the handshake with errOverloaded;
// a later one (Msg3) waits for a slot, within the handshake's time (and
// ends it with errOverloaded if none comes): the server has done Msg1's
// work for it, and slots are held only while computing, so the wait is
// short.
type workConn struct {
	*bufConn
	slot   *workSlot
	ctx    context.Context // the handshake's
	left   int             // bytes of the frame being read still to come (0: at a frame's start)
	frames int             // frames begun
}

func (c *workConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		c.slot.release() // waiting for the peer's next frame holds no slot
		var whole bool
		c.left, whole = c.awaitFrame()
		c.frames++
		// A frame that is not there whole fails to decode (or its read
		// fails): no work, so no slot.
		switch {
		case !whole:
		case c.frames == 1:
			if !c.slot.acquire() {
				return 0, errOverloaded
			}
		default:
			if err := c.slot.wait(c.ctx); err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					// The frame is here; the slots stayed busy: the
					// peer gets the overloaded Alert, not a silent end.
					return 0, fmt.Errorf("%w (waited for a slot until the handshake's deadline)", errOverloaded)
				}
				return 0, err
			}
		}
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.bufConn.Read(p)
	c.left -= n
	return n, err
}

// awaitFrame waits until the buffer holds a whole frame, its u16 length
// and that many bytes, and returns the frame's size and true. If the read
// fails first, or the length cannot be a frame's, it returns early (false,
// and the size of the header alone): the Reads that follow return what
// there is, then the error, which mpinkex reports as it would without the
// wait.
func (c *workConn) awaitFrame() (int, bool) {
	h, err := c.br.Peek(2)
	if err != nil {
		return 2, false
	}
	n := int(binary.BigEndian.Uint16(h))
	if n == 0 || n > mpinkex.MaxFrameSize {
		return 2, false
	}
	if _, err := c.br.Peek(2 + n); err != nil {
		return 2 + n, false
	}
	return 2 + n, true
}

// handshakeResult names a failure for the metrics.
func handshakeResult(err error) string {
	var ae *mpinkex.AlertError
	switch {
	case errors.Is(err, mpinkex.ErrPolicy):
		return "unauthorized"
	case errors.Is(err, mpinkex.ErrAuth), errors.Is(err, mpinkex.ErrEpoch), errors.Is(err, mpinkex.ErrServerID):
		return "auth_failed"
	case errors.Is(err, mpinkex.ErrDecode), errors.Is(err, mpinkex.ErrVersion):
		return "bad_message"
	case errors.As(err, &ae):
		if ae.Code == mpinkex.AlertOverloaded {
			return "overloaded"
		}
		return "refused"
	case errors.Is(err, psk.ErrRecordRejected), errors.Is(err, psk.ErrUnknownIdentity):
		return "key_mismatch"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		// The peer closed: a TCP health check or a port scan, mostly.
		return "closed"
	}
	return "error"
}

func (s *Server) target(in *psk.IncomingStream) (string, bool) {
	if in.Kind() == psk.KindDefault {
		return s.cfg.Target, s.cfg.Target != ""
	}
	t, ok := s.cfg.Routes[in.Target()]
	return t, ok
}

// openedStream is an accepted stream and its backend, ready to be piped.
type openedStream struct {
	st      *psk.Stream
	backend net.Conn
	target  string
}

// openStream dials the stream's backend and accepts the stream (or
// refuses it with the status that says why). It returns nil when the
// stream is finished with, having called done; otherwise the caller pipes
// the result with pipeStream. HTTP-mode streams are served here.
func (s *Server) openStream(ctx context.Context, in *psk.IncomingStream, log zerolog.Logger, warn *warnLimit, done func(up, down int64)) *openedStream {
	target, ok := s.target(in)
	if !ok {
		_ = in.Reject(psk.StatusRefused)
		s.m.StreamsTotal.WithLabelValues("refused").Inc()
		warn.event().Str("target", in.Target()).Msg("stream refused: no such target")
		done(0, 0)
		return nil
	}
	if acl := s.routeACL[in.Target()]; acl != nil && in.Kind() == psk.KindNamed {
		if err := acl.Authorize(in.Session().PeerID()); err != nil {
			_ = in.Reject(psk.StatusRefused)
			s.m.StreamsTotal.WithLabelValues("refused").Inc()
			warn.event().Str("target", in.Target()).Msg("stream refused: the client matches no --route-allow pattern of this route")
			done(0, 0)
			return nil
		}
	}
	if s.cfg.HTTP && in.Kind() == psk.KindDefault {
		s.serveHTTPStream(ctx, in, log, target, done)
		return nil
	}
	network, addr, _ := proxy.ParseAddr(target)
	d := net.Dialer{Timeout: s.cfg.ConnectTimeout, KeepAlive: localTCPKeepAlive(target)}
	backend, err := d.DialContext(ctx, network, addr)
	s.noteBackend(target, err)
	if err != nil {
		_ = in.Reject(psk.StatusUnreachable)
		s.m.StreamsTotal.WithLabelValues("unreachable").Inc()
		warn.event().Err(err).Str("target", target).Msg("backend unreachable")
		done(0, 0)
		return nil
	}
	st, err := in.Accept()
	if err != nil {
		// The stream ended before it was accepted (the client reset
		// it, or the session ended, while the backend was dialled).
		backend.Close()
		s.m.StreamsTotal.WithLabelValues("error").Inc()
		log.Info().Err(err).Str("target", target).Msg("stream ended before it was accepted")
		done(0, 0)
		return nil
	}
	if s.cfg.ProxyProtocol {
		h, err := proxy.EncodeProxyV2(st.RemoteAddr(), st.LocalAddr(), st.Session().PeerID())
		if err == nil {
			_, err = backend.Write(h)
		}
		if err != nil {
			st.Close()
			backend.Close()
			s.m.StreamsTotal.WithLabelValues("error").Inc()
			warn.event().Err(err).Msg("PROXY header not sent")
			done(0, 0)
			return nil
		}
	}
	return &openedStream{st: st, backend: backend, target: target}
}

// serveHTTPStream hands an HTTP-mode stream to the reverse proxy, waits
// until it is done with the stream, then logs and counts it as pipeStream
// does and calls done.
func (s *Server) serveHTTPStream(ctx context.Context, in *psk.IncomingStream, log zerolog.Logger, target string, done func(up, down int64)) {
	st, err := in.Accept()
	if err != nil {
		s.m.StreamsTotal.WithLabelValues("error").Inc()
		log.Info().Err(err).Str("target", target).Msg("stream ended before it was accepted")
		done(0, 0)
		return
	}
	start := time.Now()
	up, down, err := s.httpProxy.Serve(ctx, st, st.Session().PeerID())
	s.m.streamClosed(log, start, proxy.Stats{AToB: up, BToA: down}, s.t.endErr(err), true).Uint32("stream", st.StreamID()).Str("target", target).Bool("http", true).Msg("stream closed")
	done(up, down)
}

// pipeStream starts copying between an opened stream and its backend;
// once both directions have ended it logs and counts the stream and calls
// finish. While the connection is quiet it holds one goroutine, the
// backend socket's reader (proxy.Start).
func (s *Server) pipeStream(ctx context.Context, p *openedStream, log zerolog.Logger, finish func(up, down int64)) {
	start := time.Now()
	proxy.StartCounting(ctx, p.st, p.backend, s.cfg.IdleTimeout, s.m.countBytes, func(stats proxy.Stats, err error) {
		s.m.streamClosed(log, start, stats, s.t.endErr(err), true).Uint32("stream", p.st.StreamID()).Str("target", p.target).Msg("stream closed")
		finish(stats.AToB, stats.BToA)
	})
}

// backendProbeInterval is how long a backend's last check holds for
// /_status: a stream's own dial, or a probe that /_status makes when the
// last check is older (one at a time, all stale routes at once). So
// scrapers cost a backend at most one connection per interval, and
// nothing while streams reach it or nobody asks.
const backendProbeInterval = 5 * time.Second

// backendCheck is what the last dial of one backend address found.
type backendCheck struct {
	mu  sync.Mutex
	ok  bool
	err string
	at  time.Time // with its monotonic reading, for the age; zero: never dialled
}

// backendStatus returns every backend's last check, probing those whose
// check is older than backendProbeInterval.
func (s *Server) backendStatus() []Reachable {
	s.probeMu.Lock() // one probe at a time; who waited reads its results
	defer s.probeMu.Unlock()
	var wg sync.WaitGroup
	for addr, c := range s.checks {
		c.mu.Lock()
		stale := c.at.IsZero() || time.Since(c.at) > backendProbeInterval
		c.mu.Unlock()
		if !stale {
			continue
		}
		wg.Go(func() {
			network, a, _ := proxy.ParseAddr(addr)
			conn, err := net.DialTimeout(network, a, time.Second)
			if err == nil {
				if s.cfg.ProxyProtocol {
					// A backend that expects a header on every
					// connection logs one without it as an error.
					_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = conn.Write(proxy.ProxyV2Local())
				}
				conn.Close()
			}
			s.noteBackend(addr, err)
		})
	}
	wg.Wait()
	out := make([]Reachable, 0, len(s.routes))
	for name, addr := range s.routes {
		c := s.checks[addr]
		c.mu.Lock()
		if !c.at.IsZero() {
			out = append(out, Reachable{Name: name, Address: addr, OK: c.ok, Error: c.err, CheckedAt: c.at.UTC()})
		}
		c.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Reachable) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// noteBackend records what a dial of the backend at addr found (every
// stream's dial calls it: one address's lock, no allocation when it works).
func (s *Server) noteBackend(addr string, err error) {
	c := s.checks[addr]
	if c == nil {
		return
	}
	c.mu.Lock()
	c.ok, c.err, c.at = err == nil, "", time.Now()
	if err != nil {
		c.err = err.Error()
	}
	c.mu.Unlock()
}

// status builds /_status; full adds the backends (as last checked).
func (s *Server) status(full bool) StatusInfo {
	k := s.keys.Current()
	st := StatusInfo{Role: "server", Identity: k.Identity, Domain: k.Domain, Listen: s.Addr(),
		Draining: s.draining.Load(), Keys: keysStatus(s.keys), Sessions: s.t.numSessions(),
		Streams: int(s.t.streams.Load()), Handshakes: s.inflight.Load(), Time: time.Now().UTC()}
	st.Ready = s.ready.Load() && time.Now().Before(k.ExpiresAt)
	if full {
		st.Backends = s.backendStatus()
	}
	return st
}

// sameBackend reports whether the addresses a and b may reach the same
// listener: the same Unix socket path, or the same TCP port (a service
// name counts as its number) on hosts that are equal, differently spelt
// IPs of one address, or both this host (localhost, a loopback IP, an
// unspecified one such as 0.0.0.0 or an empty host, which dial this host
// too). Host names other than localhost are compared as written.
// sameSocket reports whether two unix socket paths name one socket: the
// same file if both exist, else the same path once relative paths and
// symlinked folders (/var/run → /run) are resolved.
func sameSocket(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	if errA == nil && errB == nil {
		return os.SameFile(fa, fb)
	}
	resolve := func(p string) string {
		abs, err := filepath.Abs(p)
		if err != nil {
			return filepath.Clean(p)
		}
		if dir, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
			return filepath.Join(dir, filepath.Base(abs))
		}
		return abs
	}
	return resolve(a) == resolve(b)
}

func sameBackend(a, b string) bool {
	na, aa, err1 := proxy.ParseAddr(a)
	nb, ab, err2 := proxy.ParseAddr(b)
	if err1 != nil || err2 != nil || na != nb {
		return false
	}
	if na == "unix" {
		return sameSocket(aa, ab)
	}
	ha, pa, _ := net.SplitHostPort(aa)
	hb, pb, _ := net.SplitHostPort(ab)
	port := func(p string) int {
		n, err := net.LookupPort("tcp", p)
		if err != nil {
			return -1
		}
		return n
	}
	if port(pa) != port(pb) || port(pa) < 0 {
		return false
	}
	local := func(h string) bool {
		if h == "" || strings.EqualFold(h, "localhost") {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
	}
	if local(ha) && local(hb) {
		return true
	}
	if ia, ib := net.ParseIP(ha), net.ParseIP(hb); ia != nil && ib != nil {
		return ia.Equal(ib)
	}
	return strings.EqualFold(strings.TrimSuffix(ha, "."), strings.TrimSuffix(hb, "."))
}
