// Package mpinkex implements mpinkex v1 (PROTOCOL.md §2–6): the M-Pin
// authenticated key exchange that turns identity keys issued in shares by
// independent trust authorities into a pre-shared key for a DTLS-PSK session.
//
// It holds the message codec (Msg1..Msg4, Alert), the Client and Server
// handshakes over any io.ReadWriter, the key arithmetic (share issuance and
// sums, factors and tokens, time permits and the epoch rule) and the key
// derivation. It opens no sockets, reads no files and logs nothing: callers
// pass key material as values and get a Result or an error that names the
// failed step, while the wire carries only an Alert code.
//
// Curve work goes through package pairing; every multiplication by a secret
// scalar is constant time there. A ClientKey keeps, per server identity, B =
// H_B(server_id) and K = e(CS, B) (a secret like CS, never leaving the
// process), so that a handshake's g = K^(z+h) costs one constant-time
// exponentiation and no pairing.
package mpinkex
