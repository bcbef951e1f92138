package dta

import "github.com/milagro-sc/milagro/dta/pattern"

// ErrInvalidIdentity is wrapped by every identity refusal (answer 400).
var ErrInvalidIdentity = pattern.ErrInvalidIdentity

// ValidateIssuableIdentity reports whether a D-TA may issue shares for id
// (see pattern.ValidateIdentity).
func ValidateIssuableIdentity(id string) error { return pattern.ValidateIdentity(id) }

// ValidatePattern checks an identity pattern (see pattern.Validate).
func ValidatePattern(p string) error { return pattern.Validate(p) }

// MatchPattern reports whether id matches pattern (see pattern.Match).
func MatchPattern(pattern_, id string) bool { return pattern.Match(pattern_, id) }
