package checkpassword_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluice-mta/sluice/connection"
	"github.com/sluice-mta/sluice/hooks"
	"github.com/sluice-mta/sluice/hooks/hookstest"
	"github.com/sluice-mta/sluice/plugins/checkpassword"
)

const (
	authOK   = "235 2.7.0 Authentication successful"
	authBad  = "535 5.7.8 Authentication credentials invalid"
	authSoft = "454 4.7.0 Temporary authentication failure"
)

// checkpw is the path of testdata/checkpw, built once by TestMain.
var checkpw string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "checkpw")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	checkpw = filepath.Join(dir, "checkpw")
	goBin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintf(os.Stderr, "the go command is not on PATH: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if out, err := exec.Command(goBin, "build", "-o", checkpw, "./testdata/checkpw").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./testdata/checkpw: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func conn() *connection.Connection {
	return connection.New("submission", "mx.example.test", netip.MustParseAddrPort("[::ffff:127.0.0.1]:587"), netip.MustParseAddrPort("192.0.2.7:40000"))
}

// setup builds the plugin from settings and a chain around it whose log
// goes to the returned buffer.
func setup(t *testing.T, settings string) (*checkpassword.Plugin, *hooks.Chain, *hookstest.LogBuffer) {
	t.Helper()
	p := hookstest.Build(t, "checkpassword", settings).(*checkpassword.Plugin)
	var log hookstest.LogBuffer
	ch, err := hooks.NewChain([]hooks.Instance{hookstest.Plugin("checkpassword", p)}, hooks.Options{Timeout: 10 * time.Second, Logger: log.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	return p, ch, &log
}

func settings(args ...string) string {
	s := fmt.Sprintf("program = %q\n", checkpw)
	if args != nil {
		s += "args = ["
		for i, a := range args {
			if i > 0 {
				s += ", "
			}
			s += fmt.Sprintf("%q", a)
		}
		s += "]\n"
	}
	return s
}

func TestAuth(t *testing.T) {
	t.Setenv("CHECKPW_WANT_REMOTEIP", "192.0.2.7")
	p, ch, log := setup(t, settings("/bin/true"))
	for _, tt := range []struct {
		user, password string
		code           hooks.Code
		reply          string
	}{
		{"alice", "s3cret", hooks.OK, authOK},
		{"alice", "wrong-pass", hooks.Deny, authBad},
		{"alice", "", hooks.Deny, authBad},
		{"bob", "s3cret", hooks.Deny, authBad},
		{"alice\x00s3cret", "s3cret", hooks.Deny, authBad},
		{"alice", "s3cret\x00x", hooks.Deny, authBad},
		{"", "s3cret", hooks.Deny, authBad},
	} {
		r := p.Auth(context.Background(), conn(), "PLAIN", tt.user, tt.password)
		if r.Code != tt.code || r.Err != nil {
			t.Errorf("Auth(%q, %q) = %+v; want %v and no error", tt.user, tt.password, r, tt.code)
		}
		d := ch.Auth(context.Background(), conn(), "LOGIN", tt.user, tt.password)
		if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != tt.reply {
			t.Errorf("chain: Auth(%q, %q) replies %q; want %q", tt.user, tt.password, got, tt.reply)
		}
	}
	if out := log.String(); out != "" {
		t.Errorf("the chain logged:\n%s", out)
	}
}

// TestArgs: the program runs its arguments after a good password, as
// qmail's checkpassword does; the exit status is theirs.
func TestArgs(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		code  hooks.Code
		reply string
		log   string
	}{
		{[]string{"/bin/true"}, hooks.OK, authOK, ""},
		{[]string{"/bin/sh", "-c", "exit 0"}, hooks.OK, authOK, ""},
		{[]string{"/bin/false"}, hooks.Deny, authBad, ""},
		{nil, hooks.DenySoft, authSoft, `exit status 2: the program was misused`},
		{[]string{"/bin/sh", "-c", "exit 7"}, hooks.DenySoft, authSoft, `exit status 7: neither 0`},
		{[]string{"/bin/sh", "-c", "kill -9 $$"}, hooks.DenySoft, authSoft, `died: signal: killed`},
		{[]string{"/nonexistent/prog"}, hooks.DenySoft, authSoft, `/nonexistent/prog: no such file or directory`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			p, ch, log := setup(t, settings(tt.args...))
			if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret"); r.Code != tt.code {
				t.Errorf("Auth = %+v; want %v", r, tt.code)
			}
			d := ch.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret")
			if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != tt.reply {
				t.Errorf("chain replies %q; want %q", got, tt.reply)
			}
			out := log.String()
			if tt.log == "" && out != "" || !strings.Contains(out, tt.log) {
				t.Errorf("log:\n%s\nwant it to contain %q", out, tt.log)
			}
			if strings.Contains(out, "s3cret") {
				t.Errorf("log shows the password:\n%s", out)
			}
		})
	}
}

func TestTempfail(t *testing.T) {
	t.Setenv("CHECKPW_TEMPFAIL", "1")
	p, ch, log := setup(t, settings("/bin/true"))
	r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret")
	if r.Code != hooks.DenySoft || r.Err == nil || r.Msg != "" {
		t.Errorf("Auth = %+v; want DenySoft with an error to log and no text for the client", r)
	}
	d := ch.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret")
	if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != authSoft {
		t.Errorf("chain replies %q; want %q", got, authSoft)
	}
	out := log.String()
	// The program prints the password on stderr: the log must not.
	if !strings.Contains(out, `exit status 111: temporary failure`) || !strings.Contains(out, `temporary failure for alice (password [password])`) {
		t.Errorf("log:\n%s\nwant the exit status and the program's stderr", out)
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("log shows the password:\n%s", out)
	}
}

func TestTimeout(t *testing.T) {
	p, ch, log := setup(t, settings("/bin/true")+`timeout = "300ms"`)
	start := time.Now()
	r := p.Auth(context.Background(), conn(), "PLAIN", "hang", "s3cret")
	if r.Code != hooks.DenySoft || r.Err == nil || !strings.Contains(r.Err.Error(), "killed: no answer within the timeout (300ms)") {
		t.Errorf("Auth(hang) = %+v; want DenySoft, killed", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Auth(hang) took %v; want about 300ms", el)
	}
	d := ch.Auth(context.Background(), conn(), "PLAIN", "hang", "s3cret")
	if got := hooks.ReplyFor(hooks.HookAuth, d.Result).String(); got != authSoft {
		t.Errorf("chain replies %q; want %q", got, authSoft)
	}
	if out := log.String(); strings.Contains(out, "s3cret") {
		t.Errorf("log shows the password:\n%s", out)
	}

	// The hook's deadline bounds it too.
	p, _, _ = setup(t, settings("/bin/true"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	if r := p.Auth(ctx, conn(), "PLAIN", "hang", "s3cret"); r.Code != hooks.DenySoft {
		t.Errorf("Auth(hang) under a 300ms deadline = %+v; want DenySoft", r)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Auth(hang) under a deadline took %v", el)
	}
}

// TestConcurrent runs several checks at once (run with -race).
func TestConcurrent(t *testing.T) {
	p, _, _ := setup(t, settings("/bin/true"))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			pw, want := "s3cret", hooks.OK
			if i%2 == 1 {
				pw, want = "wrong-pass", hooks.Deny
			}
			if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", pw); r.Code != want {
				t.Errorf("Auth(alice, %q) = %+v; want %v", pw, r, want)
			}
		})
	}
	wg.Wait()
}

func TestBadSettings(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ settings, want string }{
		{``, `program: required`},
		{`program = "/nonexistent/checkpassword"`, `program: exec: "/nonexistent/checkpassword": stat /nonexistent/checkpassword: no such file or directory`},
		{`program = "no-such-checkpassword-program"`, `program: exec: "no-such-checkpassword-program": executable file not found in $PATH`},
		{fmt.Sprintf("program = %q", notExec), `permission denied`},
		{`program = "/bin"`, `is a directory`},
		{settings() + `timeout = "soon"`, `"soon" is not a duration`},
		{settings() + `timeout = "0s"`, `timeout: 0s: want a positive duration`},
		{settings() + `args = "/bin/true"`, `args: expected a list of strings, got a string`},
		{settings() + `env = ["A=1"]`, `unknown key "env"`},
	} {
		hookstest.ExpectBuildError(t, "checkpassword", tt.settings, tt.want)
	}
	// A name is looked up in $PATH.
	hookstest.Build(t, "checkpassword", `program = "true"`)
}

// TestReadmeExample builds the README's example with the test program in
// place of /usr/local/bin/checkpassword.
func TestReadmeExample(t *testing.T) {
	example := hookstest.ReadmeExamples(t, "README.md")[0]
	example = strings.Replace(example, `"/usr/local/bin/checkpassword"`, fmt.Sprintf("%q", checkpw), 1)
	p := hookstest.BuildFromConfig(t, "checkpassword", example).(*checkpassword.Plugin)
	if r := p.Auth(context.Background(), conn(), "PLAIN", "alice", "s3cret"); r.Code != hooks.OK {
		t.Errorf("README example: Auth = %+v; want OK", r)
	}
}
