package dta

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/milagro-sc/milagro/dta/keydir"
)

// Errors a caller maps to HTTP statuses.
var (
	// ErrUnauthenticated: no bearer token, or one no requester holds (401).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrForbidden: an authenticated requester asked for something its
	// policy entry does not grant (403).
	ErrForbidden = errors.New("forbidden")
)

const (
	// DefaultRatePerMinute is a requester's rate limit when the policy
	// gives none (or 0).
	DefaultRatePerMinute = 60
	// MaxPolicySize bounds a policy file.
	MaxPolicySize = 1 << 20
	maxNameLen    = 64
)

// Policy is the requester policy of a D-TA: who may obtain which shares.
// It is read-only once parsed; share it freely between goroutines.
type Policy struct {
	Requesters []*Requester `yaml:"requesters"`
}

// Requester is one entry of the policy file.
type Requester struct {
	// Name identifies the requester in errors and in the audit log:
	// 1..64 ASCII letters, digits and "-_.@:", unique in the policy.
	Name string `yaml:"name"`
	// TokenSHA256 is HashToken(bearer token): 64 hex digits (stored in
	// lower case), unique in the policy.
	TokenSHA256 string `yaml:"token_sha256"`
	// Identities are the identity patterns (see MatchPattern) the
	// requester may obtain shares for.
	Identities []string `yaml:"identities"`
	// Kinds are the share kinds the requester may obtain.
	Kinds []keydir.Kind `yaml:"kinds"`
	// Server must be true for the domain kind.
	Server bool `yaml:"server"`
	// Admin requesters may revoke and unrevoke identities.
	Admin bool `yaml:"admin"`
	// RatePerMinute limits the requester's requests; ParsePolicy turns 0
	// into DefaultRatePerMinute.
	RatePerMinute int `yaml:"rate_per_minute"`
}

// HashToken returns the hex SHA-256 of a bearer token, as the policy file
// stores it.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// LoadPolicy reads and parses a policy file. It refuses a file that is not
// a regular file or that its group or others may write: whoever can write
// the policy can grant themselves any share.
func LoadPolicy(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("policy: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return nil, fmt.Errorf("policy: %s is writable by group or others (mode %04o); chmod go-w it", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", path, err)
	}
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("policy: %s is larger than %d bytes", path, MaxPolicySize)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy parses and validates a policy file (YAML, one document):
//
//	requesters:
//	  - name: web-frontend            # required, unique
//	    token_sha256: "<64 hex>"      # HashToken(token), required, unique
//	    identities: ["spiffe://prod/ns/web/**"]
//	    kinds: [client, permit]       # subset of client, permit, server, domain
//	    server: false                 # required (true) for domain
//	    admin: false                  # may revoke and unrevoke
//	    rate_per_minute: 60           # optional; 0 or absent = 60
//
// Unknown fields are errors, as are duplicate names, token hashes, kinds or
// patterns, invalid patterns (ValidatePattern), the domain kind without
// server: true, and a requester that grants nothing (no identities or no
// kinds, and not an admin). Identities and kinds go together: one without
// the other is an error. Errors name the requester and the field.
func ParsePolicy(b []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("policy: empty document")
		}
		return nil, fmt.Errorf("policy: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("policy: more than one YAML document")
	}
	if len(p.Requesters) == 0 {
		return nil, errors.New("policy: no requesters")
	}
	names := map[string]int{}
	hashes := map[string]int{}
	for i, r := range p.Requesters {
		if r == nil {
			return nil, fmt.Errorf("policy: requesters[%d]: empty entry", i)
		}
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("policy: %s: %w", r.label(i), err)
		}
		if j, dup := names[r.Name]; dup {
			return nil, fmt.Errorf("policy: %s: name: same as requesters[%d]", r.label(i), j)
		}
		names[r.Name] = i
		if j, dup := hashes[r.TokenSHA256]; dup {
			return nil, fmt.Errorf("policy: %s: token_sha256: same as requester %q", r.label(i), p.Requesters[j].Name)
		}
		hashes[r.TokenSHA256] = i
	}
	return &p, nil
}

// label names requester i in errors.
func (r *Requester) label(i int) string {
	if validName(r.Name) {
		return fmt.Sprintf("requester %q", r.Name)
	}
	return fmt.Sprintf("requesters[%d]", i)
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.@:", c) >= 0) {
			return false
		}
	}
	return true
}

// validate checks one entry and normalises it (lower-case hash, default
// rate).
func (r *Requester) validate() error {
	switch {
	case r.Name == "":
		return errors.New("name: required")
	case !validName(r.Name):
		return fmt.Errorf("name: %q: want 1..%d ASCII letters, digits and \"-_.@:\"", r.Name, maxNameLen)
	}
	if r.TokenSHA256 == "" {
		return errors.New("token_sha256: required (the hex SHA-256 of the bearer token)")
	}
	h := strings.ToLower(r.TokenSHA256)
	if raw, err := hex.DecodeString(h); err != nil || len(raw) != sha256.Size {
		return errors.New("token_sha256: want 64 hex digits (the SHA-256 of the bearer token, not the token)")
	}
	r.TokenSHA256 = h
	seenPat := map[string]bool{}
	for i, pat := range r.Identities {
		if err := ValidatePattern(pat); err != nil {
			return fmt.Errorf("identities[%d]: %w", i, err)
		}
		if seenPat[pat] {
			return fmt.Errorf("identities[%d]: %q listed twice", i, pat)
		}
		seenPat[pat] = true
	}
	seenKind := map[keydir.Kind]bool{}
	for i, k := range r.Kinds {
		if _, err := keydir.ParseKind(string(k)); err != nil {
			return fmt.Errorf("kinds[%d]: %w", i, err)
		}
		if seenKind[k] {
			return fmt.Errorf("kinds[%d]: %s listed twice", i, k)
		}
		seenKind[k] = true
		if k == keydir.KindDomain && !r.Server {
			return fmt.Errorf("kinds[%d]: domain shares go only to servers: set server: true, or drop domain", i)
		}
	}
	switch {
	case len(r.Identities) > 0 && len(r.Kinds) == 0:
		return errors.New("kinds: required when identities are given")
	case len(r.Kinds) > 0 && len(r.Identities) == 0:
		return errors.New("identities: required when kinds are given")
	case len(r.Kinds) == 0 && !r.Admin:
		return errors.New("grants nothing: give identities and kinds, or admin: true")
	}
	switch {
	case r.RatePerMinute < 0:
		return fmt.Errorf("rate_per_minute: %d is negative", r.RatePerMinute)
	case r.RatePerMinute == 0:
		r.RatePerMinute = DefaultRatePerMinute
	}
	return nil
}

// Authenticate finds the requester holding bearerToken. It hashes the
// token and compares the hash with every requester's, each comparison in
// constant time and without stopping at a match, so the time taken does
// not depend on which requester (if any) matched. An empty token or a nil
// policy authenticates nobody.
func (p *Policy) Authenticate(bearerToken string) (*Requester, bool) {
	if p == nil || bearerToken == "" {
		return nil, false
	}
	sum := sha256.Sum256([]byte(bearerToken))
	var want [sha256.Size]byte
	found, idx := 0, 0
	for i, r := range p.Requesters {
		// A hash that does not decode (only possible in a Policy built by
		// hand) leaves want zeroed, which no token hashes to in practice.
		want = [sha256.Size]byte{}
		if r != nil && len(r.TokenSHA256) == hex.EncodedLen(sha256.Size) {
			_, _ = hex.Decode(want[:], []byte(r.TokenSHA256))
		}
		eq := subtle.ConstantTimeCompare(sum[:], want[:])
		idx = subtle.ConstantTimeSelect(eq, i, idx)
		found |= eq
	}
	if found != 1 {
		return nil, false
	}
	return p.Requesters[idx], true
}

// Authorize reports whether r may obtain the given share kinds for
// identity. The error names everything that is not allowed (the identity
// matched by none of r's patterns, kinds not granted, domain without
// server: true) and wraps ErrForbidden; when the identity is not issuable
// at all (ValidateIssuableIdentity), it also wraps ErrInvalidIdentity, so
// a caller may answer 400 instead of 403. Asking for no kind, or for an
// unknown kind, is refused as well.
func (r *Requester) Authorize(identity string, kinds []keydir.Kind) error {
	if r == nil {
		return fmt.Errorf("%w: no requester", ErrForbidden)
	}
	if err := ValidateIssuableIdentity(identity); err != nil {
		return fmt.Errorf("%w: requester %q: %w", ErrForbidden, r.Name, err)
	}
	var why []string
	matched := false
	for _, pat := range r.Identities {
		if MatchPattern(pat, identity) {
			matched = true
			break
		}
	}
	if !matched {
		why = append(why, fmt.Sprintf("identity %q is matched by none of its identity patterns", identity))
	}
	if len(kinds) == 0 {
		why = append(why, "no share kind requested")
	}
	for _, k := range kinds {
		if _, err := keydir.ParseKind(string(k)); err != nil {
			why = append(why, err.Error())
			continue
		}
		if k == keydir.KindDomain && !r.Server {
			why = append(why, "kind domain needs a server requester (server: true)")
			continue
		}
		granted := false
		for _, g := range r.Kinds {
			granted = granted || g == k
		}
		if !granted {
			why = append(why, fmt.Sprintf("kind %s is not granted", k))
		}
	}
	if len(why) > 0 {
		return fmt.Errorf("%w: requester %q: %s", ErrForbidden, r.Name, strings.Join(why, "; "))
	}
	return nil
}

// AuthorizeAdmin reports whether r may revoke and unrevoke identities; the
// error wraps ErrForbidden.
func (r *Requester) AuthorizeAdmin() error {
	if r == nil {
		return fmt.Errorf("%w: no requester", ErrForbidden)
	}
	if !r.Admin {
		return fmt.Errorf("%w: requester %q is not an admin", ErrForbidden, r.Name)
	}
	return nil
}
