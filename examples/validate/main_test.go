package validate

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var (
	// repoRoot is the main module's folder, examplesDir its examples/.
	repoRoot, examplesDir string
	// milagroBin is the milagro binary built from repoRoot by TestMain.
	milagroBin string
	// scratch is a temporary folder for the whole test run.
	scratch string
)

// TestMain builds the real milagro binary once, the way the Dockerfile
// does, so that every command line in the examples can be checked against
// the flags it really accepts.
func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	var err error
	if repoRoot, err = filepath.Abs(filepath.Join("..", "..")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	examplesDir = filepath.Join(repoRoot, "examples")
	if scratch, err = os.MkdirTemp("", "milagro-examples-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(scratch)
	milagroBin = filepath.Join(scratch, "milagro")
	if err := goBuild(repoRoot, milagroBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// milagroCmd runs milagroBin with args in dir, output to out, in this
// environment without its MILAGRO_* variables (which would change the
// command's defaults).
func milagroCmd(ctx context.Context, dir string, out io.Writer, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, milagroBin, args...)
	cmd.Dir = dir
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "MILAGRO_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

// goBuild builds ./cmd/milagro in dir with the Dockerfile's settings.
func goBuild(dir, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/milagro")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/milagro in %s: %v\n%s", dir, err, b)
	}
	return nil
}
