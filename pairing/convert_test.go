package pairing

import "testing"

// TestFastConversion pins the layout-based gnark→circl conversion: if a
// library update changes either representation, the start-up self-test
// disables it (results stay correct, handshakes get ~0.2 ms slower) and this
// test says so.
func TestFastConversion(t *testing.T) {
	if !fastConvert {
		t.Fatal("gnark-crypto→circl layout self-test failed: conversions fall back to circl's checked SetBytes; re-check convert.go against the library versions in go.mod")
	}
	for i := range 20 {
		p, err := EncodeToG1([]byte{byte(i)}, []byte("convert-test"))
		if err != nil {
			t.Fatal(err)
		}
		fast, slow := g1Fast(&p.g), g1Checked(&p.g)
		if !fast.IsEqual(&slow) {
			t.Fatalf("G1 point %d: fast and checked conversions differ", i)
		}
		q, err := HashToG2([]byte{byte(i)}, []byte("convert-test"))
		if err != nil {
			t.Fatal(err)
		}
		f2, s2 := g2Fast(&q.g), g2Checked(&q.g)
		if !f2.IsEqual(&s2) {
			t.Fatalf("G2 point %d: fast and checked conversions differ", i)
		}
	}
}
