package sidecar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
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

// Client is `milagro client`: it accepts plaintext application connections
// and carries each as a stream over a pooled secure session to the upstream
// server sidecar, after checking the identity the upstream proves.
type Client struct {
	cfg  *ClientConfig
	log  zerolog.Logger
	keys *Keystore
	m    *Metrics
	t    *tracker

	conns  chan struct{}        // --max-conns slots, shared by all listeners
	def    *upstream            // --target
	routes map[string]*upstream // forward proxy: host:port → upstream
	links  []*link              // every upstream's, one per server sidecar and identity expected

	ready    atomic.Bool
	draining atomic.Bool
	addr     atomic.Value
	fwdAddr  atomic.Value
	sessLogs sync.Map // *psk.Session → *sessionLog
	// refusals rate-limits the warn lines about app connections refused
	// here (CONNECT and transparent refusals): 10 a second, the next
	// saying how many were held back. Failures to reach an upstream have
	// a limiter per upstream (link.refusals), so that an app retrying
	// against one that is down does not hide the others' lines.
	refusals warnLimit
}

// upstream is where an app connection goes: the secure sessions to a
// server sidecar (its link) and the target to name in the stream header.
type upstream struct {
	*link
	target string
}

// link is the secure sessions to one server sidecar address, proving one
// expected identity: every route to the same address with the same
// --verify-id and server identity shares it, so that N routes to one
// gateway cost one pool of sessions (at most --max-sessions), not N.
type link struct {
	addr, verifyID, serverID string
	pool                     *proxy.Pool
	refusals                 warnLimit // its "no secure stream" and "CONNECT failed" lines
	routes                   []string  // what uses it, for /_status
}

// NewClient validates cfg and loads the keys.
func NewClient(cfg *ClientConfig, log zerolog.Logger) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, configErr(err)
	}
	if cfg.Target == "" && cfg.ForwardProxy == "" && !cfg.Transparent {
		return nil, configErr(errors.New("--target (with --listen), --transparent or --forward-proxy is required"))
	}
	if cfg.Transparent && cfg.Target != "" {
		return nil, configErr(errors.New("--transparent and --target exclude each other: --transparent sends each connection by its original destination (--route)"))
	}
	if cfg.Transparent && strings.HasPrefix(cfg.Listen, "unix:") {
		return nil, configErr(errors.New("--transparent needs a TCP --listen: a unix socket has no original destination"))
	}
	if cfg.Transparent && len(cfg.Routes) == 0 {
		return nil, configErr(errors.New("--transparent needs at least one --route IP:PORT=UPSTREAM@VERIFY-ID"))
	}
	if cfg.MaxStreams <= 0 || cfg.MaxSessions <= 0 {
		return nil, configErr(fmt.Errorf("--max-streams-per-session (%d) and --max-sessions (%d) must be positive", cfg.MaxStreams, cfg.MaxSessions))
	}
	if cfg.MaxStreams > psk.DefaultMaxStreams {
		// Past it, psk and the server refuse streams on a session the
		// pool still counts as having room.
		return nil, configErr(fmt.Errorf("--max-streams-per-session %d: at most %d, what a secure session carries", cfg.MaxStreams, psk.DefaultMaxStreams))
	}
	if cfg.ForwardProxy != "" {
		if _, _, err := proxy.ParseAddr(cfg.ForwardProxy); err != nil {
			return nil, configErr(fmt.Errorf("--forward-proxy: %w", err))
		}
	}
	for _, l := range []string{cfg.Listen, cfg.ForwardProxy} {
		if l != "" && !cfg.UnsafeListen && !proxy.IsLoopback(l) {
			return nil, configErr(fmt.Errorf("listener %s is not on loopback: plaintext would be reachable from the network; pass --unsafe-listen if that is intended", l))
		}
	}
	factor := ""
	if cfg.FactorFile != "" {
		f, err := ReadSecretFile(cfg.FactorFile, "factor")
		if err != nil {
			return nil, configErr(err)
		}
		factor = f
	}
	m := NewMetrics("client")
	m.quietConns = cfg.quiet("conns")
	ks, err := OpenKeystore(KeystoreOptions{Dir: cfg.Keys, Role: RoleClient, Factor: factor, Log: log, OnReload: reloadCounter(m)})
	if err != nil {
		return nil, err
	}
	m.observeKeys(ks.Current())
	c := &Client{cfg: cfg, log: log, keys: ks, m: m, t: newTracker(), routes: map[string]*upstream{}, refusals: warnLimit{log: log},
		conns: make(chan struct{}, cfg.MaxConns)}
	if cfg.Target != "" {
		if cfg.VerifyID == "" {
			return nil, configErr(errors.New("--verify-id is required with --target: the client must check whom it talks to"))
		}
		if c.def, err = c.newUpstream("--target", cfg.Target, cfg.VerifyID, cfg.ServerID, cfg.RemoteTarget); err != nil {
			return nil, configErr(err)
		}
	}
	for _, dest := range slices.Sorted(maps.Keys(cfg.Routes)) { // /_status lists them in this order
		r := cfg.Routes[dest]
		if _, port, err := net.SplitHostPort(dest); err != nil || !validPort(port) {
			return nil, configErr(fmt.Errorf("route %q: destination must be HOST:PORT, the port a number from 1 to 65535", dest))
		}
		if r.VerifyID == "" {
			return nil, configErr(fmt.Errorf("route %s: verify-id is required", dest))
		}
		u, err := c.newUpstream(dest, r.Upstream, r.VerifyID, "", r.Target)
		if err != nil {
			return nil, configErr(fmt.Errorf("route %s: %w", dest, err))
		}
		k := routeKey(dest)
		if _, dup := c.routes[k]; dup {
			return nil, configErr(fmt.Errorf("route %s: another route names the same destination (%s)", dest, k))
		}
		if _, err := netip.ParseAddrPort(k); err != nil && cfg.Transparent && cfg.ForwardProxy == "" {
			return nil, configErr(fmt.Errorf("route %s: --transparent routes by original destination IP:PORT; a host name never matches", dest))
		}
		c.routes[k] = u
	}
	if cfg.ForwardProxy != "" && len(c.routes) == 0 && !cfg.Transparent {
		return nil, configErr(errors.New("--forward-proxy needs at least one --route"))
	}
	return c, nil
}

// newUpstream validates an upstream that name (a route's destination, or
// --target) uses, and joins it to the link of the same address and
// identities, or starts one.
func (c *Client) newUpstream(name, addr, verifyID, serverID, target string) (*upstream, error) {
	if host, port, err := net.SplitHostPort(addr); err != nil || host == "unix" || !validPort(port) && !knownPort(port) {
		// unix:PATH splits too, into host "unix" and port PATH.
		return nil, fmt.Errorf("upstream %q: want HOST:PORT, the port a number or a service name (a server sidecar is dialled over TCP)", addr)
	}
	if len(target) > 255 {
		return nil, fmt.Errorf("target name of %d bytes: at most 255 (PROTOCOL.md §7)", len(target))
	}
	if err := pattern.Validate(verifyID); err != nil {
		return nil, fmt.Errorf("verify-id %q: %w", verifyID, err)
	}
	if serverID == "" && !strings.Contains(verifyID, "*") {
		serverID = verifyID
	}
	if serverID != "" && !pattern.Match(verifyID, serverID) {
		// Every handshake would end in the client's own refusal.
		return nil, fmt.Errorf("server identity %q does not match verify-id %q", serverID, verifyID)
	}
	for _, l := range c.links {
		if l.addr == addr && l.verifyID == verifyID && l.serverID == serverID {
			l.routes = append(l.routes, name)
			return &upstream{link: l, target: target}, nil
		}
	}
	if matchesAnyServer(verifyID) {
		// As ghostunnel's --disable-authentication is explicit, say it.
		c.log.Warn().Str("upstream", addr).Str("verify_id", verifyID).
			Msg("verify-id accepts any server identity of the domain: every server sidecar the D-TAs issued keys to could answer for this upstream; name the one you expect")
	}
	l := &link{addr: addr, verifyID: verifyID, serverID: serverID, refusals: warnLimit{log: c.log}, routes: []string{name}}
	l.pool = proxy.NewPool(func(ctx context.Context) (*psk.Session, error) { return c.dial(ctx, l) },
		proxy.PoolOptions{MaxStreamsPerSession: c.cfg.MaxStreams, MaxSessions: c.cfg.MaxSessions,
			RetryDial: retryableDial})
	c.links = append(c.links, l)
	return &upstream{link: l, target: target}, nil
}

// matchesAnyServer reports whether a verify-id pattern accepts every
// identity: nothing after the scheme but * and ** segments.
func matchesAnyServer(verifyID string) bool {
	_, rest, ok := strings.Cut(verifyID, "://")
	if !ok {
		rest = verifyID
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg != "*" && seg != "**" {
			return false
		}
	}
	return strings.Contains(rest, "**")
}

// retryableDial reports whether a failed session dial is worth one more
// try after the backoff (proxy.PoolOptions.RetryDial): nobody listening,
// or the connection reset before the handshake ended (behind a load
// balancer, a replica that has just stopped and reset what waited in its
// accept queue; a restart), which the next dial may not meet. Nothing of
// the app's has been sent then. Not a timeout (a node gone or a dropped
// SYN: a second dial would double the app's wait, to its whole budget),
// nor a refusal, which comes as an Alert.
func retryableDial(err error) bool {
	var alert *mpinkex.AlertError
	if errors.As(err, &alert) {
		return false
	}
	return errors.Is(err, proxy.ErrUpstreamDown) && errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET)
}

// dial builds a secure session to u with the keys in force now.
func (c *Client) dial(ctx context.Context, u *link) (*psk.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout+c.cfg.HandshakeTO)
	defer cancel()
	start := time.Now()
	d := net.Dialer{Timeout: c.cfg.ConnectTimeout, KeepAlive: c.cfg.sessionTCPKeepAlive()}
	var sess *psk.Session
	var permitUsed bool
	var remote string // the address dialled: a name may have several
	for attempt := 0; ; attempt++ {
		conn, err := d.DialContext(ctx, "tcp", u.addr)
		if err != nil {
			c.m.Handshakes.WithLabelValues("connect_failed").Inc()
			return nil, fmt.Errorf("connect %s: %w: %w", u.addr, proxy.ErrUpstreamDown, err)
		}
		remote = conn.RemoteAddr().String()
		conn = BufferedConn(conn)
		k := c.keys.Current()
		hsStart := time.Now()
		// Pipeline: the DTLS ClientHello follows Msg3 at once (PROTOCOL.md
		// §5), one round trip less; the server's verdict on Msg3 comes
		// back from psk.Client as mpinkex.Client would return it.
		res, err := mpinkex.Client(ctx, conn, &mpinkex.ClientConfig{
			Key: k.Client, Permits: k.Permits, ServerID: u.serverID, EpochLen: k.EpochLen, Grace: mpinkexGrace(c.cfg.Grace),
			StepTimeout: c.cfg.HandshakeTO, Pipeline: true,
			VerifyServerID: func(id string) error {
				if !pattern.Match(u.verifyID, id) {
					return fmt.Errorf("does not match --verify-id %q", u.verifyID)
				}
				return nil
			},
		})
		if err == nil {
			permitUsed = res.PermitUsed
			sess, err = psk.Client(ctx, conn, res, c.cfg.pskConfig())
			res.Zeroize()
		} else {
			conn.Close()
		}
		if err == nil {
			break
		}
		c.m.Handshakes.WithLabelValues(handshakeResult(err)).Inc()
		// The permit is chosen for the epoch at the start of the handshake
		// and checked by the server a moment later: if a boundary passed in
		// between, a server with little or no --epoch-grace refuses it. Try
		// once more, with the permit of the new epoch.
		var alert *mpinkex.AlertError
		if attempt == 0 && len(k.Permits) > 0 && errors.As(err, &alert) && alert.Code == mpinkex.AlertHandshakeFailure &&
			epochChanged(hsStart, time.Now(), k.EpochLen) && ctx.Err() == nil {
			c.log.Info().Str("upstream", u.addr).Err(err).Msg("handshake refused across an epoch boundary; retrying")
			continue
		}
		var me *mpinkex.Error
		if errors.As(err, &me) {
			return nil, fmt.Errorf("handshake with %s: %w", u.addr, err)
		}
		return nil, fmt.Errorf("secure session with %s: %w", u.addr, err)
	}
	dur := time.Since(start)
	c.m.Handshakes.WithLabelValues("ok").Inc()
	c.m.HandshakeDuration.Observe(dur.Seconds())
	c.m.Sessions.Inc()
	c.t.addSession(sess)
	c.log.Info().Str("upstream", u.addr).Str("remote", remote).Str("server", sess.PeerID()).Bool("permit", permitUsed).Dur("handshake", dur).Msg("session open")
	sl := &sessionLog{write: func(streams, up, down int64) {
		c.log.Info().Str("upstream", u.addr).Str("remote", remote).Str("server", sess.PeerID()).Int64("streams", streams).
			Int64("bytes_up", up).Int64("bytes_down", down).Dur("duration", time.Since(start)).
			AnErr("reason", sess.Err()).Msg("session closed")
	}}
	c.sessLogs.Store(sess, sl)
	// Counted with the connections' handlers, so that settle waits for the
	// "session closed" line too. Add is safe here: the pool dials inside
	// an app connection's Open, whose handler is counted until it returns.
	c.t.handlers.Add(1)
	go func() {
		defer c.t.handlers.Done()
		<-sess.Done()
		c.t.removeSession(sess)
		c.m.Sessions.Dec()
		c.sessLogs.Delete(sess)
		sl.sessionEnded()
	}()
	return sess, nil
}

// sessionLog sums a client session's streams and bytes for its "session
// closed" line, written once the session has ended and the copies of its
// streams have finished (their last bytes are counted).
type sessionLog struct {
	mu                sync.Mutex
	open              int // streams whose copy has not finished
	ended, written    bool
	streams, up, down int64
	write             func(streams, up, down int64)
}

func (l *sessionLog) streamStarted() { l.update(func() { l.open++; l.streams++ }) }

func (l *sessionLog) streamDone(up, down int64) {
	l.update(func() { l.open--; l.up += up; l.down += down })
}

func (l *sessionLog) sessionEnded() { l.update(func() { l.ended = true }) }

// update applies f under the lock, then writes the line if it is due.
func (l *sessionLog) update(f func()) {
	l.mu.Lock()
	f()
	fire := l.ended && l.open == 0 && !l.written
	l.written = l.written || fire
	streams, up, down := l.streams, l.up, l.down
	l.mu.Unlock()
	if fire {
		l.write(streams, up, down)
	}
}

// epochChanged reports whether a permit epoch boundary lies in (a, b].
func epochChanged(a, b time.Time, epochLen time.Duration) bool {
	ea, err1 := mpinkex.Epoch(a, epochLen)
	eb, err2 := mpinkex.Epoch(b, epochLen)
	return err1 == nil && err2 == nil && ea != eb
}

// Addr returns the bound --listen address once Run has bound it.
func (c *Client) Addr() string { v, _ := c.addr.Load().(string); return v }

// ForwardProxyAddr returns the bound --forward-proxy address.
func (c *Client) ForwardProxyAddr() string { v, _ := c.fwdAddr.Load().(string); return v }

// Keystore returns the client's keystore.
func (c *Client) Keystore() *Keystore { return c.keys }

// Run serves until ctx ends, then drains like Server.Run.
func (c *Client) Run(ctx context.Context, hup <-chan os.Signal) error {
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	if c.def != nil || c.cfg.Transparent {
		ln, err := proxy.Listen(c.cfg.Listen, localTCPKeepAlive(c.cfg.Listen))
		if err != nil {
			return err
		}
		c.addr.Store(ln.Addr().String())
		lns = append(lns, ln)
	}
	var fwd net.Listener
	if c.cfg.ForwardProxy != "" {
		ln, err := proxy.Listen(c.cfg.ForwardProxy, localTCPKeepAlive(c.cfg.ForwardProxy))
		if err != nil {
			closeAll()
			return err
		}
		c.fwdAddr.Store(ln.Addr().String())
		fwd = ln
		lns = append(lns, ln)
	}
	ctx, shutdown := context.WithCancel(ctx) // SIGTERM, or POST /_shutdown
	defer shutdown()
	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(context.Background())
	defer func() { stopBG(); wg.Wait() }()
	statusAddr, err := c.cfg.runBeside(bg, &wg, c.m, c.keys, hup, c.log, c.status, shutdown)
	if err != nil {
		closeAll()
		return err
	}
	var accepting sync.WaitGroup
	switch {
	case c.cfg.Transparent:
		accepting.Go(func() { c.accept(bg, lns[0], c.openTransparent) })
	case c.def != nil:
		accepting.Go(func() {
			c.accept(bg, lns[0], func(ctx context.Context, conn net.Conn) *route { return c.openApp(ctx, conn, c.def) })
		})
	}
	if fwd != nil {
		accepting.Go(func() { c.accept(bg, fwd, c.openConnect) })
	}
	c.ready.Store(true)
	k := c.keys.Current()
	c.log.Info().Str("listen", c.Addr()).Str("forward_proxy", c.ForwardProxyAddr()).Str("status", statusAddr).Str("identity", k.Identity).
		Str("target", c.cfg.Target).Str("verify_id", c.cfg.VerifyID).Msg("client ready")
	<-ctx.Done()
	c.draining.Store(true)
	c.ready.Store(false)
	closeAll()
	accepting.Wait()
	c.log.Info().Int64("streams", c.t.streams.Load()).Dur("timeout", c.cfg.ShutdownTimeout).Msg("draining")
	dctx, cancel := c.t.drainContext(c.cfg.ShutdownTimeout)
	defer cancel()
	clean := c.t.drain(dctx)
	for _, l := range c.links {
		l.pool.Close()
	}
	c.t.settle(settleTime)
	if !clean {
		c.log.Warn().Msg("drain timed out or was cut short; connections closed")
		return ErrDrainTimeout
	}
	c.log.Info().Msg("drained")
	return nil
}

// route is an application connection and the secure stream it is
// carried on.
type route struct {
	app   net.Conn
	st    *psk.Stream
	u     *upstream
	early int64 // bytes already sent on st (CONNECT's pipelined ones)
}

// accept runs acceptLoop for one of the client's listeners; every listener
// shares the --max-conns slots, and each connection counts as a stream for
// drain and metrics. open finds the connection's stream (nil: it has
// closed the connection); the copy then runs on goroutines of its own, and
// the accepting goroutine ends.
func (c *Client) accept(ctx context.Context, ln net.Listener, open func(context.Context, net.Conn) *route) {
	acceptLoop(ln, c.conns, c.cfg.MaxConns, c.m, c.log, &c.t.handlers, func(conn net.Conn, release func()) {
		c.t.streams.Add(1)
		c.m.Streams.Inc()
		c.t.addConn(conn)
		c.t.handlers.Add(1) // until the copy has ended and logged
		done := func() {
			c.t.removeConn(conn)
			c.t.streamDone()
			c.m.Streams.Dec()
			release()
			c.t.handlers.Done()
		}
		r := open(ctx, conn)
		if r == nil {
			done()
			return
		}
		c.pipe(ctx, r, done)
	})
}

// openApp opens a stream to u for one application connection.
func (c *Client) openApp(ctx context.Context, app net.Conn, u *upstream) *route {
	octx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout+c.cfg.HandshakeTO)
	st, err := u.pool.Open(octx, u.target)
	cancel()
	if err != nil {
		c.m.StreamsTotal.WithLabelValues(streamFailure(err)).Inc()
		withHint(u.refusals.event().Err(err), err).Str("upstream", u.addr).Str("app", app.RemoteAddr().String()).Msg("connection refused: no secure stream")
		app.Close()
		return nil
	}
	return &route{app: app, st: st, u: u}
}

// pipe starts copying between the application connection and its stream;
// once both directions have ended it logs and counts the stream and calls
// done. While the connection is quiet it holds one goroutine, the
// application socket's reader (proxy.Start).
func (c *Client) pipe(ctx context.Context, r *route, done func()) {
	start := time.Now()
	sl, _ := c.sessLogs.Load(r.st.Session())
	if sl != nil {
		sl.(*sessionLog).streamStarted()
	}
	proxy.StartCounting(ctx, r.app, r.st, c.cfg.IdleTimeout, c.m.countBytes, func(stats proxy.Stats, err error) {
		stats.AToB += r.early // counted in the metric when sent
		c.m.streamClosed(c.log, start, stats, c.t.endErr(err), true).Str("upstream", r.u.addr).Str("server", r.st.Session().PeerID()).
			Uint32("stream", r.st.StreamID()).Msg("stream closed")
		if sl != nil {
			sl.(*sessionLog).streamDone(stats.AToB, stats.BToA)
		}
		done()
	})
}

// withHint adds to a refusal's log line what to check, where the error
// alone does not say it: the server's Alert carries one code for every
// refusal, and where it came tells them apart (PROTOCOL.md §5).
func withHint(ev *zerolog.Event, err error) *zerolog.Event {
	var me *mpinkex.Error
	var alert *mpinkex.AlertError
	if !errors.As(err, &me) || me.Role != "client" || !errors.As(err, &alert) {
		return ev
	}
	switch {
	case alert.Code == mpinkex.AlertOverloaded:
		return ev.Str("hint", "the server is at its --max-handshakes; the pool retries after a backoff")
	case alert.Code != mpinkex.AlertHandshakeFailure:
		return ev
	case me.Step == "read Msg2":
		// Refused on what Msg1 claims (mpinkex/server.go, before Msg2).
		return ev.Str("hint", "the server does not hold the identity asked for (check --verify-id/--server-id, and that both sides' keys are of one domain), or it requires a time permit this client lacks for the epoch (--require-permit: revoked, or keys fetch --watch not renewing)")
	case me.Step == "read Msg4":
		// Refused after the pairing check (a wrong key or PIN) or by policy.
		return ev.Str("hint", "the server refused this client: its --allow-id (and --route-allow), or this client's key (a wrong --factor-file PIN, keys of another domain)")
	}
	return ev
}

// connectFailure is the answer to a CONNECT whose stream could not be
// opened: what the app's user reads (curl prints the status; the body
// says more), the client's log line having the details and a hint.
func connectFailure(err error) (int, string) {
	var r *psk.StreamRefusedError
	var alert *mpinkex.AlertError
	switch {
	case errors.As(err, &r) && r.Status == psk.StatusRefused:
		return http.StatusForbidden, "refused by the upstream\n"
	case errors.Is(err, psk.ErrTooManyStreams):
		return http.StatusServiceUnavailable, "this client's sessions to the upstream are full (--max-sessions × --max-streams-per-session); retry later\n"
	case errors.As(err, &alert) && alert.Code == mpinkex.AlertOverloaded:
		return http.StatusServiceUnavailable, "the upstream is overloaded (at its --max-handshakes); retry later\n"
	case errors.As(err, &alert) && alert.Code == mpinkex.AlertHandshakeFailure:
		// The server refused the handshake: its --allow-id, the permit it
		// requires, or this client's key (see withHint).
		return http.StatusForbidden, "the upstream refused this client's handshake (its allow-list, a time permit, or this client's key): see the client's log\n"
	case errors.As(err, &alert):
		return http.StatusBadGateway, "the upstream does not speak this client's protocol (" + alert.Code.String() + "): see the client's log\n"
	case errors.Is(err, mpinkex.ErrServerID), errors.Is(err, mpinkex.ErrAuth):
		// This client refused the server: not the identity the route's
		// verify-id expects, or no proof of it.
		return http.StatusBadGateway, "the upstream did not prove the identity this route expects (verify-id): see the client's log\n"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return http.StatusGatewayTimeout, "upstream timed out\n"
	}
	return http.StatusBadGateway, "upstream or backend unreachable\n"
}

func streamFailure(err error) string {
	var r *psk.StreamRefusedError
	if errors.As(err, &r) {
		if r.Status == psk.StatusUnreachable {
			return "unreachable"
		}
		return "refused"
	}
	if errors.Is(err, proxy.ErrUpstreamDown) {
		return "upstream_down"
	}
	if errors.Is(err, psk.ErrTooManyStreams) {
		return "over_limit"
	}
	return "error"
}

// routeKey is how routes are keyed and looked up: an IP:PORT in netip's
// canonical form (what SO_ORIGINAL_DST yields, so "[FD00:0::9]:80" matches
// a redirect to fd00::9 port 80; IPv4-mapped addresses unmapped), any other
// HOST:PORT in lower case.
func routeKey(dest string) string {
	if ap, err := netip.ParseAddrPort(dest); err == nil {
		// An IPv4-mapped IPv6 address is its IPv4 address: a dual-stack
		// socket reports 127.0.0.1 as ::ffff:127.0.0.1.
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	host, port, err := net.SplitHostPort(dest)
	if err != nil {
		return strings.ToLower(dest)
	}
	// One spelling of a name and port: the root's dot (a fully qualified
	// name) and a port's leading zeros do not make another destination.
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		port = strconv.FormatUint(n, 10)
	}
	return net.JoinHostPort(strings.TrimSuffix(strings.ToLower(host), "."), port)
}

// openTransparent carries a connection that iptables redirected to the
// listener to the route of its original destination; without a route it
// falls back to --target, if any.
func (c *Client) openTransparent(ctx context.Context, conn net.Conn) *route {
	dst, err := proxy.OriginalDst(conn)
	if err != nil {
		c.m.StreamsTotal.WithLabelValues("bad_request").Inc()
		c.refusals.event().Err(err).Str("app", conn.RemoteAddr().String()).Msg("transparent: no original destination; closing")
		conn.Close()
		return nil
	}
	u, ok := c.routes[routeKey(dst.String())]
	if !ok {
		u = c.def
	}
	if u == nil || dst.String() == conn.LocalAddr().String() {
		c.m.StreamsTotal.WithLabelValues("no_route").Inc()
		c.refusals.event().Str("destination", dst.String()).Str("app", conn.RemoteAddr().String()).Msg("transparent: no route for the original destination; closing")
		conn.Close()
		return nil
	}
	return c.openApp(ctx, conn, u)
}

// validPort reports whether p is a port number, 1 to 65535.
// knownPort reports whether p is a TCP service name this host knows
// (/etc/services), as the dialler would look it up.
func knownPort(p string) bool {
	_, err := net.LookupPort("tcp", p)
	return err == nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n > 0 && n <= 65535 && p[0] != '+'
}

// isTimeout reports whether err is a timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// maxConnectHead bounds a CONNECT request's head (net/http's server would
// stop at 1 MiB; a CONNECT needs a few hundred bytes).
const maxConnectHead = 64 << 10

// openConnect is the HTTP CONNECT forward proxy: CONNECT host:port is
// carried to the route's upstream; anything else is refused with an
// answer that says why (400 malformed or oversized, 405 not CONNECT, 403
// no route or refused by the server, 502 upstream or backend unreachable,
// 504 timed out), a log line, and a clean close that reads what the app
// still sends (closeAfterAlert), so that the answer is not lost to a reset.
func (c *Client) openConnect(ctx context.Context, conn net.Conn) *route {
	app := conn.RemoteAddr().String()
	reply := func(code int, msg string) {
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		allow := ""
		if code == http.StatusMethodNotAllowed {
			allow = "Allow: CONNECT\r\n" // RFC 9110 §15.5.6
		}
		fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n%sConnection: close\r\nContent-Length: %d\r\n\r\n%s", code, http.StatusText(code), allow, len(msg), msg)
		closeAfterAlert(conn, alertLingerTime)
	}
	_ = conn.SetReadDeadline(time.Now().Add(c.cfg.HandshakeTO))
	br := bufio.NewReader(io.LimitReader(conn, maxConnectHead))
	req, err := http.ReadRequest(br)
	if err != nil {
		c.m.StreamsTotal.WithLabelValues("bad_request").Inc()
		c.refusals.event().Err(err).Str("app", app).Msg("CONNECT refused: malformed, oversized or incomplete request head")
		if isTimeout(err) {
			conn.Close()
		} else {
			reply(http.StatusBadRequest, "malformed or oversized request head\n")
		}
		return nil
	}
	_ = conn.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		c.m.StreamsTotal.WithLabelValues("bad_request").Inc()
		c.refusals.event().Str("method", req.Method).Str("app", app).Msg("CONNECT refused: not a CONNECT request")
		reply(http.StatusMethodNotAllowed, "this forward proxy only tunnels with CONNECT\n")
		return nil
	}
	if _, port, err := net.SplitHostPort(req.RequestURI); err != nil || !validPort(port) {
		c.m.StreamsTotal.WithLabelValues("bad_request").Inc()
		c.refusals.event().Str("target", req.RequestURI).Str("app", app).Msg("CONNECT refused: the target is not HOST:PORT")
		reply(http.StatusBadRequest, "CONNECT needs HOST:PORT\n")
		return nil
	}
	dest := routeKey(req.RequestURI)
	u, ok := c.routes[dest]
	if !ok {
		c.m.StreamsTotal.WithLabelValues("no_route").Inc()
		c.refusals.event().Str("destination", dest).Str("app", app).Msg("CONNECT refused: no route")
		reply(http.StatusForbidden, "no route for "+dest+"\n")
		return nil
	}
	octx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout+c.cfg.HandshakeTO)
	st, err := u.pool.Open(octx, u.target)
	cancel()
	if err != nil {
		c.m.StreamsTotal.WithLabelValues(streamFailure(err)).Inc()
		withHint(u.refusals.event().Err(err), err).Str("destination", dest).Str("upstream", u.addr).Str("app", app).Msg("CONNECT failed")
		reply(connectFailure(err))
		return nil
	}
	if _, err := fmt.Fprint(conn, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
		st.Close()
		conn.Close()
		return nil
	}
	// Bytes the app sent after the request head belong to the tunnel: they
	// go first, and the copy then reads the connection itself (so that it
	// keeps its socket: a reset on an abnormal end, no blocked reader).
	r := &route{app: conn, st: st, u: u}
	if n := br.Buffered(); n > 0 {
		early, _ := br.Peek(n)
		if _, err := st.Write(early); err != nil {
			st.Close()
			conn.Close()
			return nil
		}
		r.early = int64(n)
		c.m.countBytes(true, n)
	}
	return r
}

func (c *Client) status(bool) StatusInfo {
	k := c.keys.Current()
	st := StatusInfo{Role: "client", Identity: k.Identity, Domain: k.Domain, Listen: c.Addr(), Forward: c.ForwardProxyAddr(),
		Draining: c.draining.Load(), Keys: keysStatus(c.keys), Sessions: c.t.numSessions(),
		Streams: int(c.t.streams.Load()), Time: time.Now().UTC()}
	st.Ready = c.ready.Load() && time.Now().Before(k.ExpiresAt)
	for _, l := range c.links {
		ps := PoolStatus{Upstream: l.addr, VerifyID: l.verifyID, Routes: l.routes, Stats: l.pool.Stats()}
		if l.serverID != l.verifyID {
			ps.ServerID = l.serverID
		}
		st.Upstreams = append(st.Upstreams, ps)
	}
	return st
}
