package psk

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestResetRacesPeerFIN: a client that resets its stream just
// as the server's FIN for it arrives (proxy: the app went away while the
// backend's last bytes and FIN cross) must lose that stream only.
func TestResetRacesPeerFIN(t *testing.T) {
	cli, srv := sessionPair(t, nil, nil)
	defer cli.Close()
	defer srv.Close()
	go func() {
		for {
			in, err := srv.Accept(context.Background())
			if err != nil {
				if srv.mux.IsClosed() {
					return
				}
				continue
			}
			go func() {
				st, err := in.Accept()
				if err != nil {
					return
				}
				_, _ = st.Write([]byte("x"))
				_ = st.CloseWrite()
			}()
		}
	}()
	deadline := time.Now().Add(2 * time.Second)
	n := 0
	for ; time.Now().Before(deadline); n++ {
		st, err := cli.Open(openCtx(t), "")
		if err != nil {
			t.Fatalf("after %d streams: Open: %v (session cause: %v)", n, err, cli.Err())
		}
		_, _ = io.ReadFull(st, make([]byte, 1))
		_ = st.Reset()
	}
	t.Logf("%d streams, session alive", n)
}
