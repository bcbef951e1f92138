package validate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// cli is what the real binary says about itself: its commands and, for
// each, its flags and whether they take a value.
type cli struct {
	commands map[string]bool
	flags    map[string]map[string]bool // command → flag → takes a value
	all      map[string]bool            // every flag of every command
}

var (
	cliOnce  sync.Once
	cliModel *cli
	cliErr   error
)

// milagroCLI reads the commands from `milagro -h` and the flags of each
// from `milagro <command> -h`.
func milagroCLI(t *testing.T) *cli {
	t.Helper()
	cliOnce.Do(func() { cliModel, cliErr = readCLI() })
	if cliErr != nil {
		t.Fatal(cliErr)
	}
	return cliModel
}

var (
	commandLine = regexp.MustCompile(`^  ([a-z]+(?: [a-z]+)?) {2,}\S`)
	flagLine    = regexp.MustCompile(`^  -([A-Za-z0-9][\w.-]*)( \S+)?`)
)

func readCLI() (*cli, error) {
	out, err := exec.Command(milagroBin, "-h").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("milagro -h: %v\n%s", err, out)
	}
	c := &cli{commands: map[string]bool{}, flags: map[string]map[string]bool{}, all: map[string]bool{}}
	for _, l := range strings.Split(string(out), "\n") {
		if m := commandLine.FindStringSubmatch(l); m != nil {
			c.commands[m[1]] = true
		}
	}
	for _, want := range []string{"server", "client", "keys fetch", "dta serve", "dta init", "domain build"} {
		if !c.commands[want] {
			return nil, fmt.Errorf("`milagro -h` does not list %q; its output:\n%s", want, out)
		}
	}
	for name := range c.commands {
		args := append(strings.Fields(name), "-h")
		out, err := exec.Command(milagroBin, args...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("milagro %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		f := map[string]bool{}
		for _, l := range strings.Split(string(out), "\n") {
			if m := flagLine.FindStringSubmatch(l); m != nil {
				f[m[1]] = m[2] != ""
				c.all[m[1]] = true
			}
		}
		c.flags[name] = f
	}
	if len(c.flags["server"]) < 5 || !c.flags["server"]["listen"] || c.flags["server"]["http"] {
		return nil, fmt.Errorf("could not read the flags of `milagro server -h`: %v", c.flags["server"])
	}
	return c, nil
}

// invocation is a milagro command line found in an example.
type invocation struct {
	where string   // file and place, for messages
	argv  []string // argv[0] is the program as written (…/milagro)
}

func (inv invocation) String() string { return inv.where + ": " + strings.Join(inv.argv, " ") }

// parsed is a command line split as Go's flag package splits it.
type parsed struct {
	cmd   string
	flags map[string][]string
	args  []string
}

func (p *parsed) has(name string) bool { _, ok := p.flags[name]; return ok }

// get returns the last value of a flag ("" if absent).
func (p *parsed) get(name string) string {
	v := p.flags[name]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// command finds the milagro command at the start of args (two words first).
func (c *cli) command(args []string) (string, int) {
	for _, n := range []int{2, 1} {
		if len(args) >= n && c.commands[strings.Join(args[:n], " ")] {
			return strings.Join(args[:n], " "), n
		}
	}
	return "", 0
}

// parse checks argv (after the program name) against the real flags.
func (c *cli) parse(argv []string) (*parsed, error) {
	if len(argv) == 0 || path.Base(argv[0]) != "milagro" {
		return nil, fmt.Errorf("not a milagro command line: %q", argv)
	}
	name, n := c.command(argv[1:])
	if name == "" {
		return nil, fmt.Errorf("unknown milagro command in %q", strings.Join(argv, " "))
	}
	p := &parsed{cmd: name, flags: map[string][]string{}}
	rest := argv[1+n:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if len(a) < 2 || a[0] != '-' || len(p.args) > 0 {
			if strings.HasPrefix(a, "-") && len(a) > 1 {
				return nil, fmt.Errorf("milagro %s: flag %s comes after the argument %q: Go's flag package stops at the first argument and would not parse it", name, a, p.args[0])
			}
			p.args = append(p.args, a)
			continue
		}
		if a == "--" {
			p.args = append(p.args, rest[i+1:]...)
			break
		}
		f := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		f, val, inline := strings.Cut(f, "=")
		if f == "h" || f == "help" {
			return nil, fmt.Errorf("milagro %s: -h in an example", name)
		}
		takes, ok := c.flags[name][f]
		if !ok {
			return nil, fmt.Errorf("milagro %s has no flag --%s (see `milagro %s -h`)", name, f, name)
		}
		if takes && !inline {
			if i+1 == len(rest) {
				return nil, fmt.Errorf("milagro %s: --%s needs a value", name, f)
			}
			i++
			val = rest[i]
		}
		if !takes && inline && val != "true" && val != "false" {
			return nil, fmt.Errorf("milagro %s: --%s is a boolean flag, not --%s=%s", name, f, f, val)
		}
		p.flags[f] = append(p.flags[f], val)
	}
	return p, nil
}

// mustParse parses inv or reports why not.
func (c *cli) mustParse(t *testing.T, inv invocation) *parsed {
	t.Helper()
	p, err := c.parse(inv.argv)
	if err != nil {
		t.Errorf("%s: %v", inv.where, err)
		return nil
	}
	return p
}

// runnable are the commands that, given files that do not exist, get past
// all flag and configuration checks and then fail reading those files
// (exit status 1) before they would open a socket or write anything. A
// usage or configuration error is exit status 2.
var runnable = map[string]bool{
	"server": true, "client": true, "keys fetch": true, "keys show": true, "keys check": true,
	"dta serve": true, "dta info": true, "domain build": true,
}

// checkRuns runs inv with every absolute path moved under a folder that
// does not exist (and --config pointed at the example file of that name),
// and requires exit status 1: the configuration was accepted and only the
// missing files stopped it.
func checkRuns(t *testing.T, c *cli, inv invocation) {
	t.Helper()
	p, err := c.parse(inv.argv)
	if err != nil || !runnable[p.cmd] {
		return
	}
	absent := filepath.Join(scratch, "absent")
	move := func(s string) string {
		if strings.HasPrefix(s, "/") && !strings.HasPrefix(s, "//") {
			return filepath.Join(absent, s)
		}
		return s
	}
	args := slices.Clone(inv.argv[1:])
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--config" || a == "-config":
			if i+1 < len(args) {
				args[i+1] = exampleFile(t, args[i+1])
				i++
			}
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			k, v, _ := strings.Cut(a, "=")
			args[i] = k + "=" + exampleFile(t, v)
		case strings.HasPrefix(a, "-") && strings.Contains(a, "="):
			k, v, _ := strings.Cut(a, "=")
			args[i] = k + "=" + move(v)
		case strings.Contains(a, "=") && strings.HasPrefix(a, "/"):
			k, v, _ := strings.Cut(a, "=") // domain build DIR=URL
			args[i] = move(k) + "=" + v
		default:
			args[i] = move(a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := milagroCmd(ctx, scratch, &stderr, args...)
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Errorf("%s: still running after 20 s with missing files; it should have failed", inv)
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		// Configuration accepted; stopped by the missing files.
	case err == nil:
		t.Errorf("%s: exited 0 with missing files:\n%s", inv, stderr.Bytes())
	default:
		t.Errorf("%s: milagro rejects this command line (%v):\n%s", inv, err, stderr.Bytes())
	}
}

// exampleFile maps a config path of an example (/etc/milagro/x.yaml) to
// the file of that name in examples/.
func exampleFile(t *testing.T, p string) string {
	t.Helper()
	var found []string
	_ = filepath.WalkDir(examplesDir, func(q string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == filepath.Base(p) {
			found = append(found, q)
		}
		return nil
	})
	if len(found) != 1 {
		t.Errorf("config file %s: want exactly one file of that name in examples/, found %v", p, found)
		return p
	}
	return found[0]
}

// splitShell splits a command line as a POSIX shell (or systemd) would for
// plain words, single and double quotes and backslashes; expansions are
// kept literally.
func splitShell(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case ch == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				cur.WriteByte(s[j])
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated \" in %q", s)
			}
			i = j
			inWord = true
		case ch == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

var (
	milagroWord = regexp.MustCompile(`(^|[\s/"'(=])milagro\s`)
	// Shell operators and Markdown that end a command.
	commandEnd = regexp.MustCompile(`\s*(\||&&|;|>|<|\s#|\)|$)`)
	dashFlag   = regexp.MustCompile(`(^|[\s(/"'\x60\[])--([a-z][a-z0-9-]*)`)
)

// codeInvocations finds milagro command lines in a piece of shell code
// (a Markdown code block or span, a comment in backquotes): every
// "milagro COMMAND ..." up to the end of the shell command. A line that
// starts with milagro must name a real command; elsewhere "milagro" may be
// an ordinary word (a user name, a path).
func codeInvocations(t *testing.T, c *cli, where, code string) []invocation {
	t.Helper()
	code = strings.ReplaceAll(code, "\\\n", " ")
	var invs []invocation
	for n, line := range strings.Split(code, "\n") {
		for _, loc := range milagroWord.FindAllStringIndex(line, -1) {
			start := loc[0]
			if start > 0 || line[0] != 'm' {
				start++
			}
			rest := line[start:]
			if e := commandEnd.FindStringIndex(rest[len("milagro"):]); e != nil {
				rest = rest[:len("milagro")+e[0]]
			}
			words, err := splitShell(rest)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if name, _ := c.command(words[1:]); name == "" {
				if strings.HasPrefix(strings.TrimSpace(line), "milagro ") {
					t.Errorf("%s: %q: unknown milagro command", where, strings.TrimSpace(line))
				}
				continue
			}
			invs = append(invs, invocation{where: fmt.Sprintf("%s (line %d of the snippet)", where, n+1), argv: words})
		}
	}
	return invs
}

// checkDashFlags requires every --word in text to be a flag of some milagro
// command: for comments and prose, where the command is not spelled out.
func checkDashFlags(t *testing.T, c *cli, where, text string) {
	t.Helper()
	for _, m := range dashFlag.FindAllStringSubmatch(text, -1) {
		if !c.all[m[2]] {
			t.Errorf("%s: --%s is not a flag of any milagro command", where, m[2])
		}
	}
}

var (
	fenced     = regexp.MustCompile("(?ms)^\\s*```[a-z]*\\n(.*?)^\\s*```")
	inlineCode = regexp.MustCompile("`([^`]+)`")
)

// markdownCode returns the fenced blocks and the inline code spans of a
// Markdown file (spans may continue on the next line).
func markdownCode(text string) (blocks, spans []string) {
	for _, m := range fenced.FindAllStringSubmatch(text, -1) {
		blocks = append(blocks, m[1])
	}
	rest := fenced.ReplaceAllString(text, "")
	for _, m := range inlineCode.FindAllStringSubmatch(rest, -1) {
		spans = append(spans, strings.ReplaceAll(m[1], "\n", " "))
	}
	return blocks, spans
}

// commentText joins the comments (# ...) of a YAML or unit file into
// paragraphs, so that a command or a backquoted span may continue on the
// next comment line.
func commentText(text string) []string {
	var paras []string
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			paras = append(paras, strings.Join(cur, " "))
			cur = nil
		}
	}
	for _, l := range strings.Split(text, "\n") {
		s := strings.TrimSpace(l)
		if i := strings.Index(l, " #"); !strings.HasPrefix(s, "#") && i >= 0 && !strings.Contains(l[:i], "\"") {
			s = strings.TrimSpace(l[i+1:]) // trailing comment
		}
		if !strings.HasPrefix(s, "#") {
			flush()
			continue
		}
		s = strings.TrimSpace(strings.TrimLeft(s, "#"))
		if s == "" {
			flush()
			continue
		}
		cur = append(cur, s)
	}
	flush()
	return paras
}

// exampleFiles lists the files of examples/ (not this module) with one of
// the given suffixes.
func exampleFiles(t *testing.T, suffixes ...string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(examplesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p == filepath.Join(examplesDir, "validate") {
			return filepath.SkipDir
		}
		for _, s := range suffixes {
			if !d.IsDir() && strings.HasSuffix(p, s) {
				files = append(files, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	return files
}

func rel(p string) string {
	if r, err := filepath.Rel(repoRoot, p); err == nil {
		return r
	}
	return p
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDocumentedCommands checks every milagro command line in the READMEs
// (code blocks and spans) and in the comments of YAML and unit files, and
// every --flag mentioned there.
func TestDocumentedCommands(t *testing.T) {
	c := milagroCLI(t)
	count := 0
	for _, f := range exampleFiles(t, ".md") {
		blocks, spans := markdownCode(readFile(t, f))
		for _, b := range blocks {
			for _, inv := range codeInvocations(t, c, rel(f), b) {
				checkDocumentedFetch(t, inv, c.mustParse(t, inv))
				count++
			}
		}
		for _, s := range spans {
			for _, inv := range codeInvocations(t, c, rel(f), s) {
				checkDocumentedFetch(t, inv, c.mustParse(t, inv))
				count++
			}
			if strings.HasPrefix(s, "-") {
				checkDashFlags(t, c, rel(f), s)
			}
		}
	}
	for _, f := range exampleFiles(t, ".yaml", ".yml", ".service") {
		for _, para := range commentText(readFile(t, f)) {
			// Backquoted spans may be other programs' commands
			// (`docker compose run --rm setup`); milagro's are checked
			// below as command lines.
			checkDashFlags(t, c, rel(f)+" (comment)", inlineCode.ReplaceAllString(para, ""))
			for _, m := range inlineCode.FindAllStringSubmatch(para, -1) {
				for _, inv := range codeInvocations(t, c, rel(f)+" (comment)", m[1]) {
					checkDocumentedFetch(t, inv, c.mustParse(t, inv))
					count++
				}
			}
		}
	}
	if count < 10 {
		t.Errorf("found only %d documented milagro command lines; is the scanner broken?", count)
	}
	t.Logf("%d documented milagro command lines checked", count)
}

// checkDocumentedFetch: a `milagro keys fetch` in prose or a comment has no
// file layout to check (see checkTokenFolder), so if it gives --token-file
// (rather than only naming the command) it must spell it as a folder,
// DIR/: the per-D-TA token folder.
func checkDocumentedFetch(t *testing.T, inv invocation, p *parsed) {
	t.Helper()
	if p == nil || p.cmd != "keys fetch" || !p.has("token-file") {
		return
	}
	if tok := p.get("token-file"); !strings.HasSuffix(tok, "/") {
		t.Errorf("%s: keys fetch --token-file %q: give it a folder with one token per D-TA, named by the D-TA's id, written as DIR/ (one token file for all D-TAs would let any D-TA operator replay it to the others)", inv.where, tok)
	}
}
