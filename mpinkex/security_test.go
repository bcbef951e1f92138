package mpinkex

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/milagro-sc/milagro/pairing"
)

// Failure paths of the handshake and the security rules of PROTOCOL.md §8.
// Every failure is asserted by its typed error on each side that runs, and
// every server-side failure by the absence of any derived value.

// hsRun is one handshake between the real Client and the real Server.
type hsRun struct {
	cres, sres *Result
	cerr, serr error
	strace     *traceLog
	toServer   []byte // every byte the client wrote
	toClient   []byte // every byte the server wrote
}

// handshake runs Client and Server over net.Pipe.
func handshake(t testing.TB, ccfg *ClientConfig, scfg *ServerConfig) *hsRun {
	t.Helper()
	cc, sc := net.Pipe()
	rec := &recorder{Conn: cc}
	run := &hsRun{strace: &traceLog{}}
	scfg.trace = run.strace.hook
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		run.sres, run.serr = Server(ctx, sc, scfg)
		sc.Close()
	}()
	run.cres, run.cerr = Client(ctx, rec, ccfg)
	cc.Close()
	<-done
	run.toServer, run.toClient = rec.out.Bytes(), rec.in.Bytes()
	return run
}

func (r *hsRun) mustSucceed(t testing.TB) {
	t.Helper()
	if r.cerr != nil || r.serr != nil {
		t.Fatalf("handshake failed: client %v, server %v", r.cerr, r.serr)
	}
	if !bytes.Equal(r.cres.PSK, r.sres.PSK) || len(r.cres.PSK) != PSKSize {
		t.Fatalf("PSKs differ or have the wrong size")
	}
	if r.cres.PSKIdentity != r.sres.PSKIdentity || r.cres.Transcript != r.sres.Transcript {
		t.Fatalf("psk_identity or transcript differ")
	}
}

// mustFail asserts that the server failed with want and sent alert code
// (the client sees it as an *AlertError), and derived nothing.
func (r *hsRun) mustFail(t testing.TB, want error, code AlertCode) {
	t.Helper()
	if !errors.Is(r.serr, want) {
		t.Errorf("server error %v, want %v", r.serr, want)
	}
	assertStep(t, r.serr, "server", code)
	assertNoKey(t, r.strace, r.sres)
	assertPeerAlert(t, r.cerr, code)
	if r.cres != nil {
		t.Errorf("client returned a result")
	}
}

func TestHandshakeHonest(t *testing.T) {
	d := sharedDomain(t)
	for _, permit := range []bool{false, true} {
		t.Run(map[bool]string{false: "no-permit", true: "permit"}[permit], func(t *testing.T) {
			ccfg := d.clientConfig()
			if permit {
				ccfg.Permits = []Permit{d.permit(t, fxEpoch)}
			}
			scfg := d.serverConfig()
			scfg.RequirePermit = permit
			r := handshake(t, ccfg, scfg)
			r.mustSucceed(t)
			for _, res := range []*Result{r.cres, r.sres} {
				if res.ClientID != d.clientID || res.ServerID != d.serverID || res.Layer != LayerDTLS ||
					res.PermitUsed != permit || (permit && res.Epoch != fxEpoch) || (!permit && res.Epoch != 0) {
					t.Errorf("result %+v", res)
				}
				if res.PSKIdentity != hex.EncodeToString(res.Transcript[:16]) || len(res.PSKIdentity) != 32 ||
					strings.ToLower(res.PSKIdentity) != res.PSKIdentity {
					t.Errorf("psk_identity %q", res.PSKIdentity)
				}
			}
			// The stream: exactly Msg1, Msg3 one way and Msg2, Msg4 the other.
			out, in := parseFrames(t, r.toServer), parseFrames(t, r.toClient)
			if len(out) != 2 || len(in) != 2 {
				t.Fatalf("%d and %d frames", len(out), len(in))
			}
			if m1 := out[0].(*Msg1); (m1.Flags == FlagPermit) != permit || m1.Layers != LayerDTLS {
				t.Errorf("Msg1 %+v", m1)
			}
			_ = out[1].(*Msg3)
			_ = in[0].(*Msg2)
			_ = in[1].(*Msg4)
		})
	}
}

func TestServerRejectsBadPoints(t *testing.T) {
	d := sharedDomain(t)
	bads := append(badG1s(t), badEnc{name: "valid-control"})
	for _, pos := range []string{"U'", "R", "V"} {
		for _, bad := range bads {
			t.Run(pos+"/"+bad.name, func(t *testing.T) {
				f := newFakeClient(t, d.clientID)
				srv := startServer(t, context.Background(), d.serverConfig())
				raw1 := f.msg1(d.serverID, 0, 0, f.a).Marshal()
				if bad.b != nil && pos == "U'" {
					raw1 = splice(raw1, msg1UOffset(raw1), bad.b)
				}
				if bad.b != nil && pos == "R" {
					raw1 = splice(raw1, msg1ROffset(raw1), bad.b)
				}
				if err := srv.send(raw1); err != nil {
					t.Fatal(err)
				}
				if pos == "V" || bad.b == nil {
					_, m := srv.recv(t)
					m2, ok := m.(*Msg2)
					if !ok {
						t.Fatalf("got %#v, want Msg2", m)
					}
					raw3 := f.msg3(m2.Y, d.cs).Marshal()
					if bad.b != nil {
						raw3 = splice(raw3, msg3VOffset, bad.b)
					}
					if err := srv.send(raw3); err != nil {
						t.Fatal(err)
					}
				}
				msgs := srv.finish(t)
				if bad.b == nil {
					// The scripted client is honest: the server accepts it,
					// so the rejections above are due to the bad point alone.
					if srv.err != nil || len(msgs) != 1 {
						t.Fatalf("control: %v, %d messages", srv.err, len(msgs))
					}
					return
				}
				if !errors.Is(srv.err, ErrDecode) || !errors.Is(srv.err, bad.want) {
					t.Errorf("server error %v, want ErrDecode and %v", srv.err, bad.want)
				}
				assertStep(t, srv.err, "server", AlertDecodeError)
				assertAlert(t, msgs, AlertDecodeError)
				assertNoKey(t, srv.trace, srv.res)
			})
		}
	}
}

// craftMsg2 is a well-formed Msg2 from a scripted server.
func craftMsg2(t testing.TB, serverID string) *Msg2 {
	return &Msg2{Layer: LayerDTLS, ServerID: serverID, Y: mustRandomScalar(t), W: randomG1(t)}
}

func TestClientRejectsBadMsg2(t *testing.T) {
	d := sharedDomain(t)
	type tc struct {
		name  string
		raw2  func(base []byte) []byte
		want  error
		also  error
		alert AlertCode // the client must see this *AlertError instead
	}
	var cases []tc
	for _, bad := range badG1s(t) {
		cases = append(cases, tc{name: "W/" + bad.name, want: ErrDecode, also: bad.want,
			raw2: func(b []byte) []byte { return splice(b, msg2WOffset(b), bad.b) }})
	}
	for _, s := range badScalars() {
		cases = append(cases, tc{name: "y/" + s.name, want: ErrDecode,
			raw2: func(b []byte) []byte { return splice(b, msg2YOffset(b), s.b) }})
	}
	cases = append(cases,
		tc{name: "version-2", want: ErrVersion, raw2: func(b []byte) []byte { return splice(b, 1, []byte{0x02}) }},
		tc{name: "layer-0", want: ErrDecode, raw2: func(b []byte) []byte { return splice(b, 2, []byte{0x00}) }},
		tc{name: "layer-two-bits", want: ErrDecode, raw2: func(b []byte) []byte { return splice(b, 2, []byte{0x03}) }},
		tc{name: "layer-not-offered", want: ErrLayer, raw2: func(b []byte) []byte { return splice(b, 2, []byte{0x02}) }},
		tc{name: "trailing-byte", want: ErrDecode, raw2: func(b []byte) []byte { return append(b, 0) }},
		tc{name: "truncated", want: ErrDecode, raw2: func(b []byte) []byte { return b[:len(b)-1] }},
		tc{name: "Msg4-instead", want: ErrDecode, raw2: func([]byte) []byte { return (&Msg4{}).Marshal() }},
		tc{name: "Msg3-instead", want: ErrDecode, raw2: func([]byte) []byte { return (&Msg3{V: randomG1(t)}).Marshal() }},
		tc{name: "unknown-type", want: ErrDecode, raw2: func(b []byte) []byte { return splice(b, 0, []byte{0x05}) }},
	)
	for _, code := range []AlertCode{AlertHandshakeFailure, AlertUnsupportedVersion, AlertDecodeError, AlertOverloaded} {
		cases = append(cases, tc{name: "alert-" + code.String(), alert: code,
			raw2: func([]byte) []byte { return (&Alert{Code: code}).Marshal() }})
	}
	cases = append(cases, tc{name: "unknown-alert", want: ErrDecode, raw2: func([]byte) []byte { return []byte{TypeAlert, 0x09} }})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := startClient(t, context.Background(), d.clientConfig())
			cl.recvMsg1(t)
			if err := WriteFrame(cl.peer, c.raw2(craftMsg2(t, d.serverID).Marshal())); err != nil {
				t.Fatal(err)
			}
			cl.expectEOF(t) // no Msg3
			if cl.res != nil {
				t.Errorf("client returned a result")
			}
			assertStep(t, cl.err, "client", 0)
			if c.alert != 0 {
				assertPeerAlert(t, cl.err, c.alert)
				return
			}
			if !errors.Is(cl.err, c.want) {
				t.Errorf("client error %v, want %v", cl.err, c.want)
			}
			if c.also != nil && !errors.Is(cl.err, c.also) {
				t.Errorf("client error %v does not wrap %v", cl.err, c.also)
			}
		})
	}
}

func TestClientChecksServerIdentity(t *testing.T) {
	d := sharedDomain(t)
	evil := "spiffe://test.example/ns/pay/sa/api2"
	refuse := errors.New("not on my list")
	cases := []struct {
		name    string
		cfg     func(*ClientConfig)
		proves  string
		wantErr error // nil: the client sends Msg3
	}{
		{"default-check-mismatch", func(*ClientConfig) {}, evil, ErrServerID},
		{"default-check-prefix", func(*ClientConfig) {}, d.serverID[:len(d.serverID)-1], ErrServerID},
		{"default-check-case", func(*ClientConfig) {}, strings.ToUpper(d.serverID), ErrServerID},
		{"callback-refuses", func(c *ClientConfig) {
			c.ServerID = ""
			c.VerifyServerID = func(string) error { return refuse }
		}, d.serverID, refuse},
		{"callback-overrides-serverid", func(c *ClientConfig) {
			c.VerifyServerID = func(id string) error { return expectID(id, evil) }
		}, d.serverID, ErrServerID},
		{"default-check-match", func(*ClientConfig) {}, d.serverID, nil},
		{"callback-accepts", func(c *ClientConfig) {
			c.ServerID = ""
			c.VerifyServerID = func(id string) error { return expectID(id, evil) }
		}, evil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := d.clientConfig()
			c.cfg(cfg)
			cl := startClient(t, context.Background(), cfg)
			_, m1 := cl.recvMsg1(t)
			if m1.ServerID != cfg.ServerID {
				t.Errorf("Msg1 asks for %q, want %q", m1.ServerID, cfg.ServerID)
			}
			if err := WriteFrame(cl.peer, craftMsg2(t, c.proves).Marshal()); err != nil {
				t.Fatal(err)
			}
			if c.wantErr == nil {
				raw, err := ReadFrame(cl.peer)
				if err != nil || raw[0] != TypeMsg3 {
					t.Fatalf("client did not send Msg3: %x, %v", raw, err)
				}
				_ = WriteAlert(cl.peer, AlertHandshakeFailure)
				<-cl.done
				return
			}
			cl.expectEOF(t) // aborted before Msg3
			if !errors.Is(cl.err, ErrServerID) || !errors.Is(cl.err, c.wantErr) {
				t.Errorf("client error %v, want ErrServerID wrapping %v", cl.err, c.wantErr)
			}
		})
	}

	// Against a real server that proves its default identity, another than
	// the one the client wants: the client aborts, the server reads EOF
	// where Msg3 should be and derives nothing.
	t.Run("real-server-default-identity", func(t *testing.T) {
		other := d.serverKey(t, evil)
		scfg := d.serverConfig()
		scfg.Keys = []*ServerKey{other, d.key}
		ccfg := d.clientConfig()
		ccfg.ServerID = ""
		ccfg.VerifyServerID = func(id string) error { return expectID(id, d.serverID) }
		r := handshake(t, ccfg, scfg)
		if !errors.Is(r.cerr, ErrServerID) {
			t.Errorf("client error %v, want ErrServerID", r.cerr)
		}
		// The peer is gone: EOF, or, on net.Pipe, ErrClosedPipe when the
		// server sets its step deadline after the client closed.
		if !(errors.Is(r.serr, io.EOF) || errors.Is(r.serr, io.ErrClosedPipe)) || errors.Is(r.serr, ErrDecode) {
			t.Errorf("server error %v, want EOF reading Msg3", r.serr)
		}
		var e *Error
		if errors.As(r.serr, &e) && e.Step != "read Msg3" {
			t.Errorf("server failed at %q, want read Msg3", e.Step)
		}
		assertStep(t, r.serr, "server", 0)
		assertNoKey(t, r.strace, r.sres)
		if out := parseFrames(t, r.toServer); len(out) != 1 {
			t.Errorf("client sent %d frames, want Msg1 only", len(out))
		}
	})
}

func TestServerIdentitySelection(t *testing.T) {
	d := sharedDomain(t)
	second := "spiffe://test.example/ns/pay/sa/second"
	k2 := d.serverKey(t, second)
	cases := []struct {
		name, ask, want string
		err             error
	}{
		{"default", "", d.serverID, nil},
		{"first-by-name", d.serverID, d.serverID, nil},
		{"second-by-name", second, second, nil},
		{"unknown", "spiffe://test.example/ns/pay/sa/third", "", ErrServerID},
		{"prefix-of-held", "spiffe://test.example/ns/pay/sa/", "", ErrServerID},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			scfg := d.serverConfig()
			scfg.Keys = []*ServerKey{d.key, k2}
			ccfg := d.clientConfig()
			ccfg.ServerID = c.ask
			ccfg.VerifyServerID = func(string) error { return nil }
			r := handshake(t, ccfg, scfg)
			if c.err != nil {
				r.mustFail(t, c.err, AlertHandshakeFailure)
				return
			}
			r.mustSucceed(t)
			if r.cres.ServerID != c.want || r.sres.ServerID != c.want {
				t.Errorf("proved %q/%q, want %q", r.cres.ServerID, r.sres.ServerID, c.want)
			}
		})
	}
}

func TestServerLayers(t *testing.T) {
	d := sharedDomain(t)
	for _, c := range []struct {
		layers byte
		ok     bool
	}{{0x00, false}, {0x02, false}, {0x04, false}, {0xfe, false}, {0x01, true}, {0x03, true}, {0xff, true}} {
		t.Run(hexByte(c.layers), func(t *testing.T) {
			f := newFakeClient(t, d.clientID)
			m1 := f.msg1(d.serverID, 0, 0, f.a)
			m1.Layers = c.layers
			res, out, tr, err := serveStream(t, d.serverConfig(), frame(m1.Marshal()))
			assertNoKey(t, tr, res)
			if !c.ok {
				if !errors.Is(err, ErrLayer) {
					t.Errorf("server error %v, want ErrLayer", err)
				}
				assertStep(t, err, "server", AlertHandshakeFailure)
				if len(out) != 1 {
					t.Fatalf("server sent %d messages, want one alert", len(out))
				}
				assertAlert(t, out, AlertHandshakeFailure)
				return
			}
			// Accepted: Msg2 chooses dtls, then the stream ends before Msg3.
			if len(out) != 1 {
				t.Fatalf("server sent %d messages", len(out))
			}
			if m2, ok := out[0].(*Msg2); !ok || m2.Layer != LayerDTLS {
				t.Errorf("server sent %#v, want Msg2 with layer dtls", out[0])
			}
			if !errors.Is(err, io.EOF) {
				t.Errorf("server error %v, want EOF", err)
			}
		})
	}
}

func TestServerEpochWindow(t *testing.T) {
	d := sharedDomain(t)
	const epochLen = time.Hour
	const e = uint64(500000)
	start := func(n uint64) time.Time { return time.Unix(int64(n)*3600, 0) }
	mid := start(e).Add(epochLen / 2)
	cases := []struct {
		name   string
		permit uint64
		now    time.Time
		grace  time.Duration
		ok     bool
	}{
		{"current", e, mid, 0, true},
		{"current-first-second", e, start(e), 0, true},
		{"current-last-second", e, start(e + 1).Add(-time.Nanosecond), 0, true},
		{"current-2", e - 2, mid, 0, false},
		{"current+2", e + 2, mid, 0, false},
		{"previous-mid-epoch", e - 1, mid, 0, false},
		{"next-mid-epoch", e + 1, mid, 0, false},
		{"previous-at-boundary", e - 1, start(e), 0, true},
		{"previous-inside-grace", e - 1, start(e).Add(300 * time.Second), 0, true},
		{"previous-outside-grace", e - 1, start(e).Add(301 * time.Second), 0, false},
		{"previous-outside-grace-by-1ms", e - 1, start(e).Add(300*time.Second + time.Millisecond), 0, false},
		{"next-inside-grace", e + 1, start(e + 1).Add(-300 * time.Second), 0, true},
		{"next-outside-grace", e + 1, start(e + 1).Add(-301 * time.Second), 0, false},
		{"previous-custom-grace-inside", e - 1, start(e).Add(60 * time.Second), time.Minute, true},
		{"previous-custom-grace-outside", e - 1, start(e).Add(61 * time.Second), time.Minute, false},
		{"next-grace-disabled", e + 1, start(e + 1).Add(-time.Second), -1, false},
		{"epoch-0", 0, mid, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ccfg := d.clientConfig()
			ccfg.EpochLen = epochLen
			ccfg.Permits = []Permit{d.permit(t, c.permit)}
			// The client's clock sits in its permit's epoch, so it always
			// offers that permit; the server's clock is the one under test.
			ccfg.Now = clock(start(c.permit).Add(epochLen / 2))
			scfg := d.serverConfig()
			scfg.EpochLen, scfg.Grace, scfg.Now = epochLen, c.grace, clock(c.now)
			r := handshake(t, ccfg, scfg)
			if !c.ok {
				r.mustFail(t, ErrEpoch, AlertHandshakeFailure)
				return
			}
			r.mustSucceed(t)
			if !r.sres.PermitUsed || r.sres.Epoch != c.permit {
				t.Errorf("server result: permit %v epoch %d", r.sres.PermitUsed, r.sres.Epoch)
			}
		})
	}
}

func TestRequirePermit(t *testing.T) {
	d := sharedDomain(t)
	scfg := d.serverConfig()
	scfg.RequirePermit = true
	r := handshake(t, d.clientConfig(), scfg)
	r.mustFail(t, ErrEpoch, AlertHandshakeFailure)

	// The same client with a permit of the current epoch passes.
	ccfg := d.clientConfig()
	ccfg.Permits = []Permit{d.permit(t, fxEpoch)}
	scfg = d.serverConfig()
	scfg.RequirePermit = true
	handshake(t, ccfg, scfg).mustSucceed(t)
}

func TestClientPermitChoice(t *testing.T) {
	d := sharedDomain(t)
	const epochLen = time.Hour
	const e = uint64(400000)
	start := func(n uint64) time.Time { return time.Unix(int64(n)*3600, 0) }
	pm1, p0, pp1 := d.permit(t, e-1), d.permit(t, e), d.permit(t, e+1)
	cases := []struct {
		name    string
		permits []Permit
		now     time.Time
		want    int64 // epoch used, −1 for none
	}{
		{"current-among-three", []Permit{pm1, pp1, p0}, start(e).Add(10 * time.Second), int64(e)},
		{"only-next-inside-grace", []Permit{pp1}, start(e + 1).Add(-100 * time.Second), int64(e + 1)},
		{"only-next-outside-grace", []Permit{pp1}, start(e + 1).Add(-400 * time.Second), -1},
		{"only-previous-inside-grace", []Permit{pm1}, start(e).Add(100 * time.Second), int64(e - 1)},
		{"only-previous-outside-grace", []Permit{pm1}, start(e).Add(400 * time.Second), -1},
		{"none", nil, start(e), -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ccfg := d.clientConfig()
			ccfg.EpochLen, ccfg.Permits, ccfg.Now = epochLen, c.permits, clock(c.now)
			scfg := d.serverConfig()
			scfg.EpochLen, scfg.Now = epochLen, clock(c.now)
			r := handshake(t, ccfg, scfg)
			r.mustSucceed(t)
			got := int64(-1)
			if r.cres.PermitUsed {
				got = int64(r.cres.Epoch)
			}
			if got != c.want || r.sres.PermitUsed != r.cres.PermitUsed || r.sres.Epoch != r.cres.Epoch {
				t.Errorf("permit epoch used %d (server %v/%d), want %d", got, r.sres.PermitUsed, r.sres.Epoch, c.want)
			}
		})
	}
}

// TestPermitMismatch plays clients whose Msg1 and Msg3 disagree on the
// permit: the flag and U' say one thing, V another.
func TestPermitMismatch(t *testing.T) {
	d := sharedDomain(t)
	tp := d.permit(t, fxEpoch).TP
	csTP := pairing.AddSecret(d.cs, tp)
	cases := []struct {
		name   string
		flags  byte
		epoch  uint64
		permit bool // U' uses A' = A + AT
		vKey   pairing.G1
		ok     bool
	}{
		{"flag-V-without-TP", FlagPermit, fxEpoch, true, d.cs, false},
		{"no-flag-V-with-TP", 0, 0, false, csTP, false},
		{"flag-U-without-AT", FlagPermit, fxEpoch, false, csTP, false},
		{"no-flag-U-with-AT", 0, 0, true, d.cs, false},
		{"flag-V-with-TP-only", FlagPermit, fxEpoch, true, tp, false},
		{"control-permit", FlagPermit, fxEpoch, true, csTP, true},
		{"control-no-permit", 0, 0, false, d.cs, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeClient(t, d.clientID)
			base := f.a
			if c.permit {
				base = f.aPrime(t, fxEpoch)
			}
			srv := startServer(t, context.Background(), d.serverConfig())
			if err := srv.send(f.msg1(d.serverID, c.flags, c.epoch, base).Marshal()); err != nil {
				t.Fatal(err)
			}
			_, m := srv.recv(t)
			m2, ok := m.(*Msg2)
			if !ok {
				t.Fatalf("got %#v, want Msg2", m)
			}
			if err := srv.send(f.msg3(m2.Y, c.vKey).Marshal()); err != nil {
				t.Fatal(err)
			}
			msgs := srv.finish(t)
			if c.ok {
				if srv.err != nil || len(msgs) != 1 {
					t.Fatalf("control: %v", srv.err)
				}
				if _, ok := msgs[0].(*Msg4); !ok {
					t.Errorf("control: got %#v", msgs[0])
				}
				return
			}
			if !errors.Is(srv.err, ErrAuth) {
				t.Errorf("server error %v, want ErrAuth", srv.err)
			}
			assertStep(t, srv.err, "server", AlertHandshakeFailure)
			assertAlert(t, msgs, AlertHandshakeFailure)
			assertNoKey(t, srv.trace, srv.res)
		})
	}
}

func TestWrongKeys(t *testing.T) {
	d := sharedDomain(t)
	other := newDomain(t, 3, d.clientID, d.serverID) // same identities, other master shares
	token, err := Token(d.cs, d.clientID, "1234")
	if err != nil {
		t.Fatal(err)
	}
	fromToken := func(factor string) *ClientKey {
		k, err := NewClientKeyFromToken(d.clientID, token, factor)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	twoShares := func() *ClientKey {
		var shares []pairing.G1
		for _, m := range d.masters[:2] {
			p, err := m.ClientShare(d.clientID)
			if err != nil {
				t.Fatal(err)
			}
			shares = append(shares, p)
		}
		cs, err := SumG1(shares...)
		if err != nil {
			t.Fatal(err)
		}
		k, err := NewClientKey(d.clientID, cs)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	stolenKey, err := NewClientKey("spiffe://test.example/ns/web/sa/mallory", d.cs)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		client  func(*ClientConfig)
		server  func(*ServerConfig)
		wantErr error // nil: success
	}{
		{"right-factor", func(c *ClientConfig) { c.Key = fromToken("1234") }, nil, nil},
		{"wrong-factor", func(c *ClientConfig) { c.Key = fromToken("1235") }, nil, ErrAuth},
		{"factor-as-string", func(c *ClientConfig) { c.Key = fromToken("01234") }, nil, ErrAuth},
		{"token-without-factor", func(c *ClientConfig) { c.Key = fromToken("0") }, nil, ErrAuth},
		{"two-of-three-shares", func(c *ClientConfig) { c.Key = twoShares() }, nil, ErrAuth},
		{"client-key-of-other-domain", func(c *ClientConfig) { c.Key = other.ck }, nil, ErrAuth},
		{"key-under-another-identity", func(c *ClientConfig) { c.Key = stolenKey }, nil, ErrAuth},
		{"permit-of-other-domain", func(c *ClientConfig) { c.Permits = []Permit{other.permit(t, fxEpoch)} }, nil, ErrAuth},
		{"permit-of-other-epoch", func(c *ClientConfig) {
			p := d.permit(t, fxEpoch-1)
			p.Epoch = fxEpoch
			c.Permits = []Permit{p}
		}, nil, ErrAuth},
		{"server-SS-of-other-domain", nil, func(s *ServerConfig) {
			k, err := NewServerKey(d.serverID, other.ss, d.sk)
			if err != nil {
				t.Fatal(err)
			}
			s.Keys = []*ServerKey{k}
		}, ErrAuth},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ccfg, scfg := d.clientConfig(), d.serverConfig()
			if c.client != nil {
				c.client(ccfg)
			}
			if c.server != nil {
				c.server(scfg)
			}
			var authorized []string
			scfg.Authorize = func(id string) error { authorized = append(authorized, id); return nil }
			r := handshake(t, ccfg, scfg)
			if c.wantErr == nil {
				r.mustSucceed(t)
				return
			}
			r.mustFail(t, c.wantErr, AlertHandshakeFailure)
			if len(authorized) != 0 {
				t.Errorf("authorisation policy consulted for an unauthenticated client: %q", authorized)
			}
		})
	}

	// A server that holds the right SS but the SK of another domain passes
	// the mpinkex check; only the PSKs differ, so the DTLS handshake fails.
	t.Run("server-SK-of-other-domain", func(t *testing.T) {
		k, err := NewServerKey(d.serverID, d.ss, other.sk)
		if err != nil {
			t.Fatal(err)
		}
		scfg := d.serverConfig()
		scfg.Keys = []*ServerKey{k}
		r := handshake(t, d.clientConfig(), scfg)
		if r.cerr != nil || r.serr != nil {
			t.Fatalf("client %v, server %v: want both to pass", r.cerr, r.serr)
		}
		if bytes.Equal(r.cres.PSK, r.sres.PSK) {
			t.Error("PSKs agree although the server holds the wrong identity key")
		}
		if r.cres.PSKIdentity != r.sres.PSKIdentity {
			t.Error("psk_identity depends only on the transcript, yet differs")
		}
		a, _ := r.cres.Exporter("x", 32)
		b, _ := r.sres.Exporter("x", 32)
		if bytes.Equal(a, b) {
			t.Error("exporters agree although the PSKs differ")
		}
	})
}

func TestAuthorizeRefuses(t *testing.T) {
	d := sharedDomain(t)
	var got []string
	deny := errors.New("not on the allow-list")
	scfg := d.serverConfig()
	scfg.Authorize = func(id string) error { got = append(got, id); return deny }
	r := handshake(t, d.clientConfig(), scfg)
	r.mustFail(t, ErrPolicy, AlertHandshakeFailure)
	if !errors.Is(r.serr, deny) {
		t.Errorf("server error %v does not wrap the policy's reason", r.serr)
	}
	if len(got) != 1 || got[0] != d.clientID {
		t.Errorf("policy saw %q, want exactly the authenticated client", got)
	}
	// The reason stays local: the wire carries the bare alert.
	if strings.Contains(string(r.toClient), deny.Error()) {
		t.Error("policy reason sent on the wire")
	}
}

func TestReplayedTranscript(t *testing.T) {
	d := sharedDomain(t)
	yw := append(scalarBytes(mustRandomScalar(t)), scalarBytes(mustRandomScalar(t))...)
	scfg := d.serverConfig()
	scfg.Rand = bytes.NewReader(yw)
	rec := handshake(t, d.clientConfig(), scfg)
	rec.mustSucceed(t)
	stream := rec.toServer // Msg1 ‖ Msg3 of the honest client

	// Control: the recording is faithful, a server that draws the same y
	// and w accepts it.
	scfg = d.serverConfig()
	scfg.Rand = bytes.NewReader(yw)
	res, out, _, err := serveStream(t, scfg, stream)
	if err != nil || len(out) != 2 || !bytes.Equal(res.PSK, rec.sres.PSK) {
		t.Fatalf("control replay with the same y: %v", err)
	}

	// A server drawing a fresh y rejects the old Msg3.
	for range 2 {
		res, out, tr, err := serveStream(t, d.serverConfig(), stream)
		if !errors.Is(err, ErrAuth) {
			t.Errorf("replay: server error %v, want ErrAuth", err)
		}
		assertStep(t, err, "server", AlertHandshakeFailure)
		assertNoKey(t, tr, res)
		if len(out) != 2 {
			t.Fatalf("replay: server sent %d messages, want Msg2 and an alert", len(out))
		}
		assertAlert(t, out, AlertHandshakeFailure)
		if m2 := out[0].(*Msg2); bytes.Equal(m2.Marshal(), parseFrames(t, rec.toClient)[0].Marshal()) {
			t.Error("server repeated its Msg2")
		}
	}
}

func scalarBytes(s *pairing.Scalar) []byte { b := s.Bytes(); return b[:] }

// TestServerFraming feeds the server streams that break the framing at
// each step.
func TestServerFraming(t *testing.T) {
	d := sharedDomain(t)
	f := newFakeClient(t, d.clientID)
	m1 := frame(f.msg1(d.serverID, 0, 0, f.a).Marshal())
	m3 := frame((&Msg3{V: randomG1(t)}).Marshal())
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cases := []struct {
		name   string
		in     []byte
		want   error
		alerts bool // a decode_error alert closes the server's output
		msg2   bool // the server got as far as Msg2
	}{
		{"empty-stream", nil, io.EOF, false, false},
		{"one-byte", []byte{0x00}, ErrDecode, true, false},
		{"msg1-header-only", m1[:2], ErrDecode, true, false},
		{"msg1-truncated", m1[:len(m1)-1], ErrDecode, true, false},
		{"msg1-oversized-1025", cat([]byte{0x04, 0x01}, make([]byte, 1025)), ErrDecode, true, false},
		{"msg1-oversized-65535", cat([]byte{0xff, 0xff}, m1), ErrDecode, true, false},
		{"msg1-zero-length", cat([]byte{0x00, 0x00}, m1), ErrDecode, true, false},
		{"msg1-length-too-long", cat([]byte{0x00, byte(len(m1) - 1)}, m1[2:]), ErrDecode, true, false},
		{"msg1-length-too-short", cat([]byte{0x00, byte(len(m1) - 3)}, m1[2:]), ErrDecode, true, false},
		{"eof-after-msg1", m1, io.EOF, false, true},
		{"one-byte-after-msg1", cat(m1, []byte{0x00}), ErrDecode, true, true},
		{"msg3-truncated", cat(m1, m3[:30]), ErrDecode, true, true},
		{"msg3-header-only", cat(m1, m3[:2]), ErrDecode, true, true},
		{"msg3-oversized-1025", cat(m1, []byte{0x04, 0x01}, make([]byte, 1025)), ErrDecode, true, true},
		{"msg3-oversized-65535", cat(m1, []byte{0xff, 0xff}), ErrDecode, true, true},
		{"msg3-zero-length", cat(m1, []byte{0x00, 0x00}, m3), ErrDecode, true, true},
		{"msg3-trailing-in-frame", cat(m1, frame(append((&Msg3{V: randomG1(t)}).Marshal(), 0))), ErrDecode, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, out, tr, err := serveStream(t, d.serverConfig(), c.in)
			if !errors.Is(err, c.want) {
				t.Errorf("server error %v, want %v", err, c.want)
			}
			assertNoKey(t, tr, res)
			n := 0
			if c.msg2 {
				n++
				if len(out) == 0 {
					t.Fatal("server sent nothing, want Msg2")
				}
				if _, ok := out[0].(*Msg2); !ok {
					t.Errorf("first message %#v, want Msg2", out[0])
				}
			}
			if c.alerts {
				n++
				assertAlert(t, out, AlertDecodeError)
				assertStep(t, err, "server", AlertDecodeError)
			} else {
				assertStep(t, err, "server", 0)
			}
			if len(out) != n {
				t.Errorf("server sent %d messages, want %d", len(out), n)
			}
		})
	}
}

func TestWrongMessageType(t *testing.T) {
	d := sharedDomain(t)
	f := newFakeClient(t, d.clientID)
	m1 := f.msg1(d.serverID, 0, 0, f.a).Marshal()
	m2 := craftMsg2(t, d.serverID).Marshal()
	m3 := (&Msg3{V: randomG1(t)}).Marshal()
	m4 := (&Msg4{}).Marshal()
	alert := (&Alert{Code: AlertHandshakeFailure}).Marshal()

	// Server, step 1 then step 3.
	for _, c := range []struct {
		name string
		in   []byte
		msg2 bool
	}{
		{"first-Msg2", frame(m2), false},
		{"first-Msg3", frame(m3), false},
		{"first-Msg4", frame(m4), false},
		{"first-Alert", frame(alert), false},
		{"Msg1-twice", concatFrames(m1, m1), true},
		{"Msg1-then-Msg2", concatFrames(m1, m2), true},
		{"Msg1-then-Msg4", concatFrames(m1, m4), true},
		{"Msg1-then-Alert", concatFrames(m1, alert), true},
	} {
		t.Run("server/"+c.name, func(t *testing.T) {
			res, out, tr, err := serveStream(t, d.serverConfig(), c.in)
			if !errors.Is(err, ErrDecode) {
				t.Errorf("server error %v, want ErrDecode", err)
			}
			assertStep(t, err, "server", AlertDecodeError)
			assertNoKey(t, tr, res)
			assertAlert(t, out, AlertDecodeError)
			want := 1
			if c.msg2 {
				want = 2
			}
			if len(out) != want {
				t.Errorf("server sent %d messages, want %d", len(out), want)
			}
		})
	}

	// Client, step 4 (step 2 is in TestClientRejectsBadMsg2).
	for _, c := range []struct {
		name  string
		raw4  []byte
		want  error
		alert AlertCode
	}{
		{"Msg2-again", m2, ErrDecode, 0},
		{"Msg1", m1, ErrDecode, 0},
		{"Msg3", m3, ErrDecode, 0},
		{"Msg4-status-1", []byte{TypeMsg4, 0x01}, ErrDecode, 0},
		{"Msg4-trailing", []byte{TypeMsg4, 0x00, 0x00}, ErrDecode, 0},
		{"alert-handshake-failure", alert, nil, AlertHandshakeFailure},
		{"alert-overloaded", (&Alert{Code: AlertOverloaded}).Marshal(), nil, AlertOverloaded},
	} {
		t.Run("client/"+c.name, func(t *testing.T) {
			cl := startClient(t, context.Background(), d.clientConfig())
			cl.recvMsg1(t)
			if err := WriteFrame(cl.peer, craftMsg2(t, d.serverID).Marshal()); err != nil {
				t.Fatal(err)
			}
			if raw, err := ReadFrame(cl.peer); err != nil || raw[0] != TypeMsg3 {
				t.Fatalf("want Msg3: %x, %v", raw, err)
			}
			if err := WriteFrame(cl.peer, c.raw4); err != nil {
				t.Fatal(err)
			}
			cl.expectEOF(t)
			if cl.res != nil {
				t.Error("client returned a result")
			}
			if c.alert != 0 {
				assertPeerAlert(t, cl.err, c.alert)
			} else if !errors.Is(cl.err, c.want) {
				t.Errorf("client error %v, want %v", cl.err, c.want)
			}
		})
	}
}

func TestUnsupportedVersion(t *testing.T) {
	d := sharedDomain(t)
	f := newFakeClient(t, d.clientID)
	m1 := f.msg1(d.serverID, 0, 0, f.a).Marshal()
	for _, v := range []byte{0x00, 0x02, 0xff} {
		t.Run(hexByte(v), func(t *testing.T) {
			res, out, tr, err := serveStream(t, d.serverConfig(), frame(splice(m1, 1, []byte{v})))
			if !errors.Is(err, ErrVersion) || errors.Is(err, ErrDecode) {
				t.Errorf("server error %v, want ErrVersion only", err)
			}
			assertStep(t, err, "server", AlertUnsupportedVersion)
			assertNoKey(t, tr, res)
			if len(out) != 1 {
				t.Fatalf("server sent %d messages", len(out))
			}
			assertAlert(t, out, AlertUnsupportedVersion)
		})
	}
	// A version-1 type byte followed by nothing is truncated, not a version
	// error.
	if _, _, _, err := serveStream(t, d.serverConfig(), frame([]byte{TypeMsg1})); !errors.Is(err, ErrDecode) {
		t.Errorf("bare type byte: %v", err)
	}
}

// TestServerRejectsDegenerateU: a client that knows y in advance (the
// server's randomness is fixed here) sends U' = −y·A' so that U' + y·A' is
// the identity and the pairing check would hold for V = O. V = O is already
// refused by the decoder, so this asserts the outcome (ErrAuth, no key),
// not which of the two checks fires.
func TestServerRejectsDegenerateU(t *testing.T) {
	d := sharedDomain(t)
	y, w := mustRandomScalar(t), mustRandomScalar(t)
	f := newFakeClient(t, d.clientID)
	m1 := f.msg1(d.serverID, 0, 0, f.a)
	m1.UPrime = pairing.MulSecret(y, f.a).Neg()
	scfg := d.serverConfig()
	scfg.Rand = bytes.NewReader(append(scalarBytes(y), scalarBytes(w)...))
	in := concatFrames(m1.Marshal(), (&Msg3{V: randomG1(t)}).Marshal())
	res, out, tr, err := serveStream(t, scfg, in)
	if !errors.Is(err, ErrAuth) {
		t.Errorf("server error %v, want ErrAuth", err)
	}
	assertStep(t, err, "server", AlertHandshakeFailure)
	assertNoKey(t, tr, res)
	assertAlert(t, out, AlertHandshakeFailure)
	if m2, ok := out[0].(*Msg2); !ok || !m2.Y.Equal(y) {
		t.Fatal("the server did not draw the injected y: the test proves nothing")
	}
}

// TestClientRejectsYEqualMinusX: a server that sends y = r − x would make
// x + y = 0 and V the identity.
func TestClientRejectsYEqualMinusX(t *testing.T) {
	d := sharedDomain(t)
	x, z := mustRandomScalar(t), mustRandomScalar(t)
	cfg := d.clientConfig()
	cfg.Rand = bytes.NewReader(append(scalarBytes(x), scalarBytes(z)...))
	cl := startClient(t, context.Background(), cfg)
	cl.recvMsg1(t)
	var negX pairing.Scalar
	negX.Neg(x)
	m2 := craftMsg2(t, d.serverID)
	m2.Y = &negX
	if err := WriteFrame(cl.peer, m2.Marshal()); err != nil {
		t.Fatal(err)
	}
	cl.expectEOF(t)
	if !errors.Is(cl.err, ErrAuth) {
		t.Errorf("client error %v, want ErrAuth", cl.err)
	}
}

func TestSlowPeer(t *testing.T) {
	d := sharedDomain(t)
	const step = 100 * time.Millisecond
	f := newFakeClient(t, d.clientID)
	m1 := f.msg1(d.serverID, 0, 0, f.a).Marshal()
	cases := []struct {
		name     string
		play     func(t *testing.T, srv *serverRun)
		wantStep string
	}{
		{"never-sends-Msg1", func(*testing.T, *serverRun) {}, "read Msg1"},
		{"half-a-header", func(t *testing.T, srv *serverRun) {
			if _, err := srv.peer.Write([]byte{0x00}); err != nil {
				t.Fatal(err)
			}
		}, "read Msg1"},
		{"half-a-Msg1", func(t *testing.T, srv *serverRun) {
			if _, err := srv.peer.Write(frame(m1)[:50]); err != nil {
				t.Fatal(err)
			}
		}, "read Msg1"},
		{"stops-after-Msg1", func(t *testing.T, srv *serverRun) {
			if err := srv.send(m1); err != nil {
				t.Fatal(err)
			}
			srv.recv(t)
		}, "read Msg3"},
		{"never-reads-Msg2", func(t *testing.T, srv *serverRun) {
			if err := srv.send(m1); err != nil {
				t.Fatal(err)
			}
		}, "write Msg2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			scfg := d.serverConfig()
			scfg.StepTimeout = step
			begin := time.Now()
			srv := startServer(t, context.Background(), scfg)
			c.play(t, srv)
			<-srv.done
			el := time.Since(begin)
			if !errors.Is(srv.err, os.ErrDeadlineExceeded) {
				t.Errorf("server error %v, want os.ErrDeadlineExceeded", srv.err)
			}
			var e *Error
			if errors.As(srv.err, &e) && e.Step != c.wantStep {
				t.Errorf("failed at %q, want %q", e.Step, c.wantStep)
			}
			assertNoKey(t, srv.trace, srv.res)
			if el < step || el > 5*time.Second {
				t.Errorf("server gave up after %v with a %v step timeout", el, step)
			}
		})
	}

	t.Run("client-server-silent", func(t *testing.T) {
		cfg := d.clientConfig()
		cfg.StepTimeout = step
		cl := startClient(t, context.Background(), cfg)
		cl.recvMsg1(t)
		<-cl.done
		if !errors.Is(cl.err, os.ErrDeadlineExceeded) {
			t.Errorf("client error %v, want os.ErrDeadlineExceeded", cl.err)
		}
	})
}

func TestContext(t *testing.T) {
	d := sharedDomain(t)
	t.Run("server-cancel-interrupts-read", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		scfg := d.serverConfig()
		scfg.StepTimeout = time.Minute
		srv := startServer(t, ctx, scfg)
		time.AfterFunc(50*time.Millisecond, cancel)
		begin := time.Now()
		select {
		case <-srv.done:
		case <-time.After(10 * time.Second):
			t.Fatal("cancel did not interrupt the blocked read")
		}
		if !errors.Is(srv.err, context.Canceled) {
			t.Errorf("server error %v, want context.Canceled", srv.err)
		}
		if el := time.Since(begin); el > 5*time.Second {
			t.Errorf("took %v", el)
		}
	})
	t.Run("client-cancel-interrupts-read", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cfg := d.clientConfig()
		cfg.StepTimeout = time.Minute
		cl := startClient(t, ctx, cfg)
		cl.recvMsg1(t)
		cancel()
		select {
		case <-cl.done:
		case <-time.After(10 * time.Second):
			t.Fatal("cancel did not interrupt the blocked read")
		}
		if !errors.Is(cl.err, context.Canceled) {
			t.Errorf("client error %v, want context.Canceled", cl.err)
		}
	})
	t.Run("client-cancel-while-arming", func(t *testing.T) {
		// The cancel lands while the client arms the read of Msg2: the
		// watcher moves the deadline into the past, then the step's own
		// deadline replaces it. The read must still end at once.
		ctx, cancel := context.WithCancel(context.Background())
		cfg := d.clientConfig()
		cfg.StepTimeout = time.Minute
		cc, sc := net.Pipe()
		ac := &armingConn{Conn: cc, onArm: 2, cancel: cancel}
		done := make(chan error, 1)
		go func() {
			_, err := Client(ctx, ac, cfg)
			cc.Close()
			done <- err
		}()
		t.Cleanup(func() { sc.Close() })
		if _, err := ReadFrame(sc); err != nil { // Msg1
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("client error %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a cancel during arming did not interrupt the read")
		}
	})
	t.Run("already-cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s := &fxStream{Reader: bytes.NewReader(nil)}
		if _, err := Client(ctx, s, d.clientConfig()); !errors.Is(err, context.Canceled) {
			t.Errorf("client: %v", err)
		}
		if _, err := Server(ctx, s, d.serverConfig()); !errors.Is(err, context.Canceled) {
			t.Errorf("server: %v", err)
		}
		if s.out.Len() != 0 {
			t.Errorf("wrote %x with a cancelled context", s.out.Bytes())
		}
	})
	t.Run("context-deadline", func(t *testing.T) {
		// The context's deadline is shorter than the step timeout: it
		// bounds the read and is reported as the context's error.
		for i := range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			scfg := d.serverConfig()
			scfg.StepTimeout = time.Minute
			srv := startServer(t, ctx, scfg)
			<-srv.done
			cancel()
			if !errors.Is(srv.err, context.DeadlineExceeded) || !errors.Is(srv.err, os.ErrDeadlineExceeded) {
				t.Fatalf("run %d: server error %v, want context.DeadlineExceeded and os.ErrDeadlineExceeded", i, srv.err)
			}
		}
	})
	t.Run("deadline-cleared-after-success", func(t *testing.T) {
		cc, sc := net.Pipe()
		defer cc.Close()
		defer sc.Close()
		ccfg, scfg := d.clientConfig(), d.serverConfig()
		ccfg.StepTimeout, scfg.StepTimeout = 500*time.Millisecond, 500*time.Millisecond
		done := make(chan error, 1)
		go func() { _, err := Server(context.Background(), sc, scfg); done <- err }()
		if _, err := Client(context.Background(), cc, ccfg); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// The record layer runs after the handshake on the same conn: no
		// step deadline may linger.
		time.Sleep(600 * time.Millisecond)
		go func() { _, _ = sc.Write([]byte("late")) }()
		b := make([]byte, 4)
		if _, err := io.ReadFull(cc, b); err != nil {
			t.Errorf("read after the handshake: %v", err)
		}
	})
}

func TestOverloaded(t *testing.T) {
	d := sharedDomain(t)
	cl := startClient(t, context.Background(), d.clientConfig())
	// A server past its bound answers without running the handshake; it
	// still drains Msg1 (net.Pipe has no buffer).
	go func() { _ = WriteAlert(cl.peer, AlertOverloaded) }()
	cl.recvMsg1(t)
	cl.expectEOF(t)
	var ae *AlertError
	if !errors.As(cl.err, &ae) || ae.Code != AlertOverloaded {
		t.Errorf("client error %v, want AlertError overloaded", cl.err)
	}
	assertStep(t, cl.err, "client", 0)
}

func TestExporter(t *testing.T) {
	d := sharedDomain(t)
	r := handshake(t, d.clientConfig(), d.serverConfig())
	r.mustSucceed(t)
	c1, err1 := r.cres.Exporter("EXPORTER-test", 32)
	s1, err2 := r.sres.Exporter("EXPORTER-test", 32)
	c2, err3 := r.cres.Exporter("EXPORTER-other", 32)
	c64, err4 := r.cres.Exporter("EXPORTER-test", 64)
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(c1, s1) {
		t.Error("client and server exporters differ for the same label")
	}
	if bytes.Equal(c1, c2) {
		t.Error("different labels give the same output")
	}
	if len(c1) != 32 || len(c64) != 64 {
		t.Error("wrong lengths")
	}
	if bytes.Equal(c1, r.cres.PSK) {
		t.Error("exporter output equals the PSK")
	}
	if _, err := r.cres.Exporter("x", 255*32+1); err == nil {
		t.Error("exporter longer than HKDF allows")
	}
	// Independent recomputation from the prk: HKDF-Expand with the label of §6.
	want, _ := hkdf.Expand(sha256.New, r.cres.prk, "mpinkex v1 exporter EXPORTER-test", 32)
	if !bytes.Equal(c1, want) {
		t.Error("exporter is not HKDF-Expand(prk, \"mpinkex v1 exporter \" ‖ label)")
	}
	psk, _ := hkdf.Expand(sha256.New, r.cres.prk, "mpinkex v1 psk", 32)
	if !bytes.Equal(psk, r.cres.PSK) {
		t.Error("psk is not HKDF-Expand(prk, \"mpinkex v1 psk\", 32)")
	}
	for _, res := range []*Result{r.cres, r.sres} {
		res.Zeroize()
		if _, err := res.Exporter("EXPORTER-test", 32); err == nil {
			t.Error("exporter works after Zeroize")
		}
		if !bytes.Equal(res.PSK, make([]byte, PSKSize)) {
			t.Error("PSK not cleared by Zeroize")
		}
		res.Zeroize() // idempotent
	}
	var zero Result
	if _, err := zero.Exporter("x", 1); err == nil {
		t.Error("exporter of an empty Result")
	}
}

func TestEpoch(t *testing.T) {
	cases := []struct {
		t    time.Time
		l    time.Duration
		want uint64
		err  bool
	}{
		{time.Unix(0, 0), DefaultEpochLen, 0, false},
		{time.Unix(86399, 999999999), DefaultEpochLen, 0, false},
		{time.Unix(86400, 0), DefaultEpochLen, 1, false},
		{time.Unix(20415*86400+43200, 0), DefaultEpochLen, 20415, false},
		{time.Unix(7199, 0), time.Hour, 1, false},
		{time.Unix(7200, 0), time.Hour, 2, false},
		{time.Unix(5, 0), time.Second, 5, false},
		{time.Unix(100, 0), 0, 0, true},
		{time.Unix(100, 0), -time.Hour, 0, true},
		{time.Unix(100, 0), 1500 * time.Millisecond, 0, true},
		{time.Unix(100, 0), time.Millisecond, 0, true},
		{time.Unix(-1, 0), time.Hour, 0, true},
	}
	for _, c := range cases {
		got, err := Epoch(c.t, c.l)
		if c.err {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("Epoch(%v, %v): %v, want ErrConfig", c.t.Unix(), c.l, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Epoch(%v, %v) = %d, %v; want %d", c.t.Unix(), c.l, got, err, c.want)
		}
	}
}

func TestAcceptEpoch(t *testing.T) {
	const l = time.Hour
	const g = 300 * time.Second
	b := time.Unix(1000*3600, 0) // start of epoch 1000
	cases := []struct {
		name  string
		epoch uint64
		now   time.Time
		grace time.Duration
		want  bool
	}{
		{"current-start", 1000, b, g, true},
		{"current-end", 1000, b.Add(l - time.Nanosecond), g, true},
		{"previous-at-boundary", 999, b, g, true},
		{"previous-at-grace", 999, b.Add(g), g, true},
		{"previous-past-grace-1ns", 999, b.Add(g + time.Nanosecond), g, false},
		{"previous-past-grace-1s", 999, b.Add(g + time.Second), g, false},
		{"next-at-grace", 1001, b.Add(l - g), g, true},
		{"next-before-grace-1ns", 1001, b.Add(l - g - time.Nanosecond), g, false},
		{"next-last-ns", 1001, b.Add(l - time.Nanosecond), g, true},
		{"two-back", 998, b, g, false},
		{"two-ahead", 1002, b.Add(l - time.Nanosecond), g, false},
		{"far-future", 1 << 62, b, g, false},
		{"max-epoch", 1<<64 - 1, b, g, false},
		{"zero-grace-previous-at-boundary", 999, b, 0, true},
		{"zero-grace-previous-after", 999, b.Add(time.Nanosecond), 0, false},
		{"zero-grace-next", 1001, b.Add(l - time.Nanosecond), 0, false},
		{"grace-longer-than-epoch", 998, b, 2 * l, false},
		{"epoch-0-previous-of-nothing", 1<<64 - 1, time.Unix(10, 0), g, false},
		{"epoch-0-next", 1, time.Unix(3600-100, 0), g, true},
	}
	for _, c := range cases {
		got, err := AcceptEpoch(c.epoch, c.now, l, c.grace)
		if err != nil || got != c.want {
			t.Errorf("%s: AcceptEpoch = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if _, err := AcceptEpoch(1000, b, l, -time.Second); err == nil {
		t.Error("negative grace accepted")
	}
	if _, err := AcceptEpoch(1000, b, 0, g); !errors.Is(err, ErrConfig) {
		t.Errorf("zero epoch length: %v", err)
	}
}

// factorHKDF is the non-PIN factor map of §4, computed independently.
func factorHKDF(t *testing.T, p string) []byte {
	prk, err := hkdf.Extract(sha256.New, []byte(p), []byte("mpinkex v1 factor"))
	if err != nil {
		t.Fatal(err)
	}
	okm, err := hkdf.Expand(sha256.New, prk, "factor", 48)
	if err != nil {
		t.Fatal(err)
	}
	o := pairing.Order()
	v := new(big.Int).Mod(new(big.Int).SetBytes(okm), new(big.Int).SetBytes(o[:]))
	return v.FillBytes(make([]byte, 32))
}

func TestFactorScalar(t *testing.T) {
	pin := func(n uint64) []byte { b := pairing.ScalarFromUint64(n).Bytes(); return b[:] }
	cases := []struct {
		factor string
		want   []byte
	}{
		{"0123", pin(123)},
		{"123", pin(123)},
		{"0", pin(0)},
		{"0000", pin(0)},
		{"9999", pin(9999)},
		{"1234", pin(1234)},
		{"7", pin(7)},
		{"12345", factorHKDF(t, "12345")},
		{"00000", factorHKDF(t, "00000")},
		{"01234", factorHKDF(t, "01234")},
		{"١٢٣٤", factorHKDF(t, "١٢٣٤")}, // Arabic-Indic digits are not ASCII
		{"１２３", factorHKDF(t, "１２３")},   // fullwidth digits
		{" 123", factorHKDF(t, " 123")},
		{"123 ", factorHKDF(t, "123 ")},
		{"+123", factorHKDF(t, "+123")},
		{"-1", factorHKDF(t, "-1")},
		{"12a", factorHKDF(t, "12a")},
		{"correct horse battery staple", factorHKDF(t, "correct horse battery staple")},
		{"\x00", factorHKDF(t, "\x00")},
	}
	for _, c := range cases {
		f, err := FactorScalar(c.factor)
		if err != nil {
			t.Errorf("%q: %v", c.factor, err)
			continue
		}
		if got := f.Bytes(); !bytes.Equal(got[:], c.want) {
			t.Errorf("%q: f = %x, want %x", c.factor, got, c.want)
		}
	}
	if f, _ := FactorScalar("12345"); f.Equal(pairing.ScalarFromUint64(12345)) {
		t.Error(`"12345" treated as a PIN`)
	}
	if _, err := FactorScalar(""); !errors.Is(err, ErrConfig) {
		t.Errorf("empty factor: %v, want ErrConfig", err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	d := sharedDomain(t)
	for _, factor := range []string{"1234", "0123", "0", "12345", "a long passphrase", "١٢٣٤"} {
		tok, err := Token(d.cs, d.clientID, factor)
		if err != nil {
			t.Fatalf("%q: %v", factor, err)
		}
		if (factor == "0") != tok.Equal(d.cs) {
			t.Errorf("%q: TOKEN == CS is %v", factor, tok.Equal(d.cs))
		}
		f, _ := FactorScalar(factor)
		if want := pairing.AddPublic(d.cs, pairing.MulPublic(f, d.a).Neg()); !f.IsZero() && !tok.Equal(want) {
			t.Errorf("%q: TOKEN != CS − f·A", factor)
		}
		cs, err := RebuildCS(tok, d.clientID, factor)
		if err != nil || !cs.Equal(d.cs) {
			t.Errorf("%q: RebuildCS does not give CS back (%v)", factor, err)
		}
		for _, wrong := range []string{"1235", factor + "x"} {
			if cs, err := RebuildCS(tok, d.clientID, wrong); err == nil && cs.Equal(d.cs) {
				t.Errorf("%q: wrong factor %q rebuilds CS", factor, wrong)
			}
		}
		if cs, err := RebuildCS(tok, "someone-else", factor); !f.IsZero() && err == nil && cs.Equal(d.cs) {
			t.Errorf("%q: another identity rebuilds CS", factor)
		}
	}
	// Errors.
	if _, err := Token(d.cs, d.clientID, ""); !errors.Is(err, ErrConfig) {
		t.Errorf("empty factor: %v", err)
	}
	if _, err := Token(d.cs, "", "1234"); !errors.Is(err, ErrConfig) {
		t.Errorf("empty identity: %v", err)
	}
	if _, err := RebuildCS(d.cs, "\xff", "1234"); !errors.Is(err, ErrConfig) {
		t.Errorf("invalid identity: %v", err)
	}
	// A token of −f·A rebuilds the identity: refused.
	f, _ := FactorScalar("4321")
	bad := pairing.MulSecret(f, d.a).Neg()
	if _, err := RebuildCS(bad, d.clientID, "4321"); !errors.Is(err, ErrConfig) {
		t.Errorf("token giving the identity: %v", err)
	}
	if _, err := NewClientKeyFromToken(d.clientID, bad, "4321"); !errors.Is(err, ErrConfig) {
		t.Errorf("NewClientKeyFromToken to the identity: %v", err)
	}
}

func TestSums(t *testing.T) {
	p, q := randomG1(t), randomG1(t)
	if _, err := SumG1(); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG1(): %v", err)
	}
	if _, err := SumG1(p, pairing.G1{}); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG1 with an identity share: %v", err)
	}
	if _, err := SumG1(p, p.Neg()); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG1 summing to the identity: %v", err)
	}
	if s, err := SumG1(p); err != nil || !s.Equal(p) {
		t.Errorf("SumG1(p) = p: %v", err)
	}
	if s, err := SumG1(p, q, p); err != nil || !s.Equal(pairing.AddPublic(pairing.AddPublic(p, q), p)) {
		t.Errorf("SumG1(p, q, p): %v", err)
	}
	g := pairing.G2Generator()
	k := mustRandomScalar(t)
	h := pairing.MulSecretG2(k, g)
	if _, err := SumG2(); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG2(): %v", err)
	}
	if _, err := SumG2(g, pairing.G2{}); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG2 with an identity share: %v", err)
	}
	if _, err := SumG2(h, h.Neg()); !errors.Is(err, ErrConfig) {
		t.Errorf("SumG2 summing to the identity: %v", err)
	}
	var k1 pairing.Scalar
	k1.Add(k, pairing.ScalarFromUint64(1))
	if s, err := SumG2(g, h); err != nil || !s.Equal(pairing.MulSecretG2(&k1, g)) {
		t.Errorf("SumG2(Q, kQ) != (k+1)Q: %v", err)
	}
}

func TestValidateID(t *testing.T) {
	for _, c := range []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"spiffe://prod.example/ns/pay/sa/api", true},
		{strings.Repeat("x", 255), true},
		{strings.Repeat("é", 127) + "x", true},
		{"naïve", true},
		{"a\x00b", true}, // opaque bytes: no normalisation, no filtering
		{"", false},
		{strings.Repeat("x", 256), false},
		{strings.Repeat("é", 128), false},
		{"\xff", false},
		{"a\xc3", false},
		{"\xed\xa0\x80", false},
	} {
		if err := ValidateID(c.id); (err == nil) != c.ok {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", c.id, err, c.ok)
		}
	}
	for name, f := range map[string]func(string) error{
		"HashClientID": func(id string) error { _, err := HashClientID(id); return err },
		"HashPermit":   func(id string) error { _, err := HashPermit(id, 1); return err },
		"HashServerID": func(id string) error { _, err := HashServerID(id); return err },
	} {
		for _, id := range []string{"", "\xff", strings.Repeat("x", 256)} {
			if err := f(id); !errors.Is(err, ErrConfig) {
				t.Errorf("%s(%q): %v, want ErrConfig", name, id, err)
			}
		}
	}
}

func TestKeyConstructors(t *testing.T) {
	d := sharedDomain(t)
	if _, err := NewClientKey(d.clientID, pairing.G1{}); !errors.Is(err, ErrConfig) {
		t.Errorf("identity CS: %v", err)
	}
	if _, err := NewClientKey("", d.cs); !errors.Is(err, ErrConfig) {
		t.Errorf("empty client id: %v", err)
	}
	if k, err := NewClientKey(d.clientID, d.cs); err != nil || k.ID() != d.clientID {
		t.Errorf("NewClientKey: %v", err)
	}
	for name, f := range map[string]func() error{
		"empty id":    func() error { _, err := NewServerKey("", d.ss, d.sk); return err },
		"invalid id":  func() error { _, err := NewServerKey("\xff", d.ss, d.sk); return err },
		"identity SS": func() error { _, err := NewServerKey(d.serverID, pairing.G2{}, d.sk); return err },
		"identity SK": func() error { _, err := NewServerKey(d.serverID, d.ss, pairing.G2{}); return err },
	} {
		if err := f(); !errors.Is(err, ErrConfig) {
			t.Errorf("NewServerKey %s: %v, want ErrConfig", name, err)
		}
	}
	if d.key.ID() != d.serverID {
		t.Errorf("ServerKey.ID %q", d.key.ID())
	}
	// Master shares: canonical, non-zero.
	for name, b := range map[string][]byte{
		"zero":  make([]byte, 32),
		"r":     orderPlus(0),
		"r+1":   orderPlus(1),
		"short": make([]byte, 31),
		"long":  make([]byte, 33),
	} {
		if _, err := ParseMasterShare(b); err == nil {
			t.Errorf("ParseMasterShare(%s) accepted", name)
		}
	}
	m := d.masters[0]
	raw := m.Bytes()
	m2, err := ParseMasterShare(raw[:])
	if err != nil {
		t.Fatal(err)
	}
	p1, _ := m.ClientShare(d.clientID)
	p2, _ := m2.ClientShare(d.clientID)
	if !p1.Equal(p2) {
		t.Error("a parsed master share issues other shares")
	}
	m2.Zeroize()
	if b := m2.Bytes(); !bytes.Equal(b[:], make([]byte, 32)) {
		t.Error("Zeroize left the share")
	}
	if _, err := NewMasterShare(iotest.ErrReader(errors.New("no entropy"))); err == nil {
		t.Error("NewMasterShare with a failing reader")
	}
	// Share-issuing methods validate identities.
	if _, err := m.ClientShare(""); !errors.Is(err, ErrConfig) {
		t.Errorf("ClientShare(\"\"): %v", err)
	}
	if _, err := m.PermitShare("", 1); !errors.Is(err, ErrConfig) {
		t.Errorf("PermitShare(\"\"): %v", err)
	}
	if _, err := m.ServerShare(""); !errors.Is(err, ErrConfig) {
		t.Errorf("ServerShare(\"\"): %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	d := sharedDomain(t)
	clientCases := []struct {
		name string
		cfg  func(*ClientConfig)
	}{
		{"no-key", func(c *ClientConfig) { c.Key = nil }},
		{"no-server-check", func(c *ClientConfig) { c.ServerID = "" }},
		{"server-id-too-long", func(c *ClientConfig) { c.ServerID = strings.Repeat("s", 256) }},
		{"server-id-invalid-utf8", func(c *ClientConfig) { c.ServerID = "\xff" }},
		{"identity-permit", func(c *ClientConfig) { c.Permits = []Permit{{Epoch: fxEpoch}} }},
		{"bad-epoch-length", func(c *ClientConfig) {
			c.Permits = []Permit{d.permit(t, fxEpoch)}
			c.EpochLen = 1500 * time.Millisecond
		}},
	}
	for _, c := range clientCases {
		t.Run("client/"+c.name, func(t *testing.T) {
			cfg := d.clientConfig()
			c.cfg(cfg)
			s := &fxStream{Reader: bytes.NewReader(nil)}
			res, err := Client(context.Background(), s, cfg)
			if res != nil || !errors.Is(err, ErrConfig) {
				t.Errorf("client: %v, want ErrConfig", err)
			}
			if s.out.Len() != 0 {
				t.Errorf("client wrote %x despite a bad configuration", s.out.Bytes())
			}
		})
	}
	serverCases := []struct {
		name string
		cfg  func(*ServerConfig)
	}{
		{"no-keys", func(c *ServerConfig) { c.Keys = nil }},
		{"no-policy", func(c *ServerConfig) { c.Authorize = nil }},
	}
	for _, c := range serverCases {
		t.Run("server/"+c.name, func(t *testing.T) {
			cfg := d.serverConfig()
			c.cfg(cfg)
			f := newFakeClient(t, d.clientID)
			res, out, tr, err := serveStream(t, cfg, frame(f.msg1(d.serverID, 0, 0, f.a).Marshal()))
			if !errors.Is(err, ErrConfig) {
				t.Errorf("server: %v, want ErrConfig", err)
			}
			assertNoKey(t, tr, res)
			if len(out) != 0 {
				t.Errorf("server wrote %d messages despite a bad configuration", len(out))
			}
		})
	}
	t.Run("server/bad-epoch-length", func(t *testing.T) {
		ccfg := d.clientConfig()
		ccfg.Permits = []Permit{d.permit(t, fxEpoch)}
		scfg := d.serverConfig()
		scfg.EpochLen = 1500 * time.Millisecond
		r := handshake(t, ccfg, scfg)
		r.mustFail(t, ErrConfig, AlertHandshakeFailure)
	})
	t.Run("randomness-fails", func(t *testing.T) {
		cfg := d.clientConfig()
		cfg.Rand = iotest.ErrReader(errors.New("no entropy"))
		s := &fxStream{Reader: bytes.NewReader(nil)}
		if _, err := Client(context.Background(), s, cfg); err == nil || s.out.Len() != 0 {
			t.Errorf("client with failing randomness: %v, wrote %d bytes", err, s.out.Len())
		}
		scfg := d.serverConfig()
		scfg.Rand = iotest.ErrReader(errors.New("no entropy"))
		f := newFakeClient(t, d.clientID)
		res, out, tr, err := serveStream(t, scfg, frame(f.msg1(d.serverID, 0, 0, f.a).Marshal()))
		if err == nil || len(out) != 0 {
			t.Errorf("server with failing randomness: %v, wrote %d messages", err, len(out))
		}
		assertNoKey(t, tr, res)
	})
}

// TestFreshRandomness: x, z, y and w are drawn anew for every handshake.
func TestFreshRandomness(t *testing.T) {
	d := sharedDomain(t)
	var m1s []*Msg1
	var m2s []*Msg2
	for range 2 {
		r := handshake(t, d.clientConfig(), d.serverConfig())
		r.mustSucceed(t)
		m1s = append(m1s, parseFrames(t, r.toServer)[0].(*Msg1))
		m2s = append(m2s, parseFrames(t, r.toClient)[0].(*Msg2))
	}
	if m1s[0].UPrime.Equal(m1s[1].UPrime) {
		t.Error("U' repeated: x reused")
	}
	if m1s[0].R.Equal(m1s[1].R) {
		t.Error("R repeated: z reused")
	}
	for i, m := range m1s {
		if m.UPrime.Equal(m.R) { // without a permit, U' = R iff x = z
			t.Errorf("handshake %d: x = z", i)
		}
	}
	if m2s[0].Y.Equal(m2s[1].Y) {
		t.Error("y repeated")
	}
	if m2s[0].W.Equal(m2s[1].W) {
		t.Error("W repeated: w reused")
	}

	// The detector works: a source that repeats itself gives x = z.
	cfg := d.clientConfig()
	cfg.Rand = &repeatReader{b: scalarBytes(mustRandomScalar(t))}
	scfg := d.serverConfig()
	scfg.Rand = &repeatReader{b: scalarBytes(mustRandomScalar(t))}
	r := handshake(t, cfg, scfg)
	r.mustSucceed(t)
	if m := parseFrames(t, r.toServer)[0].(*Msg1); !m.UPrime.Equal(m.R) {
		t.Error("a repeating source did not give x = z: the check above proves nothing")
	}
}

// repeatReader yields the same bytes forever.
type repeatReader struct {
	b []byte
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	for n := range p {
		p[n] = r.b[r.i%len(r.b)]
		r.i++
	}
	return len(p), nil
}

// TestConcurrentHandshakes shares one ClientKey and one ServerKey between
// concurrent handshakes (run under -race).
func TestConcurrentHandshakes(t *testing.T) {
	d := newDomain(t, 3, fxClientID, fxServerID) // a fresh, empty server-point cache
	const n = 6
	var wg sync.WaitGroup
	psks := make([][]byte, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := handshake(t, d.clientConfig(), d.serverConfig())
			if r.cerr != nil || r.serr != nil || !bytes.Equal(r.cres.PSK, r.sres.PSK) {
				t.Errorf("handshake %d: %v / %v", i, r.cerr, r.serr)
				return
			}
			psks[i] = r.cres.PSK
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, p := range psks {
		if seen[string(p)] {
			t.Error("two handshakes derived the same PSK")
		}
		seen[string(p)] = true
	}
}

// armingConn cancels the handshake's context during its onArm-th future
// SetDeadline, waits until the context's watcher has set its past
// deadline, and only then applies the future one: the interleaving of a
// cancel that lands between stepper.arm's check and its SetDeadline.
type armingConn struct {
	net.Conn
	onArm  int
	cancel context.CancelFunc

	mu     sync.Mutex
	armed  int
	pasted chan struct{}
}

func (c *armingConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	if c.pasted == nil {
		c.pasted = make(chan struct{})
	}
	pasted := c.pasted
	if !t.IsZero() && t.Before(time.Now()) {
		select {
		case <-pasted:
		default:
			close(pasted)
		}
		c.mu.Unlock()
		return c.Conn.SetDeadline(t)
	}
	if !t.IsZero() {
		c.armed++
	}
	hit := c.armed == c.onArm && !t.IsZero()
	c.mu.Unlock()
	if hit {
		c.cancel()
		<-pasted // the watcher has run
	}
	return c.Conn.SetDeadline(t)
}

// TestClientServerCache: the client keeps B and K = e(CS, B) per server
// identity. Handshakes that alternate between two servers each use that
// server's K (a wrong K would give different PSKs), and the cache stays
// bounded and correct when it rolls over.
func TestClientServerCache(t *testing.T) {
	d := sharedDomain(t)
	ck, err := NewClientKey(d.clientID, d.cs) // a cache of its own
	if err != nil {
		t.Fatal(err)
	}
	second := "spiffe://test.example/ns/pay/sa/cache-second"
	k2 := d.serverKey(t, second)
	for i, id := range []string{d.serverID, second, d.serverID, second} {
		scfg := d.serverConfig()
		scfg.Keys = []*ServerKey{d.key, k2}
		ccfg := d.clientConfig()
		ccfg.Key, ccfg.ServerID = ck, id
		r := handshake(t, ccfg, scfg)
		r.mustSucceed(t)
		if r.cres.ServerID != id {
			t.Fatalf("handshake %d proved %q, want %q", i, r.cres.ServerID, id)
		}
	}
	if n := len(ck.peers); n != 2 {
		t.Fatalf("%d cached servers, want 2", n)
	}
	for i := range maxPeers + 2 {
		id := fmt.Sprintf("spiffe://test.example/ns/x/sa/s%d", i)
		e, err := ck.server(id)
		if err != nil {
			t.Fatal(err)
		}
		b, err := HashServerID(id)
		if err != nil {
			t.Fatal(err)
		}
		if !e.b.Equal(b) || !e.k.Equal(pairing.PairSecret(d.cs, b)) {
			t.Fatalf("server %d: cached B or K wrong", i)
		}
		if again, _ := ck.server(id); !again.k.Equal(e.k) {
			t.Fatalf("server %d: second lookup differs", i)
		}
		if n := len(ck.peers); n > maxPeers {
			t.Fatalf("cache holds %d servers, bound %d", n, maxPeers)
		}
	}
	if _, err := ck.server(""); err == nil {
		t.Error("empty server identity accepted")
	}
}
