package sidecar

import (
	"errors"
	"fmt"

	"github.com/milagro-sc/milagro/dta/pattern"
)

// AllowList is the server's authorisation policy: clients whose identity
// matches one of the patterns (or all, with AllowAll).
type AllowList struct {
	Patterns []string
	AllowAll bool
}

// NewAllowList validates the patterns; a server needs at least one, or an
// explicit allow-all.
func NewAllowList(patterns []string, allowAll bool) (*AllowList, error) {
	if len(patterns) == 0 && !allowAll {
		return nil, errors.New("no --allow-id: a server must say which clients it accepts (or --allow-all to accept every identity of the domain)")
	}
	if len(patterns) > 0 && allowAll {
		return nil, errors.New("--allow-all and --allow-id exclude each other")
	}
	for _, p := range patterns {
		if err := pattern.Validate(p); err != nil {
			return nil, fmt.Errorf("--allow-id %q: %w", p, err)
		}
	}
	return &AllowList{Patterns: patterns, AllowAll: allowAll}, nil
}

// Authorize implements mpinkex.Authorizer.
func (a *AllowList) Authorize(id string) error {
	if a.AllowAll {
		return nil
	}
	for _, p := range a.Patterns {
		if pattern.Match(p, id) {
			return nil
		}
	}
	return errors.New("identity matches no --allow-id pattern")
}
