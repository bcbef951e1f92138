package dta

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// Files in a D-TA's directory.
const (
	InfoFile        = "dta.json"    // public description
	SecretAgeFile   = "secret.age"  // master share and signing key, age-encrypted
	SecretPlainFile = "secret.json" // the same in plain text (development only)
)

// ErrExists is returned by Init when the directory already holds a D-TA.
var ErrExists = errors.New("a D-TA already exists in this directory")

// Info is the public description of a D-TA (dta.json).
type Info struct {
	ID         string    `json:"id"`
	Domain     string    `json:"domain"`
	EpochLen   uint64    `json:"epoch_len"`
	SigningKey string    `json:"signing_key"` // Ed25519 public key, base64
	Created    time.Time `json:"created"`
}

type secretFile struct {
	V           int    `json:"v"`
	MasterShare string `json:"master_share"` // hex, 32 bytes
	SigningSeed string `json:"signing_seed"` // hex, 32 bytes
}

// InitOptions configures Init.
type InitOptions struct {
	Dir, ID, Domain string
	EpochLen        uint64 // seconds; 0 means 86400
	// Exactly one of Passphrase, Recipients or Plaintext protects the secret.
	Passphrase string
	Recipients []age.Recipient
	Plaintext  bool
	// ScryptWorkFactor overrides age's default (log2 N); tests lower it.
	ScryptWorkFactor int
	Rand             io.Reader // default crypto/rand
}

// Init creates a new D-TA in opt.Dir: a master share s_i, uniform in
// [1, r−1], and an Ed25519 signing key, stored encrypted. It refuses to
// overwrite an existing D-TA.
func Init(opt InitOptions) (*Info, error) {
	if !keydir.ValidDTAID(opt.ID) {
		return nil, fmt.Errorf("dta init: id %q: use 1-63 lowercase letters, digits and dashes", opt.ID)
	}
	if err := mpinkex.ValidateID(opt.Domain); err != nil {
		return nil, fmt.Errorf("dta init: domain: %w", err)
	}
	if opt.EpochLen == 0 {
		opt.EpochLen = 86400
	}
	modes := 0
	if opt.Passphrase != "" {
		modes++
	}
	if len(opt.Recipients) > 0 {
		modes++
	}
	if opt.Plaintext {
		modes++
	}
	if modes != 1 {
		return nil, errors.New("dta init: give exactly one of a passphrase, age recipients, or the explicit plaintext option")
	}
	rnd := opt.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	if err := os.MkdirAll(opt.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("dta init: %w", err)
	}
	for _, f := range []string{InfoFile, SecretAgeFile, SecretPlainFile} {
		if _, err := os.Lstat(filepath.Join(opt.Dir, f)); err == nil {
			return nil, fmt.Errorf("dta init %s: %w (%s)", opt.Dir, ErrExists, f)
		}
	}
	ms, err := mpinkex.NewMasterShare(rnd)
	if err != nil {
		return nil, fmt.Errorf("dta init: %w", err)
	}
	defer ms.Zeroize()
	seed := make([]byte, ed25519.SeedSize)
	if _, err := io.ReadFull(rnd, seed); err != nil {
		return nil, fmt.Errorf("dta init: %w", err)
	}
	defer clear(seed)
	priv := ed25519.NewKeyFromSeed(seed)
	defer clear(priv)
	msb := ms.Bytes()
	defer clear(msb[:])
	secret, _ := json.Marshal(secretFile{V: 1, MasterShare: hex.EncodeToString(msb[:]), SigningSeed: hex.EncodeToString(seed)})
	defer clear(secret)

	name, data := SecretPlainFile, secret
	if !opt.Plaintext {
		recips := opt.Recipients
		if opt.Passphrase != "" {
			r, err := age.NewScryptRecipient(opt.Passphrase)
			if err != nil {
				return nil, fmt.Errorf("dta init: %w", err)
			}
			if opt.ScryptWorkFactor > 0 {
				r.SetWorkFactor(opt.ScryptWorkFactor)
			}
			recips = []age.Recipient{r}
		}
		var buf bytes.Buffer
		w, err := age.Encrypt(&buf, recips...)
		if err != nil {
			return nil, fmt.Errorf("dta init: encrypt master share: %w", err)
		}
		if _, err := w.Write(secret); err != nil {
			return nil, fmt.Errorf("dta init: encrypt master share: %w", err)
		}
		if err := w.Close(); err != nil {
			return nil, fmt.Errorf("dta init: encrypt master share: %w", err)
		}
		name, data = SecretAgeFile, buf.Bytes()
	}
	info := &Info{
		ID: opt.ID, Domain: opt.Domain, EpochLen: opt.EpochLen,
		SigningKey: base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)),
		Created:    time.Now().UTC().Truncate(time.Second),
	}
	ib, _ := json.MarshalIndent(info, "", "  ")
	if err := writeNew(filepath.Join(opt.Dir, name), data); err != nil {
		return nil, fmt.Errorf("dta init: %w", err)
	}
	if err := writeNew(filepath.Join(opt.Dir, InfoFile), append(ib, '\n')); err != nil {
		os.Remove(filepath.Join(opt.Dir, name))
		return nil, fmt.Errorf("dta init: %w", err)
	}
	return info, nil
}

func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// Authority is an opened D-TA: its public info and its secrets in memory.
type Authority struct {
	Info        Info
	master      *mpinkex.MasterShare
	signer      ed25519.PrivateKey
	domainShare pairing.G2
}

// OpenOptions says how to decrypt the secret: Identities (age identities,
// e.g. from a key file) or Passphrase. A plaintext secret needs neither.
type OpenOptions struct {
	Passphrase string
	Identities []age.Identity
}

// Open loads a D-TA from dir.
func Open(dir string, opt OpenOptions) (*Authority, error) {
	ib, err := os.ReadFile(filepath.Join(dir, InfoFile))
	if err != nil {
		return nil, fmt.Errorf("open D-TA %s: %w", dir, err)
	}
	var info Info
	dec := json.NewDecoder(bytes.NewReader(ib))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		return nil, fmt.Errorf("open D-TA %s: %s: %w", dir, InfoFile, err)
	}
	var secret []byte
	if b, err := readPrivate(filepath.Join(dir, SecretAgeFile)); err == nil {
		ids := opt.Identities
		if opt.Passphrase != "" {
			id, err := age.NewScryptIdentity(opt.Passphrase)
			if err != nil {
				return nil, fmt.Errorf("open D-TA %s: %w", dir, err)
			}
			ids = append(ids, id)
		}
		if len(ids) == 0 {
			return nil, fmt.Errorf("open D-TA %s: the master share is encrypted: give a passphrase or an age identity", dir)
		}
		r, err := age.Decrypt(bytes.NewReader(b), ids...)
		if err != nil {
			return nil, fmt.Errorf("open D-TA %s: decrypt master share (wrong passphrase or identity?): %w", dir, err)
		}
		if secret, err = io.ReadAll(io.LimitReader(r, 4096)); err != nil {
			return nil, fmt.Errorf("open D-TA %s: decrypt master share: %w", dir, err)
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		if secret, err = readPrivate(filepath.Join(dir, SecretPlainFile)); err != nil {
			return nil, fmt.Errorf("open D-TA %s: no master share: %w", dir, err)
		}
	} else {
		return nil, fmt.Errorf("open D-TA %s: %w", dir, err)
	}
	defer clear(secret)
	var sf secretFile
	if err := json.Unmarshal(secret, &sf); err != nil || sf.V != 1 {
		return nil, fmt.Errorf("open D-TA %s: master share file is corrupt", dir)
	}
	msb, err1 := hex.DecodeString(sf.MasterShare)
	seed, err2 := hex.DecodeString(sf.SigningSeed)
	defer clear(msb)
	defer clear(seed)
	if err1 != nil || err2 != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("open D-TA %s: master share file is corrupt", dir)
	}
	ms, err := mpinkex.ParseMasterShare(msb)
	if err != nil {
		return nil, fmt.Errorf("open D-TA %s: %w", dir, err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	if base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey)) != info.SigningKey {
		ms.Zeroize()
		return nil, fmt.Errorf("open D-TA %s: signing key does not match %s", dir, InfoFile)
	}
	return &Authority{Info: info, master: ms, signer: priv, domainShare: ms.DomainShare()}, nil
}

// readPrivate reads a secret file, refusing group/world-accessible modes.
func readPrivate(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: the master share must not be group/world-accessible (chmod 600)", path, fi.Mode().Perm())
	}
	return os.ReadFile(path)
}

// Close zeroes the secrets.
func (a *Authority) Close() {
	a.master.Zeroize()
	clear(a.signer)
	a.domainShare.Zeroize()
}

// DomainEntry returns this D-TA's line for domain.json, given its URL.
func (a *Authority) DomainEntry(url string) keydir.DTA {
	return keydir.DTA{ID: a.Info.ID, URL: strings.TrimRight(url, "/"), SigningKey: a.Info.SigningKey}
}
