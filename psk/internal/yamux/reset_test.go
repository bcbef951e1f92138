package yamux

import (
	"errors"
	"io"
	"testing"
	"time"
)

// milagro: the receive loop looks a stream up, releases streamLock, then calls
// processFlags. A Reset from another goroutine in between leaves the stream
// in streamReset, and a FIN in that frame is then a protocol error that
// ended the whole session (now a FIN there is nothing to do). This is
// that interleaving, done by hand.
func TestResetThenFINFromLookedUpStream(t *testing.T) {
	c1, c2 := testConnTCP(t)
	client, server := testClientServerConfig(t, c1, c2, testConfNoKeepAlive(), testConfNoKeepAlive())
	defer client.Close()
	defer server.Close()
	go func() {
		s, err := server.AcceptStream()
		if err == nil {
			defer s.Close()
			_, _ = s.Write([]byte("x"))
		}
	}()
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(st, b); err != nil {
		t.Fatal(err)
	}
	// The receive loop has the stream's pointer (handleStreamMessage's
	// lookup) and is about to process the server's FIN; Reset runs now.
	if err := st.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := st.processFlags(flagFIN); err != nil {
		t.Errorf("a FIN processed right after a local Reset: %v (handleStreamMessage would end the session)", err)
	}
}

// The same, as it happens: the server closes its side as the client resets.
func TestResetRacesPeerFIN(t *testing.T) {
	c1, c2 := testConnTCP(t)
	client, server := testClientServerConfig(t, c1, c2, testConfNoKeepAlive(), testConfNoKeepAlive())
	defer client.Close()
	defer server.Close()
	go func() {
		for {
			s, err := server.AcceptStream()
			if err != nil {
				return
			}
			go func() {
				_, _ = s.Write([]byte("x"))
				_ = s.Close()
			}()
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		st, err := client.OpenStream()
		if err != nil {
			if client.IsClosed() {
				t.Fatalf("after %d streams: the session ended: %v", i, err)
			}
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := io.ReadFull(st, b); err != nil && !errors.Is(err, ErrConnectionReset) {
			t.Fatal(err)
		}
		_ = st.Reset()
		if client.IsClosed() {
			t.Fatalf("after %d streams: the session ended", i)
		}
	}
}
