package authfile_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/authfile"
)

const (
	authOK   = "235 2.7.0 Authentication successful"
	authBad  = "535 5.7.8 Authentication credentials invalid"
	authSoft = "454 4.7.0 Temporary authentication failure"
)

func conn() *connection.Connection {
	return connection.New("submission", "mx.example.test", netip.MustParseAddrPort("127.0.0.1:587"), netip.MustParseAddrPort("192.0.2.7:40000"))
}

// build constructs an authfile instance reading path.
func build(t *testing.T, path string) *authfile.Plugin {
	t.Helper()
	return hookstest.Build(t, "authfile", `path = "`+path+`"`).(*authfile.Plugin)
}

// chain puts instances into a chain, in order.
func chain(t *testing.T, in ...hooks.Instance) *hooks.Chain {
	t.Helper()
	ch, err := hooks.NewChain(in, hooks.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// reply runs the auth hook through ch and returns the wire reply.
func reply(ch *hooks.Chain, user, password string) string {
	d := ch.Auth(context.Background(), conn(), "PLAIN", user, password)
	return hooks.ReplyFor(hooks.HookAuth, d.Result).String()
}

// writeFile writes a password file into a fresh temporary folder.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestVectors checks hashes made by Dovecot (libsodium argon2id, $2y$
// bcrypt) and libxcrypt ($2a$, $2b$), as an operator may paste them.
func TestVectors(t *testing.T) {
	p := build(t, "testdata/passwd")
	ch := chain(t, hookstest.Plugin("authfile", p))
	for _, tt := range []struct {
		user, password string
		code           hooks.Code
		reply          string
	}{
		{"alice", "s3cret", hooks.OK, authOK},
		{"alice", "S3cret", hooks.Deny, authBad},
		{"bob", "hunter2", hooks.OK, authOK},
		{"bob", "hunter3", hooks.Deny, authBad},
		{"bob", "", hooks.Deny, authBad},
		{"carol", "correct horse", hooks.OK, authOK},
		{"carol", "correct horse battery", hooks.Deny, authBad},
		{"dave@example.test", "battery staple", hooks.OK, authOK},
		{"dave@example.test", "s3cret", hooks.Deny, authBad},
		// User names match exactly.
		{"Alice", "s3cret", hooks.Declined, authBad},
		{"dave@EXAMPLE.test", "battery staple", hooks.Declined, authBad},
		{"dave", "battery staple", hooks.Declined, authBad},
		{"mallory", "s3cret", hooks.Declined, authBad},
		{"", "", hooks.Declined, authBad},
	} {
		r := p.Auth(context.Background(), conn(), "PLAIN", tt.user, tt.password)
		if r.Code != tt.code || r.Err != nil || r.Msg != "" {
			t.Errorf("Auth(%q, %q) = %+v; want %v and no error or text", tt.user, tt.password, r, tt.code)
		}
		if got := reply(ch, tt.user, tt.password); got != tt.reply {
			t.Errorf("chain: Auth(%q, %q) replies %q; want %q", tt.user, tt.password, got, tt.reply)
		}
	}
}

// TestChainOrder: an unknown user declines, so the next backend decides;
// a wrong password for a known user stops the chain.
func TestChainOrder(t *testing.T) {
	first := build(t, writeFile(t, "alice:"+bc(t, "one")+"\n"))
	second := build(t, writeFile(t, "alice:"+bc(t, "two")+"\nbob:"+bc(t, "three")+"\n"))
	ch := chain(t, hookstest.Plugin("first", first), hookstest.Plugin("second", second))
	for _, tt := range []struct{ user, password, plugin, reply string }{
		{"alice", "one", "first", authOK},
		{"alice", "two", "first", authBad}, // denied by first: second is not asked
		{"bob", "three", "second", authOK},
		{"bob", "one", "second", authBad},
		{"carol", "one", "", authBad},
	} {
		d := ch.Auth(context.Background(), conn(), "LOGIN", tt.user, tt.password)
		if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != tt.reply || d.Plugin != tt.plugin {
			t.Errorf("Auth(%q, %q): %q by %q; want %q by %q", tt.user, tt.password, got, d.Plugin, tt.reply, tt.plugin)
		}
	}
}

// hash is HashPassword that fails the test on an error.
func hash(t *testing.T, password string) string {
	t.Helper()
	h, err := authfile.HashPassword(password)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// bc returns a cheap bcrypt hash: tests that are not about argon2id use it
// to stay fast.
func bc(t *testing.T, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestHashPassword(t *testing.T) {
	format := regexp.MustCompile(`^\$argon2id\$v=19\$m=65536,t=3,p=4\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
	h1, h2 := hash(t, "s3cret"), hash(t, "s3cret")
	for _, h := range []string{h1, h2} {
		if !format.MatchString(h) {
			t.Errorf("HashPassword = %q; want %s", h, format)
		}
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
	if _, err := authfile.HashPassword(""); err == nil {
		t.Error("HashPassword(\"\") = nil error; want a refusal")
	}
	p := build(t, writeFile(t, "alice:"+h1+"\n"))
	if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret"); r.Code != hooks.OK {
		t.Errorf("our own hash: %+v; want OK", r)
	}

	// Dovecot's ARGON2ID scheme reads what we write.
	doveadm, err := exec.LookPath("doveadm")
	if err != nil {
		t.Skip("doveadm not installed (Debian package dovecot-core): not checking the hash with Dovecot")
	}
	for _, tt := range []struct {
		password string
		ok       bool
	}{{"s3cret", true}, {"s3cret!", false}} {
		out, err := exec.Command(doveadm, "pw", "-t", "{ARGON2ID}"+h1, "-p", tt.password).CombinedOutput()
		if (err == nil) != tt.ok {
			t.Errorf("doveadm pw -t with password %q: %v, %s; want success %v", tt.password, err, out, tt.ok)
		}
	}
}

func TestBadFiles(t *testing.T) {
	good := bc(t, "pw")
	for _, tt := range []struct{ name, content, want string }{
		{"unknown scheme", "# c\nalice:" + good + "\nbob:$argon2i$v=19$m=32768,t=4,p=1$50XsKcxA2dJtXf40NmS3gw$hCpVn/GY+DCvgcRmEyBTULCUrGtqD8L6gcAGVWDD2cI\n", `passwd:3: user "bob": unknown password scheme "$argon2i$"`},
		{"sha512-crypt", "carol:$6$salt$hash\n", `passwd:1: user "carol": unknown password scheme "$6$"`},
		{"dovecot prefix", "carol:{ARGON2ID}" + good + "\n", `passwd:1: user "carol": unknown password scheme "{ARGON2ID}"`},
		{"plain text", "\n\ncarol:hunter2\n", `passwd:3: user "carol": not a hash (a plain-text password?)`},
		{"empty hash", "carol:\n", `passwd:1: user "carol": not a hash`},
		{"no colon", "carol\n", `passwd:1: want user:hash`},
		{"empty user", ":" + good + "\n", `passwd:1: empty user name`},
		{"duplicate", "alice:" + good + "\n#\nalice:" + good + "\n", `passwd:3: user "alice" again (first on line 1)`},
		{"short bcrypt", "bob:$2b$05$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy\n", `passwd:1: user "bob": malformed bcrypt hash`},
		{"bcrypt cost", "bob:$2b$99$abcdefghijklmnopqrstuuHNbAKRhpaujgo33bRWs.NLUTJO3lOy2\n", `passwd:1: user "bob": malformed bcrypt hash`},
		{"argon version", "a:$argon2id$v=16$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 43) + "\n", `version "v=16"`},
		{"argon no version", "a:$argon2id$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 43) + "\n", `malformed argon2id hash`},
		{"argon params", "a:$argon2id$v=19$m=65536,t=3$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 43) + "\n", `want the three parameters`},
		{"argon zero", "a:$argon2id$v=19$m=65536,t=0,p=4$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 43) + "\n", `t and p must be at least 1`},
		{"argon memory", "a:$argon2id$v=19$m=16,t=1,p=4$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 43) + "\n", `want at least 8 KiB per lane`},
		{"argon padded", "a:$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$" + strings.Repeat("A", 42) + "=\n", `key: want at least 16 bytes in unpadded base64`},
		{"argon salt", "a:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$" + strings.Repeat("A", 43) + "\n", `salt: want at least 8 bytes`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := hookstest.ExpectBuildError(t, "authfile", `path = "`+writeFile(t, tt.content)+`"`, tt.want)
			if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "HNbAKRhpaujgo33bRWs")) {
				t.Errorf("error %q shows the password or hash", err)
			}
		})
	}
	for _, tt := range []struct{ settings, want string }{
		{``, `path: required`},
		{`path = "testdata/passwd/below"`, `path: open testdata/passwd/below: not a directory`},
		{`path = "testdata"`, `testdata: not a regular file`},
		{`path = "testdata/passwd"` + "\nfile = \"x\"", `unknown key "file"`},
	} {
		hookstest.ExpectBuildError(t, "authfile", tt.settings, tt.want)
	}
}

// logBuffer makes slog.Default write into a buffer for the test.
func logBuffer(t *testing.T) *hookstest.LogBuffer {
	var log hookstest.LogBuffer
	old := slog.Default()
	slog.SetDefault(log.Logger())
	t.Cleanup(func() { slog.SetDefault(old) })
	return &log
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// touch gives path a modification time no earlier read of it had.
func touch(t *testing.T, path string, mtime time.Time) {
	t.Helper()
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestReload(t *testing.T) {
	logs := logBuffer(t)
	path := writeFile(t, "alice:"+bc(t, "old")+"\n")
	p := build(t, path)
	clk := &clock{t: time.Now()}
	p.SetClock(clk.now)
	auth := func(user, password string) hooks.Code {
		return p.Auth(context.Background(), conn(), "PLAIN", user, password).Code
	}
	if got := auth("alice", "old"); got != hooks.OK {
		t.Fatalf("before the change: %v; want OK", got)
	}

	// A new password and a new user, in place (same inode).
	if err := os.WriteFile(path, []byte("alice:"+bc(t, "new")+"\nbob:"+bc(t, "pw")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mtime := time.Now().Add(time.Hour)
	touch(t, path, mtime)
	clk.add(recheck / 2)
	if got := auth("alice", "old"); got != hooks.OK {
		t.Errorf("less than a second later: %v; want OK (the file is not looked at yet)", got)
	}
	clk.add(recheck)
	if got := auth("alice", "new"); got != hooks.OK {
		t.Errorf("after the change: new password %v; want OK", got)
	}
	if got := auth("alice", "old"); got != hooks.Deny {
		t.Errorf("after the change: old password %v; want Deny", got)
	}
	if got := auth("bob", "pw"); got != hooks.OK {
		t.Errorf("after the change: new user %v; want OK", got)
	}

	// A broken file keeps the old content and is logged, once.
	if err := os.WriteFile(path+".new", []byte("alice:hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	touch(t, path, mtime.Add(time.Hour))
	for range 3 {
		clk.add(recheck)
		if got := auth("alice", "new"); got != hooks.OK {
			t.Errorf("after a broken change: %v; want OK with the old content", got)
		}
		if got := auth("alice", "hunter2"); got != hooks.Deny {
			t.Errorf("after a broken change: the broken line's text as password: %v; want Deny", got)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "does not parse"); n != 1 {
		t.Errorf("log has %d 'does not parse' lines; want 1:\n%s", n, out)
	}
	if !strings.Contains(out, path+`:1: user \"alice\": not a hash`) {
		t.Errorf("log does not name file:line:\n%s", out)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("log shows a password:\n%s", out)
	}

	// A removed file keeps the old content too.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	clk.add(recheck)
	if got := auth("bob", "pw"); got != hooks.OK {
		t.Errorf("file removed: %v; want OK with the old content", got)
	}

	// A fixed file is read.
	if err := os.WriteFile(path, []byte("carol:"+bc(t, "c")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.add(recheck)
	if got := auth("carol", "c"); got != hooks.OK {
		t.Errorf("fixed file: %v; want OK", got)
	}
	if got := auth("alice", "new"); got != hooks.Declined {
		t.Errorf("fixed file: a user it no longer has: %v; want Declined", got)
	}
}

const recheck = time.Second

func TestSetPassword(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "passwd")
	if err := authfile.SetPassword(path, "alice@example.test", "s3cret"); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("new file mode %v; want 0600", info.Mode().Perm())
	}

	// Other lines, comments and blank lines stay as they were.
	bcryptHash := bc(t, "b")
	b, _ := os.ReadFile(path)
	content := "# the users\n\n" + string(b) + "  # bob is bcrypt\nbob:" + bcryptHash + "\n"
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := authfile.SetPassword(path, "alice@example.test", "changed"); err != nil {
		t.Fatal(err)
	}
	if err := authfile.SetPassword(path, "carol", "c"); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	lines := strings.Split(string(b), "\n")
	if len(lines) != 7 || lines[0] != "# the users" || lines[1] != "" || !strings.HasPrefix(lines[2], "alice@example.test:$argon2id$") ||
		lines[3] != "  # bob is bcrypt" || lines[4] != "bob:"+bcryptHash || !strings.HasPrefix(lines[5], "carol:$argon2id$") || lines[6] != "" {
		t.Errorf("file after two SetPassword calls:\n%s", b)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o640 {
		t.Errorf("mode %v after SetPassword; want the old 0640", info.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("folder holds %d entries; want the password file alone (no temporary file left)", len(ents))
	}
	p := build(t, path)
	for _, tt := range []struct {
		user, password string
		code           hooks.Code
	}{
		{"alice@example.test", "changed", hooks.OK},
		{"alice@example.test", "s3cret", hooks.Deny},
		{"bob", "b", hooks.OK},
		{"carol", "c", hooks.OK},
	} {
		if r := p.Auth(context.Background(), conn(), "PLAIN", tt.user, tt.password); r.Code != tt.code {
			t.Errorf("Auth(%q, %q) = %v; want %v", tt.user, tt.password, r.Code, tt.code)
		}
	}

	for _, tt := range []struct{ user, password, want string }{
		{"a:b", "pw", `contains ':'`},
		{"a\nb", "pw", `control character`},
		{"a\rb", "pw", `control character`},
		{"a\x00b", "pw", `control character`},
		{"", "pw", `empty user name`},
		{" alice", "pw", `white space`},
		{"#alice", "pw", `starts with '#'`},
		{"alice", "", `empty password`},
	} {
		before, _ := os.ReadFile(path)
		if err := authfile.SetPassword(path, tt.user, tt.password); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetPassword(%q, %q) = %v; want an error containing %q", tt.user, tt.password, err, tt.want)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Errorf("SetPassword(%q) changed the file though it failed", tt.user)
		}
	}

	// A file the plugin would refuse is not rewritten.
	broken := writeFile(t, "alice:hunter2\n")
	if err := authfile.SetPassword(broken, "bob", "pw"); err == nil || !strings.Contains(err.Error(), broken+":1:") {
		t.Errorf("SetPassword on a broken file = %v; want an error naming %s:1", err, broken)
	}
	if b, _ := os.ReadFile(broken); string(b) != "alice:hunter2\n" {
		t.Errorf("broken file rewritten: %q", b)
	}
	// A missing folder is an error, not a panic.
	if err := authfile.SetPassword(filepath.Join(dir, "no", "passwd"), "bob", "pw"); err == nil {
		t.Error("SetPassword into a missing folder = nil error")
	}
}

// TestConcurrent runs many AUTHs at once across a reload (run with -race).
func TestConcurrent(t *testing.T) {
	path := writeFile(t, "alice:"+bc(t, "pw")+"\n")
	p := build(t, path)
	clk := &clock{t: time.Now()}
	p.SetClock(clk.now)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			for j := range 4 {
				if i == 0 && j == 2 {
					clk.add(recheck)
					touch(t, path, time.Now().Add(time.Hour))
				}
				if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "pw"); r.Code != hooks.OK {
					t.Errorf("Auth = %+v; want OK", r)
				}
			}
		})
	}
	wg.Wait()
}

// TestBusy: a check that cannot start before the hook's deadline defers
// (every slot is taken by other checks).
func TestBusy(t *testing.T) {
	p := build(t, "testdata/passwd")
	release := p.Occupy()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if r := p.Auth(ctx, conn(), "PLAIN", "bob", "hunter2"); r.Code != hooks.DenySoft || r.Err == nil {
		t.Errorf("Auth while busy = %+v; want DenySoft with an error to log", r)
	}
	ch, err := hooks.NewChain([]hooks.Instance{hookstest.Plugin("authfile", p)}, hooks.Options{Timeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if got := reply(ch, "bob", "hunter2"); got != authSoft {
		t.Errorf("chain while busy: %q; want %q", got, authSoft)
	}
	release()
	// Once free, the hash itself may take longer than 50ms (the race
	// detector slows argon2id many times): give it a generous deadline.
	ch, err = hooks.NewChain([]hooks.Instance{hookstest.Plugin("authfile", p)}, hooks.Options{Timeout: 30 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if got := reply(ch, "bob", "hunter2"); got != authOK {
		t.Errorf("chain once free: %q; want %q", got, authOK)
	}
}

// TestReadmeExample builds the README's example with its path replaced by
// the test vectors (the example names /etc/sluice/passwd).
func TestReadmeExample(t *testing.T) {
	example := hookstest.ReadmeExamples(t, "README.md")[0]
	hookstest.BuildFromConfig(t, "authfile", strings.Replace(example, `"/etc/sluice/passwd"`, `"testdata/passwd"`, 1))
}

// TestEmptyAndCRLF: an empty file declines everyone; CRLF line ends and
// comment-only files are fine.
func TestEmptyAndCRLF(t *testing.T) {
	for _, content := range []string{"", "# nobody yet\n\n", "   \n#\r\n"} {
		p := build(t, writeFile(t, content))
		if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "pw"); r.Code != hooks.Declined || r.Err != nil {
			t.Errorf("file %q: Auth = %+v; want Declined", content, r)
		}
	}
	p := build(t, writeFile(t, "# windows\r\nalice:"+bc(t, "pw")+"\r\n\r\nbob:"+bc(t, "pw2")+"\r\n"))
	for _, tt := range []struct {
		user, password string
		code           hooks.Code
	}{{"alice", "pw", hooks.OK}, {"bob", "pw2", hooks.OK}, {"bob", "pw", hooks.Deny}} {
		if r := p.Auth(context.Background(), conn(), "PLAIN", tt.user, tt.password); r.Code != tt.code {
			t.Errorf("CRLF file: Auth(%q, %q) = %v; want %v", tt.user, tt.password, r.Code, tt.code)
		}
	}
}

// TestMissingFile: a password file that does not exist yet is no error at
// build (a fresh install, before `smtpd passwd`): it is logged as a
// warning naming the path, every AUTH declines, and the file is read once
// it appears, without a restart.
func TestMissingFile(t *testing.T) {
	logs := logBuffer(t)
	path := filepath.Join(t.TempDir(), "passwd")
	p := build(t, path)
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "does not exist") || !strings.Contains(out, "path="+path) {
		t.Errorf("build with a missing file: the log has no warning naming %s:\n%s", path, out)
	}
	clk := &clock{t: time.Now()}
	p.SetClock(clk.now)
	ch := chain(t, hookstest.Plugin("authfile", p))
	for range 3 {
		clk.add(recheck)
		if got := reply(ch, "alice", "pw"); got != authBad {
			t.Errorf("no file yet: %q; want %q (every plugin declined)", got, authBad)
		}
	}
	if out := logs.String(); strings.Contains(out, "level=ERROR") || strings.Count(out, "does not exist") != 1 {
		t.Errorf("a file still missing is logged again:\n%s", out)
	}

	// `smtpd passwd` creates the file after the start.
	if err := authfile.SetPassword(path, "alice", "pw"); err != nil {
		t.Fatal(err)
	}
	clk.add(recheck)
	if got := reply(ch, "alice", "pw"); got != authOK {
		t.Errorf("file created after the start: %q; want %q", got, authOK)
	}
	if got := reply(ch, "alice", "wrong"); got != authBad {
		t.Errorf("file created after the start, wrong password: %q; want %q", got, authBad)
	}
	if !strings.Contains(logs.String(), "password file read again") {
		t.Errorf("the new file's read is not logged:\n%s", logs.String())
	}
}

// TestMissingFileOnlyMeansNoUsers: errors other than a missing file still
// fail the build.
func TestMissingFileOnlyMeansNoUsers(t *testing.T) {
	dir := t.TempDir()
	hookstest.ExpectBuildError(t, "authfile", `path = "`+dir+`"`, "not a regular file")
	hookstest.ExpectBuildError(t, "authfile", `path = "`+writeFile(t, "carol\n")+`/x"`, "not a directory")
	hookstest.ExpectBuildError(t, "authfile", `path = "`+writeFile(t, "carol\n")+`"`, "want user:hash")
	if os.Geteuid() == 0 {
		t.Log("running as root: the permission check is skipped (root reads any file)")
		return
	}
	locked := writeFile(t, "")
	if err := os.Chmod(locked, 0); err != nil {
		t.Fatal(err)
	}
	hookstest.ExpectBuildError(t, "authfile", `path = "`+locked+`"`, "permission denied")
}
