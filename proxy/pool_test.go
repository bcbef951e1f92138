package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
	"github.com/milagro-sc/milagro/psk"
)

const (
	poolClientID = "spiffe://test.example/ns/web/sa/frontend"
	poolServerID = "spiffe://test.example/ns/pay/sa/api"
)

// poolKeys are real keys of a three-D-TA domain, made in process.
type poolKeys struct {
	ck *mpinkex.ClientKey
	sk *mpinkex.ServerKey
}

var (
	poolKeysOnce sync.Once
	poolKeysVal  *poolKeys
	poolKeysErr  error
)

func testPoolKeys(t testing.TB) *poolKeys {
	t.Helper()
	poolKeysOnce.Do(func() {
		var cs []pairing.G1
		var sk, ss []pairing.G2
		for range 3 {
			m, err := mpinkex.NewMasterShare(rand.Reader)
			if err != nil {
				poolKeysErr = err
				return
			}
			c, err := m.ClientShare(poolClientID)
			if err != nil {
				poolKeysErr = err
				return
			}
			s, err := m.ServerShare(poolServerID)
			if err != nil {
				poolKeysErr = err
				return
			}
			cs, sk, ss = append(cs, c), append(sk, s), append(ss, m.DomainShare())
			m.Zeroize()
		}
		CS, err1 := mpinkex.SumG1(cs...)
		SK, err2 := mpinkex.SumG2(sk...)
		SS, err3 := mpinkex.SumG2(ss...)
		if err := errors.Join(err1, err2, err3); err != nil {
			poolKeysErr = err
			return
		}
		k := &poolKeys{}
		if k.ck, poolKeysErr = mpinkex.NewClientKey(poolClientID, CS); poolKeysErr != nil {
			return
		}
		if k.sk, poolKeysErr = mpinkex.NewServerKey(poolServerID, SS, SK); poolKeysErr != nil {
			return
		}
		poolKeysVal = k
	})
	if poolKeysErr != nil {
		t.Fatal(poolKeysErr)
	}
	return poolKeysVal
}

// echoUpstream is a real server: TCP accept, mpinkex.Server, psk.Server,
// and every stream echoed. Streams to target "refuse" are refused.
type echoUpstream struct {
	t    testing.TB
	keys *poolKeys
	ln   net.Listener
	addr string

	handshakes atomic.Int64
	closeNew   atomic.Bool  // close every new session right after its handshake
	goAwayNew  atomic.Int32 // send GoAway on this many new sessions right after their handshake
	wentAway   atomic.Int32 // GoAways sent so far
	mu         sync.Mutex
	sessions   []*psk.Session
	wg         sync.WaitGroup
}

func newEchoUpstream(t testing.TB, addr string) *echoUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	u := &echoUpstream{t: t, keys: testPoolKeys(t), ln: ln, addr: ln.Addr().String()}
	u.wg.Add(1)
	go u.serve()
	t.Cleanup(u.stop)
	return u
}

func (u *echoUpstream) serve() {
	defer u.wg.Done()
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		u.wg.Add(1)
		go func() {
			defer u.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := mpinkex.Server(ctx, c, &mpinkex.ServerConfig{
				Keys: []*mpinkex.ServerKey{u.keys.sk}, Authorize: func(string) error { return nil }})
			if err != nil {
				c.Close()
				return
			}
			s, err := psk.Server(ctx, c, res, nil)
			res.Zeroize()
			if err != nil {
				return
			}
			u.handshakes.Add(1)
			if u.closeNew.Load() {
				s.Close()
				return
			}
			if u.goAwayNew.Add(-1) >= 0 {
				_ = s.GoAway()
				u.wentAway.Add(1)
			}
			u.mu.Lock()
			u.sessions = append(u.sessions, s)
			u.mu.Unlock()
			u.echo(s)
		}()
	}
}

func (u *echoUpstream) echo(s *psk.Session) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		in, err := s.Accept(context.Background())
		if err != nil {
			var se *psk.StreamError
			if errors.As(err, &se) {
				continue
			}
			return
		}
		if in.Target() == "refuse" {
			in.Reject(psk.StatusRefused)
			continue
		}
		st, err := in.Accept()
		if err != nil {
			continue
		}
		if in.Target() == "burst" {
			// burstLen bytes in one Write (one yamux frame), then FIN.
			wg.Go(func() {
				defer st.Close()
				if _, err := st.Write(burst()); err == nil {
					st.CloseWrite()
				}
			})
			continue
		}
		wg.Go(func() {
			defer st.Close()
			if _, err := io.Copy(st, st); err == nil {
				st.CloseWrite()
			}
		})
	}
}

// burstLen is what the echo upstream sends on a "burst" stream: more than
// copyInline's limit for a shared session, less than a bulk buffer.
const burstLen = 100 << 10

func burst() []byte {
	b := make([]byte, burstLen)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// killSessions closes every server-side session (the client's sessions
// die with them).
func (u *echoUpstream) killSessions() {
	u.mu.Lock()
	ss := u.sessions
	u.sessions = nil
	u.mu.Unlock()
	for _, s := range ss {
		s.Close()
	}
}

func (u *echoUpstream) stop() {
	u.ln.Close()
	u.killSessions()
	u.wg.Wait()
}

// dialer is the client side as the sidecar builds it: TCP dial,
// mpinkex.Client, psk.Client. It counts dials that reached TCP.
func poolDialer(t testing.TB, addr string, sessions *[]*psk.Session, mu *sync.Mutex) SessionDialer {
	return poolDialerConfig(t, addr, sessions, mu, nil)
}

// poolDialerConfig is poolDialer with the sessions' psk.Config.
func poolDialerConfig(t testing.TB, addr string, sessions *[]*psk.Session, mu *sync.Mutex, cfg *psk.Config) SessionDialer {
	keys := testPoolKeys(t)
	return func(ctx context.Context) (*psk.Session, error) {
		s, err := dialSession(ctx, keys, addr, cfg, nil)
		if err != nil {
			return nil, err
		}
		if mu != nil {
			mu.Lock()
			*sessions = append(*sessions, s)
			mu.Unlock()
		}
		return s, nil
	}
}

// dialSession is one client session as the sidecar builds it: TCP dial,
// mpinkex.Client, psk.Client; wrap, if set, wraps the TCP connection.
func dialSession(ctx context.Context, keys *poolKeys, addr string, cfg *psk.Config, wrap func(net.Conn) net.Conn) (*psk.Session, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if wrap != nil {
		c = wrap(c)
	}
	res, err := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: keys.ck, ServerID: poolServerID})
	if err != nil {
		c.Close()
		return nil, err
	}
	s, err := psk.Client(ctx, c, res, cfg)
	res.Zeroize()
	return s, err
}

func newTestPool(t testing.TB, addr string, opt PoolOptions) *Pool {
	t.Helper()
	p := NewPool(poolDialer(t, addr, nil, nil), opt)
	t.Cleanup(p.Close)
	return p
}

// roundTrip sends msg on a new stream and checks the echo and EOF.
func roundTrip(t testing.TB, p *Pool, msg []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := p.Open(ctx, "")
	if err != nil {
		return err
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(20 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(st)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	return nil
}

func TestPoolReusesSession(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{})
	msg := randBytes(t, 20000)
	for i := range 20 {
		if err := roundTrip(t, p, msg); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	var wg sync.WaitGroup
	for range 30 {
		wg.Go(func() {
			if err := roundTrip(t, p, msg); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	st := p.Stats()
	if st.Dials != 1 || st.DialFailures != 0 || st.Opens != 50 || st.OpenFailures != 0 || st.Sessions != 1 {
		t.Errorf("Stats %+v, want 1 dial, 50 opens, 1 session", st)
	}
	if n := up.handshakes.Load(); n != 1 {
		t.Errorf("%d handshakes at the upstream, want 1", n)
	}
}

// Concurrent first Opens share one dial.
func TestPoolOneDialForConcurrentOpens(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 16 {
		wg.Go(func() {
			<-start
			if err := roundTrip(t, p, []byte("hello")); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if st := p.Stats(); st.Dials != 1 || st.Sessions != 1 {
		t.Errorf("Stats %+v, want one dial", st)
	}
}

func TestPoolMaxStreamsPerSession(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{MaxStreamsPerSession: 2, MaxSessions: 2})
	ctx := context.Background()
	open := func() *psk.Stream {
		t.Helper()
		st, err := p.Open(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	s1, s2 := open(), open()
	if st := p.Stats(); st.Dials != 1 || st.Sessions != 1 {
		t.Fatalf("after 2 streams: %+v, want 1 session", st)
	}
	if s1.Session() != s2.Session() {
		t.Fatal("the first two streams are on different sessions")
	}
	s3 := open()
	if st := p.Stats(); st.Dials != 2 || st.Sessions != 2 {
		t.Fatalf("after 3 streams: %+v, want 2 sessions", st)
	}
	if s3.Session() == s1.Session() {
		t.Fatal("third stream on the full session")
	}
	s4 := open()
	if s4.Session() != s3.Session() {
		t.Fatal("fourth stream not on the second session")
	}
	// Both sessions full, no room for a third session.
	if _, err := p.Open(ctx, ""); !errors.Is(err, psk.ErrTooManyStreams) {
		t.Fatalf("Open with every session full: %v, want ErrTooManyStreams", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.OpenFailures != 1 {
		t.Errorf("Stats %+v", st)
	}
	// Finishing a stream makes room on its session again.
	s1.CloseWrite()
	io.Copy(io.Discard, s1)
	s1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s1.Session().NumStreams() >= 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s5 := open()
	if s5.Session() != s1.Session() {
		t.Error("freed slot not reused")
	}
	if st := p.Stats(); st.Dials != 2 {
		t.Errorf("Stats %+v, want no new dial", st)
	}
}

// A session that died (closed by the server) is dropped and a new one
// dialled, whether or not the client noticed before the next Open.
func TestPoolRedialsDeadSession(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var mu sync.Mutex
	var sessions []*psk.Session
	p := NewPool(poolDialer(t, up.addr, &sessions, &mu), PoolOptions{})
	defer p.Close()
	msg := []byte("still there?")
	if err := roundTrip(t, p, msg); err != nil {
		t.Fatal(err)
	}

	// The client has seen its session end.
	up.killSessions()
	select {
	case <-sessions[0].Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client session did not notice the server's close")
	}
	if err := roundTrip(t, p, msg); err != nil {
		t.Fatalf("after the session died: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 || st.Sessions != 1 {
		t.Errorf("Stats %+v, want 2 dials, 1 live session", st)
	}

	// Open right after the server's close, racing the client's notice.
	for i := range 5 {
		up.killSessions()
		if err := roundTrip(t, p, msg); err != nil {
			t.Fatalf("round %d, Open right after the server closed: %v", i, err)
		}
	}
	if st := p.Stats(); st.Dials != 7 || st.Sessions != 1 || st.OpenFailures != 0 {
		t.Errorf("Stats %+v, want 7 dials, 1 live session, no failed opens", st)
	}
}

func TestPoolBackoff(t *testing.T) {
	addr := closedAddr(t) // nothing listens there (yet)

	const minB, maxB = 300 * time.Millisecond, 2 * time.Second
	p := newTestPool(t, addr, PoolOptions{MinBackoff: minB, MaxBackoff: maxB})
	ctx := context.Background()

	_, err := p.Open(ctx, "")
	if err == nil || errors.Is(err, ErrUpstreamDown) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("first Open: %v, want the dial error", err)
	}
	failAt := time.Now()
	// During the backoff Open fails at once, without dialling, naming the
	// last error.
	for range 10 {
		start := time.Now()
		_, err := p.Open(ctx, "")
		if !errors.Is(err, ErrUpstreamDown) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "retry in") {
			t.Fatalf("Open during backoff: %v, want ErrUpstreamDown wrapping the dial error", err)
		}
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Errorf("Open during backoff took %v", d)
		}
		if time.Since(failAt) > minB/2-50*time.Millisecond {
			break
		}
	}
	if st := p.Stats(); st.Dials != 1 || st.DialFailures != 1 {
		t.Fatalf("Stats %+v, want 1 failed dial", st)
	}
	// After at most minB the pool dials again (and fails again: backoff
	// doubles to at most 2·minB).
	time.Sleep(time.Until(failAt.Add(minB + 20*time.Millisecond)))
	if _, err := p.Open(ctx, ""); err == nil || errors.Is(err, ErrUpstreamDown) {
		t.Fatalf("Open after the backoff: %v, want a new dial error", err)
	}
	failAt = time.Now()
	if st := p.Stats(); st.Dials != 2 || st.DialFailures != 2 {
		t.Fatalf("Stats %+v, want 2 failed dials", st)
	}

	// The upstream comes up; the pool still backs off, then connects.
	newEchoUpstream(t, addr)
	if _, err := p.Open(ctx, ""); !errors.Is(err, ErrUpstreamDown) {
		t.Fatalf("Open right after the second failure: %v, want ErrUpstreamDown", err)
	}
	time.Sleep(time.Until(failAt.Add(2*minB + 20*time.Millisecond)))
	if err := roundTrip(t, p, []byte("up again")); err != nil {
		t.Fatalf("after the backoff with the upstream up: %v", err)
	}
	if st := p.Stats(); st.Dials != 3 || st.DialFailures != 2 || st.Sessions != 1 {
		t.Errorf("Stats %+v", st)
	}
	// A success resets the backoff: a new failure waits minB again, not 4·minB.
	if err := roundTrip(t, p, []byte("again")); err != nil {
		t.Fatal(err)
	}
}

// A refused stream is the server's answer, not a dead session: no retry,
// no redial, and the session stays.
func TestPoolRefusedStream(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{})
	_, err := p.Open(context.Background(), "refuse")
	var re *psk.StreamRefusedError
	if !errors.As(err, &re) || re.Status != psk.StatusRefused {
		t.Fatalf("Open(refuse): %v", err)
	}
	if err := roundTrip(t, p, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Dials != 1 || st.OpenFailures != 1 || st.Opens != 1 {
		t.Errorf("Stats %+v", st)
	}
}

func TestPoolClose(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var mu sync.Mutex
	var sessions []*psk.Session
	p := NewPool(poolDialer(t, up.addr, &sessions, &mu), PoolOptions{MaxStreamsPerSession: 1})
	var streams []*psk.Stream
	for range 3 {
		st, err := p.Open(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	if st := p.Stats(); st.Sessions != 3 {
		t.Fatalf("Stats %+v, want 3 sessions", st)
	}
	p.Close()
	for i, s := range sessions {
		if !s.IsClosed() {
			t.Errorf("session %d still open after Close", i)
		}
	}
	for i, st := range streams {
		st.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := st.Read(make([]byte, 1)); err == nil || err == io.EOF || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("stream %d after Close: read %v, want an error", i, err)
		}
	}
	if _, err := p.Open(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "pool closed") {
		t.Errorf("Open after Close: %v", err)
	}
	if st := p.Stats(); st.Sessions != 0 {
		t.Errorf("Stats after Close %+v", st)
	}
	// The server sees its sessions end.
	deadline := time.Now().Add(5 * time.Second)
	for {
		up.mu.Lock()
		open := 0
		for _, s := range up.sessions {
			if !s.IsClosed() {
				open++
			}
		}
		up.mu.Unlock()
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d server sessions still open after the pool closed", open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A dial in flight when the pool closes does not leave a session behind.
func TestPoolCloseDuringDial(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var mu sync.Mutex
	var sessions []*psk.Session
	inner := poolDialer(t, up.addr, &sessions, &mu)
	entered := make(chan struct{})
	release := make(chan struct{})
	p := NewPool(func(ctx context.Context) (*psk.Session, error) {
		close(entered)
		<-release
		// A dial that completes although Close cancelled its context
		// (one past the point of no return): the pool must close it.
		return inner(context.Background())
	}, PoolOptions{})
	errc := make(chan error, 1)
	go func() {
		_, err := p.Open(context.Background(), "")
		errc <- err
	}()
	<-entered
	p.Close()
	close(release)
	if err := <-errc; err == nil {
		t.Fatal("Open succeeded on a closed pool")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sessions) != 1 || !sessions[0].IsClosed() {
		t.Errorf("the session dialled during Close is not closed")
	}
}

// A caller waiting for another's dial gives up with its context.
func TestPoolOpenContext(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	p := NewPool(func(ctx context.Context) (*psk.Session, error) {
		<-release
		return nil, errors.New("never")
	}, PoolOptions{})
	go p.Open(context.Background(), "")
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := p.Open(ctx, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Open: %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Open waited %v", d)
	}
}

// A server that drains sends GoAway: the pool must open new streams
// elsewhere and leave the streams already on the draining session alone.
func TestPoolGoAwayKeepsStreams(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{})
	ctx := context.Background()
	st1, err := p.Open(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer st1.Close()
	st1.SetDeadline(time.Now().Add(20 * time.Second))
	echoBack := func(msg string) {
		t.Helper()
		if _, err := st1.Write([]byte(msg)); err != nil {
			t.Fatalf("in-flight stream write: %v", err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(st1, b); err != nil || string(b) != msg {
			t.Fatalf("in-flight stream read: %q, %v", b, err)
		}
	}
	echoBack("before")

	up.mu.Lock()
	srvSess := up.sessions[0]
	up.mu.Unlock()
	if err := srvSess.GoAway(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the GoAway arrive

	// A new stream goes to a new session.
	if err := roundTrip(t, p, []byte("new")); err != nil {
		t.Fatalf("Open after GoAway: %v", err)
	}
	if st := p.Stats(); st.Dials != 2 {
		t.Errorf("Stats %+v, want a second dial", st)
	}
	// The stream on the draining session carries on to its end.
	echoBack("after")
	if st1.Session().IsClosed() {
		t.Fatal("the pool closed the draining session under its stream")
	}
	st1.CloseWrite()
	if rest, err := io.ReadAll(st1); err != nil || len(rest) != 0 {
		t.Fatalf("in-flight stream end: %q, %v; want EOF", rest, err)
	}
}

// When every pooled session refuses new streams at once (a server that
// drains sends GoAway on all of them; a rolling update's old replica),
// one Open walks past all of them to a new session instead of failing
// the app's connection after two; and a new session that refuses too
// ends the Open after that one dial.
func TestPoolOpenSkipsEveryDeadSession(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var mu sync.Mutex
	var sessions []*psk.Session
	p := NewPool(poolDialer(t, up.addr, &sessions, &mu), PoolOptions{MaxStreamsPerSession: 1, MaxSessions: 4})
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Three sessions, one stream each, then no streams.
	var held []*psk.Stream
	for range 3 {
		st, err := p.Open(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, st)
	}
	if st := p.Stats(); st.Dials != 3 || st.Sessions != 3 {
		t.Fatalf("Stats %+v, want 3 dials and sessions", st)
	}
	for _, st := range held {
		st.Close()
	}
	for _, s := range sessions {
		deadline := time.Now().Add(5 * time.Second)
		for s.NumStreams() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}

	// The server sends GoAway on all three; a ping behind it on each
	// session makes sure the client has read it before the next Open.
	up.mu.Lock()
	srv := append([]*psk.Session(nil), up.sessions...)
	up.mu.Unlock()
	if len(srv) != 3 {
		t.Fatalf("server has %d sessions, want 3", len(srv))
	}
	for _, s := range srv {
		if err := s.GoAway(); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range sessions {
		if _, err := s.Ping(); err != nil {
			t.Fatalf("ping session %d: %v", i, err)
		}
	}

	if err := roundTrip(t, p, []byte("past three draining sessions")); err != nil {
		t.Fatalf("Open with every pooled session draining: %v", err)
	}
	if st := p.Stats(); st.Dials != 4 || st.Sessions != 1 || st.OpenFailures != 0 {
		t.Errorf("Stats %+v, want 4 dials, 1 session, no failed open", st)
	}
	for i, s := range sessions[:3] {
		if !s.IsClosed() {
			t.Errorf("draining session %d (no streams) not closed", i)
		}
	}

	// A server that ends every new session at once (closing it rather
	// than sending GoAway, which a fast client's first SYN could beat):
	// the Open fails after its own dial.
	up.closeNew.Store(true)
	up.mu.Lock()
	srv = append([]*psk.Session(nil), up.sessions...)
	up.mu.Unlock()
	for _, s := range srv {
		s.GoAway()
	}
	mu.Lock()
	last := sessions[len(sessions)-1]
	mu.Unlock()
	if _, err := last.Ping(); err != nil {
		t.Fatal(err)
	}
	before := p.Stats()
	_, err := p.Open(ctx, "")
	if !errors.Is(err, psk.ErrSessionClosed) {
		t.Fatalf("Open against a server ending every session: %v, want ErrSessionClosed", err)
	}
	if st := p.Stats(); st.Dials != before.Dials+1 || st.OpenFailures != before.OpenFailures+1 {
		t.Errorf("Stats %+v after %+v, want exactly one more dial and one failed open", st, before)
	}
}

// TestPoolBurstKeepsMaxStreamsPerSession: a burst of concurrent Opens
// (the waiters released when a dial ends, say) counts the Opens under way
// against each session's room, instead of all picking the least loaded
// one and overfilling it.
func TestPoolBurstKeepsMaxStreamsPerSession(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	p := newTestPool(t, up.addr, PoolOptions{MaxStreamsPerSession: 2, MaxSessions: 8})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st0, err := p.Open(ctx, "") // one session exists
	if err != nil {
		t.Fatal(err)
	}
	defer st0.Close()
	var mu sync.Mutex
	per := map[*psk.Session]int{st0.Session(): 1}
	var opened []*psk.Stream
	defer func() {
		for _, st := range opened {
			st.Close()
		}
	}()
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 30 {
		wg.Go(func() {
			<-start
			st, err := p.Open(ctx, "")
			if err != nil {
				return // past 8 sessions × 2 streams: refused, as it should be
			}
			mu.Lock()
			per[st.Session()]++
			opened = append(opened, st)
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	if len(opened) != 15 {
		t.Errorf("%d Opens succeeded, want 15 (8 sessions × 2 streams, one taken before)", len(opened))
	}
	for s, n := range per {
		if n > 2 {
			t.Errorf("session %p carries %d streams, MaxStreamsPerSession is 2", s, n)
		}
	}
}

// TestPoolSessionAtPskLimitKept: a session at psk's own stream limit
// (Config.MaxStreams, here below the pool's MaxStreamsPerSession) has not
// ended: it stays pooled, and MaxSessions still bounds the sessions dialled.
func TestPoolSessionAtPskLimitKept(t *testing.T) {
	up := newEchoUpstream(t, "127.0.0.1:0")
	var sessions []*psk.Session
	var mu sync.Mutex
	dial := poolDialerConfig(t, up.addr, &sessions, &mu, &psk.Config{MaxStreams: 2})
	p := NewPool(dial, PoolOptions{MaxStreamsPerSession: 4, MaxSessions: 2})
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ok int
	for range 10 {
		st, err := p.Open(ctx, "")
		if err != nil {
			if !errors.Is(err, psk.ErrTooManyStreams) {
				t.Errorf("Open: %v, want ErrTooManyStreams", err)
			}
			continue
		}
		ok++
		defer st.Close()
	}
	mu.Lock()
	n := len(sessions)
	mu.Unlock()
	if n != 1 || ok != 2 || p.Stats().Sessions != 1 {
		t.Errorf("%d sessions dialled, %d streams opened, %d pooled; want 1, 2, 1", n, ok, p.Stats().Sessions)
	}
}
