package pairing

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

func TestSmokeVectors(t *testing.T) {
	raw, _ := os.ReadFile("../../shared/vectors/mpinkex-v1.json")
	var f struct{ Cases []map[string]any }
	json.Unmarshal(raw, &f)
	c := f.Cases[0]
	hx := func(k string) []byte { b, _ := hex.DecodeString(c[k].(string)); return b }
	A, _ := EncodeToG1([]byte(c["client_id"].(string)), []byte("BLS12381G1_XMD:SHA-256_SSWU_NU_MPIN"))
	ab := A.Bytes()
	if hex.EncodeToString(ab[:]) != c["A"].(string) {
		t.Fatalf("A mismatch %x", ab)
	}
	B, _ := HashToG2([]byte(c["server_id"].(string)), []byte("MPINKEX-V01-SERVER-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"))
	bb := B.Bytes()
	if hex.EncodeToString(bb[:]) != c["B"].(string) {
		t.Fatalf("B mismatch")
	}
	var cs G1
	for i, m := range c["master_shares"].([]any) {
		mb, _ := hex.DecodeString(m.(string))
		s, err := DecodeScalar(mb)
		if err != nil {
			t.Fatal(err)
		}
		sh := MulSecret(s, A)
		shb := sh.Bytes()
		if hex.EncodeToString(shb[:]) != c["client_shares"].([]any)[i].(string) {
			t.Fatalf("share %d", i)
		}
		cs = AddSecret(cs, sh)
	}
	csb := cs.Bytes()
	if hex.EncodeToString(csb[:]) != c["CS"].(string) {
		t.Fatal("CS")
	}
	_ = hx
	SS, err := DecodeG2(hx("SS"))
	if err != nil {
		t.Fatal(err)
	}
	// e(CS, Q) == e(A, SS)
	l := Pair(cs, G2Generator())
	r := Pair(A, SS)
	if !l.Equal(r) {
		t.Fatal("pairing relation")
	}
	r2 := PairPrepared(A, PrepareG2(SS))
	if !r2.Equal(r) {
		t.Fatal("prepared")
	}
	r3 := PairSecret(A, SS)
	if !r3.Equal(r) {
		t.Fatal("circl pair")
	}
	ok, err := CheckPrepared([]G1{cs.Neg(), A}, []*G2Prepared{PrepareG2(G2Generator()), PrepareG2(SS)})
	if !ok || err != nil {
		t.Fatal("check")
	}
}
