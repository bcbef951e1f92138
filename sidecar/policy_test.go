package sidecar

import (
	"strings"
	"testing"
)

func TestNewAllowListErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		patterns []string
		all      bool
		want     string
	}{
		{"nothing", nil, false, "no --allow-id"},
		{"empty list", []string{}, false, "no --allow-id"},
		{"both", []string{"spiffe://test.example/**"}, true, "exclude each other"},
		{"empty pattern", []string{""}, false, `--allow-id ""`},
		{"bad pattern", []string{"spiffe://test.example/ns/***"}, false, "--allow-id"},
		{"one bad among good", []string{"spiffe://a/*", "spiffe://b/a**b"}, false, `--allow-id "spiffe://b/a**b"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewAllowList(tc.patterns, tc.all)
			if err == nil {
				t.Fatalf("accepted: %+v", a)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func TestAllowListAuthorize(t *testing.T) {
	a, err := NewAllowList([]string{"spiffe://test.example/ns/web/*", "spiffe://test.example/ns/ops/**", "spiffe://test.example/ns/db/sa/exact"}, false)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{
		"spiffe://test.example/ns/web/frontend":    true,
		"spiffe://test.example/ns/web/sa/frontend": false, // * is one segment
		"spiffe://test.example/ns/ops/a/b/c":       true,
		"spiffe://test.example/ns/db/sa/exact":     true,
		"spiffe://test.example/ns/db/sa/exactly":   false,
		"spiffe://other.example/ns/web/frontend":   false,
		"spiffe://test.example/ns/webx/frontend":   false,
		"":                                         false,
	} {
		err := a.Authorize(id)
		if (err == nil) != want {
			t.Errorf("Authorize(%q) = %v, want allowed=%v", id, err, want)
		}
	}
	all, err := NewAllowList(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := all.Authorize("anything"); err != nil {
		t.Errorf("allow-all: %v", err)
	}
}
