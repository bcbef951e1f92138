package sidecar

// Real key material for the sidecar tests: three D-TAs made with dta.Init
// (plaintext master shares in temporary folders), envelopes from
// Authority.Issue, key directories written with keydir.Write, exactly as
// `milagro keys fetch` writes them.

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

const (
	fxDomain   = "test.example"
	fxClientID = "spiffe://test.example/ns/web/sa/frontend"
	fxServerID = "spiffe://test.example/ns/pay/sa/api"
	fxOtherID  = "spiffe://test.example/ns/web/sa/other"
)

var (
	clientKinds = []keydir.Kind{keydir.KindClient, keydir.KindPermit}
	serverKinds = []keydir.Kind{keydir.KindServer, keydir.KindDomain}
)

// keyFixture is a trust domain of D-TAs that issue in process.
type keyFixture struct {
	dom   *keydir.Domain
	auths []*dta.Authority
}

var (
	fxOnce    sync.Once
	fxShared  *keyFixture
	fxErr     error
	fxBaseDir string
)

// sharedKeys returns one domain for the whole package (D-TA creation is the
// slow part).
func sharedKeys(t testing.TB) *keyFixture {
	t.Helper()
	fxOnce.Do(func() {
		fxBaseDir, fxErr = os.MkdirTemp("", "sidecar-dtas-")
		if fxErr == nil {
			fxShared, fxErr = newKeyFixture(fxBaseDir, 86400)
		}
	})
	if fxErr != nil {
		t.Fatal(fxErr)
	}
	return fxShared
}

// newKeyFixture creates three D-TAs of fxDomain in base.
func newKeyFixture(base string, epochLen uint64) (*keyFixture, error) {
	f := &keyFixture{dom: &keydir.Domain{Name: fxDomain, EpochLen: epochLen}}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("dta-%d", i)
		dir := filepath.Join(base, id)
		if _, err := dta.Init(dta.InitOptions{Dir: dir, ID: id, Domain: fxDomain, EpochLen: epochLen, Plaintext: true}); err != nil {
			return nil, err
		}
		a, err := dta.Open(dir, dta.OpenOptions{})
		if err != nil {
			return nil, err
		}
		f.auths = append(f.auths, a)
		f.dom.DTAs = append(f.dom.DTAs, a.DomainEntry(fmt.Sprintf("https://dta-%d.test.example/", i)))
	}
	return f, f.dom.Validate()
}

func (f *keyFixture) epochs(t testing.TB) []uint64 {
	t.Helper()
	cur, err := mpinkex.Epoch(time.Now(), time.Duration(f.dom.EpochLen)*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return []uint64{cur, cur + 1}
}

// files issues kinds for identity from every D-TA: the files of a key
// directory (domain.json and one envelope per D-TA).
func (f *keyFixture) files(t testing.TB, identity string, kinds []keydir.Kind) map[string][]byte {
	t.Helper()
	var epochs []uint64
	for _, k := range kinds {
		if k == keydir.KindPermit {
			epochs = f.epochs(t)
		}
	}
	out := map[string][]byte{keydir.DomainFile: f.dom.Marshal()}
	for _, a := range f.auths {
		env, err := a.Issue(identity, kinds, epochs, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		out[keydir.EnvelopeFile(a.Info.ID)] = env.Marshal()
	}
	return out
}

// write installs files as a new generation of dir and returns it.
func writeKeys(t testing.TB, dir string, files map[string][]byte) string {
	t.Helper()
	gen, err := keydir.Write(dir, files)
	if err != nil {
		t.Fatal(err)
	}
	return gen
}

// clientDir and serverDir write fresh sets into new folders.
func (f *keyFixture) clientDir(t testing.TB, identity string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, dir, f.files(t, identity, clientKinds))
	return dir
}

func (f *keyFixture) serverDir(t testing.TB, identity string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, dir, f.files(t, identity, serverKinds))
	return dir
}

// tamper returns files with D-TA 2's envelope signature broken.
func tamper(t testing.TB, files map[string][]byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for k, v := range files {
		out[k] = v
	}
	name := keydir.EnvelopeFile("dta-2")
	env, err := keydir.ParseEnvelope(out[name])
	if err != nil {
		t.Fatal(err)
	}
	env.Signature[0] ^= 0x01
	out[name] = env.Marshal()
	return out
}

// testLog is a logger that writes into the test log.
func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
}

// TestMain removes the shared domain's folder (it holds the D-TAs' master
// shares) once the package's tests are done.
func TestMain(m *testing.M) {
	code := m.Run()
	if fxBaseDir != "" {
		os.RemoveAll(fxBaseDir)
	}
	os.Exit(code)
}
