package keydir

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// checkSums fails unless set holds exactly the fixture's directly computed
// sums.
func checkSums(t *testing.T, fx *fixture, set *Set, withCS bool) {
	t.Helper()
	if set.Identity != fxIdentity || set.Domain == nil || set.Domain.Name != fxDomainName {
		t.Errorf("identity %q, domain %+v", set.Identity, set.Domain)
	}
	if withCS {
		if set.CS == nil || !set.CS.Equal(fx.cs) {
			t.Error("CS is not the sum of the client shares")
		}
	} else if set.CS != nil {
		t.Error("CS present")
	}
	if !slices.Equal(set.Epochs(), fx.epochs) {
		t.Errorf("epochs %v, want %v", set.Epochs(), fx.epochs)
	}
	for e, want := range fx.permits {
		if got, ok := set.Permits[e]; !ok || !got.Equal(want) {
			t.Errorf("permit for epoch %d is not the sum of the permit shares", e)
		}
	}
	if set.SK == nil || !set.SK.Equal(fx.sk) {
		t.Error("SK is not the sum of the server shares")
	}
	if set.SS == nil || !set.SS.Equal(fx.ss) {
		t.Error("SS is not the sum of the domain shares")
	}
	if !set.IssuedAt.Equal(fxIssued) || !set.ExpiresAt.Equal(fxExpires) {
		t.Errorf("validity %v..%v", set.IssuedAt, set.ExpiresAt)
	}
}

func TestAssembleSums(t *testing.T) {
	fx := sharedFixture(t)
	set, err := Assemble(fx.dom, fx.cloneFiles(), false)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, fx, set, true)
	if set.Token != nil || set.Generation != "" {
		t.Errorf("token %v, generation %q", set.Token, set.Generation)
	}
	// The sums are not just one D-TA's share.
	c0, _ := fx.masters[0].ClientShare(fxIdentity)
	if set.CS.Equal(c0) {
		t.Error("CS equals one share")
	}
}

// TestAssembleValidity checks the set's window is the intersection of the
// envelopes' windows.
func TestAssembleValidity(t *testing.T) {
	fx := sharedFixture(t)
	files := fx.cloneFiles()
	late, early := fxIssued.Add(time.Hour), fxExpires.Add(-time.Hour)
	m := fx.meta(1, fxIdentity)
	m.IssuedAt = late
	files["dta-2"] = fx.seal(t, 1, m, fx.allShares(t, fx.masters[1], fxIdentity)).Marshal()
	m = fx.meta(2, fxIdentity)
	m.ExpiresAt = early
	files["dta-3"] = fx.seal(t, 2, m, fx.allShares(t, fx.masters[2], fxIdentity)).Marshal()
	set, err := Assemble(fx.dom, files, false)
	if err != nil {
		t.Fatal(err)
	}
	if !set.IssuedAt.Equal(late) || !set.ExpiresAt.Equal(early) {
		t.Errorf("validity %v..%v, want %v..%v", set.IssuedAt, set.ExpiresAt, late, early)
	}
}

func TestAssembleWithToken(t *testing.T) {
	fx := sharedFixture(t)
	withheld := map[string][]byte{}
	for i, env := range fx.envs {
		withheld[fxIDs[i]] = env.Withhold(KindClient).Marshal()
	}
	set, err := Assemble(fx.dom, withheld, true)
	if err != nil {
		t.Fatal(err)
	}
	checkSums(t, fx, set, false)

	_, err = Assemble(fx.dom, withheld, false)
	wantErr(t, "withheld values without a token", err, ErrMalformed, "D-TA dta-1: malformed key material: value of share client is missing")

	_, err = Assemble(fx.dom, fx.cloneFiles(), true)
	wantErr(t, "raw client shares with a token", err, nil, "raw client share on disk next to client.token")

	// One D-TA's client value left on disk is enough to refuse.
	mixed := map[string][]byte{}
	for k, v := range withheld {
		mixed[k] = v
	}
	mixed["dta-3"] = fx.files["dta-3"]
	_, err = Assemble(fx.dom, mixed, true)
	wantErr(t, "one raw client share with a token", err, nil, "D-TA dta-3: raw client share")
}

func TestAssembleRejects(t *testing.T) {
	fx := sharedFixture(t)
	other := newFixture(t) // another domain, other keys and master shares
	shares := func(i int) []ShareValue { return fx.allShares(t, fx.masters[i], fxIdentity) }
	// replace seals D-TA i's envelope with meta edited by f and returns the
	// whole file set.
	replace := func(i int, f func(*Payload), sv []ShareValue) map[string][]byte {
		files := fx.cloneFiles()
		m := fx.meta(i, fxIdentity)
		f(&m)
		files[fxIDs[i]] = fx.seal(t, i, m, sv).Marshal()
		return files
	}
	same := func(*Payload) {}
	cases := []struct {
		name  string
		files map[string][]byte
		want  error
		sub   string
	}{
		{"missing D-TA envelope", func() map[string][]byte {
			f := fx.cloneFiles()
			delete(f, "dta-2")
			return f
		}(), nil, "no envelope from D-TA dta-2"},
		{"no envelopes", map[string][]byte{}, nil, "no envelope from D-TA dta-1"},
		{"envelope for another identity", replace(1, func(m *Payload) { m.Identity = fxIdentity2 }, fx.allShares(t, fx.masters[1], fxIdentity2)),
			nil, `D-TA dta-2: envelope is for "` + fxIdentity2 + `"`},
		{"first envelope for another identity", replace(0, func(m *Payload) { m.Identity = fxIdentity2 }, fx.allShares(t, fx.masters[0], fxIdentity2)),
			nil, `D-TA dta-2: envelope is for "` + fxIdentity + `"`},
		{"envelope for another domain", replace(2, func(m *Payload) { m.Domain = "other.example" }, shares(2)),
			nil, `envelope is for domain "other.example"`},
		{"different epoch_len", replace(1, func(m *Payload) { m.EpochLen = 3600 }, shares(1)),
			nil, "epoch_len 3600, domain says 86400"},
		{"D-TA issued no domain share", replace(2, same, shares(2)[:4]), nil, "sets must match"},
		{"D-TA issued an extra permit", replace(1, same, append(shares(1), func() ShareValue {
			p, _ := fx.masters[1].PermitShare(fxIdentity, fxEpoch+2)
			return ShareValue{Kind: KindPermit, Epoch: fxEpoch + 2, G1: p}
		}())), nil, "sets must match"},
		{"D-TA issued a permit for another epoch", replace(2, same, func() []ShareValue {
			s := shares(2)
			p, _ := fx.masters[2].PermitShare(fxIdentity, fxEpoch+5)
			s[2] = ShareValue{Kind: KindPermit, Epoch: fxEpoch + 5, G1: p}
			return s
		}()), nil, "sets must match"},
		{"first D-TA issued fewer kinds", replace(0, same, shares(0)[:1]), nil, "sets must match"},
		{"envelope of D-TA 2 under D-TA 1's name", func() map[string][]byte {
			f := fx.cloneFiles()
			f["dta-1"] = f["dta-2"]
			return f
		}(), ErrSignature, "D-TA dta-1"},
		{"D-TA 1 signs an envelope naming D-TA 2", replace(0, func(m *Payload) { m.DTA = "dta-2" }, shares(0)),
			nil, `D-TA dta-1: envelope was issued by "dta-2"`},
		{"envelope of another domain's D-TA", func() map[string][]byte {
			f := fx.cloneFiles()
			f["dta-3"] = other.files["dta-3"]
			return f
		}(), ErrSignature, "D-TA dta-3"},
		{"garbage envelope", func() map[string][]byte {
			f := fx.cloneFiles()
			f["dta-2"] = []byte("{")
			return f
		}(), ErrMalformed, "D-TA dta-2"},
		{"envelope with an off-subgroup value", func() map[string][]byte {
			f := fx.cloneFiles()
			f["dta-3"] = withValue(t, fx.keys[2], fx.envs[2], "server", offSubgroupG2).Marshal()
			return f
		}(), ErrMalformed, "D-TA dta-3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			set, err := Assemble(fx.dom, c.files, false)
			if set != nil {
				t.Error("set returned")
			}
			wantErr(t, "Assemble", err, c.want, c.sub)
		})
	}
	// Control: envelopes from D-TAs the domain does not list are ignored,
	// the listed ones suffice.
	f := fx.cloneFiles()
	f["dta-9"] = []byte("garbage")
	if _, err := Assemble(fx.dom, f, false); err != nil {
		t.Errorf("extra file: %v", err)
	}
}

// handshake runs mpinkex between a client holding cs (and permits) and a
// server holding ss, sk for fxIdentity, over net.Pipe. It returns the
// client's and the server's errors.
func handshake(t *testing.T, cs pairing.G1, permits map[uint64]pairing.G1, ss, sk pairing.G2) (cerr, serr error) {
	t.Helper()
	ck, err := mpinkex.NewClientKey(fxIdentity, cs)
	if err != nil {
		t.Fatal(err)
	}
	key, err := mpinkex.NewServerKey(fxIdentity, ss, sk)
	if err != nil {
		t.Fatal(err)
	}
	var ps []mpinkex.Permit
	for e, tp := range permits {
		ps = append(ps, mpinkex.Permit{Epoch: e, TP: tp})
	}
	now := func() time.Time { return fxIssued }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, s := net.Pipe()
	done := make(chan error, 1)
	go func() {
		res, err := mpinkex.Server(ctx, s, &mpinkex.ServerConfig{
			Keys:          []*mpinkex.ServerKey{key},
			Authorize:     func(string) error { return nil },
			RequirePermit: true,
			EpochLen:      fxEpochLen * time.Second,
			Now:           now,
		})
		s.Close()
		if res != nil {
			res.Zeroize()
		}
		done <- err
	}()
	res, cerr := mpinkex.Client(ctx, c, &mpinkex.ClientConfig{
		Key:      ck,
		Permits:  ps,
		ServerID: fxIdentity,
		EpochLen: fxEpochLen * time.Second,
		Now:      now,
	})
	c.Close()
	if res != nil {
		if !res.PermitUsed || res.Epoch != fxEpoch {
			t.Errorf("handshake used permit %v for epoch %d", res.PermitUsed, res.Epoch)
		}
		res.Zeroize()
	}
	return cerr, <-done
}

// TestAssembleForeignShare replaces D-TA 2's shares by shares of another
// master secret, correctly signed by D-TA 2's key (a D-TA that lost or
// regenerated its master share, or a compromised one). Assemble accepts
// them: shares are just points and nothing public ties them to the others.
// Only a handshake against key material of the real domain (the keys check
// of package dta) can catch it, and it must.
func TestAssembleForeignShare(t *testing.T) {
	t.Parallel()
	fx := sharedFixture(t)
	honest, err := Assemble(fx.dom, fx.cloneFiles(), false)
	if err != nil {
		t.Fatal(err)
	}
	cerr, serr := handshake(t, *honest.CS, honest.Permits, *honest.SS, *honest.SK)
	if cerr != nil || serr != nil {
		t.Fatalf("honest keys: client %v, server %v", cerr, serr)
	}

	foreign, err := mpinkex.NewMasterShare(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	all := fx.allShares(t, foreign, fxIdentity)

	t.Run("client share only", func(t *testing.T) {
		sv := fx.allShares(t, fx.masters[1], fxIdentity)
		sv[0] = all[0]
		files := fx.cloneFiles()
		files["dta-2"] = fx.seal(t, 1, fx.meta(1, fxIdentity), sv).Marshal()
		set, err := Assemble(fx.dom, files, false)
		if err != nil {
			t.Fatalf("Assemble refused a correctly signed share: %v", err)
		}
		if set.CS.Equal(fx.cs) || !set.SK.Equal(fx.sk) {
			t.Fatal("the substitution did not change exactly CS")
		}
		// The set's own keys disagree: a self-handshake fails.
		cerr, serr := handshake(t, *set.CS, set.Permits, *set.SS, *set.SK)
		if serr == nil || cerr == nil {
			t.Fatalf("handshake with a foreign client share succeeded: client %v, server %v", cerr, serr)
		}
		if !errors.Is(serr, mpinkex.ErrAuth) {
			t.Errorf("server error %v, want ErrAuth", serr)
		}
	})

	t.Run("every share of one D-TA", func(t *testing.T) {
		files := fx.cloneFiles()
		files["dta-2"] = fx.seal(t, 1, fx.meta(1, fxIdentity), all).Marshal()
		set, err := Assemble(fx.dom, files, false)
		if err != nil {
			t.Fatalf("Assemble refused correctly signed shares: %v", err)
		}
		// The set is consistent with itself (master s1 + s' + s3), so a
		// handshake between its own client and server keys cannot tell;
		// against the real domain's keys both directions fail.
		cerr, serr := handshake(t, *set.CS, set.Permits, *set.SS, *set.SK)
		if cerr != nil || serr != nil {
			t.Fatalf("self-consistent substituted set: client %v, server %v", cerr, serr)
		}
		cerr, serr = handshake(t, *set.CS, set.Permits, *honest.SS, *honest.SK)
		if cerr == nil || !errors.Is(serr, mpinkex.ErrAuth) {
			t.Errorf("substituted client against an honest server: client %v, server %v", cerr, serr)
		}
		cerr, serr = handshake(t, *honest.CS, honest.Permits, *set.SS, *set.SK)
		if cerr == nil || !errors.Is(serr, mpinkex.ErrAuth) {
			t.Errorf("honest client against a substituted server: client %v, server %v", cerr, serr)
		}
	})
}
