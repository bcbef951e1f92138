// Package psk implements the record layer "dtls" of PROTOCOL.md §7. Its one
// job: after an mpinkex handshake on a TCP connection, run a DTLS 1.2 PSK
// session on the same stream (handshake by pion/dtls/v2) and a yamux
// session on top, and
// return a Session that opens (client) or accepts (server) streams and
// knows the peer's authenticated identity.
//
// It opens no sockets, reads no files and logs nothing: the caller dials or
// accepts the TCP connection, runs mpinkex.Client or mpinkex.Server on it,
// and hands the connection and the *mpinkex.Result to Client or Server.
// Errors are returned, wrapped with context, and typed where callers
// branch (see the Err* sentinels and the error types).
//
// # Layers
//
//	TCP ── mpinkex Msg1..Msg4 ── DTLS records ── yamux frames ── streams
//
// A client that ran mpinkex with ClientConfig.Pipeline sends its first
// DTLS flight right behind Msg3 (PROTOCOL.md §5); Client then reads the
// server's Msg4 before the first record, and a refusal ends it with the
// *mpinkex.Error mpinkex.Client would have returned.
//
// The DTLS layer uses exactly TLS_PSK_WITH_AES_128_GCM_SHA256 with the
// extended master secret required, PSK identity Result.PSKIdentity and PSK
// Result.PSK; the server accepts no other identity and sends no
// HelloVerifyRequest (the TCP handshake proves reachability). The
// handshake's Finished messages confirm that both sides derived the same
// PSK, which only the holders of the client key and of the server identity
// key can: a server holding another identity key passes mpinkex and fails
// here, on both sides.
//
// pion/dtls is built for UDP. Over TCP this package adds a record reader
// that hands pion exactly one whole record per Read (pion drops records
// split across reads, and anything beyond its 8192-byte buffer), checks
// that records arrive complete, well-formed and in sequence (DTLS, unlike
// TLS, tolerates loss, replay and reordering, which over TCP can only be an
// attack), and turns every record pion would silently discard into a fatal
// error. Application data is written in records of at most
// MaxRecordPlaintext (8000) bytes.
//
// pion's Conn runs the handshake only. Once it is done, the session's
// records — the same DTLS 1.2 records on the wire, with the keys pion
// negotiated — are opened with pion's ciphersuite.GCM and sealed with
// crypto/cipher's AES-GCM on the goroutines that read and write them
// (appRecords), and pion's Conn and its goroutines end. pion's Conn would
// start a goroutine for every record it reads or writes and pass every
// record it reads through a channel: that plumbing, not the cipher, was
// most of the cost of carrying data (psk BenchmarkBulkPionConn against
// BenchmarkBulkRecords). A peer that keeps pion's Conn interoperates.
//
// # Streams
//
// The DTLS client is the yamux client and the only side that opens
// streams. Each stream starts with a header from the client,
// ver=01 | kind | str8 target, answered by one status byte from the server
// before any data: 00 ok, 01 refused by policy, 02 target unreachable.
// Open does both halves on the client; on the server Accept returns an
// IncomingStream to Accept or Reject. Streams have yamux's per-stream flow
// control; see Stream for exactly what half-close and close look like from
// each side.
//
// yamux is hashicorp/yamux v0.1.2 in internal/yamux with four opt-in
// patches that this package turns on (internal/yamux/PATCHES.md), the wire
// format untouched: a frame is written by the goroutine that sends it when
// nothing is queued, instead of always by yamux's send loop; a Read's
// window update is queued without waiting; the server acknowledges a
// stream with its status, so that opening a stream costs one TCP write
// each way (the SYN with the header, the ACK with the status); and the
// close timeout of a half-closed stream counts from the peer's last data,
// not from this side's FIN. Upstream's
// hand-off to the send loop, and package proxy's to a copier goroutine
// (which Stream.Buffered and NotifyReadable now let it skip), were the
// whole of the warm latency and CPU gap per message to a crypto/tls proxy
// pair.
package psk
