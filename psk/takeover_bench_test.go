package psk

import "testing"

// BenchmarkExportState is the part of takeOver that reads pion's state:
// ConnectionState, MarshalBinary (gob) and the decode of its fields, with
// the process's shared decoder (exportState) and with a new gob.Decoder per
// blob (fresh-decoder, as takeOver did before).
func BenchmarkExportState(b *testing.B) {
	cli, _, _, _ := handshakePair(b, false, false)
	b.Run("shared-decoder", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st := cli.ConnectionState()
			var es exportedState
			if err := exportState(&st, &es); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fresh-decoder", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st := cli.ConnectionState()
			blob, err := st.MarshalBinary()
			if err != nil {
				b.Fatal(err)
			}
			_ = freshDecode(b, blob)
		}
	})
}
