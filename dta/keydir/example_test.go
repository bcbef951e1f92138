package keydir_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log"
	"time"

	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/mpinkex"
)

// A D-TA seals the shares it issues to a workload; the workload's reader
// parses the envelope and opens it with the D-TA's pinned signing key.
func Example() {
	// The D-TA's long-lived secrets.
	pub, signer, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	master, err := mpinkex.NewMasterShare(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}

	// Issue a client share and a time permit share, and seal them.
	const id = "spiffe://example.org/ns/web/sa/frontend"
	now := time.Date(2025, 11, 23, 12, 0, 0, 0, time.UTC)
	epoch, err := mpinkex.Epoch(now, mpinkex.DefaultEpochLen)
	if err != nil {
		log.Fatal(err)
	}
	cs, err := master.ClientShare(id)
	if err != nil {
		log.Fatal(err)
	}
	tp, err := master.PermitShare(id, epoch)
	if err != nil {
		log.Fatal(err)
	}
	env, err := keydir.Seal(signer, keydir.Payload{
		Domain:    "example.org",
		DTA:       "dta-1",
		Identity:  id,
		EpochLen:  86400,
		IssuedAt:  now,
		ExpiresAt: now.Add(48 * time.Hour),
	}, []keydir.ShareValue{
		{Kind: keydir.KindClient, G1: cs},
		{Kind: keydir.KindPermit, Epoch: epoch, G1: tp},
	})
	if err != nil {
		log.Fatal(err)
	}
	file := env.Marshal() // the bytes of dta-1.json

	// The reader: parse, then verify against the pinned key and decode.
	parsed, err := keydir.ParseEnvelope(file)
	if err != nil {
		log.Fatal(err)
	}
	opened, err := parsed.Open(pub, keydir.OpenOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("identity:", opened.Payload.Identity)
	fmt.Println("issued by:", opened.Payload.DTA, "for", opened.Payload.Domain)
	fmt.Println("client share intact:", opened.Shares.Client.Equal(cs))
	fmt.Println("permit epoch:", epoch, "intact:", opened.Shares.Permits[epoch].Equal(tp))

	// Another key does not open it.
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)
	_, err = parsed.Open(otherPub, keydir.OpenOptions{})
	fmt.Println("other key:", err)
	// Output:
	// identity: spiffe://example.org/ns/web/sa/frontend
	// issued by: dta-1 for example.org
	// client share intact: true
	// permit epoch: 20415 intact: true
	// other key: envelope signature does not verify
}
