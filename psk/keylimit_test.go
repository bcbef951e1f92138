package psk

import (
	"errors"
	"io"
	"testing"
	"time"
)

// TestKeyRecordLimit: once a direction's key has carried KeyRecordLimit
// records the session takes no new streams: the client's Open fails with
// ErrKeyLimit (wrapped in ErrSessionClosed, which proxy.Pool takes as
// "use another session"), the server sends GoAway, and the streams already
// open go on.
func TestKeyRecordLimit(t *testing.T) {
	defer func(v uint64) { KeyRecordLimit = v }(KeyRecordLimit)
	KeyRecordLimit = 64
	leakCheck(t)
	pr := dialPair(t, sharedDomain(t), pairOpts{})
	if pr.cliErr != nil || pr.srvErr != nil {
		t.Fatalf("session setup: client %v, server %v", pr.cliErr, pr.srvErr)
	}
	cli, srv := pr.cli, pr.srv
	serveEcho(t, srv)
	st, err := cli.Open(openCtx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	ping := func() {
		t.Helper()
		if _, err := st.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		ping()
	}
	if _, err := cli.Open(openCtx(t), ""); err != nil {
		t.Fatalf("Open below the limit: %v", err)
	}
	for range 80 { // one record each way at least: past the limit
		ping()
	}
	_, err = cli.Open(openCtx(t), "")
	if !errors.Is(err, ErrKeyLimit) || !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Open past the key's limit = %v, want ErrSessionClosed with ErrKeyLimit", err)
	}
	waitFor(t, "the server's GoAway", func() bool { return cli.mux.RemoteGoAway() })
	ping() // the open stream goes on
	if cli.IsClosed() || srv.IsClosed() {
		t.Error("the limit closed the session")
	}
}
