package psk

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/pion/dtls/v2"
	"github.com/pion/dtls/v2/pkg/crypto/ciphersuite"
	"github.com/pion/dtls/v2/pkg/crypto/prf"
	"github.com/pion/dtls/v2/pkg/protocol"
	"github.com/pion/dtls/v2/pkg/protocol/alert"
	"github.com/pion/dtls/v2/pkg/protocol/recordlayer"
)

// appRecords carries the session's epoch-1 records once the DTLS handshake
// is done: the same DTLS 1.2 records pion's Conn writes and accepts
// (RFC 6347 §4.1 header, TLS_PSK_WITH_AES_128_GCM_SHA256 as RFC 5288
// defines it), with the keys pion negotiated (derived by pion's
// pkg/crypto/prf from the master secret pion exports in its
// ConnectionState). Records are opened by pion's own record code
// (pkg/crypto/ciphersuite.GCM) and sealed with crypto/cipher's AES-GCM in
// the same construction (see seal). Nothing on the wire changes: a peer
// running pion's Conn interoperates with it (TestAppRecordsInterop).
//
// What it replaces is pion's Conn plumbing around those calls, which costs
// more than the cipher: pion/transport's connctx starts a goroutine and
// waits for it on every record read and every record write, and pion's
// read loop hands each record to Read through a channel. Here a record is
// opened on the goroutine that reads it (yamux's receive loop) and sealed on
// the one that writes it (the writer of a stream, or yamux's send loop for
// a frame that had to queue: internal/yamux's DirectWrites).
//
// Opening follows the record reader's checks (order, epoch, phase, size):
// an epoch-1 record that does not authenticate is fatal (a fatal
// bad_record_mac alert goes back, as TLS does), a close_notify is the end of
// the stream, any other alert ends the session with an *AlertError.
type appRecords struct {
	// suite and identity are what the handshake negotiated: the cipher
	// suite and the PSK identity (for tests and diagnostics).
	suite    uint16
	identity string

	rc   *recordConn
	gcm  *ciphersuite.GCM
	rerr error
	nin  uint64 // records opened (read side: one goroutine)

	wmu    sync.Mutex
	sealer cipher.AEAD
	salt   [4]byte // client_write_IV or server_write_IV (RFC 5288 §3)
	seq    uint64  // next epoch-1 sequence number to send
	werr   error

	// limit is KeyRecordLimit when the records were set up; onLimit, if
	// set, is called (once per direction) when either key has carried
	// that many records. It must not block or write.
	limit   uint64
	onLimit func()
}

// maxSeq is the last DTLS sequence number (48 bits).
const maxSeq = 1<<48 - 1

// KeyRecordLimit is how many records one direction's key carries before
// the session stops taking new streams (ErrKeyLimit; the server also sends
// GoAway), so that the connections are carried on by a new session with
// new keys: DTLS 1.2 has no rekeying, and AES-GCM's margin against
// forgery and distinguishing shrinks with the amount it encrypts (RFC 8446
// §5.5 caps TLS 1.3 at 2^24.5 full records per key). 2^24 records of up to
// 8000 bytes are 134 GB per direction. Streams already open continue; the
// hard end is the sequence number's, 2^48 records. A variable for tests.
var KeyRecordLimit uint64 = 1 << 24

// takeOver ends pion's Conn after a successful handshake and returns the
// record layer that continues from where it stopped: pion's goroutines are
// gone, and the TCP connection stays open. Secrets: psk's own copies (the
// exported master secret, the derived keys) are cleared here, but pion's
// Conn keeps its pre-master secret (which contains the PSK) and its master
// secret in unexported state until the Conn is collected — pion v2 has no
// call to wipe them, and patching it for that is not done (the gob decoder
// keeps one more copy, see stateDecoder).
func takeOver(dc *dtls.Conn, rc *recordConn, client bool) (*appRecords, error) {
	st := dc.ConnectionState()
	var es exportedState
	err := exportState(&st, &es)
	defer clear(es.MasterSecret)
	switch {
	case err != nil:
		err = fmt.Errorf("psk: export DTLS state: %w", err)
	case es.CipherSuiteID != uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256):
		err = fmt.Errorf("psk: DTLS state has cipher suite %#04x", es.CipherSuiteID)
	case es.IsClient != client || es.LocalEpoch != 1 || len(es.MasterSecret) != 48:
		err = errors.New("psk: DTLS state is not that of a finished handshake")
	}
	// Stop pion before taking its place (or on failure): its final writes
	// (close_notify) are discarded and its Close leaves the TCP connection
	// open; its goroutines end.
	rc.detach()
	_ = dc.Close()
	if err != nil {
		return nil, err
	}

	rc.wmu.Lock()
	next := rc.outNext[1]
	rc.wmu.Unlock()
	if next != es.SequenceNumber {
		return nil, fmt.Errorf("psk: pion's next sequence number %d, %d records seen", es.SequenceNumber, next)
	}

	clientRandom, serverRandom := es.LocalRandom[:], es.RemoteRandom[:]
	if !client {
		clientRandom, serverRandom = serverRandom, clientRandom
	}
	keys, err := prf.GenerateEncryptionKeys(es.MasterSecret, clientRandom, serverRandom, 0, 16, 4, sha256.New)
	if err != nil {
		return nil, fmt.Errorf("psk: record keys: %w", err)
	}
	defer clear(keys.ClientWriteKey)
	defer clear(keys.ServerWriteKey)
	defer clear(keys.MasterSecret)
	lk, liv, rk, riv := keys.ServerWriteKey, keys.ServerWriteIV, keys.ClientWriteKey, keys.ClientWriteIV
	if client {
		lk, liv, rk, riv = rk, riv, lk, liv
	}
	a, err := newAppRecords(rc, lk, liv, rk, riv, next)
	if err != nil {
		return nil, fmt.Errorf("psk: record keys: %w", err)
	}
	a.suite, a.identity = es.CipherSuiteID, string(st.IdentityHint)
	return a, nil
}

// newAppRecords is the record layer with our write key and IV salt
// (local) and the peer's (remote), sending from sequence number seq.
func newAppRecords(rc *recordConn, localKey, localIV, remoteKey, remoteIV []byte, seq uint64) (*appRecords, error) {
	// pion's GCM opens (its local half is unused); crypto/cipher's AES-GCM
	// seals (see seal).
	gcm, err := ciphersuite.NewGCM(localKey, localIV, remoteKey, remoteIV)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(localKey)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	a := &appRecords{rc: rc, gcm: gcm, sealer: aead, seq: seq, limit: KeyRecordLimit}
	copy(a.salt[:], localIV)
	return a, nil
}

// next returns the plaintext of the next application data record (valid
// until the following call), io.EOF after the peer's close_notify,
// ErrTruncated if the connection ends without one, or the error that ended
// the stream (sticky).
func (a *appRecords) next() ([]byte, error) {
	if a.rerr != nil {
		return nil, a.rerr
	}
	for {
		// Opened in place, in the record reader's buffer.
		rec, err := a.rc.readOwn(maxRecordLen)
		if err != nil {
			if err == io.EOF { // at a record boundary, but no close_notify
				err = ErrTruncated
			}
			if !isTimeout(err) {
				a.rerr = err
			}
			return nil, err
		}
		typ := rec[0]
		out, err := a.gcm.Decrypt(rec)
		if err != nil {
			a.rerr = fmt.Errorf("%w: %s record %d does not authenticate", ErrRecordRejected, typeName(typ), a.rc.rr.count.Load())
			a.rc.fail(a.rerr)
			_ = a.writeAlert(alert.Fatal, alert.BadRecordMac)
			return nil, a.rerr
		}
		if a.nin++; a.nin == a.limit && a.onLimit != nil {
			a.onLimit()
		}
		body := out[recordlayer.HeaderSize:]
		switch typ {
		case ctApplicationData:
			if len(body) == 0 {
				continue
			}
			return body, nil
		case ctAlert:
			if len(body) != 2 {
				a.rerr = badRecord("alert of %d bytes", len(body))
			} else if alert.Description(body[1]) == alert.CloseNotify {
				a.rerr = io.EOF
			} else {
				a.rerr = &AlertError{Level: body[0], Description: body[1]}
			}
		default: // the record reader lets nothing else through in epoch 1
			a.rerr = badRecord("encrypted %s record after the handshake", typeName(typ))
		}
		return nil, a.rerr
	}
}

// write seals p (at most MaxRecordPlaintext bytes) in one application data
// record and writes it.
func (a *appRecords) write(p []byte) error {
	return a.seal(protocol.ContentTypeApplicationData, p)
}

// writeAlert sends an encrypted alert (close_notify when closing, a fatal
// alert when the peer's records fail).
func (a *appRecords) writeAlert(level alert.Level, desc alert.Description) error {
	return a.seal(protocol.ContentTypeAlert, []byte{byte(level), byte(desc)})
}

// seal writes p as the next epoch-1 record of type typ: the DTLS 1.2
// GenericAEADCipher record of RFC 6347 §4.1 / RFC 5246 §6.2.3.3 with AES-GCM
// as RFC 5288 §3 defines it for TLS_PSK_WITH_AES_128_GCM_SHA256 —
//
//	header    type | 254 253 | epoch(2) | sequence(6) | length(2) = 8+len(p)+16
//	fragment  nonce_explicit(8) | AES-GCM ciphertext and tag
//	nonce     salt(4) | nonce_explicit
//	AAD       epoch(2) | sequence(6) | type | 254 253 | len(p)(2)
//
// with epoch‖sequence as nonce_explicit (RFC 5288 §3's suggestion; pion
// draws it at random), so a nonce never repeats under a key: the sequence
// number only grows and stops at 2^48−1. The cipher is crypto/cipher's
// AES-GCM; the receiver opens with pion's ciphersuite.GCM, which checks
// the whole construction (TestSealOpensWithPion, and TestAppRecordsInterop
// against pion's Conn). Sealing into a reused buffer instead of pion's
// GCM.Encrypt, which allocates twice the record per record, halves the
// CPU of bulk transfer (BenchmarkBulkRecords); the buffer is the
// connection's batch (recordConn.appendRecord), so the record is not
// copied again on its way to the socket.
func (a *appRecords) seal(typ protocol.ContentType, p []byte) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if a.werr != nil {
		return a.werr
	}
	if a.seq > maxSeq {
		a.werr = errors.New("psk: DTLS sequence numbers exhausted")
		return a.werr
	}
	if len(p) > MaxRecordPlaintext {
		return fmt.Errorf("psk: %d-byte record, at most %d", len(p), MaxRecordPlaintext)
	}
	const epoch = 1
	seqNum := uint64(epoch)<<48 | a.seq
	var nonce [12]byte
	copy(nonce[:4], a.salt[:])
	binary.BigEndian.PutUint64(nonce[4:], seqNum)
	var ad [13]byte
	binary.BigEndian.PutUint64(ad[:8], seqNum)
	ad[8], ad[9], ad[10] = byte(typ), protocol.Version1_2.Major, protocol.Version1_2.Minor
	binary.BigEndian.PutUint16(ad[11:], uint16(len(p)))

	fragment := len(nonce) - 4 + len(p) + a.sealer.Overhead()
	buf, err := a.rc.appendRecord(recordHeaderLen + fragment)
	if err != nil {
		a.werr = err
		return err
	}
	from := len(buf)
	rec := append(buf, ad[8], ad[9], ad[10])
	rec = binary.BigEndian.AppendUint64(rec, seqNum)
	rec = binary.BigEndian.AppendUint16(rec, uint16(fragment))
	rec = append(rec, nonce[4:]...)
	rec = a.sealer.Seal(rec, nonce[:], p, ad[:])
	a.seq++
	if a.seq == a.limit && a.onLimit != nil { // seq counts pion's handshake records too: a few more or less
		a.onLimit()
	}
	if err := a.rc.doneRecord(rec, from); err != nil {
		a.werr = err
		return err
	}
	return nil
}
