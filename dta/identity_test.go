package dta

import (
	"errors"
	"path"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidateIssuableIdentity(t *testing.T) {
	long := "spiffe://prod/" + strings.Repeat("a", 255-len("spiffe://prod/"))
	tests := []struct {
		id      string
		wantErr string // substring of the error; "" = valid
	}{
		{"spiffe://prod/ns/web/sa/api", ""},
		{"spiffe://a", ""},
		{"alice@example.org", ""},
		{"urn:example:device:42", ""},
		{"a/b/c", ""},
		{"x+y.z-w://host/p", ""},
		{"spiffe://prod/ns/web/ü", ""},
		{"spiffe://prod/a%20b", ""}, // other percent-encodings are plain bytes
		{"spiffe://prod/a?b[c]", ""},
		{long, ""},
		{long + "a", "1..255 bytes"},
		{"", "1..255 bytes"},
		{"a\xffb", "UTF-8"},
		{"a\ufffdb", "U+FFFD"},
		{"a\x00b", "NUL"},
		{"a\nb", "control character"},
		{"a\tb", "control character"},
		{"a\x7fb", "control character"},
		{"a\u0085b", "control character"},
		{"a b", "white-space"},
		{"a\u00a0b", "white-space"},
		{"a\u2028b", "white-space"},
		{"a\u3000b", "white-space"},
		{"a\u202eb", "invisible formatting"},
		{"a\u200db", "invisible formatting"},
		{"a\ufeffb", "invisible formatting"},
		{"spiffe://prod/ns/*", "'*'"},
		{"spiffe://prod\\ns", "backslash"},
		{"spiffe://prod/ns/..", `".." path segment`},
		{"spiffe://prod/../admin", `".." path segment`},
		{"spiffe://prod/./a", `"." path segment`},
		{"./a", `"." path segment`},
		{"..", `".." path segment`},
		{"spiffe://..", `".." path segment`},
		{"spiffe://prod/%2e%2e/admin", "percent-encoded '.'"},
		{"spiffe://prod/%2E%2E/admin", "percent-encoded '.'"},
		{"spiffe://prod/a%2fb", "percent-encoded '/'"},
		{"spiffe://prod/a%2Fb", "percent-encoded '/'"},
		{"spiffe://prod/a%5Cb", "percent-encoded '\\'"},
		{"spiffe://prod/a%00", "percent-encoded NUL"},
		{"spiffe://prod/a/", "empty path segment"},
		{"spiffe://prod//a", "empty path segment"},
		{"spiffe://a//b", "empty path segment"},
		{"spiffe:///a", "empty path segment"},
		{"spiffe://", "empty path segment"},
		{"spiffe:/a", ""}, // no "//": just a segment "spiffe:"
		{"spiffe:", ""},
		{"/a", "empty path segment"},
		{"a//b", "empty path segment"},
		{"a/b/", "empty path segment"},
		{"//a", "empty path segment"},    // no scheme before "//"
		{"1a://b", "empty path segment"}, // a scheme starts with a letter
		{"s_x://b", "empty path segment"},
		{"://b", "empty path segment"},
		{"/", "empty path segment"},
	}
	for _, tt := range tests {
		err := ValidateIssuableIdentity(tt.id)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("ValidateIssuableIdentity(%q) = %v, want nil", tt.id, err)
		case tt.wantErr != "" && err == nil:
			t.Errorf("ValidateIssuableIdentity(%q) = nil, want error with %q", tt.id, tt.wantErr)
		case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
			t.Errorf("ValidateIssuableIdentity(%q) = %v, want error with %q", tt.id, err, tt.wantErr)
		case err != nil && !errors.Is(err, ErrInvalidIdentity):
			t.Errorf("ValidateIssuableIdentity(%q) = %v, does not wrap ErrInvalidIdentity", tt.id, err)
		}
	}
}

func TestValidatePattern(t *testing.T) {
	tests := []struct {
		p       string
		wantErr string
	}{
		{"spiffe://prod/ns/web/*", ""},
		{"spiffe://prod/**", ""},
		{"**", ""},
		{"*", ""},
		{"spiffe://*/ns/web-*/sa/*", ""},
		{"*://example.org/**", ""},
		{"spiffe:/**", ""},
		{"spiffe://prod/**/api", ""},
		{"spiffe://prod/a?[b]", ""},
		{"", "1..255 bytes"},
		{strings.Repeat("a", 256), "1..255 bytes"},
		{"a\xff", "UTF-8"},
		{"spiffe://prod/***", `"**" inside segment`},
		{"spiffe://prod/a**", `"**" inside segment`},
		{"spiffe://prod/**b", `"**" inside segment`},
		{"spiffe://prod/ns/web/", "empty path segment"},
		{"spiffe://prod//*", "empty path segment"},
		{"spiffe://prod/../*", `".." path segment`},
		{"spiffe://prod/%2e%2e/*", "percent-encoded"},
		{"spiffe://prod/a\\*", "backslash"},
		{"spiffe://prod/a *", "white-space"},
	}
	for _, tt := range tests {
		err := ValidatePattern(tt.p)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("ValidatePattern(%q) = %v, want nil", tt.p, err)
		case tt.wantErr != "" && err == nil:
			t.Errorf("ValidatePattern(%q) = nil, want error with %q", tt.p, tt.wantErr)
		case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
			t.Errorf("ValidatePattern(%q) = %v, want error with %q", tt.p, err, tt.wantErr)
		}
	}
}

func TestMatchPattern(t *testing.T) {
	tests := []struct {
		pattern, id string
		want        bool
	}{
		// One segment per '*'.
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a", true},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a/b", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/webx/a", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web//a", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/..", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/.", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/%2e%2e", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a%2fb", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/*", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a\\b", false},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a\x00", false},
		{"spiffe://prod/ns/web/*", "SPIFFE://prod/ns/web/a", false},
		{"spiffe://prod/ns/web/*", "spiffe://PROD/ns/web/a", false},
		// Path traversal does not escape a prefix.
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web/../../admin", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web/./a", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web/%2E%2E/admin", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web/a/", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web//a", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/webadmin", false},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web-admin/a", false},
		// "**": zero or more whole segments.
		{"spiffe://prod/**", "spiffe://prod/a/b/c", true},
		{"spiffe://prod/**", "spiffe://prod/a", true},
		{"spiffe://prod/**", "spiffe://prod", true},
		{"spiffe://prod/**", "spiffe://prodx/a", false},
		{"spiffe://prod/**", "spiffe://staging/a", false},
		{"spiffe://prod/**/api", "spiffe://prod/api", true},
		{"spiffe://prod/**/api", "spiffe://prod/ns/pay/sa/api", true},
		{"spiffe://prod/**/api", "spiffe://prod/ns/pay/sa/api2", false},
		{"spiffe://prod/**/sa/*", "spiffe://prod/ns/pay/sa/api", true},
		{"spiffe://prod/**/sa/*", "spiffe://prod/sa/sa/sa/x", true},
		{"spiffe://prod/**/sa/*", "spiffe://prod/ns/pay/sa", false},
		{"spiffe://prod/**/**/x", "spiffe://prod/x", true},
		{"**", "spiffe://prod/a", true},
		{"**", "alice", true},
		{"**/x", "spiffe://a/x", true},
		{"spiffe:/**", "spiffe://a/b", true},
		// '*' within a segment.
		{"spiffe://prod/ns/web-*/sa/*", "spiffe://prod/ns/web-eu/sa/api", true},
		{"spiffe://prod/ns/web-*/sa/*", "spiffe://prod/ns/web-/sa/api", true},
		{"spiffe://prod/ns/web-*/sa/*", "spiffe://prod/ns/web/sa/api", false},
		{"spiffe://prod/ns/web-*/sa/*", "spiffe://prod/ns/web-eu/x/sa/api", false},
		{"spiffe://*/ns/web", "spiffe://prod/ns/web", true},
		{"spiffe://*/ns/web", "spiffe://a/b/ns/web", false},
		{"*://prod/x", "spiffe://prod/x", true},
		{"*://prod/x", "https://prod/x", true},
		{"*@example.org", "alice@example.org", true},
		{"*@example.org", "alice@example.org.evil", false},
		{"*@example.org", "a/alice@example.org", false},
		{"*", "alice", true},
		{"*", "a/b", false},
		// Other path.Match metacharacters are literal.
		{"spiffe://prod/a?", "spiffe://prod/ab", false},
		{"spiffe://prod/a?", "spiffe://prod/a?", true},
		{"spiffe://prod/a?*", "spiffe://prod/a?b", true},
		{"spiffe://prod/a?*", "spiffe://prod/ab", false},
		{"spiffe://prod/[ab]*", "spiffe://prod/a", false},
		{"spiffe://prod/[ab]*", "spiffe://prod/[ab]x", true},
		{"spiffe://prod/[*", "spiffe://prod/[x", true},
		{"spiffe://prod/]*", "spiffe://prod/]x", true},
		// Literal patterns compare byte for byte.
		{"spiffe://prod/a", "spiffe://prod/a", true},
		{"spiffe://prod/a", "spiffe://prod/A", false},
		{"spiffe://prod/é", "spiffe://prod/e\u0301", false},
		// Invalid patterns never match.
		{"", "a", false},
		{"spiffe://prod/a**", "spiffe://prod/ab", false},
		{"spiffe://prod/ns/web/", "spiffe://prod/ns/web/", false},
		{"spiffe://prod/../**", "spiffe://prod/../x", false},
	}
	for _, tt := range tests {
		if got := MatchPattern(tt.pattern, tt.id); got != tt.want {
			t.Errorf("MatchPattern(%q, %q) = %v, want %v", tt.pattern, tt.id, got, tt.want)
		}
	}
}

func TestMatchPatternManyDoubleStars(t *testing.T) {
	// 85 "**" against 127 segments: the greedy algorithm stays polynomial.
	p := strings.TrimSuffix(strings.Repeat("**/", 84), "/") + "/b"
	id := strings.TrimSuffix(strings.Repeat("a/", 127), "/")
	if err := ValidatePattern(p); err != nil {
		t.Fatal(err)
	}
	if MatchPattern(p, id) {
		t.Fatal("matched an identity without the final segment")
	}
	if !MatchPattern(p, id[:len(id)-1]+"b") {
		t.Fatal("no match")
	}
}

// TestMatchPatternExhaustive compares MatchPattern with the reference on
// every pattern of up to 3 segments and every identity of up to 4 segments
// over small alphabets.
func TestMatchPatternExhaustive(t *testing.T) {
	gen := func(alphabet []string, max int) []string {
		var out, level []string
		level = []string{""}
		for n := 1; n <= max; n++ {
			var next []string
			for _, prefix := range level {
				for _, seg := range alphabet {
					s := seg
					if prefix != "" {
						s = prefix + "/" + seg
					}
					next = append(next, s)
				}
			}
			out = append(out, next...)
			level = next
		}
		return out
	}
	patterns := gen([]string{"a", "b", "*", "**", "a*", "*b", "*a*"}, 3)
	ids := gen([]string{"a", "b", "ab", "ba"}, 4)
	n := 0
	for _, p := range patterns {
		ref := refMatcher(p)
		for _, id := range ids {
			if got, want := MatchPattern(p, id), ref(id); got != want {
				t.Fatalf("MatchPattern(%q, %q) = %v, reference says %v", p, id, got, want)
			}
			n++
		}
	}
	t.Logf("%d pairs", n)
}

// refMatcher is an independent, slow reference for MatchPattern on valid
// inputs: segment-wise regular expressions and memoised recursion for "**".
func refMatcher(pattern string) func(id string) bool {
	ps := strings.Split(pattern, "/")
	res := make([]*regexp.Regexp, len(ps))
	for k, seg := range ps {
		switch {
		case seg == "**":
		case seg == "*":
			res[k] = regexp.MustCompile(`^[^/]+$`)
		default:
			parts := strings.Split(seg, "*")
			for j := range parts {
				parts[j] = regexp.QuoteMeta(parts[j])
			}
			res[k] = regexp.MustCompile(`^` + strings.Join(parts, `[^/]*`) + `$`)
		}
	}
	return func(id string) bool {
		return refMatchSegments(ps, res, strings.Split(id, "/"))
	}
}

func refMatchSegments(ps []string, res []*regexp.Regexp, ids []string) bool {
	memo := map[[2]int]bool{}
	var rec func(p, i int) bool
	rec = func(p, i int) bool {
		key := [2]int{p, i}
		if v, ok := memo[key]; ok {
			return v
		}
		var v bool
		switch {
		case p == len(ps):
			v = i == len(ids)
		case ps[p] == "**":
			v = rec(p+1, i) || (i < len(ids) && rec(p, i+1))
		default:
			v = i < len(ids) && res[p].MatchString(ids[i]) && rec(p+1, i+1)
		}
		memo[key] = v
		return v
	}
	return rec(0, 0)
}

// FuzzMatchPattern checks, for any pattern and identity:
//   - nothing panics;
//   - a match implies ValidatePattern(pattern) and
//     ValidateIssuableIdentity(id) both succeed (fail closed);
//   - on valid inputs, MatchPattern agrees with an independent reference
//     (regular expressions per segment, memoised recursion for "**");
//   - a pattern without '*' matches exactly the identical identity;
//   - without "**", a match has as many segments as the pattern, and every
//     literal pattern segment equals the identity segment at its position;
//   - every issuable identity is a valid pattern that matches itself, and
//     "**" matches it.
func FuzzMatchPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a"},
		{"spiffe://prod/ns/web/*", "spiffe://prod/ns/web/a/b"},
		{"spiffe://prod/**", "spiffe://prod/a/b/c"},
		{"spiffe://prod/**/sa/*", "spiffe://prod/ns/pay/sa/api"},
		{"spiffe://prod/ns/web-*/sa/*", "spiffe://prod/ns/web-eu/sa/api"},
		{"spiffe://prod/ns/web/**", "spiffe://prod/ns/web/../admin"},
		{"spiffe://prod/a?[b]*", "spiffe://prod/a?[b]c"},
		{"*://x/**", "https://x/%2e%2e"},
		{"**", "a//b"},
		{"a/*/b", "a//b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, id string) {
		perr := ValidatePattern(pattern)
		ierr := ValidateIssuableIdentity(id)
		got := MatchPattern(pattern, id)
		if got && (perr != nil || ierr != nil) {
			t.Fatalf("MatchPattern(%q, %q) with pattern error %v, identity error %v", pattern, id, perr, ierr)
		}
		if ierr == nil {
			if err := ValidatePattern(id); err != nil {
				t.Fatalf("issuable identity %q is not a valid pattern: %v", id, err)
			}
			if !MatchPattern(id, id) {
				t.Fatalf("identity %q does not match itself", id)
			}
			if !MatchPattern("**", id) {
				t.Fatalf(`"**" does not match %q`, id)
			}
		}
		if perr != nil || ierr != nil {
			return
		}
		if want := refMatcher(pattern)(id); got != want {
			t.Fatalf("MatchPattern(%q, %q) = %v, reference says %v", pattern, id, got, want)
		}
		if !strings.Contains(pattern, "*") && got != (pattern == id) {
			t.Fatalf("literal MatchPattern(%q, %q) = %v", pattern, id, got)
		}
		if got && !strings.Contains(pattern, "**") {
			ps, ids := strings.Split(pattern, "/"), strings.Split(id, "/")
			if len(ps) != len(ids) {
				t.Fatalf("MatchPattern(%q, %q): %d pattern segments, %d identity segments", pattern, id, len(ps), len(ids))
			}
			for k := range ps {
				if !strings.Contains(ps[k], "*") && ps[k] != ids[k] {
					t.Fatalf("MatchPattern(%q, %q): literal segment %d differs", pattern, id, k)
				}
			}
		}
	})
}

// FuzzValidateIssuableIdentity checks that an issuable identity is clean by
// independent measures: path.Clean leaves its path unchanged, and it holds
// no character or escape the rules refuse.
func FuzzValidateIssuableIdentity(f *testing.F) {
	for _, s := range []string{
		"spiffe://prod/ns/web/sa/api", "spiffe://prod/../a", "a//b", "a/./b",
		"%2E%2e", "a\u202eb", "spiffe:///x", "x:/y", "/a", "a/",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateIssuableIdentity(id)
		if err != nil {
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Fatalf("error %v does not wrap ErrInvalidIdentity", err)
			}
			return
		}
		if len(id) == 0 || len(id) > 255 || !utf8.ValidString(id) {
			t.Fatalf("accepted %q", id)
		}
		rest := id
		if m := regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*://`).FindString(id); m != "" {
			rest = id[len(m):]
		}
		if path.Clean(rest) != rest {
			t.Fatalf("accepted %q: path.Clean(%q) = %q", id, rest, path.Clean(rest))
		}
		if strings.HasPrefix(rest, "/") {
			t.Fatalf("accepted %q with an absolute path", id)
		}
		lower := strings.ToLower(id)
		for _, bad := range []string{"*", "\\", "\x00", " ", "%2e", "%2f"} {
			if strings.Contains(lower, bad) {
				t.Fatalf("accepted %q containing %q", id, bad)
			}
		}
	})
}
