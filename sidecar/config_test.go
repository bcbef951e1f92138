package sidecar

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/milagro-sc/milagro/psk"
)

// parseServer does what `milagro server` does: defaults, then the YAML file
// (if any), then flags, then MILAGRO_* for the flags not given.
func parseServer(t *testing.T, yaml string, env map[string]string, args ...string) (*ServerConfig, error) {
	t.Helper()
	cfg := DefaultServerConfig()
	return cfg, parseInto(t, yaml, env, args, cfg)
}

func parseClient(t *testing.T, yaml string, env map[string]string, args ...string) (*ClientConfig, error) {
	t.Helper()
	cfg := DefaultClientConfig()
	return cfg, parseInto(t, yaml, env, args, cfg)
}

func parseInto(t *testing.T, yaml string, env map[string]string, args []string, cfg Settings) error {
	t.Helper()
	if yaml != "" {
		p := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := LoadYAML(p, cfg); err != nil {
			return err
		}
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("config", "", "")
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return ApplyEnv(fs, cfg, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestConfigDefaults(t *testing.T) {
	s, err := parseServer(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Listen != ":8443" || s.LogLevel != "info" || s.LogFormat != "json" || s.ShutdownTimeout != 30*time.Second ||
		s.MaxConns != 10000 || s.ConnectTimeout != 5*time.Second || s.HandshakeTO != 10*time.Second ||
		s.SessionIdle != 10*time.Minute || s.KeepAlive != 30*time.Second || s.Grace != 300*time.Second ||
		s.MaxHandshakes != 64 || s.IdleTimeout != 0 || s.HTTP || s.RequirePermit || s.AllowAll {
		t.Errorf("server defaults: %+v", s)
	}
	c, err := parseClient(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9000" || c.MaxStreams != 256 || c.Grace != 300*time.Second {
		t.Errorf("client defaults: %+v", c)
	}
	// A half-closed connection is not cut by psk's stream close timeout
	// (5 minutes of silence by default), only by --idle-timeout as an
	// open one is; psk.TestNoCloseTimeout shows what negative means.
	for _, pc := range []*psk.Config{s.pskConfig(), c.pskConfig()} {
		if pc.StreamCloseTimeout >= 0 {
			t.Errorf("psk StreamCloseTimeout %v, want negative (none)", pc.StreamCloseTimeout)
		}
	}
}

// flags > MILAGRO_* > YAML > defaults, setting by setting.
func TestConfigPrecedence(t *testing.T) {
	yaml := `
listen: 127.0.0.1:1001
keys: /yaml/keys
target: 127.0.0.1:2001
max-conns: 11
idle-timeout: 11s
log-level: debug
epoch-grace: 0s
allow-id: ["spiffe://yaml/*"]
http: true
require-permit: true
routes:
  db: 127.0.0.1:5432
`
	env := map[string]string{
		"MILAGRO_LISTEN":       "127.0.0.1:1002",
		"MILAGRO_MAX_CONNS":    "12",
		"MILAGRO_IDLE_TIMEOUT": "12s",
		"MILAGRO_STATUS":       "127.0.0.1:9902",
		"MILAGRO_HTTP":         "false",
		"MILAGRO_CONFIG":       "ignored: config is not a setting",
	}
	s, err := parseServer(t, yaml, env, "--listen", "127.0.0.1:1003", "--idle-timeout=13s")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"listen (flag over env over yaml)", s.Listen, "127.0.0.1:1003"},
		{"idle-timeout (flag)", s.IdleTimeout, 13 * time.Second},
		{"max-conns (env over yaml)", s.MaxConns, 12},
		{"status (env over default)", s.Status, "127.0.0.1:9902"},
		{"http (env false over yaml true)", s.HTTP, false},
		{"keys (yaml)", s.Keys, "/yaml/keys"},
		{"target (yaml)", s.Target, "127.0.0.1:2001"},
		{"log-level (yaml)", s.LogLevel, "debug"},
		{"epoch-grace (yaml 0)", s.Grace, time.Duration(0)},
		{"require-permit (yaml)", s.RequirePermit, true},
		{"allow-id (yaml)", strings.Join(s.AllowIDs, ","), "spiffe://yaml/*"},
		{"routes (yaml)", s.Routes["db"], "127.0.0.1:5432"},
		{"connect-timeout (default)", s.ConnectTimeout, 5 * time.Second},
		{"max-handshakes (default)", s.MaxHandshakes, 64},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// A repeatable flag given on the command line (or in the environment)
// replaces the YAML file's list; it does not add to it. Otherwise
// `--allow-id X` would still let the file's identities in.
func TestConfigListPrecedence(t *testing.T) {
	yaml := "allow-id: [\"spiffe://yaml/a\", \"spiffe://yaml/b\"]\nroutes:\n  db: 127.0.0.1:5432\nquiet: [handshake-errs]\n"
	s, err := parseServer(t, yaml, nil, "--allow-id", "spiffe://flag/1", "--allow-id", "spiffe://flag/2", "--route", "cache=127.0.0.1:6379")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"spiffe://flag/1", "spiffe://flag/2"}; !slices.Equal(s.AllowIDs, want) {
		t.Errorf("allow-id %q, want %q", s.AllowIDs, want)
	}
	if len(s.Routes) != 1 || s.Routes["cache"] != "127.0.0.1:6379" {
		t.Errorf("routes %v, want only the flag's", s.Routes)
	}
	if !slices.Equal(s.Quiet, []string{"handshake-errs"}) {
		t.Errorf("quiet %q, want the file's", s.Quiet)
	}

	s, err = parseServer(t, yaml, map[string]string{"MILAGRO_ALLOW_ID": "spiffe://env/x"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"spiffe://env/x"}; !slices.Equal(s.AllowIDs, want) {
		t.Errorf("allow-id from env %q, want %q", s.AllowIDs, want)
	}

	// Without a file, repeated flags accumulate.
	s, err = parseServer(t, "", nil, "--allow-id", "a/*", "--allow-id", "b/*", "--route", "x=127.0.0.1:1", "--route", "y=127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.AllowIDs, []string{"a/*", "b/*"}) || len(s.Routes) != 2 {
		t.Errorf("allow-id %q routes %v", s.AllowIDs, s.Routes)
	}

	cyaml := "routes:\n  a.internal:80:\n    upstream: 127.0.0.1:8443\n    verify-id: spiffe://yaml/a\n"
	c, err := parseClient(t, cyaml, nil, "--route", "b.internal:80=127.0.0.1:9443@spiffe://flag/b#web")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) != 1 || c.Routes["b.internal:80"] != (Route{Upstream: "127.0.0.1:9443", VerifyID: "spiffe://flag/b", Target: "web"}) {
		t.Errorf("client routes %+v, want only the flag's", c.Routes)
	}
}

// A list setting given as one scalar in the file is a one-item list (as
// the flag given once); null is no list; a mapping is refused.
func TestConfigYAMLScalarLists(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		allow      []string
		quiet      []string
		routeAllow []string
		err        string
	}{
		{name: "scalars", yaml: "allow-id: spiffe://a/*\nquiet: handshake-errs\nroutes: {db: 127.0.0.1:1}\nroute-allow: {db: spiffe://a/db}\n",
			allow: []string{"spiffe://a/*"}, quiet: []string{"handshake-errs"}, routeAllow: []string{"spiffe://a/db"}},
		{name: "sequences", yaml: "allow-id: [spiffe://a/*, spiffe://b/*]\nquiet: [handshake-errs]\nroutes: {db: 127.0.0.1:1}\nroute-allow: {db: [spiffe://a/db, spiffe://b/db]}\n",
			allow: []string{"spiffe://a/*", "spiffe://b/*"}, quiet: []string{"handshake-errs"}, routeAllow: []string{"spiffe://a/db", "spiffe://b/db"}},
		{name: "quoted", yaml: "allow-id: \"spiffe://a/**\"\n", allow: []string{"spiffe://a/**"}},
		{name: "null", yaml: "allow-id: ~\nallow-all: true\n"},
		{name: "mapping", yaml: "allow-id: {a: b}\n", err: "cannot unmarshal"},
		{name: "nested sequence", yaml: "allow-id: [[a]]\n", err: "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseServer(t, tc.yaml, nil)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(s.AllowIDs, tc.allow) || !slices.Equal(s.Quiet, tc.quiet) || !slices.Equal(s.RouteAllow["db"], tc.routeAllow) {
				t.Errorf("allow-id %q quiet %q route-allow %q", s.AllowIDs, s.Quiet, s.RouteAllow["db"])
			}
		})
	}
	// A flag still replaces the file's scalar.
	s, err := parseServer(t, "allow-id: spiffe://file/*\n", nil, "--allow-id", "spiffe://flag/*")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.AllowIDs, []string{"spiffe://flag/*"}) {
		t.Errorf("allow-id %q, want the flag's", s.AllowIDs)
	}
}

func TestConfigClientYAML(t *testing.T) {
	yaml := `
listen: unix:/run/app.sock
target: pay.prod:8443
verify-id: spiffe://prod/ns/pay/*
server-id: spiffe://prod/ns/pay/api
remote-target: web
max-streams-per-session: 17
keepalive: 1m
routes:
  db.internal:5432:
    upstream: db.prod:8443
    verify-id: spiffe://prod/ns/db/store
    target: primary
`
	c, err := parseClient(t, yaml, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Route{Upstream: "db.prod:8443", VerifyID: "spiffe://prod/ns/db/store", Target: "primary"}
	if c.Listen != "unix:/run/app.sock" || c.Target != "pay.prod:8443" || c.VerifyID != "spiffe://prod/ns/pay/*" ||
		c.ServerID != "spiffe://prod/ns/pay/api" || c.RemoteTarget != "web" || c.MaxStreams != 17 ||
		c.KeepAlive != time.Minute || c.Routes["db.internal:5432"] != want {
		t.Errorf("client config %+v", c)
	}
}

func TestLoadYAMLErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown key", "listen: :1\nallow_id: [x]\n", "field allow_id not found"},
		{"client key in a server file", "verify-id: spiffe://x\n", "field verify-id not found"},
		{"unknown nested key", "routes:\n  a:1:\n    upstream: x:1\n    verify: y\n", ""},
		{"bad type", "max-conns: many\n", "cannot unmarshal"},
		{"bad duration", "idle-timeout: soon\n", ""},
		{"not a mapping", "- a\n- b\n", "cannot unmarshal"},
		{"two documents", "listen: :1\n---\nlisten: :2\n", "one YAML document expected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if strings.Contains(tc.yaml, "upstream") {
				_, err = parseClient(t, tc.yaml, nil)
			} else {
				_, err = parseServer(t, tc.yaml, nil)
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), "config ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
	if err := LoadYAML(filepath.Join(t.TempDir(), "nope.yaml"), DefaultServerConfig()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// A file that sets nothing (empty, or a template of comments) is valid and
// leaves the defaults.
func TestLoadYAMLEmpty(t *testing.T) {
	for _, body := range []string{"", "\n", "# listen: :8443\n# keys: /var/run/milagro\n", "---\n"} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c := DefaultServerConfig()
		if err := LoadYAML(path, c); err != nil {
			t.Errorf("%q: %v", body, err)
		}
		if d := DefaultServerConfig(); c.Listen != d.Listen || c.MaxConns != d.MaxConns {
			t.Errorf("%q changed the defaults: %+v", body, c.Common)
		}
	}
}

func TestApplyEnvErrors(t *testing.T) {
	for _, kv := range [][2]string{
		{"MILAGRO_MAX_CONNS", "lots"},
		{"MILAGRO_IDLE_TIMEOUT", "5"},
		{"MILAGRO_HTTP", "maybe"},
		{"MILAGRO_ROUTE", "no-equals-sign"},
	} {
		_, err := parseServer(t, "", map[string]string{kv[0]: kv[1]})
		if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("%s=%q:", kv[0], kv[1])) {
			t.Errorf("%s=%s: %v, want an error naming the variable and its value", kv[0], kv[1], err)
		}
		if strings.HasSuffix(kv[0], "TIMEOUT") && (err == nil || !strings.Contains(err.Error(), "such as 30s")) {
			t.Errorf("%s=%s: %v, want the duration format explained", kv[0], kv[1], err)
		}
	}
	// Unrelated and unknown variables are ignored here (UnknownEnv finds
	// the unknown ones, for a warning).
	if _, err := parseServer(t, "", map[string]string{"MILAGRO_NO_SUCH_FLAG": "x", "HOME": "/"}); err != nil {
		t.Error(err)
	}
}

// TestUnknownEnv: a misspelt MILAGRO_* variable is found; flags, known
// names, other variables and Kubernetes' service variables are not.
func TestUnknownEnv(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	DefaultServerConfig().RegisterFlags(fs)
	env := []string{
		"MILAGRO_REQUIRE_PERMITS=true", // misspelt
		"MILAGRO_REQUIRE_PERMIT=true", "MILAGRO_ALLOW_ID=spiffe://x/*", "MILAGRO_CONFIG=/etc/m.yaml",
		"MILAGRO_SERVICE_HOST=10.0.0.1", "MILAGRO_PORT=tcp://10.0.0.1:8443", "MILAGRO_PORT_8443_TCP_ADDR=10.0.0.1",
		"HOME=/root", "MILAGRO_VERIFY_ID=spiffe://y", "MILAGRO_ALLOWID=z",
	}
	got := UnknownEnv(fs, env, func(k string) bool { return k == "MILAGRO_CONFIG" || k == "MILAGRO_VERIFY_ID" })
	if want := []string{"MILAGRO_REQUIRE_PERMITS", "MILAGRO_ALLOWID"}; !slices.Equal(got, want) {
		t.Errorf("UnknownEnv = %v, want %v", got, want)
	}
}

// TestEnvRepeatable: one variable gives a repeatable flag several values,
// separated by white space.
func TestEnvRepeatable(t *testing.T) {
	s, err := parseServer(t, "allow-id: [spiffe://file/*]\n", map[string]string{
		"MILAGRO_ALLOW_ID": "spiffe://a/*  spiffe://b/**\n",
		"MILAGRO_ROUTE":    "a=127.0.0.1:1 b=127.0.0.1:2",
		"MILAGRO_QUIET":    "handshake-errs",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.AllowIDs, []string{"spiffe://a/*", "spiffe://b/**"}) || len(s.Routes) != 2 ||
		s.Routes["b"] != "127.0.0.1:2" || !slices.Equal(s.Quiet, []string{"handshake-errs"}) {
		t.Errorf("allow-id %q, routes %v, quiet %q", s.AllowIDs, s.Routes, s.Quiet)
	}
	c, err := parseClient(t, "", map[string]string{"MILAGRO_ROUTE": "h:1=up:1@spiffe://u h:2=up:2@spiffe://v#db"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Routes) != 2 || c.Routes["h:2"] != (Route{Upstream: "up:2", VerifyID: "spiffe://v", Target: "db"}) {
		t.Errorf("client routes %v", c.Routes)
	}
}

// TestPreferBySource: of two settings that exclude each other, the one
// from the higher source wins (flag > environment > file); from the same
// source both stay, for NewServer/NewClient to refuse.
func TestPreferBySource(t *testing.T) {
	for _, tc := range []struct {
		name     string
		yaml     string
		env      map[string]string
		args     []string
		allowAll bool
		allowIDs int
		http     bool
		pp       bool
	}{
		{"flag over file", "allow-id: [spiffe://x/*]\n", nil, []string{"--allow-all"}, true, 0, false, false},
		{"env over file", "allow-all: true\n", map[string]string{"MILAGRO_ALLOW_ID": "spiffe://x/*"}, nil, false, 1, false, false},
		{"flag over env", "", map[string]string{"MILAGRO_ALLOW_ALL": "true"}, []string{"--allow-id", "spiffe://x/*"}, false, 1, false, false},
		{"same source: both stay", "", nil, []string{"--allow-all", "--allow-id", "spiffe://x/*"}, true, 1, false, false},
		{"proxy protocol over http", "http: true\n", nil, []string{"--proxy-protocol"}, false, 0, false, true},
		{"http (env) over proxy protocol", "proxy-protocol: true\n", map[string]string{"MILAGRO_HTTP": "true"}, nil, false, 0, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseServer(t, tc.yaml, tc.env, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if s.AllowAll != tc.allowAll || len(s.AllowIDs) != tc.allowIDs || s.HTTP != tc.http || s.ProxyProtocol != tc.pp {
				t.Errorf("allow-all %v allow-id %q http %v proxy-protocol %v", s.AllowAll, s.AllowIDs, s.HTTP, s.ProxyProtocol)
			}
		})
	}
	c, err := parseClient(t, "target: up:1\nverify-id: spiffe://x\n", nil, "--transparent")
	if err != nil {
		t.Fatal(err)
	}
	if c.Target != "" || !c.Transparent {
		t.Errorf("client: --transparent over the file's target: target %q transparent %v", c.Target, c.Transparent)
	}
}

func TestRouteFlagErrors(t *testing.T) {
	for _, a := range []string{"=127.0.0.1:1", "name=", "name"} {
		if _, err := parseServer(t, "", nil, "--route", a); err == nil {
			t.Errorf("server --route %q accepted", a)
		}
	}
	for _, a := range []string{"h:1=up:1", "h:1=@id", "=up:1@id", "h:1=up:1@"} {
		if _, err := parseClient(t, "", nil, "--route", a); err == nil {
			t.Errorf("client --route %q accepted", a)
		}
	}
}

func TestNewLogger(t *testing.T) {
	if _, err := NewLogger(io.Discard, "info", "json"); err != nil {
		t.Error(err)
	}
	if _, err := NewLogger(io.Discard, "debug", "console"); err != nil {
		t.Error(err)
	}
	// Console format into a file or pipe: no colour codes, milliseconds.
	var buf strings.Builder
	cl, err := NewLogger(&buf, "info", "console")
	if err != nil {
		t.Fatal(err)
	}
	cl.Info().Msg("hello")
	if line := buf.String(); strings.Contains(line, "\x1b[") || !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} INF hello`).MatchString(line) {
		t.Errorf("console line %q: want HH:MM:SS.mmm INF hello, no colour", line)
	}
	for _, c := range [][2]string{{"", "json"}, {"loud", "json"}, {"info", "xml"}} {
		if _, err := NewLogger(io.Discard, c[0], c[1]); err == nil {
			t.Errorf("NewLogger(%q, %q) accepted", c[0], c[1])
		}
	}
}

// TestConfigRouteAllowPerRoute: --route-allow (or MILAGRO_ROUTE_ALLOW)
// NAME=… replaces the file's patterns for NAME only. Replacing the whole
// map, as it did, silently opened the file's other restricted routes to
// every allowed client.
func TestConfigRouteAllowPerRoute(t *testing.T) {
	yaml := "allow-id: spiffe://p/**\nroutes: {db: 127.0.0.1:2, admin: 127.0.0.1:3}\nroute-allow: {db: [spiffe://p/ns/ops/*], admin: [spiffe://p/ns/ops/*]}\n"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag", nil, []string{"--route-allow", "db=spiffe://p/ns/api/*", "--route-allow", "db=spiffe://p/ns/web/*"}},
		{"env", map[string]string{"MILAGRO_ROUTE_ALLOW": "db=spiffe://p/ns/api/* db=spiffe://p/ns/web/*"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseServer(t, yaml, tc.env, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.RouteAllow["db"]; !slices.Equal(got, []string{"spiffe://p/ns/api/*", "spiffe://p/ns/web/*"}) {
				t.Errorf("db: %q, want the %s's two patterns", got, tc.name)
			}
			if got := s.RouteAllow["admin"]; !slices.Equal(got, []string{"spiffe://p/ns/ops/*"}) {
				t.Errorf("admin: %q, want the file's restriction kept", got)
			}
		})
	}
}
