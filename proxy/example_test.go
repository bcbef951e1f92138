package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/milagro-sc/milagro/proxy"
)

// helloBackend answers each connection with "hello, " and what it read.
func helloBackend() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			c.Write(append([]byte("hello, "), b...))
			c.Close()
		}
	}()
	return ln
}

// listenFront is the relay's listener (proxy.Listen: HOST:PORT or unix:PATH).
func listenFront() net.Listener {
	ln, err := proxy.Listen("127.0.0.1:0", 0)
	if err != nil {
		panic(err)
	}
	return ln
}

// A relay: each accepted connection is piped to the backend, with
// half-close carried through (the client's EOF reaches the backend, whose
// answer still comes back).
func ExamplePipe() {
	backend, front := helloBackend(), listenFront()
	defer backend.Close()
	defer front.Close()
	relayed := make(chan string)
	go func() {
		app, _ := front.Accept()
		b, _ := net.Dial("tcp", backend.Addr().String())
		st, err := proxy.Pipe(context.Background(), app, b, time.Minute)
		relayed <- fmt.Sprintf("relayed %d bytes up, %d down (%v)", st.AToB, st.BToA, err)
	}()

	c, _ := net.Dial("tcp", front.Addr().String())
	c.Write([]byte("world"))
	c.(*net.TCPConn).CloseWrite()
	answer, _ := io.ReadAll(c)
	fmt.Println(string(answer))
	fmt.Println(<-relayed)
	// Output:
	// hello, world
	// relayed 5 bytes up, 12 down (<nil>)
}

// Start is Pipe without the wait: the accepting goroutine goes on at once,
// and done reports the end.
func ExampleStart() {
	backend, front := helloBackend(), listenFront()
	defer backend.Close()
	defer front.Close()
	ended := make(chan proxy.Stats, 1)
	go func() {
		app, _ := front.Accept()
		b, _ := net.Dial("tcp", backend.Addr().String())
		proxy.Start(context.Background(), app, b, time.Minute, func(st proxy.Stats, err error) { ended <- st })
	}()

	c, _ := net.Dial("tcp", front.Addr().String())
	c.Write([]byte("Start"))
	c.(*net.TCPConn).CloseWrite()
	answer, _ := io.ReadAll(c)
	fmt.Println(string(answer))
	st := <-ended
	fmt.Println(st.AToB, st.BToA)
	// Output:
	// hello, Start
	// 5 12
}
