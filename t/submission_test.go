package t_test

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// submissionConfig is the shipped submission listener plus a 465-style
// implicit TLS one, on free ports.
const submissionConfig = `hostname = "mx.example.test"
data_dir = "./var"
auth_failure_delay = "100ms"

[[listener]]
name            = "submission"
address         = "127.0.0.1:0"
tls_self_signed = true
starttls        = "require"
require_auth    = true
plugins         = ["authfile", "rcptok", "maildir"]

[[listener]]
name            = "submissions"
address         = "127.0.0.1:0"
tls_self_signed = true
implicit_tls    = true
require_auth    = true
plugins         = ["authfile", "rcptok", "maildir"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.authfile]
path = "./var/passwd"

[plugins.maildir]
path = "./var/mail"
`

// startSubmission creates the password file with `smtpd passwd`, as the
// README says, and starts smtpd.
func startSubmission(t *testing.T) *smtpd {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "var"), 0o755)
	cmd := exec.Command(smtpdBin, "passwd", "-file", filepath.Join(dir, "var", "passwd"), "alice@example.test")
	cmd.Stdin = strings.NewReader("s3cret\n")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "password set for alice@example.test") {
		t.Fatalf("smtpd passwd: %v\n%s", err, out)
	}
	s := startSmtpdIn(t, dir, submissionConfig)
	return s
}

func TestSubmissionWithStartTLSAndAuth(t *testing.T) {
	s := startSubmission(t)
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		out, code := swaks(t, s.Addr("submission"), "--ehlo", "laptop.example", "--tls",
			"--auth", mech, "--auth-user", "alice@example.test", "--auth-password", "s3cret",
			"--from", "alice@example.test", "--to", "friend@elsewhere.test")
		if code != 0 || !regexp.MustCompile(`<~\s+235 2\.7\.0`).MatchString(out) || !regexp.MustCompile(`<~\s+250 2\.0\.0 Ok: queued as`).MatchString(out) {
			t.Fatalf("AUTH %s over STARTTLS (exit %d):\n%s", mech, code, out)
		}
	}
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != 2 {
		t.Fatalf("want 2 submitted messages, got %d", len(files))
	}
	b, _ := os.ReadFile(files[0])
	if !regexp.MustCompile(`\(using TLSv1\.[23] with cipher \w+\)\r\n\t\(authenticated\)\r\n\tby mx\.example\.test \(Sluice\) with ESMTPSA`).Match(b) {
		t.Fatalf("Received header does not record TLS and AUTH:\n%s", b)
	}
	if strings.Contains(string(b), "s3cret") {
		t.Fatal("the password is in the message")
	}
}

func TestSubmissionRefusesWrongPasswordAndPlaintext(t *testing.T) {
	s := startSubmission(t)
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		pw := "wrong-" + mech + "-pw"
		out, code := swaks(t, s.Addr("submission"), "--ehlo", "laptop.example", "--tls",
			"--auth", mech, "--auth-user", "alice@example.test", "--auth-password", pw,
			"--from", "alice@example.test", "--to", "friend@elsewhere.test")
		if code == 0 || !regexp.MustCompile(`<~\*\s+535 5\.7\.8 Authentication credentials invalid`).MatchString(out) {
			t.Fatalf("AUTH %s, wrong password (exit %d):\n%s", mech, code, out)
		}
		if strings.Contains(s.Log(), pw) {
			t.Fatalf("the password reached the log:\n%s", s.Log())
		}
		if !regexp.MustCompile(`level=WARN msg="AUTH failed" listener=submission conn=\S+ mech=` + mech + ` ip=127\.0\.0\.1 user=alice@example\.test `).MatchString(s.Log()) {
			t.Fatalf("the %s failure is not logged with IP and user:\n%s", mech, s.Log())
		}
	}
	// Before STARTTLS: no AUTH offered, AUTH refused, MAIL refused.
	c := rawDial(t, s.Addr("submission"))
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO laptop.example", "250"); strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS: %q", ehlo)
	}
	c.expect("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzM2NyZXQ=", "538 5.7.11")
	c.expect("MAIL FROM:<alice@example.test>", "530 5.7.0")
	if files := maildirFiles(t, filepath.Join(s.dir, "var", "mail")); len(files) != 0 {
		t.Fatalf("queued %d", len(files))
	}
}

func TestImplicitTLSSubmission(t *testing.T) {
	s := startSubmission(t)
	out, code := swaks(t, s.Addr("submissions"), "--ehlo", "laptop.example", "--tlsc",
		"--auth", "PLAIN", "--auth-user", "alice@example.test", "--auth-password", "s3cret",
		"--from", "alice@example.test", "--to", "bob@example.test")
	if code != 0 || !regexp.MustCompile(`<~\s+250 2\.0\.0 Ok: queued as`).MatchString(out) {
		t.Fatalf("implicit TLS (exit %d):\n%s", code, out)
	}
}

// tlsDial connects to an implicit-TLS listener.
func tlsDial(t *testing.T, addr string) *rawSession {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawSession{t: t, c: c, r: bufio.NewReader(c)}
}

// TestSubmissionBruteForceLockout: the fifth wrong password from one IP
// (auth_failure_delay = "100ms" in the config) waits the delay, gets the
// lockout 535 and the connection is closed; after it that IP is refused
// even with the right password. Every failure is logged with the IP and
// the user, never the password.
func TestSubmissionBruteForceLockout(t *testing.T) {
	s := startSubmission(t)
	c := tlsDial(t, s.Addr("submissions"))
	c.expect("", "220 ")
	c.expect("EHLO laptop.example", "250")
	auth := func(pass string) string {
		return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice@example.test\x00"+pass))
	}
	for i := 1; i <= 4; i++ {
		c.expect(auth(fmt.Sprintf("Guess-%d-pw", i)), "535 5.7.8 Authentication credentials invalid")
	}
	start := time.Now()
	c.expect(auth("Guess-5-pw"), "535 5.7.8 Too many failed authentication attempts; closing connection")
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("the lockout answered after %v, before auth_failure_delay", d)
	}
	if got := c.cmd("NOOP"); got != "EOF" {
		t.Fatalf("the connection stayed open after the lockout: %q", got)
	}
	c2 := tlsDial(t, s.Addr("submissions"))
	c2.expect("", "220 ")
	c2.expect("EHLO laptop.example", "250")
	c2.expect(auth("s3cret"), "535 5.7.8 Too many failed authentication attempts; closing connection")

	log := s.Log()
	if n := len(regexp.MustCompile(`level=WARN msg="AUTH failed" listener=submissions conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice@example\.test `).FindAllString(log, -1)); n != 5 {
		t.Errorf("want 5 AUTH failed lines with ip and user, got %d:\n%s", n, log)
	}
	if !regexp.MustCompile(`level=WARN msg="AUTH refused: too many failures" listener=submissions conn=\S+ mech=PLAIN ip=127\.0\.0\.1 user=alice@example\.test limit=ip`).MatchString(log) {
		t.Errorf("the refusal is not logged:\n%s", log)
	}
	for _, pw := range []string{"Guess-", "s3cret"} {
		if strings.Contains(log, pw) {
			t.Errorf("a password (%q) reached the log:\n%s", pw, log)
		}
	}
}

// TestSubmissionWithCurlAndLFLineEnds: curl, a common way to send from a
// script, uploads a file with LF line ends over STARTTLS and AUTH. On a
// listener that requires AUTH bare_newline defaults to normalize: the
// message is taken and lands with CRLF line ends, byte for byte otherwise.
func TestSubmissionWithCurlAndLFLineEnds(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is not installed: run `make deps` (Debian package curl)")
	}
	s := startSubmission(t)
	msg := filepath.Join(t.TempDir(), "msg.txt")
	body := "From: alice@example.test\nTo: friend@elsewhere.test\nSubject: from a script\n\nline one\n.leading dot\nlast line\n"
	os.WriteFile(msg, []byte(body), 0o600)
	cmd := exec.Command(curl, "--silent", "--show-error", "--max-time", "20", "--noproxy", "*",
		"--url", "smtp://"+s.Addr("submission"), "--ssl-reqd", "--insecure",
		"--user", "alice@example.test:s3cret", "--mail-from", "alice@example.test", "--mail-rcpt", "friend@elsewhere.test",
		"--upload-file", msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("curl: %v\n%s\nsmtpd log:\n%s", err, out, s.Log())
	}
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != 1 {
		t.Fatalf("want 1 message, got %d", len(files))
	}
	b, _ := os.ReadFile(files[0])
	// curl ends the upload with CRLF before the final dot when the file
	// does not end with one: after its LF that is one more (empty) line.
	want := strings.ReplaceAll(body, "\n", "\r\n") + "\r\n"
	if !strings.HasSuffix(string(b), "\r\n"+want) {
		t.Fatalf("queued message:\n%q\nwant it to end with\n%q", b, want)
	}
}
