package mpinkex

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/pairing"
)

// vectorCase is one case of PROTOCOL.md §9. Unknown fields are ignored.
type vectorCase struct {
	Name                string         `json:"name"`
	ClientID            string         `json:"client_id"`
	ServerID            string         `json:"server_id"`
	Msg1ServerID        *string        `json:"msg1_server_id"`
	EpochLen            uint64         `json:"epoch_len"`
	Epoch               *uint64        `json:"epoch"`
	MasterShares        []string       `json:"master_shares"`
	A, AT, B            string         `json:"-"`
	ClientShares        []string       `json:"client_shares"`
	PermitShares        []string       `json:"permit_shares"`
	ServerIDShares      []string       `json:"server_id_shares"`
	DomainServerShares  []string       `json:"domain_server_shares"`
	Factor              string         `json:"factor"`
	FactorScalar        string         `json:"factor_scalar"`
	Token               string         `json:"token"`
	X, Z, Y, W          string         `json:"-"`
	Msg1, Msg2, Msg3    string         `json:"-"`
	Th, H, G, DH, PRK   *string        `json:"-"`
	PSK, PSKIdentity    *string        `json:"-"`
	ServerG, ServerDH   *string        `json:"-"`
	ServerPSK           *string        `json:"-"`
	Accept              bool           `json:"accept"`
	Deviation           map[string]any `json:"deviation"`
	raw                 map[string]json.RawMessage
	CS, TP, SK, SS      string `json:"-"`
	UPrime, RPoint, VPt string `json:"-"`
}

// str returns a top-level string field, "" when absent or null.
func (c *vectorCase) str(k string) string {
	var s *string
	if v, ok := c.raw[k]; ok {
		_ = json.Unmarshal(v, &s)
	}
	if s == nil {
		return ""
	}
	return *s
}

func (c *vectorCase) optStr(k string) *string {
	var s *string
	if v, ok := c.raw[k]; ok {
		_ = json.Unmarshal(v, &s)
	}
	return s
}

func vectorFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "..", "shared", "vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no vector files in ../../shared/vectors: the shared/ folder must sit beside the checkout")
	}
	for _, f := range strings.Split(os.Getenv("MPINKEX_VECTORS"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			files = append(files, f)
		}
	}
	return files
}

func loadCases(t *testing.T, path string) []*vectorCase {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var f struct {
		Cases []json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if len(f.Cases) == 0 {
		t.Fatalf("%s holds no cases", path)
	}
	var out []*vectorCase
	for i, r := range f.Cases {
		c := &vectorCase{}
		if err := json.Unmarshal(r, c); err != nil {
			t.Fatalf("%s case %d: %v", path, i, err)
		}
		if err := json.Unmarshal(r, &c.raw); err != nil {
			t.Fatal(err)
		}
		c.A, c.AT, c.B = c.str("A"), c.str("AT"), c.str("B")
		c.X, c.Z, c.Y, c.W = c.str("x"), c.str("z"), c.str("y"), c.str("w")
		c.Msg1, c.Msg2, c.Msg3 = c.str("msg1"), c.str("msg2"), c.str("msg3")
		c.Th, c.H, c.G, c.DH, c.PRK = c.optStr("th"), c.optStr("h"), c.optStr("g"), c.optStr("dh"), c.optStr("prk")
		c.PSK, c.PSKIdentity = c.optStr("psk"), c.optStr("psk_identity")
		c.ServerG, c.ServerDH, c.ServerPSK = c.optStr("server_g"), c.optStr("server_dh"), c.optStr("server_psk")
		c.CS, c.TP, c.SK, c.SS = c.str("CS"), c.str("TP"), c.str("SK"), c.str("SS")
		if c.Name == "" {
			c.Name = filepath.Base(path) + "#" + string(rune('0'+i))
		}
		out = append(out, c)
	}
	return out
}

func unhex(t *testing.T, what, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("%s: bad hex: %v", what, err)
	}
	return b
}

func g1hex(p pairing.G1) string { b := p.Bytes(); return hex.EncodeToString(b[:]) }
func g2hex(p pairing.G2) string { b := p.Bytes(); return hex.EncodeToString(b[:]) }

func mustG1(t *testing.T, what, s string) pairing.G1 {
	t.Helper()
	p, err := pairing.DecodeG1(unhex(t, what, s))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return p
}

func mustG2(t *testing.T, what, s string) pairing.G2 {
	t.Helper()
	p, err := pairing.DecodeG2(unhex(t, what, s))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return p
}

func eq(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s mismatch:\n got  %s\n want %s", what, got, want)
	}
}

// recorder sits on the client's end of the connection and keeps every byte
// each side put on the wire.
type recorder struct {
	net.Conn
	mu      sync.Mutex
	out, in bytes.Buffer
}

func (r *recorder) Write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	r.mu.Lock()
	r.out.Write(b[:n])
	r.mu.Unlock()
	return n, err
}

func (r *recorder) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.mu.Lock()
	r.in.Write(b[:n])
	r.mu.Unlock()
	return n, err
}

// frames splits a recorded stream into messages.
func frames(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		m, err := ReadFrame(r)
		if err != nil {
			t.Fatalf("recorded stream: %v", err)
		}
		out = append(out, m)
	}
	return out
}

type traceLog struct {
	mu sync.Mutex
	v  map[string]string
}

func (l *traceLog) hook(name string, v []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.v == nil {
		l.v = map[string]string{}
	}
	l.v[name] = hex.EncodeToString(v)
}

func (l *traceLog) get(k string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.v[k]
}

// knownDeviations are the deviations a real Client can be configured to
// reproduce; for any other kind the case's own wire messages are replayed to
// the real Server.
var knownDeviations = map[string]bool{
	"wrong_factor": true, "missing_client_share": true, "wrong_epoch_permit": true, "wrong_server_key": true,
}

func TestVectors(t *testing.T) {
	n := 0
	for _, file := range vectorFiles(t) {
		for _, c := range loadCases(t, file) {
			n++
			t.Run(filepath.Base(file)+"/"+c.Name, func(t *testing.T) { runVector(t, c) })
		}
	}
	t.Logf("%d vector cases", n)
}

func devStr(c *vectorCase, k string) string {
	if c.Deviation == nil {
		return ""
	}
	s, _ := c.Deviation[k].(string)
	return s
}

func runVector(t *testing.T, c *vectorCase) {
	// 1. Hashes and shares, computed by the issuance code from the master shares.
	a, err := HashClientID(c.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "A", g1hex(a), c.A)
	b, err := HashServerID(c.ServerID)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "B", g2hex(b), c.B)
	if c.Epoch != nil {
		at, err := HashPermit(c.ClientID, *c.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "AT", g1hex(at), c.AT)
	} else if c.AT != "" || c.TP != "" || c.PermitShares != nil {
		t.Errorf("case without epoch has permit values")
	}
	var cs, tps []pairing.G1
	var sks, sss []pairing.G2
	if len(c.MasterShares) == 0 || len(c.MasterShares) != len(c.ClientShares) ||
		len(c.MasterShares) != len(c.ServerIDShares) || len(c.MasterShares) != len(c.DomainServerShares) {
		t.Fatalf("share counts differ: %d master, %d client, %d server, %d domain",
			len(c.MasterShares), len(c.ClientShares), len(c.ServerIDShares), len(c.DomainServerShares))
	}
	for i, ms := range c.MasterShares {
		m, err := ParseMasterShare(unhex(t, "master share", ms))
		if err != nil {
			t.Fatalf("master share %d: %v", i, err)
		}
		p, err := m.ClientShare(c.ClientID)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "client share", g1hex(p), c.ClientShares[i])
		cs = append(cs, p)
		if c.Epoch != nil {
			p, err := m.PermitShare(c.ClientID, *c.Epoch)
			if err != nil {
				t.Fatal(err)
			}
			if i >= len(c.PermitShares) {
				t.Fatalf("missing permit share %d", i)
			}
			eq(t, "permit share", g1hex(p), c.PermitShares[i])
			tps = append(tps, p)
		}
		q, err := m.ServerShare(c.ServerID)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "server identity share", g2hex(q), c.ServerIDShares[i])
		sks = append(sks, q)
		d := m.DomainShare()
		eq(t, "domain server share", g2hex(d), c.DomainServerShares[i])
		sss = append(sss, d)
	}
	CS, err := SumG1(cs...)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "CS", g1hex(CS), c.CS)
	SK, err := SumG2(sks...)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "SK", g2hex(SK), c.SK)
	SS, err := SumG2(sss...)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "SS", g2hex(SS), c.SS)
	var TP pairing.G1
	if c.Epoch != nil {
		if TP, err = SumG1(tps...); err != nil {
			t.Fatal(err)
		}
		eq(t, "TP", g1hex(TP), c.TP)
	}
	if c.FactorScalar != "" {
		f, err := FactorScalar(c.Factor)
		if err != nil {
			t.Fatal(err)
		}
		fb := f.Bytes()
		eq(t, "factor_scalar", hex.EncodeToString(fb[:]), c.FactorScalar)
	}
	token, err := Token(CS, c.ClientID, c.Factor)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "token", g1hex(token), c.Token)
	if t.Failed() {
		t.FailNow()
	}

	// 2. The handshake, driven through the real Client and Server with the
	// case's scalars as their randomness.
	kind := devStr(c, "kind")
	if c.Deviation != nil && !knownDeviations[kind] {
		t.Logf("deviation %q: replaying the case's wire messages to the real server", kind)
		replayVector(t, c, SS, SK)
		return
	}
	clientToken, clientFactor := token, c.Factor
	if v := devStr(c, "client_factor"); v != "" {
		clientFactor = v
	}
	if v := devStr(c, "client_token"); v != "" {
		clientToken = mustG1(t, "deviation client_token", v)
	}
	ck, err := NewClientKeyFromToken(c.ClientID, clientToken, clientFactor)
	if err != nil {
		t.Fatal(err)
	}
	now := vectorNow(c)
	var ctrace, strace traceLog
	ccfg := &ClientConfig{
		Key:            ck,
		VerifyServerID: func(id string) error { return expectID(id, c.ServerID) },
		EpochLen:       time.Duration(c.EpochLen) * time.Second,
		Now:            func() time.Time { return now },
		Rand:           bytes.NewReader(append(unhex(t, "x", c.X), unhex(t, "z", c.Z)...)),
		trace:          ctrace.hook,
	}
	if c.Msg1ServerID != nil {
		ccfg.ServerID = *c.Msg1ServerID
	} else {
		ccfg.ServerID = c.ServerID
	}
	if c.Epoch != nil {
		tp := TP
		if v := devStr(c, "client_TP"); v != "" {
			tp = mustG1(t, "deviation client_TP", v)
		}
		ccfg.Permits = []Permit{{Epoch: *c.Epoch, TP: tp}}
	}
	serverSK := SK
	if v := devStr(c, "server_SK"); v != "" {
		serverSK = mustG2(t, "deviation server_SK", v)
	}
	sk, err := NewServerKey(c.ServerID, SS, serverSK)
	if err != nil {
		t.Fatal(err)
	}
	scfg := &ServerConfig{
		Keys:      []*ServerKey{sk},
		Authorize: func(string) error { return nil },
		EpochLen:  time.Duration(c.EpochLen) * time.Second,
		Now:       func() time.Time { return now },
		Rand:      bytes.NewReader(append(unhex(t, "y", c.Y), unhex(t, "w", c.W)...)),
		trace:     strace.hook,
	}
	run := runPair(t, ccfg, scfg)
	cres, cerr, sres, serr, rec := run.cres, run.cerr, run.sres, run.serr, run.rec

	out, in := frames(t, rec.out.Bytes()), frames(t, rec.in.Bytes())
	if len(out) != 2 || len(in) != 2 {
		t.Fatalf("wire: client sent %d frames, server sent %d; want 2 and 2 (client err %v, server err %v)", len(out), len(in), cerr, serr)
	}
	eq(t, "msg1", hex.EncodeToString(out[0]), c.Msg1)
	eq(t, "msg2", hex.EncodeToString(in[0]), c.Msg2)
	eq(t, "msg3", hex.EncodeToString(out[1]), c.Msg3)
	eq(t, "A (server)", strace.get("A"), c.A)
	if c.Epoch != nil {
		eq(t, "AT (server)", strace.get("AT"), c.AT)
	}
	for _, k := range []string{"U_prime", "R", "W", "V"} {
		if v := c.str(k); v != "" {
			var got string
			switch k {
			case "U_prime":
				got = hex.EncodeToString(out[0][len(out[0])-96 : len(out[0])-48])
			case "R":
				got = hex.EncodeToString(out[0][len(out[0])-48:])
			case "W":
				got = hex.EncodeToString(in[0][len(in[0])-48:])
			case "V":
				got = hex.EncodeToString(out[1][1:])
			}
			eq(t, k, got, v)
		}
	}

	if !c.Accept {
		if serr == nil || !errors.Is(serr, ErrAuth) {
			t.Errorf("server: got %v, want the pairing check to fail (ErrAuth)", serr)
		}
		var ae *AlertError
		if !errors.As(cerr, &ae) || ae.Code != AlertHandshakeFailure {
			t.Errorf("client: got %v, want alert handshake_failure", cerr)
		}
		if strace.get("g") != "" || strace.get("dh") != "" {
			t.Errorf("server derived key material for a failed check")
		}
		for _, k := range []*string{c.Th, c.H, c.G, c.DH, c.PSK, c.PSKIdentity} {
			if k != nil {
				t.Errorf("rejected case carries derived values")
			}
		}
		return
	}
	if cerr != nil || serr != nil {
		t.Fatalf("handshake failed: client %v, server %v", cerr, serr)
	}
	for _, side := range []struct {
		name string
		tr   *traceLog
		res  *Result
	}{{"client", &ctrace, cres}, {"server", &strace, sres}} {
		want := map[string]*string{"th": c.Th, "h": c.H, "g": c.G, "dh": c.DH, "prk": c.PRK}
		psk := c.PSK
		if side.name == "server" {
			if c.ServerG != nil {
				want["g"] = c.ServerG
			}
			if c.ServerDH != nil {
				want["dh"] = c.ServerDH
			}
			if c.ServerPSK != nil {
				psk, want["prk"] = c.ServerPSK, nil
			}
		}
		for k, v := range want {
			if v != nil {
				eq(t, side.name+" "+k, side.tr.get(k), *v)
			}
		}
		if psk == nil || c.PSKIdentity == nil || c.Th == nil {
			t.Fatalf("accepted case lacks psk, psk_identity or th")
		}
		eq(t, side.name+" psk", hex.EncodeToString(side.res.PSK), *psk)
		eq(t, side.name+" psk_identity", side.res.PSKIdentity, *c.PSKIdentity)
		eq(t, side.name+" transcript", hex.EncodeToString(side.res.Transcript[:]), *c.Th)
	}
	eq(t, "B (client)", ctrace.get("B"), c.B)
	if c.ServerPSK != nil && bytes.Equal(cres.PSK, sres.PSK) {
		t.Errorf("case says the server's psk differs, but both sides derived the same")
	}
	if cres.ClientID != c.ClientID || sres.ClientID != c.ClientID || cres.ServerID != c.ServerID || sres.ServerID != c.ServerID {
		t.Errorf("identities: client result %q/%q, server result %q/%q", cres.ClientID, cres.ServerID, sres.ClientID, sres.ServerID)
	}
}

func expectID(got, want string) error {
	if got != want {
		return errors.New("unexpected server identity " + got)
	}
	return nil
}

// vectorNow puts the clock in the middle of the case's epoch.
func vectorNow(c *vectorCase) time.Time {
	l := c.EpochLen
	if l == 0 {
		l = 86400
	}
	e := uint64(20415)
	if c.Epoch != nil {
		e = *c.Epoch
	}
	return time.Unix(int64(e*l+l/2), 0)
}

// runPair runs Client and Server against each other over a synchronous
// in-memory connection and records the client's side of the wire.
type pairRun struct {
	cres, sres *Result
	cerr, serr error
	rec        *recorder
}

func runPair(t testing.TB, ccfg *ClientConfig, scfg *ServerConfig) pairRun {
	t.Helper()
	cc, sc := net.Pipe()
	rec := &recorder{Conn: cc}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var sres *Result
	var serr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sres, serr = Server(ctx, sc, scfg)
		sc.Close()
	}()
	cres, cerr := Client(ctx, rec, ccfg)
	cc.Close()
	<-done
	return pairRun{cres: cres, cerr: cerr, sres: sres, serr: serr, rec: rec}
}

// replayVector sends the case's msg1 and msg3 to the real Server and checks
// its msg2 and its verdict.
func replayVector(t *testing.T, c *vectorCase, ss, skey pairing.G2) {
	sk, err := NewServerKey(c.ServerID, ss, skey)
	if err != nil {
		t.Fatal(err)
	}
	now := vectorNow(c)
	cc, sc := net.Pipe()
	defer cc.Close()
	var serr error
	var sres *Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		sres, serr = Server(context.Background(), sc, &ServerConfig{
			Keys:      []*ServerKey{sk},
			Authorize: func(string) error { return nil },
			EpochLen:  time.Duration(c.EpochLen) * time.Second,
			Now:       func() time.Time { return now },
			Rand:      bytes.NewReader(append(unhex(t, "y", c.Y), unhex(t, "w", c.W)...)),
		})
		sc.Close()
	}()
	if err := WriteFrame(cc, unhex(t, "msg1", c.Msg1)); err != nil {
		t.Fatal(err)
	}
	m2, err := ReadFrame(cc)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "msg2", hex.EncodeToString(m2), c.Msg2)
	if err := WriteFrame(cc, unhex(t, "msg3", c.Msg3)); err == nil {
		reply, _ := ReadFrame(cc)
		_ = reply
	}
	_, _ = io.Copy(io.Discard, cc)
	<-done
	if c.Accept != (serr == nil) {
		t.Errorf("server verdict: err %v, want accept=%v", serr, c.Accept)
	}
	if sres != nil && c.PSK != nil {
		eq(t, "server psk", hex.EncodeToString(sres.PSK), *c.PSK)
	}
}
