package t_test

// Hardening tests (issue 4): hostile input, faults and durability, through
// the real binary on a loopback port with exact bytes. Each test starts its
// own smtpd and runs in parallel with the others.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// listenerConfig is a config with one listener "mx" whose plugin list is
// plugins, with extra listener keys, local domain example.test and a
// Maildir in ./var/mail, followed by more tables.
func listenerConfig(plugins, listenerKeys, tables string) string {
	return `hostname = "mx.example.test"
data_dir = "./var"

[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = [` + plugins + `]
` + listenerKeys + `

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"
` + tables
}

// send writes raw bytes.
func (s *rawSession) send(b string) {
	s.t.Helper()
	if _, err := s.c.Write([]byte(b)); err != nil {
		s.t.Fatalf("write %q: %v", abbrev(b), err)
	}
}

// closed checks that the server closes the connection without another
// reply.
func (s *rawSession) closed() {
	s.t.Helper()
	rest, err := io.ReadAll(s.r)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		s.t.Fatalf("want the connection closed, got %v after %q", err, rest)
	}
	if len(rest) > 0 {
		s.t.Fatalf("want the connection closed, got %q", rest)
	}
}

// greet reads the banner and sends EHLO, MAIL and RCPT, each of which
// must be accepted.
func (s *rawSession) greet(rcpts ...string) {
	s.t.Helper()
	s.expect("", "220 ")
	s.expect("EHLO client.example", "250")
	s.expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
	for _, r := range rcpts {
		s.expect("RCPT TO:<"+r+">", "250 2.1.5")
	}
}

func abbrev(s string) string {
	if len(s) > 80 {
		return s[:80] + fmt.Sprintf("...(%d bytes)", len(s))
	}
	return s
}

// entries returns the names in dir ("" when it does not exist).
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// nothingQueued checks that the Maildir's new/ and tmp/ and the spool are
// empty.
func nothingQueued(t *testing.T, s *smtpd) {
	t.Helper()
	for _, d := range []string{"var/mail/new", "var/mail/tmp", "var/spool"} {
		if es := entries(t, filepath.Join(s.dir, d)); len(es) != 0 {
			t.Errorf("%s holds %v, want nothing", d, es)
		}
	}
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// crlfOnly reports whether every CR in b is followed by LF and every LF
// preceded by CR.
func crlfOnly(b []byte) bool {
	for i, c := range b {
		switch {
		case c == '\r' && (i+1 == len(b) || b[i+1] != '\n'):
			return false
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return false
		}
	}
	return true
}

// logLine returns the first log line holding every one of parts, or "".
func logLine(s *smtpd, parts ...string) string {
	for _, l := range strings.Split(s.Log(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return l
		}
	}
	return ""
}

// waitLogLine waits for a log line holding every one of parts.
func waitLogLine(t *testing.T, s *smtpd, parts ...string) string {
	t.Helper()
	var line string
	waitFor(t, fmt.Sprintf("a log line with %q", parts), func() bool {
		line = logLine(s, parts...)
		return line != ""
	})
	return line
}

// spoolFDs counts smtpd's open descriptors on files in its spool
// directory (they are unlinked at once, so only /proc shows them).
func spoolFDs(t *testing.T, s *smtpd) int {
	t.Helper()
	fdDir := fmt.Sprintf("/proc/%d/fd", s.cmd.Process.Pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatalf("reading %s: %v", fdDir, err)
	}
	spool := filepath.Join(s.dir, "var", "spool") + "/"
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && strings.HasPrefix(target, spool) {
			n++
		}
	}
	return n
}

// smugglingTail follows the separator under test: a complete second
// transaction, which must never run.
const smugglingTail = "MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n" +
	"Subject: smuggled\r\n\r\nsmuggled body\r\n.\r\nQUIT\r\n"

// TestSmugglingThroughTheBinary sends the SMTP smuggling shapes: a message
// "ended" by a dot line with a bare line end, followed by a second
// transaction. reject answers 554 5.5.2 and closes with nothing queued;
// normalize queues exactly one message that holds the smuggled text as
// body, and the smuggled transaction never gets a reply.
func TestSmugglingThroughTheBinary(t *testing.T) {
	t.Parallel()
	seps := []string{"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r", "\r\n.\r\r\n"}
	for _, policy := range []string{"reject", "normalize"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, `bare_newline = "`+policy+`"`, ""))
			for _, sep := range seps {
				t.Run(strconv.Quote(sep), func(t *testing.T) {
					before := len(maildirFiles(t, filepath.Join(s.dir, "var", "mail")))
					c := rawDial(t, s.Addr("mx"))
					c.greet("bob@example.test")
					c.expect("DATA", "354 ")
					c.send("Subject: first\r\n\r\nbody" + sep + smugglingTail)
					mail := filepath.Join(s.dir, "var", "mail")
					if policy == "reject" {
						c.expect("", "554 5.5.2 Message contains a bare CR or LF")
						c.closed()
						if n := len(maildirFiles(t, mail)); n != before {
							t.Fatalf("%d messages queued, want none", n-before)
						}
						return
					}
					got := c.expect("", "250 2.0.0 Ok: queued as ")
					c.expect("", "221 ")
					c.closed()
					files := maildirFiles(t, mail)
					if len(files) != before+1 {
						t.Fatalf("%d messages queued after %q, want exactly 1", len(files)-before, got)
					}
					var msg []byte
					for _, f := range files {
						if strings.Contains(f, strings.TrimPrefix(got, "250 2.0.0 Ok: queued as ")) {
							msg, _ = os.ReadFile(f)
						}
					}
					if !bytes.Contains(msg, []byte("\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")) {
						t.Fatalf("the smuggled transaction is not the body of the one message:\n%q", msg)
					}
					if !crlfOnly(msg) {
						t.Fatalf("a bare CR or LF reached the queue:\n%q", msg)
					}
				})
			}
		})
	}
}

// TestStartTLSWithPipelinedMailIsNeverExecuted: plaintext sent in the same
// write as STARTTLS must not run inside (or outside) the TLS session.
func TestStartTLSWithPipelinedMailIsNeverExecuted(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "tls_self_signed = true", ""))
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	if ehlo := c.expect("EHLO client.example", "250"); !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("STARTTLS not offered: %q", ehlo)
	}
	c.send("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
	c.expect("", "220 2.0.0")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake after STARTTLS with a pipelined MAIL: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
	// The MAIL was discarded before the handshake: the first reply inside
	// TLS is EHLO's, and RCPT finds no transaction.
	c.expect("EHLO client.example", "250")
	c.expect("RCPT TO:<bob@example.test>", "503 5.5.1")
	// The session inside TLS works: a MAIL sent now is taken.
	c.expect("MAIL FROM:<alice@example.org>", "250 2.1.0")
	c.expect("QUIT", "221")
}

// TestFailedTLSHandshakeClosesTheConnection: a client that answers 220
// Ready to start TLS with plaintext commands gets no reply to them, in TLS
// or out: the handshake fails and the server closes (go-smtp as shipped
// answers 550 and goes on in plaintext).
func TestFailedTLSHandshakeClosesTheConnection(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "tls_self_signed = true", ""))
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	c.expect("EHLO client.example", "250")
	c.expect("STARTTLS", "220 2.0.0")
	c.send("MAIL FROM:<plain@example.org>\r\nRCPT TO:<bob@example.test>\r\nQUIT\r\n")
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(c.r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection stayed open after a failed handshake; read %q", rest)
	}
	// What may come back is a TLS alert record, never an SMTP reply.
	for _, reply := range []string{"250", "503", "221", "530", "550"} {
		if strings.Contains(string(rest), reply+" ") {
			t.Fatalf("plaintext was answered after STARTTLS: %q", rest)
		}
	}
	waitLogLine(t, s, `msg="TLS handshake failed; closing"`)
	nothingQueued(t, s)
}

var (
	qqOnce sync.Once
	qqBin  string
	qqErr  error
)

// qqcheck builds queue/testdata/qqcheck once.
func qqcheck(t *testing.T) string {
	t.Helper()
	qqOnce.Do(func() {
		qqBin = filepath.Join(filepath.Dir(smtpdBin), "qqcheck")
		build := exec.Command("go", "build", "-o", qqBin, "./queue/testdata/qqcheck")
		build.Dir = rootDir
		if out, err := build.CombinedOutput(); err != nil {
			qqErr = fmt.Errorf("building qqcheck: %v\n%s", err, out)
		}
	})
	if qqErr != nil {
		t.Fatal(qqErr)
	}
	return qqBin
}

// qqWrapper writes a qmail-queue program that sources dir/qqmode (shell
// exports of QQCHECK_* variables, changed between messages) and runs
// qqcheck, saving the envelope and message in dir.
func qqWrapper(t *testing.T, dir string) (prog string, setMode func(string)) {
	bin := qqcheck(t)
	setMode = func(mode string) {
		writeFile(t, dir, "qqmode", "export QQCHECK_ENVELOPE="+filepath.Join(dir, "envelope")+
			" QQCHECK_MESSAGE="+filepath.Join(dir, "message")+"\n"+mode+"\n")
	}
	setMode("")
	prog = writeFile(t, dir, "qmail-queue", "#!/bin/sh\n. "+filepath.Join(dir, "qqmode")+"\nexec "+bin+"\n")
	if err := os.Chmod(prog, 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, setMode
}

// TestNulInAddressNeverReachesTheQmailEnvelope: <a\0Tv@evil\0Tx@mx...>
// looks local by its last '@' but would be three recipients in a
// qmail-queue envelope. It is refused before any hook; the next recipient
// goes through, alone, with no NUL inside.
func TestNulInAddressNeverReachesTheQmailEnvelope(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	prog, _ := qqWrapper(t, dir)
	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "qmailqueue"]
[plugins.rcptok]
domains = ["example.test", "mx.example.test"]
[plugins.qmailqueue]
path = "`+prog+`"
`)
	c := rawDial(t, s.Addr("mx"))
	c.greet()
	c.expect("RCPT TO:<a\x00Tv@evil.test\x00Tx@mx.example.test>", "501 5.5.2 ")
	c.expect("RCPT TO:<bob@example.test>", "250 2.1.5")
	c.expect("DATA", "354 ")
	c.send("Subject: nul\r\n\r\nhello\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued as ")
	env, err := os.ReadFile(filepath.Join(dir, "envelope"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Falice@example.org\x00Tbob@example.test\x00\x00"; string(env) != want {
		t.Fatalf("envelope %q, want %q", env, want)
	}
	c.expect("MAIL FROM:<a\x00Tv@evil.test>", "501 5.5.2 ")
}

// TestRecipientTricksAndLimits: a quoted local part holding '@' is
// refused, <Postmaster> is accepted by rcptok, and the 101st recipient gets
// 452 4.5.3 (the default max_recipients is 100).
func TestRecipientTricksAndLimits(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "", ""))
	c := rawDial(t, s.Addr("mx"))
	c.greet()
	c.expect(`RCPT TO:<"relay@evil.test"@example.test>`, "553 5.1.3 ")
	c.expect("RCPT TO:<Postmaster>", "250 2.1.5")
	var b strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&b, "RCPT TO:<r%d@example.test>\r\n", i)
	}
	c.send(b.String())
	for i := 1; i < 100; i++ {
		c.expect("", "250 2.1.5")
	}
	c.expect("", "452 4.5.3 Too many recipients")
	c.expect("DATA", "354 ")
	c.send("Subject: many\r\n\r\nx\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued as ")
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != 1 {
		t.Fatalf("%d messages in the Maildir, want 1", len(files))
	}
	// One message, whoever the recipients: no trace of evil.test in it.
	if b, _ := os.ReadFile(files[0]); bytes.Contains(b, []byte("evil.test")) {
		t.Fatalf("the refused recipient reached the message:\n%s", b)
	}
}

// vmRSS returns the resident set size of pid in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// TestTenMegabyteCommandLineIsCutWithBoundedMemory: a command line of 10
// MB without LF gets 500 and the connection closes after the server read
// at most its line buffer.
func TestTenMegabyteCommandLineIsCutWithBoundedMemory(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "", ""))
	pid := s.cmd.Process.Pid
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	before := vmRSS(t, pid)
	go c.c.Write(bytes.Repeat([]byte("A"), 10<<20)) // fails once the server closes
	c.expect("", "500 5.5.2 Line too long")
	c.closed()
	after := vmRSS(t, pid)
	// The race detector's shadow memory makes RSS no measure of the
	// server's own buffers: the plain run checks the bound.
	if growth := after - before; growth > 20<<20 && !raceBuild {
		t.Fatalf("smtpd RSS grew by %d MB reading one command line (%d -> %d)", growth>>20, before, after)
	}
	ok := rawDial(t, s.Addr("mx"))
	ok.expect("", "220 ")
	ok.expect("EHLO client.example", "250")
}

// TestStalledDataGets421AndNothingIsQueued: a client that stops in the
// middle of a message, under a high minimum data rate, gets 421 and the
// connection closes; what it sends afterwards is never read.
func TestStalledDataGets421AndNothingIsQueued(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "min_data_rate = 1000000\nmin_data_rate_grace = \"300ms\"", ""))
	c := rawDial(t, s.Addr("mx"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send("Subject: stalled\r\n\r\nfirst half")
	c.expect("", "421 4.4.2 Timeout reading the message")
	// Too late: the rest, with a transaction of its own, goes nowhere.
	c.c.Write([]byte(" second half\r\n.\r\n" + smugglingTail))
	c.closed()
	nothingQueued(t, s)
	if l := logLine(s, "message queued"); l != "" {
		t.Fatalf("something was queued: %s", l)
	}
}

// TestQmailQueueFailuresDeferAndTheServerGoesOn: qmail-queue exiting 81,
// killed by a signal, or hanging past the plugin's timeout all give 451;
// the same server then queues the next message.
func TestQmailQueueFailuresDeferAndTheServerGoesOn(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	prog, setMode := qqWrapper(t, dir)
	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "mx"
address = "127.0.0.1:0"
plugins = ["rcptok", "qmailqueue"]
[plugins.rcptok]
domains = ["example.test"]
[plugins.qmailqueue]
path = "`+prog+`"
timeout = "300ms"
`)
	send := func(reply string) {
		t.Helper()
		c := rawDial(t, s.Addr("mx"))
		c.greet("bob@example.test")
		c.expect("DATA", "354 ")
		c.send("Subject: qq\r\n\r\nhello\r\n.\r\n")
		c.expect("", reply)
		c.expect("QUIT", "221 ")
	}
	for _, tt := range []struct{ mode, reply string }{
		{"export QQCHECK_EXIT=81", "451 4.3.0 qmail-queue: internal bug (#4.3.0)"},
		{"export QQCHECK_SIGNAL=1", "451 4.3.0 qmail-queue: crashed (#4.3.0)"},
		{"export QQCHECK_HANG=1", "451 4.3.0 qmail-queue: timeout (#4.3.0)"},
	} {
		setMode(tt.mode)
		send(tt.reply)
	}
	setMode("")
	send("250 2.0.0 Ok: queued as ")
}

// TestPluginPanicsThroughTheBinary: a panic in a plugin is a temporary
// failure for that step, logged with the plugin's name and its stack, and
// never takes the server down.
func TestPluginPanicsThroughTheBinary(t *testing.T) {
	t.Parallel()
	var cfg strings.Builder
	cfg.WriteString("hostname = \"mx.example.test\"\ndata_dir = \"./var\"\n")
	for _, hook := range []string{"connect", "rcpt", "data_post", "disconnect"} {
		name := "chaos" + strings.ReplaceAll(hook, "_", "")
		fmt.Fprintf(&cfg, "[[listener]]\nname = %q\naddress = \"127.0.0.1:0\"\nplugins = [%q, \"rcptok\", \"maildir\"]\n", hook, name)
		fmt.Fprintf(&cfg, "[plugins.%s]\nuse = \"chaos\"\npanic = [%q]\n", name, hook)
	}
	cfg.WriteString("[plugins.rcptok]\ndomains = [\"example.test\"]\n[plugins.maildir]\npath = \"./var/mail\"\n")
	s := startSmtpd(t, cfg.String())
	panicked := func(hook string) {
		t.Helper()
		l := waitLogLine(t, s, `msg="plugin panicked"`, "hook="+hook+" ", "plugin=chaos"+strings.ReplaceAll(hook, "_", ""))
		if !strings.Contains(l, `stack="goroutine `) || !strings.Contains(l, "plugins/chaos.(*Plugin).fire") {
			t.Errorf("the panic at %s is logged without the plugin's stack: %s", hook, l)
		}
	}

	c := rawDial(t, s.Addr("connect"))
	c.expect("", "421 4.3.0 Local error in processing")
	c.closed()
	panicked("connect")

	c = rawDial(t, s.Addr("rcpt"))
	c.greet()
	c.expect("RCPT TO:<bob@example.test>", "451 4.3.0 Local error in processing")
	c.expect("RCPT TO:<carol@example.test>", "451 4.3.0 Local error in processing")
	c.expect("QUIT", "221 ")
	panicked("rcpt")

	c = rawDial(t, s.Addr("data_post"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send("Subject: p\r\n\r\nbody\r\n.\r\n")
	c.expect("", "451 4.3.0 Local error in processing")
	c.expect("QUIT", "221 ")
	panicked("data_post")
	nothingQueued(t, s)

	c = rawDial(t, s.Addr("disconnect"))
	c.greet("bob@example.test")
	c.expect("QUIT", "221 ")
	c.closed()
	panicked("disconnect")
	// Still serving, on that listener and the others.
	c = rawDial(t, s.Addr("disconnect"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send("Subject: after\r\n\r\nbody\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued as ")
	rawDial(t, s.Addr("connect")).expect("", "421 4.3.0 Local error in processing")
}

// bigBody is a message of about 1.5 MiB: over the 256 KiB in-memory
// spool, so the body moves to a file.
func bigBody() string {
	return "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("y", 78)+"\r\n", 20000)
}

// TestClientResetMidDataLeavesNothing: a client that vanishes in the middle
// of a message that spooled to a file leaves nothing queued and no spool
// file, open or not.
func TestClientResetMidDataLeavesNothing(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "", ""))
	for _, how := range []string{"reset", "close"} {
		t.Run(how, func(t *testing.T) {
			c := rawDial(t, s.Addr("mx"))
			c.greet("bob@example.test")
			c.expect("DATA", "354 ")
			c.send(bigBody())
			waitFor(t, "the body to spool to a file", func() bool { return spoolFDs(t, s) > 0 })
			if how == "reset" {
				c.c.(*net.TCPConn).SetLinger(0) // RST instead of FIN
			}
			c.c.Close()
			waitFor(t, "the spool file to be released", func() bool { return spoolFDs(t, s) == 0 })
			nothingQueued(t, s)
		})
	}
	if l := logLine(s, "message queued"); l != "" {
		t.Fatalf("something was queued: %s", l)
	}
	ok := rawDial(t, s.Addr("mx"))
	ok.greet("bob@example.test")
}

// TestSIGKILLMidDataLeavesNothingHalfQueued kills smtpd while a large
// message is being received, then starts it again on the same data
// directory: nothing is queued, nothing is left in tmp/ or the spool, and
// the new process delivers.
func TestSIGKILLMidDataLeavesNothingHalfQueued(t *testing.T) {
	t.Parallel()
	cfg := listenerConfig(`"rcptok", "maildir"`, "", "")
	s := startSmtpd(t, cfg)
	c := rawDial(t, s.Addr("mx"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send(bigBody())
	waitFor(t, "the body to spool to a file", func() bool { return spoolFDs(t, s) > 0 })
	s.cmd.Process.Kill()
	<-s.exited
	nothingQueued(t, s)

	s2 := startSmtpdIn(t, s.dir, cfg)
	nothingQueued(t, s2)
	c = rawDial(t, s2.Addr("mx"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send("Subject: after the crash\r\n\r\nbody\r\n.\r\n")
	c.expect("", "250 2.0.0 Ok: queued as ")
	if n := len(maildirFiles(t, filepath.Join(s.dir, "var", "mail"))); n != 1 {
		t.Fatalf("%d messages in the Maildir, want 1", n)
	}
}

// TestConnectionCaps: over max_connections_per_ip, or max_connections, a
// client gets 421 4.7.0 at the banner; a slot freed is usable again.
func TestConnectionCaps(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "perip"
address = "127.0.0.1:0"
plugins = ["rcptok", "maildir"]
max_connections_per_ip = 2
[[listener]]
name = "total"
address = "127.0.0.1:0"
plugins = ["rcptok", "maildir"]
max_connections = 2
max_connections_per_ip = 100
[plugins.rcptok]
domains = ["example.test"]
[plugins.maildir]
path = "./var/mail"
`)
	for _, name := range []string{"perip", "total"} {
		t.Run(name, func(t *testing.T) {
			a := rawDial(t, s.Addr(name))
			a.expect("", "220 ")
			b := rawDial(t, s.Addr(name))
			b.expect("", "220 ")
			over := rawDial(t, s.Addr(name))
			over.expect("", "421 4.7.0 Too many connections")
			over.closed()
			a.expect("QUIT", "221 ")
			a.closed()
			// The slot is freed once the server has closed its side.
			waitFor(t, "the slot to be freed", func() bool {
				c, err := net.Dial("tcp", s.Addr(name))
				if err != nil {
					return false
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				l, _ := bufio.NewReader(c).ReadString('\n')
				return strings.HasPrefix(l, "220 ")
			})
			b.expect("NOOP", "250 ")
		})
	}
}

// TestQueueFailuresDeferAndTheServerGoesOn: a Maildir that cannot be
// written (tmp/ is not a directory), then one on a full file system (a
// 64 KiB tmpfs), give 451 and leave nothing behind; the server queues the
// next message once the queue works.
func TestQueueFailuresDeferAndTheServerGoesOn(t *testing.T) {
	t.Parallel()
	deliver := func(s *smtpd, body, reply string) {
		t.Helper()
		c := rawDial(t, s.Addr("mx"))
		c.greet("bob@example.test")
		c.expect("DATA", "354 ")
		c.send("Subject: q\r\n\r\n" + body + "\r\n.\r\n")
		c.expect("", reply)
		c.expect("QUIT", "221 ")
	}
	t.Run("unwritable", func(t *testing.T) {
		s := startSmtpd(t, listenerConfig(`"rcptok", "maildir"`, "", ""))
		tmp := filepath.Join(s.dir, "var", "mail", "tmp")
		if err := os.Remove(tmp); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Dir(tmp), "tmp", "not a directory")
		deliver(s, "hello", "451 4.3.0 ")
		if n := len(maildirFiles(t, filepath.Join(s.dir, "var", "mail"))); n != 0 {
			t.Fatalf("%d messages in new/", n)
		}
		os.Remove(tmp)
		os.Mkdir(tmp, 0o700)
		deliver(s, "hello", "250 2.0.0 Ok: queued as ")
	})
	// tinyDisk mounts a 64 KiB tmpfs on dir/var/SUB, or skips.
	tinyDisk := func(t *testing.T, sub string) string {
		dir := t.TempDir()
		mnt := filepath.Join(dir, "var", sub)
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt).CombinedOutput(); err != nil {
			t.Skipf("cannot mount a tmpfs to fill (needs root with CAP_SYS_ADMIN): %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
		return dir
	}
	t.Run("disk full", func(t *testing.T) {
		s := startSmtpdIn(t, tinyDisk(t, "mail"), listenerConfig(`"rcptok", "maildir"`, "", ""))
		deliver(s, strings.Repeat(strings.Repeat("z", 78)+"\r\n", 2000), "452 4.3.1 Insufficient system storage")
		nothingQueued(t, s)
		deliver(s, "small", "250 2.0.0 Ok: queued as ")
	})
	// The spool fills while a large message is received: the rest of the
	// message is read and dropped, and the reply after the dot is 451.
	t.Run("spool full", func(t *testing.T) {
		s := startSmtpdIn(t, tinyDisk(t, "spool"), listenerConfig(`"rcptok", "maildir"`, "", ""))
		deliver(s, strings.TrimPrefix(bigBody(), "Subject: big\r\n\r\n"), "451 4.3.0 Local error in processing; try again later")
		nothingQueued(t, s)
		if n := spoolFDs(t, s); n != 0 {
			t.Fatalf("%d spool files still open", n)
		}
		deliver(s, "small", "250 2.0.0 Ok: queued as ")
	})
}

// TestPluginPastItsDeadlineDefers: a plugin that blocks until its context
// is cancelled, and one that ignores its context and sleeps past the
// deadline, each give the client the hook's 4xx once hook_timeout passes,
// logged as outliving the deadline; the server goes on serving.
func TestPluginPastItsDeadlineDefers(t *testing.T) {
	t.Parallel()
	s := startSmtpd(t, `hostname = "mx.example.test"
data_dir = "./var"
hook_timeout = "200ms"
[[listener]]
name = "hang"
address = "127.0.0.1:0"
plugins = ["hang", "rcptok", "maildir"]
[[listener]]
name = "sleep"
address = "127.0.0.1:0"
plugins = ["sleep", "rcptok", "maildir"]
[plugins.hang]
use = "chaos"
hang = ["data_post"]
[plugins.sleep]
use = "chaos"
sleep = ["rcpt"]
delay = "400ms"
[plugins.rcptok]
domains = ["example.test"]
[plugins.maildir]
path = "./var/mail"
`)
	c := rawDial(t, s.Addr("hang"))
	c.greet("bob@example.test")
	c.expect("DATA", "354 ")
	c.send("Subject: hang\r\n\r\nbody\r\n.\r\n")
	c.expect("", "451 4.3.0 Local error in processing; try again later")
	c.expect("NOOP", "250 ")
	waitLogLine(t, s, `msg="plugin outlived its deadline"`, "hook=data_post", "plugin=hang", "timeout=200ms")
	nothingQueued(t, s)

	c = rawDial(t, s.Addr("sleep"))
	c.greet()
	c.expect("RCPT TO:<bob@example.test>", "451 4.3.0 Local error in processing; try again later")
	c.expect("QUIT", "221 ")
	waitLogLine(t, s, `msg="plugin outlived its deadline"`, "hook=rcpt", "plugin=sleep")
	rawDial(t, s.Addr("hang")).greet("bob@example.test")
}

// TestSoakQueueFailingAtRandom: tens of sessions send a thousand messages
// while the queue fails one time in five (chaos before maildir). Every
// message the client was told 250 for is in the Maildir exactly once,
// under the queue id it was told; nothing else is. (Postfix's smtp-source
// cannot drive this: it aborts the whole run at the first 4xx after DATA;
// TestSoakWithSmtpSource runs it against the server with a queue that
// does not fail.)
func TestSoakQueueFailingAtRandom(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("soak test skipped in -short mode")
	}
	s := startSmtpd(t, listenerConfig(`"rcptok", "chaos", "maildir"`, "max_connections_per_ip = 100",
		"[plugins.chaos]\nfail = [\"queue\"]\nprobability = 0.2\n"))
	const sessions, perSession = 25, 40
	var mu sync.Mutex
	acked := map[string]string{} // queue id -> Message-ID
	deferred := 0
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", s.Addr("mx"))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			r := bufio.NewReader(c)
			reply := func(cmd string) string {
				if cmd != "" {
					io.WriteString(c, cmd)
				}
				var last string
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return "EOF: " + err.Error()
					}
					if last = l; len(l) < 4 || l[3] != '-' {
						return strings.TrimRight(last, "\r\n")
					}
				}
			}
			step := func(cmd, want string) (string, bool) {
				got := reply(cmd)
				if !strings.HasPrefix(got, want) {
					errs <- fmt.Errorf("session %d: after %q got %q, want %q", i, cmd, got, want)
					return got, false
				}
				return got, true
			}
			if _, ok := step("", "220 "); !ok {
				return
			}
			if _, ok := step("EHLO soak.example\r\n", "250"); !ok {
				return
			}
			for j := range perSession {
				id := fmt.Sprintf("<soak-%d-%d@example.org>", i, j)
				for _, cmd := range []string{"MAIL FROM:<soak@example.org>\r\n", fmt.Sprintf("RCPT TO:<r%d@example.test>\r\n", j)} {
					if _, ok := step(cmd, "250 "); !ok {
						return
					}
				}
				if _, ok := step("DATA\r\n", "354 "); !ok {
					return
				}
				got := reply("Message-ID: " + id + "\r\nSubject: soak\r\n\r\nbody\r\n.\r\n")
				mu.Lock()
				switch {
				case strings.HasPrefix(got, "250 2.0.0 Ok: queued as "):
					acked[strings.TrimPrefix(got, "250 2.0.0 Ok: queued as ")] = id
				case got == "451 4.3.0 Queueing failed; try again later":
					deferred++
				default:
					errs <- fmt.Errorf("session %d: message %d got %q", i, j, got)
				}
				mu.Unlock()
			}
			step("QUIT\r\n", "221 ")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(acked)+deferred != sessions*perSession || deferred == 0 || len(acked) == 0 {
		t.Fatalf("%d acked, %d deferred of %d", len(acked), deferred, sessions*perSession)
	}
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != len(acked) {
		t.Fatalf("the Maildir holds %d messages; the client was told 250 for %d", len(files), len(acked))
	}
	idRe := regexp.MustCompile(`_([0-9A-Z]{16})\.`)
	midRe := regexp.MustCompile(`(?m)^Message-ID: (<[^>]+>)\r$`)
	seen := map[string]bool{}
	for _, f := range files {
		m := idRe.FindStringSubmatch(filepath.Base(f))
		if m == nil {
			t.Fatalf("no queue id in the file name %s", f)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		mid := midRe.FindSubmatch(b)
		if want, ok := acked[m[1]]; !ok || mid == nil || string(mid[1]) != want || seen[m[1]] {
			t.Fatalf("%s: queue id %s, Message-ID %q: not a message acked once (acked as %q)", f, m[1], mid, want)
		}
		seen[m[1]] = true
	}
	if left := entries(t, filepath.Join(s.dir, "var", "mail", "tmp")); len(left) != 0 {
		t.Fatalf("tmp/ holds %v", left)
	}
}

// TestSoakWithSmtpSource: Postfix's smtp-source, a real independent
// client, sends 4,000 messages over 20 sessions that stay connected (and
// 500 more with a new connection each) through the inbound chain:
// it exits 0 only if every message got 250, and the Maildir then holds
// exactly that many messages, each whole, each under its own queue id.
func TestSoakWithSmtpSource(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("soak test skipped in -short mode")
	}
	const source = "/usr/sbin/smtp-source"
	if _, err := os.Stat(source); err != nil {
		t.Fatal("smtp-source is not installed: run `make deps` (Debian package postfix)")
	}
	// The shipped chain; a client that opens a connection per message can
	// have a few more than 20 open while the last ones close.
	s := startSmtpd(t, listenerConfig(`"loop", "size", "rcptok", "maildir"`, "max_connections_per_ip = 100",
		"[plugins.size]\nmax = \"10MB\"\n"))
	listener := s.Addr("mx")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, run := range [][]string{
		{"-s", "20", "-m", "4000", "-d"},
		{"-s", "20", "-m", "500"},
	} {
		args := append(run, "-l", "1024", "-f", "soak@example.org", "-t", "bob@example.test", listener)
		out, err := exec.CommandContext(ctx, source, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("smtp-source %v: %v\n%s", args, err, out)
		}
	}
	files := maildirFiles(t, filepath.Join(s.dir, "var", "mail"))
	if len(files) != 4500 {
		t.Fatalf("the Maildir holds %d messages; smtp-source had 4500 accepted", len(files))
	}
	ids := map[string]bool{}
	bodyLen := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`with E?SMTP id (\S+)\s`).FindSubmatch(b)
		if m == nil || !strings.Contains(filepath.Base(f), string(m[1])) {
			t.Fatalf("%s: no Received header naming its queue id:\n%.300s", f, b)
		}
		if ids[string(m[1])] {
			t.Fatalf("queue id %s twice", m[1])
		}
		ids[string(m[1])] = true
		// smtp-source's body: -l 1024 bytes in numbered lines, the same
		// length in every message.
		_, body, _ := bytes.Cut(b, []byte("\r\n\r\n"))
		if bodyLen == 0 {
			bodyLen = len(body)
		}
		if len(body) < 1024 || len(body) != bodyLen || !bytes.HasSuffix(b, []byte("X\r\n")) || !crlfOnly(b) {
			t.Fatalf("%s: not the whole message (body %d bytes, the first one's %d):\n%.300q", f, len(body), bodyLen, b)
		}
	}
}
