package psk

import (
	"errors"
	"net"
	"os"
	"testing"
)

// TestTimeoutErrorIsNetTimeout: deadline errors satisfy the net.Conn
// contract (net.Error with Timeout() true) and still match
// os.ErrDeadlineExceeded.
func TestTimeoutErrorIsNetTimeout(t *testing.T) {
	for _, op := range []string{"read", "write"} {
		var err error = &timeoutError{op: op}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("%s: %v is not a net.Error with Timeout() true", op, err)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: does not wrap os.ErrDeadlineExceeded", op)
		}
	}
}
