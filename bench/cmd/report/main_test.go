package main

import "testing"

// TestFmtRatio: a ratio near the 1.15× target is never printed on the
// other side of it.
func TestFmtRatio(t *testing.T) {
	for _, tc := range []struct {
		r    float64
		want string
	}{
		{1.1520, "1.152"}, {1.1480, "1.148"}, {1.15, "1.150"}, {1.24, "1.24"}, {1.0, "1.00"}, {1.1549, "1.155"}, {1.1451, "1.145"},
	} {
		if got := fmtRatio(tc.r); got != tc.want {
			t.Errorf("fmtRatio(%v) = %q, want %q", tc.r, got, tc.want)
		}
	}
}
