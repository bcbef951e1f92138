// Command delayline is a TCP relay that delays everything it carries by a
// fixed one-way time in each direction, to time protocols over a long
// round trip on a machine whose kernel has no netem (tc qdisc netem is
// the better tool where it exists: this one does not model loss, pacing
// or bandwidth, only latency).
//
// Per accepted connection it dials -target and forwards each chunk it reads
// -delay after reading it; an EOF is passed on as a half-close -delay
// later. The TCP handshake itself is local, so the client's first bytes
// are also held back one round trip (2 × -delay), as if its connect had
// taken that long: protocols where the client speaks first see the round
// trip TCP costs them.
//
// Usage:
//
//	delayline -listen A -target B -delay 5ms
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("delayline: ")
	listen := flag.String("listen", "127.0.0.1:0", "address to accept connections on")
	target := flag.String("target", "", "address to relay each connection to")
	delay := flag.Duration("delay", 5*time.Millisecond, "one-way delay added in each direction")
	flag.Parse()
	if *target == "" {
		log.Fatal("-target is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relay(c.(*net.TCPConn), *target, *delay)
	}
}

func relay(c *net.TCPConn, target string, delay time.Duration) {
	accepted := time.Now()
	defer c.Close()
	d, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		log.Printf("dial %s: %v", target, err)
		return
	}
	s := d.(*net.TCPConn)
	defer s.Close()
	done := make(chan struct{}, 2)
	go func() { forward(s, c, delay, accepted.Add(2*delay)); done <- struct{}{} }()
	go func() { forward(c, s, delay, accepted); done <- struct{}{} }()
	<-done
	<-done
}

type chunk struct {
	at  time.Time
	b   []byte // nil: EOF
	err error
}

// forward copies src to dst, each chunk written delay after it was read
// (and not before notBefore + delay).
func forward(dst, src *net.TCPConn, delay time.Duration, notBefore time.Time) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			t := time.Now()
			if t.Before(notBefore) {
				t = notBefore
			}
			if n > 0 {
				q <- chunk{at: t.Add(delay), b: b[:n]}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					q <- chunk{at: t.Add(delay), err: err}
				} else {
					q <- chunk{at: t.Add(delay)}
				}
				return
			}
		}
	}()
	for ch := range q {
		time.Sleep(time.Until(ch.at))
		switch {
		case ch.err != nil:
			// The sender's side broke (reset): pass that on as well as
			// a relay can.
			_ = dst.SetLinger(0)
			_ = dst.Close()
			_ = src.Close()
		case ch.b == nil:
			_ = dst.CloseWrite()
		default:
			if _, err := dst.Write(ch.b); err != nil {
				_ = src.Close()
				_ = dst.Close()
			}
		}
	}
}
