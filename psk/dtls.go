package psk

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/dtls/v2/pkg/crypto/elliptic"
	"github.com/pion/dtls/v2/pkg/protocol/alert"
	"github.com/pion/logging"

	"github.com/milagro-sc/milagro/mpinkex"
)

// flightInterval is pion's retransmission timer. Over TCP a flight is never
// lost, and a retransmitted flight would break the record order the reader
// enforces, so the timer must never fire within a handshake. Handshakes are
// bounded by their context long before this.
const flightInterval = 24 * time.Hour

// dropHook turns pion's debug messages about discarded records into a fatal
// error on the record connection. pion/dtls v2 (conn.go,
// handleIncomingPacket) discards a received record it cannot parse, decrypt,
// authenticate or de-duplicate, and reports it only at debug level; over UDP
// that is right, over TCP it would silently lose data (and a PSK mismatch
// would look like a hang until the handshake timeout). The messages matched
// are those of v2.2.12: "discarded broken packet", "discarded future
// packet", "discarded duplicated packet", "decrypt failed", "defragment
// failed", "handshake parse failed". Nothing is logged.
type dropHook struct{ rc *recordConn }

func (h dropHook) NewLogger(string) logging.LeveledLogger { return h }

func isDropEvent(format string) bool {
	return strings.HasPrefix(format, "discarded ") ||
		strings.Contains(format, "decrypt failed") ||
		strings.Contains(format, "defragment failed") ||
		strings.Contains(format, "handshake parse failed")
}

func (h dropHook) Debugf(format string, args ...any) {
	if isDropEvent(format) {
		h.rc.fail(fmt.Errorf("%w: %s", ErrRecordRejected, fmt.Sprintf(format, args...)))
	}
}

func (dropHook) Trace(string)          {}
func (dropHook) Tracef(string, ...any) {}
func (dropHook) Debug(string)          {}
func (dropHook) Info(string)           {}
func (dropHook) Infof(string, ...any)  {}
func (dropHook) Warn(string)           {}
func (dropHook) Warnf(string, ...any)  {}
func (dropHook) Error(string)          {}
func (dropHook) Errorf(string, ...any) {}

// offeredCurves is the client's supported_elliptic_curves. The PSK suite
// uses no curve, but pion's server makes an ephemeral key pair on the
// first curve the client offers whatever the suite (flight0handler.go,
// v2.2.12), and never uses it: P-256 costs it 14 µs where pion's default
// first curve, X25519, costs 48 (BenchmarkUnusedKeypair). The extension
// is required (pion refuses a ClientHello without it).
var offeredCurves = []elliptic.Curve{elliptic.P256}

// dtlsConfig is the one pion configuration of PROTOCOL.md §7.
func dtlsConfig(client bool, rc *recordConn, identity string, key []byte) *dtls.Config {
	cfg := &dtls.Config{
		CipherSuites:         []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		EllipticCurves:       offeredCurves,
		ExtendedMasterSecret: dtls.RequireExtendedMasterSecret,
		FlightInterval:       flightInterval,
		LoggerFactory:        dropHook{rc},
		// Handshake messages are small; keep each in one record.
		MTU: MaxRecordPlaintext,
	}
	if client {
		cfg.PSKIdentityHint = []byte(identity)
		cfg.PSK = func([]byte) ([]byte, error) { return key, nil }
		return cfg
	}
	// No HelloVerifyRequest: the TCP handshake has proved reachability.
	cfg.InsecureSkipVerifyHello = true
	want := []byte(identity)
	cfg.PSK = func(got []byte) ([]byte, error) {
		if subtle.ConstantTimeCompare(got, want) != 1 {
			err := fmt.Errorf("%w: client sent %q", ErrUnknownIdentity, got)
			// Record the verdict: pion reports whichever of its errors
			// comes first, often the EOF of the client leaving.
			rc.refuse(err)
			return nil, err
		}
		return key, nil
	}
	return cfg
}

// handshakeDTLS runs the DTLS 1.2 PSK handshake on raw (positioned right
// after Msg4) with pion and returns the record layer that carries the
// session from there, and the record connection under it. On failure raw
// is closed.
func handshakeDTLS(ctx context.Context, client bool, raw net.Conn, res *mpinkex.Result, cfg *Config) (*appRecords, *recordConn, error) {
	dc, rc, err := handshakePion(ctx, client, raw, res, cfg, true)
	if err != nil {
		return nil, nil, err
	}
	app, err := takeOver(dc, rc, client)
	if err != nil {
		_ = raw.Close()
		return nil, nil, &HandshakeError{Role: roleName(client), Err: err}
	}
	return app, rc, nil
}

func roleName(client bool) string {
	if client {
		return "client"
	}
	return "server"
}

// handshakePion is the handshake itself: pion's Conn, done, on the record
// connection. With handover, pion reads nothing after the peer's Finished
// (the records that follow are for appRecords). On failure raw is closed.
func handshakePion(ctx context.Context, client bool, raw net.Conn, res *mpinkex.Result, cfg *Config, handover bool) (*dtls.Conn, *recordConn, error) {
	role := roleName(client)
	rc := newRecordConn(raw, cfg.WriteTimeout)
	rc.handover = handover
	rc.verdict = res.VerdictPending
	// pion derives the pre-master secret from this copy during the
	// handshake and never asks again (no renegotiation, no resumption);
	// the pre-master secret itself stays in pion's state (see takeOver).
	key := bytes.Clone(res.PSK)
	defer clear(key)

	hctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	dcfg := dtlsConfig(client, rc, res.PSKIdentity, key)
	var (
		dc  *dtls.Conn
		err error
	)
	if client {
		dc, err = dtls.ClientWithContext(hctx, rc, dcfg)
	} else {
		dc, err = dtls.ServerWithContext(hctx, rc, dcfg)
	}
	if err != nil {
		cause := handshakeCause(ctx, hctx, rc, err)
		if me := (*mpinkex.Error)(nil); errors.As(cause, &me) {
			// A pipelined client's verdict: the mpinkex handshake failed
			// (the server refused Msg3), not DTLS.
			_ = raw.Close()
			return nil, nil, me
		}
		if errors.Is(rc.failure(), ErrRecordRejected) {
			// The peer's records do not authenticate under our keys: tell
			// it, or it sees only a closed connection.
			_ = rc.sendPlainAlert(alert.BadRecordMac)
		}
		_ = raw.Close()
		return nil, nil, &HandshakeError{Role: role, Err: cause}
	}
	if !client {
		// pion called the PSK callback, which accepts only this identity;
		// check what it recorded as well.
		if st := dc.ConnectionState(); !bytes.Equal(st.IdentityHint, []byte(res.PSKIdentity)) {
			_ = dc.Close()
			_ = raw.Close()
			return nil, nil, &HandshakeError{Role: role, Err: fmt.Errorf("%w: session bound to %q", ErrUnknownIdentity, st.IdentityHint)}
		}
	}
	return dc, rc, nil
}

// handshakeCause picks the most telling reason for a failed handshake: our
// own verdict on the record stream, then the peer's alert, then the
// context, then what pion reported.
func handshakeCause(ctx, hctx context.Context, rc *recordConn, err error) error {
	if f := rc.failure(); f != nil {
		return f
	}
	if r := rc.refused(); r != nil {
		return r
	}
	if a := rc.peerAlert(); a != nil && a.Level == uint8(alert.Fatal) {
		return a
	}
	if errors.Is(err, ErrBadRecord) || errors.Is(err, ErrUnknownIdentity) {
		return unwrapPion(err)
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if cerr := hctx.Err(); cerr != nil {
		return fmt.Errorf("handshake timeout (%w)", cerr)
	}
	return unwrapPion(err)
}

// unwrapPion strips pion's HandshakeError / FatalError wrappers, which only
// add "handshake error: dtls fatal:" to the message.
func unwrapPion(err error) error {
	for {
		switch e := err.(type) {
		case *dtls.HandshakeError:
			err = e.Err
		case *dtls.FatalError:
			err = e.Err
		default:
			return err
		}
	}
}
