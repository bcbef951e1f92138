package psk

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"

	"github.com/pion/dtls/v2/pkg/protocol/handshake"
)

// readLog records everything read through it (what the server sent).
type readLog struct {
	net.Conn
	mu sync.Mutex
	in bytes.Buffer
}

func (c *readLog) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.in.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// TestServerSendsNoHelloVerifyRequest: PROTOCOL.md §7, the server skips
// HelloVerifyRequest on TCP: its first DTLS handshake message is the
// ServerHello.
func TestServerSendsNoHelloVerifyRequest(t *testing.T) {
	rl := &readLog{}
	pr := dialPair(t, sharedDomain(t), pairOpts{wrapCli: func(c net.Conn) net.Conn { rl.Conn = c; return rl }})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	rl.mu.Lock()
	b := bytes.Clone(rl.in.Bytes())
	rl.mu.Unlock()
	for range 2 { // Msg2 and Msg4
		if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
			t.Fatalf("short mpinkex frame")
		}
		b = b[2+int(binary.BigEndian.Uint16(b)):]
	}
	if len(b) < recordHeaderLen+1 || b[0] != ctHandshake {
		t.Fatalf("first server record: % x", b[:min(len(b), 16)])
	}
	if typ := handshake.Type(b[recordHeaderLen]); typ != handshake.TypeServerHello {
		t.Fatalf("server's first handshake message is %v, want ServerHello (no HelloVerifyRequest over TCP)", typ)
	}
}
