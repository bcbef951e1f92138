package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/milagro-sc/milagro/psk"
)

// SessionDialer builds a new secure session to one upstream: TCP dial,
// mpinkex handshake, DTLS and yamux. The sidecar supplies it, with the keys
// in force at the time of the call.
type SessionDialer func(ctx context.Context) (*psk.Session, error)

// PoolOptions tunes a Pool.
type PoolOptions struct {
	// MaxStreamsPerSession: a new session is built when every session
	// carries this many streams (default 256).
	MaxStreamsPerSession int
	// MaxSessions bounds the sessions to one upstream (default 8).
	MaxSessions int
	// MinBackoff and MaxBackoff bound the wait after a failed dial
	// (defaults 200 ms, 5 s), doubled from one to the other while dials
	// fail, with jitter. Meanwhile an Open whose context leaves more than
	// a second after the wait waits for the next dial (once: if that
	// fails too, so does the Open); one with no deadline, or too close a
	// one, fails at once with the last error.
	MinBackoff, MaxBackoff time.Duration
	// RetryDial, if set, reports whether an Open whose own dial failed
	// with err dials once more after the backoff (within its deadline,
	// as above): a failure to connect, which the next dial may not meet
	// (behind a load balancer, a replica that has just stopped
	// listening), not a refusal. Once only, so that an app connection
	// to an upstream that is down still fails within a backoff. nil:
	// such an Open fails with the dial's error. After such a failure the
	// backoff grows to RetryDialMaxBackoff at most, not MaxBackoff: a
	// restarting upstream is dialled again within about a second of its
	// return, and a dial that finds nobody listening costs it nothing.
	RetryDial func(err error) bool
}

// RetryDialMaxBackoff bounds the backoff after a dial that
// PoolOptions.RetryDial says the next dial may not meet.
const RetryDialMaxBackoff = time.Second

// ErrUpstreamDown is wrapped by Open while the pool backs off after failed
// session dials. A SessionDialer may wrap it too, in an error that says
// the upstream could not be reached.
var ErrUpstreamDown = errors.New("upstream unavailable")

// Pool keeps secure sessions to one upstream for the client side: app
// connections become streams on an established session; a new session is
// built only when none is usable; failed sessions are dropped and redialled
// with backoff.
type Pool struct {
	dial SessionDialer
	opt  PoolOptions

	mu       sync.Mutex
	sessions []*psk.Session
	// opening counts the Opens under way per session: they count against
	// MaxStreamsPerSession, so that a burst does not overfill the least
	// loaded session. (An Open's stream is in NumStreams before the Open
	// returns, so for that moment it counts twice; an Open that finds
	// every session full while Opens are under way waits for one to
	// finish, on opened, instead of failing.)
	opening  map[*psk.Session]int
	opened   chan struct{} // closed when an Open under way finishes
	dialing  chan struct{} // closed when the dial in flight ends
	lastErr  error
	failures int
	retryAt  time.Time
	closed   bool
	// checking holds the sessions on which an Open timed out, while a ping
	// finds out whether they still answer (check): no Open picks them.
	checking map[*psk.Session]bool
	checks   sync.WaitGroup
	done     chan struct{} // closed by Close: Opens waiting for a retry end
	// cancelDial cancels the dial under way, if any (Close).
	cancelDial context.CancelFunc

	stats PoolStats
}

// PoolStats are counters for observability (the client's /_status).
type PoolStats struct {
	Dials        uint64 `json:"dials"`
	DialFailures uint64 `json:"dial_failures"`
	Opens        uint64 `json:"opens"`
	OpenFailures uint64 `json:"open_failures"`
	Checks       uint64 `json:"checks"`   // sessions set aside for a ping after an Open timed out
	Sessions     int    `json:"sessions"` // live sessions in the pool (one going away has left it)
	// While dials fail: the last one's error and when the next may be
	// made (empty and zero once a dial has worked).
	LastDialError string    `json:"last_dial_error,omitempty"`
	RetryAt       time.Time `json:"retry_at,omitzero"`
}

// NewPool makes a pool; it dials nothing until the first Open.
func NewPool(dial SessionDialer, opt PoolOptions) *Pool {
	if opt.MaxStreamsPerSession <= 0 {
		opt.MaxStreamsPerSession = 256
	}
	if opt.MaxSessions <= 0 {
		opt.MaxSessions = 8
	}
	if opt.MinBackoff <= 0 {
		opt.MinBackoff = 200 * time.Millisecond
	}
	if opt.MaxBackoff <= 0 {
		opt.MaxBackoff = 5 * time.Second
	}
	return &Pool{dial: dial, opt: opt, opening: map[*psk.Session]int{}, checking: map[*psk.Session]bool{}, done: make(chan struct{})}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	for _, x := range p.sessions {
		if !x.IsClosed() { // an ended session leaves the list at the next Open
			s.Sessions++
		}
	}
	if p.lastErr != nil {
		s.LastDialError, s.RetryAt = p.lastErr.Error(), p.retryAt
	}
	return s
}

// Open opens a stream to target on a usable session, building one if
// needed. An Open that fails because its session ended or refuses new
// streams (the server closed it, its idle timeout fired, the server is
// draining) drops that session and tries the next one, then a new one;
// nothing of the app's has been sent by then. A session at psk's own
// stream limit (Config.MaxStreams, which MaxStreamsPerSession should not
// exceed) has not ended: it is kept, and the Open fails. It gives up when
// a session it dialled itself fails, so a server that takes sessions but
// no streams costs one dial per Open, not a loop — except once for a
// session the server sent away (GoAway) before its first stream: a server
// that began draining just after the handshake (a rollout), whose
// replacement the next dial reaches.
func (p *Pool) Open(ctx context.Context, target string) (*psk.Stream, error) {
	sentAway := false
	for attempt := 0; ; attempt++ {
		s, fresh, err := p.session(ctx)
		if err != nil {
			p.count(func(st *PoolStats) { st.OpenFailures++ })
			return nil, err
		}
		st, err := s.Open(ctx, target)
		p.mu.Lock()
		if p.opening[s]--; p.opening[s] <= 0 {
			delete(p.opening, s)
		}
		if p.opened != nil {
			close(p.opened)
			p.opened = nil
		}
		p.mu.Unlock()
		if err == nil {
			p.count(func(st *PoolStats) { st.Opens++ })
			return st, nil
		}
		var refused *psk.StreamRefusedError
		sessionEnded := !errors.As(err, &refused) &&
			(s.IsClosed() || errors.Is(err, psk.ErrSessionClosed))
		if sessionEnded {
			p.drop(s)
		} else if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			p.check(s)
		}
		// Each attempt but a fresh session's drops one pooled session, so
		// the pool's bound bounds the attempts too; the bound is a guard.
		retryFresh := fresh && !sentAway && s.PeerGoingAway()
		if !sessionEnded || ctx.Err() != nil || fresh && !retryFresh || attempt >= p.opt.MaxSessions {
			p.count(func(st *PoolStats) { st.OpenFailures++ })
			return nil, err
		}
		sentAway = sentAway || retryFresh
	}
}

// check sets s aside while a ping tells whether it still answers: an Open
// that got no status in time points to a session whose peer went silent
// (a lost node, a dropped connection) that the keepalive has not noticed
// yet. Meanwhile new Opens use other sessions or dial a new one; a session
// that fails the ping is dropped and closed (its streams were as dead),
// one that answers is used again.
func (p *Pool) check(s *psk.Session) {
	p.mu.Lock()
	if p.checking[s] || p.closed {
		p.mu.Unlock()
		return
	}
	p.checking[s] = true
	p.stats.Checks++
	p.checks.Add(1) // under mu, which Close takes before it waits
	p.mu.Unlock()
	go func() { // ends with the ping: bounded by psk's write timeout, or by the session's end
		defer p.checks.Done()
		_, err := s.Ping()
		p.mu.Lock()
		delete(p.checking, s)
		p.mu.Unlock()
		if err != nil {
			p.drop(s)
			s.Close()
		}
	}()
}

func (p *Pool) count(f func(*PoolStats)) {
	p.mu.Lock()
	f(&p.stats)
	p.mu.Unlock()
}

// drop removes s from the pool. A session that still carries streams (the
// server sent GoAway because it drains) is left to finish them: the server
// closes it when they are done (or its idle timeout does); closing it here
// would cut the connections the drain is waiting for.
func (p *Pool) drop(s *psk.Session) {
	p.mu.Lock()
	for i, x := range p.sessions {
		if x == s {
			p.sessions = append(p.sessions[:i], p.sessions[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	if s.IsClosed() || s.NumStreams() == 0 {
		s.Close()
	}
}

// session returns the least loaded live session with room, or dials one
// (fresh: this call dialled it).
func (p *Pool) session(ctx context.Context) (*psk.Session, bool, error) {
	// An Open waits out at most one backoff, and retries its own failed
	// dial at most once (RetryDial): while the upstream is down, an app
	// connection fails within about a backoff, not at its deadline.
	waited, retried := false, false
	var gone []*psk.Session // left the pool going away: closed once idle
	defer func() {
		for _, s := range gone {
			if s.NumStreams() == 0 {
				s.Close()
			}
		}
	}()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, errors.New("pool closed")
		}
		var best *psk.Session
		var bestN int
		live := p.sessions[:0]
		for _, s := range p.sessions {
			if s.IsClosed() {
				continue
			}
			if s.PeerGoingAway() {
				// The server drains it, or it is --max-session-age old:
				// it leaves the pool (as drop does), and its streams
				// finish there while new ones go elsewhere.
				gone = append(gone, s)
				continue
			}
			live = append(live, s)
			if p.checking[s] {
				continue
			}
			if n := s.NumStreams() + p.opening[s]; n < p.opt.MaxStreamsPerSession && (best == nil || n < bestN) {
				best, bestN = s, n
			}
		}
		p.sessions = live
		if best != nil {
			p.opening[best]++
			p.mu.Unlock()
			return best, false, nil
		}
		var wait chan struct{}
		switch {
		case p.dialing != nil:
			wait = p.dialing // a session may come of it
		case len(p.sessions) >= p.opt.MaxSessions && len(p.opening) > 0:
			if p.opened == nil {
				p.opened = make(chan struct{})
			}
			wait = p.opened // a stream slot may be counted twice until then
		}
		if wait != nil {
			p.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, false, ctx.Err()
			case <-p.done:
				continue // the loop reports the pool closed
			}
		}
		if len(p.sessions) >= p.opt.MaxSessions {
			p.mu.Unlock()
			return nil, false, fmt.Errorf("%w: all %d sessions carry %d streams", psk.ErrTooManyStreams, p.opt.MaxSessions, p.opt.MaxStreamsPerSession)
		}
		if now := time.Now(); now.Before(p.retryAt) {
			retryAt, lastErr := p.retryAt, p.lastErr
			p.mu.Unlock()
			if dl, ok := ctx.Deadline(); ok && dl.Sub(retryAt) > time.Second && !waited {
				waited = true
				// Time enough for the next dial: wait for it (or for
				// another Open's), rather than fail an app connection
				// that could be served once the upstream is back.
				t := time.NewTimer(time.Until(retryAt))
				select {
				case <-t.C:
					continue
				case <-ctx.Done():
					t.Stop()
					return nil, false, fmt.Errorf("%w: %w (last dial: %w)", ErrUpstreamDown, ctx.Err(), lastErr)
				case <-p.done:
					t.Stop()
					continue // the loop reports the pool closed
				}
			}
			return nil, false, fmt.Errorf("%w (retry in %s): %w", ErrUpstreamDown, retryAt.Sub(now).Round(time.Millisecond), lastErr)
		}
		done := make(chan struct{})
		p.dialing = done
		p.stats.Dials++
		dctx, cancelDial := context.WithCancel(ctx) // Close cancels it
		p.cancelDial = cancelDial
		p.mu.Unlock()

		s, err := p.dial(dctx)

		p.mu.Lock()
		cancelDial()
		p.cancelDial = nil
		p.dialing = nil
		close(done)
		if err != nil {
			p.stats.DialFailures++
			p.lastErr = err
			p.failures++
			b := p.opt.MinBackoff << min(p.failures-1, 20)
			b = min(b, p.opt.MaxBackoff)
			retry := p.opt.RetryDial != nil && p.opt.RetryDial(err)
			if retry {
				b = min(b, max(RetryDialMaxBackoff, p.opt.MinBackoff))
			}
			p.retryAt = time.Now().Add(b/2 + rand.N(b/2+1))
			if !retried && retry && !p.closed {
				if dl, ok := ctx.Deadline(); ok && dl.Sub(p.retryAt) > time.Second {
					retried = true
					p.mu.Unlock()
					continue // the backoff above waits for the next dial
				}
			}
			p.mu.Unlock()
			return nil, false, err
		}
		p.failures, p.lastErr, p.retryAt = 0, nil, time.Time{}
		if p.closed {
			p.mu.Unlock()
			s.Close()
			return nil, false, errors.New("pool closed")
		}
		p.sessions = append(p.sessions, s)
		p.opening[s]++
		p.mu.Unlock()
		return s, true, nil
	}
}

// Close closes every session of the pool.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.closed {
		close(p.done)
	}
	if p.cancelDial != nil {
		p.cancelDial()
	}
	p.closed = true
	ss := p.sessions
	p.sessions = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() { s.Close() })
	}
	wg.Wait()
	p.checks.Wait() // their pings end with their sessions
}

// GoAway closes sessions gracefully: no new streams, existing ones go on.
func (p *Pool) GoAway() {
	p.mu.Lock()
	ss := append([]*psk.Session(nil), p.sessions...)
	p.mu.Unlock()
	for _, s := range ss {
		_ = s.GoAway()
	}
}
