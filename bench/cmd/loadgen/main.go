// Command loadgen drives the benchmark's traffic at one peer (a proxy pair,
// or the backend itself) and reads the proxies' CPU time from /proc around
// each measurement. The backend is bench/cmd/backend.
//
// Usage:
//
//	loadgen header                          # print the CSV header of bench's rows
//	loadgen ports -n N                      # print N free loopback ports
//	loadgen wait -addr A [-timeout 20s]     # until a 64-byte echo through A works
//	loadgen bench -addr A -peer NAME -round R -client-pids P -server-pids P \
//	        [-bulk-mb 1024] [-duration 5s] [-workers 16] [-size 64] [-pings 5000]
//	loadgen idle -addr A -n 10000 -pids P,P # RSS per idle proxied connection
//
// bench prints one CSV row (benchutil.Header) with three measurements:
//
//   - bulk: one connection sends -bulk-mb MiB one way to the backend's sink,
//     timed until the sink acknowledges the last byte; MB/s (10^6 bytes/s)
//     and the proxies' CPU seconds per GiB.
//   - conns: -workers workers for -duration, each connecting, sending
//     -size bytes, reading the -size byte echo and closing; connections per
//     second and the proxies' CPU ms per connection.
//   - pings: -pings round trips of -size bytes on one warm connection;
//     p50 and p99 latency.
//
// The proxies' CPU is utime+stime of -client-pids and -server-pids from
// /proc/PID/stat (10 ms ticks), read before and after each measurement.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/milagro-sc/milagro/bench/internal/benchutil"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadgen: ")
	if len(os.Args) < 2 {
		log.Fatal("usage: loadgen ports|wait|bench|idle [flags] (see the package comment)")
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "header":
		fmt.Println(benchutil.Header)
	case "ports":
		err = cmdPorts(args)
	case "wait":
		err = cmdWait(args)
	case "bench":
		err = cmdBench(args)
	case "idle":
		err = cmdIdle(args)
	default:
		err = fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// cmdPorts prints free loopback ports below the kernel's ephemeral range.
// A port the kernel hands out for ":0" comes from that range, from which
// it also takes the local port of every outgoing connection: between this
// command and the listener that binds the port later, one of the run's
// tens of thousands of connections can take it (a run once lost all its
// milagro round-trip figures, most likely that way). Ports below the range
// are never taken by a connect.
func cmdPorts(args []string) error {
	fs := flag.NewFlagSet("ports", flag.ExitOnError)
	n := fs.Int("n", 1, "how many ports")
	_ = fs.Parse(args)
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	lo, hi := 20000, ephemeralLow()
	var ports []string
	for tries := 0; len(ports) < *n; tries++ {
		addr := "127.0.0.1:0" // no room below the range: the kernel's choice
		if hi-lo >= 1000 {
			addr = fmt.Sprintf("127.0.0.1:%d", lo+rand.IntN(hi-lo))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if tries > 1000 {
				return fmt.Errorf("no free loopback port (last tried %s): %w", addr, err)
			}
			continue // in use
		}
		lns = append(lns, l) // held until all are picked: no duplicates
		ports = append(ports, fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
	}
	fmt.Println(strings.Join(ports, " "))
	return nil
}

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 0 {
		return 32768
	}
	return lo
}

// echo makes one connection to addr and does one size-byte round trip.
func echo(addr string, size int, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	return roundTrip(c, make([]byte, size), make([]byte, size))
}

// roundTrip writes out (never starting with 'S') and reads its echo into in.
func roundTrip(c net.Conn, out, in []byte) error {
	out[0] = 'P'
	if _, err := c.Write(out); err != nil {
		return err
	}
	_, err := io.ReadFull(c, in)
	return err
}

func cmdWait(args []string) error {
	fs := flag.NewFlagSet("wait", flag.ExitOnError)
	addr := fs.String("addr", "", "address to try")
	timeout := fs.Duration("timeout", 20*time.Second, "give up after")
	_ = fs.Parse(args)
	end := time.Now().Add(*timeout)
	for {
		err := echo(*addr, 64, 5*time.Second)
		if err == nil {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s: no echo within %s: %w", *addr, *timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type cpuMeter struct{ client, server []int }

func (m cpuMeter) read() (c, s time.Duration) {
	var err error
	if c, err = benchutil.CPU(m.client); err == nil {
		s, err = benchutil.CPU(m.server)
	}
	if err != nil {
		log.Fatal(err)
	}
	return c, s
}

func cmdBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	addr := fs.String("addr", "", "address to load (client proxy, or the backend)")
	peer := fs.String("peer", "", "peer name for the CSV row")
	round := fs.Int("round", 0, "round number for the CSV row")
	cpids := fs.String("client-pids", "", "client-side proxy process ids, comma-separated")
	spids := fs.String("server-pids", "", "server-side proxy process ids, comma-separated")
	bulkMB := fs.Int64("bulk-mb", 1024, "MiB sent one way in the bulk measurement (0: skip)")
	duration := fs.Duration("duration", 5*time.Second, "length of the new-connection measurement (0: skip)")
	workers := fs.Int("workers", 16, "concurrent workers in the new-connection measurement")
	size := fs.Int("size", 64, "request and response size, bytes")
	pings := fs.Int("pings", 5000, "round trips in the latency measurement (0: skip)")
	_ = fs.Parse(args)
	cp, err := benchutil.ParsePIDs(*cpids)
	if err != nil {
		return err
	}
	sp, err := benchutil.ParsePIDs(*spids)
	if err != nil {
		return err
	}
	m := cpuMeter{cp, sp}
	row := benchutil.Unset()
	row.Peer, row.Round = *peer, *round
	// Warm-up: sessions, pools and caches as in steady state.
	for range 20 {
		if err := echo(*addr, *size, 5*time.Second); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	if *bulkMB > 0 {
		n := *bulkMB << 20
		c0, s0 := m.read()
		d, err := bulk(*addr, n)
		c1, s1 := m.read()
		if err != nil {
			return fmt.Errorf("bulk: %w", err)
		}
		row.BulkBytes = n
		row.BulkMBps = float64(n) / 1e6 / d.Seconds()
		row.BulkCPUPerGi = (c1 - c0 + s1 - s0).Seconds() / (float64(n) / (1 << 30))
	}
	if *duration > 0 {
		c0, s0 := m.read()
		ok, bad, d := conns(*addr, *workers, *size, *duration)
		c1, s1 := m.read()
		row.Conns, row.ConnErrors = ok, bad
		row.ConnPerS = float64(ok) / d.Seconds()
		if ok > 0 {
			per := func(t time.Duration) float64 { return float64(t) / 1e6 / float64(ok) }
			row.ConnCPUms, row.ConnCPUClientms, row.ConnCPUServerms = per(c1-c0+s1-s0), per(c1-c0), per(s1-s0)
		}
	}
	if *pings > 0 {
		lat, err := pingPong(*addr, *size, *pings)
		if err != nil {
			return fmt.Errorf("ping-pong: %w", err)
		}
		slices.Sort(lat)
		row.Pings = int64(len(lat))
		row.P50ms = float64(lat[len(lat)/2]) / 1e6
		row.P99ms = float64(lat[len(lat)*99/100]) / 1e6
	}
	fmt.Println(row.CSV())
	return nil
}

// bulk sends n bytes to the sink on one connection and waits for the ack.
func bulk(addr string, n int64) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Minute))
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	hdr := make([]byte, 9)
	hdr[0] = 'S'
	binary.BigEndian.PutUint64(hdr[1:], uint64(n))
	if _, err := c.Write(hdr); err != nil {
		return 0, err
	}
	for left := n; left > 0; {
		k := min(left, int64(len(buf)))
		if _, err := c.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	if _, err := io.ReadFull(c, hdr[:8]); err != nil {
		return 0, fmt.Errorf("waiting for the sink's ack: %w", err)
	}
	d := time.Since(start)
	if got := binary.BigEndian.Uint64(hdr[:8]); got != uint64(n) {
		return 0, fmt.Errorf("sink acknowledged %d bytes, sent %d", got, n)
	}
	return d, nil
}

// conns runs workers that each connect, do one round trip and close,
// for d. It returns completed and failed connections and the time taken.
func conns(addr string, workers, size int, d time.Duration) (ok, bad int64, took time.Duration) {
	ok, bad, took, err := benchutil.RunFor(workers, d, func() func() error {
		out, in := make([]byte, size), make([]byte, size)
		return func() error {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			return roundTrip(c, out, in)
		}
	})
	if err != nil {
		log.Printf("%s: %d connections failed, first: %v", addr, bad, err)
	}
	return ok, bad, took
}

// pingPong does n round trips on one connection after a warm-up and
// returns each one's duration.
func pingPong(addr string, size, n int) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Minute))
	out, in := make([]byte, size), make([]byte, size)
	for range 200 {
		if err := roundTrip(c, out, in); err != nil {
			return nil, err
		}
	}
	lat := make([]time.Duration, n)
	for i := range lat {
		t := time.Now()
		if err := roundTrip(c, out, in); err != nil {
			return nil, err
		}
		lat[i] = time.Since(t)
	}
	return lat, nil
}

// cmdIdle opens -n connections through -addr, each with one 1-byte round
// trip so that it is proxied end to end, holds them, and prints a CSV
// line: peer,n,base_kib,with_kib,kib_per_conn,each, where the RSS figures
// are summed over -pids and each is every process's own KiB per connection,
// in -pids order, separated by ';'.
func cmdIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	addr := fs.String("addr", "", "address of the client proxy")
	peer := fs.String("peer", "", "peer name for the CSV line")
	pidList := fs.String("pids", "", "proxy process ids (both sides), comma-separated")
	n := fs.Int("n", 10000, "connections to hold open")
	settle := fs.Duration("settle", 3*time.Second, "wait before each RSS reading")
	_ = fs.Parse(args)
	pids, err := benchutil.ParsePIDs(*pidList)
	if err != nil {
		return err
	}
	if err := echo(*addr, 64, 5*time.Second); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(*settle)
	baseEach, err := rssEach(pids)
	if err != nil {
		return err
	}
	held := make([]net.Conn, *n)
	var failed atomic.Int64
	var firstErr benchutil.FirstError
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range held {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := net.DialTimeout("tcp", *addr, 10*time.Second)
			if err == nil {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				b := []byte{'I'}
				if _, err = c.Write(b); err == nil {
					_, err = io.ReadFull(c, b)
				}
				_ = c.SetDeadline(time.Time{})
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.Set(err)
				return
			}
			held[i] = c
		})
	}
	wg.Wait()
	opened := int64(*n) - failed.Load()
	log.Printf("%s: %d idle connections open in %s (%d failed)", *peer, opened, time.Since(start).Round(time.Millisecond), failed.Load())
	defer func() {
		for _, c := range held {
			if c != nil {
				c.Close()
			}
		}
	}()
	if err := firstErr.Err(); err != nil {
		return fmt.Errorf("%d of %d connections failed, first: %w", failed.Load(), *n, err)
	}
	if opened == 0 {
		return errors.New("no connection opened")
	}
	time.Sleep(*settle)
	withEach, err := rssEach(pids)
	if err != nil {
		return err
	}
	// The sum, then each process on its own (in -pids order: client first).
	var base, with int64
	each := make([]string, len(pids))
	for i := range pids {
		base, with = base+baseEach[i], with+withEach[i]
		each[i] = fmt.Sprintf("%.2f", float64(withEach[i]-baseEach[i])/float64(opened))
	}
	fmt.Printf("%s,%d,%d,%d,%.2f,%s\n", *peer, opened, base, with, float64(with-base)/float64(opened), strings.Join(each, ";"))
	return nil
}

// rssEach reads the RSS (KiB) of each process.
func rssEach(pids []int) ([]int64, error) {
	out := make([]int64, len(pids))
	for i, p := range pids {
		v, err := benchutil.RSS([]int{p})
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}
