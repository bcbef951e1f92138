package dta

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

func TestIssueRequestNormalize(t *testing.T) {
	const el = 86400
	now := fxT0
	cur := uint64(now.Unix()) / el
	type K = keydir.Kind
	for _, tc := range []struct {
		name   string
		req    IssueRequest
		kinds  []K
		epochs []uint64
		err    string // "" = valid
	}{
		{"client", IssueRequest{Identity: fxClientID, Kinds: []string{"client"}}, []K{"client"}, nil, ""},
		{"default epochs", IssueRequest{Identity: fxClientID, Kinds: []string{"permit", "client"}}, []K{"client", "permit"}, []uint64{cur, cur + 1}, ""},
		{"all kinds sorted", IssueRequest{Identity: fxClientID, Kinds: []string{"server", "permit", "domain", "client"}}, []K{"client", "domain", "permit", "server"}, []uint64{cur, cur + 1}, ""},
		{"current epoch only", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur}}, []K{"permit"}, []uint64{cur}, ""},
		{"last epoch ahead", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur + MaxEpochsAhead}}, []K{"permit"}, []uint64{cur + MaxEpochsAhead}, ""},
		{"whole window, sorted", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur + 3, cur, cur + 2, cur + 1}}, []K{"permit"}, []uint64{cur, cur + 1, cur + 2, cur + 3}, ""},
		{"no kinds", IssueRequest{Identity: fxClientID}, nil, nil, "no kinds requested"},
		{"empty kinds", IssueRequest{Identity: fxClientID, Kinds: []string{}}, nil, nil, "no kinds requested"},
		{"empty kind", IssueRequest{Identity: fxClientID, Kinds: []string{""}}, nil, nil, "unknown share kind"},
		{"unknown kind", IssueRequest{Identity: fxClientID, Kinds: []string{"client", "master"}}, nil, nil, `unknown share kind "master"`},
		{"kind case", IssueRequest{Identity: fxClientID, Kinds: []string{"Client"}}, nil, nil, "unknown share kind"},
		{"duplicate kind", IssueRequest{Identity: fxClientID, Kinds: []string{"client", "permit", "client"}}, nil, nil, "kind client requested twice"},
		{"epoch before current", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur - 1}}, nil, nil, "outside the current epoch"},
		{"epoch zero", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{0}}, nil, nil, "outside the current epoch"},
		{"epoch too far", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur, cur + MaxEpochsAhead + 1}}, nil, nil, "outside the current epoch"},
		{"epoch max uint64", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{^uint64(0)}}, nil, nil, "outside the current epoch"},
		{"duplicate epoch", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur, cur}}, nil, nil, "requested twice"},
		{"too many epochs", IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur, cur, cur, cur, cur}}, nil, nil, "at most 4 epochs"},
		{"epochs without permit", IssueRequest{Identity: fxClientID, Kinds: []string{"client"}, Epochs: []uint64{cur}}, nil, nil, "epochs given without the permit kind"},
		{"empty identity", IssueRequest{Kinds: []string{"client"}}, nil, nil, "identity"},
		{"dot-dot identity", IssueRequest{Identity: "spiffe://prod.example/ns/web/../pay/api", Kinds: []string{"client"}}, nil, nil, `".." path segment`},
		{"star identity", IssueRequest{Identity: "spiffe://prod.example/ns/web/*", Kinds: []string{"client"}}, nil, nil, "reserved for patterns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			kinds, epochs, err := req.Normalize(now, el)
			if tc.err != "" {
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("err = %v, want ErrBadRequest", err)
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err %q does not contain %q", err, tc.err)
				}
				if kinds != nil || epochs != nil {
					t.Errorf("refused request returned %v %v", kinds, epochs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(kinds, tc.kinds) || !slices.Equal(epochs, tc.epochs) {
				t.Errorf("got %v %v, want %v %v", kinds, epochs, tc.kinds, tc.epochs)
			}
		})
	}

	// The window moves with the clock: one epoch later, cur is too old.
	req := IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}, Epochs: []uint64{cur}}
	if _, _, err := req.Normalize(now.Add(el*time.Second), el); !errors.Is(err, ErrBadRequest) {
		t.Errorf("a past epoch is accepted: %v", err)
	}
	// Epoch boundaries follow epochLen.
	_, epochs, err := (&IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}}).Normalize(time.Unix(7199, 0), 3600)
	if err != nil || !slices.Equal(epochs, []uint64{1, 2}) {
		t.Errorf("epochs at 7199 s with 1 h epochs: %v %v", epochs, err)
	}
	if _, _, err := (&IssueRequest{Identity: fxClientID, Kinds: []string{"permit"}}).Normalize(now, 0); err == nil {
		t.Error("epoch length 0 accepted")
	}
}

// issueExpected computes the shares of identity directly from the master
// scalar read from the D-TA's plaintext secret file, with pairing's
// hash-to-curve and the DSTs of PROTOCOL.md §3 — not through MasterShare.
type issueExpected struct {
	A, AT1, AT2 pairing.G1
	B           pairing.G2
	client      pairing.G1
	permit      map[uint64]pairing.G1
	server      pairing.G2
	domain      pairing.G2
}

func issueCompute(t *testing.T, s *pairing.Scalar, id string, e1, e2 uint64) issueExpected {
	t.Helper()
	var x issueExpected
	var err error
	if x.A, err = pairing.EncodeToG1([]byte(id), []byte(mpinkex.DSTClient)); err != nil {
		t.Fatal(err)
	}
	at := func(e uint64) pairing.G1 {
		msg := binary.BigEndian.AppendUint64(nil, e)
		p, err := pairing.EncodeToG1(append(msg, id...), []byte(mpinkex.DSTPermit))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	x.AT1, x.AT2 = at(e1), at(e2)
	if x.B, err = pairing.HashToG2([]byte(id), []byte(mpinkex.DSTServer)); err != nil {
		t.Fatal(err)
	}
	x.client = pairing.MulSecret(s, x.A)
	x.permit = map[uint64]pairing.G1{e1: pairing.MulSecret(s, x.AT1), e2: pairing.MulSecret(s, x.AT2)}
	x.server = pairing.MulSecretG2(s, x.B)
	x.domain = pairing.MulSecretG2(s, pairing.G2Generator())
	return x
}

func TestAuthorityIssue(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 2})
	d := fx.DTAs[0]
	now := fxT0.Add(1234567 * time.Microsecond)
	cur := fx.cur(t)
	epochs := []uint64{cur, cur + 1}
	all := []keydir.Kind{keydir.KindClient, keydir.KindDomain, keydir.KindPermit, keydir.KindServer}
	env, err := d.Auth.Issue(fxClientID, all, epochs, now)
	if err != nil {
		t.Fatal(err)
	}
	o := fx.open(t, 0, env.Marshal())
	if _, err := env.Open(mustPub(t, fx.Domain.DTAs[1]), keydir.OpenOptions{}); !errors.Is(err, keydir.ErrSignature) {
		t.Fatalf("envelope opens with another D-TA's key: %v", err)
	}

	p := o.Payload
	if p.Domain != fxDomainName || p.DTA != d.ID || p.Identity != fxClientID || p.EpochLen != 86400 {
		t.Errorf("payload %+v", p)
	}
	if !p.IssuedAt.Equal(fxT0.Add(time.Second)) {
		t.Errorf("issued_at %v, want %v (truncated to the second)", p.IssuedAt, fxT0.Add(time.Second))
	}
	if want := time.Unix(int64(cur+2)*86400, 0); !p.ExpiresAt.Equal(want) {
		t.Errorf("expires_at %v, want the end of the last permit epoch %v", p.ExpiresAt, want)
	}
	if len(p.Shares) != 5 {
		t.Errorf("%d shares: %+v", len(p.Shares), p.Shares)
	}

	x := issueCompute(t, d.masterScalar(t), fxClientID, cur, cur+1)
	sh := o.Shares
	if sh.Client == nil || !sh.Client.Equal(x.client) {
		t.Error("client share is not s_i·H_A(id)")
	}
	if len(sh.Permits) != 2 || !sh.Permits[cur].Equal(x.permit[cur]) || !sh.Permits[cur+1].Equal(x.permit[cur+1]) {
		t.Error("permit shares are not s_i·H_T(id, epoch)")
	}
	if sh.Server == nil || !sh.Server.Equal(x.server) {
		t.Error("server share is not s_i·H_B(id)")
	}
	if sh.Domain == nil || !sh.Domain.Equal(x.domain) {
		t.Error("domain share is not s_i·Q")
	}
	if sh.Permits[cur].Equal(sh.Permits[cur+1]) {
		t.Error("permits of two epochs are equal")
	}

	// Without the master share: every share and the domain share of the
	// same Authority satisfy the pairing relations e(s_i·X, Q) = e(X, s_i·Q)
	// and e(s_i·A, B) = e(A, s_i·B).
	Q := pairing.G2Generator()
	relations := func(dom pairing.G2) map[string]bool {
		return map[string]bool{
			"client": pairing.Pair(*sh.Client, Q).Equal(pairing.Pair(x.A, dom)),
			"permit": pairing.Pair(sh.Permits[cur], Q).Equal(pairing.Pair(x.AT1, dom)) &&
				pairing.Pair(sh.Permits[cur+1], Q).Equal(pairing.Pair(x.AT2, dom)),
			"server": pairing.Pair(*sh.Client, x.B).Equal(pairing.Pair(x.A, *sh.Server)),
		}
	}
	for name, ok := range relations(*sh.Domain) {
		if !ok {
			t.Errorf("pairing relation for the %s share fails", name)
		}
	}
	// Negative control: another D-TA's domain share fails them.
	env2, err := fx.DTAs[1].Auth.Issue(fxServerID, []keydir.Kind{keydir.KindDomain}, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	other := fx.open(t, 1, env2.Marshal()).Shares.Domain
	for name, ok := range relations(*other) {
		if ok && name != "server" {
			t.Errorf("pairing relation for the %s share holds with another D-TA's domain share", name)
		}
	}

	// Shares depend on the identity.
	envW, err := d.Auth.Issue(fxClientID+"x", []keydir.Kind{keydir.KindClient}, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	if fx.open(t, 0, envW.Marshal()).Shares.Client.Equal(x.client) {
		t.Error("two identities get the same client share")
	}
}

func mustPub(t *testing.T, d keydir.DTA) []byte {
	t.Helper()
	k, err := d.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAuthorityIssueWithoutPermits(t *testing.T) {
	fx := newFixture(t, fxOptions{N: 1, EpochLen: 3600})
	d := fx.DTAs[0]
	env, err := d.Auth.Issue(fxServerID, []keydir.Kind{keydir.KindServer, keydir.KindDomain}, nil, fxT0)
	if err != nil {
		t.Fatal(err)
	}
	o := fx.open(t, 0, env.Marshal())
	if want := fxT0.Add(IdentityValidityEpochs * time.Hour); !o.Payload.ExpiresAt.Equal(want) {
		t.Errorf("expires_at %v, want %v", o.Payload.ExpiresAt, want)
	}
	if o.Payload.EpochLen != 3600 {
		t.Errorf("epoch_len %d", o.Payload.EpochLen)
	}
	if o.Shares.Client != nil || o.Shares.Permits != nil || o.Shares.Server == nil || o.Shares.Domain == nil {
		t.Errorf("shares %+v", o.Shares)
	}
	x := issueCompute(t, d.masterScalar(t), fxServerID, 0, 1)
	if !o.Shares.Server.Equal(x.server) || !o.Shares.Domain.Equal(x.domain) {
		t.Error("server shares differ from the direct computation")
	}
	// The envelope holds nothing else: the signed refs list exactly these.
	var keys []string
	for _, r := range o.Payload.Shares {
		keys = append(keys, r.Key())
	}
	if !slices.Equal(keys, []string{"server", "domain"}) {
		t.Errorf("share refs %v", keys)
	}
	if _, err := d.Auth.Issue(fxServerID, nil, nil, fxT0); err == nil {
		t.Error("Issue without kinds sealed an envelope")
	}
}
