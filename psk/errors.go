package psk

import (
	"errors"
	"fmt"
	"io"

	"github.com/pion/dtls/v2/pkg/protocol/alert"
)

// Sentinel errors. Errors returned by this package wrap one of these, an
// error type below, a context error or an I/O error, so callers branch with
// errors.Is and errors.As.
var (
	// ErrBadRecord: the byte stream after Msg4 is not a sequence of whole,
	// well-formed DTLS 1.2 records in the order the peer must send them
	// (unknown content type or version, a record too large for the DTLS
	// library's receive buffer, a sequence-number gap or replay, a record in
	// the wrong epoch or phase). Fatal to the session.
	ErrBadRecord = errors.New("psk: bad DTLS record")
	// ErrRecordRejected: a record received did not authenticate (or, during
	// the handshake, pion/dtls discarded it: failed authentication, replay
	// or malformed content). DTLS over UDP drops such records silently;
	// over TCP that would be a silent loss of data, so this package makes it
	// fatal. During the handshake it almost always means the two sides hold
	// different PSKs; after it, tampering.
	ErrRecordRejected = errors.New("psk: DTLS record rejected by the record layer (authentication failed: PSK mismatch or tampering)")
	// ErrUnknownIdentity: the client presented a PSK identity other than
	// the one this connection's mpinkex handshake produced.
	ErrUnknownIdentity = errors.New("psk: unknown PSK identity")
	// ErrConfig: unusable arguments (no handshake result, wrong record
	// layer, bad limits).
	ErrConfig = errors.New("psk: invalid configuration")
	// ErrSessionClosed: the session is closed; the wrapped cause says why
	// (local Close, idle timeout, peer close, keepalive failure, I/O error).
	ErrSessionClosed = errors.New("psk: session closed")
	// ErrPeerClosed is the cause when the peer closed the session (its
	// close_notify came).
	ErrPeerClosed = errors.New("psk: peer closed the session")
	// ErrTruncated is the cause when the connection ended without the
	// peer's close_notify, between two records: the peer crashed, or a
	// FIN was injected on the way. It wraps io.ErrUnexpectedEOF.
	ErrTruncated = fmt.Errorf("psk: connection closed without close_notify: %w", io.ErrUnexpectedEOF)
	// ErrIdleTimeout is the cause when the session had no stream for
	// Config.IdleTimeout.
	ErrIdleTimeout = errors.New("psk: session idle timeout")
	// ErrProtocol: the peer broke the stream multiplexing rules of
	// PROTOCOL.md §7 (for example a server that opens streams).
	ErrProtocol = errors.New("psk: protocol violation")
	// ErrTooManyStreams: the session already carries Config.MaxStreams
	// streams.
	ErrTooManyStreams = errors.New("psk: too many streams on this session")
	// ErrKeyLimit: the session's record keys have carried KeyRecordLimit
	// records; it takes no new streams (the pool opens another session).
	ErrKeyLimit = errors.New("psk: the session's keys have carried their limit of records")
	// ErrStreamReset: the peer (or the local stream close timeout) reset
	// the stream; data may have been lost.
	ErrStreamReset = errors.New("psk: stream reset")
	// ErrBadStreamHeader: a stream header or status byte is malformed.
	ErrBadStreamHeader = errors.New("psk: malformed stream header")
)

// HandshakeError is a failed DTLS handshake. Err says why: a context error
// (timeout), *AlertError (the peer refused), ErrUnknownIdentity,
// ErrRecordRejected (PSK mismatch), ErrBadRecord, or an I/O error such as
// io.EOF when the peer closed the connection.
type HandshakeError struct {
	Role string // "client" or "server"
	Err  error
}

func (e *HandshakeError) Error() string {
	return "psk " + e.Role + ": DTLS handshake: " + e.Err.Error()
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// AlertError is a DTLS alert the peer sent: during the handshake, or after
// it, ending the session (any alert but close_notify).
type AlertError struct {
	Level       uint8 // 1 warning, 2 fatal
	Description uint8 // RFC 5246 §7.2 alert description
}

func (e *AlertError) Error() string {
	level := "warning"
	if e.Level == uint8(alert.Fatal) {
		level = "fatal"
	}
	s := fmt.Sprintf("peer sent %s alert %s (%d)", level, alert.Description(e.Description).String(), e.Description)
	switch alert.Description(e.Description) {
	case alert.BadRecordMac, alert.DecryptError:
		s += ": the two sides derived different keys (PSK mismatch: wrong server identity key or domain)"
	case alert.InternalError:
		s += ": the peer aborted the handshake (for a server: unknown PSK identity or a local failure)"
	}
	return s
}

// Is reports ErrRecordRejected for bad_record_mac and decrypt_error, the
// alerts a peer sends when it cannot authenticate our records.
func (e *AlertError) Is(target error) bool {
	if target == ErrRecordRejected {
		d := alert.Description(e.Description)
		return d == alert.BadRecordMac || d == alert.DecryptError
	}
	return false
}

// StreamRefusedError is returned by (*Session).Open when the server answers
// a stream header with a status other than StatusOK.
type StreamRefusedError struct {
	Status Status
	Target string
}

func (e *StreamRefusedError) Error() string {
	t := e.Target
	if t == "" {
		t = "(default target)"
	}
	return fmt.Sprintf("psk: stream to %s refused by server: %s", t, e.Status)
}

// StreamError is a stream the server dropped before it could be accepted:
// its header was malformed (ErrBadStreamHeader) or did not arrive within
// Config.HeaderTimeout, or the session was at Config.MaxStreams
// (ErrTooManyStreams). The stream has been closed; the session stays
// usable, so a server keeps calling Accept.
type StreamError struct {
	StreamID uint32
	Err      error
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("psk: stream %d dropped: %v", e.StreamID, e.Err)
}

func (e *StreamError) Unwrap() error { return e.Err }
