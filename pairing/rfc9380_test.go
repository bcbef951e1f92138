package pairing

// RFC 9380 Appendix J.9 and J.10 test vectors (see
// testdata/rfc9380/README.md): HashToG1, EncodeToG1, HashToG2 and EncodeToG2
// must reproduce every point P.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
)

type rfcPoint struct {
	X string `json:"x"`
	Y string `json:"y"`
}

type rfcSuite struct {
	Ciphersuite  string `json:"ciphersuite"`
	Curve        string `json:"curve"`
	DST          string `json:"dst"`
	RandomOracle bool   `json:"randomOracle"`
	Field        struct {
		M string `json:"m"`
		P string `json:"p"`
	} `json:"field"`
	Vectors []struct {
		P   rfcPoint `json:"P"`
		Msg string   `json:"msg"`
	} `json:"vectors"`
}

// rfcFiles names the four suites and the function under test for each.
var rfcFiles = []struct {
	file, suite string
	g2, ro      bool
}{
	{"BLS12381G1_XMD-SHA-256_SSWU_RO_.json", "BLS12381G1_XMD:SHA-256_SSWU_RO_", false, true},
	{"BLS12381G1_XMD-SHA-256_SSWU_NU_.json", "BLS12381G1_XMD:SHA-256_SSWU_NU_", false, false},
	{"BLS12381G2_XMD-SHA-256_SSWU_RO_.json", "BLS12381G2_XMD:SHA-256_SSWU_RO_", true, true},
	{"BLS12381G2_XMD-SHA-256_SSWU_NU_.json", "BLS12381G2_XMD:SHA-256_SSWU_NU_", true, false},
}

// rfcMessages are the five messages of RFC 9380 Appendix J.
var rfcMessages = []string{
	"",
	"abc",
	"abcdef0123456789",
	"q128_" + strings.Repeat("q", 128),
	"a512_" + strings.Repeat("a", 512),
}

// fpHex parses one "0x…" field element, which must be canonical.
func fpHex(t testing.TB, s string) *big.Int {
	t.Helper()
	h, ok := strings.CutPrefix(s, "0x")
	if !ok {
		t.Fatalf("field element %q without 0x", s)
	}
	v, ok := new(big.Int).SetString(h, 16)
	if !ok || v.Cmp(pBig) >= 0 {
		t.Fatalf("bad field element %q", s)
	}
	return v
}

// largest reports whether y > (p−1)/2, the Zcash sign of a G1 y.
func largest(y *big.Int) bool {
	half := new(big.Int).Rsh(pBig, 1) // (p−1)/2
	return y.Cmp(half) > 0
}

// expectedCompressed builds the Zcash compressed encoding from the vector's
// affine coordinates. G1: x ‖ flags; G2: x.c1 ‖ x.c0, with the sign of
// y taken from y.c1, or from y.c0 when y.c1 = 0.
func expectedCompressed(t testing.TB, p rfcPoint, g2 bool) []byte {
	t.Helper()
	xs, ys := strings.Split(p.X, ","), strings.Split(p.Y, ",")
	want := 1
	if g2 {
		want = 2
	}
	if len(xs) != want || len(ys) != want {
		t.Fatalf("point %v has the wrong number of coordinates", p)
	}
	var out []byte
	var sign bool
	if g2 {
		x0, x1 := fpHex(t, xs[0]), fpHex(t, xs[1])
		y0, y1 := fpHex(t, ys[0]), fpHex(t, ys[1])
		out = append(x1.FillBytes(make([]byte, fpSize)), x0.FillBytes(make([]byte, fpSize))...)
		sign = largest(y1) || (y1.Sign() == 0 && largest(y0))
	} else {
		out = fpHex(t, xs[0]).FillBytes(make([]byte, fpSize))
		sign = largest(fpHex(t, ys[0]))
	}
	out[0] |= 0x80
	if sign {
		out[0] |= 0x20
	}
	return out
}

// affineMatches decodes got with gnark-crypto and compares both affine
// coordinates with the vector.
func affineMatches(t testing.TB, got []byte, p rfcPoint, g2 bool) bool {
	t.Helper()
	eq := func(e interface{ BigInt(*big.Int) *big.Int }, s string) bool {
		return e.BigInt(new(big.Int)).Cmp(fpHex(t, s)) == 0
	}
	xs, ys := strings.Split(p.X, ","), strings.Split(p.Y, ",")
	if g2 {
		var q gb.G2Affine
		if _, err := q.SetBytes(got); err != nil {
			t.Errorf("gnark-crypto cannot decode %x: %v", got, err)
			return false
		}
		return eq(&q.X.A0, xs[0]) && eq(&q.X.A1, xs[1]) && eq(&q.Y.A0, ys[0]) && eq(&q.Y.A1, ys[1])
	}
	var q gb.G1Affine
	if _, err := q.SetBytes(got); err != nil {
		t.Errorf("gnark-crypto cannot decode %x: %v", got, err)
		return false
	}
	return eq(&q.X, xs[0]) && eq(&q.Y, ys[0])
}

// hashFor returns the package function of a suite.
func hashFor(g2, ro bool) func(msg, dst []byte) ([]byte, error) {
	switch {
	case !g2 && ro:
		return func(m, d []byte) ([]byte, error) { p, err := HashToG1(m, d); b := p.Bytes(); return b[:], err }
	case !g2:
		return func(m, d []byte) ([]byte, error) { p, err := EncodeToG1(m, d); b := p.Bytes(); return b[:], err }
	case ro:
		return func(m, d []byte) ([]byte, error) { p, err := HashToG2(m, d); b := p.Bytes(); return b[:], err }
	default:
		return func(m, d []byte) ([]byte, error) { p, err := EncodeToG2(m, d); b := p.Bytes(); return b[:], err }
	}
}

func loadRFCSuite(t testing.TB, file string) rfcSuite {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "rfc9380", file))
	if err != nil {
		t.Fatal(err)
	}
	var s rfcSuite
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return s
}

func TestRFC9380Vectors(t *testing.T) {
	for _, f := range rfcFiles {
		t.Run(f.suite, func(t *testing.T) {
			s := loadRFCSuite(t, f.file)
			// The file is the suite we think it is.
			m := "0x1"
			if f.g2 {
				m = "0x2"
			}
			if s.Ciphersuite != f.suite || s.DST != "QUUX-V01-CS02-with-"+f.suite || s.RandomOracle != f.ro ||
				s.Field.M != m || s.Field.P != "0x"+pBig.Text(16) {
				t.Fatalf("%s: unexpected suite header %q %q ro=%v m=%s", f.file, s.Ciphersuite, s.DST, s.RandomOracle, s.Field.M)
			}
			if len(s.Vectors) != len(rfcMessages) {
				t.Fatalf("%d vectors, want %d", len(s.Vectors), len(rfcMessages))
			}
			hash := hashFor(f.g2, f.ro)
			for i, v := range s.Vectors {
				if v.Msg != rfcMessages[i] {
					t.Fatalf("vector %d: message %.20q, want %.20q", i, v.Msg, rfcMessages[i])
				}
				got, err := hash([]byte(v.Msg), []byte(s.DST))
				if err != nil {
					t.Fatalf("vector %d: %v", i, err)
				}
				want := expectedCompressed(t, v.P, f.g2)
				if !bytes.Equal(got, want) {
					t.Errorf("vector %d (msg %.20q):\n got  %x\n want %x", i, v.Msg, got, want)
				}
				if !affineMatches(t, got, v.P, f.g2) {
					t.Errorf("vector %d (msg %.20q): affine coordinates differ from P", i, v.Msg)
				}
			}
		})
	}
}

// TestRFC9380Detects checks that the comparison above can fail: a point for
// another message, a flipped sign, or a changed coordinate is a mismatch.
func TestRFC9380Detects(t *testing.T) {
	for _, f := range rfcFiles {
		s := loadRFCSuite(t, f.file)
		hash := hashFor(f.g2, f.ro)
		v0, v1 := s.Vectors[0], s.Vectors[1]
		got, err := hash([]byte(v1.Msg), []byte(s.DST))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, expectedCompressed(t, v0.P, f.g2)) || affineMatches(t, got, v0.P, f.g2) {
			t.Errorf("%s: the point of message 1 matches vector 0", f.suite)
		}
		// Same x, other y: only the sign flag differs, and it is caught.
		neg := bytes.Clone(got)
		neg[0] ^= 0x20
		if bytes.Equal(neg, expectedCompressed(t, v1.P, f.g2)) || affineMatches(t, neg, v1.P, f.g2) {
			t.Errorf("%s: −P matches P", f.suite)
		}
		// A wrong DST gives another point.
		got, err = hash([]byte(v1.Msg), []byte(s.DST+"X"))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, expectedCompressed(t, v1.P, f.g2)) {
			t.Errorf("%s: the DST is ignored", f.suite)
		}
		// A changed coordinate in the vector is a mismatch.
		p := v1.P
		x := strings.Split(p.X, ",")
		v := fpHex(t, x[0])
		x[0] = fmt.Sprintf("0x%096x", v.Add(v, big.NewInt(1)).Mod(v, pBig))
		p.X = strings.Join(x, ",")
		got, _ = hash([]byte(v1.Msg), []byte(s.DST))
		if bytes.Equal(got, expectedCompressed(t, p, f.g2)) || affineMatches(t, got, p, f.g2) {
			t.Errorf("%s: a changed x still matches", f.suite)
		}
	}
}
