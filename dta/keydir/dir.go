package keydir

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// Names in a key directory.
const (
	DataLink  = "..data"
	TokenFile = "client.token"
	lockFile  = "..lock"
)

// ErrPermissions reports key files or folders that others may read.
var ErrPermissions = errors.New("key material is group- or world-accessible")

// EnvelopeFile is the file name of a D-TA's envelope.
func EnvelopeFile(dtaID string) string { return dtaID + ".json" }

// Token is the content of client.token.
type Token struct {
	V        int    `json:"v"`
	Identity string `json:"identity"`
	Token    string `json:"token"` // hex G1
}

// MarshalToken encodes a client.token file.
func MarshalToken(identity string, token pairing.G1) []byte {
	b := token.Bytes()
	out, _ := json.MarshalIndent(Token{V: 1, Identity: identity, Token: hex.EncodeToString(b[:])}, "", "  ")
	return append(out, '\n')
}

// ParseToken decodes client.token with full point checks.
func ParseToken(b []byte) (string, pairing.G1, error) {
	var t Token
	if len(b) > MaxEnvelopeSize {
		return "", pairing.G1{}, fmt.Errorf("%w: %s too large", ErrMalformed, TokenFile)
	}
	if err := strictUnmarshal(b, &t); err != nil {
		return "", pairing.G1{}, fmt.Errorf("%w: %s: %w", ErrMalformed, TokenFile, err)
	}
	if t.V != 1 {
		return "", pairing.G1{}, fmt.Errorf("%w: %s version %d", ErrMalformed, TokenFile, t.V)
	}
	if err := mpinkex.ValidateID(t.Identity); err != nil {
		return "", pairing.G1{}, fmt.Errorf("%w: %s identity: %w", ErrMalformed, TokenFile, err)
	}
	raw, err := hex.DecodeString(t.Token)
	if err != nil {
		return "", pairing.G1{}, fmt.Errorf("%w: %s: token is not hex", ErrMalformed, TokenFile)
	}
	defer clear(raw)
	p, err := pairing.DecodeG1(raw)
	if err != nil {
		return "", pairing.G1{}, fmt.Errorf("%w: %s: %w", ErrMalformed, TokenFile, err)
	}
	return t.Identity, p, nil
}

// Write installs files as the new generation of dir, atomically (see the
// package doc). It never touches the current generation until the new one is
// complete on disk, so a failure leaves the previous set serving. Concurrent
// writers to one dir are serialised with a lock file.
func Write(dir string, files map[string][]byte) (generation string, err error) {
	if len(files) == 0 {
		return "", errors.New("write key directory: no files")
	}
	for name := range files {
		if name == "" || strings.ContainsRune(name, '/') || strings.HasPrefix(name, "..") || name == "." {
			return "", fmt.Errorf("write key directory: bad file name %q", name)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("write key directory %s: %w", dir, err)
	}
	unlock, err := lock(dir)
	if err != nil {
		return "", err
	}
	defer unlock()

	gen, err := os.MkdirTemp(dir, "..gen-"+time.Now().UTC().Format("2006_01_02_15_04_05")+".")
	if err != nil {
		return "", fmt.Errorf("write key directory %s: %w", dir, err)
	}
	committed := false
	defer func() {
		if !committed {
			os.RemoveAll(gen)
		}
	}()
	for name, data := range files {
		if err := writeSync(filepath.Join(gen, name), data); err != nil {
			return "", fmt.Errorf("write key directory %s: %w", dir, err)
		}
	}
	if err := syncDir(gen); err != nil {
		return "", err
	}
	old, _ := os.Readlink(filepath.Join(dir, DataLink))

	tmp := filepath.Join(dir, DataLink+"_tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		return "", fmt.Errorf("write key directory %s: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, DataLink)); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("write key directory %s: swap %s: %w", dir, DataLink, err)
	}
	committed = true
	// Top-level links name → ..data/name; stale links are removed.
	for name := range files {
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join(DataLink, name) {
			continue
		}
		t := link + ".tmp-link"
		os.Remove(t)
		if err := os.Symlink(filepath.Join(DataLink, name), t); err != nil {
			return filepath.Base(gen), fmt.Errorf("write key directory %s: link %s: %w", dir, name, err)
		}
		if err := os.Rename(t, link); err != nil {
			return filepath.Base(gen), fmt.Errorf("write key directory %s: link %s: %w", dir, name, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		n := e.Name()
		if e.Type()&fs.ModeSymlink != 0 && !strings.HasPrefix(n, "..") {
			if _, keep := files[n]; !keep {
				if t, err := os.Readlink(filepath.Join(dir, n)); err == nil && strings.HasPrefix(t, DataLink+"/") {
					os.Remove(filepath.Join(dir, n))
				}
			}
		}
	}
	if err := syncDir(dir); err != nil {
		return filepath.Base(gen), err
	}
	if old != "" && old != filepath.Base(gen) && strings.HasPrefix(old, "..gen-") {
		os.RemoveAll(filepath.Join(dir, old))
	}
	return filepath.Base(gen), nil
}

func writeSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func lock(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock key directory %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock key directory %s: %w", dir, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// Set is a whole, verified key set: the sums of every D-TA's shares.
type Set struct {
	Domain     *Domain
	Identity   string
	Generation string    // the folder ..data pointed to when read
	IssuedAt   time.Time // latest issuance among the envelopes
	ExpiresAt  time.Time // earliest expiry among the envelopes
	// CS is the whole client key (nil with a token or without client shares).
	CS *pairing.G1
	// Token is TOKEN = CS − f·A when the client uses a factor.
	Token *pairing.G1
	// Permits are whole time permits by epoch.
	Permits map[uint64]pairing.G1
	// SK is the server identity key, SS the domain server key.
	SK, SS *pairing.G2
}

// Zeroize overwrites the secret points of the set (client key or token,
// permits, server keys); the caller does once it has built its keys from
// them.
func (s *Set) Zeroize() {
	(&Shares{Client: s.CS, Permits: s.Permits, Server: s.SK, Domain: s.SS}).Zeroize()
	if s.Token != nil {
		s.Token.Zeroize()
	}
}

// Epochs returns the permit epochs, ascending.
func (s *Set) Epochs() []uint64 {
	var e []uint64
	for k := range s.Permits {
		e = append(e, k)
	}
	sort.Slice(e, func(i, j int) bool { return e[i] < e[j] })
	return e
}

// Load reads the key set under dir: it resolves ..data once, refuses
// group/world-accessible material, verifies every envelope against the
// pinned keys of domain.json, requires one envelope from every D-TA, all for
// the same identity and the same shares, decodes every point with subgroup
// checks, and sums. Any failure returns an error and no set.
//
// Write removes the previous generation right after swapping ..data, so a
// Load that resolved it may find its files gone: when a load fails and
// ..data has moved on meanwhile, Load retries on the new generation.
func Load(dir string) (*Set, error) {
	const retries = 8
	for attempt := 0; ; attempt++ {
		var gen string
		set, err := load(dir, &gen)
		if err == nil {
			return set, nil
		}
		cur, lerr := os.Readlink(filepath.Join(dir, DataLink))
		if attempt == retries || gen == "" || lerr != nil || cur == gen {
			return nil, err
		}
	}
}

// load is one attempt of Load; it reports the generation it resolved.
func load(dir string, resolved *string) (*Set, error) {
	gen, err := os.Readlink(filepath.Join(dir, DataLink))
	var base string
	if err == nil {
		*resolved = gen
		if strings.ContainsRune(gen, '/') || !strings.HasPrefix(gen, "..") || gen == ".." {
			return nil, fmt.Errorf("load keys %s: %s points outside the directory (%q)", dir, DataLink, gen)
		}
		base = filepath.Join(dir, gen)
	} else if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load keys %s: no %s link: not a key directory written by `milagro keys fetch`", dir, DataLink)
	} else {
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	if err := checkPrivate(base, true); err != nil {
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	read := func(name string) ([]byte, error) {
		p := filepath.Join(base, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s is not a regular file", name)
		}
		if err := checkPrivate(p, false); err != nil {
			return nil, err
		}
		if fi.Size() > MaxEnvelopeSize {
			return nil, fmt.Errorf("%w: %s is %d bytes", ErrMalformed, name, fi.Size())
		}
		return os.ReadFile(p)
	}
	db, err := read(DomainFile)
	if err != nil {
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	dom, err := ParseDomain(db)
	if err != nil {
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	files := map[string][]byte{}
	for _, t := range dom.DTAs {
		b, err := read(EnvelopeFile(t.ID))
		if err != nil {
			return nil, fmt.Errorf("load keys %s: envelope of D-TA %s: %w", dir, t.ID, err)
		}
		files[t.ID] = b
	}
	var token *pairing.G1
	tokID := ""
	if b, err := read(TokenFile); err == nil {
		id, p, err := ParseToken(b)
		clear(b)
		if err != nil {
			return nil, fmt.Errorf("load keys %s: %w", dir, err)
		}
		token, tokID = &p, id
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	set, err := Assemble(dom, files, token != nil)
	for _, b := range files {
		clear(b)
	}
	if err != nil {
		if token != nil {
			token.Zeroize()
		}
		return nil, fmt.Errorf("load keys %s: %w", dir, err)
	}
	if token != nil {
		if tokID != set.Identity {
			return nil, fmt.Errorf("load keys %s: %s is for %q, envelopes for %q", dir, TokenFile, tokID, set.Identity)
		}
		set.Token = token
	}
	set.Generation = gen
	return set, nil
}

// Assemble verifies one envelope per D-TA of dom (files maps D-TA id to
// envelope bytes) and sums their shares. withToken says a client.token
// replaces the client shares, whose values must then be withheld.
func Assemble(dom *Domain, files map[string][]byte, withToken bool) (*Set, error) {
	set := &Set{Domain: dom}
	// Sized up front: append must not leave copies of shares behind in
	// arrays it outgrew.
	n := len(dom.DTAs)
	cs, permits := make([]pairing.G1, 0, n), map[uint64][]pairing.G1{}
	sk, ss := make([]pairing.G2, 0, n), make([]pairing.G2, 0, n)
	defer func() { // the shares, once summed (or on failure)
		zeroG1s(cs)
		for _, v := range permits {
			zeroG1s(v)
		}
		zeroG2s(sk)
		zeroG2s(ss)
	}()
	var kinds string
	for i, t := range dom.DTAs {
		b, ok := files[t.ID]
		if !ok {
			return nil, fmt.Errorf("no envelope from D-TA %s: a set needs a share from every D-TA of the domain", t.ID)
		}
		env, err := ParseEnvelope(b)
		if err != nil {
			return nil, fmt.Errorf("D-TA %s: %w", t.ID, err)
		}
		pub, err := t.PublicKey()
		if err != nil {
			return nil, err
		}
		o, err := env.Open(ed25519.PublicKey(pub), OpenOptions{AllowWithheldClient: withToken})
		if err != nil {
			return nil, fmt.Errorf("D-TA %s: %w", t.ID, err)
		}
		defer o.Shares.Zeroize() // copied below
		p := &o.Payload
		switch {
		case p.DTA != t.ID:
			return nil, fmt.Errorf("D-TA %s: envelope was issued by %q", t.ID, p.DTA)
		case p.Domain != dom.Name:
			return nil, fmt.Errorf("D-TA %s: envelope is for domain %q, not %q", t.ID, p.Domain, dom.Name)
		case p.EpochLen != dom.EpochLen:
			return nil, fmt.Errorf("D-TA %s: envelope epoch_len %d, domain says %d", t.ID, p.EpochLen, dom.EpochLen)
		}
		if withToken && o.Shares.Client != nil {
			return nil, fmt.Errorf("D-TA %s: raw client share on disk next to %s", t.ID, TokenFile)
		}
		k := shareSignature(p.Shares)
		if i == 0 {
			set.Identity, kinds = p.Identity, k
			set.IssuedAt, set.ExpiresAt = p.IssuedAt, p.ExpiresAt
		} else {
			if p.Identity != set.Identity {
				return nil, fmt.Errorf("D-TA %s: envelope is for %q, D-TA %s's for %q", t.ID, p.Identity, dom.DTAs[0].ID, set.Identity)
			}
			if k != kinds {
				return nil, fmt.Errorf("D-TA %s issued shares [%s], D-TA %s [%s]: sets must match", t.ID, k, dom.DTAs[0].ID, kinds)
			}
			if p.IssuedAt.After(set.IssuedAt) {
				set.IssuedAt = p.IssuedAt
			}
			if p.ExpiresAt.Before(set.ExpiresAt) {
				set.ExpiresAt = p.ExpiresAt
			}
		}
		if o.Shares.Client != nil {
			cs = append(cs, *o.Shares.Client)
		}
		for e, v := range o.Shares.Permits {
			if permits[e] == nil {
				permits[e] = make([]pairing.G1, 0, n)
			}
			permits[e] = append(permits[e], v)
		}
		if o.Shares.Server != nil {
			sk = append(sk, *o.Shares.Server)
		}
		if o.Shares.Domain != nil {
			ss = append(ss, *o.Shares.Domain)
		}
	}
	var err error
	if len(cs) > 0 {
		v, e := mpinkex.SumG1(cs...)
		set.CS, err = &v, e
	}
	if err == nil && len(permits) > 0 {
		set.Permits = map[uint64]pairing.G1{}
		for e, v := range permits {
			if set.Permits[e], err = mpinkex.SumG1(v...); err != nil {
				break
			}
		}
	}
	if err == nil && len(sk) > 0 {
		v, e := mpinkex.SumG2(sk...)
		set.SK, err = &v, e
	}
	if err == nil && len(ss) > 0 {
		v, e := mpinkex.SumG2(ss...)
		set.SS, err = &v, e
	}
	if err != nil {
		return nil, fmt.Errorf("sum shares: %w", err)
	}
	return set, nil
}

func zeroG1s(ps []pairing.G1) {
	for i := range ps {
		ps[i].Zeroize()
	}
}

func zeroG2s(ps []pairing.G2) {
	for i := range ps {
		ps[i].Zeroize()
	}
}

// shareSignature lists an envelope's share keys, sorted, for comparing sets.
func shareSignature(refs []ShareRef) string {
	k := make([]string, len(refs))
	for i, r := range refs {
		k[i] = r.Key()
	}
	sort.Strings(k)
	return strings.Join(k, ",")
}

// checkPrivate refuses material that group or others can access.
func checkPrivate(path string, isDir bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() != isDir {
		return fmt.Errorf("%s: unexpected file type", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o (want 0%o or stricter)", ErrPermissions, path, fi.Mode().Perm(), map[bool]int{true: 0o700, false: 0o600}[isDir])
	}
	return nil
}
