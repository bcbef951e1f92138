package dta

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRevocationsPersist(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "revocations.json")
	r, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.List()) != 0 || r.IsRevoked("spiffe://prod/a") {
		t.Fatal("missing file is not an empty set")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("OpenRevocations created the file")
	}
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	for _, id := range []string{"spiffe://prod/c", "spiffe://prod/a", "spiffe://prod/b"} {
		added, err := r.Revoke(id, "ops", at)
		if err != nil || !added {
			t.Fatalf("Revoke(%s) = %v, %v", id, added, err)
		}
	}
	if added, err := r.Revoke("spiffe://prod/a", "other", at.Add(time.Hour)); err != nil || added {
		t.Fatalf("second Revoke = %v, %v", added, err)
	}
	if removed, err := r.Unrevoke("spiffe://prod/b", "ops"); err != nil || !removed {
		t.Fatalf("Unrevoke = %v, %v", removed, err)
	}
	if removed, err := r.Unrevoke("spiffe://prod/b", "ops"); err != nil || removed {
		t.Fatalf("second Unrevoke = %v, %v", removed, err)
	}
	want := []Revocation{
		{Identity: "spiffe://prod/a", RevokedAt: at.UTC(), By: "ops"},
		{Identity: "spiffe://prod/c", RevokedAt: at.UTC(), By: "ops"},
	}
	if got := r.List(); !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %+v", got)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o", fi.Mode().Perm())
	}
	r2, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	got := r2.List()
	if len(got) != 2 {
		t.Fatalf("reopened: %+v", got)
	}
	for i := range got {
		if got[i].Identity != want[i].Identity || got[i].By != want[i].By || !got[i].RevokedAt.Equal(want[i].RevokedAt) {
			t.Errorf("reopened[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if !r2.IsRevoked("spiffe://prod/a") || r2.IsRevoked("spiffe://prod/b") {
		t.Error("IsRevoked after reopen")
	}
	assertNoTempFiles(t, dir)
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestRevocationsInvalidArguments(t *testing.T) {
	r, err := OpenRevocations(filepath.Join(t.TempDir(), "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Revoke("", "ops", time.Time{}); !errors.Is(err, ErrInvalidIdentity) {
		t.Errorf("empty identity: %v", err)
	}
	if _, err := r.Revoke(strings.Repeat("a", 256), "ops", time.Time{}); !errors.Is(err, ErrInvalidIdentity) {
		t.Errorf("long identity: %v", err)
	}
	if _, err := r.Revoke("a", "", time.Time{}); err == nil {
		t.Error("empty by accepted")
	}
	if _, err := r.Unrevoke("a", ""); err == nil {
		t.Error("empty by accepted")
	}
	// Identities the wire allows but issuance refuses can still be revoked.
	if added, err := r.Revoke("spiffe://prod/a/", "ops", time.Time{}); err != nil || !added {
		t.Errorf("Revoke of a non-issuable identity = %v, %v", added, err)
	}
	if l := r.List(); len(l) != 1 || l[0].RevokedAt.IsZero() {
		t.Errorf("zero time not replaced by now: %+v", l)
	}
}

func TestRevocationsCorrupt(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ name, content string }{
		{"empty", ""},
		{"truncated", `{"v":1,"revocations":[{"identity":"a","revoked_at":"2030-01-02T03:04:05Z","by":"ops"}`},
		{"not JSON", "revoked: a\n"},
		{"trailing data", `{"v":1,"revocations":[]} {}`},
		{"wrong version", `{"v":2,"revocations":[]}`},
		{"no version", `{"revocations":[]}`},
		{"no list", `{"v":1}`},
		{"null list", `{"v":1,"revocations":null}`},
		{"unknown field", `{"v":1,"revocations":[],"extra":true}`},
		{"unknown entry field", `{"v":1,"revocations":[{"identity":"a","revoked_at":"2030-01-02T03:04:05Z","by":"ops","x":1}]}`},
		{"empty identity", `{"v":1,"revocations":[{"identity":"","revoked_at":"2030-01-02T03:04:05Z","by":"ops"}]}`},
		{"duplicate", `{"v":1,"revocations":[{"identity":"a","revoked_at":"2030-01-02T03:04:05Z","by":"ops"},{"identity":"a","revoked_at":"2030-01-02T03:04:05Z","by":"ops"}]}`},
		{"bad time", `{"v":1,"revocations":[{"identity":"a","revoked_at":"yesterday","by":"ops"}]}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := OpenRevocations(path)
			if err == nil {
				t.Fatalf("opened a corrupt file: %+v", r.List())
			}
			if !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("error %q does not say corrupt", err)
			}
		})
	}
	if _, err := OpenRevocations(dir); err == nil {
		t.Error("a folder opened as a revocation file")
	}
	ok := filepath.Join(dir, "ok.json")
	if err := os.WriteFile(ok, []byte(`{"v":1,"revocations":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenRevocations(ok); err != nil {
		t.Errorf("empty list: %v", err)
	}
}

// TestRevocationsFailedWrite makes the write fail without relying on
// permissions (tests run as root here): the target path becomes a folder,
// so the rename fails. The set must stay as it was.
func TestRevocationsFailedWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "revocations.json")
	r, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Revoke("a", "ops", time.Time{}); err != nil {
		t.Fatal(err)
	}
	before := r.List()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if added, err := r.Revoke("b", "ops", time.Time{}); err == nil || added {
		t.Fatalf("Revoke over a folder = %v, %v", added, err)
	}
	if r.IsRevoked("b") {
		t.Error("b revoked in memory although the write failed")
	}
	if removed, err := r.Unrevoke("a", "ops"); err == nil || removed {
		t.Fatalf("Unrevoke over a folder = %v, %v", removed, err)
	}
	if !r.IsRevoked("a") {
		t.Error("a unrevoked in memory although the write failed")
	}
	if got := r.List(); !reflect.DeepEqual(got, before) {
		t.Errorf("List changed: %+v", got)
	}
	assertNoTempFiles(t, dir)

	// Once the path is usable again, the next change writes everything.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Revoke("b", "ops", time.Time{}); err != nil {
		t.Fatal(err)
	}
	r2, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r2.IsRevoked("a") || !r2.IsRevoked("b") {
		t.Errorf("reopened: %+v", r2.List())
	}

	// A folder that does not exist: CreateTemp fails.
	r3, err := OpenRevocations(filepath.Join(dir, "missing", "r.json"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r3.Revoke("a", "ops", time.Time{}); err == nil {
		t.Fatal("Revoke into a missing folder succeeded")
	}
	if r3.IsRevoked("a") {
		t.Error("a revoked in memory although the write failed")
	}
}

// TestRevocationsAtomicReplace has writers revoke and unrevoke while
// readers reopen the file: every read must parse (the file is replaced by
// rename, never rewritten in place) and reflect a consistent state.
func TestRevocationsAtomicReplace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "revocations.json")
	// 50 revocations with a long "by" make every file big enough (~17
	// KB) that a partial write would be visible. They are written directly:
	// every commit costs two fsyncs, slow on some disks.
	by := strings.Repeat("o", 255)
	var base strings.Builder
	base.WriteString(`{"v":1,"revocations":[`)
	for i := range 50 {
		if i > 0 {
			base.WriteString(",")
		}
		fmt.Fprintf(&base, `{"identity":"spiffe://prod/base/%d","revoked_at":"2030-01-02T03:04:05Z","by":%q}`, i, by)
	}
	base.WriteString("]}")
	if err := os.WriteFile(path, []byte(base.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	const writers, rounds = 3, 12
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				id := fmt.Sprintf("spiffe://prod/w%d/%d", w, i)
				if added, err := r.Revoke(id, by, time.Time{}); err != nil || !added {
					t.Errorf("Revoke(%s) = %v, %v", id, added, err)
					return
				}
				if !r.IsRevoked(id) {
					t.Errorf("%s not revoked", id)
				}
				if i%2 == 1 {
					if removed, err := r.Unrevoke(id, by); err != nil || !removed {
						t.Errorf("Unrevoke(%s) = %v, %v", id, removed, err)
						return
					}
				}
			}
		}()
	}
	var readers sync.WaitGroup
	reads := make([]int, 2)
	for k := range reads {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r2, err := OpenRevocations(path)
				if err != nil {
					t.Errorf("read during writes: %v", err)
					return
				}
				if n := len(r2.List()); n < 50 || n > 50+writers*rounds {
					t.Errorf("read %d revocations", n)
					return
				}
				for i := range 50 {
					if !r2.IsRevoked(fmt.Sprintf("spiffe://prod/base/%d", i)) {
						t.Errorf("base/%d missing", i)
						return
					}
				}
				reads[k]++
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	t.Logf("%d reads during %d writes", reads[0]+reads[1], writers*rounds*3/2)

	want := 50 + writers*rounds/2
	if n := len(r.List()); n != want {
		t.Errorf("%d revocations in memory, want %d", n, want)
	}
	r2, err := OpenRevocations(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(identities(r2.List()), identities(r.List())) {
		t.Error("file and memory differ")
	}
	assertNoTempFiles(t, dir)
}

func identities(l []Revocation) []string {
	var ids []string
	for _, rv := range l {
		ids = append(ids, rv.Identity)
	}
	return ids
}
