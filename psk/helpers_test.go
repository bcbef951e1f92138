package psk

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

const (
	testClientID = "spiffe://test.example/ns/web/sa/frontend"
	testServerID = "spiffe://test.example/ns/pay/sa/api"
)

// testDomain is a fresh key set from three D-TAs.
type testDomain struct {
	masters []*mpinkex.MasterShare
	ck      *mpinkex.ClientKey
	sk      *mpinkex.ServerKey
}

func newTestDomain(tb testing.TB, clientID, serverID string) *testDomain {
	tb.Helper()
	d := &testDomain{}
	var cs []pairing.G1
	var sk, ss []pairing.G2
	for range 3 {
		m, err := mpinkex.NewMasterShare(rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		d.masters = append(d.masters, m)
		c, err := m.ClientShare(clientID)
		if err != nil {
			tb.Fatal(err)
		}
		s, err := m.ServerShare(serverID)
		if err != nil {
			tb.Fatal(err)
		}
		cs, sk, ss = append(cs, c), append(sk, s), append(ss, m.DomainShare())
	}
	CS, err := mpinkex.SumG1(cs...)
	if err != nil {
		tb.Fatal(err)
	}
	SK, err := mpinkex.SumG2(sk...)
	if err != nil {
		tb.Fatal(err)
	}
	SS, err := mpinkex.SumG2(ss...)
	if err != nil {
		tb.Fatal(err)
	}
	if d.ck, err = mpinkex.NewClientKey(clientID, CS); err != nil {
		tb.Fatal(err)
	}
	if d.sk, err = mpinkex.NewServerKey(serverID, SS, SK); err != nil {
		tb.Fatal(err)
	}
	return d
}

// withForeignSK returns a server key that holds this domain's SS but the
// server identity key SK of another domain (PROTOCOL.md §9: the mpinkex
// check passes, the PSKs differ).
func (d *testDomain) withForeignSK(tb testing.TB, other *testDomain, serverID string) *mpinkex.ServerKey {
	tb.Helper()
	var sk, ss []pairing.G2
	for i := range d.masters {
		s, err := other.masters[i].ServerShare(serverID)
		if err != nil {
			tb.Fatal(err)
		}
		sk, ss = append(sk, s), append(ss, d.masters[i].DomainShare())
	}
	SK, _ := mpinkex.SumG2(sk...)
	SS, _ := mpinkex.SumG2(ss...)
	k, err := mpinkex.NewServerKey(serverID, SS, SK)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

var (
	domainOnce sync.Once
	domain     *testDomain
)

func sharedDomain(tb testing.TB) *testDomain {
	domainOnce.Do(func() { domain = newTestDomain(tb, testClientID, testServerID) })
	return domain
}

// pairOpts configures one loopback session pair.
type pairOpts struct {
	cli, srv *Config
	sk       *mpinkex.ServerKey // default: the domain's
	// mutate changes the client's handshake result before DTLS.
	mutate func(*mpinkex.Result)
	// relay, if set, sits between client and server on the TCP path.
	relay func(c, s net.Conn)
	// wrapCli, if set, wraps the client's TCP connection (before mpinkex).
	wrapCli func(net.Conn) net.Conn
	// pipeline runs the client's mpinkex with Pipeline (the sidecar's way).
	pipeline bool
	// authorize is the server's policy (default: everyone).
	authorize func(string) error
}

type pairResult struct {
	cli, srv       *Session
	cliErr, srvErr error
}

// dialPair runs TCP connect, mpinkex and psk on both sides over loopback.
func dialPair(tb testing.TB, d *testDomain, o pairOpts) pairResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	var relayWG sync.WaitGroup
	if o.relay != nil {
		rl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer rl.Close()
		srvAddr := addr
		relayWG.Add(1)
		go func() {
			defer relayWG.Done()
			c, err := rl.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", srvAddr)
			if err != nil {
				c.Close()
				return
			}
			relayWG.Add(1)
			go func() {
				defer relayWG.Done()
				o.relay(c, s)
			}()
		}()
		addr = rl.Addr().String()
		tb.Cleanup(relayWG.Wait)
	}
	sk := o.sk
	if sk == nil {
		sk = d.sk
	}
	type srvOut struct {
		s   *Session
		err error
	}
	srvCh := make(chan srvOut, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvCh <- srvOut{nil, err}
			return
		}
		authorize := o.authorize
		if authorize == nil {
			authorize = func(string) error { return nil }
		}
		res, err := mpinkex.Server(ctx, c, &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{sk}, Authorize: authorize})
		if err != nil {
			c.Close()
			srvCh <- srvOut{nil, err}
			return
		}
		s, err := Server(ctx, c, res, o.srv)
		res.Zeroize()
		srvCh <- srvOut{s, err}
	}()
	var pr pairResult
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	if o.wrapCli != nil {
		c = o.wrapCli(c)
	}
	res, err := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: d.ck, ServerID: testServerID, Pipeline: o.pipeline})
	if err != nil {
		c.Close()
		pr.cliErr = err
	} else {
		if o.mutate != nil {
			o.mutate(res)
		}
		pr.cli, pr.cliErr = Client(ctx, c, res, o.cli)
		res.Zeroize()
	}
	so := <-srvCh
	pr.srv, pr.srvErr = so.s, so.err
	tb.Cleanup(func() {
		if pr.cli != nil {
			pr.cli.Close()
		}
		if pr.srv != nil {
			pr.srv.Close()
		}
	})
	return pr
}

// sessionPair is dialPair that must succeed.
func sessionPair(tb testing.TB, cli, srv *Config) (*Session, *Session) {
	tb.Helper()
	pr := dialPair(tb, sharedDomain(tb), pairOpts{cli: cli, srv: srv})
	if pr.cliErr != nil || pr.srvErr != nil {
		tb.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	return pr.cli, pr.srv
}

// streamPair opens a stream on cli and returns it with the Stream srv
// accepted for it.
func streamPair(t testing.TB, cli, srv *Session) (*Stream, *Stream) {
	t.Helper()
	ch := make(chan *Stream, 1)
	go func() {
		defer close(ch)
		in, err := srv.Accept(context.Background())
		if err != nil {
			return
		}
		if st, err := in.Accept(); err == nil {
			ch <- st
		}
	}()
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	ps := <-ch
	if ps == nil {
		t.Fatal("server did not accept the stream")
	}
	return st, ps
}

// serveEcho accepts streams until the session ends and echoes each one,
// half-closing after the client's EOF. At cleanup it closes s and waits
// for its goroutines.
func serveEcho(tb testing.TB, s *Session) {
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		_ = s.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := s.Accept(context.Background())
			if err != nil {
				var se *StreamError
				if errors.As(err, &se) {
					continue
				}
				return
			}
			st, err := in.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					return
				}
				_ = st.CloseWrite()
			}()
		}
	}()
}

// leakCheck records the goroutine count and, at cleanup (after the
// sessions registered later are closed), waits for it to come back.
func leakCheck(tb testing.TB) {
	tb.Helper()
	before := runtime.NumGoroutine()
	tb.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				tb.Errorf("goroutine leak: %d before, %d after\n%s", before, n, filterStacks(string(buf)))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func filterStacks(s string) string {
	var out []string
	for _, g := range strings.Split(s, "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*M)") || strings.Contains(g, "runtime.goexit") && strings.Contains(g, "signal") {
			continue
		}
		out = append(out, g)
	}
	return fmt.Sprint(len(out), " goroutines:\n", strings.Join(out, "\n\n"))
}
