// Command milagro is the certificate-less secure channel: the D-TA
// service, the key fetcher, the server and client sidecars, and a demo of
// them all. This file only parses flags and wires packages together.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/sidecar"
)

// usageError makes main exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{
	"version":      {"print the version", runVersion},
	"dta init":     {"create a D-TA: master share and signing key", runDTAInit},
	"dta serve":    {"serve the D-TA issuance API", runDTAServe},
	"dta info":     {"print this D-TA's entry for domain.json", runDTAInfo},
	"domain build": {"write domain.json from D-TA folders and URLs", runDomainBuild},
	"keys fetch":   {"fetch key shares from every D-TA and write the key directory", runKeysFetch},
	"keys check":   {"verify key directories with an in-process handshake", runKeysCheck},
	"keys show":    {"describe a key directory (no secrets)", runKeysShow},
	"server":       {"accept secure sessions and forward streams to a plaintext backend", runServer},
	"client":       {"carry plaintext connections to a server sidecar over secure sessions", runClient},
	"demo":         {"show the whole system working, in one process on loopback", runDemo},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) > 0 && (args[0] == "--version" || args[0] == "-version"):
		args = append([]string{"version"}, args[1:]...)
	case len(args) > 1 && args[0] == "help":
		// milagro help CMD: CMD's own flags.
		args = append(append([]string(nil), args[1:]...), "-h")
	}
	name, rest := "", args
	for _, n := range []int{2, 1} {
		if len(args) >= n {
			if _, ok := commands[strings.Join(args[:n], " ")]; ok {
				name, rest = strings.Join(args[:n], " "), args[n:]
				break
			}
		}
	}
	if name == "" {
		if len(args) > 0 && args[0] != "help" && args[0] != "-h" && args[0] != "--help" {
			fmt.Fprintf(stderr, "milagro: unknown command %q\n\n", strings.Join(args, " "))
			printUsage(stderr)
			return 2
		}
		if len(args) == 0 { // a usage mistake: to stderr
			printUsage(stderr)
			return 2
		}
		printUsage(stdout)
		return 0
	}
	err := commands[name].run(rest, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "milagro %s: %v\n(see 'milagro %s -h')\n", name, err, name)
		return 2
	default:
		fmt.Fprintf(stderr, "milagro %s: %v\n", name, err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: milagro <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'milagro <command> -h' for its flags.")
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	if err := parse(newFlags("version", stderr), args, 0); err != nil {
		return err
	}
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	fmt.Fprintf(stdout, "milagro %s (mpinkex v1)\n", v)
	return nil
}

// newFlags makes a flag set that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("milagro "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// withArgs makes fs's -h name the positional arguments too: "usage:
// milagro NAME [flags] ARGS".
func withArgs(fs *flag.FlagSet, args string) *flag.FlagSet {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s [flags] %s\n", fs.Name(), args)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags, mapping errors to usage errors and rejecting
// positional arguments beyond max.
func parse(fs *flag.FlagSet, args []string, maxPositional int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > maxPositional {
		return usagef("unexpected arguments: %s", strings.Join(fs.Args()[maxPositional:], " "))
	}
	return nil
}

// otherEnv lists the MILAGRO_* variables that are not a sidecar flag's
// (sidecar.EnvName): the sidecars do not warn about them.
var otherEnv = map[string]bool{
	"MILAGRO_CONFIG": true, "MILAGRO_DTA_PASSPHRASE": true,
	// envDefault's, for keys fetch and dta serve
	"MILAGRO_DTA_DIR": true, "MILAGRO_DTA_LISTEN": true, "MILAGRO_DTA_POLICY": true,
	"MILAGRO_DOMAIN": true, "MILAGRO_IDENTITY": true, "MILAGRO_KEYS": true, "MILAGRO_KINDS": true, "MILAGRO_TOKEN_FILE": true,
}

// envDefault returns $MILAGRO_<NAME> or def. NAME must be in otherEnv.
func envDefault(name, def string) string {
	if !otherEnv["MILAGRO_"+name] {
		panic("envDefault: MILAGRO_" + name + " is not in otherEnv")
	}
	if v, ok := os.LookupEnv("MILAGRO_" + name); ok {
		return v
	}
	return def
}

func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	log, err := sidecar.NewLogger(w, level, format)
	if err != nil {
		return log, usagef("%v", err)
	}
	return log, nil
}

// readSecretFile reads a secret file named on the command line.
func readSecretFile(path, what string) (string, error) { return sidecar.ReadSecretFile(path, what) }
