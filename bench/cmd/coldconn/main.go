// Command coldconn measures milagro cold connections: every connection is
// a new secure session, as a client sidecar makes when it has none. The
// client sidecar's pool cannot be told to do that (it reuses a session
// while it has one with room, and caps sessions per upstream at 8), so
// this tool plays the client sidecar itself against a real `milagro
// server` process: per connection it does exactly what the sidecar's
// dial does — TCP connect, mpinkex.Client with the keys from a key
// directory, psk.Client (DTLS-PSK and yamux) — then opens one stream,
// does one -size byte round trip with the backend's echo, half-closes,
// reads the EOF that comes back (as the sidecar's pipe does when the app
// closes) and closes the session.
//
// It prints one CSV row (see bench/internal/benchutil.Header) with
// connections per second and proxy CPU per connection: the client side
// is this whole process (getrusage; it includes a few microseconds of load
// generation per connection, but it has no application socket: a client
// sidecar's accept, reads, writes and copy are not in it, ~0.05 ms per
// connection measured on a shared session, so on balance it errs low by
// ~1%), the server side is utime+stime of -server-pids from /proc.
//
// Usage:
//
//	coldconn -addr SERVER -keys CLIENT-KEYDIR -server-id ID -server-pids P \
//	         [-duration 5s] [-workers 16] [-size 64] [-pipeline=false] -peer NAME -round R
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime/pprof"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/bench/internal/benchutil"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/psk"
	"github.com/milagro-sc/milagro/sidecar"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("coldconn: ")
	addr := flag.String("addr", "", "milagro server address")
	keys := flag.String("keys", "", "client key directory written by 'milagro keys fetch'")
	serverID := flag.String("server-id", "", "server identity to ask for and verify")
	spids := flag.String("server-pids", "", "server-side proxy process ids, comma-separated")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	workers := flag.Int("workers", 16, "concurrent workers")
	size := flag.Int("size", 64, "request and response size, bytes")
	peer := flag.String("peer", "milagro-cold", "peer name for the CSV row")
	round := flag.Int("round", 0, "round number for the CSV row")
	abrupt := flag.Bool("abrupt", false, "close the stream and session right after the echo, without the half-close exchange")
	pipeline := flag.Bool("pipeline", true, "send the DTLS ClientHello right behind Msg3, as the client sidecar does (false: wait for Msg4 first)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measured part to this file")
	flag.Parse()
	sp, err := benchutil.ParsePIDs(*spids)
	if err != nil {
		log.Fatal(err)
	}
	ks, err := sidecar.OpenKeystore(sidecar.KeystoreOptions{Dir: *keys, Role: sidecar.RoleClient, Log: zerolog.Nop()})
	if err != nil {
		log.Fatal(err)
	}
	k := ks.Current()
	one := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}).DialContext(ctx, "tcp", *addr)
		if err != nil {
			return err
		}
		c = sidecar.BufferedConn(c)
		res, err := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{Key: k.Client, Permits: k.Permits, ServerID: *serverID,
			EpochLen: k.EpochLen, Grace: 5 * time.Minute, StepTimeout: 10 * time.Second, Pipeline: *pipeline})
		if err != nil {
			c.Close()
			return fmt.Errorf("mpinkex: %w", err)
		}
		sess, err := psk.Client(ctx, c, res, &psk.Config{HandshakeTimeout: 10 * time.Second, KeepAliveInterval: 30 * time.Second})
		res.Zeroize()
		if err != nil {
			return fmt.Errorf("psk: %w", err)
		}
		defer sess.Close()
		st, err := sess.Open(ctx, "")
		if err != nil {
			return fmt.Errorf("open stream: %w", err)
		}
		defer st.Close()
		_ = st.SetDeadline(time.Now().Add(5 * time.Second))
		out, in := make([]byte, *size), make([]byte, *size)
		out[0] = 'P'
		if _, err := st.Write(out); err != nil {
			return err
		}
		if _, err := io.ReadFull(st, in); err != nil {
			return err
		}
		if *abrupt {
			return nil // Close, then the session's Close, with the peer's FIN unread
		}
		// As the client sidecar's pipe ends: half-close, then the
		// backend's EOF comes back through the server sidecar.
		if err := st.CloseWrite(); err != nil {
			return err
		}
		if n, err := io.ReadFull(st, in[:1]); err != io.EOF {
			return fmt.Errorf("want EOF after the echo, got %d bytes, %v", n, err)
		}
		return nil
	}
	for range 3 { // warm-up: the server's caches, this process's precomputations
		if err := one(); err != nil {
			log.Fatalf("warm-up: %v", err)
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	self0, srv0 := selfCPU(), serverCPU(sp)
	ok, bad, took, firstErr := benchutil.RunFor(*workers, *duration, func() func() error { return one })
	self1, srv1 := selfCPU(), serverCPU(sp)
	if firstErr != nil {
		log.Printf("%d connections failed, first: %v", bad, firstErr)
	}
	row := benchutil.Unset()
	row.Peer, row.Round = *peer, *round
	row.Conns, row.ConnErrors = ok, bad
	row.ConnPerS = float64(row.Conns) / took.Seconds()
	if row.Conns > 0 {
		per := func(t time.Duration) float64 { return float64(t) / 1e6 / float64(row.Conns) }
		row.ConnCPUms, row.ConnCPUClientms, row.ConnCPUServerms = per(self1-self0+srv1-srv0), per(self1-self0), per(srv1-srv0)
	}
	fmt.Println(row.CSV())
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	d, err := benchutil.SelfCPU()
	if err != nil {
		log.Fatal(err)
	}
	return d
}

func serverCPU(pids []int) time.Duration {
	d, err := benchutil.CPU(pids)
	if err != nil {
		log.Fatal(err)
	}
	return d
}
