package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
)

func runDTAInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dta init", stderr)
	dir := fs.String("dir", "", "folder for the new D-TA (required)")
	id := fs.String("id", "", "D-TA id, e.g. dta-1 (required)")
	domain := fs.String("domain", "", "trust domain name, e.g. prod.example (required)")
	epochLen := fs.Uint64("epoch-len", 86400, "time-permit epoch length in seconds (same for every D-TA of the domain)")
	passFile := fs.String("passphrase-file", "", "file holding the passphrase that encrypts the master share (or env MILAGRO_DTA_PASSPHRASE)")
	recipient := fs.String("age-recipient", "", "encrypt the master share to this age recipient (age1...) instead of a passphrase")
	plain := fs.Bool("insecure-plaintext-key", false, "store the master share unencrypted (mode 0600): development only")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" || *id == "" || *domain == "" {
		return usagef("--dir, --id and --domain are required")
	}
	opt := dta.InitOptions{Dir: *dir, ID: *id, Domain: *domain, EpochLen: *epochLen, Plaintext: *plain}
	if *recipient != "" {
		r, err := age.ParseRecipients(strings.NewReader(*recipient))
		if err != nil {
			return usagef("--age-recipient: %v", err)
		}
		opt.Recipients = r
	}
	if !*plain && *recipient == "" {
		p, err := passphrase(*passFile)
		if err != nil {
			return err
		}
		if p == "" {
			return usagef("protect the master share: --passphrase-file, env MILAGRO_DTA_PASSPHRASE, --age-recipient, or (development only) --insecure-plaintext-key")
		}
		opt.Passphrase = p
	}
	info, err := dta.Init(opt)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created D-TA %s for domain %s in %s\nsigning key: %s\n", info.ID, info.Domain, *dir, info.SigningKey)
	return nil
}

func passphrase(file string) (string, error) {
	if file != "" {
		return readSecretFile(file, "passphrase")
	}
	return os.Getenv("MILAGRO_DTA_PASSPHRASE"), nil
}

func openAuthority(dir, passFile, identityFile string) (*dta.Authority, error) {
	var opt dta.OpenOptions
	if identityFile != "" {
		f, err := os.Open(identityFile)
		if err != nil {
			return nil, fmt.Errorf("age identity file: %w", err)
		}
		ids, err := age.ParseIdentities(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("age identity file %s: %w", identityFile, err)
		}
		opt.Identities = ids
	}
	p, err := passphrase(passFile)
	if err != nil {
		return nil, err
	}
	opt.Passphrase = p
	return dta.Open(dir, opt)
}

func runDTAServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dta serve", stderr)
	dir := fs.String("dir", envDefault("DTA_DIR", ""), "D-TA folder made by 'milagro dta init' (required)")
	listen := fs.String("listen", envDefault("DTA_LISTEN", ":8443"), "address to serve on")
	policyPath := fs.String("policy", envDefault("DTA_POLICY", ""), "requester policy file, YAML (required; reloaded on SIGHUP)")
	auditPath := fs.String("audit-log", "", "audit log, JSON lines (default DIR/audit.log)")
	revPath := fs.String("revocations", "", "revocation list (default DIR/revocations.json)")
	passFile := fs.String("passphrase-file", "", "file holding the master share passphrase (or env MILAGRO_DTA_PASSPHRASE)")
	identityFile := fs.String("age-identity-file", "", "age identity file that decrypts the master share")
	var tlsOpt dta.TLSOptions
	fs.StringVar(&tlsOpt.ACMEDomain, "acme-domain", "", "obtain a certificate for this name over ACME")
	fs.StringVar(&tlsOpt.ACMECA, "acme-ca", "", "ACME directory URL")
	fs.StringVar(&tlsOpt.ACMEEmail, "acme-email", "", "ACME account e-mail")
	fs.StringVar(&tlsOpt.ACMECARoot, "acme-ca-root", "", "PEM root of a private ACME CA")
	fs.IntVar(&tlsOpt.ACMEHTTPPort, "acme-http-port", 0, "port for the ACME HTTP-01 challenge listener (default 80)")
	fs.IntVar(&tlsOpt.ACMETLSPort, "acme-tls-port", 0, "port for the ACME TLS-ALPN-01 challenge listener (default 443)")
	fs.StringVar(&tlsOpt.CertFile, "tls-cert", "", "TLS certificate file (PEM)")
	fs.StringVar(&tlsOpt.KeyFile, "tls-key", "", "TLS key file (PEM)")
	fs.BoolVar(&tlsOpt.InsecureHTTP, "insecure-http", false, "serve plain HTTP (loopback addresses only; development)")
	shutdown := fs.Duration("shutdown-timeout", 10*time.Second, "how long SIGTERM waits for requests in flight")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	logFormat := fs.String("log-format", "json", "json or console")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" || *policyPath == "" {
		return usagef("--dir and --policy are required (or MILAGRO_DTA_DIR and MILAGRO_DTA_POLICY)")
	}
	if err := tlsOpt.Check(*listen); err != nil {
		return usagef("%v", err)
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	if *auditPath == "" {
		*auditPath = filepath.Join(*dir, "audit.log")
	}
	if *revPath == "" {
		*revPath = filepath.Join(*dir, "revocations.json")
	}
	if tlsOpt.ACMEDomain != "" {
		tlsOpt.ACMEStorage = filepath.Join(*dir, "acme")
	}
	auth, err := openAuthority(*dir, *passFile, *identityFile)
	if err != nil {
		return err
	}
	defer auth.Close()
	pol, err := dta.LoadPolicy(*policyPath)
	if err != nil {
		return err
	}
	audit, err := dta.OpenAudit(*auditPath)
	if err != nil {
		return err
	}
	defer audit.Close()
	revs, err := dta.OpenRevocations(*revPath)
	if err != nil {
		return err
	}
	svc, err := dta.NewService(dta.ServiceConfig{Authority: auth, Policy: pol, Audit: audit, Revocations: revs, Log: log})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := dta.Listen(ctx, *listen, tlsOpt)
	if err != nil {
		return err
	}
	srv := dta.NewHTTPServer(svc)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				p, err := dta.LoadPolicy(*policyPath)
				if err != nil {
					log.Error().Err(err).Msg("policy reload failed; keeping the current policy")
					continue
				}
				svc.SetPolicy(p)
				log.Info().Int("requesters", len(p.Requesters)).Msg("policy reloaded")
			}
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info().Str("dta", auth.Info.ID).Str("domain", auth.Info.Domain).Str("listen", ln.Addr().String()).Msg("D-TA serving")
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), *shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func readInfo(dir string) (*dta.Info, error) {
	b, err := os.ReadFile(filepath.Join(dir, dta.InfoFile))
	if err != nil {
		return nil, fmt.Errorf("read D-TA info: %w", err)
	}
	var info dta.Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("read D-TA info %s: %w", dir, err)
	}
	return &info, nil
}

func runDTAInfo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dta info", stderr)
	dir := fs.String("dir", "", "D-TA folder (required)")
	url := fs.String("url", "", "URL where this D-TA serves (required)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *dir == "" || *url == "" {
		return usagef("--dir and --url are required")
	}
	info, err := readInfo(*dir)
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(keydir.DTA{ID: info.ID, URL: *url, SigningKey: info.SigningKey}, "", "  ")
	fmt.Fprintln(stdout, string(b))
	return nil
}

func runDomainBuild(args []string, stdout, stderr io.Writer) error {
	fs := withArgs(newFlags("domain build", stderr), "DIR1=URL1 DIR2=URL2 ... (one per D-TA: a folder holding its dta.json, and its public URL)")
	out := fs.String("out", "", "where to write domain.json (default: standard output)")
	if err := parse(fs, args, 64); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("give one DIR=URL argument per D-TA")
	}
	var d keydir.Domain
	for _, a := range fs.Args() {
		dir, url, ok := strings.Cut(a, "=")
		if !ok {
			return usagef("argument %q: want DIR=URL", a)
		}
		info, err := readInfo(dir)
		if err != nil {
			return err
		}
		if d.Name == "" {
			d.Name, d.EpochLen = info.Domain, info.EpochLen
		} else if d.Name != info.Domain || d.EpochLen != info.EpochLen {
			return fmt.Errorf("D-TA %s is for domain %q epoch_len %d, the first for %q epoch_len %d", info.ID, info.Domain, info.EpochLen, d.Name, d.EpochLen)
		}
		d.DTAs = append(d.DTAs, keydir.DTA{ID: info.ID, URL: url, SigningKey: info.SigningKey})
	}
	if err := d.Validate(); err != nil {
		return err
	}
	if *out == "" {
		_, err := stdout.Write(d.Marshal())
		return err
	}
	return os.WriteFile(*out, d.Marshal(), 0o644)
}
