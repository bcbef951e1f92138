package psk

import (
	"bytes"
	"encoding/gob"
	"testing"
)

// BenchmarkExportState is the part of takeOver that reads pion's state:
// ConnectionState, MarshalBinary (gob) and the decode of its fields.
func BenchmarkExportState(b *testing.B) {
	cli, _, _, _ := handshakePair(b, false, false)
	for b.Loop() {
		st := cli.ConnectionState()
		blob, err := st.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		var es exportedState
		if err := gob.NewDecoder(bytes.NewReader(blob)).Decode(&es); err != nil {
			b.Fatal(err)
		}
	}
}
