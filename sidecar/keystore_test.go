package sidecar

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

func openKS(t *testing.T, dir string, role Role) (*Keystore, error) {
	t.Helper()
	return OpenKeystore(KeystoreOptions{Dir: dir, Role: role, Log: testLog(t)})
}

func mustOpenKS(t *testing.T, dir string, role Role) *Keystore {
	t.Helper()
	ks, err := openKS(t, dir, role)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestKeystoreOpen(t *testing.T) {
	f := sharedKeys(t)
	cdir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, cdir, RoleClient)
	k := ks.Current()
	link, _ := os.Readlink(filepath.Join(cdir, keydir.DataLink))
	if k.Identity != fxClientID || k.Domain != fxDomain || k.EpochLen != 86400*time.Second || k.Generation != link {
		t.Errorf("client keys: %+v (generation want %s)", k, link)
	}
	if k.Client == nil || k.Server != nil || len(k.Permits) != 2 {
		t.Fatalf("client keys hold client %v, server %v, %d permits", k.Client != nil, k.Server != nil, len(k.Permits))
	}
	ep := f.epochs(t)
	if k.Permits[0].Epoch != ep[0] || k.Permits[1].Epoch != ep[1] {
		t.Errorf("permit epochs %d, %d; want %v", k.Permits[0].Epoch, k.Permits[1].Epoch, ep)
	}
	if want := time.Unix(int64(ep[1]+1)*86400, 0); !k.PermitExpiry().Equal(want) {
		t.Errorf("PermitExpiry %v, want %v", k.PermitExpiry(), want)
	}
	if !k.ExpiresAt.After(time.Now()) || k.IssuedAt.After(time.Now()) {
		t.Errorf("issued %v, expires %v", k.IssuedAt, k.ExpiresAt)
	}
	if lr := ks.LastReload(); lr.Err != nil || lr.Source != "start" {
		t.Errorf("LastReload %+v", lr)
	}

	sks := mustOpenKS(t, f.serverDir(t, fxServerID), RoleServer)
	if s := sks.Current(); s.Identity != fxServerID || s.Server == nil || s.Client != nil || len(s.Permits) != 0 || !s.PermitExpiry().IsZero() {
		t.Errorf("server keys: %+v", s)
	}
}

func TestKeystoreOpenErrors(t *testing.T) {
	f := sharedKeys(t)
	base := t.TempDir()

	empty := filepath.Join(base, "empty")
	os.Mkdir(empty, 0o700)
	notDir := filepath.Join(base, "file")
	os.WriteFile(notDir, []byte("x"), 0o600)

	// A set whose envelope was tampered with.
	broken := filepath.Join(base, "broken")
	writeKeys(t, broken, tamper(t, f.files(t, fxClientID, clientKinds)))

	// A set lacking one D-TA's envelope.
	partial := filepath.Join(base, "partial")
	files := f.files(t, fxClientID, clientKinds)
	delete(files, keydir.EnvelopeFile("dta-3"))
	writeKeys(t, partial, files)

	// A readable-by-others generation.
	loose := f.clientDir(t, fxClientID)
	gen, _ := os.Readlink(filepath.Join(loose, keydir.DataLink))
	if err := os.Chmod(filepath.Join(loose, gen, keydir.EnvelopeFile("dta-1")), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		dir  string
		role Role
		want string
	}{
		{"missing", filepath.Join(base, "nope"), RoleClient, "no ..data"},
		{"empty", empty, RoleClient, "no ..data"},
		{"not a folder", notDir, RoleClient, "not a directory"},
		{"tampered envelope", broken, RoleClient, "signature"},
		{"missing D-TA", partial, RoleClient, "dta-3"},
		{"group-readable", loose, RoleClient, "group- or world-accessible"},
		{"server set as client", f.serverDir(t, fxServerID), RoleClient, "holds no client key: fetch with --kinds client,permit"},
		{"client set as server", f.clientDir(t, fxClientID), RoleServer, "lacks the server identity share or the domain server share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks, err := openKS(t, tc.dir, tc.role)
			if err == nil {
				t.Fatalf("OpenKeystore succeeded: %+v", ks.Current())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

// A client key directory that stores a token needs the factor.
func TestKeystoreToken(t *testing.T) {
	f := sharedKeys(t)
	files := f.files(t, fxClientID, clientKinds)
	envs := map[string][]byte{}
	for _, d := range f.dom.DTAs {
		envs[d.ID] = files[keydir.EnvelopeFile(d.ID)]
	}
	set, err := keydir.Assemble(f.dom, envs, false)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := mpinkex.Token(*set.CS, fxClientID, "1234")
	if err != nil {
		t.Fatal(err)
	}
	files[keydir.TokenFile] = keydir.MarshalToken(fxClientID, tok)
	for id, b := range envs {
		env, _ := keydir.ParseEnvelope(b)
		files[keydir.EnvelopeFile(id)] = env.Withhold(keydir.KindClient).Marshal()
	}
	dir := filepath.Join(t.TempDir(), "keys")
	writeKeys(t, dir, files)

	// A setting missing: a ConfigError (exit 2 at the start: a restart
	// loop cannot mend it).
	var ce *ConfigError
	if _, err := openKS(t, dir, RoleClient); !errors.As(err, &ce) || !strings.Contains(err.Error(), "stores a client token: give --factor-file") {
		t.Errorf("without the factor: %v, want a ConfigError", err)
	}
	ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleClient, Factor: "1234", Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if ks.Current().Client == nil || ks.Current().Client.ID() != fxClientID {
		t.Error("no client key rebuilt from the token")
	}
}

func TestKeystoreReload(t *testing.T) {
	f := sharedKeys(t)
	dir := filepath.Join(t.TempDir(), "keys")
	gen1 := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	var reloads []string
	var mu sync.Mutex
	var ks *Keystore
	ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleClient, Log: testLog(t), OnReload: func(src string, cur *Keys, err error) {
		mu.Lock()
		defer mu.Unlock()
		r := src + ":" + map[bool]string{true: "ok", false: "error"}[err == nil]
		if cur != ks.Current() { // the keys in force after the attempt, already swapped in
			r += "(not current)"
		}
		reloads = append(reloads, r)
	}})
	if err != nil {
		t.Fatal(err)
	}
	first := ks.Current()
	if first.Generation != gen1 {
		t.Fatalf("generation %s, want %s", first.Generation, gen1)
	}

	// Nothing new: a reload succeeds without a change.
	if changed, err := ks.Reload("test"); err != nil || changed {
		t.Errorf("Reload of the same generation: %v, %v", changed, err)
	}

	// A new valid generation is swapped in.
	gen2 := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	if changed, err := ks.Reload("test"); err != nil || !changed {
		t.Fatalf("Reload of a new generation: %v, %v", changed, err)
	}
	second := ks.Current()
	if second.Generation != gen2 || second == first || second.Client == nil {
		t.Fatalf("after reload: generation %s (want %s)", second.Generation, gen2)
	}

	// A broken generation leaves the current keys serving and is reported.
	bad := writeKeys(t, dir, tamper(t, f.files(t, fxClientID, clientKinds)))
	changed, err := ks.Reload("test")
	if err == nil || changed || !errors.Is(err, keydir.ErrSignature) {
		t.Fatalf("Reload of a tampered set: %v, %v; want ErrSignature", changed, err)
	}
	if ks.Current() != second {
		t.Fatal("a broken set replaced the keys")
	}
	if lr := ks.LastReload(); lr.Err == nil || lr.Source != "test" || time.Since(lr.At) > time.Minute || lr.Failed != bad {
		t.Errorf("LastReload %+v, want the error and the generation that failed, %s", lr, bad)
	}

	// A set for another identity is refused: a sidecar does not change
	// identity under way.
	writeKeys(t, dir, f.files(t, fxOtherID, clientKinds))
	if changed, err := ks.Reload("test"); err == nil || changed || !strings.Contains(err.Error(), "restart it to change identity") {
		t.Fatalf("Reload of another identity: %v, %v", changed, err)
	}
	if ks.Current() != second || ks.LastReload().Err == nil {
		t.Fatal("another identity's keys were swapped in, or not reported")
	}

	// A server set in a client's key directory is refused too.
	writeKeys(t, dir, f.files(t, fxClientID, serverKinds))
	if _, err := ks.Reload("test"); err == nil || !strings.Contains(err.Error(), "holds no client key") {
		t.Fatalf("Reload of a server set as client: %v", err)
	}
	if ks.Current() != second {
		t.Fatal("server set swapped into a client keystore")
	}

	// Recovery: the next good set is taken, and the error cleared.
	gen5 := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	if changed, err := ks.Reload("test"); err != nil || !changed || ks.Current().Generation != gen5 || ks.LastReload().Err != nil || ks.LastReload().Failed != "" {
		t.Fatalf("recovery: %v, %v, generation %s", changed, err, ks.Current().Generation)
	}
	mu.Lock()
	got := strings.Join(reloads, " ")
	mu.Unlock()
	if want := "test:ok test:ok test:error test:error test:error test:ok"; got != want {
		t.Errorf("OnReload calls %q, want %q", got, want)
	}
}

// Concurrent reloads and readers: Current is always a whole, valid set.
func TestKeystoreConcurrentReload(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for !stop.Load() {
				k := ks.Current()
				if k.Client == nil || k.Identity != fxClientID || len(k.Permits) != 2 {
					t.Error("incomplete keys visible")
					return
				}
			}
		})
	}
	wg.Go(func() {
		for !stop.Load() {
			ks.Reload("reader")
		}
	})
	for range 5 {
		writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
		if _, err := ks.Reload("writer"); err != nil {
			// Write removes the previous generation right after the
			// swap; Load retries on the new one, so this must not fail.
			t.Errorf("Reload while writing: %v", err)
		}
	}
	stop.Store(true)
	wg.Wait()
}

// watchKS runs Watch until the test ends.
func watchKS(t *testing.T, ks *Keystore, hup chan os.Signal, interval time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ks.Watch(ctx, hup, interval) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	time.Sleep(50 * time.Millisecond) // let the watcher register
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func TestKeystoreWatch(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	hup := make(chan os.Signal, 1)
	watchKS(t, ks, hup, 0)

	// A new generation (..data swap) is picked up within about a second.
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	d := waitFor(t, 1500*time.Millisecond, "fsnotify reload", func() bool { return ks.Current().Generation == gen })
	t.Logf("fsnotify reload after %v", d)
	if lr := ks.LastReload(); lr.Source != "fsnotify" || lr.Err != nil {
		t.Errorf("LastReload %+v", lr)
	}

	// A broken generation is reported and the keys stay.
	before := ks.Current()
	writeKeys(t, dir, tamper(t, f.files(t, fxClientID, clientKinds)))
	waitFor(t, 1500*time.Millisecond, "failed reload reported", func() bool { return ks.LastReload().Err != nil })
	if ks.Current() != before {
		t.Fatal("a broken generation replaced the keys")
	}

	// SIGHUP reloads (here: nothing new on disk but the broken set, so
	// it fails again and the keys stay).
	hup <- syscall.SIGHUP
	waitFor(t, time.Second, "SIGHUP reload", func() bool { return ks.LastReload().Source == "sighup" })
	if lr := ks.LastReload(); lr.Err == nil || ks.Current() != before {
		t.Fatalf("SIGHUP with a broken set on disk: %+v; want an error and the keys kept", lr)
	}

	// And the next good generation is taken.
	gen = writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	waitFor(t, 1500*time.Millisecond, "recovery", func() bool { return ks.Current().Generation == gen && ks.LastReload().Err == nil })
}

// SIGHUP alone (no file events in flight) reloads: the reload is recorded
// with its source, and the unchanged generation keeps the same Keys (the
// client's per-server caches survive).
func TestKeystoreSIGHUP(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	hup := make(chan os.Signal, 1)
	watchKS(t, ks, hup, 0)
	time.Sleep(300 * time.Millisecond)
	if lr := ks.LastReload(); lr.Source != "start" {
		t.Fatalf("reloaded without a trigger: %+v", lr)
	}
	before := ks.Current()
	hup <- syscall.SIGHUP
	waitFor(t, time.Second, "SIGHUP reload", func() bool { return ks.LastReload().Source == "sighup" })
	if lr := ks.LastReload(); lr.Err != nil || ks.Current() != before {
		t.Errorf("SIGHUP with the same set on disk: %+v, keys replaced: %v", lr, ks.Current() != before)
	}
}

// TestKeystoreWatchCatchesUp: a generation written after the first load
// but before the watch started (no event for it) is loaded when the
// watch starts.
func TestKeystoreWatchCatchesUp(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	watchKS(t, ks, nil, 0)
	waitFor(t, 2*time.Second, "the missed generation", func() bool { return ks.Current().Generation == gen })
}

// TestKeystoreWatchDirReplaced: the key folder deleted and written again,
// or replaced by a rename, is watched again (its parent is watched too):
// later generations are still picked up without SIGHUP.
func TestKeystoreWatchDirReplaced(t *testing.T) {
	f := sharedKeys(t)
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, dir string)
	}{
		{"deleted and recreated", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond)
			writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
		}},
		{"renamed into place", func(t *testing.T, dir string) {
			next := dir + ".next"
			writeKeys(t, next, f.files(t, fxClientID, clientKinds))
			old := dir + ".old"
			if err := os.Rename(dir, old); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(next, dir); err != nil {
				t.Fatal(err)
			}
			os.RemoveAll(old)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := f.clientDir(t, fxClientID)
			ks := mustOpenKS(t, dir, RoleClient)
			watchKS(t, ks, nil, 0)
			time.Sleep(100 * time.Millisecond)
			tc.replace(t, dir)
			waitFor(t, 3*time.Second, "the replaced folder's keys", func() bool {
				g, err := os.Readlink(filepath.Join(dir, keydir.DataLink))
				return err == nil && ks.Current().Generation == g
			})
			// And the folder is watched again: the next generation comes too.
			gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
			waitFor(t, 3*time.Second, "a generation written after the replacement", func() bool { return ks.Current().Generation == gen })
		})
	}
}

func TestKeystoreTimedReload(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	watchKS(t, ks, nil, 100*time.Millisecond)
	waitFor(t, time.Second, "timed reload", func() bool {
		return ks.Current().Generation == gen && ks.LastReload().Source == "timer"
	})
}

// TestKeystoreWatchBadDir: a folder that cannot be watched (absent when
// the watch starts) does not stop SIGHUP or the timer, and once it is back
// its changes are watched again.
func TestKeystoreWatchBadDir(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	watchKS(t, ks, hup, 0)
	time.Sleep(100 * time.Millisecond)
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	waitFor(t, 3*time.Second, "the folder's keys once it is back", func() bool { return ks.Current().Generation == gen })
	hup <- syscall.SIGHUP
	waitFor(t, time.Second, "SIGHUP reload", func() bool { return ks.LastReload().Source == "sighup" })
	if err := ks.Watch(canceledCtx(), nil, 0); err != nil {
		t.Errorf("Watch ended by its context: %v, want nil", err)
	}
}

func canceledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
