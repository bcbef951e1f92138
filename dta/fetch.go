package dta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

// FetchOptions configures Fetch and Watch.
type FetchOptions struct {
	Domain   *keydir.Domain
	Identity string
	// Tokens are the bearer tokens by D-TA id. Use a different token for
	// each D-TA: a D-TA sees the token it is sent, and with a shared token
	// any one D-TA operator could replay it to the others and collect every
	// share of the workload's key, defeating the split of trust.
	Tokens map[string]string
	// Token is used for D-TAs without an entry in Tokens (development).
	Token string
	Kinds []keydir.Kind // what to ask for
	// Epochs to ask permits for; empty means the current and the next.
	Epochs []uint64
	// Factor, when set, makes the fetcher store client.token = CS − f·A
	// instead of the raw client shares.
	Factor string
	Out    string // key directory
	Client *http.Client
	Now    func() time.Time
	// Timeout bounds each D-TA request (default 15 s).
	Timeout time.Duration
}

// DTAError is one D-TA's failure during a fetch.
type DTAError struct {
	DTA    string
	Status int // HTTP status, 0 if none
	Err    error
}

func (e *DTAError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("D-TA %s: HTTP %d: %v", e.DTA, e.Status, e.Err)
	}
	return fmt.Sprintf("D-TA %s: %v", e.DTA, e.Err)
}

func (e *DTAError) Unwrap() error { return e.Err }

// FetchResult describes a written key set.
type FetchResult struct {
	Set        *keydir.Set
	Generation string
}

// Fetch asks every D-TA of the domain in parallel, verifies every envelope
// against its pinned key, checks identity, kinds and epochs, and writes the
// set to opt.Out only if every D-TA answered correctly. On any failure the
// directory is untouched and the error lists every failing D-TA.
func Fetch(ctx context.Context, opt FetchOptions) (*FetchResult, error) {
	if err := opt.check(); err != nil {
		return nil, err
	}
	now := time.Now
	if opt.Now != nil {
		now = opt.Now
	}
	body := IssueRequest{Identity: opt.Identity, Epochs: opt.Epochs}
	for _, k := range opt.Kinds {
		body.Kinds = append(body.Kinds, string(k))
	}
	wantPermit := slices.Contains(opt.Kinds, keydir.KindPermit)
	if wantPermit && len(body.Epochs) == 0 {
		cur, err := mpinkex.Epoch(now(), time.Duration(opt.Domain.EpochLen)*time.Second)
		if err != nil {
			return nil, err
		}
		body.Epochs = []uint64{cur, cur + 1}
	}
	reqBody, _ := json.Marshal(body)

	files := make(map[string][]byte, len(opt.Domain.DTAs))
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, t := range opt.Domain.DTAs {
		wg.Go(func() {
			b, err := opt.fetchOne(ctx, t, reqBody)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			files[t.ID] = b
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
		return nil, fmt.Errorf("fetch keys for %q: nothing written: %w", opt.Identity, errors.Join(errs...))
	}
	set, err := keydir.Assemble(opt.Domain, files, false)
	if err != nil {
		return nil, fmt.Errorf("fetch keys for %q: nothing written: %w", opt.Identity, err)
	}
	if set.Identity != opt.Identity {
		return nil, fmt.Errorf("fetch keys: D-TAs issued for %q, asked for %q", set.Identity, opt.Identity)
	}
	if wantPermit {
		got := set.Epochs()
		if !slices.Equal(got, body.Epochs) {
			return nil, fmt.Errorf("fetch keys for %q: permits for epochs %v, asked for %v: nothing written", opt.Identity, got, body.Epochs)
		}
	}
	// Every D-TA issued the same kinds (Assemble); they must be the kinds
	// asked for, so that a set lacking a share never replaces a working one.
	has := map[keydir.Kind]bool{
		keydir.KindClient: set.CS != nil, keydir.KindPermit: len(set.Permits) > 0,
		keydir.KindServer: set.SK != nil, keydir.KindDomain: set.SS != nil,
	}
	for _, k := range []keydir.Kind{keydir.KindClient, keydir.KindPermit, keydir.KindServer, keydir.KindDomain} {
		if has[k] != slices.Contains(opt.Kinds, k) {
			return nil, fmt.Errorf("fetch keys for %q: the D-TAs' envelopes %s the %s share, asked for %v: nothing written",
				opt.Identity, map[bool]string{true: "hold", false: "lack"}[has[k]], k, opt.Kinds)
		}
	}
	out := map[string][]byte{keydir.DomainFile: opt.Domain.Marshal()}
	for id, b := range files {
		out[keydir.EnvelopeFile(id)] = b
	}
	if opt.Factor != "" && set.CS != nil {
		tok, err := mpinkex.Token(*set.CS, opt.Identity, opt.Factor)
		if err != nil {
			return nil, fmt.Errorf("fetch keys: %w", err)
		}
		out[keydir.TokenFile] = keydir.MarshalToken(opt.Identity, tok)
		for id, b := range files {
			env, err := keydir.ParseEnvelope(b)
			if err != nil {
				return nil, err
			}
			out[keydir.EnvelopeFile(id)] = env.Withhold(keydir.KindClient).Marshal()
		}
		set.CS.Zeroize()
		set.CS, set.Token = nil, &tok
	}
	gen, err := keydir.Write(opt.Out, out)
	if err != nil {
		return nil, fmt.Errorf("fetch keys: %w", err)
	}
	set.Generation = gen
	return &FetchResult{Set: set, Generation: gen}, nil
}

func (opt *FetchOptions) check() error {
	if opt.Domain == nil {
		return errors.New("fetch keys: no domain")
	}
	if err := opt.Domain.Validate(); err != nil {
		return fmt.Errorf("fetch keys: %w", err)
	}
	if err := mpinkex.ValidateID(opt.Identity); err != nil {
		return fmt.Errorf("fetch keys: identity: %w", err)
	}
	for _, t := range opt.Domain.DTAs {
		if opt.token(t.ID) == "" {
			return fmt.Errorf("fetch keys: no bearer token for D-TA %s", t.ID)
		}
	}
	if len(opt.Kinds) == 0 {
		return errors.New("fetch keys: no share kinds")
	}
	if opt.Out == "" {
		return errors.New("fetch keys: no output directory")
	}
	return nil
}

func (opt *FetchOptions) token(dtaID string) string {
	if t, ok := opt.Tokens[dtaID]; ok {
		return t
	}
	return opt.Token
}

// SharedToken reports whether two or more D-TAs would be sent the same
// bearer token (see Tokens).
func (opt *FetchOptions) SharedToken() bool {
	seen := map[string]bool{}
	for _, t := range opt.Domain.DTAs {
		tok := opt.token(t.ID)
		if seen[tok] {
			return true
		}
		seen[tok] = true
	}
	return false
}

func (opt *FetchOptions) fetchOne(ctx context.Context, t keydir.DTA, body []byte) ([]byte, error) {
	timeout := opt.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(t.URL, "/")+"/v1/issue", bytes.NewReader(body))
	if err != nil {
		return nil, &DTAError{DTA: t.ID, Err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+opt.token(t.ID))
	c := opt.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &DTAError{DTA: t.ID, Err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, keydir.MaxEnvelopeSize+1))
	if err != nil {
		return nil, &DTAError{DTA: t.ID, Status: resp.StatusCode, Err: fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		var e ErrorResponse
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &DTAError{DTA: t.ID, Status: resp.StatusCode, Err: errors.New(printable(truncate(msg, 300)))}
	}
	if len(b) > keydir.MaxEnvelopeSize {
		return nil, &DTAError{DTA: t.ID, Status: resp.StatusCode, Err: errors.New("answer too large")}
	}
	return b, nil
}

// Watch keeps opt.Out fresh: it fetches at once, then renews just after each
// epoch boundary (see renewIn), retrying failures with exponential backoff
// and jitter — capped so that a retry always comes well before the working
// set's last permit runs out. A failed renewal never touches the working
// set. It returns when ctx ends; onFetch (optional) is called after every
// attempt.
func Watch(ctx context.Context, opt FetchOptions, log zerolog.Logger, onFetch func(*FetchResult, error)) error {
	backoff := time.Second
	const maxBackoff = 2 * time.Minute
	for {
		res, err := Fetch(ctx, opt)
		if onFetch != nil {
			onFetch(res, err)
		}
		var wait time.Duration
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait = backoff/2 + rand.N(backoff/2+1)
			msg := "key fetch failed; no key set yet"
			if cur, err := keydir.Load(opt.Out); err == nil {
				msg = "key fetch failed; keeping the current set"
				cur.Zeroize() // only its epochs are needed
				if e := cur.Epochs(); len(e) > 0 {
					end := time.Unix(int64(e[len(e)-1]+1)*int64(cur.Domain.EpochLen), 0)
					if left := end.Sub(opt.now()); left > 0 {
						wait = min(wait, max(time.Second, left/4))
					}
				}
			}
			log.Warn().Err(err).Dur("retry_in", wait).Msg(msg)
			backoff = min(backoff*2, maxBackoff)
		} else {
			backoff = time.Second
			wait = renewIn(res.Set, opt.now())
			log.Info().Str("generation", res.Generation).Time("expires", res.Set.ExpiresAt).Dur("renew_in", wait).Msg("keys written")
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func (opt *FetchOptions) now() time.Time {
	if opt.Now != nil {
		return opt.Now()
	}
	return time.Now()
}

// renewIn schedules the next fetch. With permits the set holds the current
// and the next epoch's; the next fetch is due just after the epoch boundary
// (plus up to a tenth of an epoch, at most 5 minutes, of jitter), so a whole
// epoch of D-TA downtime is tolerated before the permits run out. If the
// set lacks the next epoch's permit, or has no permits, it renews at 90% of
// the remaining lifetime. Never sooner than a second.
func renewIn(s *keydir.Set, now time.Time) time.Duration {
	el := time.Duration(s.Domain.EpochLen) * time.Second
	var d time.Duration
	cur, _ := mpinkex.Epoch(now, el)
	if e := s.Epochs(); len(e) > 0 && e[len(e)-1] > cur {
		next := time.Unix(int64(cur+1)*int64(s.Domain.EpochLen), 0)
		jitter := min(el/10, 5*time.Minute)
		d = next.Sub(now) + rand.N(jitter+1)
	} else {
		d = s.ExpiresAt.Sub(now) * 9 / 10
		d += rand.N(d/10 + 1)
	}
	return max(d, time.Second)
}

// printable replaces control characters in text from a remote server, so
// that it cannot drive the operator's terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
