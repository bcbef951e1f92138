package psk_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/psk"
)

// Example runs both sides on loopback: mpinkex on the TCP connection, then
// psk.Client / psk.Server on the same connection, then one stream to a
// named target that the server echoes.
func Example() {
	// Keys from a single D-TA, for brevity (a domain uses several).
	m, _ := mpinkex.NewMasterShare(rand.Reader)
	cs, _ := m.ClientShare("spiffe://example/web")
	sk, _ := m.ServerShare("spiffe://example/api")
	clientKey, _ := mpinkex.NewClientKey("spiffe://example/web", cs)
	serverKey, _ := mpinkex.NewServerKey("spiffe://example/api", m.DomainShare(), sk)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	// Server: mpinkex, then the DTLS/yamux session, then streams.
	targets := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		res, err := mpinkex.Server(ctx, conn, &mpinkex.ServerConfig{
			Keys:      []*mpinkex.ServerKey{serverKey},
			Authorize: func(string) error { return nil },
		})
		if err != nil {
			conn.Close()
			return
		}
		sess, err := psk.Server(ctx, conn, res, nil)
		res.Zeroize()
		if err != nil {
			return
		}
		defer sess.Close()
		in, err := sess.Accept(ctx)
		if err != nil {
			return
		}
		targets <- sess.PeerID() + " asks for " + in.Target()
		st, err := in.Accept() // status 00
		if err != nil {
			return
		}
		defer st.Close()
		_, _ = io.Copy(st, st) // echo until the client's FIN
		_ = st.CloseWrite()
		// A graceful end, as on SIGTERM: the client may open no more
		// streams, and Drain returns once this side has finished the open
		// ones (here at once: the echo is done).
		_ = sess.Drain(ctx)
	}()

	// Client.
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	// Pipeline: mpinkex returns after Msg3 and psk.Client sends the DTLS
	// ClientHello at once, reading the server's Msg4 (or its refusal)
	// before the first DTLS record: one round trip less.
	res, err := mpinkex.Client(ctx, conn, &mpinkex.ClientConfig{Key: clientKey, ServerID: "spiffe://example/api", Pipeline: true})
	if err != nil {
		log.Fatal(err)
	}
	sess, err := psk.Client(ctx, conn, res, &psk.Config{IdleTimeout: time.Minute})
	res.Zeroize()
	if err != nil {
		log.Fatal(err)
	}
	defer sess.Close()
	fmt.Println("connected to", sess.PeerID())

	st, err := sess.Open(ctx, "echo")
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	fmt.Println(<-targets)
	_, _ = st.Write([]byte("hello"))
	_ = st.CloseWrite() // half-close: the server reads EOF, and still answers
	reply, err := io.ReadAll(st)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", reply)
	// Output:
	// connected to spiffe://example/api
	// spiffe://example/web asks for echo
	// hello
}
