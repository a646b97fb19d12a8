package t_test

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rawSession is a plain TCP SMTP client for exact-byte tests.
type rawSession struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func rawDial(t *testing.T, addr string) *rawSession {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawSession{t: t, c: c, r: bufio.NewReader(c)}
}

// cmd sends line (CRLF added unless empty) and returns the whole reply.
func (s *rawSession) cmd(line string) string {
	s.t.Helper()
	if line != "" {
		if _, err := s.c.Write([]byte(line + "\r\n")); err != nil {
			s.t.Fatalf("write %q: %v", line, err)
		}
	}
	var out []string
	for {
		l, err := s.r.ReadString('\n')
		if err != nil {
			if len(out) == 0 {
				return "EOF"
			}
			s.t.Fatalf("read after %q: %v", line, err)
		}
		out = append(out, strings.TrimRight(l, "\r\n"))
		if len(l) < 4 || l[3] != '-' {
			return strings.Join(out, "\n")
		}
	}
}

func (s *rawSession) expect(line, prefix string) string {
	s.t.Helper()
	got := s.cmd(line)
	if !strings.HasPrefix(got, prefix) {
		s.t.Fatalf("after %q got %q, want %q", line, got, prefix)
	}
	return got
}

func TestSIGTERMLetsATransactionInProgressFinish(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	busy := rawDial(t, s.Addr("mx"))
	busy.expect("", "220 ")
	busy.expect("EHLO client.example", "250")
	busy.expect("MAIL FROM:<alice@example.org>", "250")
	busy.expect("RCPT TO:<bob@example.test>", "250")
	busy.expect("DATA", "354")
	idle := rawDial(t, s.Addr("mx"))
	idle.expect("", "220 ")

	s.cmd.Process.Signal(syscall.SIGTERM)
	s.waitLog("stopping")
	// The idle client is told, the busy one may finish.
	idle.expect("", "421 4.3.2")
	busy.c.Write([]byte("Subject: during shutdown\r\n\r\nstill delivered\r\n.\r\n"))
	busy.expect("", "250 2.0.0 Ok: queued as")
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("smtpd did not exit after the last transaction")
	}
	if files := maildirFiles(t, filepath.Join(s.dir, "var", "mail")); len(files) != 1 {
		t.Fatalf("want the message delivered during shutdown, got %d files", len(files))
	}
	if !strings.Contains(s.Log(), "msg=stopped") {
		t.Fatalf("no clean stop in the log:\n%s", s.Log())
	}
}

// TestEachListenerHasItsOwnPolicy serves two listeners from one process, as
// Valvula applies different modules on different ports: the inbound one
// refuses a foreign domain, the relay one (loopback is a relay client
// there) accepts it.
func TestEachListenerHasItsOwnPolicy(t *testing.T) {
	s := startSmtpd(t, `hostname = "mx.example.test"
[[listener]]
name = "inbound"
address = "127.0.0.1:0"
plugins = ["rcptok", "maildir"]

[[listener]]
name = "outbound"
address = "127.0.0.1:0"
plugins = ["relay", "rcptok", "maildir"]

[plugins.relay]
allow = ["127.0.0.0/8"]

[plugins.rcptok]
domains = ["example.test"]

[plugins.maildir]
path = "./var/mail"
`)
	in := rawDial(t, s.Addr("inbound"))
	in.expect("", "220 ")
	in.expect("EHLO client.example", "250")
	in.expect("MAIL FROM:<alice@example.test>", "250")
	in.expect("RCPT TO:<someone@elsewhere.test>", "550 5.7.1")

	out := rawDial(t, s.Addr("outbound"))
	out.expect("", "220 ")
	out.expect("EHLO client.example", "250")
	out.expect("MAIL FROM:<alice@example.test>", "250")
	out.expect("RCPT TO:<someone@elsewhere.test>", "250 ")
}

func TestSIGHUPReloadsThePolicyAndKeepsABrokenConfigOut(t *testing.T) {
	s := startSmtpd(t, mxConfig(""))
	c := rawDial(t, s.Addr("mx"))
	c.expect("", "220 ")
	c.expect("EHLO client.example", "250")
	c.expect("MAIL FROM:<alice@example.org>", "250")
	c.expect("RCPT TO:<bob@other.test>", "550 5.7.1")

	cfgPath := filepath.Join(s.dir, "smtpd.toml")
	writeFile(t, s.dir, "smtpd.toml", strings.Replace(mxConfig(""), `domains = ["example.test"]`, `domains = ["example.test", "other.test"]`, 1))
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLog("msg=reloaded")
	// A connection in progress keeps its chain; a new one gets the new policy.
	c.expect("RCPT TO:<bob@other.test>", "550 5.7.1")
	n := rawDial(t, s.Addr("mx"))
	n.expect("", "220 ")
	n.expect("EHLO client.example", "250")
	n.expect("MAIL FROM:<alice@example.org>", "250")
	n.expect("RCPT TO:<bob@other.test>", "250")

	writeFile(t, s.dir, "smtpd.toml", "this is not toml =")
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLog("reload failed: keeping the running configuration")
	n2 := rawDial(t, s.Addr("mx"))
	n2.expect("", "220 ")
	n2.expect("EHLO client.example", "250")
	n2.expect("MAIL FROM:<alice@example.org>", "250")
	n2.expect("RCPT TO:<bob@other.test>", "250")
	_ = cfgPath
}
