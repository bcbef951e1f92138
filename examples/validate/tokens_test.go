package validate

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
)

// dtaIDs are the D-TAs of the examples' domains (kubernetes/README.md and
// the compose setup service build them from dta-1, dta-2 and dta-3).
var dtaIDs = []string{"dta-1", "dta-2", "dta-3"}

// tokenFile is a bearer token file that a recipe puts in place for a
// fetcher: its path as the fetcher sees it, and its mode.
type tokenFile struct {
	path string
	mode fs.FileMode
}

// checkTokenFolder requires a `milagro keys fetch` command line to give
// --token-file a folder holding one token per D-TA, named by the D-TA's
// id, as the recipe lays it out (files), rather than one file that every
// D-TA would get: any D-TA operator could replay such a token to the other
// D-TAs and collect every share of the workload's key. It then runs the
// real binary on that layout (see runFetchTokens).
func checkTokenFolder(t *testing.T, where string, p *parsed, files []tokenFile) {
	t.Helper()
	tok := p.get("token-file")
	if tok == "" {
		t.Errorf("%s: keys fetch without --token-file: pass the token folder explicitly (one token per D-TA)", where)
		return
	}
	dir := path.Clean(tok)
	have := map[string]tokenFile{}
	for _, f := range files {
		if path.Clean(f.path) == dir {
			t.Errorf("%s: --token-file %s is a single file, which every D-TA would get: any one D-TA operator could replay it to the others and collect every share of the key; give it a folder with one token per D-TA, named by the D-TA's id", where, tok)
			return
		}
		if path.Dir(path.Clean(f.path)) == dir {
			have[path.Base(f.path)] = f
		}
	}
	ok := true
	for _, id := range dtaIDs {
		f, found := have[id]
		switch {
		case !found:
			t.Errorf("%s: --token-file %s: the recipe puts no token for D-TA %s in this folder (it has %v); every D-TA needs its own token, in a file named by its id", where, tok, id, slices.Sorted(maps.Keys(have)))
			ok = false
		case f.mode&0o077 != 0:
			t.Errorf("%s: token %s has mode %04o: milagro refuses token files that group or others may access (0400)", where, f.path, f.mode)
			ok = false
		}
	}
	if ok {
		runFetchTokens(t, where, p, files)
	}
}

// runFetchTokens lays out the recipe's token files under a scratch folder
// and runs the command line's `keys fetch` (without --watch) against a
// domain whose three D-TAs are not listening: milagro must read one token
// per D-TA from the folder, not warn about a shared token, and fail only
// when it cannot reach the D-TAs.
func runFetchTokens(t *testing.T, where string, p *parsed, files []tokenFile) {
	t.Helper()
	root, err := os.MkdirTemp(scratch, "tokens-")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		dst := filepath.Join(root, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte("token of "+f.path+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	// A port that nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	dom := keydir.Domain{Name: "validate.example", EpochLen: 86400}
	for _, id := range dtaIDs {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		dom.DTAs = append(dom.DTAs, keydir.DTA{ID: id, URL: url, SigningKey: base64.StdEncoding.EncodeToString(pub)})
	}
	domFile := filepath.Join(root, "domain.json")
	if err := os.WriteFile(domFile, dom.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"keys", "fetch", "--domain", domFile, "--identity", p.get("identity"),
		"--token-file", filepath.Join(root, filepath.FromSlash(p.get("token-file"))),
		"--out", filepath.Join(root, "keys"), "--timeout", "5s"}
	if k := p.get("kinds"); k != "" {
		args = append(args, "--kinds", k)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := milagroCmd(ctx, root, &out, args...)
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Errorf("%s: keys fetch with the recipe's tokens still running after 20 s", where)
	case !errors.As(err, &ee) || ee.ExitCode() != 1:
		t.Errorf("%s: keys fetch with the recipe's tokens: want exit status 1 (D-TAs unreachable), got %v:\n%s", where, err, out.Bytes())
	case strings.Contains(out.String(), "same bearer token"):
		t.Errorf("%s: milagro sends the same token to several D-TAs with the recipe's --token-file %s:\n%s", where, p.get("token-file"), out.Bytes())
	case strings.Contains(out.String(), "token"):
		t.Errorf("%s: milagro does not accept the recipe's tokens in %s:\n%s", where, p.get("token-file"), out.Bytes())
	default:
		for _, id := range dtaIDs {
			if !strings.Contains(out.String(), "D-TA "+id+":") {
				t.Errorf("%s: keys fetch with the recipe's tokens did not try D-TA %s:\n%s", where, id, out.Bytes())
			}
		}
	}
}

// installCmd is an `install` command line (coreutils or busybox).
type installCmd struct {
	dir          bool // -d: DEST... are folders to create
	mode         fs.FileMode
	owner, group string
	srcs         []string
	dests        []string // the files (with -d the folders) it creates
}

// parseInstall reads `install [-d] [-m MODE] [-o USER] [-g GROUP]
// [-t DIR] SOURCE... DEST`. A single SOURCE with a DEST that does not end
// in "/" is taken to create the file DEST, as install does unless DEST
// already is a folder: spell a folder with a trailing slash.
func parseInstall(argv []string) (*installCmd, error) {
	if len(argv) == 0 || path.Base(argv[0]) != "install" {
		return nil, fmt.Errorf("not an install command: %q", argv)
	}
	ic := &installCmd{mode: 0o755}
	var pos []string
	target := ""
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		val := func() (string, error) {
			if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "--") {
				return v, nil
			}
			if len(a) > 2 && a[1] != '-' {
				return a[2:], nil // -m0400
			}
			if i+1 == len(argv) {
				return "", fmt.Errorf("install: %s needs a value", a)
			}
			i++
			return argv[i], nil
		}
		var err error
		switch {
		case len(pos) > 0 || !strings.HasPrefix(a, "-") || a == "-":
			pos = append(pos, a)
		case a == "--":
			pos = append(pos, argv[i+1:]...)
			i = len(argv)
		case a == "-d" || a == "--directory":
			ic.dir = true
		case strings.HasPrefix(a, "-m") || strings.HasPrefix(a, "--mode"):
			var v string
			if v, err = val(); err == nil {
				var m uint64
				if m, err = strconv.ParseUint(v, 8, 32); err != nil {
					err = fmt.Errorf("install: mode %q: want an octal mode", v)
				}
				ic.mode = fs.FileMode(m)
			}
		case strings.HasPrefix(a, "-o") || strings.HasPrefix(a, "--owner"):
			ic.owner, err = val()
		case strings.HasPrefix(a, "-g") || strings.HasPrefix(a, "--group"):
			ic.group, err = val()
		case strings.HasPrefix(a, "-t") || strings.HasPrefix(a, "--target-directory"):
			target, err = val()
		case strings.Trim(a, "-cDpsv") == "":
			// Flags without a value.
		default:
			err = fmt.Errorf("install: unknown option %s", a)
		}
		if err != nil {
			return nil, err
		}
	}
	switch {
	case ic.dir:
		ic.dests = pos
	case target != "":
		ic.srcs = pos
		for _, s := range pos {
			ic.dests = append(ic.dests, path.Join(target, path.Base(s)))
		}
	case len(pos) < 2:
		return nil, fmt.Errorf("install: want SOURCE... DEST in %q", argv)
	default:
		ic.srcs = pos[:len(pos)-1]
		dest := pos[len(pos)-1]
		if len(ic.srcs) == 1 && !strings.HasSuffix(dest, "/") {
			ic.dests = []string{dest}
			break
		}
		for _, s := range ic.srcs {
			ic.dests = append(ic.dests, path.Join(dest, path.Base(s)))
		}
	}
	return ic, nil
}
