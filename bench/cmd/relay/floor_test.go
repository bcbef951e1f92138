package main

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/bench/internal/benchutil"
)

// BenchmarkFloorTLS is the library part of the go-mtls peer's new
// connection, the way BenchmarkFloorDTLS in ./psk is milagro's: a full
// TLS 1.3 handshake with client certificates (the relay's tlsConfig and
// genCerts: ECDSA P-256, one CA), both sides in this process over a
// loopback TCP pair, then both closed. Its cpu-ns/op (process CPU, both
// sides) is what the two go-mtls relay processes could not do with less;
// bench/run.sh sets the pair's CPU per new connection against it, a
// reference for what two proxy processes add to the library work of a
// handshake on this machine.
func BenchmarkFloorTLS(b *testing.B) {
	dir := b.TempDir()
	if err := genCerts(dir); err != nil {
		b.Fatal(err)
	}
	scfg, err := tlsConfig(dir, "server")
	if err != nil {
		b.Fatal(err)
	}
	ccfg, err := tlsConfig(dir, "client")
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	errs := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, scfg)
			err = tc.HandshakeContext(context.Background())
			tc.Close()
			errs <- err
		}
	}()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for range b.N {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		tc := tls.Client(c, ccfg)
		if err := tc.HandshakeContext(context.Background()); err != nil {
			b.Fatal(err)
		}
		// TLS 1.3: the server's side ends when it has read the client's
		// Finished and certificate; wait for it before closing.
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		tc.Close()
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is this process's user+system CPU time.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	d, err := benchutil.SelfCPU()
	if err != nil {
		b.Fatal(err)
	}
	return d
}
