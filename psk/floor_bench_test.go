package psk

import (
	"context"
	"crypto/rand"
	"net"
	"testing"

	"github.com/milagro-sc/milagro/psk/internal/yamux"
	"github.com/pion/dtls/v2"
	"github.com/pion/dtls/v2/pkg/crypto/elliptic"
)

// BenchmarkFloorDTLS is the library part of a cold session that follows
// mpinkex, with nothing of ours around it: pion's DTLS 1.2 PSK handshake
// (the suite, extended master secret and no HelloVerifyRequest of
// PROTOCOL.md §7, and the curve list of dtlsConfig) over a connected UDP pair on loopback — pion's own
// transport, so no record reader — then a yamux session each side and
// both closed. Its cpu-ns/op (process CPU, both sides) added to package
// pairing's BenchmarkFloorServer + BenchmarkFloorClient is the floor of the
// library operations a cold connection must do; bench/run.sh compares
// BenchmarkSessionSetup and the sidecars' cold connection with it.
func BenchmarkFloorDTLS(b *testing.B) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		b.Fatal(err)
	}
	const identity = "floor"
	base := dtls.Config{
		CipherSuites:         []dtls.CipherSuiteID{dtls.TLS_PSK_WITH_AES_128_GCM_SHA256},
		EllipticCurves:       offeredCurves, // as dtlsConfig: pion's server makes a key pair on it
		ExtendedMasterSecret: dtls.RequireExtendedMasterSecret,
		FlightInterval:       flightInterval,
		MTU:                  MaxRecordPlaintext,
		PSK:                  func([]byte) ([]byte, error) { return key, nil },
	}
	ccfg, scfg := base, base
	ccfg.PSKIdentityHint = []byte(identity)
	scfg.InsecureSkipVerifyHello = true
	cfg, err := (*Config)(nil).withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	ycfg := cfg.yamux() // the session's yamux settings

	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		cu, su := udpPair(b)
		type result struct {
			c   *dtls.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := dtls.ServerWithContext(context.Background(), su, &scfg)
			ch <- result{c, err}
		}()
		dc, err := dtls.ClientWithContext(context.Background(), cu, &ccfg)
		if err != nil {
			b.Fatal(err)
		}
		r := <-ch
		if r.err != nil {
			b.Fatal(r.err)
		}
		ym, err := yamux.Client(dc, ycfg)
		if err != nil {
			b.Fatal(err)
		}
		ys, err := yamux.Server(r.c, ycfg)
		if err != nil {
			b.Fatal(err)
		}
		_ = ym.Close()
		_ = ys.Close()
	}
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// udpPair is two UDP sockets on loopback connected to each other.
func udpPair(b *testing.B) (net.Conn, net.Conn) {
	b.Helper()
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	aAddr := a.LocalAddr().(*net.UDPAddr)
	c, err := net.DialUDP("udp", nil, aAddr)
	if err != nil {
		b.Fatal(err)
	}
	_ = a.Close()
	// Re-bind a's port as a socket connected to c.
	s, err := net.DialUDP("udp", aAddr, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	return c, s
}

// BenchmarkUnusedKeypair is the ephemeral key pair pion's server makes on
// the client's first offered curve in every handshake, PSK suite or not
// (see offeredCurves): pion's default first curve against ours.
func BenchmarkUnusedKeypair(b *testing.B) {
	for _, c := range []elliptic.Curve{elliptic.X25519, offeredCurves[0]} {
		b.Run(c.String(), func(b *testing.B) {
			for b.Loop() {
				if _, err := elliptic.GenerateKeypair(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
