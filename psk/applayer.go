package psk

import (
	"bytes"
	"crypto/sha256"
	"encoding/gob"
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
// is done: the same DTLS 1.2 records pion's Conn would write and accept
// (RFC 6347 §4.1 header, TLS_PSK_WITH_AES_128_GCM_SHA256 with pion's
// 8-byte random explicit nonce, RFC 5246 AEAD additional data), sealed and
// opened by pion's own record code (pkg/protocol/recordlayer,
// pkg/crypto/ciphersuite.GCM) with the keys pion negotiated (derived by
// pion's pkg/crypto/prf from the master secret pion exports in its
// ConnectionState). Nothing on the wire changes: a peer running pion's Conn
// interoperates with it (TestAppRecordsInterop).
//
// What it replaces is pion's Conn plumbing around those calls, which costs
// more than the cipher: pion/transport's connctx starts a goroutine and
// waits for it on every record read and every record write, and pion's
// read loop hands each record to Read through a channel. Here a record is
// opened on the goroutine that reads it (yamux's receive loop) and sealed on
// the one that writes it (yamux's send loop).
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
	rbuf []byte
	rerr error

	wmu  sync.Mutex
	seq  uint64 // next epoch-1 sequence number to send
	wbuf []byte // header and plaintext of the record being sealed
	werr error
}

// maxSeq is the last DTLS sequence number (48 bits).
const maxSeq = 1<<48 - 1

// exportedState holds the fields of pion's ConnectionState serialization
// (dtls.State.MarshalBinary, a gob of its serializedState) that the record
// keys come from; gob matches fields by name and ignores the others.
type exportedState struct {
	LocalEpoch     uint16
	LocalRandom    [32]byte
	RemoteRandom   [32]byte
	CipherSuiteID  uint16
	MasterSecret   []byte
	SequenceNumber uint64
	IsClient       bool
}

// takeOver ends pion's Conn after a successful handshake and returns the
// record layer that continues from where it stopped: pion's goroutines are
// gone, and the TCP connection stays open.
func takeOver(dc *dtls.Conn, rc *recordConn, client bool) (*appRecords, error) {
	st := dc.ConnectionState()
	blob, err := st.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("psk: export DTLS state: %w", err)
	}
	var es exportedState
	err = gob.NewDecoder(bytes.NewReader(blob)).Decode(&es)
	clear(blob)
	defer clear(es.MasterSecret)
	switch {
	case err != nil:
		return nil, fmt.Errorf("psk: export DTLS state: %w", err)
	case es.CipherSuiteID != uint16(dtls.TLS_PSK_WITH_AES_128_GCM_SHA256):
		return nil, fmt.Errorf("psk: DTLS state has cipher suite %#04x", es.CipherSuiteID)
	case es.IsClient != client || es.LocalEpoch != 1 || len(es.MasterSecret) != 48:
		return nil, errors.New("psk: DTLS state is not that of a finished handshake")
	}
	// Stop pion before taking its place: its final writes (close_notify)
	// are discarded and its Close leaves the TCP connection open.
	rc.detach()
	_ = dc.Close()

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
	var gcm *ciphersuite.GCM
	if client {
		gcm, err = ciphersuite.NewGCM(keys.ClientWriteKey, keys.ClientWriteIV, keys.ServerWriteKey, keys.ServerWriteIV)
	} else {
		gcm, err = ciphersuite.NewGCM(keys.ServerWriteKey, keys.ServerWriteIV, keys.ClientWriteKey, keys.ClientWriteIV)
	}
	if err != nil {
		return nil, fmt.Errorf("psk: record keys: %w", err)
	}
	return &appRecords{suite: es.CipherSuiteID, identity: string(st.IdentityHint), rc: rc, gcm: gcm, seq: next, rbuf: make([]byte, maxRecordLen)}, nil
}

// next returns the plaintext of the next application data record (valid
// until the following call), io.EOF after the peer's close_notify, or the
// error that ended the stream (sticky).
func (a *appRecords) next() ([]byte, error) {
	if a.rerr != nil {
		return nil, a.rerr
	}
	for {
		n, err := a.rc.readOwn(a.rbuf)
		if err != nil {
			if !isTimeout(err) {
				a.rerr = err
			}
			return nil, err
		}
		typ := a.rbuf[0]
		out, err := a.gcm.Decrypt(a.rbuf[:n])
		if err != nil {
			a.rerr = fmt.Errorf("%w: %s record %d does not authenticate", ErrRecordRejected, typeName(typ), a.rc.rr.count.Load())
			a.rc.fail(a.rerr)
			_ = a.writeAlert(alert.Fatal, alert.BadRecordMac)
			return nil, a.rerr
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
	h := recordlayer.Header{ContentType: typ, Version: protocol.Version1_2, Epoch: 1, SequenceNumber: a.seq, ContentLen: uint16(len(p))}
	raw, err := h.Marshal()
	if err != nil {
		a.werr = fmt.Errorf("psk: record header: %w", err)
		return a.werr
	}
	a.wbuf = append(append(a.wbuf[:0], raw...), p...)
	rec, err := a.gcm.Encrypt(&recordlayer.RecordLayer{Header: h}, a.wbuf)
	clear(a.wbuf)
	if err != nil {
		a.werr = fmt.Errorf("psk: seal record: %w", err)
		return a.werr
	}
	a.seq++
	if _, err := a.rc.write(rec); err != nil {
		a.werr = err
		return err
	}
	return nil
}
