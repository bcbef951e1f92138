package psk

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"github.com/pion/dtls/v2"

	"github.com/milagro-sc/milagro/mpinkex"
)

const bulkChunk = 1 << 20

// cpuTime is the process's user+system CPU time: client and server run in
// this process, so CPU per operation is the whole cost of both ends, a
// steadier figure than wall time on a small shared machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// goroutinesCreated is how many goroutines this process has started.
func goroutinesCreated() uint64 {
	s := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}

// sendBulk writes b.N chunks of bulkChunk random bytes with write, ends
// with end (nil: nothing to end), checks that the receiver counted them all
// (got) and reports the process CPU per chunk.
func sendBulk(b *testing.B, write func([]byte) error, end func() error, got <-chan int64) {
	buf := make([]byte, bulkChunk)
	_, _ = rand.Read(buf)
	b.SetBytes(bulkChunk)
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		if err := write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if end != nil {
		_ = end()
	}
	if n, want := <-got, int64(b.N)*bulkChunk; n != want {
		b.Fatalf("receiver read %d bytes, want %d", n, want)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// sink accepts one stream, counts what it reads and reports the total.
func sink(b *testing.B, srv *Session) <-chan int64 {
	done := make(chan int64, 1)
	go func() {
		in, err := srv.Accept(context.Background())
		if err != nil {
			done <- -1
			return
		}
		st, err := in.Accept()
		if err != nil {
			done <- -1
			return
		}
		defer st.Close()
		n, _ := io.Copy(io.Discard, st)
		done <- n
	}()
	return done
}

// BenchmarkBulk is one stream's throughput through mpinkex+DTLS+yamux on
// loopback.
func BenchmarkBulk(b *testing.B) {
	cli, srv := sessionPair(b, nil, nil)
	done := sink(b, srv)
	st, err := cli.Open(context.Background(), "")
	if err != nil {
		b.Fatal(err)
	}
	before := cli.Stats()
	sendBulk(b, func(p []byte) error { _, err := st.Write(p); return err }, st.CloseWrite, done)
	after := cli.Stats()
	b.ReportMetric(float64(after.RecordsOut-before.RecordsOut)/float64(b.N), "records/op")
	b.ReportMetric(float64(after.TCPWrites-before.TCPWrites)/float64(b.N), "tcpwrites/op")
	st.Close()
}

// handshakePair runs mpinkex and pion's DTLS handshake only, on loopback
// TCP, and returns both sides' pion Conns and record connections. A side
// with handover leaves the records after the handshake to takeOver; the
// other keeps pion's Conn for the session.
func handshakePair(tb testing.TB, cliHandover, srvHandover bool) (cli, srv *dtls.Conn, crc, src *recordConn) {
	tb.Helper()
	d := sharedDomain(tb)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	cfg, _ := (*Config)(nil).withDefaults()
	type side struct {
		dc *dtls.Conn
		rc *recordConn
	}
	ch := make(chan side, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- side{}
			return
		}
		res, err := mpinkex.Server(context.Background(), c, &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{d.sk}, Authorize: func(string) error { return nil }})
		if err != nil {
			ch <- side{}
			return
		}
		dc, rc, err := handshakePion(context.Background(), false, c, res, &cfg, srvHandover)
		if err != nil {
			ch <- side{}
			return
		}
		ch <- side{dc, rc}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	res, err := mpinkex.Client(context.Background(), c, &mpinkex.ClientConfig{Key: d.ck, ServerID: testServerID})
	if err != nil {
		tb.Fatal(err)
	}
	cli, crc, err = handshakePion(context.Background(), true, c, res, &cfg, cliHandover)
	if err != nil {
		tb.Fatal(err)
	}
	s := <-ch
	if s.dc == nil {
		tb.Fatal("server handshake failed")
	}
	tb.Cleanup(func() {
		cli.Close()
		s.dc.Close()
		crc.Conn.Close()
		s.rc.Conn.Close()
	})
	return cli, s.dc, crc, s.rc
}

// bulkRecords sends b.N chunks with write in records of MaxRecordPlaintext
// bytes while a receiver reads them with read.
func bulkRecords(b *testing.B, write func([]byte) error, read func() (int, error)) {
	total := make(chan int64, 1)
	want := int64(b.N) * bulkChunk
	go func() {
		var n int64
		for {
			k, err := read()
			if err != nil {
				total <- n
				return
			}
			n += int64(k)
			if n == want {
				total <- n
				return
			}
		}
	}()
	sendBulk(b, func(p []byte) error {
		for len(p) > 0 {
			k := min(len(p), MaxRecordPlaintext)
			if err := write(p[:k]); err != nil {
				return err
			}
			p = p[k:]
		}
		return nil
	}, nil, total)
}

// BenchmarkBulkPionConn is pion's Conn alone over the record reader, as it
// would carry the session without appRecords: 8000-byte records, no
// yamux.
func BenchmarkBulkPionConn(b *testing.B) {
	cli, srv, _, _ := handshakePair(b, false, false)
	buf := make([]byte, maxRecordLen)
	bulkRecords(b, func(p []byte) error { _, err := cli.Write(p); return err },
		func() (int, error) { return srv.Read(buf) })
}

// BenchmarkBulkRecords is the session's record layer (appRecords) alone:
// the same records as BenchmarkBulkPionConn, no yamux.
func BenchmarkBulkRecords(b *testing.B) {
	cli, srv, crc, src := handshakePair(b, true, true)
	ca, err := takeOver(cli, crc, true)
	if err != nil {
		b.Fatal(err)
	}
	sa, err := takeOver(srv, src, false)
	if err != nil {
		b.Fatal(err)
	}
	bulkRecords(b, ca.write, func() (int, error) { p, err := sa.next(); return len(p), err })
}

// BenchmarkBulkTLS13 is crypto/tls 1.3 over loopback, for comparison.
func BenchmarkBulkTLS13(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"bench"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		b.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		done <- n
	}()
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(der)
	pool.AddCert(leaf)
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "bench", MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	sendBulk(b, func(p []byte) error { _, err := c.Write(p); return err }, c.CloseWrite, done)
	c.Close()
}

// BenchmarkNewStream is Open (header and status) plus a 1-byte round trip
// and Close on a warm session.
func BenchmarkNewStream(b *testing.B) {
	cli, srv := sessionPair(b, nil, nil)
	serveEcho(b, srv)
	one := []byte{42}
	got := make([]byte, 1)
	before := cli.Stats()
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		st, err := cli.Open(context.Background(), "")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Write(one); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(st, got); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	after := cli.Stats()
	b.ReportMetric(float64(after.RecordsOut-before.RecordsOut)/float64(b.N), "records/op")
	b.ReportMetric(float64(after.TCPWrites-before.TCPWrites)/float64(b.N), "tcpwrites/op")
}

// BenchmarkSessionSetup is TCP connect, mpinkex, DTLS and yamux, both
// sides, on loopback.
func BenchmarkSessionSetup(b *testing.B) {
	d := sharedDomain(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	scfg := &mpinkex.ServerConfig{Keys: []*mpinkex.ServerKey{d.sk}, Authorize: func(string) error { return nil }}
	ccfg := &mpinkex.ClientConfig{Key: d.ck, ServerID: testServerID}
	srvDone := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			res, err := mpinkex.Server(context.Background(), c, scfg)
			if err != nil {
				srvDone <- err
				continue
			}
			s, err := Server(context.Background(), c, res, nil)
			res.Zeroize()
			if err == nil {
				s.Close()
			}
			srvDone <- err
		}
	}()
	var dtlsTime time.Duration
	b.ResetTimer()
	cpu0, g0 := cpuTime(), goroutinesCreated()
	for range b.N {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		res, err := mpinkex.Client(context.Background(), c, ccfg)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		s, err := Client(context.Background(), c, res, nil)
		dtlsTime += time.Since(t0)
		res.Zeroize()
		if err != nil {
			b.Fatal(err)
		}
		if err := <-srvDone; err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
	// Process CPU per session, both sides (TCP, mpinkex, DTLS, yamux,
	// close): compare with BenchmarkFloorServer + BenchmarkFloorClient in
	// package pairing.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	// Goroutines started per session, both sides: 25.5 at pion/dtls
	// v2.2.12, 14.5 of them by pion/transport's connctx (one per handshake
	// record read or flight written, each waited for).
	b.ReportMetric(float64(goroutinesCreated()-g0)/float64(b.N), "goroutines/op")
	// The part after mpinkex: the DTLS handshake and yamux, client side.
	b.ReportMetric(float64(dtlsTime)/float64(b.N), "dtls-ns/op")
}
