package sidecar

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

// Role says which keys a sidecar needs from its key directory.
type Role int

// Roles.
const (
	RoleServer Role = iota // SK and SS
	RoleClient             // CS (or a token and the factor), permits optional
)

// Keys is one validated generation of key material, ready for handshakes.
// It is immutable; the keystore swaps whole Keys atomically.
type Keys struct {
	Identity   string
	Domain     string
	EpochLen   time.Duration
	Generation string
	IssuedAt   time.Time
	ExpiresAt  time.Time
	LoadedAt   time.Time
	Server     *mpinkex.ServerKey // RoleServer
	Client     *mpinkex.ClientKey // RoleClient
	Permits    []mpinkex.Permit   // RoleClient, ascending epochs
}

// PermitExpiry returns the end of the last permit epoch (zero without permits).
func (k *Keys) PermitExpiry() time.Time {
	if len(k.Permits) == 0 {
		return time.Time{}
	}
	last := k.Permits[len(k.Permits)-1].Epoch
	return time.Unix(int64(last+1)*int64(k.EpochLen/time.Second), 0)
}

// ReloadStatus describes the last reload attempt.
type ReloadStatus struct {
	At     time.Time
	Err    error
	Source string
	// Failed is, after a failed reload, the generation the key
	// directory's ..data link names (the one that failed to load), if it
	// is not the one in force.
	Failed string
}

// Keystore loads the key directory, validates every new generation in full
// and swaps it in atomically; a broken or partial generation leaves the
// previous keys serving. New handshakes use the new keys; sessions already
// established are not touched.
type Keystore struct {
	dir    string
	role   Role
	factor string
	log    zerolog.Logger
	cur    atomic.Pointer[Keys]

	watching atomic.Bool // an inotify watch on the folder is in place

	mu       sync.Mutex // serialises reloads
	last     atomic.Pointer[ReloadStatus]
	onReload func(source string, current *Keys, err error)
}

// KeystoreOptions configures OpenKeystore.
type KeystoreOptions struct {
	Dir    string
	Role   Role
	Factor string // client only, when the directory holds a token
	Log    zerolog.Logger
	// OnReload is called after every reload attempt (metrics) with the
	// keys in force after it: the new set, or the old one when err != nil.
	OnReload func(source string, current *Keys, err error)
}

// OpenKeystore loads the key directory; the first load must succeed.
func OpenKeystore(opt KeystoreOptions) (*Keystore, error) {
	k := &Keystore{dir: opt.Dir, role: opt.Role, factor: opt.Factor, log: opt.Log, onReload: opt.OnReload}
	keys, err := k.load()
	if err != nil {
		return nil, err
	}
	k.cur.Store(keys)
	k.last.Store(&ReloadStatus{At: keys.LoadedAt, Source: "start"})
	k.noteExpired(keys)
	return k, nil
}

// noteExpired logs keys that have expired: the sidecar is not ready until
// a new generation loads.
func (k *Keystore) noteExpired(keys *Keys) {
	if !keys.ExpiresAt.After(time.Now()) {
		k.log.Error().Str("generation", keys.Generation).Time("expired", keys.ExpiresAt).Msg("keys expired: not ready until a new generation loads (is keys fetch --watch running?)")
	}
}

// Current returns the keys in force.
func (k *Keystore) Current() *Keys { return k.cur.Load() }

// Watching reports whether Watch has an inotify watch on the key folder
// (else it finds changes by its 5 s poll, SIGHUP and the timer).
func (k *Keystore) Watching() bool { return k.watching.Load() }

// LastReload returns the last reload attempt.
func (k *Keystore) LastReload() ReloadStatus { return *k.last.Load() }

func (k *Keystore) load() (*Keys, error) {
	set, err := keydir.Load(k.dir)
	if err != nil {
		return nil, err
	}
	defer set.Zeroize() // mpinkex's keys below hold copies
	keys := &Keys{
		Identity: set.Identity, Domain: set.Domain.Name, EpochLen: time.Duration(set.Domain.EpochLen) * time.Second,
		Generation: set.Generation, IssuedAt: set.IssuedAt, ExpiresAt: set.ExpiresAt, LoadedAt: time.Now(),
	}
	switch k.role {
	case RoleServer:
		if set.SK == nil || set.SS == nil {
			return nil, fmt.Errorf("key directory %s (%s) lacks the server identity share or the domain server share: fetch with --kinds server,domain", k.dir, set.Identity)
		}
		if keys.Server, err = mpinkex.NewServerKey(set.Identity, *set.SS, *set.SK); err != nil {
			return nil, fmt.Errorf("key directory %s: %w", k.dir, err)
		}
	case RoleClient:
		switch {
		case set.Token != nil:
			if k.factor == "" {
				// A setting missing, not a broken key: at the start a
				// usage error (exit 2: no restart loop can mend it).
				return nil, configErr(fmt.Errorf("key directory %s stores a client token: give --factor-file", k.dir))
			}
			keys.Client, err = mpinkex.NewClientKeyFromToken(set.Identity, *set.Token, k.factor)
		case set.CS != nil:
			keys.Client, err = mpinkex.NewClientKey(set.Identity, *set.CS)
		default:
			return nil, fmt.Errorf("key directory %s (%s) holds no client key: fetch with --kinds client,permit", k.dir, set.Identity)
		}
		if err != nil {
			return nil, fmt.Errorf("key directory %s: %w", k.dir, err)
		}
		for _, e := range set.Epochs() {
			keys.Permits = append(keys.Permits, mpinkex.Permit{Epoch: e, TP: set.Permits[e]})
		}
		sort.Slice(keys.Permits, func(i, j int) bool { return keys.Permits[i].Epoch < keys.Permits[j].Epoch })
	}
	return keys, nil
}

// Reload loads the directory again and swaps the keys if the whole set
// validates. It reports whether the generation changed.
func (k *Keystore) Reload(source string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	keys, err := k.load()
	old := k.cur.Load()
	if err == nil && keys.Identity != old.Identity {
		err = fmt.Errorf("key directory now holds keys for %q, this sidecar runs as %q: restart it to change identity", keys.Identity, old.Identity)
	}
	if now := time.Now(); err == nil && keys.Generation != old.Generation && !keys.ExpiresAt.After(now) && old.ExpiresAt.After(now) {
		// A restored backup, an old generation put back: it would turn a
		// working sidecar unready at once.
		err = fmt.Errorf("generation %s expired at %s; the keys in force are valid until %s", keys.Generation,
			keys.ExpiresAt.UTC().Format(time.RFC3339), old.ExpiresAt.UTC().Format(time.RFC3339))
	}
	st := &ReloadStatus{At: time.Now(), Err: err, Source: source}
	if err != nil {
		if gen, _ := os.Readlink(filepath.Join(k.dir, keydir.DataLink)); gen != old.Generation {
			st.Failed = gen
		}
	}
	k.last.Store(st)
	if err != nil {
		if k.onReload != nil {
			k.onReload(source, old, err)
		}
		k.log.Error().Err(err).Str("source", source).Str("generation", old.Generation).Str("failed_generation", st.Failed).
			Msg("key reload failed; keeping the current keys")
		return false, err
	}
	changed := keys.Generation != old.Generation
	if changed {
		k.cur.Store(keys)
	} else {
		keys = old // the same set: keep its caches (the client's per-server pairing)
	}
	if k.onReload != nil {
		k.onReload(source, keys, nil)
	}
	switch {
	case changed:
		k.log.Info().Str("source", source).Str("generation", keys.Generation).Time("expires", keys.ExpiresAt).Msg("keys reloaded")
	case source == "sighup":
		// Asked for by an operator: say that nothing changed (a file
		// edited in place, not written by keys fetch, is not a new
		// generation).
		k.log.Info().Str("source", source).Str("generation", keys.Generation).Msg("keys unchanged: same generation")
	}
	return changed, nil
}

// Watch reloads on changes of the directory (fsnotify on the folder, which
// sees the ..data swap, debounced: a reload 200 ms after the last event of
// a burst, and at most 1 s after its first, so that a folder touched all
// the time cannot hold reloads back), on every value from hup (SIGHUP) and
// every interval (if > 0), until ctx ends. It also watches the folder's
// parent, so a key folder deleted and written again, replaced by a rename,
// or a symbolic link to it repointed, is watched again; a change made
// between the first load and the start of the watch is reloaded at once.
// Every 5 s it also reads the ..data link, and reloads when it names a
// generation other than the one in force (one that failed to load is
// tried again once a minute, and when the keys in force expire): the
// safety net for lost events, and for a host where inotify
// cannot be had (fs.inotify.max_user_instances is per user, and every
// container of one UID on a node shares it); the same tick retries a
// watcher that could not start. It returns nil when ctx ends.
func (k *Keystore) Watch(ctx context.Context, hup <-chan os.Signal, interval time.Duration) error {
	const debounce, maxDelay = 200 * time.Millisecond, time.Second
	deb := time.NewTimer(time.Hour)
	deb.Stop()
	defer deb.Stop()
	var burst time.Time // the first event not yet reloaded
	kick := func() {
		if burst.IsZero() {
			burst = time.Now()
		}
		if time.Since(burst) < maxDelay { // else the timer set before fires within maxDelay
			deb.Reset(debounce)
		}
	}
	dir := filepath.Clean(k.dir)
	parent := filepath.Dir(dir)
	dataGen := func() string {
		gen, _ := os.Readlink(filepath.Join(dir, keydir.DataLink))
		return gen
	}

	// The ..data target of the last failed reload: the poll and the watch
	// retry it only once a minute (a broken generation is not logged every
	// 5 s; one that failed for a passing reason, EMFILE say, still loads).
	failedGen, failedAt := "", time.Time{}
	// behind reports whether ..data names a generation to load: not the
	// one in force, nor one that failed less than a minute ago.
	behind := func() bool {
		gen := dataGen()
		return gen != "" && gen != k.Current().Generation && (gen != failedGen || time.Since(failedAt) >= failedRetryInterval)
	}

	// The watcher; k.watching says whether the folder's watch is in place.
	var w *fsnotify.Watcher
	var events <-chan fsnotify.Event
	var errs <-chan error
	warned := false // a watch that cannot be had is logged once, not every poll
	cannotWatch := func(err error) {
		if !warned {
			k.log.Error().Err(err).Str("dir", dir).Msg("cannot watch the key directory; polling its ..data link every 5 s instead (SIGHUP and --timed-reload still reload)")
			warned = true
		}
	}
	stopWatcher := func() {
		if w != nil {
			w.Close()
		}
		w, events, errs = nil, nil, nil
		k.watching.Store(false)
	}
	defer stopWatcher()
	watch := func() { // (re)start the watcher and (re)add the folder's watch
		if w == nil {
			nw, err := fsnotify.NewWatcher()
			if err != nil {
				cannotWatch(err)
				return
			}
			w, events, errs = nw, nw.Events, nw.Errors
			if err := w.Add(parent); err != nil && !warned {
				k.log.Warn().Err(err).Str("dir", parent).Msg("cannot watch the key directory's parent; a key directory replaced as a whole is found by the 5 s poll")
			}
		}
		if k.watching.Load() {
			return
		}
		if err := w.Add(dir); err != nil {
			cannotWatch(err)
			return
		}
		if warned {
			k.log.Info().Str("dir", dir).Msg("watching the key directory again")
		}
		warned = false
		k.watching.Store(true)
	}
	watch()
	if behind() { // changed between the first load and the watch
		kick()
	}

	reload := func(source string) {
		gen := dataGen()
		burst = time.Time{}
		_, err := k.Reload(source)
		switch {
		case err == nil:
			failedGen = ""
		case dataGen() == gen: // else unknown which generation failed: the next look tells
			failedGen, failedAt = gen, time.Now()
		}
	}
	poll := time.NewTicker(keyPollInterval)
	defer poll.Stop()
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	defer expiry.Stop()
	armedFor := "" // the generation whose expiry the timer is set for
	for {
		if cur := k.Current(); cur.Generation != armedFor {
			armedFor = cur.Generation
			expiry.Stop()
			if d := time.Until(cur.ExpiresAt); d > 0 { // an expired set was logged as it loaded
				expiry.Reset(d)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			switch {
			case !ok:
				k.log.Error().Msg("key directory watcher closed; polling its ..data link every 5 s until it starts again")
				stopWatcher()
				kick()
			case ev.Name == dir:
				// The folder itself, seen from its parent: gone (deleted,
				// renamed away), back (created, renamed into place), or a
				// link to it repointed (only a Create: the old watch would
				// go on following the old target). Watch it anew.
				_ = w.Remove(dir)
				k.watching.Store(false)
				watch()
				kick()
			case filepath.Dir(ev.Name) != dir, filepath.Base(ev.Name) == ".."+"lock":
				// a sibling of the key folder, or keys fetch's lock
			default:
				kick()
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// E.g. fsnotify.ErrEventOverflow: events were lost, so look.
			k.log.Warn().Err(err).Msg("key directory watcher error")
			kick()
		case <-deb.C:
			reload("fsnotify")
		case <-poll.C:
			watch()
			if burst.IsZero() && behind() {
				reload("poll")
			}
		case <-hup:
			reload("sighup")
		case <-tick:
			watch()
			reload("timer")
		case <-expiry.C:
			if gen := dataGen(); gen != "" && gen != k.Current().Generation {
				reload("expiry") // a newer generation on disk, whatever failed before
			}
			k.noteExpired(k.Current())
		}
	}
}

// keyPollInterval is how often Watch reads the ..data link, and
// failedRetryInterval how often it tries again a generation that failed
// to load (variables for the tests).
var (
	keyPollInterval     = 5 * time.Second
	failedRetryInterval = time.Minute
)
