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
	return k, nil
}

// Current returns the keys in force.
func (k *Keystore) Current() *Keys { return k.cur.Load() }

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
				return nil, fmt.Errorf("key directory %s stores a client token: give --factor-file", k.dir)
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
	k.last.Store(&ReloadStatus{At: time.Now(), Err: err, Source: source})
	if err != nil {
		if k.onReload != nil {
			k.onReload(source, old, err)
		}
		k.log.Error().Err(err).Str("source", source).Str("generation", old.Generation).Msg("key reload failed; keeping the current keys")
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
	if changed {
		k.log.Info().Str("source", source).Str("generation", keys.Generation).Time("expires", keys.ExpiresAt).Msg("keys reloaded")
	}
	return changed, nil
}

// Watch reloads on changes of the directory (fsnotify on the folder, which
// sees the ..data swap, debounced), on every value from hup (SIGHUP) and
// every interval (if > 0), until ctx ends. It also watches the folder's
// parent, so a key folder deleted and written again, or replaced by a
// rename, is watched again; a change made between the first load and the
// start of the watch is reloaded at once. A watcher that cannot start or
// fails later is logged, and SIGHUP and the timer go on working (the
// timer also retries the watch). It returns nil when ctx ends.
func (k *Keystore) Watch(ctx context.Context, hup <-chan os.Signal, interval time.Duration) error {
	const debounce = 200 * time.Millisecond
	deb := time.NewTimer(time.Hour)
	deb.Stop()
	defer deb.Stop()
	dir := filepath.Clean(k.dir)
	parent := filepath.Dir(dir)
	var events <-chan fsnotify.Event
	var errs <-chan error
	w, err := fsnotify.NewWatcher()
	if err != nil {
		k.log.Error().Err(err).Msg("cannot watch the key directory; SIGHUP and --timed-reload still reload")
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
		if err := w.Add(parent); err != nil {
			k.log.Warn().Err(err).Str("dir", parent).Msg("cannot watch the key directory's parent; a key directory replaced as a whole needs SIGHUP")
		}
	}
	watching := false
	watch := func() { // (re)add the folder's watch, then look for what changed meanwhile
		if w == nil {
			return
		}
		if !watching {
			if err := w.Add(dir); err != nil {
				k.log.Warn().Err(err).Str("dir", dir).Msg("cannot watch the key directory; SIGHUP and --timed-reload still reload")
				return
			}
			watching = true
		}
		if gen, err := os.Readlink(filepath.Join(dir, keydir.DataLink)); err == nil && gen != k.Current().Generation {
			deb.Reset(debounce)
		}
	}
	watch()
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			switch {
			case !ok:
				events = nil
				k.log.Error().Msg("key directory watcher closed; SIGHUP and --timed-reload still reload")
			case ev.Name == dir:
				// The folder itself, seen from its parent: gone (deleted,
				// renamed away) or back (created, renamed into place).
				if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
					_ = w.Remove(dir)
					watching = false
				}
				watch()
				deb.Reset(debounce)
			case filepath.Dir(ev.Name) != dir, filepath.Base(ev.Name) == ".."+"lock":
				// a sibling of the key folder, or keys fetch's lock
			default:
				deb.Reset(debounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			// E.g. fsnotify.ErrEventOverflow: events were lost, so look.
			k.log.Warn().Err(err).Msg("key directory watcher error")
			deb.Reset(debounce)
		case <-deb.C:
			_, _ = k.Reload("fsnotify")
		case <-hup:
			_, _ = k.Reload("sighup")
		case <-tick:
			watch()
			_, _ = k.Reload("timer")
		}
	}
}
