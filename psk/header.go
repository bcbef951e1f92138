package psk

import (
	"errors"
	"fmt"
	"io"
)

// Kind says which target a stream asks for (PROTOCOL.md §7).
type Kind byte

// Stream kinds.
const (
	KindDefault Kind = 0x00 // the server's default target; the target name is empty
	KindNamed   Kind = 0x01 // a named target, 1–255 bytes
)

func (k Kind) String() string {
	switch k {
	case KindDefault:
		return "default"
	case KindNamed:
		return "named"
	}
	return fmt.Sprintf("kind(%#02x)", byte(k))
}

// Status is the one byte the server answers a stream header with, before
// any data (PROTOCOL.md §7).
type Status byte

// Stream statuses.
const (
	StatusOK          Status = 0x00
	StatusRefused     Status = 0x01 // refused by policy
	StatusUnreachable Status = 0x02 // target unreachable
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusRefused:
		return "refused by policy"
	case StatusUnreachable:
		return "target unreachable"
	}
	return fmt.Sprintf("status(%#02x)", byte(s))
}

// Stream header constants.
const (
	StreamHeaderVersion = 0x01
	MaxTargetLen        = 255
	maxStreamHeaderLen  = 3 + MaxTargetLen
)

// appendStreamHeader appends ver=01 | kind | str8 target: KindDefault for an
// empty target, KindNamed otherwise.
func appendStreamHeader(dst []byte, target string) ([]byte, error) {
	if len(target) > MaxTargetLen {
		return dst, fmt.Errorf("%w: target of %d bytes exceeds %d", ErrBadStreamHeader, len(target), MaxTargetLen)
	}
	kind := KindNamed
	if target == "" {
		kind = KindDefault
	}
	dst = append(dst, StreamHeaderVersion, byte(kind), byte(len(target)))
	return append(dst, target...), nil
}

// checkStreamHeaderPrefix validates the fixed 3-byte prefix and returns the
// kind and target length.
func checkStreamHeaderPrefix(p []byte) (Kind, int, error) {
	if p[0] != StreamHeaderVersion {
		return 0, 0, fmt.Errorf("%w: version %#02x, want %#02x", ErrBadStreamHeader, p[0], StreamHeaderVersion)
	}
	kind, n := Kind(p[1]), int(p[2])
	switch kind {
	case KindDefault:
		if n != 0 {
			return 0, 0, fmt.Errorf("%w: default-target stream carries a %d-byte target", ErrBadStreamHeader, n)
		}
	case KindNamed:
		if n == 0 {
			return 0, 0, fmt.Errorf("%w: named-target stream with an empty target", ErrBadStreamHeader)
		}
	default:
		return 0, 0, fmt.Errorf("%w: unknown kind %#02x", ErrBadStreamHeader, p[1])
	}
	return kind, n, nil
}

// parseStreamHeader decodes a complete header; trailing bytes are an error.
func parseStreamHeader(b []byte) (Kind, string, error) {
	if len(b) < 3 {
		return 0, "", fmt.Errorf("%w: %d bytes, need at least 3", ErrBadStreamHeader, len(b))
	}
	kind, n, err := checkStreamHeaderPrefix(b)
	if err != nil {
		return 0, "", err
	}
	switch {
	case len(b) < 3+n:
		return 0, "", fmt.Errorf("%w: target truncated after %d of %d bytes", ErrBadStreamHeader, len(b)-3, n)
	case len(b) > 3+n:
		return 0, "", fmt.Errorf("%w: %d trailing bytes", ErrBadStreamHeader, len(b)-3-n)
	}
	return kind, string(b[3:]), nil
}

// readStreamHeader reads exactly one header from r, never more: the fixed
// prefix is checked before the target is read.
func readStreamHeader(r io.Reader) (Kind, string, error) {
	var buf [maxStreamHeaderLen]byte
	if _, err := io.ReadFull(r, buf[:3]); err != nil {
		return 0, "", headerReadErr(err, "prefix")
	}
	kind, n, err := checkStreamHeaderPrefix(buf[:3])
	if err != nil {
		return 0, "", err
	}
	if _, err := io.ReadFull(r, buf[3:3+n]); err != nil {
		return 0, "", headerReadErr(err, "target")
	}
	return kind, string(buf[3 : 3+n]), nil
}

func headerReadErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: stream ended inside the header %s: %w", ErrBadStreamHeader, what, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read stream header %s: %w", what, err)
}
