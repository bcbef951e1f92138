package validate

import (
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

func parseDockerfile(t *testing.T) []instructions.Stage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	stages, _, err := instructions.Parse(res.AST, nil)
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return stages
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// Build stage: the Go toolchain, a static, trimmed binary.
	if !strings.HasPrefix(build.BaseName, "golang:1.26") {
		t.Errorf("build stage FROM %s: want golang:1.26", build.BaseName)
	}
	var goBuildLine, binary string
	cgoOff := false
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				cgoOff = cgoOff || kv.Key == "CGO_ENABLED" && kv.Value == "0"
			}
		case *instructions.RunCommand:
			line := strings.Join(c.CmdLine, " ")
			if strings.Contains(line, "go build") {
				goBuildLine = line
				cgoOff = cgoOff || strings.Contains(line, "CGO_ENABLED=0 go build")
				if words, err := splitShell(line); err == nil {
					if i := slices.Index(words, "-o"); i >= 0 && i+1 < len(words) {
						binary = words[i+1]
					}
				}
			}
		}
	}
	switch {
	case goBuildLine == "":
		t.Error("the build stage runs no `go build`")
	default:
		for _, want := range []string{"-trimpath", "-s -w", "./cmd/milagro"} {
			if !strings.Contains(goBuildLine, want) {
				t.Errorf("go build should use %s: %s", want, goBuildLine)
			}
		}
	}
	if !cgoOff {
		t.Error("the build stage must set CGO_ENABLED=0 (the final image has no libc)")
	}

	// Final stage: distroless or scratch, the binary only, no shell.
	base := final.BaseName
	if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
		t.Errorf("final stage FROM %s: want gcr.io/distroless/static… or scratch", base)
	}
	var user string
	var entrypoint *instructions.EntrypointCommand
	copied := false
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = c.User
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.RunCommand:
			t.Errorf("the final stage runs %q: it has no shell and should need none", strings.Join(c.CmdLine, " "))
		case *instructions.CopyCommand:
			if c.From == build.Name && slices.Contains(c.SourcePaths, binary) {
				copied = true
				if c.DestPath != "/usr/local/bin/milagro" && c.DestPath != "/usr/local/bin/" {
					t.Errorf("copy the binary to /usr/local/bin (on distroless's PATH), not %s", c.DestPath)
				}
			}
		}
	}
	if !copied {
		t.Errorf("the final stage does not COPY --from=%s the binary %q", build.Name, binary)
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); user == "" || uid == "root" || err == nil && n == 0 {
		t.Errorf("final stage USER %q: want a non-root user (65532)", user)
	} else if err != nil && base == "scratch" {
		t.Errorf("USER %q on scratch: a name needs an /etc/passwd entry; use the numeric uid", user)
	}
	switch {
	case entrypoint == nil:
		t.Error("no ENTRYPOINT in the final stage")
	case entrypoint.PrependShell:
		t.Errorf("ENTRYPOINT %s is in shell form; use the exec form [\"milagro\"] (there is no shell)", strings.Join(entrypoint.CmdLine, " "))
	case len(entrypoint.CmdLine) != 1 || path.Base(entrypoint.CmdLine[0]) != "milagro":
		t.Errorf("ENTRYPOINT %q: want [\"milagro\"]", entrypoint.CmdLine)
	}
}

// TestDockerContext builds milagro from exactly the files that
// .dockerignore lets into the build context, so that an ignore rule cannot
// silently break the image build, and keeps secrets and .git out of it.
func TestDockerContext(t *testing.T) {
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(p string) bool {
		ex, err := pm.MatchesOrParentMatches(p)
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}
	for _, p := range []string{".git", ".git/config", "examples/compose/.env", "dta-1/secret.age", "bench/run.sh", "x/pay.token"} {
		if !excluded(p) {
			t.Errorf(".dockerignore should exclude %s", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/milagro/main.go", "sidecar/config.go", "dta/keydir/dir.go"} {
		if excluded(p) {
			t.Errorf(".dockerignore must not exclude %s", p)
		}
	}

	ctxDir := filepath.Join(scratch, "docker-context")
	n := 0
	err = filepath.WalkDir(repoRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(repoRoot, p)
		if r == "." {
			return nil
		}
		if excluded(filepath.ToSlash(r)) {
			if d.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(ctxDir, r)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n++
		return copyFile(p, dst)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := goBuild(ctxDir, filepath.Join(scratch, "milagro-from-context")); err != nil {
		t.Errorf("the Docker build context (%d files after .dockerignore) does not build: %v", n, err)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
