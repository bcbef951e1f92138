// Command backend is the benchmark's backend: one TCP listener, one
// process, two behaviours chosen by the first byte a connection sends.
//
//   - 'S' (sink): then an 8-byte big-endian length L and L bytes, which the
//     backend reads and discards; it then answers with L as 8 bytes, so the
//     sender knows every byte went through the proxies. The connection may
//     carry further sink transfers.
//   - anything else (echo): every byte, the first included, is written back.
//
// Usage:
//
//	backend -listen 127.0.0.1:7000
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "backend listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c)
	}
}

func serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if n == 0 || err != nil {
		return
	}
	if buf[0] == 'S' {
		sink(c, buf, n)
		return
	}
	// Echo: a small buffer first (most echo connections carry 64 bytes);
	// the loop keeps it.
	for {
		if _, err := c.Write(buf[:n]); err != nil {
			return
		}
		if n, err = c.Read(buf); err != nil {
			return
		}
	}
}

// sink serves sink transfers; first holds the n bytes already read.
func sink(c net.Conn, first []byte, n int) {
	pending := append([]byte(nil), first[:n]...)
	buf := make([]byte, 256<<10)
	readFull := func(p []byte) error {
		k := copy(p, pending)
		pending = pending[k:]
		_, err := io.ReadFull(c, p[k:])
		return err
	}
	var hdr [9]byte
	for {
		if err := readFull(hdr[:]); err != nil || hdr[0] != 'S' {
			return
		}
		want := binary.BigEndian.Uint64(hdr[1:])
		got := uint64(0)
		if len(pending) > 0 {
			k := min(uint64(len(pending)), want)
			pending, got = pending[k:], k
		}
		for got < want {
			m, err := c.Read(buf[:min(uint64(len(buf)), want-got)])
			got += uint64(m)
			if err != nil && got < want {
				return
			}
		}
		if _, err := c.Write(hdr[1:]); err != nil {
			return
		}
	}
}
