package psk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/dtls/v2/pkg/crypto/elliptic"
	"github.com/pion/dtls/v2/pkg/protocol"
	"github.com/pion/dtls/v2/pkg/protocol/alert"
	"github.com/pion/dtls/v2/pkg/protocol/extension"
	"github.com/pion/dtls/v2/pkg/protocol/handshake"
	"github.com/pion/dtls/v2/pkg/protocol/recordlayer"

	"github.com/milagro-sc/milagro/mpinkex"
)

// TestPSKMismatch: the server holds another domain's server identity key
// (PROTOCOL.md §9). mpinkex passes (its check uses SS), the PSKs differ,
// and the DTLS handshake fails on both sides, promptly and clearly.
func TestPSKMismatch(t *testing.T) {
	leakCheck(t)
	d := sharedDomain(t)
	other := newTestDomain(t, testClientID, testServerID)
	start := time.Now()
	pr := dialPair(t, d, pairOpts{sk: d.withForeignSK(t, other, testServerID)})
	elapsed := time.Since(start)
	var he *HandshakeError
	if !errors.As(pr.srvErr, &he) || he.Role != "server" || !errors.Is(pr.srvErr, ErrRecordRejected) {
		t.Errorf("server: %v, want a HandshakeError wrapping ErrRecordRejected", pr.srvErr)
	}
	var ae *AlertError
	if !errors.As(pr.cliErr, &he) || he.Role != "client" || !errors.As(pr.cliErr, &ae) ||
		ae.Description != uint8(alert.BadRecordMac) || !errors.Is(pr.cliErr, ErrRecordRejected) {
		t.Errorf("client: %v, want a HandshakeError with the server's bad_record_mac alert", pr.cliErr)
	}
	t.Logf("server: %v", pr.srvErr)
	t.Logf("client: %v", pr.cliErr)
	if elapsed > 5*time.Second {
		t.Errorf("mismatch detected after %v: it must not wait for the handshake timeout", elapsed)
	}
}

// TestWrongIdentity: a client presenting another psk_identity is refused.
func TestWrongIdentity(t *testing.T) {
	leakCheck(t)
	// Alert records are written 5 ms after their write deadline is set:
	// time for a past deadline set by pion from another goroutine to land
	// there, as it did when the refusal failed the record reader (pion's
	// read loop then cancels the handshake context, and connctx sets a
	// past write deadline; the Alert was lost 1 in ~300 runs under load).
	slowAlerts := func(b []byte) {
		if len(b) > 0 && b[0] == 21 { // content type alert
			time.Sleep(5 * time.Millisecond)
		}
	}
	testHookBeforeWrite.Store(&slowAlerts)
	defer testHookBeforeWrite.Store(nil)
	pr := dialPair(t, sharedDomain(t), pairOpts{mutate: func(r *mpinkex.Result) {
		r.PSKIdentity = strings.Repeat("0", 32)
	}})
	if !errors.Is(pr.srvErr, ErrUnknownIdentity) {
		t.Errorf("server: %v, want ErrUnknownIdentity", pr.srvErr)
	}
	var ae *AlertError
	if !errors.As(pr.cliErr, &ae) || ae.Level != uint8(alert.Fatal) {
		t.Errorf("client: %v, want the server's fatal alert", pr.cliErr)
	}
	t.Logf("server: %v", pr.srvErr)
	t.Logf("client: %v", pr.cliErr)
}

// rawClient runs mpinkex and then a pion client with a custom config over
// the record reader, against a psk.Server; it returns both errors.
func rawClient(t *testing.T, tweak func(*dtls.Config)) (cliErr, srvErr error) {
	t.Helper()
	d := sharedDomain(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvCh := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvCh <- err
			return
		}
		res, err := mpinkex.Server(context.Background(), c, &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{d.sk}, Authorize: func(string) error { return nil }})
		if err != nil {
			srvCh <- err
			return
		}
		s, err := Server(context.Background(), c, res, &Config{HandshakeTimeout: 3 * time.Second})
		if s != nil {
			s.Close()
		}
		srvCh <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := mpinkex.Client(context.Background(), c, &mpinkex.ClientConfig{Key: d.ck, ServerID: testServerID})
	if err != nil {
		t.Fatal(err)
	}
	rc := newRecordConn(c, time.Second)
	cfg := dtlsConfig(true, rc, res.PSKIdentity, res.PSK)
	tweak(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	dc, err := dtls.ClientWithContext(ctx, rc, cfg)
	if dc != nil {
		dc.Close()
	}
	return err, <-srvCh
}

func TestServerRequiresExtendedMasterSecret(t *testing.T) {
	leakCheck(t)
	cliErr, srvErr := rawClient(t, func(c *dtls.Config) { c.ExtendedMasterSecret = dtls.DisableExtendedMasterSecret })
	if cliErr == nil || srvErr == nil {
		t.Fatalf("handshake without extended master secret: client %v, server %v", cliErr, srvErr)
	}
	t.Logf("server: %v", srvErr)
}

func TestServerRequiresCipherSuite(t *testing.T) {
	leakCheck(t)
	cliErr, srvErr := rawClient(t, func(c *dtls.Config) {
		c.CipherSuites = []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_CCM}
	})
	if cliErr == nil || srvErr == nil {
		t.Fatalf("handshake with another cipher suite: client %v, server %v", cliErr, srvErr)
	}
	t.Logf("server: %v", srvErr)
}

// tamperRelay forwards server→client untouched and client→server record by
// record, letting mod rewrite the client's i-th encrypted application
// record (counting from 0) into whatever it returns.
func tamperRelay(mod func(i int, rec []byte) [][]byte) func(c, s net.Conn) {
	return func(c, s net.Conn) {
		defer c.Close()
		defer s.Close()
		go func() {
			_, _ = io.Copy(c, s)
			c.Close()
		}()
		// Msg1 and Msg3 are u16-length frames before the DTLS records.
		for range 2 {
			var h [2]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint16(h[:]))
			if _, err := io.ReadFull(c, body); err != nil {
				return
			}
			if _, err := s.Write(append(h[:], body...)); err != nil {
				return
			}
		}
		i := 0
		for {
			rec := make([]byte, recordHeaderLen)
			if _, err := io.ReadFull(c, rec); err != nil {
				return
			}
			body := make([]byte, binary.BigEndian.Uint16(rec[11:13]))
			if _, err := io.ReadFull(c, body); err != nil {
				return
			}
			rec = append(rec, body...)
			out := [][]byte{rec}
			if rec[0] == ctApplicationData {
				out = mod(i, rec)
				i++
			}
			for _, b := range out {
				if _, err := s.Write(b); err != nil {
					return
				}
			}
		}
	}
}

func TestTamperingIsFatal(t *testing.T) {
	const target = 3
	for _, tc := range []struct {
		name string
		mod  func(rec []byte) [][]byte
		want error
	}{
		{"flip a ciphertext bit", func(rec []byte) [][]byte {
			rec[len(rec)-20] ^= 1
			return [][]byte{rec}
		}, ErrRecordRejected},
		{"flip a header bit", func(rec []byte) [][]byte {
			rec[10] ^= 1 // sequence number
			return [][]byte{rec}
		}, ErrBadRecord},
		{"drop a record", func([]byte) [][]byte { return nil }, ErrBadRecord},
		{"replay a record", func(rec []byte) [][]byte { return [][]byte{rec, rec} }, ErrBadRecord},
		{"inject plaintext close_notify", func(rec []byte) [][]byte {
			return [][]byte{mkRecord(ctAlert, 0, 3, []byte{1, 0}), rec}
		}, ErrBadRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			pr := dialPair(t, sharedDomain(t), pairOpts{relay: tamperRelay(func(i int, rec []byte) [][]byte {
				if i == target {
					return tc.mod(rec)
				}
				return [][]byte{rec}
			})})
			if pr.cliErr != nil || pr.srvErr != nil {
				t.Fatal(pr.cliErr, pr.srvErr)
			}
			serveEcho(t, pr.srv)
			st, err := pr.cli.Open(openCtx(t), "")
			if err == nil {
				_, _ = st.Write(make([]byte, 100000))
				_ = st.CloseWrite()
				_, err = io.ReadAll(st)
			}
			if err == nil {
				t.Fatal("stream completed through a tampered connection")
			}
			select {
			case <-pr.srv.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("server session survived")
			}
			if err := pr.srv.Err(); !errors.Is(err, tc.want) {
				t.Fatalf("server session ended with %v, want %v", err, tc.want)
			} else {
				t.Logf("server: %v", err)
			}
		})
	}
}

// writeLog records everything written through it.
type writeLog struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *writeLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestClientHelloCurves: the client's ClientHello offers P-256 alone
// (offeredCurves), so that the key pair pion's server makes on it, unused
// by the PSK suite, is the cheap one; and the suite is the one of §7.
func TestClientHelloCurves(t *testing.T) {
	wl := &writeLog{}
	pr := dialPair(t, sharedDomain(t), pairOpts{wrapCli: func(c net.Conn) net.Conn { wl.Conn = c; return wl }})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	wl.mu.Lock()
	b := bytes.Clone(wl.out.Bytes())
	wl.mu.Unlock()
	// Msg1 and Msg3 (u16 length, message), then the first DTLS record.
	for range 2 {
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			t.Fatalf("short mpinkex frame: % x", b)
		}
		b = b[2+int(binary.BigEndian.Uint16(b)):]
	}
	var rh recordlayer.Header
	if err := rh.Unmarshal(b); err != nil || rh.ContentType != protocol.ContentTypeHandshake {
		t.Fatalf("first record: %+v, %v; want a handshake record", rh, err)
	}
	n := int(binary.BigEndian.Uint16(b[recordlayer.HeaderSize-2:])) // pion's Unmarshal leaves ContentLen
	if len(b) < recordlayer.HeaderSize+n {
		t.Fatalf("short record: % x", b)
	}
	body := b[recordlayer.HeaderSize : recordlayer.HeaderSize+n]
	var h handshake.Handshake
	if err := h.Unmarshal(body); err != nil {
		t.Fatal(err)
	}
	ch, ok := h.Message.(*handshake.MessageClientHello)
	if !ok {
		t.Fatalf("first handshake message %T, want a ClientHello", h.Message)
	}
	if len(ch.CipherSuiteIDs) != 1 || ch.CipherSuiteIDs[0] != uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256) {
		t.Errorf("cipher suites %#04x", ch.CipherSuiteIDs)
	}
	var curves []elliptic.Curve
	for _, e := range ch.Extensions {
		if c, ok := e.(*extension.SupportedEllipticCurves); ok {
			curves = c.EllipticCurves
		}
	}
	if len(curves) != 1 || curves[0] != elliptic.P256 {
		t.Errorf("offered curves %v, want [P-256]", curves)
	}
}
