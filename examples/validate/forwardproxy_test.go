package validate

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/milagro-sc/milagro/dta/pattern"
	"github.com/milagro-sc/milagro/sidecar"
)

// TestForwardProxyConfig loads the forward proxy's YAML exactly as
// `milagro client --config` does (unknown keys are errors), checks its
// routes, and runs the real binary with it.
func TestForwardProxyConfig(t *testing.T) {
	c := milagroCLI(t)
	file := filepath.Join(examplesDir, "forward-proxy", "forward-proxy.yaml")
	cfg := sidecar.DefaultClientConfig()
	if err := sidecar.LoadYAML(file, cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.ForwardProxy == "" || len(cfg.Routes) < 3 {
		t.Fatalf("want forward-proxy and several routes, got %q and %d routes", cfg.ForwardProxy, len(cfg.Routes))
	}
	if host, _, err := net.SplitHostPort(cfg.ForwardProxy); err != nil || !net.ParseIP(host).IsLoopback() {
		t.Errorf("forward-proxy %s: keep it on loopback", cfg.ForwardProxy)
	}
	if cfg.Keys == "" {
		t.Error("no keys:")
	}
	for dest, r := range cfg.Routes {
		if _, _, err := net.SplitHostPort(dest); err != nil {
			t.Errorf("route %q: want HOST:PORT: %v", dest, err)
		}
		if _, _, err := net.SplitHostPort(r.Upstream); err != nil {
			t.Errorf("route %s: upstream %q: want HOST:PORT: %v", dest, r.Upstream, err)
		}
		if err := pattern.Validate(r.VerifyID); err != nil {
			t.Errorf("route %s: verify-id: %v", dest, err)
		}
		if strings.ContainsAny(r.Target, " /") {
			t.Errorf("route %s: target %q should be a route name of the upstream server", dest, r.Target)
		}
	}
	// The binary itself: the YAML is merged before the flags, so a bad key
	// or value is a usage error (exit 2), a good file gets as far as the
	// (missing) key directory (exit 1).
	checkRuns(t, c, invocation{where: rel(file), argv: []string{"milagro", "client", "--config", "/etc/milagro/forward-proxy.yaml", "--keys", cfg.Keys}})
}
