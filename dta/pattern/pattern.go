// Package pattern decides which identities a D-TA may issue for and matches
// them against identity patterns ("*" one path segment, "**" any number).
// The D-TA's requester policy and the server sidecar's --allow-id share it.
package pattern

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/milagro-sc/milagro/mpinkex"
)

// ErrInvalidIdentity is wrapped by every error of ValidateIdentity
// (and by Requester.Authorize when the identity itself is refused), so that
// a caller can answer 400 rather than 403.
var ErrInvalidIdentity = errors.New("invalid identity")

// maxPatternLen bounds an identity pattern, like an identity.
const maxPatternLen = mpinkex.MaxIDLen

// ValidateIdentity reports whether a D-TA may issue shares for id.
//
// On top of mpinkex.ValidateID (1..255 bytes of valid UTF-8) it refuses
// everything that lets two spellings name "the same" identity for some
// consumer, or that a consumer could read as a path traversal:
//
//   - control characters (NUL included), Unicode white space, and invisible
//     formatting characters (category Cf: bidirectional overrides,
//     zero-width joiners, ...);
//   - U+FFFD, the replacement character: JSON decoding turns invalid UTF-8
//     and unpaired surrogate escapes into it, so many different requests
//     would otherwise name one identity;
//   - '*', reserved for identity patterns, and '\', a path separator for
//     some consumers;
//   - "%2f", "%2e", "%5c" and "%00" in any case: percent-encoded '/', '.',
//     '\' and NUL;
//   - "." and ".." path segments (segments are split on '/');
//   - empty path segments ("a//b", "a/b/", "/a"), except the one between
//     the two slashes that follow a URI scheme ("spiffe://a/b" is fine,
//     "spiffe://a//b", "spiffe:///b" and "spiffe://" are not).
//
// The error says why; it wraps ErrInvalidIdentity.
func ValidateIdentity(id string) error {
	if err := mpinkex.ValidateID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
	}
	if err := checkShape(id, false); err != nil {
		return fmt.Errorf("%w: identity %v", ErrInvalidIdentity, err)
	}
	return nil
}

// Validate reports whether p is a well-formed identity pattern:
// non-empty, at most 255 bytes, valid UTF-8, "**" only as a whole segment,
// and otherwise obeying the rules of ValidateIdentity with '*'
// allowed (a pattern that breaks them could never match an issuable
// identity, so it is a configuration mistake worth reporting).
func Validate(p string) error {
	if len(p) == 0 || len(p) > maxPatternLen {
		return fmt.Errorf("pattern must be 1..%d bytes, got %d", maxPatternLen, len(p))
	}
	if !utf8.ValidString(p) {
		return errors.New("pattern is not valid UTF-8")
	}
	if err := checkShape(p, true); err != nil {
		return fmt.Errorf("pattern %v", err)
	}
	return nil
}

// checkShape applies the character and segment rules shared by identities
// and patterns to s, which is valid UTF-8. The error text completes
// "identity ..." or "pattern ...".
func checkShape(s string, pattern bool) error {
	for i, r := range s {
		switch {
		case r == 0:
			return fmt.Errorf("contains a NUL byte at byte %d", i)
		case unicode.IsControl(r):
			return fmt.Errorf("contains the control character %U at byte %d", r, i)
		case unicode.IsSpace(r):
			return fmt.Errorf("contains the white-space character %U at byte %d", r, i)
		case r == utf8.RuneError:
			return fmt.Errorf("contains U+FFFD, the replacement character of invalid UTF-8, at byte %d", i)
		case unicode.Is(unicode.Cf, r):
			return fmt.Errorf("contains the invisible formatting character %U at byte %d", r, i)
		case r == '\\':
			return fmt.Errorf("contains a backslash at byte %d", i)
		case r == '*' && !pattern:
			return fmt.Errorf("contains '*' at byte %d (reserved for patterns)", i)
		}
	}
	lower := strings.ToLower(s)
	for _, enc := range [...]struct{ seq, what string }{
		{"%2f", "'/'"}, {"%2e", "'.'"}, {"%5c", "'\\'"}, {"%00", "NUL"},
	} {
		if i := strings.Index(lower, enc.seq); i >= 0 {
			return fmt.Errorf("contains a percent-encoded %s (%q) at byte %d", enc.what, s[i:i+3], i)
		}
	}
	segs := strings.Split(s, "/")
	for i, seg := range segs {
		switch {
		case seg == "" && i == 1 && hasSchemeSlashes(segs, pattern):
			// "scheme://": the empty segment between the two slashes.
		case seg == "":
			return fmt.Errorf("has an empty path segment (segment %d: leading, trailing or doubled '/')", i+1)
		case seg == "." || seg == "..":
			return fmt.Errorf("has a %q path segment (segment %d)", seg, i+1)
		case pattern && seg != "**" && strings.Contains(seg, "**"):
			return fmt.Errorf("has \"**\" inside segment %d %q (\"**\" must be a whole segment)", i+1, seg)
		}
	}
	return nil
}

// hasSchemeSlashes reports whether segs (a string split on '/') starts with
// "scheme:" followed by "//": segs[0] is an RFC 3986 scheme and a colon,
// segs[1] is empty, and there is a third segment (the authority, checked
// like any other segment). In a pattern, the scheme may also contain '*'
// ("*://example.org/**").
func hasSchemeSlashes(segs []string, pattern bool) bool {
	if len(segs) < 3 || segs[1] != "" {
		return false
	}
	scheme, ok := strings.CutSuffix(segs[0], ":")
	if !ok || scheme == "" {
		return false
	}
	for i := 0; i < len(scheme); i++ {
		c := scheme[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', pattern && c == '*':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// Match reports whether the identity id matches the identity
// pattern. Both are split on '/' and compared segment by segment:
//
//   - a pattern segment "**" matches zero or more whole segments
//     ("spiffe://prod/**" matches "spiffe://prod/a/b/c" and also
//     "spiffe://prod" itself);
//   - a pattern segment "*" matches exactly one non-empty segment;
//   - a '*' inside a segment ("web-*") matches any run, possibly empty, of
//     characters within that one segment, never a '/';
//   - every other byte is literal and compared byte for byte (no case
//     folding, no Unicode normalisation, no percent-decoding).
//
// A pattern never matches fewer or more segments than it spells out,
// except through "**": "spiffe://prod/ns/web/*" does not match
// "spiffe://prod/ns/web/a/b", "spiffe://prod/ns/web/" or
// "spiffe://prod/ns/webx/a".
//
// Match fails closed: it is false whenever Validate(pattern)
// or ValidateIdentity(id) fails.
func Match(pattern, id string) bool {
	if Validate(pattern) != nil || ValidateIdentity(id) != nil {
		return false
	}
	return matchSegments(strings.Split(pattern, "/"), strings.Split(id, "/"))
}

// matchSegments matches pattern segments ps against identity segments ids,
// "**" matching any number of whole segments. It is the classic greedy
// wildcard algorithm over segments: on a mismatch, it backtracks only to
// the last "**" seen, letting it swallow one more segment. That is correct
// because every other pattern segment matches exactly one identity
// segment, and it takes O(len(ps)·len(ids)) segment comparisons at worst
// (no exponential blow-up with many "**").
func matchSegments(ps, ids []string) bool {
	p, i := 0, 0
	star, next := -1, 0 // last "**" in ps, and the ids index it resumes at
	for i < len(ids) {
		switch {
		case p < len(ps) && ps[p] == "**":
			star, next = p, i
			p++
		case p < len(ps) && matchSegment(ps[p], ids[i]):
			p++
			i++
		case star >= 0:
			next++
			p, i = star+1, next
		default:
			return false
		}
	}
	for p < len(ps) && ps[p] == "**" {
		p++
	}
	return p == len(ps)
}

// matchSegment matches one pattern segment (without "**") against one
// identity segment.
func matchSegment(pat, seg string) bool {
	if pat == "*" {
		return seg != ""
	}
	if !strings.Contains(pat, "*") {
		return pat == seg
	}
	// path.Match implements '*' within a segment, but its pattern language
	// also gives meaning to '?', '[...]' and '\'. Identity patterns define
	// only '*', so those are escaped with '\' and compare literally: an
	// identity may legitimately contain '?', '[' or ']', an operator
	// writing "web-[ab]" gets no surprise character class, and path.Match
	// can never fail with ErrBadPattern (an error would count as no match
	// anyway). ']' is escaped too, although it is only special inside a
	// class; '\' is refused by ValidatePattern already, escaped all the same.
	var b strings.Builder
	for i := 0; i < len(pat); i++ {
		switch c := pat[i]; c {
		case '?', '[', ']', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	ok, err := path.Match(b.String(), seg)
	return err == nil && ok
}
