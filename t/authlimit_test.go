package t_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sluice-mta/sluice/state/statetest"
)

// authLimitConfig is a submission listener (implicit TLS) that locks a
// client out after three failed AUTHs; state is the [state] table, or "".
func authLimitConfig(state string) string {
	return `hostname = "mx.example.test"
data_dir = "./var"
auth_max_failures = 3
auth_failure_window = "1h"
auth_failure_delay = "10ms"

[[listener]]
name            = "submissions"
address         = "127.0.0.1:0"
tls_self_signed = true
implicit_tls    = true
require_auth    = true
plugins         = ["authfile", "rcptok", "maildir"]

` + state + `

[plugins.rcptok]
domains = ["example.test"]

[plugins.authfile]
path = "./var/passwd"

[plugins.maildir]
path = "./var/mail"
`
}

const authLockout = "535 5.7.8 Too many failed authentication attempts; closing connection"

// alicePasswd is alice's password file, made once with `smtpd passwd`
// (hashing takes a second).
var alicePasswd struct {
	sync.Once
	text []byte
	err  error
}

// authLimitDir is a directory with alice's password file.
func authLimitDir(t *testing.T) string {
	t.Helper()
	alicePasswd.Do(func() {
		f := filepath.Join(t.TempDir(), "passwd")
		cmd := exec.Command(smtpdBin, "passwd", "-file", f, "alice@example.test")
		cmd.Stdin = strings.NewReader("s3cret\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			alicePasswd.err = fmt.Errorf("smtpd passwd: %v\n%s", err, out)
			return
		}
		alicePasswd.text, alicePasswd.err = os.ReadFile(f)
	})
	if alicePasswd.err != nil {
		t.Fatal(alicePasswd.err)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "var"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "var", "passwd"), alicePasswd.text, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func authPlain(pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00"+pass))
}

// guessUntilLockout sends three wrong passwords on one connection: two
// get the ordinary 535, the third (auth_max_failures) the lockout, and the
// connection closes.
func guessUntilLockout(t *testing.T, s *smtpd) {
	t.Helper()
	c := tlsDial(t, s.Addr("submissions"))
	c.expect("", "220 ")
	c.expect("EHLO laptop.example", "250")
	for i := 1; i <= 2; i++ {
		c.expect(authPlain(fmt.Sprintf("Guess-%d-pw", i)), "535 5.7.8 Authentication credentials invalid")
	}
	c.expect(authPlain("Guess-3-pw"), authLockout)
	if got := c.cmd("NOOP"); got != "EOF" {
		t.Fatalf("the connection stayed open after the lockout: %q", got)
	}
}

// authWithRightPassword connects and sends alice's right password; it
// returns the reply.
func authWithRightPassword(t *testing.T, s *smtpd) string {
	t.Helper()
	c := tlsDial(t, s.Addr("submissions"))
	c.expect("", "220 ")
	c.expect("EHLO laptop.example", "250")
	return c.cmd(authPlain("s3cret"))
}

// Two smtpd processes behind one load balancer share a Redis server: a
// client that used up its AUTH failures on the first is refused by the
// second, right password or not, without its password being checked.
func TestAuthFailuresSharedByTwoSmtpdThroughRedis(t *testing.T) {
	addr := statetest.StartRedis(t)
	cfg := authLimitConfig(fmt.Sprintf("[state]\nbackend = \"redis\"\naddrs = [%q]", addr))
	a := startSmtpdIn(t, authLimitDir(t), cfg)
	b := startSmtpdIn(t, authLimitDir(t), cfg)
	if got := authWithRightPassword(t, b); !strings.HasPrefix(got, "235 2.7.0") {
		t.Fatalf("alice's password on the second smtpd before any failure: %q; want 235", got)
	}
	guessUntilLockout(t, a)
	if got := authWithRightPassword(t, b); got != authLockout {
		t.Fatalf("the second smtpd answered %q after three failures on the first; want %q", got, authLockout)
	}
	if !regexp.MustCompile(`level=WARN msg="AUTH refused: too many failures" listener=submissions conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice@example\.test limit=ip`).MatchString(b.Log()) {
		t.Fatalf("the second smtpd did not log the refusal by the IP's count:\n%s", b.Log())
	}
	if strings.Contains(a.Log()+b.Log(), "state store failed") {
		t.Fatalf("a store error was logged")
	}
	for _, s := range []*smtpd{a, b} {
		if _, err := os.Stat(filepath.Join(s.dir, "var", "state.db")); err == nil {
			t.Errorf("a state.db was created in %s with backend = \"redis\"", s.dir)
		}
	}
}

// With a [state] table (bbolt, the default: even an empty table) the
// counts are in data_dir/state.db and survive a reload and a restart of
// smtpd.
func TestAuthFailureCountsSurviveRestart(t *testing.T) {
	dir := authLimitDir(t)
	cfg := authLimitConfig("[state]")
	s := startSmtpdIn(t, dir, cfg)
	guessUntilLockout(t, s)
	// A reload keeps the limiter and its store open: the old
	// configuration's retirement does not close it.
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLog("msg=reloaded")
	if got := authWithRightPassword(t, s); got != authLockout {
		t.Fatalf("after a reload the IP that used up its failures got %q; want %q", got, authLockout)
	}
	s.stop()
	if strings.Contains(s.Log(), "state store failed") {
		t.Fatalf("the store failed across the reload:\n%s", s.Log())
	}
	if _, err := os.Stat(filepath.Join(dir, "var", "state.db")); err != nil {
		t.Fatalf("the counts are not in data_dir/state.db: %v", err)
	}
	s2 := startSmtpdIn(t, dir, cfg)
	if got := authWithRightPassword(t, s2); got != authLockout {
		t.Fatalf("after a restart the IP that used up its failures got %q; want %q", got, authLockout)
	}
}

// Without a [state] table the counts are in memory: no state file is
// created, and a restart forgets them.
func TestAuthFailureCountsInMemoryWithoutState(t *testing.T) {
	dir := authLimitDir(t)
	cfg := authLimitConfig("")
	s := startSmtpdIn(t, dir, cfg)
	guessUntilLockout(t, s)
	if got := authWithRightPassword(t, s); got != authLockout {
		t.Fatalf("after three failures the IP got %q; want %q", got, authLockout)
	}
	s.stop()
	if _, err := os.Stat(filepath.Join(dir, "var", "state.db")); err == nil {
		t.Fatal("a state.db was created by a configuration without a [state] table")
	}
	s2 := startSmtpdIn(t, dir, cfg)
	if got := authWithRightPassword(t, s2); !strings.HasPrefix(got, "235 2.7.0") {
		t.Fatalf("after a restart without [state]: %q; want 235 (the counts were in memory)", got)
	}
}
