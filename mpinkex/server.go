package mpinkex

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/milagro-sc/milagro/pairing"
)

// ServerKey is one server identity with its key material prepared for
// handshakes: SK = s·H_B(ID) and the domain server share SS = s·Q. It is
// immutable and safe for concurrent use.
type ServerKey struct {
	id string
	ss *pairing.G2Prepared
	sk *pairing.G2Prepared
}

// NewServerKey checks and prepares a server's keys: SS = s·Q, the domain
// server share sum, and SK = s·H_B(id), the server identity key (about
// 0.5 ms; do it once per key load). Whether SS and SK come from the same
// master secret cannot be checked from public values alone; a handshake
// against a client key of the same domain (the keys check of package dta)
// catches a mismatch.
func NewServerKey(id string, ss, sk pairing.G2) (*ServerKey, error) {
	if err := ValidateID(id); err != nil {
		return nil, fmt.Errorf("%w: server identity: %w", ErrConfig, err)
	}
	if ss.IsIdentity() || sk.IsIdentity() {
		return nil, fmt.Errorf("%w: identity key", ErrConfig)
	}
	return &ServerKey{id: id, ss: pairing.PrepareG2(ss), sk: pairing.PrepareG2(sk)}, nil
}

// ID returns the server identity the key proves.
func (k *ServerKey) ID() string { return k.id }

// Authorizer decides whether an authenticated client identity may connect.
type Authorizer func(clientID string) error

// ServerConfig configures the server side of the handshake.
type ServerConfig struct {
	// Keys are the identities this server can prove; the first is the
	// default for a Msg1 with an empty server_id. Required.
	Keys []*ServerKey
	// Authorize is the authorisation policy, applied after the client is
	// authenticated. Required: a server with no policy refuses to run.
	Authorize Authorizer
	// RequirePermit rejects clients that send no time permit.
	RequirePermit bool
	// EpochLen is the domain's epoch length (default 86400 s); Grace is how
	// close to an epoch boundary the adjacent epoch is still accepted
	// (default 300 s; negative means 0).
	EpochLen, Grace time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Rand is the source of y and w (default crypto/rand.Reader).
	Rand io.Reader
	// StepTimeout bounds each read and write (default 10 s).
	StepTimeout time.Duration

	// trace, set by tests only, sees intermediate values.
	trace func(name string, v []byte)
}

var gen2 = pairing.PrepareG2(pairing.G2Generator())

// Server runs the server side of the handshake on rw. On success Msg4 has
// been sent and the stream is positioned at the first byte after Msg3
// (the client's first record-layer flight may follow). On failure one Alert
// has been sent where the protocol says so and rw should be closed; the
// returned *Error says which step failed, never on the wire.
func Server(ctx context.Context, rw io.ReadWriter, cfg *ServerConfig) (*Result, error) {
	st := newStepper(ctx, rw, cfg.StepTimeout)
	defer func() { _ = st.close() }()
	var claimed string // Msg1's client identity, once parsed
	fail := func(step string, err error, send bool) (*Result, error) {
		e := &Error{Role: "server", Step: step, Err: err, ClaimedID: claimed}
		if send {
			e.Alert = alertFor(err)
			_ = st.write((&Alert{Code: e.Alert}).Marshal())
		}
		return nil, e
	}
	if len(cfg.Keys) == 0 || cfg.Authorize == nil {
		return fail("config", fmt.Errorf("%w: server needs keys and an authorisation policy", ErrConfig), false)
	}
	now, epochLen, grace := timeSettings(cfg.Now, cfg.EpochLen, cfg.Grace)
	rnd := cfg.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	trace := cfg.trace

	// Msg1.
	raw1, err := st.read()
	if err != nil {
		return fail("read Msg1", err, errors.Is(err, ErrDecode))
	}
	m, err := ParseMessage(raw1)
	if err != nil {
		return fail("parse Msg1", err, true)
	}
	m1, ok := m.(*Msg1)
	if !ok {
		return fail("parse Msg1", decodeErr("got %T, want Msg1", m), true)
	}
	claimed = m1.ClientID
	key := cfg.Keys[0]
	if m1.ServerID != "" {
		key = nil
		for _, k := range cfg.Keys {
			if k.id == m1.ServerID {
				key = k
				break
			}
		}
		if key == nil {
			return fail("select identity", fmt.Errorf("%w: client asked for %q", ErrServerID, m1.ServerID), true)
		}
	}
	if m1.Layers&LayerDTLS == 0 {
		return fail("select layer", fmt.Errorf("%w: client offers %#02x", ErrLayer, m1.Layers), true)
	}
	permit := m1.Flags&FlagPermit != 0
	if !permit && cfg.RequirePermit {
		return fail("check epoch", fmt.Errorf("%w: no time permit, and this server requires one", ErrEpoch), true)
	}
	if permit {
		ok, err := AcceptEpoch(m1.Epoch, now(), epochLen, grace)
		if err != nil {
			return fail("check epoch", err, true)
		}
		if !ok {
			return fail("check epoch", fmt.Errorf("%w: permit for epoch %d", ErrEpoch, m1.Epoch), true)
		}
	}

	// A, A'.
	a, err := HashClientID(m1.ClientID)
	if err != nil {
		return fail("hash client identity", err, true)
	}
	a = a.Cached()
	aPrime := a
	if permit {
		at, err := HashPermit(m1.ClientID, m1.Epoch)
		if err != nil {
			return fail("hash permit", err, true)
		}
		aPrime = pairing.AddSecret(a, at).Cached()
		if trace != nil {
			b := at.Bytes()
			trace("AT", b[:])
		}
	}
	if trace != nil {
		b := a.Bytes()
		trace("A", b[:])
	}

	// Msg2.
	y, err := pairing.RandomScalar(rnd)
	if err != nil {
		return fail("draw y", err, false)
	}
	w, err := pairing.RandomScalar(rnd)
	if err != nil {
		return fail("draw w", err, false)
	}
	defer w.Zeroize()
	m2 := &Msg2{Layer: LayerDTLS, ServerID: key.id, Y: y, W: pairing.MulSecret(w, aPrime)}
	raw2 := m2.Marshal()
	if err := st.write(raw2); err != nil {
		return fail("write Msg2", err, false)
	}

	// Msg3.
	raw3, err := st.read()
	if err != nil {
		return fail("read Msg3", err, errors.Is(err, ErrDecode))
	}
	m, err = ParseMessage(raw3)
	if err != nil {
		return fail("parse Msg3", err, true)
	}
	m3, ok := m.(*Msg3)
	if !ok {
		return fail("parse Msg3", decodeErr("got %T, want Msg3", m), true)
	}

	// e(V, Q) · e(U' + y·A', SS) == 1.
	uy := pairing.AddPublic(m1.UPrime, pairing.MulPublic(y, aPrime))
	if uy.IsIdentity() {
		return fail("verify client", fmt.Errorf("%w: U' + y·A' is the identity", ErrAuth), true)
	}
	ok, err = pairing.CheckPrepared([]pairing.G1{m3.V, uy}, []*pairing.G2Prepared{gen2, key.ss})
	if err != nil {
		return fail("verify client", err, true)
	}
	if !ok {
		return fail("verify client", fmt.Errorf("%w: pairing check failed for %q", ErrAuth, m1.ClientID), true)
	}
	if err := cfg.Authorize(m1.ClientID); err != nil {
		return fail("authorise client", fmt.Errorf("%w: %q: %w", ErrPolicy, m1.ClientID, err), true)
	}

	// Keys: g = e(R + h·A, SK), dh = w·U'.
	th := transcriptHash(raw1, raw2, raw3)
	h := pairing.ReduceScalar(th[:])
	if trace != nil {
		trace("th", th[:])
		hb := h.Bytes()
		trace("h", hb[:])
	}
	p := pairing.AddPublic(m1.R, pairing.MulPublic(h, a))
	if p.IsIdentity() {
		return fail("derive key", fmt.Errorf("%w: R + h·A is the identity", ErrAuth), true)
	}
	g := pairing.PairPrepared(p, key.sk)
	dh := pairing.MulSecret(w, m1.UPrime)
	res := &Result{ClientID: m1.ClientID, ServerID: key.id, PermitUsed: permit, Layer: LayerDTLS}
	if permit {
		res.Epoch = m1.Epoch
	}
	err = deriveResult(res, th, g, dh, trace)
	g.Zeroize()
	dh.Zeroize()
	if err != nil {
		return fail("derive key", err, true)
	}
	if err := st.write((&Msg4{}).Marshal()); err != nil {
		res.Zeroize()
		return fail("write Msg4", err, false)
	}
	if err := st.close(); err != nil {
		res.Zeroize()
		return fail("finish", err, false)
	}
	return res, nil
}
