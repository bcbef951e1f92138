package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
)

func runKeysFetch(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys fetch", stderr)
	domainPath := fs.String("domain", envDefault("DOMAIN", ""), "domain.json with the D-TAs and their pinned signing keys (required)")
	identity := fs.String("identity", envDefault("IDENTITY", ""), "identity to fetch keys for (required)")
	tokenFile := fs.String("token-file", envDefault("TOKEN_FILE", ""), "bearer tokens (required): a folder holding one file per D-TA named by its id (dta-1, dta-2, …; recommended), or one file whose token every D-TA gets (development: any D-TA could replay it to the others)")
	kinds := fs.String("kinds", envDefault("KINDS", "client,permit"), "share kinds: client, permit, server, domain (comma-separated)")
	epochs := fs.String("epochs", "", "permit epochs (comma-separated; default: the current and the next)")
	out := fs.String("out", envDefault("KEYS", ""), "key directory to write (required)")
	factorFile := fs.String("factor-file", "", "file holding a PIN or passphrase: store client.token = CS − f·A instead of raw client shares")
	watch := fs.Bool("watch", false, "keep running: renew just after each epoch boundary (the set always holds the current and the next epoch's permits), retry failures with backoff; never delete a working set")
	caFile := fs.String("ca-file", "", "PEM roots to trust for the D-TAs' HTTPS (default: the system roots)")
	timeout := fs.Duration("timeout", 15*time.Second, "timeout of each D-TA request")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	logFormat := fs.String("log-format", "console", "json or console")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *domainPath == "" || *identity == "" || *tokenFile == "" || *out == "" {
		return usagef("--domain, --identity, --token-file and --out are required (or MILAGRO_DOMAIN, MILAGRO_IDENTITY, MILAGRO_TOKEN_FILE and MILAGRO_KEYS)")
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	db, err := os.ReadFile(*domainPath)
	if err != nil {
		return fmt.Errorf("domain: %w", err)
	}
	dom, err := keydir.ParseDomain(db)
	if err != nil {
		return err
	}
	opt := dta.FetchOptions{Domain: dom, Identity: *identity, Out: *out, Timeout: *timeout}
	if fi, err := os.Stat(*tokenFile); err == nil && fi.IsDir() {
		opt.Tokens = map[string]string{}
		for _, t := range dom.DTAs {
			tok, err := readSecretFile(filepath.Join(*tokenFile, t.ID), "token")
			if err != nil {
				return fmt.Errorf("token for D-TA %s: %w", t.ID, err)
			}
			opt.Tokens[t.ID] = tok
		}
	} else {
		tok, err := readSecretFile(*tokenFile, "token")
		if err != nil {
			return err
		}
		opt.Token = tok
	}
	if opt.SharedToken() {
		log.Warn().Msg("the same bearer token goes to several D-TAs: any one of them could replay it to the others and collect every share of this workload's key; give --token-file a folder with one token per D-TA")
	}
	for _, k := range strings.Split(*kinds, ",") {
		kind, err := keydir.ParseKind(strings.TrimSpace(k))
		if err != nil {
			return usagef("--kinds: %v", err)
		}
		opt.Kinds = append(opt.Kinds, kind)
	}
	if *epochs != "" {
		for _, e := range strings.Split(*epochs, ",") {
			v, err := strconv.ParseUint(strings.TrimSpace(e), 10, 64)
			if err != nil {
				return usagef("--epochs: %v", err)
			}
			opt.Epochs = append(opt.Epochs, v)
		}
	}
	if *factorFile != "" {
		if opt.Factor, err = readSecretFile(*factorFile, "factor"); err != nil {
			return err
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.DialContext = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca-file %s holds no PEM certificate", *caFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	opt.Client = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if !*watch {
		res, err := dta.Fetch(context.Background(), opt)
		if err != nil {
			return err
		}
		describeSet(stdout, *out, res.Set)
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return dta.Watch(ctx, opt, log, nil)
}

func describeSet(w io.Writer, dir string, s *keydir.Set) {
	var have []string
	if s.CS != nil {
		have = append(have, "client key")
	}
	if s.Token != nil {
		have = append(have, "client token (factor required)")
	}
	if len(s.Permits) > 0 {
		have = append(have, fmt.Sprintf("permits for epochs %v", s.Epochs()))
	}
	if s.SK != nil {
		have = append(have, "server identity key")
	}
	if s.SS != nil {
		have = append(have, "domain server key")
	}
	fmt.Fprintf(w, "%s: %s in domain %s (%d D-TAs), generation %s\n  %s\n  issued %s, expires %s\n",
		dir, s.Identity, s.Domain.Name, len(s.Domain.DTAs), s.Generation, strings.Join(have, ", "),
		s.IssuedAt.Format(time.RFC3339), s.ExpiresAt.Format(time.RFC3339))
}

func runKeysCheck(args []string, stdout, stderr io.Writer) error {
	fs := withArgs(newFlags("keys check", stderr), "CLIENTDIR SERVERDIR")
	factorFile := fs.String("factor-file", "", "the client's PIN or passphrase, when its set stores a token")
	if err := parse(fs, args, 2); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usagef("give a client key directory and a server key directory (or one holding both)")
	}
	client, err := keydir.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	defer client.Zeroize()
	server := client
	if fs.NArg() == 2 {
		if server, err = keydir.Load(fs.Arg(1)); err != nil {
			return err
		}
		defer server.Zeroize()
	}
	if client.CS == nil && client.Token == nil && server.CS != nil {
		client, server = server, client
	}
	factor := ""
	if *factorFile != "" {
		if factor, err = readSecretFile(*factorFile, "factor"); err != nil {
			return err
		}
	}
	rep, err := dta.Check(context.Background(), client, server, factor, time.Now())
	if err != nil {
		return err
	}
	permit := "no permit"
	if rep.PermitUsed {
		permit = fmt.Sprintf("permit for epoch %d", rep.PermitEpoch)
	}
	fmt.Fprintf(stdout, "ok: %s authenticated to %s (%s), same key on both sides, handshake %s\n", rep.ClientID, rep.ServerID, permit, rep.Handshake.Round(time.Millisecond))
	return nil
}

func runKeysShow(args []string, stdout, stderr io.Writer) error {
	fs := withArgs(newFlags("keys show", stderr), "DIR")
	if err := parse(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("give a key directory")
	}
	s, err := keydir.Load(fs.Arg(0))
	if err != nil {
		return err
	}
	defer s.Zeroize()
	describeSet(stdout, fs.Arg(0), s)
	return nil
}
