package validate

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	composecli "github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
)

// loadCompose loads compose.yaml with compose's own loader (schema,
// interpolation, consistency), with stand-ins for the .env variables.
func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	dir := filepath.Join(examplesDir, "compose")
	env := []string{"DTA1_PASSPHRASE=x", "DTA2_PASSPHRASE=y", "DTA3_PASSPHRASE=z"}
	// A different token per workload and D-TA, and its hash.
	for _, w := range []string{"PAY", "WEB"} {
		for i := 1; i <= 3; i++ {
			tok := fmt.Sprintf("%s_TOKEN_DTA%d", w, i)
			env = append(env, tok+"="+strings.ToLower(tok), tok+"_SHA256="+dta.HashToken(strings.ToLower(tok)))
		}
	}
	opts, err := composecli.NewProjectOptions([]string{filepath.Join(dir, "compose.yaml")},
		composecli.WithWorkingDirectory(dir), composecli.WithEnv(env), composecli.WithProfiles([]string{"setup"}))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return p
}

func composeArgv(s types.ServiceConfig) []string {
	if !isMilagroImage(s.Image) || len(s.Entrypoint) > 0 {
		return nil
	}
	return append([]string{"milagro"}, s.Command...)
}

var composeRun = regexp.MustCompile(`docker compose run (?:--rm )?([a-z][a-z0-9-]*) (.+)`)

func TestCompose(t *testing.T) {
	c := milagroCLI(t)
	p := loadCompose(t)
	where := rel(filepath.Join(examplesDir, "compose", "compose.yaml"))
	cmds := map[string]*parsed{}
	for name, s := range p.Services {
		sw := fmt.Sprintf("%s service %s", where, name)
		// Restricted containers, as in the Kubernetes examples.
		if !s.ReadOnly {
			t.Errorf("%s: read_only: true", sw)
		}
		if !slices.Contains(s.CapDrop, "ALL") {
			t.Errorf("%s: cap_drop: [ALL]", sw)
		}
		if !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: security_opt: [no-new-privileges:true]", sw)
		}
		if s.User == "" || strings.HasPrefix(s.User, "0") || strings.HasPrefix(s.User, "root") {
			t.Errorf("%s: run as a non-root user (user: \"65532:65532\")", sw)
		}
		if m, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
			if _, exists := p.Services[m]; !exists {
				t.Errorf("%s: network_mode %s: no such service", sw, s.NetworkMode)
			}
		}
		if s.HealthCheck != nil && len(s.HealthCheck.Test) > 1 && s.HealthCheck.Test[0] == "CMD" && path0(s.HealthCheck.Test[1]) == "milagro" {
			c.mustParse(t, invocation{where: sw + " healthcheck", argv: s.HealthCheck.Test[1:]})
		}
		argv := composeArgv(s)
		if argv == nil {
			continue
		}
		inv := invocation{where: sw, argv: argv}
		pc := c.mustParse(t, inv)
		if pc == nil {
			continue
		}
		cmds[name] = pc
		checkRuns(t, c, inv)
		if pc.cmd == "keys fetch" {
			var files []tokenFile
			for _, sec := range s.Secrets {
				target := secretTarget(sec)
				if target != path.Clean(pc.get("token-file")) && path.Dir(target) != path.Clean(pc.get("token-file")) {
					continue
				}
				mode := fs.FileMode(0o444) // compose's default
				if sec.Mode != nil {
					mode = fs.FileMode(*sec.Mode)
				}
				if sec.UID != "65532" || mode&0o077 != 0 {
					t.Errorf("%s: token %s must be a secret with uid 65532 and mode 0400 (milagro refuses others)", sw, target)
				}
				files = append(files, tokenFile{path: target, mode: mode})
			}
			checkTokenFolder(t, sw, pc, files)
		}
		if pc.cmd == "keys fetch" && (s.HealthCheck == nil || !slices.Equal(s.HealthCheck.Test, []string{"CMD", "milagro", "keys", "show", pc.get("out")})) {
			t.Errorf("%s: want healthcheck [CMD, milagro, keys, show, %s], so that the sidecar waits for keys", sw, pc.get("out"))
		}
		if pc.cmd == "server" || pc.cmd == "client" {
			if len(s.DependsOn) == 0 {
				t.Errorf("%s: depends_on its key fetcher (service_healthy)", sw)
			}
			for dep, d := range s.DependsOn {
				if strings.HasPrefix(dep, "keys-") && d.Condition != types.ServiceConditionHealthy {
					t.Errorf("%s: depends_on %s should wait for service_healthy", sw, dep)
				}
			}
		}
	}

	// Fetchers reach the D-TAs over loopback: same network namespace, and
	// the URLs of the setup service are the D-TAs' listeners.
	listens := map[string]string{} // 127.0.0.1:port → network_mode
	var dtaNet string
	for name, pc := range cmds {
		if pc.cmd == "dta serve" {
			listens[pc.get("listen")] = p.Services[name].NetworkMode
			dtaNet = p.Services[name].NetworkMode
		}
	}
	if len(listens) != 3 {
		t.Errorf("want three D-TAs, found %v", listens)
	}
	for name, pc := range cmds {
		switch pc.cmd {
		case "domain build":
			for _, a := range pc.args {
				_, url, _ := strings.Cut(a, "=")
				if _, ok := listens[strings.TrimPrefix(url, "http://")]; !ok {
					t.Errorf("service %s: %s is not a D-TA's --listen address %v", name, url, listens)
				}
			}
		case "keys fetch":
			if p.Services[name].NetworkMode != dtaNet {
				t.Errorf("service %s: must share the D-TAs' network namespace (%s) to reach them on loopback", name, dtaNet)
			}
		case "client":
			host, port, _ := net.SplitHostPort(pc.get("target"))
			srv := ""
			for n, s := range cmds {
				if s.cmd == "server" && p.Services[n].NetworkMode == "service:"+host {
					srv = n
					if _, lp, _ := net.SplitHostPort(s.get("listen")); lp != port {
						t.Errorf("client %s targets port %s, server %s listens on %s", name, port, n, s.get("listen"))
					}
				}
			}
			if srv == "" {
				t.Errorf("client %s: --target %s: no server sidecar in the network namespace of %s", name, pc.get("target"), host)
			}
		}
	}

	// The policy each D-TA gets, as it parses it, grants every fetcher, under
	// the hash of the token that fetcher sends to this D-TA (the file named
	// by the D-TA's id, which is the service's name) and of no other.
	for dname, dc := range cmds {
		if dc.cmd != "dta serve" {
			continue
		}
		var pol *dta.Policy
		for _, cf := range p.Services[dname].Configs {
			if cf.Target == dc.get("policy") {
				var err error
				if pol, err = dta.ParsePolicy([]byte(p.Configs[cf.Source].Content)); err != nil {
					t.Errorf("service %s: config %s: %v", dname, cf.Source, err)
				}
			}
		}
		if pol == nil {
			t.Errorf("service %s: no config at --policy %s", dname, dc.get("policy"))
			continue
		}
		for name, pc := range cmds {
			if pc.cmd != "keys fetch" {
				continue
			}
			hash := ""
			for _, sec := range p.Services[name].Secrets {
				if secretTarget(sec) == path.Join(pc.get("token-file"), dname) {
					hash = dta.HashToken(p.Environment[p.Secrets[sec.Source].Environment])
				}
			}
			var kinds []keydir.Kind
			for _, k := range strings.Split(pc.get("kinds"), ",") {
				kinds = append(kinds, keydir.Kind(k))
			}
			var grants []string // requesters that grant it
			ok := false
			for _, r := range pol.Requesters {
				if r.Authorize(pc.get("identity"), kinds) == nil {
					grants = append(grants, r.Name)
					ok = ok || r.TokenSHA256 == hash
				}
			}
			if !ok {
				t.Errorf("service %s: the policy of D-TA %s grants %s for %s to no requester with the hash of the token %s sends it (requesters granting it: %v)", dname, dname, pc.get("kinds"), pc.get("identity"), name, grants)
			}
		}
	}
	for name, v := range p.Volumes {
		if strings.HasPrefix(name, "keys-") && !strings.Contains(v.DriverOpts["o"], "uid=65532") {
			t.Errorf("volume %s: a tmpfs owned by 65532 (driver_opts o: uid=65532,...)", name)
		}
	}

	// `docker compose run SERVICE ARGS` in the README runs milagro ARGS.
	readme := filepath.Join(examplesDir, "compose", "README.md")
	n := 0
	for _, m := range composeRun.FindAllStringSubmatch(readFile(t, readme), -1) {
		s, ok := p.Services[m[1]]
		if !ok {
			t.Errorf("%s: docker compose run %s: no such service", rel(readme), m[1])
			continue
		}
		if !isMilagroImage(s.Image) || len(strings.Fields(m[2])) == 0 {
			continue
		}
		words, err := splitShell(m[2])
		if err != nil {
			t.Error(err)
			continue
		}
		if len(words) > 0 && words[0] != "" {
			pc := c.mustParse(t, invocation{where: rel(readme), argv: append([]string{"milagro"}, words...)})
			n++
			// The policies and the token files are named by the D-TA's id.
			if pc != nil && pc.cmd == "dta init" && pc.get("id") != m[1] {
				t.Errorf("%s: docker compose run %s dta init --id %s: name the D-TA as its service", rel(readme), m[1], pc.get("id"))
			}
		}
	}
	if n < 3 {
		t.Errorf("%s: expected the dta init steps as `docker compose run` lines, found %d", rel(readme), n)
	}
}

func path0(s string) string { return filepath.Base(s) }

// secretTarget is where a service's secret appears in its container.
func secretTarget(sec types.ServiceSecretConfig) string {
	switch {
	case sec.Target == "":
		return "/run/secrets/" + sec.Source
	case !strings.HasPrefix(sec.Target, "/"):
		return path.Clean("/run/secrets/" + sec.Target)
	}
	return path.Clean(sec.Target)
}
