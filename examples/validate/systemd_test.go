package validate

import (
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// unitFile is a systemd unit: key → values, in order.
type unitFile map[string][]string

func (u unitFile) last(k string) (string, bool) {
	v := u[k]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// parseUnit reads key=value lines, joining lines that end in a backslash.
func parseUnit(text string) unitFile {
	u := unitFile{}
	text = strings.ReplaceAll(text, "\\\n", " ")
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' || l[0] == ';' || l[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok {
			u[strings.TrimSpace(k)] = append(u[strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// TestSystemdUnits checks the milagro command lines of every unit and its
// hardening.
func TestSystemdUnits(t *testing.T) {
	c := milagroCLI(t)
	files := exampleFiles(t, ".service")
	if len(files) < 2 {
		t.Fatalf("want the unit files of examples/reverse-proxy, found %v", files)
	}
	for _, f := range files {
		where := rel(f)
		u := parseUnit(readFile(t, f))
		var state []string
		for _, k := range []string{"StateDirectory", "RuntimeDirectory"} {
			base := map[string]string{"StateDirectory": "/var/lib/", "RuntimeDirectory": "/run/"}[k]
			for _, v := range u[k] {
				for _, d := range strings.Fields(v) {
					state = append(state, base+d)
				}
			}
		}
		milagroLines := 0
		for _, k := range []string{"ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop"} {
			for _, line := range u[k] {
				argv, err := splitShell(strings.TrimLeft(line, "-@:+!|"))
				if err != nil || len(argv) == 0 {
					t.Errorf("%s: %s=%s: %v", where, k, line, err)
					continue
				}
				if !strings.HasPrefix(argv[0], "/") {
					t.Errorf("%s: %s: use an absolute path for %s", where, k, argv[0])
				}
				if path.Base(argv[0]) != "milagro" {
					continue
				}
				milagroLines++
				inv := invocation{where: where + " " + k, argv: argv}
				p := c.mustParse(t, inv)
				if p == nil {
					continue
				}
				checkRuns(t, c, inv)
				if p.cmd == "keys fetch" {
					user, _ := u.last("User")
					checkTokenFolder(t, where+" "+k, p, hostTokens(t, f, p.get("token-file"), user))
				}
				// ProtectSystem=strict: written paths must be in the
				// unit's state or runtime directory.
				for _, fl := range []string{"out", "keys"} {
					if v := p.get(fl); v != "" && !under(v, state) {
						t.Errorf("%s: --%s %s is outside StateDirectory/RuntimeDirectory %v", where, fl, v, state)
					}
				}
				if st := p.get("status"); st != "" {
					if host, _, err := net.SplitHostPort(st); err != nil || net.ParseIP(host) == nil || !net.ParseIP(host).IsLoopback() {
						t.Errorf("%s: --status %s: keep the status port on loopback on a host", where, st)
					}
				}
			}
		}
		if milagroLines == 0 {
			t.Errorf("%s: no milagro command", where)
		}
		want := map[string]string{
			"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
			"ProtectHome": "yes", "PrivateDevices": "yes",
		}
		for k, v := range want {
			if got, _ := u.last(k); got != v {
				t.Errorf("%s: want %s=%s, have %q", where, k, v, got)
			}
		}
		if caps, ok := u.last("CapabilityBoundingSet"); !ok || caps != "" && caps != "CAP_NET_BIND_SERVICE" {
			t.Errorf("%s: want an empty CapabilityBoundingSet= (or only CAP_NET_BIND_SERVICE), have %q", where, caps)
		}
		user, _ := u.last("User")
		dyn, _ := u.last("DynamicUser")
		if dyn != "yes" && (user == "" || user == "root" || user == "0") {
			t.Errorf("%s: run as an unprivileged User= or DynamicUser=yes", where)
		}
		if len(state) == 0 {
			t.Errorf("%s: no StateDirectory= or RuntimeDirectory= for the keys", where)
		}
	}
	verifyUnits(t, files)
}

// hostTokens returns the files that the `install` lines of the README
// next to a unit put at or in the folder tok, and requires them to belong
// to the unit's user.
func hostTokens(t *testing.T, unit, tok, user string) []tokenFile {
	t.Helper()
	readme := filepath.Join(filepath.Dir(unit), "README.md")
	if _, err := os.Stat(readme); err != nil {
		t.Errorf("%s: no README.md next to it that installs the tokens: %v", rel(unit), err)
		return nil
	}
	tok = path.Clean(tok)
	var files []tokenFile
	blocks, _ := markdownCode(readFile(t, readme))
	for _, b := range blocks {
		for _, line := range strings.Split(strings.ReplaceAll(b, "\\\n", " "), "\n") {
			line, _, _ = strings.Cut(line, " #")
			argv, err := splitShell(line)
			if err != nil || len(argv) == 0 {
				continue
			}
			if argv[0] == "sudo" {
				argv = argv[1:]
			}
			if len(argv) == 0 || argv[0] != "install" {
				continue
			}
			ic, err := parseInstall(argv)
			if err != nil {
				t.Errorf("%s: %v", rel(readme), err)
				continue
			}
			for _, d := range ic.dests {
				if ic.dir || d != tok && path.Dir(d) != tok {
					continue
				}
				if ic.owner != user {
					t.Errorf("%s: %s: token %s should belong to the unit's user %s (install -o %s)", rel(readme), line, d, user, user)
				}
				files = append(files, tokenFile{path: d, mode: ic.mode})
			}
		}
	}
	return files
}

func under(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

// verifyUnits runs `systemd-analyze verify` on the units (with the built
// binary in place of /usr/local/bin/milagro) where systemd is installed.
func verifyUnits(t *testing.T, files []string) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit files not verified by systemd")
		return
	}
	dir := filepath.Join(scratch, "units")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--man=no"}
	for _, f := range files {
		text := strings.ReplaceAll(readFile(t, f), "/usr/local/bin/milagro", milagroBin)
		dst := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, dst)
	}
	out, err := exec.Command(sa, args...).CombinedOutput()
	if err != nil || strings.Contains(string(out), dir) {
		t.Errorf("systemd-analyze verify (%v):\n%s", err, out)
	}
}
