package dta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/milagro-sc/milagro/mpinkex"
)

const (
	revocationsVersion = 1
	// MaxRevocationsSize bounds the revocation file a D-TA reads.
	MaxRevocationsSize = 16 << 20
	maxRevokedBy       = 255
)

// Revocation records one revoked identity.
type Revocation struct {
	Identity  string    `json:"identity"`
	RevokedAt time.Time `json:"revoked_at"`
	// By names who revoked it (a requester name).
	By string `json:"by"`
}

// revocationFile is the on-disk form: {"v": 1, "revocations": [...]},
// sorted by identity.
type revocationFile struct {
	V           int          `json:"v"`
	Revocations []Revocation `json:"revocations"`
}

// Revocations is the set of revoked identities of a D-TA, kept in memory
// and persisted to one JSON file on every change. It is safe for
// concurrent use.
type Revocations struct {
	path string
	mu   sync.RWMutex
	set  map[string]Revocation
}

// OpenRevocations loads the revocation set from path. A missing file is an
// empty set (it is created by the first Revoke); a file that cannot be read
// or parsed is an error, never an empty set, so that a damaged file cannot
// silently unrevoke everybody.
func OpenRevocations(path string) (*Revocations, error) {
	r := &Revocations{path: path, set: map[string]Revocation{}}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocations: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxRevocationsSize+1))
	if err != nil {
		return nil, fmt.Errorf("revocations: read %s: %w", path, err)
	}
	if len(b) > MaxRevocationsSize {
		return nil, fmt.Errorf("revocations: %s is larger than %d bytes", path, MaxRevocationsSize)
	}
	if err := r.decode(b); err != nil {
		return nil, fmt.Errorf("revocations: %s is corrupt: %w", path, err)
	}
	return r, nil
}

func (r *Revocations) decode(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var rf revocationFile
	if err := dec.Decode(&rf); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object")
	}
	if rf.V != revocationsVersion {
		return fmt.Errorf("version %d, want %d", rf.V, revocationsVersion)
	}
	if rf.Revocations == nil {
		return errors.New(`no "revocations" list`)
	}
	for i, rv := range rf.Revocations {
		// Only the wire rules (mpinkex.ValidateID), not the stricter
		// issuance rules: an identity issued before those tightened must
		// stay revocable, and stay revoked.
		if err := mpinkex.ValidateID(rv.Identity); err != nil {
			return fmt.Errorf("revocations[%d]: %w", i, err)
		}
		if _, dup := r.set[rv.Identity]; dup {
			return fmt.Errorf("revocations[%d]: %q listed twice", i, rv.Identity)
		}
		r.set[rv.Identity] = rv
	}
	return nil
}

// IsRevoked reports whether identity is revoked.
func (r *Revocations) IsRevoked(identity string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.set[identity]
	return ok
}

// List returns the revocations sorted by identity.
func (r *Revocations) List() []Revocation {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return sortedRevocations(r.set)
}

func sortedRevocations(set map[string]Revocation) []Revocation {
	l := make([]Revocation, 0, len(set))
	for _, rv := range set {
		l = append(l, rv)
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Identity < l[j].Identity })
	return l
}

// Revoke revokes identity (1..255 bytes of UTF-8, mpinkex.ValidateID) on
// behalf of by, at time at (now if zero). It reports whether the identity
// was newly revoked; revoking it again changes nothing (the first record
// stays). The change is on disk when Revoke returns nil. If writing fails,
// the set is unchanged (added is false) — except in the one case where the
// new file did replace the old one but the folder could not be fsynced:
// then the set follows the file (added is true) and err says so.
func (r *Revocations) Revoke(identity, by string, at time.Time) (added bool, err error) {
	if err := mpinkex.ValidateID(identity); err != nil {
		return false, fmt.Errorf("revoke: %w: %w", ErrInvalidIdentity, err)
	}
	if err := checkBy(by); err != nil {
		return false, fmt.Errorf("revoke: %w", err)
	}
	if at.IsZero() {
		at = time.Now()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[identity]; ok {
		return false, nil
	}
	next := make(map[string]Revocation, len(r.set)+1)
	for k, v := range r.set {
		next[k] = v
	}
	next[identity] = Revocation{Identity: identity, RevokedAt: at.UTC(), By: by}
	return r.commit(next, "revoke")
}

// Unrevoke lifts the revocation of identity; by names who does it (for
// the caller's audit record; it is checked like Revoke's). It reports
// whether the identity was revoked. Like Revoke, the change is on disk
// when Unrevoke returns nil, and a failed write leaves the set unchanged
// (with the same folder-fsync exception).
func (r *Revocations) Unrevoke(identity, by string) (removed bool, err error) {
	if err := checkBy(by); err != nil {
		return false, fmt.Errorf("unrevoke: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[identity]; !ok {
		return false, nil
	}
	next := make(map[string]Revocation, len(r.set))
	for k, v := range r.set {
		if k != identity {
			next[k] = v
		}
	}
	return r.commit(next, "unrevoke")
}

func checkBy(by string) error {
	if by == "" || len(by) > maxRevokedBy || !utf8.ValidString(by) {
		return fmt.Errorf("by must be 1..%d bytes of UTF-8", maxRevokedBy)
	}
	return nil
}

// commit writes next to disk and, once the new file is in place, makes it
// the in-memory set. r.mu is held. The result is (true, nil) on success;
// (false, err) if the old file is untouched; and (true, err) if the new
// file replaced the old one but the folder could not be synced: the set
// then follows the file a restart would read.
func (r *Revocations) commit(next map[string]Revocation, op string) (bool, error) {
	b, err := json.MarshalIndent(revocationFile{V: revocationsVersion, Revocations: sortedRevocations(next)}, "", "  ")
	if err != nil {
		return false, fmt.Errorf("%s: encode: %w", op, err)
	}
	b = append(b, '\n')
	replaced, err := writeFileAtomic(r.path, b)
	if replaced {
		r.set = next
	}
	if err != nil {
		return replaced, fmt.Errorf("%s: %w", op, err)
	}
	return true, nil
}

// writeFileAtomic replaces path with data: it writes a temporary file
// (mode 0600) in the same folder, fsyncs it, renames it over path and
// fsyncs the folder, so that a reader sees the old file or the new one,
// never a mix, and a crash leaves one of the two. replaced reports whether
// the rename happened.
func writeFileAtomic(path string, data []byte) (replaced bool, err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	tmpName := tmp.Name()
	defer func() {
		if !replaced {
			os.Remove(tmpName)
		}
	}()
	// CreateTemp uses 0600 already; Chmod makes it independent of that.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	replaced = true
	d, err := os.Open(dir)
	if err != nil {
		return true, fmt.Errorf("write %s: replaced, but sync folder: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return true, fmt.Errorf("write %s: replaced, but sync folder: %w", path, err)
	}
	return true, nil
}
