package dta

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Audit event names.
const (
	AuditIssue    = "issue"
	AuditRefuse   = "refuse"
	AuditRevoke   = "revoke"
	AuditUnrevoke = "unrevoke"
)

// Bounds on what one audit line holds; longer values are cut (at a UTF-8
// boundary) and the line is marked "truncated".
const (
	MaxAuditReason = 200
	maxAuditID     = 512 // room for a quoted, escaped invalid identity
	maxAuditShort  = 128 // requester, remote, result
	maxAuditKind   = 32
	maxAuditKinds  = 16
	maxAuditEpochs = 256
)

// AuditEvent is one line of the audit log. It deliberately has no field
// that could carry a share, a token or a token hash: put those nowhere
// near it.
type AuditEvent struct {
	// Time of the event; Record fills in the current time if zero.
	Time time.Time `json:"time"`
	// Event is AuditIssue, AuditRefuse, AuditRevoke or AuditUnrevoke.
	Event string `json:"event"`
	// Requester is the policy name of the authenticated requester, if any.
	Requester string `json:"requester,omitempty"`
	// Identity is the identity asked for (or revoked).
	Identity string   `json:"identity,omitempty"`
	Kinds    []string `json:"kinds,omitempty"`
	Epochs   []uint64 `json:"epochs,omitempty"`
	// Result is "ok" or the HTTP status text of a refusal.
	Result string `json:"result,omitempty"`
	// Status is the HTTP status code answered.
	Status int `json:"status,omitempty"`
	// Reason explains a refusal; at most MaxAuditReason bytes are kept.
	Reason string `json:"reason,omitempty"`
	// Remote is the client address.
	Remote string `json:"remote,omitempty"`
	// Truncated is set by Record when it had to cut a field.
	Truncated bool `json:"truncated,omitempty"`
}

// AuditLog appends AuditEvents to a file as JSON lines. It is safe for
// concurrent use.
type AuditLog struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

// OpenAudit opens (creating it with mode 0600 if needed) the audit log at
// path for appending. It refuses a path that is not a regular file or that
// group or others may write (they could forge or erase records). If the
// file ends in an incomplete line (a crash during a write), a newline is
// appended first so that the next record starts on its own line.
func OpenAudit(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("audit log: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		f.Close()
		return nil, fmt.Errorf("audit log: %s is writable by group or others (mode %04o)", path, perm)
	}
	if fi.Size() > 0 {
		if err := terminateLastLine(f, path, fi.Size()); err != nil {
			f.Close()
			return nil, err
		}
	}
	return &AuditLog{f: f, path: path}, nil
}

// terminateLastLine appends '\n' to f (opened for appending) unless the
// file of the given size at path already ends with one.
func terminateLastLine(f *os.File, path string, size int64) error {
	r, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	defer r.Close()
	var last [1]byte
	if _, err := r.ReadAt(last[:], size-1); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("audit log: read %s: %w", path, err)
	}
	if last[0] == '\n' {
		return nil
	}
	if _, err := f.Write([]byte{'\n'}); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// Record appends e as exactly one JSON line and fsyncs the file before
// returning: when Record returns nil, the event is on disk. Strings are
// bounded (Reason to MaxAuditReason bytes), control characters are
// escaped by the JSON encoding (C1 controls and DEL too), and invalid
// UTF-8 becomes U+FFFD, so a line cannot be split or forged by a field.
func (a *AuditLog) Record(e AuditEvent) error {
	switch e.Event {
	case AuditIssue, AuditRefuse, AuditRevoke, AuditUnrevoke:
	default:
		return fmt.Errorf("audit log: unknown event %q", e.Event)
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	cut := func(s *string, n int) {
		if !utf8.ValidString(*s) {
			*s = strings.ToValidUTF8(*s, "\uFFFD")
		}
		if len(*s) > n {
			*s = truncateUTF8(*s, n)
			e.Truncated = true
		}
	}
	cut(&e.Reason, MaxAuditReason)
	cut(&e.Identity, maxAuditID)
	cut(&e.Requester, maxAuditShort)
	cut(&e.Result, maxAuditShort)
	cut(&e.Remote, maxAuditShort)
	if len(e.Kinds) > maxAuditKinds {
		e.Kinds, e.Truncated = e.Kinds[:maxAuditKinds], true
	}
	if len(e.Kinds) > 0 {
		kinds := make([]string, len(e.Kinds)) // never write to the caller's slice
		for i, k := range e.Kinds {
			kinds[i] = k
			cut(&kinds[i], maxAuditKind)
		}
		e.Kinds = kinds
	}
	if len(e.Epochs) > maxAuditEpochs {
		e.Epochs, e.Truncated = e.Epochs[:maxAuditEpochs], true
	}
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit log: encode: %w", err)
	}
	line := append(escapeJSONControls(b), '\n')

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return fmt.Errorf("audit log %s: %w", a.path, os.ErrClosed)
	}
	if _, err := a.f.Write(line); err != nil {
		return fmt.Errorf("audit log %s: write: %w", a.path, err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("audit log %s: sync: %w", a.path, err)
	}
	return nil
}

// Close closes the log; later Records fail. Closing twice is harmless.
func (a *AuditLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	if err != nil {
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	return nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8
// sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// escapeJSONControls rewrites DEL and the C1 control characters
// (U+0080..U+009F), which encoding/json leaves raw but some terminals
// obey (U+009B is a CSI), as \u escapes. b is valid JSON from
// json.Marshal: valid UTF-8, and any non-ASCII rune is inside a string, so
// the result is equivalent JSON.
func escapeJSONControls(b []byte) []byte {
	clean := true
	for i := 0; i < len(b); i++ {
		if b[i] == 0x7f || b[i] == 0xc2 && i+1 < len(b) && b[i+1] >= 0x80 && b[i+1] <= 0x9f {
			clean = false
			break
		}
	}
	if clean {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == 0x7f || 0x80 <= r && r <= 0x9f {
			out = fmt.Appendf(out, `\u%04x`, r)
		} else {
			out = append(out, b[:size]...)
		}
		b = b[size:]
	}
	return out
}
