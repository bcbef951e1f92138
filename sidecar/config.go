package sidecar

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/milagro-sc/milagro/psk"
)

// stringList is a repeatable flag. The first value set (command line or
// environment) replaces a list that came from the YAML file; later values
// add to it, so flags and environment override the file, as for every other
// setting.
type stringList struct {
	p   *[]string
	set bool
}

func (s *stringList) String() string {
	if s.p == nil {
		return ""
	}
	return strings.Join(*s.p, ",")
}

func (s *stringList) Set(v string) error {
	if !s.set {
		*s.p, s.set = nil, true
	}
	*s.p = append(*s.p, v)
	return nil
}

func (s *stringList) repeatable() {}

// funcList is a repeatable flag whose values go through a function (the
// routes).
type funcList func(string) error

func (f funcList) String() string     { return "" }
func (f funcList) Set(v string) error { return f(v) }
func (f funcList) repeatable()        {}

// repeatable marks the flags that may be given several times: from the
// environment they take several values, separated by white space.
type repeatable interface{ repeatable() }

// List is a list setting of the YAML file (allow-id, quiet, route-allow's
// patterns). It takes a sequence or, as a one-item list, a single scalar:
// `allow-id: spiffe://prod/ns/web/*` means what the flag given once means,
// where yaml.v3 alone would refuse it ("cannot unmarshal !!str into
// []string").
type List []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (l *List) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Tag == "!!null" {
			*l = nil
			return nil
		}
		var v string
		if err := n.Decode(&v); err != nil {
			return err
		}
		*l = List{v}
		return nil
	}
	var v []string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*l = v
	return nil
}

// Common settings of both sidecars.
type Common struct {
	Listen          string        `yaml:"listen"`
	Keys            string        `yaml:"keys"`
	Status          string        `yaml:"status"`
	EnablePprof     bool          `yaml:"enable-pprof"`
	EnableShutdown  bool          `yaml:"enable-shutdown"`
	LogLevel        string        `yaml:"log-level"`
	LogFormat       string        `yaml:"log-format"`
	Quiet           List          `yaml:"quiet"`
	TimedReload     time.Duration `yaml:"timed-reload"`
	ShutdownTimeout time.Duration `yaml:"shutdown-timeout"`
	MaxConns        int           `yaml:"max-conns"`
	ConnectTimeout  time.Duration `yaml:"connect-timeout"`
	HandshakeTO     time.Duration `yaml:"handshake-timeout"`
	IdleTimeout     time.Duration `yaml:"idle-timeout"`
	SessionIdle     time.Duration `yaml:"session-idle-timeout"`
	KeepAlive       time.Duration `yaml:"keepalive"`
	Grace           time.Duration `yaml:"epoch-grace"`
	StreamWindow    int           `yaml:"stream-window"`
}

// ServerConfig configures `milagro server`.
type ServerConfig struct {
	Common        `yaml:",inline"`
	Target        string            `yaml:"target"`
	Routes        map[string]string `yaml:"routes"`      // named targets
	RouteAllow    map[string]List   `yaml:"route-allow"` // named target → the client patterns it takes (none: every allowed client)
	AllowIDs      List              `yaml:"allow-id"`
	AllowAll      bool              `yaml:"allow-all"`
	HTTP          bool              `yaml:"http"`
	ProxyProtocol bool              `yaml:"proxy-protocol"`
	UnsafeTarget  bool              `yaml:"unsafe-target"`
	MaxHandshakes int               `yaml:"max-handshakes"`
	RequirePermit bool              `yaml:"require-permit"`
	MaxSessionAge time.Duration     `yaml:"max-session-age"`
	// MaxHandshakesPerIP bounds one source address's connections still in
	// their handshake (0: no bound).
	MaxHandshakesPerIP int `yaml:"max-handshakes-per-ip"`
	// MaxConnsPerClient bounds one client identity's proxied connections,
	// over all its sessions (0: no bound but --max-conns).
	MaxConnsPerClient int `yaml:"max-conns-per-client"`
}

// Route maps an application destination to an upstream server sidecar and
// the identity it must prove.
type Route struct {
	Upstream string `yaml:"upstream"`
	VerifyID string `yaml:"verify-id"`
	Target   string `yaml:"target"` // named target at the upstream ("" = its default)
}

// ClientConfig configures `milagro client`.
type ClientConfig struct {
	Common       `yaml:",inline"`
	Target       string           `yaml:"target"`    // upstream server sidecar
	VerifyID     string           `yaml:"verify-id"` // identity (pattern) the upstream must prove
	ServerID     string           `yaml:"server-id"` // identity asked for in Msg1 (default: verify-id when literal)
	RemoteTarget string           `yaml:"remote-target"`
	FactorFile   string           `yaml:"factor-file"`
	UnsafeListen bool             `yaml:"unsafe-listen"`
	ForwardProxy string           `yaml:"forward-proxy"` // HTTP CONNECT listener
	Transparent  bool             `yaml:"transparent"`   // --listen gets iptables-redirected connections
	Routes       map[string]Route `yaml:"routes"`        // forward proxy: host:port → route
	MaxStreams   int              `yaml:"max-streams-per-session"`
	MaxSessions  int              `yaml:"max-sessions"` // per upstream
}

func commonDefaults(c *Common, listen string) {
	c.Listen = listen
	c.LogLevel = "info"
	c.LogFormat = "json"
	c.ShutdownTimeout = 30 * time.Second
	c.MaxConns = 10000
	c.ConnectTimeout = 5 * time.Second
	c.HandshakeTO = 10 * time.Second
	c.SessionIdle = 10 * time.Minute
	c.KeepAlive = 30 * time.Second
	c.Grace = 300 * time.Second
	c.StreamWindow = psk.DefaultStreamWindow
}

// DefaultServerConfig returns the server defaults.
func DefaultServerConfig() *ServerConfig {
	c := &ServerConfig{MaxHandshakes: 64, MaxSessionAge: 10 * time.Minute, MaxHandshakesPerIP: 64}
	commonDefaults(&c.Common, ":8443")
	return c
}

// DefaultClientConfig returns the client defaults.
func DefaultClientConfig() *ClientConfig {
	c := &ClientConfig{MaxStreams: 256, MaxSessions: 8}
	commonDefaults(&c.Common, "127.0.0.1:9000")
	return c
}

func (c *Common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "address to accept connections on (HOST:PORT or unix:PATH)")
	fs.StringVar(&c.Keys, "keys", c.Keys, "key directory written by 'milagro keys fetch' (required)")
	fs.StringVar(&c.Status, "status", c.Status, "serve /_status, /healthz, /readyz and /_metrics/prometheus on this address")
	fs.BoolVar(&c.EnablePprof, "enable-pprof", c.EnablePprof, "also serve Go's /debug/pprof/ profiles on the --status address (exposes internals: keep the address private)")
	fs.BoolVar(&c.EnableShutdown, "enable-shutdown", c.EnableShutdown, "also serve POST /_shutdown on the --status address, to loopback callers only: a graceful shutdown, as on SIGTERM (for Kubernetes Jobs, whose sidecar must end with the job)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "json or console")
	fs.Var(&stringList{p: (*[]string)(&c.Quiet)}, "quiet", "silence a class of log lines: handshake-errs (failed handshakes), conns (the line of each connection that ends cleanly); repeatable")
	fs.DurationVar(&c.TimedReload, "timed-reload", c.TimedReload, "also reload keys at this interval (0: only on change and SIGHUP)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout, "on SIGTERM, how long to wait for connections to drain")
	fs.IntVar(&c.MaxConns, "max-conns", c.MaxConns, "maximum concurrent connections: the client's application connections; the server's secure sessions and, as many again, its proxied (backend) connections")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "timeout for dialing a backend or upstream")
	fs.DurationVar(&c.HandshakeTO, "handshake-timeout", c.HandshakeTO, "timeout for a whole secure handshake (mpinkex and DTLS)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "close a proxied connection idle this long (0: never)")
	fs.DurationVar(&c.SessionIdle, "session-idle-timeout", c.SessionIdle, "close a secure session without streams this long")
	fs.DurationVar(&c.KeepAlive, "keepalive", c.KeepAlive, "secure session keepalive interval (negative: none; TCP keep-alive then watches session connections instead)")
	fs.DurationVar(&c.Grace, "epoch-grace", c.Grace, "accept the adjacent epoch's time permit this close to an epoch boundary")
	fs.IntVar(&c.StreamWindow, "stream-window", c.StreamWindow, fmt.Sprintf("per-connection flow-control window in bytes (%d to %d): in flight per direction, and the most a sidecar buffers for a slow reader", psk.MinStreamWindow, psk.MaxStreamWindow))
}

// RegisterFlags binds the server flags to c (defaults from c).
func (c *ServerConfig) RegisterFlags(fs *flag.FlagSet) {
	c.register(fs)
	fs.StringVar(&c.Target, "target", c.Target, "backend for streams that name no target (HOST:PORT or unix:PATH)")
	routesSet := false // the first --route replaces the YAML file's routes
	fs.Var(funcList(func(v string) error {
		name, addr, ok := strings.Cut(v, "=")
		if !ok || name == "" || addr == "" {
			return errors.New("want NAME=ADDR")
		}
		if c.Routes == nil || !routesSet {
			c.Routes, routesSet = map[string]string{}, true
		}
		c.Routes[name] = addr
		return nil
	}), "route", "named target NAME=ADDR that clients may ask for; repeatable")
	// The first --route-allow NAME=… replaces the YAML file's patterns for
	// NAME only: the file's restrictions of other routes stay (replacing
	// the whole map would open them to every allowed client).
	routeAllowSet := map[string]bool{}
	fs.Var(funcList(func(v string) error {
		name, pat, ok := strings.Cut(v, "=")
		if !ok || name == "" || pat == "" {
			return errors.New("want NAME=PATTERN")
		}
		if c.RouteAllow == nil {
			c.RouteAllow = map[string]List{}
		}
		if !routeAllowSet[name] {
			c.RouteAllow[name], routeAllowSet[name] = nil, true
		}
		c.RouteAllow[name] = append(c.RouteAllow[name], pat)
		return nil
	}), "route-allow", "only clients matching PATTERN may ask for the named --route NAME (NAME=PATTERN; repeatable; without it, every allowed client may)")
	fs.Var(&stringList{p: (*[]string)(&c.AllowIDs)}, "allow-id", "allow clients whose identity matches this pattern (* one segment, ** any); repeatable")
	fs.BoolVar(&c.AllowAll, "allow-all", c.AllowAll, "allow every authenticated client of the domain")
	fs.BoolVar(&c.HTTP, "http", c.HTTP, "HTTP reverse proxy to --target: set X-Milagro-Client-Id to the authenticated identity (named --route targets stay TCP)")
	fs.BoolVar(&c.ProxyProtocol, "proxy-protocol", c.ProxyProtocol, "send a PROXY protocol v2 header with the client identity (TLV 0xE0) to TCP backends")
	fs.BoolVar(&c.UnsafeTarget, "unsafe-target", c.UnsafeTarget, "allow a backend that is not on loopback (plaintext leaves the host)")
	fs.IntVar(&c.MaxHandshakes, "max-handshakes", c.MaxHandshakes, "handshakes doing pairing work at once; a new handshake arriving past it is answered 'overloaded' (waiting for a peer holds no slot)")
	fs.BoolVar(&c.RequirePermit, "require-permit", c.RequirePermit, "refuse clients without a time permit for the current epoch (makes revocation effective)")
	fs.IntVar(&c.MaxConnsPerClient, "max-conns-per-client", c.MaxConnsPerClient, "proxied connections one client identity may have open, over all its sessions; past it its new streams are refused, so that one client cannot take every --max-conns slot (0: no bound but --max-conns)")
	fs.IntVar(&c.MaxHandshakesPerIP, "max-handshakes-per-ip", c.MaxHandshakesPerIP, "connections from one source address still in their handshake; past it a new one is answered 'overloaded', so that one source cannot hold every --max-conns slot (0: no bound)")
	fs.DurationVar(&c.MaxSessionAge, "max-session-age", c.MaxSessionAge, "send a session GoAway after this long (±10%), so that clients' new connections spread over the replicas behind a load balancer; its streams go on (0: never)")
}

// RegisterFlags binds the client flags to c.
func (c *ClientConfig) RegisterFlags(fs *flag.FlagSet) {
	c.register(fs)
	fs.StringVar(&c.Target, "target", c.Target, "upstream server sidecar HOST:PORT")
	fs.StringVar(&c.VerifyID, "verify-id", c.VerifyID, "identity (or pattern) the upstream must prove (required with --target)")
	fs.StringVar(&c.ServerID, "server-id", c.ServerID, "identity to ask the upstream for (default: --verify-id when it has no wildcard)")
	fs.StringVar(&c.RemoteTarget, "remote-target", c.RemoteTarget, "named target at the upstream (default: its default target)")
	fs.StringVar(&c.FactorFile, "factor-file", c.FactorFile, "file with the PIN or passphrase when the key directory stores a token")
	fs.BoolVar(&c.UnsafeListen, "unsafe-listen", c.UnsafeListen, "allow a plaintext listener that is not on loopback")
	fs.StringVar(&c.ForwardProxy, "forward-proxy", c.ForwardProxy, "serve an HTTP CONNECT forward proxy on this address (routes from --route)")
	routesSet := false // the first --route replaces the YAML file's routes
	fs.BoolVar(&c.Transparent, "transparent", c.Transparent, "--listen receives connections redirected by iptables (REDIRECT/DNAT, Linux): each goes to the --route of its original destination IP:PORT")
	fs.Var(funcList(func(v string) error {
		dest, r, ok := strings.Cut(v, "=")
		up, id, ok2 := strings.Cut(r, "@")
		if !ok || !ok2 || dest == "" || up == "" || id == "" {
			return errors.New("want HOST:PORT=UPSTREAM@VERIFY-ID[#TARGET]")
		}
		id, target, _ := strings.Cut(id, "#")
		if c.Routes == nil || !routesSet {
			c.Routes, routesSet = map[string]Route{}, true
		}
		c.Routes[dest] = Route{Upstream: up, VerifyID: id, Target: target}
		return nil
	}), "route", "route for --forward-proxy and --transparent: HOST:PORT=UPSTREAM@VERIFY-ID[#TARGET]; repeatable")
	fs.IntVar(&c.MaxStreams, "max-streams-per-session", c.MaxStreams, "open another secure session when each carries this many streams")
	fs.IntVar(&c.MaxSessions, "max-sessions", c.MaxSessions, "secure sessions to one upstream at most (so at most this × --max-streams-per-session connections to it)")
}

// Prefer settles the server settings that exclude each other (--allow-all
// and --allow-id, --http and --proxy-protocol) when they come from
// different sources: the flag overrides the environment and the file, the
// environment the file, as for any other setting.
func (c *ServerConfig) Prefer(level func(flagName string) Level) {
	prefer(level, "allow-all", "allow-id", c.AllowAll, len(c.AllowIDs) > 0, func() { c.AllowAll = false }, func() { c.AllowIDs = nil })
	prefer(level, "http", "proxy-protocol", c.HTTP, c.ProxyProtocol, func() { c.HTTP = false }, func() { c.ProxyProtocol = false })
}

// Prefer settles the client settings that exclude each other (--target
// and --transparent) as ServerConfig.Prefer does.
func (c *ClientConfig) Prefer(level func(flagName string) Level) {
	prefer(level, "target", "transparent", c.Target != "", c.Transparent, func() { c.Target = "" }, func() { c.Transparent = false })
}

// LoadYAML merges a YAML config file into c; unknown keys are errors. An
// empty file (or one of comments only) sets nothing; a second document
// would be silently ignored, so it is an error.
func LoadYAML(path string, c any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: one YAML document expected, found more", path)
	}
	return nil
}

// EnvName is the environment variable of a flag: MILAGRO_<FLAG>, upper
// case, dashes as underscores.
func EnvName(flagName string) string {
	return "MILAGRO_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Settings is a sidecar's configuration as the command line sees it
// (*ServerConfig, *ClientConfig).
type Settings interface {
	RegisterFlags(*flag.FlagSet)
	Prefer(level func(flagName string) Level)
}

// ApplyEnv completes a configuration whose YAML file is loaded and whose
// flags fs has parsed: it sets every flag not given on the command line
// from its environment variable (EnvName), so the precedence is flags >
// environment > YAML file > defaults, and settles the settings that
// exclude each other by the same precedence (Prefer). A repeatable flag
// (--allow-id, --route, --quiet) takes several values from one variable,
// separated by white space (none of its values can contain any).
func ApplyEnv(fs *flag.FlagSet, cfg Settings, environ func(string) (string, bool)) error {
	given := map[string]bool{} // on the command line (before fs.Set marks the others)
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fromEnv, err := setFromEnv(fs, environ)
	if err != nil {
		return err
	}
	cfg.Prefer(func(name string) Level {
		switch {
		case given[name]:
			return FromFlag
		case fromEnv[name]:
			return FromEnv
		}
		return FromFile
	})
	return nil
}

// setFromEnv is ApplyEnv's first part; it returns the flags it set.
func setFromEnv(fs *flag.FlagSet, environ func(string) (string, bool)) (map[string]bool, error) {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fromEnv := map[string]bool{}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil || f.Name == "config" {
			return
		}
		key := EnvName(f.Name)
		v, ok := environ(key)
		if !ok {
			return
		}
		vals := []string{v}
		if _, ok := f.Value.(repeatable); ok {
			vals = strings.Fields(v)
		}
		for _, v := range vals {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w%s", key, v, e, durationHint(f))
				return
			}
		}
		fromEnv[f.Name] = true
	})
	return fromEnv, err
}

// durationHint completes the flag package's "parse error" for durations.
func durationHint(f *flag.Flag) string {
	if g, ok := f.Value.(flag.Getter); ok {
		if _, ok := g.Get().(time.Duration); ok {
			return " (want a duration with its unit, such as 30s or 1m)"
		}
	}
	return ""
}

// UnknownEnv lists the MILAGRO_* variables of env (KEY=VALUE entries) that
// are neither a flag of fs nor known (another command's setting, such as
// MILAGRO_CONFIG or `keys fetch`'s): most likely misspelt settings, which
// would otherwise be ignored in silence. The variables Kubernetes makes for
// a Service named "milagro" (MILAGRO_SERVICE_*, MILAGRO_PORT*) are not
// listed.
func UnknownEnv(fs *flag.FlagSet, env []string, known func(name string) bool) []string {
	flags := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { flags[EnvName(f.Name)] = true })
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "MILAGRO_") || flags[k] || known(k) ||
			strings.HasPrefix(k, "MILAGRO_SERVICE_") || k == "MILAGRO_PORT" || strings.HasPrefix(k, "MILAGRO_PORT_") {
			continue
		}
		out = append(out, k)
	}
	return out
}

// Level is where a setting came from, for settings that exclude each
// other.
type Level int

// The sources of a setting, lowest first.
const (
	FromFile Level = iota // the YAML file, or the default
	FromEnv
	FromFlag
)

// prefer settles two settings that exclude each other, a (set when isA)
// and b (set when isB), when they come from different sources: the one
// from the higher source stays and clearB or clearA clears the other.
// From the same source both stay, and the config's check refuses them.
func prefer(level func(string) Level, a, b string, isA, isB bool, clearA, clearB func()) {
	if !isA || !isB {
		return
	}
	switch la, lb := level(a), level(b); {
	case la > lb:
		clearB()
	case lb > la:
		clearA()
	}
}

// ConfigError is a mistake in the configuration (exit status 2), as opposed
// to a failure at run time such as unreadable keys.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

func configErr(err error) error {
	if err == nil {
		return nil
	}
	return &ConfigError{Err: err}
}
