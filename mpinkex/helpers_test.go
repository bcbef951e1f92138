package mpinkex

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	gb "github.com/consensys/gnark-crypto/ecc/bls12-381"
	"github.com/consensys/gnark-crypto/ecc/bls12-381/fp"

	"github.com/milagro-sc/milagro/pairing"
)

// Shared test fixtures: fresh key sets issued by three D-TAs from
// crypto/rand master shares (never the vector file), harnesses that run the
// real Client or Server against a scripted peer, and encodings of bad points
// and scalars.

const (
	fxClientID = "spiffe://test.example/ns/web/sa/frontend"
	fxServerID = "spiffe://test.example/ns/pay/sa/api"
)

// fxNow is the fixture clock: the middle of epoch 20415 of the default
// 86400 s epoch length.
var fxNow = time.Unix(20415*86400+43200, 0)

// fxEpoch is the current epoch at fxNow with the default epoch length.
const fxEpoch = 20415

func clock(t time.Time) func() time.Time { return func() time.Time { return t } }

func allowAll(string) error { return nil }

// fxDomain is one trust domain: N master shares and the whole keys they
// issue for one client and one server identity.
type fxDomain struct {
	masters            []*MasterShare
	clientID, serverID string
	a                  pairing.G1 // H_A(clientID), public
	cs                 pairing.G1 // CS
	sk, ss             pairing.G2 // SK for serverID, SS
	ck                 *ClientKey
	key                *ServerKey
}

// newDomain issues a fresh domain of n D-TAs for clientID and serverID.
func newDomain(t testing.TB, n int, clientID, serverID string) *fxDomain {
	t.Helper()
	d := &fxDomain{clientID: clientID, serverID: serverID}
	for range n {
		m, err := NewMasterShare(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		d.masters = append(d.masters, m)
	}
	var err error
	if d.a, err = HashClientID(clientID); err != nil {
		t.Fatal(err)
	}
	d.cs = d.clientKeyPoint(t, clientID)
	d.sk = d.serverKeyPoint(t, serverID)
	var ss []pairing.G2
	for _, m := range d.masters {
		ss = append(ss, m.DomainShare())
	}
	if d.ss, err = SumG2(ss...); err != nil {
		t.Fatal(err)
	}
	if d.ck, err = NewClientKey(clientID, d.cs); err != nil {
		t.Fatal(err)
	}
	if d.key, err = NewServerKey(serverID, d.ss, d.sk); err != nil {
		t.Fatal(err)
	}
	return d
}

// clientKeyPoint returns CS for id: the sum of every D-TA's client share.
func (d *fxDomain) clientKeyPoint(t testing.TB, id string) pairing.G1 {
	t.Helper()
	var shares []pairing.G1
	for _, m := range d.masters {
		p, err := m.ClientShare(id)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, p)
	}
	cs, err := SumG1(shares...)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// serverKeyPoint returns SK for id.
func (d *fxDomain) serverKeyPoint(t testing.TB, id string) pairing.G2 {
	t.Helper()
	var shares []pairing.G2
	for _, m := range d.masters {
		p, err := m.ServerShare(id)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, p)
	}
	sk, err := SumG2(shares...)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

// permit issues the whole time permit of the domain's client for epoch.
func (d *fxDomain) permit(t testing.TB, epoch uint64) Permit {
	t.Helper()
	var shares []pairing.G1
	for _, m := range d.masters {
		p, err := m.PermitShare(d.clientID, epoch)
		if err != nil {
			t.Fatal(err)
		}
		shares = append(shares, p)
	}
	tp, err := SumG1(shares...)
	if err != nil {
		t.Fatal(err)
	}
	return Permit{Epoch: epoch, TP: tp}
}

// serverKey returns a ServerKey of this domain for another identity.
func (d *fxDomain) serverKey(t testing.TB, id string) *ServerKey {
	t.Helper()
	k, err := NewServerKey(id, d.ss, d.serverKeyPoint(t, id))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// clientConfig is an honest client of d at fxNow, without a permit.
func (d *fxDomain) clientConfig() *ClientConfig {
	return &ClientConfig{Key: d.ck, ServerID: d.serverID, Now: clock(fxNow), StepTimeout: 5 * time.Second}
}

// serverConfig is a server of d at fxNow that authorises everyone.
func (d *fxDomain) serverConfig() *ServerConfig {
	return &ServerConfig{Keys: []*ServerKey{d.key}, Authorize: allowAll, Now: clock(fxNow), StepTimeout: 5 * time.Second}
}

var (
	sharedOnce sync.Once
	shared     *fxDomain
)

// sharedDomain is one domain reused by the tests that need no particular
// key set, to keep the suite fast. If issuing it fails, the test that
// started it fails and every later caller fails too.
func sharedDomain(t testing.TB) *fxDomain {
	t.Helper()
	sharedOnce.Do(func() { shared = newDomain(t, 3, fxClientID, fxServerID) })
	if shared == nil {
		t.Fatal("shared test domain could not be issued")
	}
	return shared
}

// fxStream is a one-way scripted peer: the handshake reads a fixed byte
// string and everything it writes is kept.
type fxStream struct {
	io.Reader
	out bytes.Buffer
}

func (s *fxStream) Write(b []byte) (int, error) { return s.out.Write(b) }

// serveStream runs the real Server on a fixed client stream. It returns the
// server's result, the messages it wrote, its trace and its error.
func serveStream(t testing.TB, cfg *ServerConfig, in []byte) (*Result, []Message, *traceLog, error) {
	t.Helper()
	tr := &traceLog{}
	cfg.trace = tr.hook
	s := &fxStream{Reader: bytes.NewReader(in)}
	res, err := Server(context.Background(), s, cfg)
	return res, parseFrames(t, s.out.Bytes()), tr, err
}

// parseFrames splits a stream into messages, all of which must be well
// formed.
func parseFrames(t testing.TB, b []byte) []Message {
	t.Helper()
	var out []Message
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		raw, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("frame written by the handshake: %v", err)
		}
		m, err := ParseMessage(raw)
		if err != nil {
			t.Fatalf("message written by the handshake: %v", err)
		}
		out = append(out, m)
	}
	return out
}

func frame(msg []byte) []byte {
	var b bytes.Buffer
	if err := WriteFrame(&b, msg); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// concatFrames frames each message and joins them.
func concatFrames(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = append(b, frame(m)...)
	}
	return b
}

// serverRun is the real Server on one end of a net.Pipe; the test plays the
// client on peer.
type serverRun struct {
	peer  net.Conn
	trace *traceLog
	done  chan struct{}
	res   *Result
	err   error
}

func startServer(t testing.TB, ctx context.Context, cfg *ServerConfig) *serverRun {
	t.Helper()
	cc, sc := net.Pipe()
	r := &serverRun{peer: cc, trace: &traceLog{}, done: make(chan struct{})}
	cfg.trace = r.trace.hook
	go func() {
		defer close(r.done)
		r.res, r.err = Server(ctx, sc, cfg)
		sc.Close()
	}()
	t.Cleanup(func() { cc.Close(); <-r.done })
	return r
}

func (r *serverRun) send(msg []byte) error { return WriteFrame(r.peer, msg) }

// recv reads and parses the server's next message.
func (r *serverRun) recv(t testing.TB) ([]byte, Message) {
	t.Helper()
	raw, err := ReadFrame(r.peer)
	if err != nil {
		t.Fatalf("scripted client: read: %v (server error: %v)", err, r.wait())
	}
	m, err := ParseMessage(raw)
	if err != nil {
		t.Fatalf("scripted client: server sent a bad message: %v", err)
	}
	return raw, m
}

// finish reads everything the server still writes until it closes the
// connection, and returns those messages.
func (r *serverRun) finish(t testing.TB) []Message {
	t.Helper()
	var out []Message
	for {
		raw, err := ReadFrame(r.peer)
		if err != nil {
			break
		}
		m, err := ParseMessage(raw)
		if err != nil {
			t.Errorf("server sent a bad message: %v", err)
			continue
		}
		out = append(out, m)
	}
	<-r.done
	return out
}

// wait closes the scripted side and waits for the server.
func (r *serverRun) wait() error {
	r.peer.Close()
	<-r.done
	return r.err
}

// clientRun is the real Client on one end of a net.Pipe; the test plays the
// server on peer.
type clientRun struct {
	peer net.Conn
	done chan struct{}
	res  *Result
	err  error
}

func startClient(t testing.TB, ctx context.Context, cfg *ClientConfig) *clientRun {
	t.Helper()
	cc, sc := net.Pipe()
	r := &clientRun{peer: sc, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.res, r.err = Client(ctx, cc, cfg)
		cc.Close()
	}()
	t.Cleanup(func() { sc.Close(); <-r.done })
	return r
}

// recvMsg1 reads the client's Msg1.
func (r *clientRun) recvMsg1(t testing.TB) ([]byte, *Msg1) {
	t.Helper()
	raw, err := ReadFrame(r.peer)
	if err != nil {
		t.Fatalf("scripted server: read Msg1: %v", err)
	}
	m, err := ParseMessage(raw)
	if err != nil {
		t.Fatalf("scripted server: client sent a bad Msg1: %v", err)
	}
	m1, ok := m.(*Msg1)
	if !ok {
		t.Fatalf("scripted server: got %T, want Msg1", m)
	}
	return raw, m1
}

// expectEOF asserts that the client closed the connection without sending
// anything more, and waits for it.
func (r *clientRun) expectEOF(t testing.TB) {
	t.Helper()
	raw, err := ReadFrame(r.peer)
	if err == nil {
		t.Errorf("client sent %x after it should have aborted", raw)
		<-r.done
		return
	}
	if !errors.Is(err, io.EOF) {
		t.Errorf("scripted server: read after abort: %v, want EOF", err)
	}
	<-r.done
}

// fakeClient computes client messages with chosen inputs: the scripted
// peer for a malicious or deviating client.
type fakeClient struct {
	id   string
	a    pairing.G1
	x, z *pairing.Scalar
}

func newFakeClient(t testing.TB, id string) *fakeClient {
	t.Helper()
	a, err := HashClientID(id)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeClient{id: id, a: a, x: mustRandomScalar(t), z: mustRandomScalar(t)}
}

// aPrime returns A + AT(epoch).
func (f *fakeClient) aPrime(t testing.TB, epoch uint64) pairing.G1 {
	t.Helper()
	at, err := HashPermit(f.id, epoch)
	if err != nil {
		t.Fatal(err)
	}
	return pairing.AddPublic(f.a, at)
}

// msg1 builds Msg1 with U' = x·uBase and R = z·A.
func (f *fakeClient) msg1(serverID string, flags byte, epoch uint64, uBase pairing.G1) *Msg1 {
	return &Msg1{Flags: flags, Layers: LayerDTLS, ClientID: f.id, ServerID: serverID, Epoch: epoch,
		UPrime: pairing.MulSecret(f.x, uBase), R: pairing.MulSecret(f.z, f.a)}
}

// msg3 builds Msg3 with V = −(x+y)·key.
func (f *fakeClient) msg3(y *pairing.Scalar, key pairing.G1) *Msg3 {
	var xy pairing.Scalar
	xy.Add(f.x, y)
	return &Msg3{V: pairing.MulSecret(&xy, key).Neg()}
}

func mustRandomScalar(t testing.TB) *pairing.Scalar {
	t.Helper()
	s, err := pairing.RandomScalar(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// randomG1 returns a uniformly random point of G1 (not the identity).
func randomG1(t testing.TB) pairing.G1 {
	t.Helper()
	return pairing.MulSecret(mustRandomScalar(t), pairing.G1Generator())
}

func assertNoKey(t testing.TB, tr *traceLog, res *Result) {
	t.Helper()
	if res != nil {
		t.Errorf("server returned a result on failure")
	}
	for _, k := range []string{"th", "h", "g", "dh", "prk"} {
		if tr.get(k) != "" {
			t.Errorf("server computed %s on a failed handshake", k)
		}
	}
}

func assertAlert(t testing.TB, msgs []Message, code AlertCode) {
	t.Helper()
	if len(msgs) == 0 {
		t.Errorf("server sent nothing, want alert %v", code)
		return
	}
	a, ok := msgs[len(msgs)-1].(*Alert)
	if !ok || a.Code != code {
		t.Errorf("server's last message %#v, want alert %v", msgs[len(msgs)-1], code)
	}
}

func assertPeerAlert(t testing.TB, err error, code AlertCode) {
	t.Helper()
	var ae *AlertError
	if !errors.As(err, &ae) || ae.Code != code {
		t.Errorf("client error %v, want AlertError %v", err, code)
	}
}

// assertStep checks that err is an *Error of role with the given alert
// code sent (0: none).
func assertStep(t testing.TB, err error, role string, sent AlertCode) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Errorf("error %v (%T) is not an *Error", err, err)
		return
	}
	if e.Role != role || e.Alert != sent {
		t.Errorf("error %v: role %q alert %v, want %q and %v", err, e.Role, e.Alert, role, sent)
	}
}

// Bad encodings.

// identityG1 is the compressed encoding of the point at infinity.
func identityG1() []byte {
	b := make([]byte, pairing.G1Size)
	b[0] = 0xc0
	return b
}

// offSubgroupG1 is a point on the curve outside the prime-order subgroup.
func offSubgroupG1(t testing.TB) []byte {
	t.Helper()
	var f fp.Element
	f.SetUint64(0x6d70696e6b6578)
	j := gb.GeneratePointNotInG1(f)
	var p gb.G1Affine
	p.FromJacobian(&j)
	if !p.IsOnCurve() || p.IsInSubGroup() {
		t.Fatal("GeneratePointNotInG1 gave a point in G1 or off the curve")
	}
	b := p.Bytes()
	return b[:]
}

// fpWithFlags returns x as 48 bytes with the compression flag set.
func fpWithFlags(x *big.Int) []byte {
	b := make([]byte, pairing.G1Size)
	x.FillBytes(b)
	b[0] |= 0x80
	return b
}

// noSqrtG1 is a canonical x for which x³ + 4 has no square root.
func noSqrtG1(t testing.TB) []byte {
	t.Helper()
	for x := int64(1); x < 1000; x++ {
		b := fpWithFlags(big.NewInt(x))
		if _, err := pairing.DecodeG1(b); errors.Is(err, pairing.ErrEncoding) {
			return b
		}
	}
	t.Fatal("no x without a square root below 1000")
	return nil
}

type badEnc struct {
	name string
	b    []byte
	want error // what pairing.DecodeG1 reports
}

// badG1s lists encodings every point decoder must reject.
func badG1s(t testing.TB) []badEnc {
	t.Helper()
	p := fp.Modulus()
	valid := randomG1(t).Bytes()
	noFlag := valid
	noFlag[0] &^= 0x80
	infFlag := valid
	infFlag[0] |= 0x40
	infSign := identityG1()
	infSign[0] |= 0x20
	infNonZero := identityG1()
	infNonZero[47] = 1
	allOnes := make([]byte, pairing.G1Size)
	for i := range allOnes {
		allOnes[i] = 0xff
	}
	allOnes[0] = 0x9f // compressed, x = 2^381 − 1
	return []badEnc{
		{"identity", identityG1(), pairing.ErrIdentity},
		{"off-subgroup", offSubgroupG1(t), pairing.ErrNotInSubgroup},
		{"x=p", fpWithFlags(p), pairing.ErrEncoding},
		{"x=p+1", fpWithFlags(new(big.Int).Add(p, big.NewInt(1))), pairing.ErrEncoding},
		{"x=2^381-1", allOnes, pairing.ErrEncoding},
		{"no-compression-flag", noFlag[:], pairing.ErrEncoding},
		{"infinity-flag-on-point", infFlag[:], pairing.ErrEncoding},
		{"infinity-with-sign", infSign, pairing.ErrEncoding},
		{"infinity-nonzero", infNonZero, pairing.ErrEncoding},
		{"flags-111", append([]byte{0xe0 | valid[0]&0x1f}, valid[1:]...), pairing.ErrEncoding},
		{"no-sqrt", noSqrtG1(t), pairing.ErrEncoding},
	}
}

// orderPlus returns r + k as 32 bytes.
func orderPlus(k int64) []byte {
	o := pairing.Order()
	v := new(big.Int).SetBytes(o[:])
	v.Add(v, big.NewInt(k))
	b := make([]byte, pairing.ScalarSize)
	v.FillBytes(b)
	return b
}

// badScalars lists encodings of y every decoder must reject.
func badScalars() []struct {
	name string
	b    []byte
} {
	max := bytes.Repeat([]byte{0xff}, pairing.ScalarSize)
	return []struct {
		name string
		b    []byte
	}{
		{"y=0", make([]byte, pairing.ScalarSize)},
		{"y=r", orderPlus(0)},
		{"y=r+1", orderPlus(1)},
		{"y=2^255", append([]byte{0x80}, make([]byte, pairing.ScalarSize-1)...)},
		{"y=2^256-1", max},
	}
}

// Offsets of the points in marshalled messages.
func msg1UOffset(raw []byte) int { return len(raw) - 2*pairing.G1Size }
func msg1ROffset(raw []byte) int { return len(raw) - pairing.G1Size }
func msg2YOffset(raw []byte) int { return len(raw) - pairing.G1Size - pairing.ScalarSize }
func msg2WOffset(raw []byte) int { return len(raw) - pairing.G1Size }

const msg3VOffset = 1

// splice returns a copy of raw with b written at off.
func splice(raw []byte, off int, b []byte) []byte {
	out := bytes.Clone(raw)
	copy(out[off:], b)
	return out
}

// sampleMsgs returns valid Msg1, Msg2 and Msg3 with random points.
func sampleMsgs(t testing.TB) (m1 *Msg1, m2 *Msg2, m3 *Msg3) {
	t.Helper()
	m1 = &Msg1{Flags: FlagPermit, Layers: LayerDTLS, ClientID: "alice@example.com", ServerID: "server.example.com",
		Epoch: fxEpoch, UPrime: randomG1(t), R: randomG1(t)}
	m2 = &Msg2{Layer: LayerDTLS, ServerID: "server.example.com", Y: mustRandomScalar(t), W: randomG1(t)}
	m3 = &Msg3{V: randomG1(t)}
	return
}
