package dta

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/pairing"
)

// storeIssueClient issues a client share for fxClientID: two Authorities
// opened from the same folder must issue the same share.
func storeIssueClient(t *testing.T, a *Authority) pairing.G1 {
	t.Helper()
	env, err := a.Issue(fxClientID, []keydir.Kind{keydir.KindClient}, nil, fxT0)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := base64.StdEncoding.DecodeString(a.Info.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	o, err := env.Open(ed25519.PublicKey(pub), keydir.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return *o.Shares.Client
}

func storeInit(t *testing.T, opt InitOptions) (string, *Info) {
	t.Helper()
	if opt.Dir == "" {
		opt.Dir = filepath.Join(t.TempDir(), "dta")
	}
	if opt.ID == "" {
		opt.ID = "dta-1"
	}
	if opt.Domain == "" {
		opt.Domain = fxDomainName
	}
	info, err := Init(opt)
	if err != nil {
		t.Fatal(err)
	}
	return opt.Dir, info
}

func TestInitInfo(t *testing.T) {
	before := time.Now().Add(-time.Second)
	dir, info := storeInit(t, InitOptions{Plaintext: true})
	if info.ID != "dta-1" || info.Domain != fxDomainName || info.EpochLen != 86400 {
		t.Errorf("info %+v", info)
	}
	if info.Created.Before(before) || info.Created.After(time.Now()) || info.Created.Location() != time.UTC {
		t.Errorf("created %v", info.Created)
	}
	if k, err := base64.StdEncoding.DecodeString(info.SigningKey); err != nil || len(k) != ed25519.PublicKeySize {
		t.Errorf("signing key %q", info.SigningKey)
	}
	b, err := os.ReadFile(filepath.Join(dir, InfoFile))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk Info
	if err := json.Unmarshal(b, &onDisk); err != nil || onDisk != *info {
		t.Errorf("%s = %s (%v), want %+v", InfoFile, b, err, info)
	}
	a, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Info != *info {
		t.Errorf("opened info %+v, want %+v", a.Info, *info)
	}
	if e := a.DomainEntry("https://dta1.example:8443//"); e.ID != "dta-1" || e.URL != "https://dta1.example:8443" || e.SigningKey != info.SigningKey {
		t.Errorf("DomainEntry = %+v", e)
	}

	// Two D-TAs never share a master share or a signing key.
	dir2, info2 := storeInit(t, InitOptions{Plaintext: true})
	if info2.SigningKey == info.SigningKey {
		t.Fatal("two D-TAs share a signing key")
	}
	if fxMasterScalar(t, dir).Equal(fxMasterScalar(t, dir2)) {
		t.Fatal("two D-TAs share a master share")
	}
}

func TestInitRefusesExisting(t *testing.T) {
	for _, existing := range []string{InfoFile, SecretAgeFile, SecretPlainFile} {
		t.Run(existing, func(t *testing.T) {
			dir := t.TempDir()
			old := []byte("do not overwrite\n")
			if err := os.WriteFile(filepath.Join(dir, existing), old, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Init(InitOptions{Dir: dir, ID: "dta-1", Domain: fxDomainName, Plaintext: true})
			if !errors.Is(err, ErrExists) {
				t.Fatalf("Init over %s: %v, want ErrExists", existing, err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, existing)); !bytes.Equal(b, old) {
				t.Error("existing file changed")
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("Init left %d entries", len(ents))
			}
		})
	}
	t.Run("whole D-TA", func(t *testing.T) {
		dir, info := storeInit(t, InitOptions{Plaintext: true})
		snap := fxSnapshot(t, dir)
		_, err := Init(InitOptions{Dir: dir, ID: "dta-1", Domain: fxDomainName, Passphrase: "x", ScryptWorkFactor: 10})
		if !errors.Is(err, ErrExists) {
			t.Fatalf("second Init: %v", err)
		}
		fxSameSnapshot(t, snap, fxSnapshot(t, dir))
		a, err := Open(dir, OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		if a.Info.SigningKey != info.SigningKey {
			t.Error("D-TA replaced")
		}
	})
}

func TestInitOptionErrors(t *testing.T) {
	xid, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	recips := []age.Recipient{xid.Recipient()}
	const modes = "exactly one of a passphrase, age recipients, or the explicit plaintext option"
	for _, tc := range []struct {
		name string
		opt  InitOptions
		want string
	}{
		{"no protection", InitOptions{}, modes},
		{"passphrase and plaintext", InitOptions{Passphrase: "p", Plaintext: true}, modes},
		{"recipients and plaintext", InitOptions{Recipients: recips, Plaintext: true}, modes},
		{"passphrase and recipients", InitOptions{Passphrase: "p", Recipients: recips}, modes},
		{"all three", InitOptions{Passphrase: "p", Recipients: recips, Plaintext: true}, modes},
		{"bad id", InitOptions{ID: "DTA_1", Plaintext: true}, "lowercase letters"},
		{"id too long", InitOptions{ID: strings.Repeat("a", 64), Plaintext: true}, "lowercase letters"},
		{"domain too long", InitOptions{Domain: strings.Repeat("d", 256), Plaintext: true}, "domain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "dta")
			opt := tc.opt
			opt.Dir = dir
			if opt.ID == "" {
				opt.ID = "dta-1"
			}
			if opt.Domain == "" {
				opt.Domain = fxDomainName
			}
			info, err := Init(opt)
			if err == nil || info != nil {
				t.Fatalf("Init = %+v, %v", info, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused Init created %s (%v)", dir, err)
			}
		})
	}
}

func TestPassphraseRoundTrip(t *testing.T) {
	dir, info := storeInit(t, InitOptions{Passphrase: "correct horse", ScryptWorkFactor: 10})
	if _, err := os.Stat(filepath.Join(dir, SecretPlainFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("passphrase mode wrote %s", SecretPlainFile)
	}
	raw, err := os.ReadFile(filepath.Join(dir, SecretAgeFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("age-encryption.org/v1\n-> scrypt ")) {
		t.Fatalf("%s is not an age scrypt file: %q", SecretAgeFile, raw[:min(len(raw), 40)])
	}
	if bytes.Contains(raw, []byte("master_share")) {
		t.Fatal("the master share is stored in clear")
	}

	a, err := Open(dir, OpenOptions{Passphrase: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Info != *info {
		t.Errorf("info %+v", a.Info)
	}
	b, err := Open(dir, OpenOptions{Passphrase: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !storeIssueClient(t, a).Equal(storeIssueClient(t, b)) {
		t.Fatal("two opens of one D-TA issue different shares")
	}

	for _, tc := range []struct {
		name string
		opt  OpenOptions
		want string
	}{
		{"wrong passphrase", OpenOptions{Passphrase: "correct horse "}, "wrong passphrase or identity"},
		{"no passphrase", OpenOptions{}, "give a passphrase or an age identity"},
		{"x25519 identity", OpenOptions{Identities: []age.Identity{mustX25519(t)}}, "wrong passphrase or identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := Open(dir, tc.opt)
			if err == nil {
				a.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q: want %q and the folder", err, tc.want)
			}
		})
	}
}

func mustX25519(t *testing.T) *age.X25519Identity {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestAgeRecipientRoundTrip(t *testing.T) {
	id1, id2, other := mustX25519(t), mustX25519(t), mustX25519(t)
	dir, _ := storeInit(t, InitOptions{Recipients: []age.Recipient{id1.Recipient(), id2.Recipient()}})
	raw, err := os.ReadFile(filepath.Join(dir, SecretAgeFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("age-encryption.org/v1\n-> X25519 ")) {
		t.Fatalf("not an age X25519 file: %q", raw[:min(len(raw), 40)])
	}
	var shares []pairing.G1
	for _, ids := range [][]age.Identity{{id1}, {id2}, {other, id2}} {
		a, err := Open(dir, OpenOptions{Identities: ids})
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, storeIssueClient(t, a))
		a.Close()
	}
	if !shares[0].Equal(shares[1]) || !shares[0].Equal(shares[2]) {
		t.Fatal("recipients decrypt different master shares")
	}
	for name, opt := range map[string]OpenOptions{
		"other identity": {Identities: []age.Identity{other}},
		"passphrase":     {Passphrase: "x"},
	} {
		if a, err := Open(dir, opt); err == nil {
			a.Close()
			t.Errorf("%s: opened", name)
		} else if !strings.Contains(err.Error(), "wrong passphrase or identity") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPlaintextStore(t *testing.T) {
	dir, _ := storeInit(t, InitOptions{Plaintext: true})
	for name, want := range map[string]os.FileMode{SecretPlainFile: 0o600, InfoFile: 0o600, ".": 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, SecretAgeFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("plaintext mode wrote an age file")
	}
	// The plain file holds what Open uses: the signing seed derives the
	// published key.
	b, err := os.ReadFile(filepath.Join(dir, SecretPlainFile))
	if err != nil {
		t.Fatal(err)
	}
	var sf secretFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil || sf.V != 1 {
		t.Fatalf("%s: %v %+v", SecretPlainFile, err, sf)
	}
	seed, _ := hex.DecodeString(sf.SigningSeed)
	a, err := Open(dir, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)); got != a.Info.SigningKey {
		t.Error("signing seed does not match the published key")
	}
	// Open ignores a passphrase it does not need.
	if a2, err := Open(dir, OpenOptions{Passphrase: "unused"}); err != nil {
		t.Error(err)
	} else {
		a2.Close()
	}
}

func TestOpenRefusesAccessibleSecret(t *testing.T) {
	for _, tc := range []struct {
		name string
		init InitOptions
		file string
		mode os.FileMode
		open OpenOptions
	}{
		{"plaintext 0644", InitOptions{Plaintext: true}, SecretPlainFile, 0o644, OpenOptions{}},
		{"plaintext 0640", InitOptions{Plaintext: true}, SecretPlainFile, 0o640, OpenOptions{}},
		{"plaintext 0604", InitOptions{Plaintext: true}, SecretPlainFile, 0o604, OpenOptions{}},
		{"age 0644", InitOptions{Passphrase: "p", ScryptWorkFactor: 10}, SecretAgeFile, 0o644, OpenOptions{Passphrase: "p"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, _ := storeInit(t, tc.init)
			path := filepath.Join(dir, tc.file)
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			a, err := Open(dir, tc.open)
			if err == nil {
				a.Close()
				t.Fatal("opened a group/world-accessible secret")
			}
			if !strings.Contains(err.Error(), "must not be group/world-accessible") || !strings.Contains(err.Error(), path) {
				t.Errorf("error %q", err)
			}
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
			a, err = Open(dir, tc.open)
			if err != nil {
				t.Fatalf("after chmod 600: %v", err)
			}
			a.Close()
		})
	}
}

func TestOpenCorruptSecret(t *testing.T) {
	dir, _ := storeInit(t, InitOptions{Plaintext: true})
	path := filepath.Join(dir, SecretPlainFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sf secretFile
	if err := json.Unmarshal(good, &sf); err != nil {
		t.Fatal(err)
	}
	order := pairing.Order()
	enc := func(f secretFile) []byte { b, _ := json.Marshal(f); return b }
	with := func(mod func(*secretFile)) []byte { c := sf; mod(&c); return enc(c) }
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "corrupt"},
		{"not JSON", []byte("master share"), "corrupt"},
		{"truncated", good[:len(good)/2], "corrupt"},
		{"version 2", with(func(f *secretFile) { f.V = 2 }), "corrupt"},
		{"master share not hex", with(func(f *secretFile) { f.MasterShare = "zz" + f.MasterShare[2:] }), "corrupt"},
		{"seed not hex", with(func(f *secretFile) { f.SigningSeed = "zz" + f.SigningSeed[2:] }), "corrupt"},
		{"seed short", with(func(f *secretFile) { f.SigningSeed = f.SigningSeed[:62] }), "corrupt"},
		{"master share short", with(func(f *secretFile) { f.MasterShare = f.MasterShare[:62] }), ""},
		{"master share zero", with(func(f *secretFile) { f.MasterShare = strings.Repeat("00", 32) }), ""},
		{"master share is r", with(func(f *secretFile) { f.MasterShare = hex.EncodeToString(order[:]) }), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := Open(dir, OpenOptions{})
			if err == nil {
				a.Close()
				t.Fatal("opened a corrupt secret")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), sf.MasterShare) || strings.Contains(err.Error(), sf.SigningSeed[:16]) {
				t.Errorf("error leaks the secret: %q", err)
			}
		})
	}

	t.Run("corrupt age file", func(t *testing.T) {
		dir, _ := storeInit(t, InitOptions{Passphrase: "p", ScryptWorkFactor: 10})
		path := filepath.Join(dir, SecretAgeFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-5] ^= 0x01 // in the ciphertext: the payload MAC fails
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if a, err := Open(dir, OpenOptions{Passphrase: "p"}); err == nil {
			a.Close()
			t.Fatal("opened a tampered age file")
		} else {
			t.Log(err)
		}
	})

	t.Run("missing secret", func(t *testing.T) {
		dir, _ := storeInit(t, InitOptions{Plaintext: true})
		if err := os.Remove(filepath.Join(dir, SecretPlainFile)); err != nil {
			t.Fatal(err)
		}
		if a, err := Open(dir, OpenOptions{}); err == nil {
			a.Close()
			t.Fatal("opened without a secret")
		} else if !strings.Contains(err.Error(), "no master share") || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error %q", err)
		}
	})
}

func TestOpenSigningKeyMismatch(t *testing.T) {
	dir, info := storeInit(t, InitOptions{Plaintext: true})
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Info) []byte
		want string
	}{
		{"other key", func(i *Info) []byte {
			i.SigningKey = base64.StdEncoding.EncodeToString(pub)
			b, _ := json.Marshal(i)
			return b
		}, "signing key does not match " + InfoFile},
		{"another D-TA's key", func(i *Info) []byte {
			_, other := storeInit(t, InitOptions{Plaintext: true})
			i.SigningKey = other.SigningKey
			b, _ := json.Marshal(i)
			return b
		}, "signing key does not match " + InfoFile},
		{"unknown field", func(i *Info) []byte {
			b, _ := json.Marshal(i)
			return append(b[:len(b)-1], []byte(`,"extra":1}`)...)
		}, InfoFile},
		{"not JSON", func(*Info) []byte { return []byte("{") }, InfoFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := *info
			if err := os.WriteFile(filepath.Join(dir, InfoFile), tc.mod(&c), 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := Open(dir, OpenOptions{})
			if err == nil {
				a.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
	if err := os.Remove(filepath.Join(dir, InfoFile)); err != nil {
		t.Fatal(err)
	}
	if a, err := Open(dir, OpenOptions{}); err == nil || !errors.Is(err, os.ErrNotExist) {
		if a != nil {
			a.Close()
		}
		t.Errorf("Open without %s: %v", InfoFile, err)
	}
}
