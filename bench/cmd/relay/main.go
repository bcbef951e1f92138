// Command relay is the benchmark's reference proxy: the smallest TCP relay
// Go can write (io.Copy both ways, half-close passed on), either plain or
// as a TLS 1.3 mutual-TLS pair built on crypto/tls, the stack ghostunnel
// uses. A pair is two processes: a client relay (plaintext in, relayed to
// the server relay) and a server relay (relayed in, plaintext to the
// backend).
//
// Usage:
//
//	relay -gencerts DIR                                  # CA, server and client certs (ECDSA P-256)
//	relay -mode plain -listen A -target B                # either side of the plain pair
//	relay -mode tls-client -listen A -target B -certs DIR
//	relay -mode tls-server -listen B -target BACKEND -certs DIR
//
// The TLS client keeps no session cache, so every connection is a full
// TLS 1.3 handshake with certificates on both sides (ghostunnel's default);
// key exchange and cipher suite are crypto/tls defaults.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

const serverName = "bench-server"

func main() {
	mode := flag.String("mode", "plain", "plain, tls-client or tls-server")
	listen := flag.String("listen", "127.0.0.1:0", "address to accept connections on")
	target := flag.String("target", "", "address to relay each connection to")
	certs := flag.String("certs", "", "folder with the files -gencerts wrote (TLS modes)")
	gen := flag.String("gencerts", "", "write a CA and server/client certificates to this folder and exit")
	flag.Parse()
	if *gen != "" {
		if err := genCerts(*gen); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *target == "" {
		log.Fatal("-target is required")
	}
	var (
		ln   net.Listener
		dial func() (net.Conn, error)
		err  error
	)
	plainDial := func() (net.Conn, error) { return net.Dial("tcp", *target) }
	switch *mode {
	case "plain":
		ln, err = net.Listen("tcp", *listen)
		dial = plainDial
	case "tls-client":
		var cfg *tls.Config
		if cfg, err = tlsConfig(*certs, "client"); err != nil {
			log.Fatal(err)
		}
		ln, err = net.Listen("tcp", *listen)
		dial = func() (net.Conn, error) {
			c, err := tls.Dial("tcp", *target, cfg)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
	case "tls-server":
		var cfg *tls.Config
		if cfg, err = tlsConfig(*certs, "server"); err != nil {
			log.Fatal(err)
		}
		ln, err = tls.Listen("tcp", *listen, cfg)
		dial = plainDial
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "relay %s listening on %s, target %s\n", *mode, ln.Addr(), *target)
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				log.Fatal(err)
			}
			log.Print(err) // e.g. out of file descriptors: go on
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			if tc, ok := c.(*tls.Conn); ok {
				// Finish the handshake before dialing on, as ghostunnel does.
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
			}
			up, err := dial()
			if err != nil {
				c.Close()
				return
			}
			pipe(c, up)
		}()
	}
}

// pipe copies both ways; EOF on one side becomes a half-close on the other.
func pipe(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(b, a)
		closeWrite(b)
		close(done)
	}()
	_, _ = io.Copy(a, b)
	closeWrite(a)
	<-done
	a.Close()
	b.Close()
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}

// tlsConfig loads role's certificate and the CA for a TLS 1.3 mTLS side.
func tlsConfig(dir, role string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, role+".pem"), filepath.Join(dir, role+"-key.pem"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s/ca.pem: no certificate", dir)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}}
	if role == "server" {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
	} else {
		cfg.RootCAs, cfg.ServerName = pool, serverName
	}
	return cfg, nil
}

// genCerts writes ca.pem, server.pem, server-key.pem, client.pem and
// client-key.pem (ECDSA P-256, valid for a day) to dir.
func genCerts(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, role := range []string{"server", "client"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "bench-" + role},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature,
		}
		if role == "server" {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			tmpl.DNSNames, tmpl.IPAddresses = []string{serverName}, []net.IP{net.IPv4(127, 0, 0, 1)}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, role+".pem"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, role+"-key.pem"), "PRIVATE KEY", keyDER); err != nil {
			return err
		}
	}
	return nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
