package mpinkex_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/milagro-sc/milagro/mpinkex"
	"github.com/milagro-sc/milagro/pairing"
)

// A domain of three D-TAs issues a client key (stored as a PIN-protected
// token) and a server key; the client and the server then run the
// handshake over a connection and agree on a pre-shared key for DTLS.
func ExampleClient() {
	const (
		clientID = "spiffe://prod.example/ns/web/sa/frontend"
		serverID = "spiffe://prod.example/ns/pay/sa/api"
	)

	// Each D-TA draws its own master share and issues its share of every
	// key; the whole keys are sums that no single D-TA can compute.
	var clientShares []pairing.G1
	var serverShares, domainShares []pairing.G2
	for range 3 {
		dta, err := mpinkex.NewMasterShare(rand.Reader)
		if err != nil {
			log.Fatal(err)
		}
		c, err := dta.ClientShare(clientID)
		if err != nil {
			log.Fatal(err)
		}
		s, err := dta.ServerShare(serverID)
		if err != nil {
			log.Fatal(err)
		}
		clientShares = append(clientShares, c)
		serverShares = append(serverShares, s)
		domainShares = append(domainShares, dta.DomainShare())
	}

	// Client side: keep TOKEN = CS − f·A, rebuild CS from the PIN.
	cs, err := mpinkex.SumG1(clientShares...)
	if err != nil {
		log.Fatal(err)
	}
	token, err := mpinkex.Token(cs, clientID, "2468")
	if err != nil {
		log.Fatal(err)
	}
	clientKey, err := mpinkex.NewClientKeyFromToken(clientID, token, "2468")
	if err != nil {
		log.Fatal(err)
	}

	// Server side: SK for its identity and the domain server share SS.
	sk, err := mpinkex.SumG2(serverShares...)
	if err != nil {
		log.Fatal(err)
	}
	ss, err := mpinkex.SumG2(domainShares...)
	if err != nil {
		log.Fatal(err)
	}
	serverKey, err := mpinkex.NewServerKey(serverID, ss, sk)
	if err != nil {
		log.Fatal(err)
	}

	// The handshake, over an in-memory connection.
	cconn, sconn := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type outcome struct {
		res *mpinkex.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		defer sconn.Close()
		res, err := mpinkex.Server(ctx, sconn, &mpinkex.ServerConfig{
			Keys: []*mpinkex.ServerKey{serverKey},
			Authorize: func(id string) error {
				if id != clientID {
					return errors.New("not on the allow-list")
				}
				return nil
			},
		})
		done <- outcome{res, err}
	}()
	cres, err := mpinkex.Client(ctx, cconn, &mpinkex.ClientConfig{Key: clientKey, ServerID: serverID})
	cconn.Close()
	if err != nil {
		log.Fatal(err)
	}
	srv := <-done
	if srv.err != nil {
		log.Fatal(srv.err)
	}
	defer cres.Zeroize()
	defer srv.res.Zeroize()

	fmt.Println("client authenticated:", srv.res.ClientID)
	fmt.Println("server authenticated:", cres.ServerID)
	fmt.Println("PSKs match:", bytes.Equal(cres.PSK, srv.res.PSK))
	fmt.Println("PSK identities match:", cres.PSKIdentity == srv.res.PSKIdentity)
	// Output:
	// client authenticated: spiffe://prod.example/ns/web/sa/frontend
	// server authenticated: spiffe://prod.example/ns/pay/sa/api
	// PSKs match: true
	// PSK identities match: true
}

// A server past its bound on concurrent handshakes answers with an Alert
// instead of running the handshake; the client sees an *AlertError.
func ExampleWriteAlert() {
	var wire bytes.Buffer
	if err := mpinkex.WriteAlert(&wire, mpinkex.AlertOverloaded); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("% x\n", wire.Bytes())

	msg, err := mpinkex.ReadFrame(&wire)
	if err != nil {
		log.Fatal(err)
	}
	m, err := mpinkex.ParseMessage(msg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(m.(*mpinkex.Alert).Code)
	// Output:
	// 00 02 7f 04
	// overloaded
}

// One to four ASCII digits are a PIN with their decimal value; any other
// string, longer digit strings included, is hashed.
func ExampleFactorScalar() {
	pin123 := pairing.ScalarFromUint64(123)
	for _, factor := range []string{"0123", "123", "12345", "0000123"} {
		f, err := mpinkex.FactorScalar(factor)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%-9q is PIN 123: %v\n", factor, f.Equal(pin123))
	}
	_, err := mpinkex.FactorScalar("")
	fmt.Println("empty factor:", errors.Is(err, mpinkex.ErrConfig))
	// Output:
	// "0123"    is PIN 123: true
	// "123"     is PIN 123: true
	// "12345"   is PIN 123: false
	// "0000123" is PIN 123: false
	// empty factor: true
}

// A client stores TOKEN = CS − f·A instead of its key; only the right
// factor rebuilds CS (a wrong one is detected by the server's check, not
// here).
func ExampleToken() {
	const id = "alice@example.com"
	dta, err := mpinkex.NewMasterShare(rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	cs, err := dta.ClientShare(id) // a one-D-TA domain, for brevity
	if err != nil {
		log.Fatal(err)
	}
	token, err := mpinkex.Token(cs, id, "2468")
	if err != nil {
		log.Fatal(err)
	}
	right, err := mpinkex.RebuildCS(token, id, "2468")
	if err != nil {
		log.Fatal(err)
	}
	wrong, err := mpinkex.RebuildCS(token, id, "2469")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("token is the key:", token.Equal(cs))
	fmt.Println("right PIN rebuilds the key:", right.Equal(cs))
	fmt.Println("wrong PIN rebuilds the key:", wrong.Equal(cs))
	// Output:
	// token is the key: false
	// right PIN rebuilds the key: true
	// wrong PIN rebuilds the key: false
}

// A permit is accepted in its epoch and, within the grace period of the
// boundary, in the adjacent one.
func ExampleAcceptEpoch() {
	epochLen := time.Hour
	now := time.Unix(1000*3600+120, 0) // two minutes into epoch 1000
	cur, err := mpinkex.Epoch(now, epochLen)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range []uint64{cur - 2, cur - 1, cur, cur + 1} {
		ok, err := mpinkex.AcceptEpoch(e, now, epochLen, mpinkex.DefaultGrace)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(e, ok)
	}
	// Output:
	// 998 false
	// 999 true
	// 1000 true
	// 1001 false
}

// A client run with ClientConfig.Pipeline returns after Msg3; whoever
// sends the next bytes (psk.Client, in the sidecar) reads the server's
// verdict with ReadVerdict before anything that follows it.
func ExampleReadVerdict() {
	var stream bytes.Buffer
	_ = mpinkex.WriteFrame(&stream, (&mpinkex.Msg4{}).Marshal())
	stream.WriteString("DTLS records follow")
	fmt.Println("accepted:", mpinkex.ReadVerdict(&stream) == nil, "- next:", stream.String())

	refused := bytes.NewReader([]byte{0x00, 0x02, mpinkex.TypeAlert, byte(mpinkex.AlertOverloaded)})
	err := mpinkex.ReadVerdict(refused)
	var alert *mpinkex.AlertError
	if errors.As(err, &alert) && alert.Code == mpinkex.AlertOverloaded {
		fmt.Println("refused:", err)
	}
	// Output:
	// accepted: true - next: DTLS records follow
	// refused: mpinkex client: read Msg4: peer sent alert overloaded
}
