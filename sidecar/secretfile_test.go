package sidecar

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadSecretFile: the one reader of secret files refuses loose modes and
// empty files and trims exactly one trailing newline, so a factor reads the
// same wherever it is used.
func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, content string
		mode          os.FileMode
		want, err     string
	}{
		{"plain", "1234", 0o600, "1234", ""},
		{"LF", "1234\n", 0o600, "1234", ""},
		{"CRLF", "1234\r\n", 0o400, "1234", ""},
		{"only one newline trimmed", "1234\n\n", 0o600, "1234\n", ""},
		{"group readable", "1234", 0o640, "", "must not be group/world-accessible"},
		{"world readable", "1234", 0o604, "", "must not be group/world-accessible"},
		{"empty", "\n", 0o600, "", "is empty"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_"))
			if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, c.mode); err != nil {
				t.Fatal(err)
			}
			got, err := ReadSecretFile(p, "factor")
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
	if _, err := ReadSecretFile(filepath.Join(dir, "missing"), "factor"); err == nil {
		t.Fatal("missing file accepted")
	}
}

// TestClientRefusesLooseFactorFile: `milagro client --factor-file` applies the
// same mode check as `keys fetch --factor-file`.
func TestClientRefusesLooseFactorFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "factor")
	if err := os.WriteFile(p, []byte("1234\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultClientConfig()
	cfg.Keys, cfg.Target, cfg.VerifyID, cfg.FactorFile = t.TempDir(), "127.0.0.1:1", "spiffe://x/y", p
	_, err := NewClient(cfg, testLog(t))
	if err == nil || !strings.Contains(err.Error(), "must not be group/world-accessible") {
		t.Fatalf("got %v, want the mode refusal", err)
	}
}
