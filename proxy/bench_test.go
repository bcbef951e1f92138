package proxy

import (
	"context"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time: both ends and the pipe
// run in this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchFar returns the far side of a pipe from app's point of view: a
// TCP connection to an echo goroutine, or a secure stream to the echo
// upstream of the pool tests.
func benchFar(b *testing.B, kind string) net.Conn {
	switch kind {
	case "tcp":
		near, far := tcpPair(b)
		go func() {
			_, _ = io.Copy(far, far)
			_ = far.CloseWrite()
		}()
		return near
	case "stream":
		up := newEchoUpstream(b, "127.0.0.1:0")
		pool := newTestPool(b, up.addr, PoolOptions{})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := pool.Open(ctx, "")
		if err != nil {
			b.Fatal(err)
		}
		return st
	}
	b.Fatalf("unknown kind %q", kind)
	return nil
}

// BenchmarkPipePingPong: 64-byte round trips from an application socket
// through Start to an echo, over TCP or a secure stream; the latency and
// process CPU per round trip (both ends included).
func BenchmarkPipePingPong(b *testing.B) {
	for _, kind := range []string{"tcp", "stream"} {
		b.Run(kind, func(b *testing.B) {
			app, a := tcpPair(b)
			done := make(chan struct{})
			Start(context.Background(), a, benchFar(b, kind), 0, func(Stats, error) { close(done) })
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			b.ResetTimer()
			cpu0 := cpuTime()
			for range b.N {
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(app, buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			b.StopTimer()
			app.CloseWrite()
			<-done
		})
	}
}

// BenchmarkPipeBulk: 1 MiB chunks from an application socket through
// Start to an echo and back (both directions busy), over TCP or a secure
// stream.
func BenchmarkPipeBulk(b *testing.B) {
	for _, kind := range []string{"tcp", "stream"} {
		b.Run(kind, func(b *testing.B) {
			app, a := tcpPair(b)
			done := make(chan struct{})
			Start(context.Background(), a, benchFar(b, kind), 0, func(Stats, error) { close(done) })
			const chunk = 1 << 20
			msg := make([]byte, chunk)
			got := make(chan error, 1)
			b.SetBytes(chunk)
			b.ResetTimer()
			cpu0 := cpuTime()
			go func() {
				_, err := io.CopyN(io.Discard, app, int64(b.N)*chunk)
				got <- err
			}()
			for range b.N {
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-got; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			b.StopTimer()
			app.CloseWrite()
			<-done
		})
	}
}
