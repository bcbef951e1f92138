package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/psk"
)

// freezer forwards TCP connections to an upstream; after freeze, the
// connections forwarded so far go silent (a node lost, a conntrack entry
// dropped: nothing arrives, nothing is refused), while new ones are
// forwarded as before (the Service now routes to a live pod).
type freezer struct {
	ln     net.Listener
	mu     sync.Mutex
	frozen chan struct{} // closed by freeze, for the connections so far
	conns  int
	stop   chan struct{}
	wg     sync.WaitGroup
}

func newFreezer(t *testing.T, upstream string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, frozen: make(chan struct{}), stop: make(chan struct{})}
	t.Cleanup(func() { ln.Close(); close(f.stop); f.wg.Wait() })
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns++
			fr := f.frozen
			f.mu.Unlock()
			copyTo := func(dst, src net.Conn) {
				defer dst.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					select {
					case <-fr: // silent: hold both sockets until the test ends
						<-f.stop
						return
					default:
					}
					if n > 0 {
						dst.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}
			f.wg.Go(func() { copyTo(u, c) })
			f.wg.Go(func() { copyTo(c, u) })
		}
	})
	return f
}

func (f *freezer) freeze() {
	f.mu.Lock()
	close(f.frozen)
	f.frozen = make(chan struct{})
	f.mu.Unlock()
}

func (f *freezer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// TestPoolSetsSilentSessionAside: an Open that gets no status in time
// sets its session aside: the next Open dials a new session instead of
// waiting on the silent one again (each app connection waited its whole
// connect budget and failed, until the keepalive noticed, up to 40 s),
// and the silent session, failing its ping, is dropped.
func TestPoolSetsSilentSessionAside(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	fz := newFreezer(t, up.addr)
	p := NewPool(poolDialerConfig(t, fz.ln.Addr().String(), nil, nil, &psk.Config{WriteTimeout: time.Second}), PoolOptions{})
	t.Cleanup(p.Close)
	if err := roundTrip(t, p, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	fz.freeze()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := p.Open(ctx, "")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open on the silent session: %v, want a timeout", err)
	}
	if err := roundTrip(t, p, []byte("fresh")); err != nil {
		t.Fatalf("the Open after the timeout: %v, want it on a new session", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.Checks != 1 || fz.count() != 2 {
		t.Errorf("Stats %+v, %d connections; want 2 dials, 1 check", st, fz.count())
	}
	waitFor(t, 10*time.Second, "the silent session dropped after its ping failed", func() bool { return p.Stats().Sessions == 1 })
	if err := roundTrip(t, p, []byte("again")); err != nil || p.Stats().Dials != 2 {
		t.Errorf("on the remaining session: %v, stats %+v", err, p.Stats())
	}
}

// TestPoolWaitsForRetry: during the backoff after a failed dial, an Open
// whose deadline leaves time for the next dial waits for it, so an app
// connection made while the upstream comes back is served, not refused
// (refusals went on for up to the 30 s backoff after an outage).
func TestPoolWaitsForRetry(t *testing.T) {
	addr := closedAddr(t)
	p := newTestPool(t, addr, PoolOptions{MinBackoff: 2 * time.Second, MaxBackoff: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.Open(ctx, ""); err == nil || errors.Is(err, ErrUpstreamDown) {
		t.Fatalf("first Open: %v, want the dial error", err)
	}
	newEchoUpstream(t, addr) // back, during the backoff
	// No deadline, or not enough time left after the wait: fails at once.
	if _, err := p.Open(context.Background(), ""); !errors.Is(err, ErrUpstreamDown) {
		t.Errorf("Open without a deadline during the backoff: %v, want ErrUpstreamDown at once", err)
	}
	short, cancelShort := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancelShort()
	start := time.Now()
	if _, err := p.Open(short, ""); !errors.Is(err, ErrUpstreamDown) || time.Since(start) > 400*time.Millisecond {
		t.Errorf("Open with 0.5 s left during a 1–2 s backoff: %v after %v, want ErrUpstreamDown at once", err, time.Since(start))
	}
	if err := roundTrip(t, p, []byte("served")); err != nil {
		t.Fatalf("Open with time to wait for the next dial: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.DialFailures != 1 {
		t.Errorf("Stats %+v, want 2 dials (one failed)", st)
	}
}

// TestPoolRetryDial: with RetryDial, an Open whose own dial failed to
// connect dials once more after the backoff, within its deadline: an app
// connection that meets a replica that has just stopped listening (or a
// quick restart) is served by the next dial. Once only: an upstream that
// stays down fails the Open after two dials, not at its deadline; an
// error RetryDial does not take fails it at once.
func TestPoolRetryDial(t *testing.T) {
	addr := closedAddr(t)
	refused := func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
	opt := PoolOptions{MinBackoff: 300 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, RetryDial: refused}
	p := newTestPool(t, addr, opt)
	up := make(chan *echoUpstream, 1)
	go func() { // back as soon as the first dial has failed
		for p.Stats().DialFailures == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		up <- newEchoUpstream(t, addr)
	}()
	start := time.Now()
	if err := roundTrip(t, p, []byte("after the restart")); err != nil {
		t.Fatalf("Open across the restart: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.DialFailures != 1 || st.OpenFailures != 0 || st.Sessions != 1 || st.LastDialError != "" || !st.RetryAt.IsZero() {
		t.Errorf("Stats %+v after %v, want a failed dial, then one that worked (no dial error left), one session and no failed Open", st, time.Since(start))
	}

	// A session that has ended is not counted, although it leaves the
	// pool's list only at the next Open.
	(<-up).killSessions()
	waitFor(t, 5*time.Second, "the ended session uncounted", func() bool { return p.Stats().Sessions == 0 })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	down := newTestPool(t, closedAddr(t), opt)
	start = time.Now()
	if _, err := down.Open(ctx, ""); err == nil || time.Since(start) > 2*time.Second || down.Stats().Dials != 2 {
		t.Errorf("Open to an upstream that stays down: %v after %v and %d dials, want an error after 2 dials, well before the deadline", err, time.Since(start), down.Stats().Dials)
	}
	// What /_status shows of an upstream that is down.
	if st := down.Stats(); !strings.Contains(st.LastDialError, "connection refused") || time.Until(st.RetryAt) <= 0 || st.Sessions != 0 {
		t.Errorf("Stats %+v, want the dial error, a retry time ahead and no session", st)
	}

	// One that arrives during the backoff waits for the next dial, once.
	start = time.Now()
	if _, err := down.Open(ctx, ""); !errors.Is(err, ErrUpstreamDown) || time.Since(start) > 2*time.Second || down.Stats().Dials != 3 {
		t.Errorf("Open during the backoff to an upstream that stays down: %v after %v and %d dials in all, want ErrUpstreamDown after one more dial", err, time.Since(start), down.Stats().Dials)
	}

	// However many dials have failed with nobody listening, the next is
	// at most RetryDialMaxBackoff away (a restart is noticed within about
	// a second); a failure RetryDial refuses backs off to MaxBackoff.
	for _, tc := range []struct {
		retry bool
		most  time.Duration
	}{{true, RetryDialMaxBackoff}, {false, 5 * time.Second}} {
		o := opt
		o.MaxBackoff, o.RetryDial = 5*time.Second, func(error) bool { return tc.retry }
		q := newTestPool(t, closedAddr(t), o)
		var longest time.Duration
		for range 8 {
			q.mu.Lock()
			q.retryAt = time.Time{} // dial now: the backoff is what is measured
			q.mu.Unlock()
			sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond) // too close a deadline to wait: one dial
			q.Open(sctx, "")
			scancel()
			longest = max(longest, time.Until(q.Stats().RetryAt))
		}
		if longest > tc.most || longest < tc.most/4 {
			t.Errorf("RetryDial %v: longest backoff after 8 failed dials %v, want up to %v", tc.retry, longest, tc.most)
		}
	}

	never := newTestPool(t, closedAddr(t), PoolOptions{MinBackoff: 2 * time.Second, RetryDial: func(error) bool { return false }})
	start = time.Now()
	if _, err := never.Open(ctx, ""); err == nil || time.Since(start) > time.Second {
		t.Errorf("Open with a dial error RetryDial refuses: %v after %v, want the error at once", err, time.Since(start))
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPoolCloseEndsRetryWait: Close ends an Open waiting for the next dial
// at once (a client's drain waited for it while the upstream was down).
func TestPoolCloseEndsRetryWait(t *testing.T) {
	addr := closedAddr(t)
	p := newTestPool(t, addr, PoolOptions{MinBackoff: 5 * time.Second, MaxBackoff: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := p.Open(ctx, ""); err == nil {
		t.Fatal("first Open succeeded with nothing listening")
	}
	errc := make(chan error, 1)
	go func() { _, err := p.Open(ctx, ""); errc <- err }()
	time.Sleep(200 * time.Millisecond) // waiting for the retry
	start := time.Now()
	p.Close()
	select {
	case err := <-errc:
		if err == nil || time.Since(start) > time.Second {
			t.Errorf("Open waiting for the retry, after Close: %v after %v; want an error at once", err, time.Since(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open still waiting after Close")
	}
}

// TestPoolCloseEndsDial: Close cancels the dial under way, and an Open
// waiting for that dial ends too (both ran until their own deadlines, up
// to 15 s in the client sidecar, holding a socket to a black-holed
// upstream).
func TestPoolCloseEndsDial(t *testing.T) {
	started := make(chan struct{})
	p := NewPool(func(ctx context.Context) (*psk.Session, error) {
		close(started)
		<-ctx.Done() // a black hole
		return nil, ctx.Err()
	}, PoolOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 2)
	go func() { _, err := p.Open(ctx, ""); errs <- err }()
	<-started
	go func() { _, err := p.Open(ctx, ""); errs <- err }() // waits for the dial under way
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	p.Close()
	for range 2 {
		select {
		case err := <-errs:
			if err == nil {
				t.Error("an Open succeeded on a closed pool")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("an Open still waiting after Close")
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Opens ended %v after Close", d)
	}
}

// TestPoolGoingAwaySessionLeaves: a session whose server sent GoAway (a
// drain, or --max-session-age) leaves the pool even while it carries
// streams: it no longer counts against MaxSessions, so a busy client
// opens a new one instead of refusing connections, and the old one's
// streams go on.
func TestPoolGoingAwaySessionLeaves(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var mu sync.Mutex
	var sessions []*psk.Session
	p := NewPool(poolDialer(t, up.addr, &sessions, &mu), PoolOptions{MaxSessions: 1, MaxStreamsPerSession: 1})
	t.Cleanup(p.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := p.Open(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	up.mu.Lock()
	srv := up.sessions[0]
	up.mu.Unlock()
	if err := srv.GoAway(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	old := sessions[0]
	mu.Unlock()
	waitFor(t, 5*time.Second, "the GoAway read", old.PeerGoingAway)
	if err := roundTrip(t, p, []byte("on a new session")); err != nil {
		t.Fatalf("Open with the only session full and going away: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.Sessions != 1 {
		t.Errorf("Stats %+v, want 2 dials and the new session only", st)
	}
	if _, err := held.Write([]byte("still")); err != nil || old.IsClosed() {
		t.Errorf("the stream on the old session: write %v, session closed %v; want it going on", err, old.IsClosed())
	}
}

// TestPoolFreshSessionSentAway: a session the server sends away (GoAway)
// right after its handshake, before its first stream — a server that
// began draining then, in a rollout — costs the Open one more dial, not
// the app connection; a second one in a row fails the Open (a server that
// sends every session away is not dialled in a loop).
func TestPoolFreshSessionSentAway(t *testing.T) {
	for _, tc := range []struct {
		away      int32
		wantOK    bool
		wantDials uint64
	}{
		{away: 1, wantOK: true, wantDials: 2},
		{away: 2, wantOK: false, wantDials: 2},
	} {
		t.Run(fmt.Sprint(tc.away), func(t *testing.T) {
			up := newEchoUpstream(t, "127.0.0.1:0")
			up.goAwayNew.Store(tc.away)
			// The GoAway crosses the client's SYN: the client reads
			// nothing after its handshake until its first frame has gone
			// out and 100 ms have passed, so the server has sent its
			// GoAway before the SYN arrives and refuses it, and the client
			// learns of the GoAway only after its Open was under way.
			// (A GoAway read before the Open is the pool's older path:
			// the session is skipped and another dialled.)
			keys := testPoolKeys(t)
			var dials atomic.Int32
			p := NewPool(func(ctx context.Context) (*psk.Session, error) {
				var c *holdReads
				s, err := dialSession(ctx, keys, up.addr, nil, func(raw net.Conn) net.Conn {
					c = &holdReads{Conn: raw, wrote: make(chan struct{})}
					return c
				})
				if err != nil {
					return nil, err
				}
				c.armed.Store(true)
				if n := dials.Add(1); n <= tc.away {
					// The server's GoAway is on its way before the SYN.
					waitFor(t, 5*time.Second, "the server's GoAway", func() bool { return up.wentAway.Load() >= n })
				}
				return s, err
			}, PoolOptions{})
			t.Cleanup(p.Close)
			err := roundTrip(t, p, []byte("hello"))
			if tc.wantOK && err != nil {
				t.Fatalf("Open after a fresh session was sent away: %v", err)
			}
			if !tc.wantOK && (err == nil || !errors.Is(err, psk.ErrSessionClosed)) {
				t.Fatalf("Open with every session sent away: %v, want the session's end", err)
			}
			if st := p.Stats(); st.Dials != tc.wantDials {
				t.Errorf("%d dials, want %d", st.Dials, tc.wantDials)
			}
		})
	}
}

// holdReads, once armed, holds its next Read until a Write has happened
// and 100 ms have passed.
type holdReads struct {
	net.Conn
	armed atomic.Bool
	once  sync.Once
	wrote chan struct{}
	held  atomic.Bool
}

func (c *holdReads) Read(p []byte) (int, error) {
	if c.armed.Load() && !c.held.Swap(true) {
		select {
		case <-c.wrote:
			time.Sleep(100 * time.Millisecond)
		case <-time.After(2 * time.Second):
		}
	}
	return c.Conn.Read(p)
}

func (c *holdReads) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.armed.Load() {
		c.once.Do(func() { close(c.wrote) })
	}
	return n, err
}
