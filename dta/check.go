package dta

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

// CheckReport says what Check verified.
type CheckReport struct {
	ClientID, ServerID string
	PermitEpoch        uint64
	PermitUsed         bool
	Handshake          time.Duration
}

// Check runs an in-process mpinkex handshake between a client set and a
// server set of one domain, so that a wrong share is caught at fetch time
// rather than at the first connection. factor rebuilds CS from a token. If
// the client set holds permits, the one for now's epoch is used and the
// server requires it. server may equal client when one set holds both.
func Check(ctx context.Context, client, server *keydir.Set, factor string, now time.Time) (*CheckReport, error) {
	if client.Domain.Name != server.Domain.Name {
		return nil, fmt.Errorf("keys check: client set is for domain %q, server set for %q", client.Domain.Name, server.Domain.Name)
	}
	var ck *mpinkex.ClientKey
	var err error
	switch {
	case client.Token != nil:
		if factor == "" {
			return nil, errors.New("keys check: the client set stores a token: give the factor")
		}
		ck, err = mpinkex.NewClientKeyFromToken(client.Identity, *client.Token, factor)
	case client.CS != nil:
		ck, err = mpinkex.NewClientKey(client.Identity, *client.CS)
	default:
		return nil, fmt.Errorf("keys check: the set for %q holds no client key", client.Identity)
	}
	if err != nil {
		return nil, fmt.Errorf("keys check: %w", err)
	}
	if server.SK == nil || server.SS == nil {
		return nil, fmt.Errorf("keys check: the set for %q lacks the server identity share or the domain server share", server.Identity)
	}
	sk, err := mpinkex.NewServerKey(server.Identity, *server.SS, *server.SK)
	if err != nil {
		return nil, fmt.Errorf("keys check: %w", err)
	}
	el := time.Duration(client.Domain.EpochLen) * time.Second
	clock := func() time.Time { return now }
	ccfg := &mpinkex.ClientConfig{Key: ck, ServerID: server.Identity, EpochLen: el, Now: clock}
	for e, tp := range client.Permits {
		ccfg.Permits = append(ccfg.Permits, mpinkex.Permit{Epoch: e, TP: tp})
	}
	scfg := &mpinkex.ServerConfig{
		Keys: []*mpinkex.ServerKey{sk}, Authorize: func(string) error { return nil },
		RequirePermit: len(client.Permits) > 0, EpochLen: el, Now: clock,
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	start := time.Now()
	type out struct {
		res *mpinkex.Result
		err error
	}
	sc := make(chan out, 1)
	go func() {
		r, err := mpinkex.Server(ctx, b, scfg)
		b.Close()
		sc <- out{r, err}
	}()
	cres, cerr := mpinkex.Client(ctx, a, ccfg)
	a.Close()
	s := <-sc
	if s.err != nil {
		return nil, fmt.Errorf("keys check: handshake between %q and %q fails: %w", client.Identity, server.Identity, s.err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("keys check: handshake between %q and %q fails: %w", client.Identity, server.Identity, cerr)
	}
	defer cres.Zeroize()
	defer s.res.Zeroize()
	if !pairingEqual(cres.PSK, s.res.PSK) {
		return nil, fmt.Errorf("keys check: %q and %q authenticate but derive different keys: the server identity share of one D-TA is wrong", client.Identity, server.Identity)
	}
	return &CheckReport{ClientID: client.Identity, ServerID: server.Identity, PermitUsed: cres.PermitUsed, PermitEpoch: cres.Epoch, Handshake: time.Since(start)}, nil
}

func pairingEqual(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }
