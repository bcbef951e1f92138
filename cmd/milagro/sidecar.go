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

func sidecarFlags(name string, stderr io.Writer, args []string, cfg any, register func(*flag.FlagSet)) error {
	if path := configFile(args); path != "" {
		if err := sidecar.LoadYAML(path, cfg); err != nil {
			return usagef("%v", err)
		}
	}
	fs := newFlags(name, stderr)
	fs.String("config", "", "YAML file with the same settings as the flags (flags and MILAGRO_* override it)")
	register(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := sidecar.ApplyEnv(fs, os.LookupEnv); err != nil {
		return usagef("%v", err)
	}
	return nil
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
	if err := sidecarFlags("server", stderr, args, cfg, cfg.RegisterFlags); err != nil {
		return err
	}
	log, err := sidecar.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usagef("%v", err)
	}
	srv, err := sidecar.NewServer(cfg, log)
	if err != nil {
		return configError(err)
	}
	return runSidecar(srv.Run)
}

func runClient(args []string, _, stderr io.Writer) error {
	cfg := sidecar.DefaultClientConfig()
	if err := sidecarFlags("client", stderr, args, cfg, cfg.RegisterFlags); err != nil {
		return err
	}
	log, err := sidecar.NewLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return usagef("%v", err)
	}
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
