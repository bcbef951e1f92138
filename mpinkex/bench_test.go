package mpinkex

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/pairing"
)

// benchDomain issues a fresh 3-D-TA key set: a client key with a permit for
// the current epoch and a server key.
type benchDomain struct {
	ck     *ClientKey
	permit Permit
	sk     *ServerKey
	now    time.Time
}

func newBenchDomain(b testing.TB, clientID, serverID string) *benchDomain {
	b.Helper()
	now := time.Unix(20415*86400+43200, 0)
	epoch, _ := Epoch(now, DefaultEpochLen)
	var cs, tp []pairing.G1
	var sk, ss []pairing.G2
	for range 3 {
		m, err := NewMasterShare(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		c, _ := m.ClientShare(clientID)
		p, _ := m.PermitShare(clientID, epoch)
		s, _ := m.ServerShare(serverID)
		cs, tp, sk, ss = append(cs, c), append(tp, p), append(sk, s), append(ss, m.DomainShare())
	}
	CS, _ := SumG1(cs...)
	TP, _ := SumG1(tp...)
	SK, _ := SumG2(sk...)
	SS, _ := SumG2(ss...)
	ck, err := NewClientKey(clientID, CS)
	if err != nil {
		b.Fatal(err)
	}
	skey, err := NewServerKey(serverID, SS, SK)
	if err != nil {
		b.Fatal(err)
	}
	return &benchDomain{ck: ck, permit: Permit{Epoch: epoch, TP: TP}, sk: skey, now: now}
}

// loopReader repeats a byte string forever (fixed randomness for a
// scripted peer; never use outside benchmarks).
type loopReader struct {
	b []byte
	i int
}

func (l *loopReader) Read(p []byte) (int, error) {
	for n := range p {
		p[n] = l.b[l.i%len(l.b)]
		l.i++
	}
	return len(p), nil
}

type scripted struct {
	io.Reader
	io.Writer
}

// transcript records one honest handshake whose server randomness is fixed,
// so that the client's frames can be replayed to a server alone and the
// server's frames to a client alone.
func transcript(b *testing.B, d *benchDomain, withPermit bool, srvRand, cliRand []byte) (toServer, toClient []byte) {
	b.Helper()
	ccfg := &ClientConfig{Key: d.ck, ServerID: d.sk.ID(), Now: func() time.Time { return d.now }, Rand: bytes.NewReader(cliRand)}
	if withPermit {
		ccfg.Permits = []Permit{d.permit}
	}
	scfg := &ServerConfig{Keys: []*ServerKey{d.sk}, Authorize: func(string) error { return nil },
		Now: func() time.Time { return d.now }, Rand: bytes.NewReader(srvRand)}
	run := runPair(b, ccfg, scfg)
	if run.cerr != nil || run.serr != nil {
		b.Fatalf("handshake: %v / %v", run.cerr, run.serr)
	}
	return run.rec.out.Bytes(), run.rec.in.Bytes()
}

func fixedScalars(b *testing.B, n int) []byte {
	var out []byte
	for range n {
		s, err := pairing.RandomScalar(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		v := s.Bytes()
		out = append(out, v[:]...)
	}
	return out
}

// BenchmarkHandshakeServer is the server side of one handshake, alone on
// the CPU: the client's Msg1 and Msg3 are replayed from a recorded
// handshake (the server's y and w are fixed so the replay verifies).
func BenchmarkHandshakeServer(b *testing.B) {
	for _, permit := range []bool{false, true} {
		name := "nopermit"
		if permit {
			name = "permit"
		}
		b.Run(name, func(b *testing.B) {
			d := newBenchDomain(b, "spiffe://prod.example/ns/web/sa/frontend", "spiffe://prod.example/ns/pay/sa/api")
			srv := fixedScalars(b, 2)
			toServer, _ := transcript(b, d, permit, srv, fixedScalars(b, 2))
			cfg := &ServerConfig{Keys: []*ServerKey{d.sk}, Authorize: func(string) error { return nil },
				Now: func() time.Time { return d.now }, Rand: &loopReader{b: srv}}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				res, err := Server(ctx, scripted{bytes.NewReader(toServer), io.Discard}, cfg)
				if err != nil {
					b.Fatal(err)
				}
				res.Zeroize()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// BenchmarkHandshakeClient is the client side of one handshake, alone on
// the CPU, against a recorded server.
func BenchmarkHandshakeClient(b *testing.B) {
	for _, permit := range []bool{false, true} {
		name := "nopermit"
		if permit {
			name = "permit"
		}
		b.Run(name, func(b *testing.B) {
			d := newBenchDomain(b, "spiffe://prod.example/ns/web/sa/frontend", "spiffe://prod.example/ns/pay/sa/api")
			cli := fixedScalars(b, 2)
			_, toClient := transcript(b, d, permit, fixedScalars(b, 2), cli)
			cfg := &ClientConfig{Key: d.ck, ServerID: d.sk.ID(), Now: func() time.Time { return d.now }, Rand: &loopReader{b: cli}}
			if permit {
				cfg.Permits = []Permit{d.permit}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				res, err := Client(ctx, scripted{bytes.NewReader(toClient), io.Discard}, cfg)
				if err != nil {
					b.Fatal(err)
				}
				res.Zeroize()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}
