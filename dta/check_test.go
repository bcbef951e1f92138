package dta

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// checkSets issues, in process, a client set (client and permit shares for
// the current epoch and the next) and a server set (server and domain
// shares) from fx, with each D-TA's opened envelopes.
func checkSets(t *testing.T, fx *fixture) (client, server *keydir.Set, cEnv, sEnv []*keydir.Opened) {
	t.Helper()
	cur := fx.cur(t)
	client, cEnv = fxIssueSet(t, fx, fxClientID, clientKinds, []uint64{cur, cur + 1})
	server, sEnv = fxIssueSet(t, fx, fxServerID, serverKinds, nil)
	return client, server, cEnv, sEnv
}

func sumG1(t *testing.T, ps ...pairing.G1) *pairing.G1 {
	t.Helper()
	s, err := mpinkex.SumG1(ps...)
	if err != nil {
		t.Fatal(err)
	}
	return &s
}

func sumG2(t *testing.T, ps ...pairing.G2) *pairing.G2 {
	t.Helper()
	s, err := mpinkex.SumG2(ps...)
	if err != nil {
		t.Fatal(err)
	}
	return &s
}

func TestCheckServerShareFromAnotherDomain(t *testing.T) {
	a := newFixture(t, fxOptions{})
	b := newFixture(t, fxOptions{}) // same domain name, other master shares
	ctx := context.Background()
	client, server, _, sEnvA := checkSets(t, a)
	_, _, _, sEnvB := checkSets(t, b)
	if _, err := Check(ctx, client, server, "", a.now()); err != nil {
		t.Fatalf("consistent sets: %v", err)
	}

	A, err := mpinkex.HashClientID(fxClientID)
	if err != nil {
		t.Fatal(err)
	}
	B, err := mpinkex.HashServerID(fxServerID)
	if err != nil {
		t.Fatal(err)
	}
	Q := pairing.G2Generator()
	// The relation mpinkex's server check rests on, e(CS, Q) = e(A, SS),
	// and the one key derivation rests on, e(CS, B) = e(A, SK).
	ssOK := func(s *keydir.Set) bool { return pairing.Pair(*client.CS, Q).Equal(pairing.Pair(A, *s.SS)) }
	skOK := func(s *keydir.Set) bool { return pairing.Pair(*client.CS, B).Equal(pairing.Pair(A, *s.SK)) }
	if !ssOK(server) || !skOK(server) {
		t.Fatal("pairing relations fail for consistent sets")
	}

	for i := range a.DTAs {
		t.Run(a.DTAs[i].ID, func(t *testing.T) {
			shares := []pairing.G2{*sEnvA[0].Shares.Server, *sEnvA[1].Shares.Server, *sEnvA[2].Shares.Server}
			shares[i] = *sEnvB[i].Shares.Server
			bad := *server
			bad.SK = sumG2(t, shares...)
			if !ssOK(&bad) {
				t.Fatal("the pairing check of mpinkex fails, so this does not test key derivation")
			}
			if skOK(&bad) {
				t.Fatal("the replaced share did not change SK")
			}
			_, err := Check(ctx, client, &bad, "", a.now())
			if err == nil || !strings.Contains(err.Error(), "authenticate but derive different keys") {
				t.Fatalf("Check = %v, want the different-keys error", err)
			}
			if !strings.Contains(err.Error(), fxClientID) || !strings.Contains(err.Error(), fxServerID) {
				t.Errorf("error does not name both identities: %v", err)
			}
		})
	}
}

func TestCheckClientShareFromAnotherDomain(t *testing.T) {
	a := newFixture(t, fxOptions{})
	b := newFixture(t, fxOptions{})
	ctx := context.Background()
	cur := a.cur(t)
	client, server, cEnvA, _ := checkSets(t, a)
	_, _, cEnvB, _ := checkSets(t, b)

	t.Run("client share", func(t *testing.T) {
		bad := *client
		bad.CS = sumG1(t, *cEnvA[0].Shares.Client, *cEnvB[1].Shares.Client, *cEnvA[2].Shares.Client)
		_, err := Check(ctx, &bad, server, "", a.now())
		if err == nil || !errors.Is(err, mpinkex.ErrAuth) || !strings.Contains(err.Error(), "handshake between") {
			t.Fatalf("Check = %v, want a failed handshake", err)
		}
	})
	t.Run("permit share", func(t *testing.T) {
		bad := *client
		bad.Permits = map[uint64]pairing.G1{
			cur:     *sumG1(t, cEnvA[0].Shares.Permits[cur], cEnvA[1].Shares.Permits[cur], cEnvB[2].Shares.Permits[cur]),
			cur + 1: client.Permits[cur+1],
		}
		_, err := Check(ctx, &bad, server, "", a.now())
		if err == nil || !errors.Is(err, mpinkex.ErrAuth) {
			t.Fatalf("Check = %v, want a failed handshake", err)
		}
	})
	t.Run("whole client set of the other domain", func(t *testing.T) {
		other, _ := fxIssueSet(t, b, fxClientID, clientKinds, []uint64{cur, cur + 1})
		if _, err := Check(ctx, other, server, "", a.now()); err == nil || !errors.Is(err, mpinkex.ErrAuth) {
			t.Fatalf("Check = %v, want a failed handshake", err)
		}
	})
	t.Run("no permit for now", func(t *testing.T) {
		// Permits only for later epochs: the client sends none, and the
		// server, which requires one since the set holds permits, refuses.
		later, _ := fxIssueSet(t, a, fxClientID, clientKinds, []uint64{cur + 2, cur + 3})
		if _, err := Check(ctx, later, server, "", a.now()); err == nil || !errors.Is(err, mpinkex.ErrEpoch) {
			t.Fatalf("Check = %v, want an epoch failure", err)
		}
	})
}

func TestCheckToken(t *testing.T) {
	fx := newFixture(t, fxOptions{})
	ctx := context.Background()
	client, server, _, _ := checkSets(t, fx)
	tok, err := mpinkex.Token(*client.CS, fxClientID, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	withTok := *client
	withTok.CS, withTok.Token = nil, &tok

	_, err = Check(ctx, &withTok, server, "", fx.now())
	if err == nil || !strings.Contains(err.Error(), "stores a token: give the factor") {
		t.Fatalf("token without factor: %v", err)
	}
	if rep, err := Check(ctx, &withTok, server, "correct horse", fx.now()); err != nil || !rep.PermitUsed {
		t.Fatalf("right factor: %+v %v", rep, err)
	}
	if _, err := Check(ctx, &withTok, server, "correct horse.", fx.now()); !errors.Is(err, mpinkex.ErrAuth) {
		t.Fatalf("wrong factor: %v", err)
	}
}

func TestCheckSetErrors(t *testing.T) {
	fx := newFixture(t, fxOptions{})
	ctx := context.Background()
	client, server, _, _ := checkSets(t, fx)

	otherDom := *server
	d := *server.Domain
	d.Name = "staging.example"
	otherDom.Domain = &d
	noClient := *client
	noClient.CS = nil
	noSS := *server
	noSS.SS = nil
	noSK := *server
	noSK.SK = nil
	for _, tc := range []struct {
		name           string
		client, server *keydir.Set
		want           string
	}{
		{"other domain", client, &otherDom, `client set is for domain "prod.example", server set for "staging.example"`},
		{"no client key", &noClient, server, "holds no client key"},
		{"server set without the domain share", client, &noSS, "lacks the server identity share or the domain server share"},
		{"server set without the identity share", client, &noSK, "lacks the server identity share or the domain server share"},
		{"client set as server set", client, client, "lacks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Check(ctx, tc.client, tc.server, "", fx.now())
			if err == nil || rep != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Check = %+v, %v; want %q", rep, err, tc.want)
			}
		})
	}

	// One set may hold both sides; without permits none is required.
	both, _ := fxIssueSet(t, fx, fxServerID, []keydir.Kind{keydir.KindClient, keydir.KindServer, keydir.KindDomain}, nil)
	rep, err := Check(ctx, both, both, "", fx.now())
	if err != nil {
		t.Fatal(err)
	}
	if rep.ClientID != fxServerID || rep.ServerID != fxServerID || rep.PermitUsed {
		t.Errorf("report %+v", rep)
	}
}
