package sidecar

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
)

// TestKeystorePollWithoutInotify: where no inotify instance can be had
// (fs.inotify.max_user_instances is per user: every container of one UID
// on a node shares it), the 5 s poll of ..data still loads new
// generations, /_status says the folder is not watched, and a generation
// that fails is not retried (and logged) on every poll. The test runs
// itself again in a user namespace whose inotify limit is 0.
func TestKeystorePollWithoutInotify(t *testing.T) {
	if os.Getenv("SIDECAR_TEST_NO_INOTIFY") == "" {
		if err := exec.Command("unshare", "-Ur", "sh", "-c", "echo 0 > /proc/sys/user/max_inotify_instances").Run(); err != nil {
			t.Skipf("cannot make a user namespace without inotify here (unshare -Ur: %v)", err)
		}
		cmd := exec.Command("unshare", "-Ur", "sh", "-c",
			`echo 0 > /proc/sys/user/max_inotify_instances && exec "$0" -test.run '^TestKeystorePollWithoutInotify$' -test.v -test.count 1`, os.Args[0])
		cmd.Env = append(os.Environ(), "SIDECAR_TEST_NO_INOTIFY=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestKeystorePollWithoutInotify") {
			t.Fatalf("in a namespace without inotify: %v\n%s", err, out)
		}
		return
	}
	if w, err := fsnotify.NewWatcher(); err == nil {
		w.Close()
		t.Fatal("inotify is available: the test would not test the poll")
	}
	keyPollInterval = 100 * time.Millisecond
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	var failures atomic.Int32
	log, buf := bufLogs(t, "keystore")
	ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleClient, Log: log, OnReload: func(_ string, _ *Keys, err error) {
		if err != nil {
			failures.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	watchKS(t, ks, nil, 0)
	if ks.Watching() || keysStatus(ks).Watching {
		t.Error("watching without inotify")
	}
	if n := len(logLines(t, buf, "cannot watch the key directory; polling its ..data link every 5 s instead (SIGHUP and --timed-reload still reload)")); n != 1 {
		t.Errorf("%d log lines about the missing watch, want 1", n)
	}
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	waitFor(t, 5*time.Second, "the new generation, by the poll", func() bool { return ks.Current().Generation == gen })
	if lr := ks.LastReload(); lr.Source != "poll" || lr.Err != nil {
		t.Errorf("last reload %+v, want a good one by the poll", lr)
	}
	writeKeys(t, dir, tamper(t, f.files(t, fxClientID, clientKinds)))
	waitFor(t, 5*time.Second, "the broken generation tried", func() bool { return failures.Load() > 0 })
	time.Sleep(10 * keyPollInterval)
	if n := failures.Load(); n != 1 || ks.Current().Generation != gen {
		t.Errorf("a broken generation: %d failed reloads in 10 polls (want 1), keys in force %s (want %s)", n, ks.Current().Generation, gen)
	}
	if n := len(logLines(t, buf, "cannot watch the key directory; polling its ..data link every 5 s instead (SIGHUP and --timed-reload still reload)")); n != 1 {
		t.Errorf("%d log lines about the missing watch after the polls, want 1", n)
	}
}

// TestKeystoreDebounceCapped: a folder touched all the time (here every
// 50 ms, under the 200 ms debounce) does not hold a new generation back:
// the reload comes at most 1 s after the first event of a burst.
func TestKeystoreDebounceCapped(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	ks := mustOpenKS(t, dir, RoleClient)
	watchKS(t, ks, nil, 0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o600)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(300 * time.Millisecond)
	gen := writeKeys(t, dir, f.files(t, fxClientID, clientKinds))
	// Under the 5 s poll, which would find it as well.
	waitFor(t, 3*time.Second, "the new generation while the folder keeps changing", func() bool { return ks.Current().Generation == gen })
	if lr := ks.LastReload(); lr.Source != "fsnotify" {
		t.Errorf("last reload %+v, want fsnotify's", lr)
	}
}

// TestKeystoreSymlinkRepointed: --keys names a symbolic link that is
// repointed atomically (ln -sfn, or a rename over it) to another key
// folder: the new folder is loaded, and then watched (the parent sees only
// a Create of the link's name; the old watch would follow the old folder).
func TestKeystoreSymlinkRepointed(t *testing.T) {
	f := sharedKeys(t)
	base := t.TempDir()
	a, b := filepath.Join(base, "a"), filepath.Join(base, "b")
	writeKeys(t, a, f.files(t, fxClientID, clientKinds))
	genB := writeKeys(t, b, f.files(t, fxClientID, clientKinds))
	link := filepath.Join(base, "keys")
	if err := os.Symlink("a", link); err != nil {
		t.Fatal(err)
	}
	ks := mustOpenKS(t, link, RoleClient)
	watchKS(t, ks, nil, 0)
	if err := os.Symlink("b", link+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(link+".tmp", link); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the repointed folder", func() bool { return ks.Current().Generation == genB })
	gen := writeKeys(t, b, f.files(t, fxClientID, clientKinds))
	waitFor(t, 3*time.Second, "a generation written into the new folder", func() bool { return ks.Current().Generation == gen })
	if lr := ks.LastReload(); lr.Source != "fsnotify" {
		t.Errorf("last reload %+v, want fsnotify's (not the 5 s poll's)", lr)
	}
	// The old folder is no longer watched: a generation written there
	// changes nothing.
	writeKeys(t, a, f.files(t, fxClientID, clientKinds))
	time.Sleep(500 * time.Millisecond)
	if ks.Current().Generation != gen {
		t.Errorf("a generation written into the old folder was loaded")
	}
}

// expiredSet issues identity's kinds from every D-TA with an expiry at
// about expires (to the second).
func (f *keyFixture) filesExpiring(t *testing.T, identity string, kinds []keydir.Kind, expires time.Time) map[string][]byte {
	t.Helper()
	out := map[string][]byte{keydir.DomainFile: f.dom.Marshal()}
	issued := expires.Add(-time.Duration(dta.IdentityValidityEpochs*int64(f.dom.EpochLen)) * time.Second)
	for _, a := range f.auths {
		env, err := a.Issue(identity, kinds, nil, issued)
		if err != nil {
			t.Fatal(err)
		}
		out[keydir.EnvelopeFile(a.Info.ID)] = env.Marshal()
	}
	return out
}

// TestKeystoreExpiry: a generation that has expired does not replace keys
// that have not (a restored backup would turn the sidecar unready); keys
// that expire while in force, or are expired at start, are logged.
func TestKeystoreExpiry(t *testing.T) {
	f := sharedKeys(t)
	t.Run("expired generation refused", func(t *testing.T) {
		dir := f.serverDir(t, fxServerID)
		ks := mustOpenKS(t, dir, RoleServer)
		before := ks.Current()
		writeKeys(t, dir, f.filesExpiring(t, fxServerID, serverKinds, time.Now().Add(-time.Hour)))
		changed, err := ks.Reload("test")
		if changed || err == nil || !strings.Contains(err.Error(), "expired at") || ks.Current() != before {
			t.Errorf("reload of an expired generation: changed %v, %v; keys replaced %v", changed, err, ks.Current() != before)
		}
		if lr := ks.LastReload(); lr.Err == nil {
			t.Errorf("last reload %+v, want the error", lr)
		}
	})
	t.Run("expired at start", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "keys")
		writeKeys(t, dir, f.filesExpiring(t, fxServerID, serverKinds, time.Now().Add(-time.Hour)))
		log, buf := bufLogs(t, "keystore")
		ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleServer, Log: log})
		if err != nil {
			t.Fatalf("an expired set at start: %v (want it loaded: the sidecar starts unready)", err)
		}
		if n := len(logLines(t, buf, "keys expired: not ready until a new generation loads (is keys fetch --watch running?)")); n != 1 {
			t.Errorf("%d log lines about expired keys at start, want 1", n)
		}
		// A fresh set replaces it.
		gen := writeKeys(t, dir, f.files(t, fxServerID, serverKinds))
		if changed, err := ks.Reload("test"); !changed || err != nil || ks.Current().Generation != gen {
			t.Errorf("a valid set over an expired one: changed %v, %v", changed, err)
		}
	})
	t.Run("expires while in force", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "keys")
		expires := time.Now().Add(2 * time.Second).Truncate(time.Second)
		writeKeys(t, dir, f.filesExpiring(t, fxServerID, serverKinds, expires))
		log, buf := bufLogs(t, "keystore")
		ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleServer, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		watchKS(t, ks, nil, 0)
		waitFor(t, 5*time.Second, "the expiry logged", func() bool {
			return len(logLines(t, buf, "keys expired: not ready until a new generation loads (is keys fetch --watch running?)")) == 1
		})
		if time.Now().Before(ks.Current().ExpiresAt) {
			t.Errorf("expiry logged before %v", ks.Current().ExpiresAt)
		}
	})
}

// TestKeystoreSIGHUPSameGeneration: an operator's SIGHUP that finds
// nothing new says so.
func TestKeystoreSIGHUPSameGeneration(t *testing.T) {
	f := sharedKeys(t)
	dir := f.clientDir(t, fxClientID)
	log, buf := bufLogs(t, "keystore")
	ks, err := OpenKeystore(KeystoreOptions{Dir: dir, Role: RoleClient, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	hup := make(chan os.Signal, 1)
	watchKS(t, ks, hup, 0)
	hup <- syscall.SIGHUP
	waitFor(t, 2*time.Second, "the SIGHUP's log line", func() bool { return len(logLines(t, buf, "keys unchanged: same generation")) == 1 })
}

// TestKeystoreRetriesFailedGeneration: a generation that failed to load is
// tried again by the poll once failedRetryInterval has passed (it may have
// failed for a passing reason; here a file repaired in place), not on
// every poll.
func TestKeystoreRetriesFailedGeneration(t *testing.T) {
	for _, tc := range []struct {
		name  string
		retry time.Duration
		want  bool
	}{
		{"retried", 500 * time.Millisecond, true},
		{"not yet", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldPoll, oldRetry := keyPollInterval, failedRetryInterval
			keyPollInterval, failedRetryInterval = 100*time.Millisecond, tc.retry
			t.Cleanup(func() { keyPollInterval, failedRetryInterval = oldPoll, oldRetry }) // after Watch ends (cleanups run last first)
			f := sharedKeys(t)
			dir := f.clientDir(t, fxClientID)
			ks := mustOpenKS(t, dir, RoleClient)
			watchKS(t, ks, nil, 0)
			good := f.files(t, fxClientID, clientKinds)
			gen := writeKeys(t, dir, tamper(t, good))
			waitFor(t, 5*time.Second, "the broken generation tried", func() bool { return ks.LastReload().Err != nil })
			name := keydir.EnvelopeFile("dta-2")
			if err := os.WriteFile(filepath.Join(dir, gen, name), good[name], 0o600); err != nil {
				t.Fatal(err)
			}
			loaded := eventuallyTrue(2*time.Second, func() bool { return ks.Current().Generation == gen })
			if loaded != tc.want {
				t.Errorf("the repaired generation loaded: %v, want %v (retry every %v)", loaded, tc.want, tc.retry)
			}
		})
	}
}
