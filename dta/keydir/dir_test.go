package keydir

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

func TestEnvelopeFile(t *testing.T) {
	if got := EnvelopeFile("dta-1"); got != "dta-1.json" {
		t.Errorf("EnvelopeFile = %q", got)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	fx := sharedFixture(t)
	tok := fx.token(t)
	id, p, err := ParseToken(MarshalToken(fxIdentity, tok))
	if err != nil {
		t.Fatal(err)
	}
	if id != fxIdentity || !p.Equal(tok) {
		t.Fatalf("ParseToken = %q, %v", id, p)
	}
	// The token rebuilds CS with the factor, and only with it.
	cs, err := mpinkex.RebuildCS(p, id, fxFactor)
	if err != nil || !cs.Equal(fx.cs) {
		t.Fatalf("RebuildCS: %v", err)
	}
	if cs, _ := mpinkex.RebuildCS(p, id, "1235"); cs.Equal(fx.cs) {
		t.Fatal("a wrong factor rebuilt CS")
	}
}

func TestParseTokenRejects(t *testing.T) {
	fx := sharedFixture(t)
	good := MarshalToken(fxIdentity, fx.token(t))
	set := func(k string, v any) []byte {
		return editJSON(t, good, func(m map[string]any) { m[k] = v })
	}
	s0, _ := fx.masters[0].ServerShare(fxIdentity)
	g2 := s0.Bytes()
	tb := fx.token(t).Bytes()
	tokHex := hex.EncodeToString(tb[:])
	cases := []struct {
		name  string
		in    []byte
		sub   string
		cause error
	}{
		{"empty", nil, "client.token", nil},
		{"null", []byte("null"), "version 0", nil},
		{"not JSON", []byte("token"), "client.token", nil},
		{"unknown field", set("factor", "1234"), "unknown field", nil},
		{"trailing data", append(bytes.Clone(good), []byte(`{}`)...), "trailing data", nil},
		{"oversized", append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxEnvelopeSize)...), "too large", nil},
		{"version 2", set("v", 2), "version 2", nil},
		{"version missing", editJSON(t, good, func(m map[string]any) { delete(m, "v") }), "version 0", nil},
		{"identity empty", set("identity", ""), "identity", nil},
		{"identity of 256 bytes", set("identity", strings.Repeat("i", 256)), "identity", nil},
		{"identity not UTF-8", bytes.Replace(good, []byte(fxIdentity), []byte("a\xffb"), 1), "UTF-8", nil},
		{"token missing", editJSON(t, good, func(m map[string]any) { delete(m, "token") }), "client.token", pairing.ErrEncoding},
		{"token not hex", set("token", "zz"+tokHex[2:]), "not hex", nil},
		{"token odd length", set("token", tokHex[1:]), "not hex", nil},
		{"token truncated", set("token", tokHex[:94]), "client.token", pairing.ErrEncoding},
		{"token is the identity", set("token", hex.EncodeToString(identityG1)), "client.token", pairing.ErrIdentity},
		{"token off the subgroup", set("token", hex.EncodeToString(offSubgroupG1)), "client.token", pairing.ErrNotInSubgroup},
		{"token is a G2 point", set("token", hex.EncodeToString(g2[:])), "client.token", pairing.ErrEncoding},
		{"token as a number", set("token", 5), "client.token", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, p, err := ParseToken(c.in)
			if id != "" || !p.IsIdentity() {
				t.Error("values returned with an error")
			}
			wantErr(t, "ParseToken", err, ErrMalformed, c.sub)
			if c.cause != nil && !errors.Is(err, c.cause) {
				t.Errorf("error %q does not wrap %v", err, c.cause)
			}
		})
	}
	// Upper-case hex is still the same point (hex is not canonical; the
	// point encoding is).
	if _, p, err := ParseToken(set("token", strings.ToUpper(tokHex))); err != nil || !p.Equal(fx.token(t)) {
		t.Errorf("upper-case token: %v", err)
	}
}

// writeSet writes files to a fresh key directory and returns it with the
// generation.
func writeSet(t *testing.T, files map[string][]byte) (dir, gen string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "keys")
	gen, err := Write(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	return dir, gen
}

// generations lists the generation folders and leftover temporaries in dir.
func generations(t *testing.T, dir string) (gens, temps []string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, "..gen-"):
			gens = append(gens, n)
		case strings.Contains(n, "tmp"):
			temps = append(temps, n)
		}
	}
	return gens, temps
}

func TestWriteLoad(t *testing.T) {
	fx := sharedFixture(t)
	files := fx.dirFiles(t, false)
	dir, gen := writeSet(t, files)

	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, fx, set, true)
	if set.Generation != gen || set.Token != nil {
		t.Errorf("generation %q (want %q), token %v", set.Generation, gen, set.Token)
	}

	// Layout and modes.
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key directory: %v, mode %v", err, fi.Mode())
	}
	fi, err := os.Lstat(filepath.Join(dir, gen))
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("generation folder: %v, mode %v", err, fi.Mode())
	}
	if target, err := os.Readlink(filepath.Join(dir, DataLink)); err != nil || target != gen {
		t.Fatalf("%s → %q, %v; want %q", DataLink, target, err, gen)
	}
	names := []string{}
	for name, data := range files {
		names = append(names, name)
		fi, err := os.Lstat(filepath.Join(dir, gen, name))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v", name, err, fi.Mode())
		}
		link := filepath.Join(dir, name)
		if target, err := os.Readlink(link); err != nil || target != filepath.Join(DataLink, name) {
			t.Errorf("top-level %s → %q, %v", name, target, err)
		}
		if got, err := os.ReadFile(link); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s read through the link: %v", name, err)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, gen))
	if len(entries) != len(files) {
		t.Errorf("generation holds %d entries, want %d", len(entries), len(files))
	}
	gens, temps := generations(t, dir)
	if !slices.Equal(gens, []string{gen}) || len(temps) != 0 {
		t.Errorf("generations %v, temporaries %v", gens, temps)
	}
	slices.Sort(names)
	if len(names) != 4 {
		t.Errorf("fixture writes %v", names)
	}
}

// TestWriteSwap writes a token set, then a set without a token, then the
// token set again.
func TestWriteSwap(t *testing.T) {
	fx := sharedFixture(t)
	withTok, plain := fx.dirFiles(t, true), fx.dirFiles(t, false)
	dir, gen1 := writeSet(t, withTok)

	// Things an operator put there are left alone.
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", filepath.Join(dir, "other-link")); err != nil {
		t.Fatal(err)
	}

	set, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, fx, set, false)
	if set.Token == nil || !set.Token.Equal(fx.token(t)) {
		t.Fatal("token not loaded")
	}
	if _, err := os.Lstat(filepath.Join(dir, TokenFile)); err != nil {
		t.Fatal(err)
	}

	gen2, err := Write(dir, plain)
	if err != nil {
		t.Fatal(err)
	}
	if gen2 == gen1 {
		t.Fatal("second write reused the generation name")
	}
	if target, _ := os.Readlink(filepath.Join(dir, DataLink)); target != gen2 {
		t.Fatalf("%s → %q, want %q", DataLink, target, gen2)
	}
	if _, err := os.Lstat(filepath.Join(dir, gen1)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old generation still there: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, TokenFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale %s link kept: %v", TokenFile, err)
	}
	for _, keep := range []string{"README", "other-link"} {
		if _, err := os.Lstat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("%s removed: %v", keep, err)
		}
	}
	set, err = Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, fx, set, true)
	if set.Token != nil || set.Generation != gen2 {
		t.Errorf("token %v, generation %q", set.Token, set.Generation)
	}
	gens, temps := generations(t, dir)
	if !slices.Equal(gens, []string{gen2}) || len(temps) != 0 {
		t.Errorf("generations %v, temporaries %v", gens, temps)
	}

	gen3, err := Write(dir, withTok)
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(dir, TokenFile)); err != nil || target != filepath.Join(DataLink, TokenFile) {
		t.Errorf("%s link not recreated: %q, %v", TokenFile, target, err)
	}
	if set, err = Load(dir); err != nil || set.Token == nil || set.CS != nil || set.Generation != gen3 {
		t.Fatalf("third generation: %v", err)
	}
	gens, _ = generations(t, dir)
	if !slices.Equal(gens, []string{gen3}) {
		t.Errorf("generations %v", gens)
	}
}

func TestWriteBadName(t *testing.T) {
	fx := sharedFixture(t)
	dir, gen := writeSet(t, fx.dirFiles(t, false))
	before, _ := os.ReadDir(dir)
	for _, name := range []string{"", "a/b", "../x", "/abs", DataLink, "..x", ".", "..", lockFile} {
		files := fx.dirFiles(t, false)
		files[name] = []byte("x")
		g, err := Write(dir, files)
		wantErr(t, fmt.Sprintf("Write(%q)", name), err, nil, "bad file name")
		if g != "" {
			t.Errorf("Write(%q) returned generation %q", name, g)
		}
	}
	if _, err := Write(dir, nil); err == nil {
		t.Error("Write of no files succeeded")
	}
	// The previous generation is intact and nothing was added.
	after, _ := os.ReadDir(dir)
	if len(after) != len(before) {
		t.Errorf("directory changed: %d entries, was %d", len(after), len(before))
	}
	set, err := Load(dir)
	if err != nil || set.Generation != gen {
		t.Fatalf("Load after failed writes: %v", err)
	}
}

// TestWriteFailureKeepsPrevious makes a write fail after the new generation
// folder was created (a file name the file system refuses) and checks the
// current generation keeps serving and the partial folder is gone.
func TestWriteFailureKeepsPrevious(t *testing.T) {
	fx := sharedFixture(t)
	dir, gen := writeSet(t, fx.dirFiles(t, false))
	files := fx.dirFiles(t, true)
	files[strings.Repeat("n", 300)] = []byte("x") // over NAME_MAX
	if _, err := Write(dir, files); err == nil {
		t.Fatal("write of an over-long name succeeded")
	}
	set, err := Load(dir)
	if err != nil || set.Generation != gen || set.Token != nil {
		t.Fatalf("previous generation not serving: %v", err)
	}
	gens, temps := generations(t, dir)
	if !slices.Equal(gens, []string{gen}) || len(temps) != 0 {
		t.Errorf("generations %v, temporaries %v", gens, temps)
	}
	if _, err := os.Lstat(filepath.Join(dir, TokenFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s link created by a failed write: %v", TokenFile, err)
	}
}

func TestLoadPermissions(t *testing.T) {
	fx := sharedFixture(t)
	cases := []struct {
		name string
		path string // relative to the generation folder; "" is the folder
		mode os.FileMode
		ok   bool
	}{
		{"envelope 0644", "dta-2.json", 0o644, false},
		{"envelope 0640", "dta-1.json", 0o640, false},
		{"envelope 0604", "dta-3.json", 0o604, false},
		{"domain.json 0644", DomainFile, 0o644, false},
		{"client.token 0644", TokenFile, 0o644, false},
		{"client.token 0620", TokenFile, 0o620, false},
		{"generation 0755", "", 0o755, false},
		{"generation 0750", "", 0o750, false},
		{"generation 0701", "", 0o701, false},
		{"envelope 0400", "dta-2.json", 0o400, true},
		{"generation 0500", "", 0o500, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, gen := writeSet(t, fx.dirFiles(t, true))
			p := filepath.Join(dir, gen, c.path)
			if err := os.Chmod(p, c.mode); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(filepath.Join(dir, gen), 0o700) // let TempDir clean up
			set, err := Load(dir)
			if c.ok {
				if err != nil {
					t.Fatalf("mode %04o refused: %v", c.mode, err)
				}
				return
			}
			if set != nil {
				t.Error("set returned")
			}
			wantErr(t, "Load", err, ErrPermissions, fmt.Sprintf("%04o", c.mode))
		})
	}
}

// TestLoadBroken damages a written directory in ways a reader must refuse
// with a clear error.
func TestLoadBroken(t *testing.T) {
	fx := sharedFixture(t)
	other := newFixture(t)
	type dirs struct{ dir, gen string }
	put := func(t *testing.T, d dirs, name string, b []byte) {
		t.Helper()
		p := filepath.Join(d.dir, d.gen, name)
		os.Remove(p)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	relink := func(t *testing.T, d dirs, target string) {
		t.Helper()
		l := filepath.Join(d.dir, DataLink)
		if err := os.Remove(l); err != nil {
			t.Fatal(err)
		}
		if target != "" {
			if err := os.Symlink(target, l); err != nil {
				t.Fatal(err)
			}
		}
	}
	tampered := func() []byte {
		e := cloneEnv(fx.envs[1])
		e.Payload[10] ^= 1
		return e.Marshal()
	}
	cases := []struct {
		name   string
		token  bool
		damage func(t *testing.T, d dirs)
		want   error
		sub    string
	}{
		{"truncated envelope", false, func(t *testing.T, d dirs) {
			put(t, d, "dta-2.json", fx.files["dta-2"][:100])
		}, ErrMalformed, "D-TA dta-2"},
		{"empty envelope", false, func(t *testing.T, d dirs) { put(t, d, "dta-1.json", nil) }, ErrMalformed, "D-TA dta-1"},
		{"tampered envelope", false, func(t *testing.T, d dirs) { put(t, d, "dta-2.json", tampered()) }, ErrSignature, "D-TA dta-2"},
		{"envelope of another domain", false, func(t *testing.T, d dirs) {
			put(t, d, "dta-3.json", other.files["dta-3"])
		}, ErrSignature, "D-TA dta-3"},
		{"domain.json pinning other keys", false, func(t *testing.T, d dirs) {
			put(t, d, DomainFile, other.domJSON)
		}, ErrSignature, "D-TA dta-1"},
		{"oversized envelope", false, func(t *testing.T, d dirs) {
			put(t, d, "dta-1.json", append(bytes.Clone(fx.files["dta-1"]), bytes.Repeat([]byte(" "), MaxEnvelopeSize)...))
		}, ErrMalformed, "bytes"},
		{"missing D-TA file", false, func(t *testing.T, d dirs) {
			os.Remove(filepath.Join(d.dir, d.gen, "dta-3.json"))
		}, fs.ErrNotExist, "envelope of D-TA dta-3"},
		{"missing domain.json", false, func(t *testing.T, d dirs) {
			os.Remove(filepath.Join(d.dir, d.gen, DomainFile))
		}, fs.ErrNotExist, DomainFile},
		{"invalid domain.json", false, func(t *testing.T, d dirs) { put(t, d, DomainFile, []byte(`{"domain":""}`)) }, nil, "domain name"},
		{"envelope is a symlink", false, func(t *testing.T, d dirs) {
			p := filepath.Join(d.dir, d.gen, "dta-2.json")
			os.Rename(p, filepath.Join(d.dir, "elsewhere.json"))
			os.Symlink("../elsewhere.json", p)
		}, nil, "dta-2.json is not a regular file"},
		{"envelope is a folder", false, func(t *testing.T, d dirs) {
			p := filepath.Join(d.dir, d.gen, "dta-2.json")
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, nil, "not a regular file"},
		{"directory without ..data", false, func(t *testing.T, d dirs) { relink(t, d, "") }, nil, "no ..data link"},
		{"..data is a folder", false, func(t *testing.T, d dirs) {
			relink(t, d, "")
			os.Mkdir(filepath.Join(d.dir, DataLink), 0o700)
		}, nil, DataLink},
		{"..data to ../etc", false, func(t *testing.T, d dirs) { relink(t, d, "../etc") }, nil, "points outside the directory"},
		{"..data to /etc", false, func(t *testing.T, d dirs) { relink(t, d, "/etc") }, nil, "points outside the directory"},
		{"..data to the parent", false, func(t *testing.T, d dirs) { relink(t, d, "..") }, nil, "points outside the directory"},
		{"..data to a plain name", false, func(t *testing.T, d dirs) { relink(t, d, "gen") }, nil, "points outside the directory"},
		{"..data to a missing generation", false, func(t *testing.T, d dirs) { relink(t, d, "..gen-missing") }, fs.ErrNotExist, ""},
		{"..data to itself", false, func(t *testing.T, d dirs) { relink(t, d, DataLink) }, nil, "load keys"},
		{"generation is a file", false, func(t *testing.T, d dirs) {
			os.WriteFile(filepath.Join(d.dir, "..file"), nil, 0o600)
			relink(t, d, "..file")
		}, nil, "unexpected file type"},
		{"client.token next to raw client shares", false, func(t *testing.T, d dirs) {
			put(t, d, TokenFile, MarshalToken(fxIdentity, fx.token(t)))
		}, nil, "raw client share on disk next to client.token"},
		{"token for another identity", true, func(t *testing.T, d dirs) {
			put(t, d, TokenFile, MarshalToken(fxIdentity2, fx.token(t)))
		}, nil, `client.token is for "` + fxIdentity2 + `"`},
		{"malformed token", true, func(t *testing.T, d dirs) {
			put(t, d, TokenFile, MarshalToken(fxIdentity, pairing.G1{}))
		}, ErrMalformed, TokenFile},
		{"token is a folder", true, func(t *testing.T, d dirs) {
			os.Remove(filepath.Join(d.dir, d.gen, TokenFile))
			os.Mkdir(filepath.Join(d.dir, d.gen, TokenFile), 0o700)
		}, nil, "client.token is not a regular file"},
		{"token removed, client values withheld", true, func(t *testing.T, d dirs) {
			os.Remove(filepath.Join(d.dir, d.gen, TokenFile))
		}, ErrMalformed, "value of share client is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, gen := writeSet(t, fx.dirFiles(t, c.token))
			c.damage(t, dirs{dir, gen})
			set, err := Load(dir)
			if set != nil {
				t.Error("set returned")
			}
			wantErr(t, "Load", err, c.want, c.sub)
			if err != nil && !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the directory", err)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "nothing")); err == nil || !strings.Contains(err.Error(), "no ..data link") {
		t.Errorf("missing directory: %v", err)
	}
}

// TestLoadDataLinkToParent places a complete, valid key set in the parent of
// the key directory and points ..data at "..": Load must not read it.
func TestLoadDataLinkToParent(t *testing.T) {
	fx := sharedFixture(t)
	parent := t.TempDir()
	for name, b := range fx.dirFiles(t, false) {
		if err := os.WriteFile(filepath.Join(parent, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "keys")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..", filepath.Join(dir, DataLink)); err != nil {
		t.Fatal(err)
	}
	set, err := Load(dir)
	if set != nil {
		t.Fatal("Load read a key set from the parent directory")
	}
	wantErr(t, "Load", err, nil, "points outside the directory")
}

// TestLoadDuringWrites races one reader against 200 writes that alternate
// two different valid sets: every Load must return one whole set, never a
// mix and never an error.
func TestLoadDuringWrites(t *testing.T) {
	t.Parallel()
	fx := sharedFixture(t)
	setA := fx.dirFiles(t, false)

	// Set B: another identity, client and one permit, with a token.
	var setB = map[string][]byte{DomainFile: fx.domJSON}
	var cs2 []pairing.G1
	var tp2 []pairing.G1
	for i, m := range fx.masters {
		c, err := m.ClientShare(fxIdentity2)
		if err != nil {
			t.Fatal(err)
		}
		p, err := m.PermitShare(fxIdentity2, fxEpoch)
		if err != nil {
			t.Fatal(err)
		}
		cs2, tp2 = append(cs2, c), append(tp2, p)
		env := fx.seal(t, i, fx.meta(i, fxIdentity2), []ShareValue{{Kind: KindClient, G1: c}, {Kind: KindPermit, Epoch: fxEpoch, G1: p}})
		setB[EnvelopeFile(fxIDs[i])] = env.Withhold(KindClient).Marshal()
	}
	csB, err := mpinkex.SumG1(cs2...)
	if err != nil {
		t.Fatal(err)
	}
	tpB, err := mpinkex.SumG1(tp2...)
	if err != nil {
		t.Fatal(err)
	}
	tokB, err := mpinkex.Token(csB, fxIdentity2, "passphrase")
	if err != nil {
		t.Fatal(err)
	}
	setB[TokenFile] = MarshalToken(fxIdentity2, tokB)

	isA := func(s *Set) bool {
		return s.Identity == fxIdentity && s.Token == nil && s.CS != nil && s.CS.Equal(fx.cs) &&
			s.SK != nil && s.SK.Equal(fx.sk) && s.SS != nil && s.SS.Equal(fx.ss) && len(s.Permits) == 2 &&
			s.Permits[fxEpoch].Equal(fx.permits[fxEpoch]) && s.Permits[fxEpoch+1].Equal(fx.permits[fxEpoch+1])
	}
	isB := func(s *Set) bool {
		return s.Identity == fxIdentity2 && s.CS == nil && s.Token != nil && s.Token.Equal(tokB) &&
			s.SK == nil && s.SS == nil && len(s.Permits) == 1 && s.Permits[fxEpoch].Equal(tpB)
	}

	dir, _ := writeSet(t, setA)
	const writes = 200
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var loads, seenA, seenB int
	var failures []string
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, err := Load(dir)
			loads++
			switch {
			case err != nil:
				failures = append(failures, err.Error())
			case isA(s):
				seenA++
			case isB(s):
				seenB++
			default:
				failures = append(failures, fmt.Sprintf("mixed set: identity %q, generation %s", s.Identity, s.Generation))
			}
		}
	}()
	var writeErr error
	deadline := time.Now().Add(25 * time.Second) // a slow disk shortens the run
	done := 0
	for i := range writes {
		if time.Now().After(deadline) {
			break
		}
		files := setB
		if i%2 == 1 {
			files = setA
		}
		if _, err := Write(dir, files); err != nil {
			writeErr = err
			break
		}
		done++
	}
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("write: %v", writeErr)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d loads failed, first: %s", len(failures), loads, failures[0])
	}
	t.Logf("%d loads during %d writes: %d of set A, %d of set B", loads, done, seenA, seenB)
	if loads < 10 || done < 20 {
		t.Errorf("only %d loads and %d writes ran", loads, done)
	}
	// One whole set and one generation are left.
	s, err := Load(dir)
	if err != nil || (!isA(s) && !isB(s)) {
		t.Fatalf("final set: %v", err)
	}
	gens, temps := generations(t, dir)
	if len(gens) != 1 || len(temps) != 0 {
		t.Errorf("generations %v, temporaries %v", gens, temps)
	}
}

// TestLoadDuringWritesSmall is TestLoadDuringWrites with a one-D-TA domain
// and one-share sets: Load then spends most of its time reading files rather
// than checking points, so it is often in the middle of reading a generation
// when a Write swaps ..data and removes that generation.
func TestLoadDuringWritesSmall(t *testing.T) {
	t.Parallel()
	fx := sharedFixture(t)
	dom := &Domain{Name: fxDomainName, EpochLen: fxEpochLen, DTAs: fx.dom.DTAs[:1]}
	domJSON := dom.Marshal()
	p1, err := fx.masters[0].PermitShare(fxIdentity, fxEpoch)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := fx.masters[0].PermitShare(fxIdentity2, fxEpoch)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := fx.masters[0].ClientShare(fxIdentity2)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := mpinkex.Token(c2, fxIdentity2, "passphrase")
	if err != nil {
		t.Fatal(err)
	}
	setA := map[string][]byte{
		DomainFile:             domJSON,
		EnvelopeFile(fxIDs[0]): fx.seal(t, 0, fx.meta(0, fxIdentity), []ShareValue{{Kind: KindPermit, Epoch: fxEpoch, G1: p1}}).Marshal(),
	}
	envB := fx.seal(t, 0, fx.meta(0, fxIdentity2), []ShareValue{{Kind: KindClient, G1: c2}, {Kind: KindPermit, Epoch: fxEpoch, G1: p2}})
	setB := map[string][]byte{
		DomainFile:             domJSON,
		EnvelopeFile(fxIDs[0]): envB.Withhold(KindClient).Marshal(),
		TokenFile:              MarshalToken(fxIdentity2, tok2),
	}
	isA := func(s *Set) bool {
		return s.Identity == fxIdentity && s.Token == nil && s.CS == nil && len(s.Permits) == 1 && s.Permits[fxEpoch].Equal(p1)
	}
	isB := func(s *Set) bool {
		return s.Identity == fxIdentity2 && s.Token != nil && s.Token.Equal(tok2) && len(s.Permits) == 1 && s.Permits[fxEpoch].Equal(p2)
	}
	dir, _ := writeSet(t, setA)
	stop := make(chan struct{})
	done := make(chan struct{})
	var loads, seenA, seenB int
	var failures []string
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			s, err := Load(dir)
			loads++
			switch {
			case err != nil:
				failures = append(failures, err.Error())
			case isA(s):
				seenA++
			case isB(s):
				seenB++
			default:
				failures = append(failures, fmt.Sprintf("mixed set: identity %q, generation %s", s.Identity, s.Generation))
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	writes := 0
	for i := 0; i < 200 && time.Now().Before(deadline); i++ {
		files := setA
		if i%2 == 0 {
			files = setB
		}
		if _, err := Write(dir, files); err != nil {
			close(stop)
			<-done
			t.Fatalf("write: %v", err)
		}
		writes++
	}
	close(stop)
	<-done
	if len(failures) > 0 {
		t.Errorf("%d of %d loads failed, first: %s", len(failures), loads, failures[0])
	}
	t.Logf("%d loads during %d writes: %d of set A, %d of set B", loads, writes, seenA, seenB)
	if seenA == 0 || seenB == 0 || writes < 20 {
		t.Errorf("the race did not run: %d writes, sets seen %d and %d", writes, seenA, seenB)
	}
}

// TestSetZeroize: Zeroize overwrites every secret point of a set, and
// Assemble (whose caller keeps the envelopes) leaves its input as it was.
func TestSetZeroize(t *testing.T) {
	fx := sharedFixture(t)
	for _, withToken := range []bool{false, true} {
		dir, _ := writeSet(t, fx.dirFiles(t, withToken))
		set, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if withToken != (set.Token != nil) || len(set.Permits) == 0 || set.SK == nil || set.SS == nil {
			t.Fatalf("token %v: set lacks material: %+v", withToken, set)
		}
		set.Zeroize()
		for name, p := range map[string]*pairing.G1{"CS": set.CS, "Token": set.Token} {
			if p != nil && *p != (pairing.G1{}) {
				t.Errorf("token %v: %s not zeroed", withToken, name)
			}
		}
		for e, p := range set.Permits {
			if p != (pairing.G1{}) {
				t.Errorf("token %v: permit %d not zeroed", withToken, e)
			}
		}
		if *set.SK != (pairing.G2{}) || *set.SS != (pairing.G2{}) {
			t.Errorf("token %v: server keys not zeroed", withToken)
		}
	}
	files := fx.cloneFiles()
	if _, err := Assemble(fx.dom, files, false); err != nil {
		t.Fatal(err)
	}
	for name, b := range fx.cloneFiles() {
		if !bytes.Equal(files[name], b) {
			t.Errorf("Assemble changed its input %s", name)
		}
	}
}
