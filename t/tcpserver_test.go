package t_test

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpserver runs `smtpd stdio` under ucspi-tcp's tcpserver, as a qmail
// site runs qmail-smtpd, with the tcprules in rules (tcprules' text
// format) compiled to a cdb. It returns the address tcpserver listens on
// and a function returning what tcpserver and smtpd logged.
func tcpserver(t *testing.T, dir, cfg, rules string) (addr string, log func() string) {
	t.Helper()
	for _, prog := range []string{"tcpserver", "tcprules"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("%s is not installed: run `make deps` (Debian package ucspi-tcp)", prog)
		}
	}
	writeFile(t, dir, "smtpd.toml", cfg)
	compile := exec.Command("tcprules", "rules.cdb", "rules.tmp")
	compile.Dir = dir
	compile.Stdin = strings.NewReader(rules)
	if out, err := compile.CombinedOutput(); err != nil {
		t.Fatalf("tcprules: %v\n%s", err, out)
	}
	// A free port: tcpserver cannot report the one it was given for 0.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	// -R -H -l: no ident and no DNS lookups (nothing leaves the machine).
	cmd := exec.Command("tcpserver", "-v", "-R", "-H", "-l", "mx.example.test", "-x", "rules.cdb",
		"127.0.0.1", port, smtpdBin, "stdio", "-config", "smtpd.toml")
	cmd.Dir = dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logged bytes.Buffer
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			logged.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.HasPrefix(sc.Text(), "tcpserver: status:") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	log = func() string {
		mu.Lock()
		defer mu.Unlock()
		return logged.String()
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("tcpserver and smtpd log:\n%s", log())
		}
	})
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpserver did not start within 10s:\n%s", log())
	}
	return addr, log
}

// TestStdioUnderTcpserver: a qmail site replaces qmail-smtpd with
// `smtpd stdio` in its run script and keeps its control files and
// tcprules: swaks delivers through it with the greeting of
// control/smtpgreeting; rcpthosts decides what is local; RELAYCLIENT from
// the rules lets one address relay and not another; DATABYTES from the
// rules caps that client's messages (and is what EHLO's SIZE says);
// plugins and logs see the client's address.
func TestStdioUnderTcpserver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	control := filepath.Join(dir, "control")
	os.Mkdir(control, 0o755)
	writeFile(t, control, "me", "mx.example.test\n")
	writeFile(t, control, "smtpgreeting", "qmail.example.test\n")
	writeFile(t, control, "rcpthosts", "example.test\n")
	cfg := `[qmail]
control_dir = "control"

[[listener]]
name = "smtp"
address = "127.0.0.1:0"
plugins = ["qmailcontrol", "maildir"]

[plugins.maildir]
path = "./var/mail"
`
	addr, log := tcpserver(t, dir, cfg, "127.0.0.2:allow,RELAYCLIENT=\"\"\n:allow,DATABYTES=\"2000\"\n")

	out, code := swaks(t, addr, "--from", "alice@example.net", "--to", "bob@example.test", "--ehlo", "client.example")
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued") || !strings.Contains(out, "SIZE 2000") || !strings.Contains(out, "<-  220 qmail.example.test ESMTP\n") {
		t.Fatalf("delivery through tcpserver: exit %d\n%s", code, out)
	}
	files := maildirFiles(t, filepath.Join(dir, "var/mail"))
	if len(files) != 1 {
		t.Fatalf("%d messages in the Maildir, want 1", len(files))
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "Received: from client.example ([127.0.0.1])") {
		t.Errorf("the Received field does not name the client as tcpserver gave it:\n%.300s", b)
	}
	if !strings.Contains(log(), "msg=connect listener=smtp") || !strings.Contains(log(), "remote=127.0.0.1:") {
		t.Errorf("smtpd's log does not name the client's address")
	}

	out, _ = swaks(t, addr, "--from", "alice@example.net", "--to", "carol@elsewhere.example", "--quit-after", "RCPT")
	if !strings.Contains(out, "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts") {
		t.Errorf("127.0.0.1 has no RELAYCLIENT in the rules, yet relaying was not refused:\n%s", out)
	}
	out, code = swaks(t, addr, "--local-interface", "127.0.0.2", "--from", "alice@example.net", "--to", "carol@elsewhere.example")
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued") || strings.Contains(out, "SIZE 2000") {
		t.Errorf("127.0.0.2 has RELAYCLIENT (and no DATABYTES) in the rules, yet:\nexit %d\n%s", code, out)
	}
	out, _ = swaks(t, addr, "--from", "alice@example.net", "--to", "bob@example.test", "--body", strings.Repeat("x", 3000))
	if !strings.Contains(out, "552 5.3.4") {
		t.Errorf("a 3000-byte message from a client with DATABYTES=2000 was not refused with 552 5.3.4:\n%s", out)
	}
	if n := len(maildirFiles(t, filepath.Join(dir, "var/mail"))); n != 2 {
		t.Errorf("%d messages in the Maildir, want 2 (one local, one relayed)", n)
	}
}

// TestSIGHUPRereadsQmailControlFiles: a listening smtpd with a [qmail]
// control directory rereads rcpthosts on SIGHUP, as qmail-smtpd reads it
// afresh for each connection; a changed smtpgreeting (a listener setting)
// is logged as waiting for a restart. (Under tcpserver every connection
// is a new process and reads every file.)
func TestSIGHUPRereadsQmailControlFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	control := filepath.Join(dir, "control")
	os.Mkdir(control, 0o755)
	writeFile(t, control, "me", "mx.example.test\n")
	writeFile(t, control, "rcpthosts", "example.test\n")
	s := startSmtpdIn(t, dir, `[qmail]
control_dir = "control"

[[listener]]
name = "smtp"
address = "127.0.0.1:0"
plugins = ["qmailcontrol", "maildir"]

[plugins.maildir]
path = "./var/mail"
`)
	out, _ := swaks(t, s.Addr("smtp"), "--from", "a@example.net", "--to", "bob@new.example", "--quit-after", "RCPT")
	if !strings.Contains(out, "<-  220 mx.example.test ESMTP\n") || !strings.Contains(out, "553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts") {
		t.Fatalf("before the reload:\n%s", out)
	}
	writeFile(t, control, "rcpthosts", "example.test\nnew.example\n")
	writeFile(t, control, "smtpgreeting", "renamed.example.test\n")
	s.cmd.Process.Signal(syscall.SIGHUP)
	s.waitLog("msg=reloaded")
	out, code := swaks(t, s.Addr("smtp"), "--from", "a@example.net", "--to", "bob@new.example")
	if code != 0 || !strings.Contains(out, "250 2.0.0 Ok: queued") {
		t.Fatalf("after SIGHUP, the new rcpthosts line was not read:\nexit %d\n%s", code, out)
	}
	if !strings.Contains(s.Log(), `only take effect after a restart" settings="listener \"smtp\" settings"`) {
		t.Errorf("the changed smtpgreeting was not logged as needing a restart")
	}
}
