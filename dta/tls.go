package dta

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// TLSOptions chooses how the D-TA serves: ACME-managed certificates
// (certmagic, from any ACME directory), certificate files, or plain HTTP on a
// loopback address for development.
type TLSOptions struct {
	ACMEDomain   string // name to obtain a certificate for
	ACMECA       string // ACME directory URL
	ACMEEmail    string
	ACMECARoot   string // PEM file of the ACME server's root, for a private CA
	ACMEStorage  string // folder for certmagic's account and certificates
	ACMEHTTPPort int    // alternative port for the HTTP-01 challenge (0: 80)
	ACMETLSPort  int    // alternative port for the TLS-ALPN-01 challenge (0: the serving port)

	CertFile, KeyFile string

	InsecureHTTP bool
}

func (o *TLSOptions) mode() (string, error) {
	n := 0
	m := ""
	if o.ACMEDomain != "" || o.ACMECA != "" {
		n++
		m = "acme"
		if o.ACMEDomain == "" || o.ACMECA == "" {
			return "", errors.New("ACME needs both --acme-domain and --acme-ca")
		}
	}
	if o.CertFile != "" || o.KeyFile != "" {
		n++
		m = "files"
		if o.CertFile == "" || o.KeyFile == "" {
			return "", errors.New("certificate files need both --tls-cert and --tls-key")
		}
	}
	if o.InsecureHTTP {
		n++
		m = "http"
	}
	if n != 1 {
		return "", errors.New("choose one of ACME (--acme-domain, --acme-ca), certificate files (--tls-cert, --tls-key) or --insecure-http")
	}
	return m, nil
}

// Check reports a choice of TLS mode and address that Listen refuses:
// none or several modes, or plain HTTP off loopback. The command line
// calls it before anything else, so that such a mistake is a usage error.
func (o TLSOptions) Check(addr string) error {
	mode, err := o.mode()
	if err != nil {
		return err
	}
	if mode == "http" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("--insecure-http serves only on a loopback address, not %q", addr)
		}
	}
	return nil
}

// Listen opens the D-TA's listener on addr with the chosen TLS mode. ACME
// certificates are obtained before it returns and renewed in the background
// until ctx ends.
func Listen(ctx context.Context, addr string, o TLSOptions) (net.Listener, error) {
	if err := o.Check(addr); err != nil {
		return nil, err
	}
	mode, _ := o.mode()
	if mode == "http" {
		return net.Listen("tcp", addr)
	}
	var cfg *tls.Config
	switch mode {
	case "files":
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate: %w", err)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	case "acme":
		var err error
		if cfg, err = acmeConfig(ctx, o); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, cfg), nil
}

func acmeConfig(ctx context.Context, o TLSOptions) (*tls.Config, error) {
	var roots *x509.CertPool
	if o.ACMECARoot != "" {
		pem, err := os.ReadFile(o.ACMECARoot)
		if err != nil {
			return nil, fmt.Errorf("ACME CA root: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ACME CA root %s holds no PEM certificate", o.ACMECARoot)
		}
	}
	if o.ACMEStorage == "" {
		return nil, errors.New("ACME needs a storage folder")
	}
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           zap.NewNop(),
	})
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: o.ACMEStorage},
		Logger:  zap.NewNop(),
	})
	issuer := certmagic.NewACMEIssuer(cfg, certmagic.ACMEIssuer{
		CA:             o.ACMECA,
		Email:          o.ACMEEmail,
		Agreed:         true,
		TrustedRoots:   roots,
		AltHTTPPort:    o.ACMEHTTPPort,
		AltTLSALPNPort: o.ACMETLSPort,
		Logger:         zap.NewNop(),
	})
	cfg.Issuers = []certmagic.Issuer{issuer}
	go func() { <-ctx.Done(); cache.Stop() }()
	if err := cfg.ManageSync(ctx, []string{o.ACMEDomain}); err != nil {
		return nil, fmt.Errorf("obtain certificate for %s from %s: %w", o.ACMEDomain, o.ACMECA, err)
	}
	tc := cfg.TLSConfig()
	tc.NextProtos = append([]string{"h2", "http/1.1"}, tc.NextProtos...)
	tc.MinVersion = tls.VersionTLS12
	return tc, nil
}
