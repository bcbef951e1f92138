package mpinkex

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/milagro-sc/milagro/pairing"
)

// PSKSize is the length of the derived pre-shared key.
const PSKSize = 32

// transcriptHash returns th = SHA-256("mpinkex v1" ‖ Msg1 ‖ Msg2 ‖ Msg3).
func transcriptHash(m1, m2, m3 []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("mpinkex v1"))
	h.Write(m1)
	h.Write(m2)
	h.Write(m3)
	var th [32]byte
	h.Sum(th[:0])
	return th
}

// Result is what a successful handshake yields. PSK and the exporter secret
// are secrets: call Zeroize when done.
type Result struct {
	ClientID    string // the authenticated client identity
	ServerID    string // the authenticated server identity (from Msg2)
	PermitUsed  bool
	Epoch       uint64 // permit epoch when PermitUsed
	Layer       byte   // the record layer chosen (LayerDTLS)
	PSK         []byte // 32 bytes
	PSKIdentity string // lowercase hex of th[0:16]
	Transcript  [32]byte
	// VerdictPending is set by a client run with ClientConfig.Pipeline:
	// the server's Msg4 or Alert is still on the stream, to be read with
	// ReadVerdict before the keys are used.
	VerdictPending bool

	prk []byte
}

// deriveResult computes prk, psk and psk_identity from th, g and dh
// (PROTOCOL.md §6).
func deriveResult(res *Result, th [32]byte, g pairing.GT, dh pairing.G1, trace func(string, []byte)) error {
	gb := g.Bytes()
	db := dh.Bytes()
	ikm := make([]byte, 0, len(gb)+len(db))
	ikm = append(append(ikm, gb[:]...), db[:]...)
	if trace != nil {
		trace("g", gb[:])
		trace("dh", db[:])
	}
	clear(gb[:])
	prk, err := hkdf.Extract(sha256.New, ikm, th[:])
	clear(ikm)
	if err != nil {
		return err
	}
	psk, err := hkdf.Expand(sha256.New, prk, "mpinkex v1 psk", PSKSize)
	if err != nil {
		clear(prk)
		return err
	}
	if trace != nil {
		trace("prk", prk)
	}
	res.prk = prk
	res.PSK = psk
	res.PSKIdentity = hex.EncodeToString(th[:16])
	res.Transcript = th
	return nil
}

// Exporter returns HKDF-Expand(prk, "mpinkex v1 exporter " ‖ label, n), keying
// material bound to this handshake for uses other than the PSK.
func (r *Result) Exporter(label string, n int) ([]byte, error) {
	if r.prk == nil {
		return nil, errors.New("mpinkex: exporter of a zeroized or failed handshake")
	}
	return hkdf.Expand(sha256.New, r.prk, "mpinkex v1 exporter "+label, n)
}

// Zeroize overwrites the PSK and the exporter secret.
func (r *Result) Zeroize() {
	clear(r.PSK)
	clear(r.prk)
	r.prk = nil
}
