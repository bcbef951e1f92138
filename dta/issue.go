package dta

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

// IssueRequest is the body of POST /v1/issue.
type IssueRequest struct {
	Identity string   `json:"identity"`
	Kinds    []string `json:"kinds"`
	// Epochs are the permit epochs wanted; empty means the current and the
	// next epoch. Only the current epoch and up to MaxEpochsAhead after it
	// are issued.
	Epochs []uint64 `json:"epochs,omitempty"`
}

// MaxEpochsAhead bounds how far ahead permits are issued.
const MaxEpochsAhead = 3

// ErrBadRequest marks requests that are malformed (400).
var ErrBadRequest = errors.New("bad request")

// IdentityValidityEpochs is how long (in epochs) an envelope without permits
// is valid before a fetcher should renew it.
const IdentityValidityEpochs = 30

// Normalize validates the request and returns the parsed kinds and the
// epochs to issue (sorted, unique).
func (r *IssueRequest) Normalize(now time.Time, epochLen uint64) ([]keydir.Kind, []uint64, error) {
	if err := ValidateIssuableIdentity(r.Identity); err != nil {
		return nil, nil, fmt.Errorf("%w: identity: %w", ErrBadRequest, err)
	}
	if len(r.Kinds) == 0 {
		return nil, nil, fmt.Errorf("%w: no kinds requested", ErrBadRequest)
	}
	seen := map[keydir.Kind]bool{}
	var kinds []keydir.Kind
	for _, s := range r.Kinds {
		k, err := keydir.ParseKind(s)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
		if seen[k] {
			return nil, nil, fmt.Errorf("%w: kind %s requested twice", ErrBadRequest, k)
		}
		seen[k] = true
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return kinds[i] < kinds[j] })
	cur, err := mpinkex.Epoch(now, time.Duration(epochLen)*time.Second)
	if err != nil {
		return nil, nil, err
	}
	var epochs []uint64
	if !seen[keydir.KindPermit] {
		if len(r.Epochs) > 0 {
			return nil, nil, fmt.Errorf("%w: epochs given without the permit kind", ErrBadRequest)
		}
		return kinds, nil, nil
	}
	if len(r.Epochs) == 0 {
		epochs = []uint64{cur, cur + 1}
	} else {
		if len(r.Epochs) > MaxEpochsAhead+1 {
			return nil, nil, fmt.Errorf("%w: at most %d epochs", ErrBadRequest, MaxEpochsAhead+1)
		}
		u := map[uint64]bool{}
		for _, e := range r.Epochs {
			if e < cur || e > cur+MaxEpochsAhead {
				return nil, nil, fmt.Errorf("%w: epoch %d is outside the current epoch %d and the %d after it", ErrBadRequest, e, cur, MaxEpochsAhead)
			}
			if u[e] {
				return nil, nil, fmt.Errorf("%w: epoch %d requested twice", ErrBadRequest, e)
			}
			u[e] = true
			epochs = append(epochs, e)
		}
		sort.Slice(epochs, func(i, j int) bool { return epochs[i] < epochs[j] })
	}
	return kinds, epochs, nil
}

// Issue computes the requested shares for identity with the master share
// (constant-time scalar multiplication) and seals them in an envelope. The
// caller has authorised the request and checked revocation.
func (a *Authority) Issue(identity string, kinds []keydir.Kind, epochs []uint64, now time.Time) (*keydir.Envelope, error) {
	var shares []keydir.ShareValue
	for _, k := range kinds {
		switch k {
		case keydir.KindClient:
			p, err := a.master.ClientShare(identity)
			if err != nil {
				return nil, err
			}
			shares = append(shares, keydir.ShareValue{Kind: k, G1: p})
		case keydir.KindPermit:
			for _, e := range epochs {
				p, err := a.master.PermitShare(identity, e)
				if err != nil {
					return nil, err
				}
				shares = append(shares, keydir.ShareValue{Kind: k, Epoch: e, G1: p})
			}
		case keydir.KindServer:
			p, err := a.master.ServerShare(identity)
			if err != nil {
				return nil, err
			}
			shares = append(shares, keydir.ShareValue{Kind: k, G2: p})
		case keydir.KindDomain:
			shares = append(shares, keydir.ShareValue{Kind: k, G2: a.domainShare})
		}
	}
	issued := now.UTC().Truncate(time.Second)
	el := int64(a.Info.EpochLen)
	expires := issued.Add(time.Duration(IdentityValidityEpochs*el) * time.Second)
	if len(epochs) > 0 {
		expires = time.Unix((int64(epochs[len(epochs)-1])+1)*el, 0).UTC()
	}
	env, err := keydir.Seal(a.signer, keydir.Payload{
		Domain: a.Info.Domain, DTA: a.Info.ID, Identity: identity, EpochLen: a.Info.EpochLen,
		IssuedAt: issued, ExpiresAt: expires,
	}, shares)
	for i := range shares {
		shares[i].G1.Zeroize()
		shares[i].G2.Zeroize()
	}
	if err != nil {
		return nil, fmt.Errorf("issue for %q: %w", identity, err)
	}
	return env, nil
}
