package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/sidecar"
)

// configFile finds --config/-config in args before flags are parsed, so
// that the YAML file supplies defaults that flags and environment override.
func configFile(args []string) string {
	for i, a := range args {
		for _, p := range []string{"--config=", "-config="} {
			if v, ok := cutPrefix(a, p); ok {
				return v
			}
		}
		if (a == "--config" || a == "-config") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return os.Getenv("MILAGRO_CONFIG")
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// sidecarFlags fills cfg from the YAML file, the flags and the environment,
// in that order of precedence (lowest first). It returns the MILAGRO_*
// variables that are no setting (sidecar.UnknownEnv), for a warning once
// the logger is up.
func sidecarFlags(name string, stderr io.Writer, args []string, cfg sidecar.Settings) ([]string, error) {
	if path := configFile(args); path != "" {
		if err := sidecar.LoadYAML(path, cfg); err != nil {
			return nil, usagef("%v", err)
		}
	}
	fs := newFlags(name, stderr)
	fs.String("config", "", "YAML file with the same settings as the flags (flags and MILAGRO_* override it)")
	cfg.RegisterFlags(fs)
	if err := parse(fs, args, 0); err != nil {
		return nil, err
	}
	if err := sidecar.ApplyEnv(fs, cfg, os.LookupEnv); err != nil {
		return nil, usagef("%v", err)
	}
	// A variable of the other sidecar, or of another command, is no
	// mistake: one environment often serves several.
	other := newFlags("", io.Discard)
	if name == "server" {
		sidecar.DefaultClientConfig().RegisterFlags(other)
	} else {
		sidecar.DefaultServerConfig().RegisterFlags(other)
	}
	known := map[string]bool{}
	other.VisitAll(func(f *flag.Flag) { known[sidecar.EnvName(f.Name)] = true })
	return sidecar.UnknownEnv(fs, os.Environ(), func(k string) bool { return known[k] || otherEnv[k] }), nil
}

// warnUnknownEnv logs sidecarFlags' list.
func warnUnknownEnv(log zerolog.Logger, cmd string, names []string) {
	for _, k := range names {
		log.Warn().Str("variable", k).Msgf("%s is not a setting of milagro %s (misspelt?); ignored", k, cmd)
	}
}

// runSidecar runs a server or client until SIGTERM/SIGINT, reloading keys on
// SIGHUP; exit 0 after a clean drain, 1 when the drain timed out.
func runSidecar(run func(ctx context.Context, hup <-chan os.Signal) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, hup)
}

func runServer(args []string, _, stderr io.Writer) error {
	cfg := sidecar.DefaultServerConfig()
	unknown, err := sidecarFlags("server", stderr, args, cfg)
	if err != nil {
		return err
	}
	log, err := sidecar.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usagef("%v", err)
	}
	warnUnknownEnv(log, "server", unknown)
	srv, err := sidecar.NewServer(cfg, log)
	if err != nil {
		return configError(err)
	}
	return runSidecar(srv.Run)
}

func runClient(args []string, _, stderr io.Writer) error {
	cfg := sidecar.DefaultClientConfig()
	unknown, err := sidecarFlags("client", stderr, args, cfg)
	if err != nil {
		return err
	}
	log, err := sidecar.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usagef("%v", err)
	}
	warnUnknownEnv(log, "client", unknown)
	cl, err := sidecar.NewClient(cfg, log)
	if err != nil {
		return configError(err)
	}
	return runSidecar(cl.Run)
}

// configError makes configuration mistakes usage errors (exit 2) and keeps
// runtime failures such as unreadable keys as exit 1.
func configError(err error) error {
	var ue *sidecar.ConfigError
	if errors.As(err, &ue) {
		return usagef("%v", err)
	}
	return fmt.Errorf("%w", err)
}
