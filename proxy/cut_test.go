package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeStream behaves as psk.Stream does for the pipe: reads end with EOF,
// Close calls the NotifyReadable function synchronously (psk: st.tr.readable()),
// and Cut reports the session's end once it is flagged.
type fakeStream struct {
	net.Conn // unused methods
	mu       sync.Mutex
	f        func()
	closed   bool
	cut      atomic.Bool
}

func (s *fakeStream) Read(p []byte) (int, error) { return 0, io.EOF }
func (s *fakeStream) Write(p []byte) (int, error) {
	return len(p), nil
}
func (s *fakeStream) CloseWrite() error { return nil }
func (s *fakeStream) Readable() bool    { return true }
func (s *fakeStream) NotifyReadable(f func()) {
	s.mu.Lock()
	s.f = f
	s.mu.Unlock()
	if f != nil {
		f()
	}
}
func (s *fakeStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	f := s.f
	s.mu.Unlock()
	if f != nil {
		f() // psk.Stream.Close: st.tr.readable()
	}
	return nil
}
func (s *fakeStream) Cut() error {
	if s.cut.Load() {
		return errors.New("session ended")
	}
	return nil
}

// TestCutWatcherReentrantClose: the session ends (Cut non-nil) and, before
// its end notifies the stream, the pipe's context is cancelled: closeBoth →
// Stream.Close → the Cut watcher → cut → closeBoth again, which deadlocked
// inside sync.Once.Do when cut ran on the notifying goroutine.
func TestCutWatcherReentrantClose(t *testing.T) {
	app, other := tcpPair(t)
	defer other.Close()
	st := &fakeStream{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	Start(ctx, st, app, 0, func(_ Stats, err error) { done <- err })
	time.Sleep(100 * time.Millisecond) // the stream's reads have ended: watcher registered; app→stream still runs
	st.cut.Store(true)                 // the session ends ...
	cancel()                           // ... and the pipe is cancelled before its end is notified
	select {
	case err := <-done:
		_ = err
	case <-time.After(30 * time.Second):
		t.Fatal("pipe never ended: closeBoth re-entered its sync.Once (deadlock)")
	}
}
