package psk

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
)

// verdictRelay sits between a client and a server and passes the mpinkex
// frames (Msg1, Msg3 one way, Msg2, verdict the other) one by one, then
// copies bytes. It holds the server's verdict until the client's first
// DTLS record has passed (at most hold), and reports whether that record
// came first, that is, whether the client pipelined. verdict, if set,
// replaces the server's verdict frame with these raw bytes, after which
// the relay half-closes towards the client.
type verdictRelay struct {
	hold      time.Duration
	verdict   []byte
	stall     bool // swallow the verdict and all that follows from the server
	pipelined atomic.Bool
	sawHello  chan struct{}
}

func newVerdictRelay(hold time.Duration, verdict []byte) *verdictRelay {
	return &verdictRelay{hold: hold, verdict: verdict, sawHello: make(chan struct{})}
}

func (v *verdictRelay) relay(c, s net.Conn) {
	done := make(chan struct{}, 2)
	closeBoth := func() { c.Close(); s.Close() }
	go func() { // client → server
		defer func() { done <- struct{}{} }()
		for range 2 { // Msg1, Msg3
			f, err := mpinkex.ReadFrame(c)
			if err != nil || mpinkex.WriteFrame(s, f) != nil {
				closeBoth()
				return
			}
		}
		hdr := make([]byte, recordHeaderLen)
		if _, err := io.ReadFull(c, hdr); err != nil {
			closeBoth()
			return
		}
		close(v.sawHello)
		if _, err := s.Write(hdr); err != nil {
			closeBoth()
			return
		}
		_, _ = io.Copy(s, c)
		closeBoth()
	}()
	go func() { // server → client
		defer func() { done <- struct{}{} }()
		f, err := mpinkex.ReadFrame(s) // Msg2
		if err != nil || mpinkex.WriteFrame(c, f) != nil {
			closeBoth()
			return
		}
		f, err = mpinkex.ReadFrame(s) // the verdict
		if err != nil {
			closeBoth()
			return
		}
		if v.stall {
			_, _ = io.Copy(io.Discard, s)
			closeBoth()
			return
		}
		select {
		case <-v.sawHello:
			v.pipelined.Store(true)
		case <-time.After(v.hold):
		}
		if v.verdict != nil {
			// FIN, not close: the client's records still arriving are
			// read (and passed on), so the client sees a clean end after
			// these bytes, never a reset.
			_, _ = c.Write(v.verdict)
			_ = c.(*net.TCPConn).CloseWrite()
			return
		}
		if mpinkex.WriteFrame(c, f) != nil {
			closeBoth()
			return
		}
		_, _ = io.Copy(c, s)
		closeBoth()
	}()
	<-done
	<-done
}

// TestPipelineSendsHelloBeforeVerdict: with mpinkex's Pipeline the client's
// ClientHello follows Msg3 without waiting for Msg4 (PROTOCOL.md §5), and
// the session works; without it the client waits, which the relay sees.
func TestPipelineSendsHelloBeforeVerdict(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pipeline bool
		hold     time.Duration
	}{
		{"pipelined", true, 10 * time.Second},
		{"waits for Msg4", false, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerdictRelay(tc.hold, nil)
			pr := dialPair(t, sharedDomain(t), pairOpts{pipeline: tc.pipeline, relay: v.relay})
			if pr.cliErr != nil || pr.srvErr != nil {
				t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
			}
			if got := v.pipelined.Load(); got != tc.pipeline {
				t.Fatalf("ClientHello before the verdict: %v, want %v", got, tc.pipeline)
			}
			echoOnce(t, pr.cli, pr.srv)
		})
	}
}

// echoOnce sends a message over a new stream and reads it back through
// the server's echo.
func echoOnce(t *testing.T, cli, srv *Session) {
	t.Helper()
	cs, ss := streamPair(t, cli, srv)
	go func() { _, _ = io.Copy(ss, ss); _ = ss.CloseWrite() }()
	msg := []byte("after a pipelined handshake")
	if _, err := cs.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(cs)
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo: %q, %v", got, err)
	}
}

// TestPipelineVerdictFailures: every way the server's answer to a
// pipelined client can go wrong ends psk.Client with the *mpinkex.Error
// mpinkex.Client returns for the same step, and no session.
func TestPipelineVerdictFailures(t *testing.T) {
	refuse := func(string) error { return errors.New("not on the list") }
	for _, tc := range []struct {
		name      string
		authorize func(string) error
		verdict   []byte // raw bytes in place of the server's Msg4
		stall     bool   // no verdict at all: the client's handshake times out
		step      string
		check     func(error) bool
	}{
		{"refused by policy", refuse, nil, false, "read Msg4", func(err error) bool {
			var ae *mpinkex.AlertError
			return errors.As(err, &ae) && ae.Code == mpinkex.AlertHandshakeFailure
		}},
		{"overloaded", nil, []byte{0, 2, 0x7f, 0x04}, false, "read Msg4", func(err error) bool {
			var ae *mpinkex.AlertError
			return errors.As(err, &ae) && ae.Code == mpinkex.AlertOverloaded
		}},
		{"Msg4 with a bad status", nil, []byte{0, 2, 0x04, 0x01}, false, "parse Msg4", func(err error) bool {
			return errors.Is(err, mpinkex.ErrDecode)
		}},
		{"another message", nil, []byte{0, 1, 0x03}, false, "parse Msg4", func(err error) bool {
			return errors.Is(err, mpinkex.ErrDecode)
		}},
		{"oversized frame", nil, []byte{0x04, 0x01, 0x04, 0x00}, false, "read Msg4", func(err error) bool {
			return errors.Is(err, mpinkex.ErrDecode)
		}},
		{"closed inside the frame", nil, []byte{0, 2, 0x04}, false, "read Msg4", func(err error) bool {
			return errors.Is(err, mpinkex.ErrDecode)
		}},
		{"closed before the verdict", nil, []byte{}, false, "read Msg4", func(err error) bool {
			return errors.Is(err, io.EOF)
		}},
		{"no verdict within the handshake timeout", nil, nil, true, "read Msg4", func(err error) bool {
			return errors.Is(err, os.ErrDeadlineExceeded)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := pairOpts{pipeline: true, authorize: tc.authorize}
			switch {
			case tc.verdict != nil:
				o.relay = newVerdictRelay(10*time.Second, tc.verdict).relay
			case tc.stall:
				v := newVerdictRelay(0, nil)
				v.stall = true
				o.relay = v.relay
				o.cli = &Config{HandshakeTimeout: 300 * time.Millisecond}
			}
			pr := dialPair(t, sharedDomain(t), o)
			if pr.cli != nil {
				t.Fatal("client session despite a bad verdict")
			}
			var me *mpinkex.Error
			if !errors.As(pr.cliErr, &me) || me.Role != "client" || me.Step != tc.step || !tc.check(pr.cliErr) {
				t.Fatalf("client error %v (%#v), want step %q", pr.cliErr, me, tc.step)
			}
			var he *HandshakeError
			if errors.As(pr.cliErr, &he) {
				t.Fatalf("client error %v is a DTLS error, want the mpinkex one", pr.cliErr)
			}
			if tc.authorize != nil && !errors.Is(pr.srvErr, mpinkex.ErrPolicy) {
				t.Fatalf("server error %v, want ErrPolicy", pr.srvErr)
			}
		})
	}
}

// TestPipelineRefusedRepeatedly: the server closes right after its Alert
// while the client's ClientHello may still be arriving; the client must
// still read the Alert, not a connection reset.
func TestPipelineRefusedRepeatedly(t *testing.T) {
	refuse := func(string) error { return errors.New("not on the list") }
	for i := range 30 {
		pr := dialPair(t, sharedDomain(t), pairOpts{pipeline: true, authorize: refuse})
		var ae *mpinkex.AlertError
		if !errors.As(pr.cliErr, &ae) || ae.Code != mpinkex.AlertHandshakeFailure {
			t.Fatalf("round %d: client error %v, want the server's handshake_failure alert", i, pr.cliErr)
		}
	}
}

// TestServerRejectsPendingVerdict: a pending verdict is a client's state.
func TestServerRejectsPendingVerdict(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	res := &mpinkex.Result{Layer: mpinkex.LayerDTLS, PSK: make([]byte, mpinkex.PSKSize), PSKIdentity: "x", VerdictPending: true}
	if _, err := Server(context.Background(), a, res, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("Server with a pending verdict: %v, want ErrConfig", err)
	}
}
