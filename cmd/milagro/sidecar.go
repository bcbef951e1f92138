package main

import (
	"context"
	"crypto/sha256"
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

// signals are a sidecar's: SIGTERM and SIGINT (stop), SIGHUP (reload).
// They are caught from the start of the command, before the keys load, so
// that a signal sent early (systemctl reload right after start) neither
// kills the process nor is lost.
type signals struct {
	stop, hup chan os.Signal
}

func catchSignals() *signals {
	s := &signals{stop: make(chan os.Signal, 2), hup: make(chan os.Signal, 1)}
	signal.Notify(s.stop, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(s.hup, syscall.SIGHUP)
	return s
}

func (s *signals) release() {
	signal.Stop(s.stop)
	signal.Stop(s.hup)
}

// runSidecar runs a server or client until SIGTERM/SIGINT, reloading keys on
// SIGHUP; exit 0 after a clean drain, 1 when the drain timed out. A second
// SIGTERM or SIGINT during the drain ends it at once (force), exit 1.
func runSidecar(sigs *signals, run func(ctx context.Context, hup <-chan os.Signal) error, force func(), config string, log zerolog.Logger) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	hup := (<-chan os.Signal)(sigs.hup)
	if config != "" {
		hup = noteConfigChange(config, log, sigs.hup, done)
	}
	go func() { // ends with the run
		for n := 0; ; n++ {
			select {
			case <-sigs.stop:
				if n == 0 {
					cancel()
				} else {
					force()
				}
			case <-done:
				return
			}
		}
	}()
	return run(ctx, hup)
}

// noteConfigChange passes SIGHUPs on (they reload keys) and, when the
// --config file has changed since the start, logs that a restart is needed
// to apply it: SIGHUP (systemctl reload) does not re-read it, as stunnel's
// users might expect. It ends with done.
func noteConfigChange(path string, log zerolog.Logger, in <-chan os.Signal, done <-chan struct{}) <-chan os.Signal {
	sum := func() [32]byte {
		b, err := os.ReadFile(path)
		if err != nil {
			return [32]byte{}
		}
		return sha256.Sum256(b)
	}
	start := sum()
	out := make(chan os.Signal, 1)
	go func() {
		for {
			select {
			case sig := <-in:
				if sum() != start {
					log.Warn().Str("config", path).Msg("the --config file has changed since the start: restart to apply it (SIGHUP reloads keys only)")
				}
				select {
				case out <- sig:
				default: // a reload is pending already
				}
			case <-done:
				return
			}
		}
	}()
	return out
}

func runServer(args []string, _, stderr io.Writer) error {
	sigs := catchSignals()
	defer sigs.release()
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
	return runSidecar(sigs, srv.Run, srv.Force, configFile(args), log)
}

func runClient(args []string, _, stderr io.Writer) error {
	sigs := catchSignals()
	defer sigs.release()
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
	return runSidecar(sigs, cl.Run, cl.Force, configFile(args), log)
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
