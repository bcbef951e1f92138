package mpinkex

import (
	"errors"
	"fmt"
)

// AlertCode is the one-byte code of an Alert message (PROTOCOL.md §5).
type AlertCode byte

// Alert codes.
const (
	AlertHandshakeFailure   AlertCode = 0x01 // every authentication or authorisation failure
	AlertUnsupportedVersion AlertCode = 0x02
	AlertDecodeError        AlertCode = 0x03
	AlertOverloaded         AlertCode = 0x04 // try later
)

func (c AlertCode) String() string {
	switch c {
	case AlertHandshakeFailure:
		return "handshake_failure"
	case AlertUnsupportedVersion:
		return "unsupported_version"
	case AlertDecodeError:
		return "decode_error"
	case AlertOverloaded:
		return "overloaded"
	}
	return fmt.Sprintf("alert(%#02x)", byte(c))
}

// Sentinel errors; every error returned by this package wraps one of them
// (or a context / I/O error), so callers branch with errors.Is.
var (
	// ErrDecode: a malformed frame or message, or a bad point or scalar.
	ErrDecode = errors.New("decode error")
	// ErrVersion: the peer speaks another protocol version.
	ErrVersion = errors.New("unsupported version")
	// ErrAuth: the pairing check failed (wrong key, factor or permit).
	ErrAuth = errors.New("authentication failed")
	// ErrPolicy: the server's authorisation callback refused the client.
	ErrPolicy = errors.New("client not authorised")
	// ErrEpoch: a time permit for an epoch the server does not accept, or
	// no permit where the server requires one.
	ErrEpoch = errors.New("time permit epoch not acceptable")
	// ErrServerID: the server identity is not one this side accepts.
	ErrServerID = errors.New("server identity not accepted")
	// ErrLayer: no record layer both sides support.
	ErrLayer = errors.New("no common record layer")
	// ErrConfig: the local configuration or key material is unusable.
	ErrConfig = errors.New("invalid configuration")
)

// AlertError is returned when the peer answered with an Alert.
type AlertError struct{ Code AlertCode }

func (e *AlertError) Error() string { return "peer sent alert " + e.Code.String() }

// Error is a failed handshake: Step names the local step that failed (for
// logs); Alert is the code sent to the peer, 0 if none was sent.
type Error struct {
	Role  string // "client" or "server"
	Step  string
	Alert AlertCode
	Err   error
	// ClaimedID is, on the server, the client identity Msg1 claimed when
	// the handshake failed after it: unauthenticated, for logs only.
	ClaimedID string
}

func (e *Error) Error() string {
	s := "mpinkex " + e.Role + ": " + e.Step + ": " + e.Err.Error()
	if e.Alert != 0 {
		s += " (sent " + e.Alert.String() + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// decodeErr wraps a decoding failure with ErrDecode.
func decodeErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrDecode}, args...)...)
}

// alertFor maps a local failure to the code sent on the wire.
func alertFor(err error) AlertCode {
	switch {
	case errors.Is(err, ErrVersion):
		return AlertUnsupportedVersion
	case errors.Is(err, ErrDecode):
		return AlertDecodeError
	default:
		return AlertHandshakeFailure
	}
}
