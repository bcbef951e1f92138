package dta

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

func readAuditLines(t *testing.T, path string) []AuditEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Fatal("log does not end with a newline")
	}
	var evs []AuditEvent
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		var e AuditEvent
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("line %d: %v: %q", len(evs)+1, err, sc.Text())
		}
		evs = append(evs, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestAuditConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	const G, N = 20, 10
	var wg sync.WaitGroup
	for g := range G {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range N {
				e := AuditEvent{
					Event: AuditIssue, Requester: fmt.Sprintf("g%d", g), Identity: fmt.Sprintf("spiffe://prod/%d/%d", g, n),
					Kinds: []string{"client", "permit"}, Epochs: []uint64{uint64(n), uint64(n + 1)},
					Result: "ok", Status: 200, Reason: strings.Repeat("r", n*10), Remote: "192.0.2.1",
				}
				if err := a.Record(e); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	evs := readAuditLines(t, path)
	if len(evs) != G*N {
		t.Fatalf("%d lines, want %d", len(evs), G*N)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.Identity] || e.Time.IsZero() || len(e.Epochs) != 2 || len(e.Kinds) != 2 {
			t.Fatalf("bad or duplicate event %+v", e)
		}
		seen[e.Identity] = true
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
}

func TestAuditReopenAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	at := time.Date(2030, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	for i := range 3 {
		a, err := OpenAudit(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Record(AuditEvent{Time: at, Event: AuditRevoke, Requester: "ops", Identity: fmt.Sprint(i), Result: "ok", Status: 200}); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if err := a.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := a.Record(AuditEvent{Event: AuditRevoke}); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("Record after Close: %v", err)
		}
	}
	evs := readAuditLines(t, path)
	if len(evs) != 3 {
		t.Fatalf("%d lines", len(evs))
	}
	for i, e := range evs {
		if e.Identity != fmt.Sprint(i) || !e.Time.Equal(at) || e.Time.Location() != time.UTC {
			t.Errorf("line %d: %+v", i, e)
		}
	}
}

func TestAuditLineFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := a.Record(AuditEvent{Time: at, Event: AuditRefuse, Result: "unauthenticated", Status: 401, Remote: "::1"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	want := `{"time":"2030-01-02T03:04:05Z","event":"refuse","result":"unauthenticated","status":401,"remote":"::1"}` + "\n"
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
	// The schema: snake_case names, and no field that could hold a secret.
	var names []string
	for f := range reflect.TypeFor[AuditEvent]().Fields() {
		names = append(names, strings.Split(f.Tag.Get("json"), ",")[0])
	}
	if got := strings.Join(names, " "); got != "time event requester identity kinds epochs result status reason remote truncated" {
		t.Errorf("fields: %s", got)
	}
	for _, n := range names {
		for _, bad := range []string{"token", "share", "secret", "key", "value", "hash"} {
			if strings.Contains(n, bad) {
				t.Errorf("field %q looks like it could hold a secret", n)
			}
		}
	}
}

func TestAuditSanitises(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	nasty := "a\nb\r\x00\x1b[31m\x7f\u009b2J\u2028\xff" + `"}{"event":"issue"`
	kinds := []string{strings.Repeat("k", 40), "client"}
	kindsCopy := append([]string(nil), kinds...)
	e := AuditEvent{
		Event: AuditRefuse, Requester: nasty, Identity: nasty + strings.Repeat("i", 600),
		Kinds: kinds, Reason: strings.Repeat("é", 150), Remote: nasty, Result: "forbidden",
	}
	if err := a.Record(e); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(kinds, kindsCopy) {
		t.Error("Record modified the caller's Kinds")
	}
	if err := a.Record(AuditEvent{Event: AuditRefuse, Epochs: make([]uint64, 1000), Kinds: make([]string, 100)}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if n := bytes.Count(b, []byte("\n")); n != 2 {
		t.Fatalf("%d newlines in %q", n, b)
	}
	for _, raw := range []string{"\x00", "\x1b", "\x7f", "\r", "\u009b", "\u2028", "\xff"} {
		if bytes.Contains(b, []byte(raw)) {
			t.Errorf("raw %q in the log", raw)
		}
	}
	evs := readAuditLines(t, path)
	got := evs[0]
	if got.Event != AuditRefuse || !got.Truncated {
		t.Errorf("event %q truncated %v", got.Event, got.Truncated)
	}
	if len(got.Reason) > MaxAuditReason || !utf8.ValidString(got.Reason) || !strings.HasPrefix(got.Reason, "éé") {
		t.Errorf("reason %d bytes: %q", len(got.Reason), got.Reason)
	}
	if len(got.Identity) > 512 || !strings.HasPrefix(got.Identity, "a\nb\r\x00\x1b[31m\x7f\u009b2J\u2028\ufffd") {
		t.Errorf("identity: %q", got.Identity)
	}
	if len(got.Kinds) != 2 || len(got.Kinds[0]) != 32 || got.Kinds[1] != "client" {
		t.Errorf("kinds: %q", got.Kinds)
	}
	if len(evs[1].Epochs) != 256 || len(evs[1].Kinds) != 16 || !evs[1].Truncated {
		t.Errorf("bounds: %d epochs, %d kinds", len(evs[1].Epochs), len(evs[1].Kinds))
	}
}

func TestAuditRejects(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Record(AuditEvent{Event: "issued"}); err == nil {
		t.Error("unknown event accepted")
	}
	if err := a.Record(AuditEvent{}); err == nil {
		t.Error("empty event accepted")
	}
	a.Close()
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Errorf("rejected events written: %q", b)
	}
	if err := os.Chmod(path, 0o620); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenAudit(path); err == nil || !strings.Contains(err.Error(), "writable") {
		t.Errorf("group-writable log: %v", err)
	}
	if _, err := OpenAudit(dir); err == nil {
		t.Error("folder accepted")
	}
	if _, err := OpenAudit("/dev/null"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("/dev/null: %v", err)
	}
}

func TestAuditTerminatesPartialLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte(`{"event":"issue"}`+"\n"+`{"event":"iss`), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Record(AuditEvent{Event: AuditIssue, Identity: "x"}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || lines[1] != `{"event":"iss` || !json.Valid([]byte(lines[2])) {
		t.Errorf("%q", b)
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abc", 2, "ab"},
		{"aé", 2, "a"},
		{"aé", 3, "aé"},
		{"€€", 4, "€"},
		{"€", 0, ""},
	} {
		if got := truncateUTF8(tt.s, tt.n); got != tt.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
}
